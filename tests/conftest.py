"""Shared fixtures: tiny configs built in-process (hidden 32, 2 layers, 4 heads, intermediate 37, image 32, patch 8,
batch 3, odd text length 7), a tiny tokenizer and image processor, the miniature real split files in fixtures/ and
the full ones from $MSPT_DATA_DIR."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # imre/txt/sep5, imner/twitter2017/sep-PLOM: real lines
DATA_DIR_ENV = "MSPT_DATA_DIR"
# The start of a script run in a fresh process that must not import this package (it is installed, editable, in the
# venv): what a user without it gets from trust_remote_code. Prepend it to the script's own code.
HIDE_PACKAGE = """
import importlib.abc, sys


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_mspt", "continual_trainer", "datasets_scripts"):
            raise ImportError(f"blocked import of {name}")


sys.meta_path.insert(0, Block())
"""

TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=64,
            max_position_embeddings=40)  # fmt: skip
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
              patch_size=8)  # fmt: skip
RE_LABELS = {0: "None", 1: "/per/per/peer", 2: "/per/org/member_of", 3: "/loc/loc/contain", 4: "/org/loc/locate_at"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "john", "smith", "paris", "visited"]


def make_config(labels=RE_LABELS, text=None, vision=None, **kwargs):
    from modeling_mspt import MSPTConfig

    kwargs.setdefault("num_interaction_layers", 1)
    kwargs.setdefault("max_text_length", 16)
    return MSPTConfig(text_config={**TEXT, **(text or {})}, vision_config={**VISION, **(vision or {})},
                      id2label=dict(labels), **kwargs)  # fmt: skip


def drop_checkpoint_tensor(folder, name):
    """Delete one tensor from a `save_pretrained` folder's model.safetensors (an incomplete tower checkpoint)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(Path(folder) / "model.safetensors")
    del weights[name]
    save_file(weights, Path(folder) / "model.safetensors", metadata={"format": "pt"})


def make_inputs(config, batch=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.text_config.vocab_size, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, length - 2 :] = 0  # one padded sample
    size = config.vision_config.image_size
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, size, size, generator=g),
        "image_mask": torch.ones(batch, dtype=torch.long),
    }


@pytest.fixture
def tiny_tokenizer():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ed", "##ing"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


@pytest.fixture
def tiny_image_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture
def tiny_processor(tiny_tokenizer, tiny_image_processor):
    from modeling_mspt import MSPTProcessor

    return MSPTProcessor(image_processor=tiny_image_processor, tokenizer=tiny_tokenizer, max_length=16)


def full_data_dir() -> Path:
    """The folder with the full split files (``imre/txt/...``, ``imner/twitter2017/...``) named by $MSPT_DATA_DIR;
    skips the calling test when it is unset."""
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        pytest.skip(f"needs the full split files: set {DATA_DIR_ENV} to the folder holding imre/ and imner/ "
                    f"(the split files), e.g. {DATA_DIR_ENV}=../shared/data")
    path = Path(value).expanduser().resolve()
    if not (path / "imre" / "txt").is_dir() or not (path / "imner" / "twitter2017").is_dir():
        pytest.fail(f"{DATA_DIR_ENV}={value} does not hold imre/txt/ and imner/twitter2017/")
    return path


@pytest.fixture(scope="session")
def full_data() -> Path:
    return full_data_dir()


@pytest.fixture(scope="session")
def synthetic_benchmarks(tmp_path_factory):
    """Small synthetic RE and NER streams of 3 tasks (built once per session)."""
    from datasets_scripts import load_benchmark

    cache = tmp_path_factory.mktemp("synthetic-cache")
    sizes = dict(num_tasks=3, train_per_task=48, validation_per_task=8, test_per_task=24)
    return {kind: load_benchmark("synthetic", kind, cache_dir=str(cache), **sizes) for kind in ("re", "ner")}


def tiny_setup(benchmark, max_length=24, seed=0, **config_kwargs):
    """A tiny MSPT model and a word-level processor for a benchmark."""
    from modeling_mspt import MSPTForRelationExtraction, MSPTForTokenClassification, MSPTProcessor

    processor = MSPTProcessor.from_word_vocabulary(benchmark.vocabulary(), image_size=32, max_length=max_length)
    config = make_config(dict(enumerate(benchmark.label_names)), text={"vocab_size": len(processor.tokenizer)},
                         max_text_length=max_length, **config_kwargs)  # fmt: skip
    torch.manual_seed(seed)
    model_class = MSPTForRelationExtraction if benchmark.task_type == "re" else MSPTForTokenClassification
    return model_class(config), processor


def tiny_args(output_dir, strategy="mspt", **kwargs):
    from continual_trainer import ContinualTrainingArguments

    defaults = dict(num_train_epochs=1, per_device_train_batch_size=16, per_device_eval_batch_size=32,
                    learning_rate=3e-3, logging_steps=2, save_strategy="no", report_to="none", use_cpu=True,
                    seed=0, disable_tqdm=True, ewc_fisher_samples=16)  # fmt: skip
    return ContinualTrainingArguments(output_dir=str(output_dir), strategy=strategy, **{**defaults, **kwargs})
