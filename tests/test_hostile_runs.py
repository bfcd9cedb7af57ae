"""Hostile runs (issue 16): a run killed inside a checkpoint save, damaged or missing checkpoint files, a resume with
other arguments, a diverging run, a malicious pickle in a checkpoint, a second run or a user's folders on the same
output_dir, a full disk. Each ends either with the same results as an uninterrupted run or with a clear error, and
never with a silently different model.

A "kill" here is an exception no `except Exception` catches, raised inside the training loop of the same process: it
leaves on disk what a SIGKILL at that point leaves (tests/test_resume_and_distributed.py kills a real process)."""

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import tiny_args, tiny_setup
from continual_trainer import ContinualTrainer
from continual_trainer.checkpointing import STEP_RECORDS_NAME

SAVING = dict(save_strategy="steps", save_steps=2)  # task 2 has 5 steps (48 rows + 24 in memory, batch 16)


class Killed(BaseException):
    """Stands for a SIGKILL: nothing catches it, nothing is cleaned up."""


class KillAtStep(TrainerCallback):
    """Kill the run at the end of optimizer step `step` of task 2 (before a checkpoint of that step is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("task-01") and state.global_step == self.step:
            raise Killed


class StopAtFirstStep(TrainerCallback):
    """Record the step a task (task 2 by default) begins or continues from, then stop: no need to train further."""

    resumed_at = None

    def __init__(self, task="task-01"):
        self.task = task

    def on_step_begin(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.task):
            self.resumed_at = state.global_step
            raise Killed


def make_trainer(bench, out, strategy="mspt", callbacks=None, setup=None, **kwargs):
    model, processor = tiny_setup(bench, **(setup or {}))
    args = tiny_args(out, strategy, **{**(SAVING if strategy == "mspt" else {}), **kwargs})
    return ContinualTrainer(model=model, args=args, processing_class=processor, callbacks=callbacks)


def assert_same_run(out, result, reference):
    """Bitwise the final weights, the matrix and the whole modulation history of the uninterrupted run."""
    ref_out, ref_result = reference
    got = load_file(Path(out) / "task-02" / "model.safetensors")
    expected = load_file(ref_out / "task-02" / "model.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert result.matrix == ref_result.matrix and result.cumulative == ref_result.cumulative
    assert result.modulation == ref_result.modulation


@pytest.fixture(scope="module")
def bench(synthetic_benchmarks):
    return synthetic_benchmarks["re"]


@pytest.fixture(scope="module")
def reference(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "uninterrupted"
    return out, make_trainer(bench, out).train_tasks(bench)


@pytest.fixture(scope="module")
def killed(bench, tmp_path_factory):
    """A run killed at step 5 of task 2: task-00 finished, task-01/checkpoint-2 and checkpoint-4 written."""
    out = tmp_path_factory.mktemp("hostile") / "killed"
    with pytest.raises(Killed):
        make_trainer(bench, out, callbacks=[KillAtStep(5)]).train_tasks(bench)
    assert (out / "task-01" / "checkpoint-4").is_dir() and not (out / "task-01" / "continual_state.json").exists()
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


# ---------------------------------------------------------------------- cases 5, 6: incomplete or damaged checkpoints
def test_a_kill_inside_a_checkpoint_save_resumes_from_the_previous_checkpoint(bench, reference, tmp_path, monkeypatch,
                                                                              caplog):  # fmt: skip
    # before: FileNotFoundError: .../task-01/checkpoint-4/trainer_state.json
    out = tmp_path / "run"
    save = ContinualTrainer._save_optimizer_and_scheduler

    def killed_while_saving(self, output_dir):
        if output_dir.endswith(os.path.join("task-01", "checkpoint-4")):
            raise Killed  # the model of checkpoint-4 is written, its optimizer and trainer state are not
        save(self, output_dir)

    monkeypatch.setattr(ContinualTrainer, "_save_optimizer_and_scheduler", killed_while_saving)
    with pytest.raises(Killed):
        make_trainer(bench, out).train_tasks(bench)
    assert (out / "task-01" / "checkpoint-4" / "model.safetensors").exists()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="continual_trainer"):
        result = make_trainer(bench, out).train_tasks(bench, resume_from_checkpoint=True)
    assert "checkpoint-4" in caplog.text and "checkpoint-2" in caplog.text
    assert_same_run(out, result, reference)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {  # before: SafetensorError, EOFError, FileNotFoundError, or a resume from step 4 without that state
    "truncated model.safetensors": lambda c: _truncate(c / "model.safetensors"),
    "zero-byte scheduler.pt": lambda c: (c / "scheduler.pt").write_bytes(b""),
    "no optimizer.pt": lambda c: (c / "optimizer.pt").unlink(),
    "no rng_state.pth": lambda c: (c / "rng_state.pth").unlink(),
    "no modulation records": lambda c: (c / STEP_RECORDS_NAME).unlink(),
    "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_last_checkpoint_is_not_resumed_from(bench, killed, tmp_path, caplog, damage):
    out = copy_of(killed, tmp_path)
    DAMAGES[damage](out / "task-01" / "checkpoint-4")
    stop = StopAtFirstStep()
    with caplog.at_level(logging.WARNING, logger="continual_trainer"), pytest.raises(Killed):
        make_trainer(bench, out, callbacks=[stop]).train_tasks(bench, resume_from_checkpoint=True)
    assert stop.resumed_at == 2  # the previous intact checkpoint
    assert "checkpoint-4" in caplog.text


def test_without_an_intact_checkpoint_the_task_restarts_from_its_start_exactly(bench, reference, killed, tmp_path,
                                                                              caplog):  # fmt: skip
    # before: resumed from checkpoint-4 with a fresh optimizer, rc 0 and other weights
    out = copy_of(killed, tmp_path)
    for checkpoint in (out / "task-01").glob("checkpoint-*"):
        (checkpoint / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="continual_trainer"):
        result = make_trainer(bench, out).train_tasks(bench, resume_from_checkpoint=True)
    assert "from its start" in caplog.text
    assert_same_run(out, result, reference)  # the random state at the start of task 2 was saved with task 1


def test_a_damaged_finished_task_is_a_clear_error(bench, killed, tmp_path):
    # before: a bare SafetensorError
    out = copy_of(killed, tmp_path)
    _truncate(out / "task-00" / "model.safetensors")
    with pytest.raises(ValueError, match=r"task-00 is damaged .*model\.safetensors.*delete"):
        make_trainer(bench, out).train_tasks(bench, resume_from_checkpoint=True)


# ------------------------------------------------------------------------------ case 9: pickles in a checkpoint
class _OpensAFile:
    """A pickle that creates a file when it is loaded (what a malicious checkpoint would do with a shell command)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_malicious_modulation_records_are_never_executed(bench, killed, tmp_path, monkeypatch, caplog):
    # before: with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, torch.load of modulation_steps.pt ran the payload
    out = copy_of(killed, tmp_path)
    marker = tmp_path / "payload-ran"
    checkpoint = out / "task-01" / "checkpoint-4"
    for name in {STEP_RECORDS_NAME, "modulation_steps.pt"}:
        torch.save(_OpensAFile(str(marker)), checkpoint / name)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    stop = StopAtFirstStep()
    with caplog.at_level(logging.WARNING, logger="continual_trainer"), pytest.raises(Killed):
        make_trainer(bench, out, callbacks=[stop]).train_tasks(bench, resume_from_checkpoint=True)
    assert not marker.exists()
    assert stop.resumed_at == 2 and STEP_RECORDS_NAME in caplog.text


