"""Hostile input on the knowledge-graph path (issue 16): huge images, `entity_spans` and duplicate ids in the posts
file, literal entity-marker strings in user text. Tiny random models built in-process (no training)."""

import io
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import NER_LABELS, RE_LABELS, make_config
from PIL import Image

from datasets_scripts.posts import read_posts
from modeling_mspt import (
    RE_MARKERS,
    MSPTForRelationExtraction,
    MSPTForTokenClassification,
    MSPTKnowledgeGraphPipeline,
    MSPTProcessor,
)
from modeling_mspt.graph_mspt import MSPTKnowledgeGraph, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["coach", "ada", "meets", "mayor", "ben", "in", "rome"]


@pytest.fixture(scope="module")
def models():
    """(NER model, RE model, processor): tiny, random, shared by both stages."""
    processor = MSPTProcessor.from_word_vocabulary(WORDS, image_size=32, max_length=24)
    vocab = {"vocab_size": len(processor.tokenizer)}
    torch.manual_seed(0)
    ner = MSPTForTokenClassification(make_config(NER_LABELS, text=vocab, max_text_length=24)).eval()
    re_ = MSPTForRelationExtraction(make_config(RE_LABELS, text=vocab, max_text_length=24, re_pooling="entity")).eval()
    return ner, re_, processor


def _save(image: Image.Image, path: Path, format: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format)
    return str(path)


