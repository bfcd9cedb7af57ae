"""Task metrics (reference notes §8) and continual-learning summaries. All values are fractions in [0, 1]."""

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


def relation_scores(predictions, golds, none_id: int) -> dict:
    """Micro P/R/F1 excluding the `None` relation, and accuracy (§8, IMRE)."""
    p, g = np.asarray(predictions), np.asarray(golds)
    correct = ((p == g) & (g != none_id)).sum()
    predicted, actual = (p != none_id).sum(), (g != none_id).sum()
    precision = correct / predicted if predicted else 0.0
    recall = correct / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((p == g).mean()) if len(g) else 0.0
    return {"micro_f1": float(f1), "precision": float(precision), "recall": float(recall), "accuracy": accuracy}


def entity_scores(predictions, golds, types=None) -> dict:
    """seqeval entity micro P/R/F1 over word-level tag sequences (lists of lists of tag strings). With `types`, only
    entities of those types count (the other tags become O in both sequences)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    def keep(seq):
        return [t if t == "O" or t[2:] in types else "O" for t in seq] if types is not None else list(seq)

    def clean(seq):  # anything outside BIO (e.g. a special tag) counts as O (§8)
        return [t if t == "O" or t[:2] in ("B-", "I-") else "O" for t in seq]

    pred = [keep(clean(s)) for s in predictions]
    gold = [keep(clean(s)) for s in golds]
    kwargs = {"zero_division": 0}
    return {"f1": float(f1_score(gold, pred, **kwargs)), "precision": float(precision_score(gold, pred, **kwargs)),
            "recall": float(recall_score(gold, pred, **kwargs))}  # fmt: skip


def continual_summary(matrix, cumulative) -> dict:
    """Summaries of an accuracy matrix R (T rows, row i has i+1 values) and the per-task cumulative-test metric."""
    T = len(matrix)
    last = matrix[-1]
    summary = {"final_average": float(np.mean(last)), "average_incremental": float(np.mean(cumulative))}
    if T > 1:
        summary["forgetting"] = float(np.mean([max(matrix[i][j] for i in range(j, T - 1)) - last[j]
                                               for j in range(T - 1)]))  # fmt: skip
        summary["bwt"] = float(np.mean([last[j] - matrix[j][j] for j in range(T - 1)]))
    else:
        summary["forgetting"] = summary["bwt"] = 0.0
    return summary


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
