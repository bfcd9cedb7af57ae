"""The continual metrics reach the Trainer's logging: per-task evaluation through `evaluate()` (on_log, on_evaluate),
validation during a task with `--eval_strategy`, one growing step axis across tasks (also after a resume), the final
summary, `on_task_end`, and TensorBoard's event file."""

import json
import os

import pytest
from transformers import TrainerCallback

from conftest import tiny_args, tiny_setup
from continual_trainer import ContinualTrainer

SETTINGS = dict(num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=1)
STEPS_PER_TASK = 2 * 48 // 8  # 2 epochs of 48 training rows in batches of 8
SUMMARY = ("final_average", "average_incremental", "forgetting", "bwt")


class Recorder(TrainerCallback):
    """Every log, evaluation and task end, with the step the integrations would have drawn it at."""

    def __init__(self):
        self.logs, self.evaluations, self.task_ends = [], [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append((state.global_step, dict(metrics)))

    def on_task_end(self, args, state, control, task_id=None, task_dir=None, metrics=None, **kwargs):
        saved = os.path.exists(os.path.join(task_dir, "continual_state.json"))  # the task was saved before
        self.task_ends.append({"step": state.global_step, "task_id": task_id, "task_dir": task_dir,
                               "metrics": dict(metrics), "saved": saved})  # fmt: skip


class Crash(RuntimeError):
    pass


class FailInTaskTwo(TrainerCallback):
    """Raise at step `step` of the second task (its checkpoint of the step before is written): a crash mid-task."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("task-01") and state.global_step == self.step:
            raise Crash("interrupted in task 2")


def _run(bench, out, callbacks, resume=False, **kwargs):
    model, processor = tiny_setup(bench)
    args = tiny_args(out, "finetune", **{**SETTINGS, **kwargs})
    trainer = ContinualTrainer(model=model, args=args, processing_class=processor, callbacks=callbacks)
    return trainer, trainer.train_tasks(bench, resume_from_checkpoint=resume)


def _logged(recorder, key):
    """[(step, value)] of every log holding `key`."""
    return [(step, logs[key]) for step, logs in recorder.logs if key in logs]


def test_callbacks_get_every_continual_metric_on_one_growing_step_axis(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["ner"]
    recorder = Recorder()
    trainer, result = _run(bench, tmp_path / "run", [recorder], eval_strategy="epoch")  # no eval_dataset passed
    total = 3 * STEPS_PER_TASK
    # The training loss: one log per optimizer step, numbered across the run (not 1..6 again in every task).
    assert [step for step, _ in _logged(recorder, "loss")] == list(range(1, total + 1))
    steps = [step for step, _ in recorder.logs]
    assert steps == sorted(steps)
    # After each task, the accuracy matrix row and the cumulative metric, logged at that task's last step.
    task_steps = [m["global_step"] for m in result.task_metrics]
    assert task_steps == [STEPS_PER_TASK, 2 * STEPS_PER_TASK, total]
    for i, step in enumerate(task_steps, start=1):
        assert _logged(recorder, f"test_task_{i}_cumulative_f1") == [(step, result.cumulative[i - 1])]
        for j in range(1, i + 1):
            assert _logged(recorder, f"test_task_{i}_slice_{j}_f1") == [(step, result.matrix[i - 1][j - 1])]
        assert not _logged(recorder, f"test_task_{i}_slice_{i + 1}_f1")
    assert any(value > 0 for row in result.matrix for value in row)  # the values compared above are not all zeros
    # The summary, once, last, at the final step.
    final_step, final = recorder.logs[-1]
    assert final_step == total
    assert {k: final[f"test_{k}"] for k in SUMMARY} == pytest.approx(result.summary)
    assert sum(f"test_{SUMMARY[0]}" in logs for _, logs in recorder.logs) == 1
    # on_evaluate: per epoch of each task the validation rows of the tasks seen so far, then the cumulative test set.
    evaluated = [(step, sorted(k for k in m if "slice" in k)) for step, m in recorder.evaluations]
    expected = []
    for k in range(3):
        for epoch in (1, 2):
            expected.append((k * STEPS_PER_TASK + epoch * STEPS_PER_TASK // 2,
                             [f"eval_slice_{j}_f1" for j in range(1, k + 2)]))  # fmt: skip
        expected.append((task_steps[k], [f"test_task_{k + 1}_slice_{j}_f1" for j in range(1, k + 2)]))
    assert evaluated == expected
    last_validation = [m for _, m in recorder.evaluations if "eval_cumulative_f1" in m][-1]
    assert last_validation["eval_cumulative_f1"] == trainer.evaluate_task(2, split="validation")["cumulative"]
    # on_task_end: after each task's save, with its metrics, on the run's step axis.
    assert [e["task_id"] for e in recorder.task_ends] == [0, 1, 2]
    assert [e["step"] for e in recorder.task_ends] == task_steps
    for k, end in enumerate(recorder.task_ends):
        assert end["saved"] and end["task_dir"].endswith(f"task-{k:02d}")
        assert end["metrics"][f"test_task_{k + 1}_cumulative_f1"] == result.cumulative[k]
    saved = json.loads((tmp_path / "run" / "task-02" / "continual_state.json").read_text())
    assert [m["global_step"] for m in saved["task_metrics"]] == task_steps


def test_a_resumed_run_continues_the_step_axis(synthetic_benchmarks, tmp_path):
    bench = synthetic_benchmarks["re"]
    saving = dict(save_strategy="steps", save_steps=1, num_train_epochs=1)
    whole = Recorder()
    _run(bench, tmp_path / "whole", [whole], **saving)
    with pytest.raises(Crash):
        _run(bench, tmp_path / "cut", [FailInTaskTwo(2)], **saving)
    assert (tmp_path / "cut" / "task-01" / "checkpoint-1").is_dir()
    resumed = Recorder()
    _run(bench, tmp_path / "cut", [resumed], resume=True, **saving)
    # Task 1 finished before the crash and task 2 continues from its checkpoint-1: the resumed logs are the
    # uninterrupted run's from its step 6 + 2 on, at the same steps (not at task 2's own step 2, nor from 1).
    per_task = 48 // 8
    first = per_task + 2
    expected = [(step, sorted(logs)) for step, logs in whole.logs if step >= first]
    assert [(step, sorted(logs)) for step, logs in resumed.logs] == expected
    assert _logged(resumed, "test_task_3_cumulative_micro_f1") == _logged(whole, "test_task_3_cumulative_micro_f1")
    assert [e["step"] for e in resumed.task_ends] == [2 * per_task, 3 * per_task]


def test_tensorboard_event_file_holds_the_accuracy_matrix_per_task(synthetic_benchmarks, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="report_to=tensorboard needs `pip install tensorboard`")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    bench = synthetic_benchmarks["ner"]
    out = tmp_path / "run"
    _, result = _run(bench, out, None, report_to=["tensorboard"])
    # One folder for the run (output_dir/runs/, as Trainer's default), not inside task-00/.
    (logdir,) = (out / "runs").iterdir()
    assert not list(out.glob("task-*/runs"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])

    def scalars(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    task_steps = [m["global_step"] for m in result.task_metrics]
    for i in range(1, 4):
        step = task_steps[i - 1]
        assert scalars(f"test/task_{i}_cumulative_f1") == [(step, pytest.approx(result.cumulative[i - 1], abs=1e-6))]
        for j in range(1, i + 1):
            value = result.matrix[i - 1][j - 1]
            assert scalars(f"test/task_{i}_slice_{j}_f1") == [(step, pytest.approx(value, abs=1e-6))]
    for name in SUMMARY:
        assert scalars(f"test/{name}") == [(task_steps[-1], pytest.approx(result.summary[name], abs=1e-6))]
    loss_steps = [step for step, _ in scalars("train/loss")]
    assert loss_steps == list(range(1, 3 * STEPS_PER_TASK + 1))
    assert not any(tag.startswith("eval/") for tag in tags)  # no eval_strategy: no validation curve


def test_compute_metrics_is_refused(synthetic_benchmarks, tmp_path):
    model, processor = tiny_setup(synthetic_benchmarks["re"])
    with pytest.raises(ValueError, match="compute_metrics"):
        ContinualTrainer(model=model, args=tiny_args(tmp_path), processing_class=processor,
                         compute_metrics=lambda prediction: {})  # fmt: skip
