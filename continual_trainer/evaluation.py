"""The continual evaluation as the `Trainer` reports it: `compute_metrics` over a cumulative test or validation set, the
names the metrics are logged under, the run-wide step they are logged at, and the `on_task_end` callback event.

Every `report_to` integration receives the metrics below through `Trainer.log` / `on_log` (and `on_evaluate`), at the
run-wide step (optimizer steps over every task so far; each task's own `train()` still counts from 0). Tasks and slices
are numbered from 1 in the names (task 1 is `task-00/`); `<m>` is each metric the task type computes (RE `micro_f1`,
`precision`, `recall`, `accuracy`; NER `f1`, `precision`, `recall`), `<p>` its primary one (RE `micro_f1`, NER `f1`).
The integrations show `test_x` as `test/x` and `eval_x` as `eval/x`.
"""

import contextlib

from .metrics import score_task

LOGGED_METRICS = {
    "test_task_<i>_cumulative_<m>": "after task i: <m> on the cumulative test set of tasks 1..i.",
    "test_task_<i>_slice_<j>_<p>": "after task i: the primary metric on task j's test slice (j <= i), i.e. R[i-1][j-1] "
    "of the accuracy matrix.",
    "test_task_<i>_loss": "after task i: the model's loss on that cumulative test set (with `_runtime`, "
    "`_samples_per_second`, `_steps_per_second` from `Trainer.evaluate`).",
    "test_<summary>": "once, after the last task: final_average, average_incremental, forgetting, bwt "
    "(`metrics.METRIC_DEFINITIONS`).",
    "eval_cumulative_<m>, eval_slice_<j>_<p>, eval_loss": "during task k, when `--eval_strategy steps|epoch` asks: the "
    "validation rows of tasks 1..k (a curve over the run; the set grows at each task).",
    "eval_task_<i>_...": "`evaluate_task(i - 1, split='validation')`: the validation rows of tasks 1..i.",
}


def task_prefix(split: str, task_id: int) -> str:
    """`metric_key_prefix` of the evaluation after task `task_id` (0-based) on `split`: `test_task_3`, `eval_task_3`."""
    return f"{'test' if split == 'test' else 'eval'}_task_{task_id + 1}"


def _numbers(metrics: dict) -> dict:
    """The int/float entries (a metric that is undefined is None: an integration would refuse it)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_metrics(scores: dict) -> dict:
    """`metrics.score_task`'s result as flat log entries: `cumulative_<m>` and `slice_<j>_<p>` (j from 1)."""
    key = scores["metric"]
    flat = {f"cumulative_{name}": value for name, value in _numbers(scores["cumulative_metrics"]).items()}
    flat.update(_numbers({f"slice_{j + 1}_{key}": value for j, value in enumerate(scores["slices"])}))
    return flat


def summary_metrics(summary: dict) -> dict:
    """`metrics.continual_summary`'s result as log entries: `test_final_average`, `test_forgetting`, ..."""
    return {f"test_{name}": value for name, value in _numbers(summary).items()}


class ContinualMetrics:
    """`compute_metrics` of the continual evaluation after (or during) task `task_id`: predictions are `(label ids, task
    ids)` (`ContinualTrainer.prediction_step`), label_ids the gold labels. Returns `flat_metrics`; the full result of
    `score_task` (what the continual state stores) is kept in `scores`."""

    def __init__(self, benchmark, task_id: int):
        self.benchmark, self.task_id = benchmark, task_id
        self.scores = None

    def __call__(self, eval_prediction) -> dict:
        predictions, task_ids = eval_prediction.predictions
        self.scores = score_task(self.benchmark, self.task_id, predictions, eval_prediction.label_ids, task_ids)
        return flat_metrics(self.scores)


@contextlib.contextmanager
def reported_step(state, step: int):
    """Show `state.global_step` as `step` inside the block (what the integrations read in `on_log` / `on_evaluate`),
    then give back the task's own step, which the schedule, logging/saving intervals and checkpoint names use."""
    own = state.global_step
    state.global_step = step
    try:
        yield
    finally:
        state.global_step = own


def call_task_end(callbacks, args, state, control, **kwargs):
    """`on_task_end(args, state, control, **kwargs)` of every callback that has one (not a `TrainerCallback` event:
    `CallbackHandler.call_event` would fail on the others). Returns the control, as `call_event` does."""
    for callback in callbacks:
        hook = getattr(callback, "on_task_end", None)
        if callable(hook):
            result = hook(args, state, control, **kwargs)
            if result is not None:
                control = result
    return control