# ------------------------------------------------------------------------------ case 7: resume with other arguments
def test_resume_with_arguments_that_change_results_is_refused(bench, tmp_path):
    # before: accepted, and results.json claimed the new arguments for a model trained with the old ones
    out = tmp_path / "run"
    first = make_trainer(bench, out, "finetune").train_tasks(bench)
    changed = dict(seed=1, learning_rate=1e-2, num_train_epochs=2, per_device_train_batch_size=8)
    with pytest.raises(ValueError) as error:
        make_trainer(bench, out, "finetune", **changed).train_tasks(bench, resume_from_checkpoint=True)
    message = str(error.value)
    assert all(name in message for name in changed) and "0.003" in message and "0.01" in message
    assert "overwrite_output_dir" in message and "same arguments" in message
    with pytest.raises(ValueError, match=r"num_interaction_layers: 1 .* 2"):  # the model is part of the run
        make_trainer(bench, out, "finetune", setup=dict(num_interaction_layers=2)).train_tasks(
            bench, resume_from_checkpoint=True
        )
    # Arguments that change no result may differ.
    quiet = dict(logging_steps=7, save_total_limit=1, dataloader_num_workers=0, disable_tqdm=False, run_name="again")
    again = make_trainer(bench, out, "finetune", **quiet).train_tasks(bench, resume_from_checkpoint=True)
    assert again.matrix == first.matrix


