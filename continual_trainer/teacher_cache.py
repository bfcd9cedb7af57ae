"""The frozen teacher's pooled attention profiles, computed once per task instead of at every step.

The teacher of task k is the model at the end of task k-1 in eval mode (§4.3, D8): for a given training row its
pre-softmax maps are the same at every step of every epoch, and attention distillation only uses their pooled
profiles (`losses.attention_profiles`). `TeacherProfiles.build` runs the teacher's encoder once over the rows the
task trains on (its own rows and the interleaved replay memory, each tagged with a `row_index` column) and
`TeacherProfiles.gather` hands the batch's profiles to `ContinualTrainer.compute_loss`, which then runs no teacher
forward at all. Padded positions are zero in every profile, so a row's profile cut or zero-padded to a batch's length
is the one the teacher would give inside that batch. This was the hot spot of the MSPT step (benchmarks/RESULTS.md §1).
"""

import inspect

import torch
from torch.utils.data import DataLoader

from .losses import attention_profiles

ROW_INDEX = "row_index"


def _fit(profiles: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad the last dimension to `length`."""
    if profiles.shape[-1] >= length:
        return profiles[..., :length]
    return torch.nn.functional.pad(profiles, (0, length - profiles.shape[-1]))


def _concat(chunks: list[torch.Tensor]) -> torch.Tensor:
    length = max(c.shape[-1] for c in chunks)
    return torch.cat([_fit(c, length) for c in chunks])


class TeacherProfiles:
    """Per-row teacher profiles `[rows, layers, P, heads, L]` for the text and the vision stream (P: poolings)."""

    def __init__(self, text: torch.Tensor, vision: torch.Tensor):
        self.text, self.vision = text, vision

    @classmethod
    def build(cls, teacher, dataset, collator, pooling: str, batch_size: int, device) -> "TeacherProfiles":
        """Run `teacher`'s encoder over `dataset` in order (row i of the result is row i of `dataset`)."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
        return cls.from_batches(teacher, loader, pooling, device)

    @classmethod
    @torch.no_grad()
    def from_batches(cls, teacher, batches, pooling: str, device) -> "TeacherProfiles":
        """Profiles of the rows of `batches` (collated model inputs; other keys are ignored), in order."""
        encoder = teacher.base_model
        accepted = set(inspect.signature(encoder.forward).parameters)
        text, vision = [], []
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
            maps = encoder(**inputs, output_interaction_attentions=True).interaction_attentions
            text.append(attention_profiles(maps.text, pooling))
            vision.append(attention_profiles(maps.vision, pooling))
        return cls(_concat(text), _concat(vision))

    def gather(self, rows: torch.Tensor, text_length: int, vision_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The profiles of `rows`, fitted to the batch's padded text and vision lengths."""
        rows = rows.to(self.text.device)
        return _fit(self.text[rows], text_length), _fit(self.vision[rows], vision_length)

    @property
    def nbytes(self) -> int:
        return self.text.nbytes + self.vision.nbytes
