"""Continual-learning summary of an accuracy matrix (reference notes §8), as a local `evaluate` metric."""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{lopezpaz2017gradient,
  title     = {Gradient Episodic Memory for Continual Learning},
  author    = {Lopez-Paz, David and Ranzato, Marc'Aurelio},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2017}
}
@inproceedings{chaudhry2018riemannian,
  title     = {Riemannian Walk for Incremental Learning: Understanding Forgetting and Intransigence},
  author    = {Chaudhry, Arslan and Dokania, Puneet K. and Ajanthan, Thalaiyasingam and Torr, Philip H. S.},
  booktitle = {European Conference on Computer Vision},
  year      = {2018}
}
"""

_DESCRIPTION = """\
Summaries of a lower-triangular accuracy matrix R over T tasks, where R[i][j] is the metric on task j's test
slice after training task i (row i holds i + 1 values), and of the metric on the cumulative test set after each
task: final_average = mean_j R[T-1][j]; average_incremental = mean_i cumulative[i];
forgetting = mean over j < T-1 of max_{j <= i < T-1} R[i][j] - R[T-1][j] (>= 0 is forgetting);
bwt = mean over j < T-1 of R[T-1][j] - R[j][j] (negative is forgetting). Forgetting and BWT are 0 for one task.
"""

_KWARGS_DESCRIPTION = """
Args:
    accuracy_matrix (`list` of `list` of `float`): the rows of R, row i with i + 1 values (any further values,
        e.g. `None` above the diagonal of a square matrix, are ignored).
    cumulative (`list` of `float`): the metric on the cumulative test set after each task, one per row.
Returns:
    final_average, average_incremental, forgetting, bwt (`float`).
Examples:
    >>> metric = evaluate.load("./metrics/continual_summary")
    >>> metric.compute(accuracy_matrix=[[0.8], [0.6, 0.9]], cumulative=[0.8, 0.7])["bwt"]
    -0.20000000000000007
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ContinualSummary(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"accuracy_matrix": datasets.Sequence(datasets.Value("float64")),
                                        "cumulative": datasets.Value("float64")}),  # fmt: skip
            reference_urls=["https://arxiv.org/abs/1706.08840", "https://arxiv.org/abs/1801.10112"],
        )

    def _compute(self, accuracy_matrix, cumulative):
        T = len(accuracy_matrix)
        if T == 0:
            raise ValueError("`accuracy_matrix` is empty: pass one row per finished task.")
        if len(cumulative) != T:
            raise ValueError(f"`cumulative` has {len(cumulative)} values but `accuracy_matrix` has {T} rows.")
        for i, row in enumerate(accuracy_matrix):
            if len(row) < i + 1:
                raise ValueError(f"`accuracy_matrix` row {i} has {len(row)} values; row i needs i + 1 (tasks 0..i).")
        matrix = [row[: i + 1] for i, row in enumerate(accuracy_matrix)]  # values above the diagonal are ignored
        last = matrix[-1]
        summary = {"final_average": float(np.mean(last)), "average_incremental": float(np.mean(cumulative))}
        if T > 1:
            summary["forgetting"] = float(np.mean([max(matrix[i][j] for i in range(j, T - 1)) - last[j]
                                                   for j in range(T - 1)]))  # fmt: skip
            summary["bwt"] = float(np.mean([last[j] - matrix[j][j] for j in range(T - 1)]))
        else:
            summary["forgetting"] = summary["bwt"] = 0.0
        return summary
