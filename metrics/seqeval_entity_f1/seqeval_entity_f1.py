"""seqeval entity-level micro F1 over BIO tag sequences (IMNER, reference notes §8), as a local `evaluate` metric."""

import datasets
import evaluate
from seqeval.metrics import f1_score
from seqeval.metrics import precision_score
from seqeval.metrics import recall_score

_CITATION = """\
@misc{seqeval,
  title  = {{seqeval}: A Python framework for sequence labeling evaluation},
  author = {Hiroki Nakayama},
  year   = {2018},
  url    = {https://github.com/chakki-works/seqeval}
}
"""

_DESCRIPTION = """\
Entity-level micro precision, recall and F1 of seqeval (default, non-strict mode, zero_division=0) over
word-level BIO tag sequences. A tag outside the BIO scheme (neither `O` nor `B-`/`I-` prefixed, e.g. a special
tag) counts as `O`. With `types`, only entities of those types count: every other tag becomes `O` in both the
predictions and the references (the per-task slice of a continual NER benchmark).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): predicted tags, one sequence per sentence.
    references (`list` of `list` of `str`): gold tags, same lengths as `predictions`.
    types (`list`/`set` of `str`, *optional*): entity types to keep (e.g. `{"PER"}`); all when omitted.
Returns:
    f1, precision, recall (`float`, in [0, 1]).
Examples:
    >>> metric = evaluate.load("./metrics/seqeval_entity_f1")
    >>> metric.compute(predictions=[["B-PER", "O", "B-LOC"]], references=[["B-PER", "O", "B-ORG"]])["f1"]
    0.5
"""


def _as_bio(seq, types):
    seq = [t if t == "O" or t[:2] in ("B-", "I-") else "O" for t in seq]
    return [t if t == "O" or t[2:] in types else "O" for t in seq] if types is not None else seq


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SeqevalEntityF1(evaluate.Metric):
    def _info(self):
        tags = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": tags, "references": tags}),
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(self, predictions, references, types=None):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predicted sequences but {len(references)} reference sequences")
        types = set(types) if types is not None else None
        pred = [_as_bio(s, types) for s in predictions]
        gold = [_as_bio(s, types) for s in references]
        return {"f1": float(f1_score(gold, pred, zero_division=0)),
                "precision": float(precision_score(gold, pred, zero_division=0)),
                "recall": float(recall_score(gold, pred, zero_division=0))}  # fmt: skip
