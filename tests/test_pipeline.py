"""The knowledge-graph pipeline end to end: models trained by the example scripts, synthetic posts with known truth,
batching, bad input, the graph files (JSON Lines, Turtle) and examples/build_kg.py.

Quality thresholds (measured numbers beside them; the models are trained once per session by the example scripts,
seed 0, task 0 of the synthetic benchmark, 1200 examples x 20 epochs, the default tiny model with entity-marker
pooling (`--re_pooling entity`): about 75 s for the two, side by side):

- Entities (NER stage, from text + image): typed exact-span precision / recall.
- Triples with the entities given (`entity_spans`, RE stage only) and end to end (NER, then RE on every ordered pair
  of the entities found): directed, so (B, r, A) for a true (A, r, B) is an error. The synthetic RE benchmark
  reverses a fifth of its pairs (labelled None) so that direction can be learned.
- A randomly initialised pair of models must fail the thresholds (so they can fail).
"""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from datasets_scripts.posts import read_posts, score_posts, synthetic_posts, write_posts
from modeling_mspt import (
    KG_TASK,
    MSPTForRelationExtraction,
    MSPTForTokenClassification,
    MSPTKnowledgeGraphPipeline,
)
from modeling_mspt.graph_mspt import MSPTKnowledgeGraph, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# Every argument the learning depends on is given here, so that a change of the example scripts' defaults does not
# change what these tests measure.
TRAIN = ["--synthetic_num_tasks", "1", "--synthetic_train_per_task", "1200", "--synthetic_test_per_task", "20",
         "--num_train_epochs", "20", "--re_pooling", "entity", "--strategy", "mspt", "--learning_rate", "3e-3",
         "--per_device_train_batch_size", "16", "--warmup_steps", "0.1", "--seed", "0", "--save_strategy", "no",
         "--disable_tqdm", "true"]  # fmt: skip
NUM_POSTS = 240  # 347 entities and 132 true triples, three times what 80 posts held: less noise in P / R
# Thresholds (issue 11: they must hold on any CPU). With 600 examples x 40 epochs the RE stage was fragile: over
# training seeds 0-4 the directed precision with the entities given went from 0.62 to 0.82, because some seeds never
# learned direction (24-25 reversed pairs accepted in 240 posts against 3) and all memorised the 600 rows (training
# loss 0.01). Twice the rows for half the epochs (the same number of steps) fixed it. Measured with this TRAIN on
# these 240 posts (posts seed 1), training seeds 0-4 with 1 thread, seeds 0-1 also with 2 threads and with
# ATEN_CPU_CAPABILITY=default (no AVX kernels: a stand-in for another CPU), 9 RE and 8 NER models: entities
# P 0.87-0.95 R 0.88-0.96; triples with the entities given P 0.86-1.00 R 0.86-0.97; end to end P 0.79-0.99
# R 0.80-0.92 (seed 0, 1 thread: 0.91 / 0.88, 0.96 / 0.95, 0.95 / 0.89; printed with `-s`). Each bar sits at least
# 0.12 below the worst case. Random models score entities P <= 0.04 and no triple. With the paper's CLS pooling the
# same budget does not learn direction (a reversed pair is judged right 21 times in 46), hence `--re_pooling entity`,
# also the RE example's default.
ENTITY_PRECISION, ENTITY_RECALL = 0.75, 0.75
TRIPLE_PRECISION, TRIPLE_RECALL = 0.70, 0.70  # directed, entities given
END_TO_END_PRECISION, END_TO_END_RECALL = 0.65, 0.65  # directed, NER then RE

