"""Relation micro-F1 without `None` (IMRE headline, reference notes §8), as a local `evaluate` metric."""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{chen2024continual,
  title     = {Continual Multimodal Knowledge Graph Construction},
  author    = {Chen, Xiang and Zhang, Jingtian and Wang, Xiaohan and Zhang, Ningyu and Wu, Tongtong and
               Wang, Yuxiang and Wang, Yongheng and Chen, Huajun},
  booktitle = {Proceedings of the Thirty-Third International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2024},
  note      = {arXiv:2305.08698}
}
"""

_DESCRIPTION = """\
Micro precision, recall and F1 over relation ids, with the `None` relation left out of both denominators:
P = #(pred == gold != None) / #(pred != None), R = #(pred == gold != None) / #(gold != None), F1 = 2PR / (P + R);
each is 0 when its denominator is 0. Accuracy = #(pred == gold) / N counts every example, `None` included.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted relation ids, one per example.
    references (`list` of `int`): gold relation ids, one per example.
    none_id (`int`, defaults to 0): the id of the `None` relation.
Returns:
    micro_f1, precision, recall, accuracy (`float`, in [0, 1]).
Examples:
    >>> metric = evaluate.load("./metrics/relation_micro_f1")
    >>> metric.compute(predictions=[1, 2, 3, 0, 0], references=[1, 2, 2, 3, 0], none_id=0)["micro_f1"]
    0.5714285714285715
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RelationMicroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://arxiv.org/abs/2305.08698"],
        )

    def _compute(self, predictions, references, none_id=0):
        p, g = np.asarray(predictions), np.asarray(references)
        correct = ((p == g) & (g != none_id)).sum()
        predicted, actual = (p != none_id).sum(), (g != none_id).sum()
        precision = correct / predicted if predicted else 0.0
        recall = correct / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = float((p == g).mean()) if len(g) else 0.0
        return {"micro_f1": float(f1), "precision": float(precision), "recall": float(recall), "accuracy": accuracy}
