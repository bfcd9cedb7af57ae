"""The local `evaluate` modules in metrics/ (relation micro-F1 without None, seqeval entity F1, continual summary):
values against hand-computed cases, the same results as the hand-written formulas they replace, and
`evaluate.load("<repo>/metrics/<name>")` in a fresh process with the network closed."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from continual_trainer.metrics import (
    METRIC_MODULES,
    continual_summary,
    entity_scores,
    load_metric,
    metric_path,
    relation_scores,
    score_task,
)

ROOT = Path(__file__).resolve().parents[1]


# --- relation micro-F1 -------------------------------------------------------------------------------------------


def test_relation_micro_f1_leaves_none_out_of_both_denominators():
    # id 0 = None. Correct non-None: #0, #1. Predicted non-None: #0 #1 #2 #6 #7 (5). Gold non-None: #0-#3 (4).
    # #4 and #5 are correct None predictions: they count for accuracy only.
    pred, gold = [1, 2, 3, 0, 0, 0, 2, 1], [1, 2, 2, 3, 0, 0, 0, 0]
    scores = load_metric("relation_micro_f1").compute(predictions=pred, references=gold, none_id=0)
    assert scores["precision"] == pytest.approx(2 / 5) and scores["recall"] == pytest.approx(2 / 4)
    assert scores["micro_f1"] == pytest.approx(2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4))  # 4/9
    assert scores["accuracy"] == pytest.approx(4 / 8)
    assert relation_scores(np.asarray(pred), np.asarray(gold), none_id=0) == scores


def test_relation_micro_f1_other_none_id_and_degenerate_inputs():
    # none_id 3: correct non-None #0; predicted non-None #0 #1; gold non-None #0 #3; accuracy #0 #2.
    scores = relation_scores([1, 2, 3, 3], [1, 3, 3, 2], none_id=3)
    assert (scores["precision"], scores["recall"], scores["micro_f1"], scores["accuracy"]) == (0.5, 0.5, 0.5, 0.5)
    zeros = {"micro_f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert relation_scores([0, 0], [0, 0], none_id=0) == {**zeros, "accuracy": 1.0}  # only None: P, R undefined
    assert relation_scores(np.array([], dtype=np.int64), np.array([], dtype=np.int64), none_id=0) == {
        **zeros, "accuracy": 0.0}  # fmt: skip  (a task slice with no test example)


# --- seqeval entity F1 -------------------------------------------------------------------------------------------

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "B-PER"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "X", "I-PER"]]
# Gold entities: PER(0,0-1) LOC(0,3) ORG(1,0-1) PER(1,3). Predicted: PER(0,0-1) ORG(0,3) ORG(1,0-1) PER(1,3) (a
# lone I- opens an entity in seqeval's default mode; X is outside BIO and counts as O). 3 of 4 match both ways.


def test_seqeval_entity_f1_by_hand():
    scores = load_metric("seqeval_entity_f1").compute(predictions=PRED, references=GOLD)
    assert scores == pytest.approx({"f1": 0.75, "precision": 0.75, "recall": 0.75})
    assert entity_scores(PRED, GOLD) == scores
    # Per-type slices: PER all right; LOC missed (P has no prediction: 0 by zero_division); ORG 1 of 2 predicted.
    assert entity_scores(PRED, GOLD, types={"PER"}) == pytest.approx({"f1": 1.0, "precision": 1.0, "recall": 1.0})
    assert entity_scores(PRED, GOLD, types={"LOC"}) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert entity_scores(PRED, GOLD, types={"ORG"}) == pytest.approx({"f1": 2 / 3, "precision": 0.5, "recall": 1.0})


def test_seqeval_entity_f1_tags_outside_bio_count_as_o():
    gold, pred = [["B-PER", "O", "O"]], [["B-PER", "[SEP]", "O"]]
    assert precision_score(gold, pred) == 0.5  # raw seqeval reads "[SEP]" as an entity of type "SEP]"
    assert entity_scores(pred, gold) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}


# --- continual summary -------------------------------------------------------------------------------------------

MATRIX = [[0.8], [0.9, 0.7], [0.6, 0.5, 0.9]]
CUMULATIVE = [0.8, 0.75, 0.6]
# final_average (0.6 + 0.5 + 0.9) / 3; average_incremental (0.8 + 0.75 + 0.6) / 3; forgetting: task 0 peaked at 0.9
# after task 1 (not on its diagonal 0.8), ((0.9 - 0.6) + (0.7 - 0.5)) / 2 = 0.25; bwt ((0.6 - 0.8) + (0.5 - 0.7)) / 2.
HAND = {"final_average": 2.0 / 3, "average_incremental": 2.15 / 3, "forgetting": 0.25, "bwt": -0.2}


def test_continual_summary_by_hand():
    metric = load_metric("continual_summary")
    assert metric.compute(accuracy_matrix=MATRIX, cumulative=CUMULATIVE) == pytest.approx(HAND)
    assert continual_summary(MATRIX, CUMULATIVE) == pytest.approx(HAND)
    square = [row + [None] * (3 - len(row)) for row in MATRIX]  # null above the diagonal, as results.json has it
    assert continual_summary(square, CUMULATIVE) == pytest.approx(HAND)
    assert continual_summary([[0.7]], [0.7]) == {"final_average": 0.7, "average_incremental": 0.7, "forgetting": 0.0,
                                                 "bwt": 0.0}  # fmt: skip


def test_continual_summary_accumulates_one_row_per_task():
    metric = load_metric("continual_summary")
    for row, value in zip(MATRIX, CUMULATIVE):
        metric.add(accuracy_matrix=row, cumulative=value)
    assert metric.compute() == pytest.approx(HAND)


def test_continual_summary_refuses_a_short_row():
    with pytest.raises(ValueError, match="row 1 has 1 values"):
        continual_summary([[0.8], [0.9], [0.6, 0.5, 0.9]], CUMULATIVE)


# --- the trainer's entry points give what the hand-written formulas gave --------------------------------------------


def _relation_reference(p, g, none_id):  # the formulas metrics.py held before the evaluate modules
    correct, predicted, actual = ((p == g) & (g != none_id)).sum(), (p != none_id).sum(), (g != none_id).sum()
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"micro_f1": float(f1), "precision": float(precision), "recall": float(recall),
            "accuracy": float((p == g).mean()) if len(g) else 0.0}  # fmt: skip


def test_score_task_matches_the_previous_formulas():
    rng = np.random.default_rng(0)
    re_bench = SimpleNamespace(task_type="re", label_names=["/a", "None", "/b", "/c"])
    pred, gold, task_ids = rng.integers(0, 4, 97), rng.integers(0, 4, 97), rng.integers(0, 3, 97)
    state = np.random.get_state()
    out = score_task(re_bench, 2, pred, gold, task_ids)
    assert out["cumulative_metrics"] == _relation_reference(pred, gold, none_id=1)  # bitwise, not approx
    assert out["slice_metrics"] == [_relation_reference(pred[task_ids == j], gold[task_ids == j], 1) for j in range(3)]
    assert out["cumulative"] > 0 and len(set(out["slices"])) == 3  # a real spread, not zeros

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    tasks = [SimpleNamespace(new_labels=["O", "B-PER", "I-PER"]), SimpleNamespace(new_labels=["B-LOC", "I-LOC"])]
    ner_bench = SimpleNamespace(task_type="ner", label_names=names, tasks=tasks)
    gold = rng.integers(0, 5, (6, 9))
    gold[:, -2:] = -100  # padding / later sub-tokens
    pred = np.where(rng.random((6, 9)) < 0.7, gold, rng.integers(-1, 5, (6, 9)))
    out = score_task(ner_bench, 1, pred, gold, None)
    gold_seqs = [[names[t] for t in row[:7]] for row in gold]
    pred_seqs = [[names[max(t, 0)] for t in row[:7]] for row in pred]
    expected = {"f1": f1_score(gold_seqs, pred_seqs, zero_division=0),
                "precision": precision_score(gold_seqs, pred_seqs, zero_division=0),
                "recall": recall_score(gold_seqs, pred_seqs, zero_division=0)}  # fmt: skip
    assert out["cumulative_metrics"] == expected and 0 < out["cumulative"] < 1
    assert len(out["slices"]) == 2
    assert np.array_equal(np.random.get_state()[1], state[1])  # evaluate seeds numpy only inside compute


def test_modules_load_once_per_process_from_this_checkout():
    assert all(load_metric(name) is load_metric(name) for name in METRIC_MODULES)
    assert Path(metric_path("relation_micro_f1")) == ROOT / "metrics" / "relation_micro_f1"
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        metric_path("accuracy")


# --- a fresh process, offline, network closed ----------------------------------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys, time

    attempts = []

    def refuse(*args, **kwargs):  # recorded, so that an attempt caught inside a library still shows
        attempts.append(repr(args)[:200])
        raise OSError("network access attempted")

    socket.socket.connect = socket.socket.connect_ex = socket.getaddrinfo = socket.create_connection = refuse
    import evaluate

    out, start = {"attempts": attempts}, time.perf_counter()
    relation = evaluate.load(sys.argv[1] + "/relation_micro_f1")
    out["relation"] = relation.compute(predictions=[1, 2, 3, 0, 0, 0, 2, 1], references=[1, 2, 2, 3, 0, 0, 0, 0])
    entity = evaluate.load("./metrics/seqeval_entity_f1")  # relative to the repository root, as the docs say
    out["entity"] = entity.compute(predictions=%r, references=%r, types=["ORG"])
    summary = evaluate.load(sys.argv[1] + "/continual_summary/continual_summary.py")
    out["summary"] = summary.compute(accuracy_matrix=%r, cumulative=%r)
    out["load_s"] = time.perf_counter() - start
    print(json.dumps(out))
    """
    % (PRED, GOLD, MATRIX, CUMULATIVE)
)


@pytest.mark.slow
def test_evaluate_load_in_a_fresh_offline_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, str(ROOT / "metrics")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["attempts"] == []
    assert out["relation"] == pytest.approx({"micro_f1": 4 / 9, "precision": 0.4, "recall": 0.5, "accuracy": 0.5})
    assert out["entity"] == pytest.approx({"f1": 2 / 3, "precision": 0.5, "recall": 1.0})
    assert out["summary"] == pytest.approx(HAND)
    assert (tmp_path / "modules" / "evaluate_modules" / "metrics" / "relation_micro_f1").is_dir()  # a fresh copy
