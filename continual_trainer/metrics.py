"""Task metrics (reference notes §8) and continual-learning summaries. All values are fractions in [0, 1].

The computations live in the repository's local `evaluate` modules (`metrics/<name>/<name>.py`, shipped as the
`mspt_metrics` folder): `relation_scores`, `entity_scores` and `continual_summary` call them through
`load_metric(name)`, loaded once per process. Outside the trainer: `evaluate.load(metric_path(name))`, or
`evaluate.load("./metrics/<name>")` from the repository root; both are local files and work offline.
"""

import functools
import importlib.util
from pathlib import Path

import numpy as np

METRIC_DEFINITIONS = {
    "relation micro_f1": "IMRE headline (§8): P = #(pred == gold != None) / #(pred != None), "
    "R = #(pred == gold != None) / #(gold != None), F1 = 2PR / (P + R); 0 when undefined.",
    "relation accuracy": "#(pred == gold) / N over all examples, None included.",
    "entity f1": "IMNER (§8): seqeval entity-level micro F1 (default mode) over words (first sub-token tags); "
    "predictions outside the BIO label space count as O.",
    "accuracy_matrix": "R[i][j] = metric on task j's test slice after training task i (j <= i; null above the "
    "diagonal). RE slice j = test examples introduced by task j (its relations and its share of None); NER slice "
    "j = entities of task j's types on the shared test sentences.",
    "final_average": "mean_j R[T-1][j]: the final model on every task's slice.",
    "average_incremental": "mean_i of the metric on the cumulative test set of task i after training task i.",
    "forgetting": "mean over j < T-1 of max_{j <= i < T-1} R[i][j] - R[T-1][j] (>= 0 is forgetting).",
    "bwt": "backward transfer, mean over j < T-1 of R[T-1][j] - R[j][j] (negative is forgetting).",
}


METRIC_MODULES = ("relation_micro_f1", "seqeval_entity_f1", "continual_summary")


def metric_path(name: str) -> str:
    """Folder of the local `evaluate` module `name` (one of `METRIC_MODULES`), for `evaluate.load(metric_path(name))`:
    the installed `mspt_metrics` folder (wheel or editable install), else `metrics/` of this checkout."""
    if name not in METRIC_MODULES:
        raise ValueError(f"unknown metric {name!r}; the local evaluate modules are {', '.join(METRIC_MODULES)}.")
    spec = importlib.util.find_spec("mspt_metrics")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    roots.append(Path(__file__).resolve().parent.parent / "metrics")  # a checkout used without (re)installing
    for root in roots:
        if (root / name / f"{name}.py").is_file():
            return str(root / name)
    raise FileNotFoundError(f"metric module {name}/{name}.py is in none of {[str(r) for r in roots]}; reinstall the "
                            "package (`pip install -e .`) so that its `metrics/` folder ships with it.")  # fmt: skip


@functools.cache
def load_metric(name: str):
    """The `evaluate.EvaluationModule` of local metric `name`, loaded once per process. A local path never reaches the
    Hub (no network, whatever HF_HUB_OFFLINE says); `keep_in_memory` keeps predictions off disk and locks."""
    import evaluate  # ~2 s on top of transformers: paid at the first metric, not at `import continual_trainer`

    return evaluate.load(metric_path(name), keep_in_memory=True)


def relation_scores(predictions, golds, none_id: int) -> dict:
    """Micro P/R/F1 excluding the `None` relation, and accuracy (§8, IMRE): `metrics/relation_micro_f1`."""
    return load_metric("relation_micro_f1").compute(predictions=predictions, references=golds, none_id=int(none_id))


def entity_scores(predictions, golds, types=None) -> dict:
    """seqeval entity micro P/R/F1 over word-level tag sequences (lists of lists of tag strings). With `types`, only
    entities of those types count (the other tags become O in both sequences): `metrics/seqeval_entity_f1`."""
    return load_metric("seqeval_entity_f1").compute(predictions=predictions, references=golds, types=types)


def continual_summary(matrix, cumulative) -> dict:
    """Summaries of an accuracy matrix R (T rows, row i has i+1 values) and the per-task cumulative-test metric:
    `metrics/continual_summary`."""
    return load_metric("continual_summary").compute(accuracy_matrix=matrix, cumulative=cumulative)


def score_task(benchmark, k: int, predictions, golds, task_ids) -> dict:
    """Metrics after task k from predictions on its cumulative test set (numpy arrays from the evaluation loop):
    the cumulative metric and one per task slice j <= k (see METRIC_DEFINITIONS)."""
    if benchmark.task_type == "re":
        none_id = benchmark.label_names.index("None") if "None" in benchmark.label_names else 0
        cumulative = relation_scores(predictions, golds, none_id)
        slices = [relation_scores(predictions[task_ids == j], golds[task_ids == j], none_id) for j in range(k + 1)]
        key = "micro_f1"
    else:
        names = np.asarray(benchmark.label_names)
        valid = golds != -100
        pred_seqs = [names[p[v]].tolist() for p, v in zip(predictions.clip(min=0), valid)]
        gold_seqs = [names[g[v]].tolist() for g, v in zip(golds, valid)]
        cumulative = entity_scores(pred_seqs, gold_seqs)
        slices = [entity_scores(pred_seqs, gold_seqs, {n[2:] for n in benchmark.tasks[j].new_labels if n != "O"})
                  for j in range(k + 1)]  # fmt: skip
        key = "f1"
    return {"task": k, "metric": key, "cumulative": cumulative[key], "slices": [s[key] for s in slices],
            "cumulative_metrics": cumulative, "slice_metrics": slices}  # fmt: skip