@pytest.fixture(scope="session")
def kg_models(tmp_path_factory):
    """NER and RE models trained once by the example scripts (the two run side by side as subprocesses)."""
    root = tmp_path_factory.mktemp("kg-models")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])})  # fmt: skip
    runs = {kind: subprocess.Popen([sys.executable, str(ROOT / "examples" / f"run_im{kind}.py"), "--output_dir",
                                    str(root / kind), "--dataset_cache_dir", str(root / f"cache-{kind}"), *TRAIN],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for kind in ("ner", "re")}  # fmt: skip
    for run in runs.values():
        log, _ = run.communicate(timeout=600)
        assert run.returncode == 0, log[-4000:]
    return root / "ner", root / "re"


@pytest.fixture(scope="session")
def pipe(kg_models):
    ner, re_ = kg_models
    return transformers.pipeline(KG_TASK, model=str(ner), re_model=str(re_), device="cpu")


@pytest.fixture(scope="session")
def posts():
    return synthetic_posts(NUM_POSTS, seed=1, num_tasks=1)


def inputs(posts, gold_entities=False):
    return [{"id": p["id"], "text": p["text"], "image": p["image"]}
            | ({"entity_spans": [[e["start"], e["end"], e["type"]] for e in p["entities"]]} if gold_entities else {})
            for p in posts]  # fmt: skip


def scores(pipe, posts):
    """(NER then RE: entity and end-to-end triple scores, RE on the true entities: triple scores), all directed."""
    return score_posts(posts, pipe(inputs(posts))), score_posts(posts, pipe(inputs(posts, gold_entities=True)))


def test_task_is_registered_and_found_by_transformers_pipeline(pipe):
    assert KG_TASK in transformers.pipelines.PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(pipe, MSPTKnowledgeGraphPipeline)
    assert isinstance(pipe.model, MSPTForTokenClassification) and isinstance(pipe.re_model, MSPTForRelationExtraction)


def test_swapped_models_are_refused(kg_models):
    ner, re_ = kg_models
    with pytest.raises(ValueError, match="swapped"):
        transformers.pipeline(KG_TASK, model=str(re_), re_model=str(ner), device="cpu")
    with pytest.raises(ValueError, match="RE model"):
        MSPTKnowledgeGraphPipeline(model=str(ner))


def test_recovers_known_entities_and_triples(pipe, posts):
    end_to_end, given = scores(pipe, posts)
    print("end to end", end_to_end, "\nentities given", given)
    assert end_to_end["entity_precision"] >= ENTITY_PRECISION, end_to_end
    assert end_to_end["entity_recall"] >= ENTITY_RECALL, end_to_end
    assert given["triple_precision"] >= TRIPLE_PRECISION and given["triple_recall"] >= TRIPLE_RECALL, given
    assert end_to_end["triple_precision"] >= END_TO_END_PRECISION, end_to_end
    assert end_to_end["triple_recall"] >= END_TO_END_RECALL, end_to_end


def test_untrained_models_fail_the_thresholds(pipe, posts):
    torch.manual_seed(0)
    untrained = MSPTKnowledgeGraphPipeline(
        model=MSPTForTokenClassification(pipe.model.config), processor=pipe.processor,
        re_model=MSPTForRelationExtraction(pipe.re_model.config), re_processor=pipe.re_processor, device="cpu",
    )  # fmt: skip
    end_to_end, given = scores(untrained, posts)
    assert end_to_end["entity_precision"] < ENTITY_PRECISION or end_to_end["entity_recall"] < ENTITY_RECALL
    assert given["triple_precision"] < TRIPLE_PRECISION or given["triple_recall"] < TRIPLE_RECALL, given
    assert end_to_end["triple_precision"] < END_TO_END_PRECISION or end_to_end["triple_recall"] < END_TO_END_RECALL


def test_outputs_are_consistent_and_carry_provenance(pipe, posts):
    results = pipe(inputs(posts, gold_entities=True), threshold=0.0) + pipe(inputs(posts), threshold=0.0)
    assert [r["id"] for r in results] == [p["id"] for p in posts] * 2
    assert any(r["triples"] for r in results)
    for post, result in zip(posts * 2, results):
        words = post["text"].split()
        spans = {tuple(e["provenance"]["span"]): e for e in result["entities"]}
        for e in result["entities"]:
            start, end = e["provenance"]["span"]
            c0, c1 = e["provenance"]["char_span"]
            assert e["text"] == " ".join(words[start:end]) == post["text"][c0:c1]
            assert e["type"] in {label[2:] for label in pipe.ner_labels} and 0 < e["score"] <= 1
        for t in result["triples"]:
            head, tail = spans[tuple(t["provenance"]["head_span"])], spans[tuple(t["provenance"]["tail_span"])]
            assert (t["head"], t["head_type"]) == (head["text"], head["type"])
            assert (t["tail"], t["tail_type"]) == (tail["text"], tail["type"])
            assert t["relation"] in pipe.relations and t["relation"] != "None"
            assert t["provenance"]["post_id"] == post["id"]
    high = pipe(inputs(posts, gold_entities=True), threshold=0.9)
    assert all(t["score"] >= 0.9 for r in high for t in r["triples"])
    assert sum(len(r["triples"]) for r in high) < sum(len(r["triples"]) for r in results[: len(posts)])


def without_scores(results):
    """Results with the confidences taken out, and the confidences (which padding may change in the last digit)."""
    stripped, confidences = [], []
    for r in results:
        stripped.append({**r, "entities": [{k: v for k, v in e.items() if k != "score"} for e in r["entities"]],
                         "triples": [{k: v for k, v in t.items() if k != "score"} for t in r["triples"]]})  # fmt: skip
        confidences += [x["score"] for x in r["entities"] + r["triples"]]
    return stripped, confidences


def assert_same_results(a, b):
    (a, a_scores), (b, b_scores) = without_scores(a), without_scores(b)
    assert a == b
    assert a_scores == pytest.approx(b_scores, abs=1e-4)


def count_forward_calls(pipe, *args, **kwargs):
    calls = {"ner": 0, "re": 0}
    hooks = [m.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, m in (("ner", pipe.model), ("re", pipe.re_model))]  # fmt: skip
    try:
        return pipe(*args, **kwargs), calls
    finally:
        for hook in hooks:
            hook.remove()


def test_batches_posts_and_pairs_and_results_do_not_depend_on_batch_size(pipe, posts):
    tagged, calls = count_forward_calls(pipe, inputs(posts), batch_size=16, threshold=0.0)
    assert calls == {"ner": -(-len(posts) // 16), "re": -(-sum(len(r["entities"]) * (len(r["entities"]) - 1) for r in tagged) // 64)}
    given, calls = count_forward_calls(pipe, inputs(posts, gold_entities=True), re_batch_size=32, threshold=0.0)
    pairs = sum(len(p["entities"]) * (len(p["entities"]) - 1) for p in posts)
    assert pairs > 32 and calls == {"ner": 0, "re": -(-pairs // 32)}  # every ordered pair, 32 per forward pass
    assert sum(len(r["triples"]) for r in given) > 0
    assert_same_results(tagged, pipe(inputs(posts), batch_size=1, threshold=0.0))
    assert_same_results(given, pipe(inputs(posts, gold_entities=True), re_batch_size=1, threshold=0.0))
    one = {"batch_size": 1, "re_batch_size": 1}
    assert pipe(inputs(posts)[0], **one) == pipe(inputs(posts[:1]), **one)[0]  # a single post in, a single result out


def test_words_without_sub_tokens_and_truncated_text_keep_the_spans_right(pipe, posts):
    plain = [p for p in inputs(posts) if p["text"].count(" ") >= 2][:8]
    # a zero-width space is a word to str.split() but gives the tokenizer no sub-token
    shifted = [p | {"text": "\u200b " + p["text"].replace(" ", " \u200b ", 1)} for p in plain]
    def moved(i):  # where word i of the plain text is in the shifted one
        return i + 1 if i == 0 else i + 2

    for a, b in zip(pipe(plain), pipe(shifted)):
        spans = [e["provenance"]["span"] for e in a["entities"]]
        expected = [(e["text"], e["type"], [moved(s), moved(t - 1) + 1]) for e, (s, t) in zip(a["entities"], spans)]
        assert expected == [(e["text"], e["type"], e["provenance"]["span"]) for e in b["entities"]]
    assert any(a["entities"] for a in pipe(plain))
    text = posts[0]["text"] + " today" * 200 + " coach Ada"
    long = pipe({"id": "long", "text": text, "image": None})
    assert "beyond the NER max_length" in long["warnings"][0]
    assert all(e["provenance"]["span"][1] <= 128 for e in long["entities"])
    n = len(text.split())
    far = pipe({"id": "far", "text": text, "image": None, "entity_spans": [[0, 1], [n - 1, n]]}, threshold=0.0)
    assert not far["triples"] and len(far["warnings"]) == 2 and "beyond the RE max_length" in far["warnings"][0]


def test_bad_posts_are_reported_by_id_and_the_others_go_through(pipe, posts, tmp_path):
    good = inputs(posts[:3])
    bad = [
        {"id": "no-image-file", "text": posts[3]["text"], "image": str(tmp_path / "missing.png")},
        {"id": "empty", "text": "   ", "image": None},
        {"id": "no-text", "image": None},
        42,
        {"id": "bad-spans", "text": "coach Ada", "image": None, "entity_spans": [[1, 5]]},
    ]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    bad.append({"id": "broken-image", "text": posts[4]["text"], "image": str(tmp_path / "broken.png")})
    results = pipe(good[:2] + bad + good[2:])
    by_id = {r["id"]: r for r in results}
    for post_id in ("empty", "no-text", "#5", "bad-spans"):
        assert by_id[post_id]["error"] and not by_id[post_id]["entities"], post_id
    for post_id in ("no-image-file", "broken-image"):
        assert by_id[post_id]["image_missing"] and by_id[post_id]["error"] is None
        assert "zero image" in by_id[post_id]["warnings"][0]
    assert_same_results([by_id[p["id"]] for p in good], pipe(good))
    zero = pipe({"id": "no-image-file", "text": posts[3]["text"], "image": None})
    assert [e["type"] for e in by_id["no-image-file"]["entities"]] == [e["type"] for e in zero["entities"]]


def test_read_posts_reports_unreadable_lines_and_keeps_the_rest(tmp_path):
    write_posts(synthetic_posts(2, seed=5), tmp_path)
    path = tmp_path / "posts.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "cut-off", "text": "coach Ada\n\n[1, 2]\n{"text": "no id"}\n')
    posts, errors = read_posts(path)
    assert [p["id"] for p in posts] == ["post-5-0", "post-5-1", "line-6"]
    assert posts[0]["image"] == str(tmp_path / "images" / "post-5-0.png") and os.path.isfile(posts[0]["image"])
    assert [(e.id, e.where.rsplit(":", 1)[1]) for e in errors] == [("cut-off", "3"), (None, "5")]
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.txt").write_text("coach Ada meets mayor Ben")
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "b.txt").write_bytes(b"\xff\xfe bad")
    posts, errors = read_posts(folder)
    assert posts == [{"id": "a", "text": "coach Ada meets mayor Ben", "image": str(folder / "a.png")}]
    assert [e.id for e in errors] == ["b"]


def _result(post_id, entities, triples=()):
    return {"id": post_id, "image": f"{post_id}.png", "error": None, "warnings": [],
            "entities": [{"text": t, "type": k, "score": 0.9, "provenance": {"post_id": post_id, "span": [s, s + 1],
                          "char_span": [0, 1], "image": f"{post_id}.png"}} for t, k, s in entities],
            "triples": [{"head": h, "head_type": "PER", "relation": r, "tail": t, "tail_type": "PER", "score": 0.8,
                         "provenance": {"post_id": post_id, "head_span": [hs, hs + 1], "tail_span": [ts, ts + 1],
                                        "image": f"{post_id}.png"}} for h, r, t, hs, ts in triples]}  # fmt: skip


def test_graph_merges_entity_strings_and_round_trips_jsonl_and_turtle(tmp_path):
    rdflib = pytest.importorskip("rdflib")
    results = [
        _result("p/1", [("Ada", "PER", 0), ("Ben", "PER", 2)], [("Ada", "/per/per/peer", "Ben", 0, 2)]),
        _result("p2", [("Ada", "ORG", 1), ("Ada-Berg", "PER", 3), ("Ada Berg", "PER", 5)],
                [("Ada", "/per/per/peer", "Ada Berg", 1, 5)]),
        _result("p3", [("Ben", "PER", 0), ("Ada", "PER", 4)], [("Ada", "/per/per/peer", "Ben", 4, 0)]),
        {"id": "failed", "error": "empty text", "entities": [], "triples": [], "warnings": [], "image": None},
    ]  # fmt: skip
    graph = MSPTKnowledgeGraph().add(results)
    entities = {e["text"]: e for e in graph.entity_records()}
    assert len(entities) == 4 and len(entities["Ada"]["mentions"]) == 3
    assert entities["Ada"]["type"] == "PER" and entities["Ada"]["types"] == {"PER": 2, "ORG": 1}
    assert entities["Ada-Berg"]["id"] != entities["Ada Berg"]["id"]
    triples = graph.triple_records()
    assert [(t["head"], t["tail"], len(t["evidence"])) for t in triples] == [("Ada", "Ben", 2), ("Ada", "Ada Berg", 1)]
    paths = graph.write_jsonl(tmp_path)
    assert read_jsonl(paths[0]) == graph.entity_records() and read_jsonl(paths[1]) == triples
    written = graph.write_turtle(str(tmp_path / "graph.ttl"))
    parsed = rdflib.Graph().parse(tmp_path / "graph.ttl", format="turtle")
    assert len(parsed) == written == len(graph.to_rdf())
    mspt = rdflib.Namespace("http://example.org/mspt/vocab#")
    assert len(set(parsed.subjects(rdflib.RDF.type, mspt.Entity))) == 4
    assert len(set(parsed.subjects(rdflib.RDF.type, mspt.Post))) == 3  # the failed post is not in the graph
    assert len(set(parsed.subjects(rdflib.RDF.type, rdflib.RDF.Statement))) == 3
    ada_ben = [(s, o) for s, p, o in parsed if str(p).endswith("relation/per_per_peer")]
    assert len(ada_ben) == 2  # two facts, the first with two pieces of evidence


def test_save_pretrained_writes_one_directory_that_loads_back(pipe, posts, tmp_path):
    pipe.save_pretrained(tmp_path / "kg")
    assert (tmp_path / "kg" / "ner" / "config.json").is_file() and (tmp_path / "kg" / "re" / "config.json").is_file()
    again = MSPTKnowledgeGraphPipeline(model=str(tmp_path / "kg"), device="cpu")
    assert again(inputs(posts[:8])) == pipe(inputs(posts[:8]))


def run_build_kg(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["build_kg.py", *map(str, argv)])
    runpy.run_path(str(ROOT / "examples" / "build_kg.py"), run_name="__main__")
    return capsys.readouterr().out


def test_build_kg_writes_the_graph_and_counts_failures(kg_models, monkeypatch, capsys, tmp_path):
    rdflib = pytest.importorskip("rdflib")
    ner, re_ = kg_models
    path = write_posts(synthetic_posts(6, seed=2), tmp_path / "in")
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "torn", "text": "coach\n')
        f.write(json.dumps({"id": "empty", "text": "", "image": None}) + "\n")
        lost = {"id": "lost-image", "text": "coach Ada meets mayor Ben", "image": "images/gone.png"}
        f.write(json.dumps(lost) + "\n")
    out = run_build_kg(monkeypatch, capsys, "--posts", path, "--ner_model", ner, "--re_model", re_,
                       "--output_dir", tmp_path / "kg", "--threshold", "0.3")  # fmt: skip
    summary = json.loads(out.rsplit("Summary: ", 1)[1])
    assert summary["posts"] == 9 and summary["failed"] == 2 and summary["flagged"] == 1, out
    assert "failed post 'torn'" in out and "failed post 'empty'" in out and "flagged post 'lost-image'" in out
    entities = read_jsonl(tmp_path / "kg" / "entities.jsonl")
    assert len(entities) == summary["entities"] > 0
    assert len(read_jsonl(tmp_path / "kg" / "triples.jsonl")) == summary["triples"]
    assert len(rdflib.Graph().parse(tmp_path / "kg" / "graph.ttl", format="turtle")) == summary["rdf_triples"]
    report = {r["id"]: r["status"] for r in read_jsonl(tmp_path / "kg" / "report.jsonl")}
    assert report["torn"] == report["empty"] == "failed" and report["lost-image"] == "flagged"


def test_build_kg_without_models_names_the_commands_to_run(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # no outputs/imner, outputs/imre here
    with pytest.raises(SystemExit) as exit_info:
        run_build_kg(monkeypatch, capsys)
    message = str(exit_info.value.code)
    assert "accelerate launch examples/run_imner.py" in message and "accelerate launch examples/run_imre.py" in message
    assert "outputs/imner" in message