def _huge_images(folder: Path, monkeypatch) -> tuple[str, str]:
    """A JPEG and a PNG that PIL refuses to open (DecompressionBombError), as a 14000 x 14000 image is with the
    default limit: the limit is lowered instead of writing 196 M pixels."""
    jpeg = _save(Image.new("RGB", (1600, 1200), (220, 20, 20)), folder / "huge.jpg", "JPEG")
    png = _save(Image.new("RGB", (1600, 1200), (20, 220, 20)), folder / "huge.png", "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(jpeg)
    return jpeg, png


# --- case 2: a huge image never stops the batch -------------------------------------------------------------------
def test_pipeline_goes_on_past_huge_and_broken_images(models, tmp_path, monkeypatch):
    ner, re_, processor = models
    pipe = MSPTKnowledgeGraphPipeline(model=ner, processor=processor, re_model=re_, re_processor=processor,
                                      device="cpu")  # fmt: skip
    jpeg, png = _huge_images(tmp_path, monkeypatch)
    (tmp_path / "random.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    spans = {"entity_spans": [[0, 2, "PER"], [3, 5, "PER"]]}
    posts = [{"id": "plain", "text": "coach ada meets mayor ben", "image": None, **spans},
             {"id": "huge-jpeg", "text": "coach ada meets mayor ben", "image": jpeg, **spans},
             {"id": "huge-png", "text": "coach ada meets mayor ben", "image": png, **spans},
             {"id": "random", "text": "coach ada meets mayor ben", "image": str(tmp_path / "random.jpg"), **spans}]
    results = {r["id"]: r for r in pipe(posts, threshold=0.0)}  # before the fix: DecompressionBombError
    assert list(results) == ["plain", "huge-jpeg", "huge-png", "random"]
    assert all(r["error"] is None and len(r["entities"]) == 2 for r in results.values())
    assert not results["huge-jpeg"]["image_missing"] and not results["huge-jpeg"]["warnings"]  # decoded, reduced
    for post_id, reason in (("huge-png", "MAX_IMAGE_PIXELS"), ("random", "unreadable")):
        assert results[post_id]["image_missing"] and reason in results[post_id]["warnings"][0], results[post_id]
        assert "zero image" in results[post_id]["warnings"][0]
    reduced = pipe.preprocess(posts[1]).image
    assert reduced.width * reduced.height <= 200_000 and reduced.getpixel((0, 0))[0] > 150


def test_build_kg_writes_the_graph_when_a_post_has_a_huge_image(models, tmp_path, monkeypatch, capsys):
    pytest.importorskip("rdflib")
    ner, re_, processor = models
    for name, model in (("ner", ner), ("re", re_)):
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    jpeg, png = _huge_images(tmp_path / "posts" / "img", monkeypatch)
    lines = [{"id": "p1", "text": "coach ada meets mayor ben", "image": "img/huge.jpg"},
             {"id": "p2", "text": "mayor ben in rome", "image": "img/huge.png",
              "entity_spans": [[0, 2, "GIVEN"], [3, 4, "PLACE"]]},
             {"id": "p1", "text": "coach ben", "image": None}]  # fmt: skip
    posts = tmp_path / "posts" / "posts.jsonl"
    posts.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["build_kg.py", "--posts", str(posts), "--ner_model", str(tmp_path / "ner"),
                                      "--re_model", str(tmp_path / "re"), "--output_dir", str(tmp_path / "kg"),
                                      "--progress_bar", "false"])  # fmt: skip
    runpy.run_path(str(ROOT / "examples" / "build_kg.py"), run_name="__main__")  # before the fix: no output at all
    out = capsys.readouterr().out
    summary = json.loads(out.rsplit("Summary: ", 1)[1])
    assert summary["posts"] == 3 and summary["failed"] == 1 and summary["flagged"] == 1, out
    report = {(r["id"], r["status"]) for r in read_jsonl(tmp_path / "kg" / "report.jsonl")}
    assert report == {("p1", "ok"), ("p2", "flagged"), ("p1", "failed")}
    entities = read_jsonl(tmp_path / "kg" / "entities.jsonl")
    mentions = [(m["post_id"], m["span"], e["type"]) for e in entities for m in e["mentions"]]
    assert ("p2", [0, 2], "GIVEN") in mentions and ("p2", [3, 4], "PLACE") in mentions  # the file's entity_spans


# --- case 17: posts files ------------------------------------------------------------------------------------------
def _posts_file(tmp_path: Path, records: list) -> Path:
    path = tmp_path / "posts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_read_posts_keeps_entity_spans_and_checks_them(tmp_path):
    path = _posts_file(tmp_path, [
        {"id": "ok", "text": "coach Ada meets mayor Ben", "entity_spans": [[1, 2, "PER"], [4, 5]]},
        {"id": "outside", "text": "coach Ada", "entity_spans": [[1, 5]]},
        {"id": "not-ints", "text": "coach Ada", "entity_spans": [["1", 2]]},
        {"id": "bool", "text": "coach Ada", "entity_spans": [[False, True]]},
        {"id": "not-a-list", "text": "coach Ada", "entity_spans": "1-2"},
        {"id": "type", "text": "coach Ada", "entity_spans": [[0, 1, 7]]},
    ])  # fmt: skip
    posts, errors = read_posts(path)
    assert posts == [{"id": "ok", "text": "coach Ada meets mayor Ben", "image": None,
                      "entity_spans": [[1, 2, "PER"], [4, 5]]}]  # before the fix: entity_spans dropped  # fmt: skip
    assert [(e.id, e.where.rsplit(":", 1)[1]) for e in errors] == [
        ("outside", "2"), ("not-ints", "3"), ("bool", "4"), ("not-a-list", "5"), ("type", "6")]  # fmt: skip
    assert all("entity_spans" in e.error for e in errors)
    assert "outside the text of 2 words" in errors[0].error


def test_read_posts_refuses_duplicate_ids(tmp_path):
    path = _posts_file(tmp_path, [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"},
                                  {"text": "no id"}, {"id": "line-4", "text": "clash"}])  # fmt: skip
    posts, errors = read_posts(path)
    assert [p["id"] for p in posts] == ["a", "b", "line-4"]
    assert [(e.id, e.where.rsplit(":", 1)[1]) for e in errors] == [("a", "3"), ("line-4", "5")]
    assert "duplicate id 'a'" in errors[0].error and f"{path}:1" in errors[0].error


def _result(post_id, text, start=0):
    entity = {"text": text, "type": "PER", "score": 0.9,
              "provenance": {"post_id": post_id, "span": [start, start + 1], "char_span": [0, 3], "image": None}}
    return {"id": post_id, "image": None, "error": None, "warnings": [], "entities": [entity], "triples": []}


def test_graph_refuses_a_post_id_twice():
    graph = MSPTKnowledgeGraph().add([_result("p1", "Ada")])
    with pytest.raises(ValueError, match="post id 'p1' .* already in the graph"):
        graph.add([_result("p1", "Ben")])  # before the fix: the two posts' mentions were merged
    with pytest.raises(ValueError, match="post id 'p2'"):
        MSPTKnowledgeGraph().add([_result("p2", "Ada"), _result("p2", "Ben", 3)])
    assert [len(e["mentions"]) for e in graph.entity_records()] == [1]
    failed = {"id": "p1", "error": "empty text", "entities": [], "triples": [], "warnings": [], "image": None}
    graph.add([failed])  # a failed post adds nothing and clashes with nothing


# --- case 17: literal marker strings in user text -----------------------------------------------------------------
def test_literal_markers_in_the_text_cannot_move_the_entity_positions(models):
    _, _, processor = models
    tokenizer = processor.tokenizer
    marker_ids = processor.marker_ids()
    words = [["<s>", "coach", "ada", "a</o>b", "meets", "<o>", "mayor", "ben", "[SEP]"],
             ["coach", "ada", "meets", "mayor", "ben"]]
    batch = processor(words, head_spans=[(1, 3), (0, 2)], tail_spans=[(6, 8), (3, 5)])
    for ids, (head, tail) in zip(batch["input_ids"], batch["entity_positions"].tolist()):
        assert [int((ids == m).sum()) for m in marker_ids] == [1, 1, 1, 1]  # only the inserted markers
        assert int((ids == tokenizer.sep_token_id).sum()) == 1
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
        assert tokens[head] == "<s>" and tokens[head + 1] == "coach"  # before the fix: the literal "<s>" at 1
        assert tokens[tail] == "<o>" and tokens[tail + 1] == "mayor"
    ner = processor([words[0]], word_labels=[[0] * len(words[0])])
    assert not any(int((ner["input_ids"] == m).sum()) for m in marker_ids)
    assert int(ner["word_start_mask"].sum()) == len(words[0])  # still one first sub-token per word
    assert set(RE_MARKERS) <= set(tokenizer.get_vocab())