# -------------------------------------------------------------------------------------- case 8: a diverging run
def test_a_diverging_run_stops_before_saving_non_finite_weights(bench, tmp_path):
    # before: rc 0, a logged loss of 0 and non-finite tensors in every saved model
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="non-finite"):
        make_trainer(bench, out, "finetune", learning_rate=1e6, logging_steps=100, **SAVING).train_tasks(bench)
    for path in out.rglob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path
    assert not list(out.rglob("continual_state.json"))


class PoisonAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if args.output_dir.endswith("task-01") and state.global_step == 3:
            model.classifier.weight.data.fill_(float("nan"))


def test_non_finite_weights_never_replace_a_good_checkpoint(bench, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="task-01.*checkpoint-2") as error:
        make_trainer(bench, out, callbacks=[PoisonAtStep()], logging_steps=100).train_tasks(bench)
    assert "learning_rate" in str(error.value)
    assert not (out / "task-01" / "checkpoint-4").exists()
    good = load_file(out / "task-01" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())


# --------------------------------------------------------------------------- case 13: whose output_dir is it?
def test_a_fresh_run_over_a_run_needs_overwrite_and_deletes_only_its_own_folders(bench, tmp_path):
    # before: every task-* folder was deleted, the user's too; a resume crashed on int('01-backup')
    out = tmp_path / "run"
    first = make_trainer(bench, out, "finetune").train_tasks(bench)
    (out / "task-notes").mkdir()
    (out / "task-notes" / "todo.txt").write_text("mine")
    shutil.copytree(out / "task-01", out / "task-01-backup")
    with pytest.raises(ValueError, match=r"resume_from_checkpoint.*overwrite_output_dir"):
        make_trainer(bench, out, "finetune").train_tasks(bench)
    assert (out / "task-02" / "continual_state.json").exists()  # nothing was deleted
    again = make_trainer(bench, out, "finetune").train_tasks(bench, resume_from_checkpoint=True)
    assert again.matrix == first.matrix
    (out / "task-07").mkdir()  # a task-NN folder this package did not write
    with pytest.raises(ValueError, match="task-07"):
        make_trainer(bench, out, "finetune", overwrite_output_dir=True).train_tasks(bench)
    (out / "task-07").rmdir()
    before = (out / "task-02" / "model.safetensors").stat().st_mtime_ns
    over = make_trainer(bench, out, "finetune", overwrite_output_dir=True).train_tasks(bench)
    assert over.matrix == first.matrix and (out / "task-02" / "model.safetensors").stat().st_mtime_ns != before
    assert (out / "task-notes" / "todo.txt").read_text() == "mine"
    assert (out / "task-01-backup" / "continual_state.json").exists()


def test_a_busy_output_dir_is_refused_and_a_stale_lock_is_taken_over(bench, tmp_path, caplog):
    # before: a second run deleted the first one's task folders while it was training
    from continual_trainer.checkpointing import LOCK_NAME, RunLock

    out = tmp_path / "run"
    with RunLock(str(out)):  # another run (this process) holds output_dir
        with pytest.raises(RuntimeError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            make_trainer(bench, out, "finetune").train_tasks(bench)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    with caplog.at_level(logging.WARNING, logger="continual_trainer"), pytest.raises(Killed):
        make_trainer(bench, out, "finetune", callbacks=[StopAtFirstStep("task-00")]).train_tasks(bench)
    assert f"pid {dead.pid}" in caplog.text and not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------- case 14: a full disk
def test_a_full_disk_is_named_and_the_last_checkpoint_stays_usable(bench, tmp_path, monkeypatch):
    # before: RuntimeError: [enforce fail at inline_container.cc:672], and a half-written checkpoint-4
    out = tmp_path / "run"
    save = torch.save

    def disk_full_at_checkpoint_4(obj, f, *args, **kwargs):
        if os.path.join("task-01", "checkpoint-4") in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4314")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_checkpoint_4)
    with pytest.raises(OSError, match="No space left on device") as error:
        make_trainer(bench, out).train_tasks(bench)
    assert error.value.errno == errno.ENOSPC and "checkpoint-2" in str(error.value)
    assert not (out / "task-01" / "checkpoint-4").exists()  # the partial checkpoint does not hold space
    monkeypatch.undo()
    stop = StopAtFirstStep()
    with pytest.raises(Killed):
        make_trainer(bench, out, callbacks=[stop]).train_tasks(bench, resume_from_checkpoint=True)
    assert stop.resumed_at == 2  # checkpoint-2 loaded whole (optimizer, scheduler, random state, records)
