"""Modality probes: how far the text alone, the image alone and both together get on a benchmark.

Three small late-fusion classifiers are trained jointly on every task's train split and scored on
the last (cumulative) test set: a bag-of-words MLP (text), a two-layer CNN (image) and both feature
extractors under one linear head (the fusion MSPT's head uses). The target is the example's
relation (RE) or the entity type of the sentence's first entity, ``O`` when it has none (NER).
"""

import datasets
import numpy as np
import torch
from torch import nn

from .benchmark import ContinualBenchmark


def _targets(dataset, task_type: str) -> np.ndarray:
    if task_type == "re":
        return np.asarray(dataset["relation"][:], dtype=np.int64)
    # first B- tag id of the sentence, 0 ("O") when there is none; B-/I- ids follow "O" in pairs
    return np.asarray([next((t for t in tags if t % 2 == 1), 0) for tags in dataset["ner_tags"][:]], dtype=np.int64)


def _bag_of_words(dataset, vocab: dict[str, int]) -> torch.Tensor:
    rows = dataset["tokens"][:]
    features = torch.zeros(len(rows), len(vocab))
    for i, tokens in enumerate(rows):
        ids = [vocab[w] for w in (t.lower() for t in tokens) if w in vocab]
        features[i, ids] = 1.0
    return features


def _pixels(dataset, size: int) -> torch.Tensor:
    """(N, 3, size, size) in [0, 1]; a missing image is zeros."""
    out = torch.zeros(len(dataset), 3, size, size)
    for i, image in enumerate(dataset["image"][:]):
        if image is not None:
            array = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
            out[i] = torch.from_numpy(array).permute(2, 0, 1)
    return out


class _Probe(nn.Module):
    def __init__(self, vocab_size: int, num_labels: int, text: bool, image: bool, hidden: int = 32):
        super().__init__()
        self.text = nn.Sequential(nn.Linear(vocab_size, hidden), nn.ReLU()) if text else None
        self.image = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),      # (B, 16, S/2, S/2)
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),     # (B, 32, S/4, S/4)
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),                    # (B, 32)
            nn.Linear(32, hidden), nn.ReLU(),
        ) if image else None
        self.classifier = nn.Linear(hidden * (text + image), num_labels)

    def forward(self, bow: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        parts = ([self.text(bow)] if self.text is not None else []) + ([self.image(pixels)] if self.image is not None else [])
        return self.classifier(torch.cat(parts, dim=-1))


@torch.no_grad()
def _accuracy(model: nn.Module, bow: torch.Tensor, pixels: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(bow, pixels).argmax(-1) == y).float().mean().item()


def probe_modalities(
    benchmark: ContinualBenchmark, *, epochs: int = 20, batch_size: int = 64, lr: float = 3e-3,
    image_size: int = 32, seed: int = 0,
) -> dict[str, float]:
    """Test accuracy of a text-only, an image-only and a text+image probe: ``{"text", "image", "both"}``."""
    train = datasets.concatenate_datasets([task.train for task in benchmark.tasks])
    test = benchmark.tasks[-1].test
    words = sorted({t.lower() for tokens in train["tokens"][:] for t in tokens})
    vocab = {w: i for i, w in enumerate(words)}
    data = {
        name: (_bag_of_words(ds, vocab), _pixels(ds, image_size), torch.from_numpy(_targets(ds, benchmark.task_type)))
        for name, ds in (("train", train), ("test", test))
    }
    bow, pixels, y = data["train"]
    results = {}
    for name, text, image in (("text", True, False), ("image", False, True), ("both", True, True)):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = _Probe(len(vocab), len(benchmark.label_names), text, image)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(epochs):
            model.train()
            for batch in torch.randperm(len(y), generator=generator).split(batch_size):
                loss = nn.functional.cross_entropy(model(bow[batch], pixels[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        results[name] = _accuracy(model, *data["test"])
    return results
