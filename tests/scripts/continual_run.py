"""A small continual run for the resume and multi-process tests (run as a subprocess, also under torchrun).

    python continual_run.py OUT_DIR CACHE_DIR [--kill-at-step N] [--resume] [--batch B] [--no-dropout] [--epochs E] [--drop-last] [--live-teacher] [--threads T]

Writes OUT_DIR/result.json on rank 0. With --kill-at-step, the process SIGKILLs itself at that optimizer step of the
second task (after the checkpoint two steps earlier was written), like a crash.
"""

import argparse
import json
import os
import signal
import sys

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import tiny_args, tiny_setup  # noqa: E402
from continual_trainer import ContinualTrainer  # noqa: E402
from datasets_scripts import load_benchmark  # noqa: E402


class KillInTaskTwo(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("task-01") and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("cache_dir")
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-dropout", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--drop-last", action="store_true", help="drop incomplete batches (DDP pads them otherwise)")
    parser.add_argument("--live-teacher", action="store_true", help="cache_teacher_attention=False")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (another summation order than 1)")
    parser.add_argument("--strategy", default="mspt")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    bench = load_benchmark("synthetic", "re", cache_dir=a.cache_dir, num_tasks=3, train_per_task=48,
                           validation_per_task=8, test_per_task=24)  # fmt: skip
    model, processor = tiny_setup(bench)
    if a.no_dropout:  # deterministic forward passes: hidden, classifier and attention-probability dropout off
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0
    args = tiny_args(a.out_dir, a.strategy, num_train_epochs=a.epochs, per_device_train_batch_size=a.batch, save_strategy="steps",
                     save_steps=2, ddp_find_unused_parameters=False, dataloader_drop_last=a.drop_last,
                     cache_teacher_attention=not a.live_teacher)  # fmt: skip
    callbacks = [KillInTaskTwo(a.kill_at_step)] if a.kill_at_step else None
    trainer = ContinualTrainer(model=model, args=args, processing_class=processor, callbacks=callbacks)
    result = trainer.train_tasks(bench, resume_from_checkpoint=a.resume)
    if trainer.is_world_process_zero():
        payload = {**result.to_dict(), "memory": trainer.memory.state_dict(), "modulation": result.modulation,
                   "world_size": trainer.accelerator.num_processes}  # fmt: skip
        with open(os.path.join(a.out_dir, "result.json"), "w") as f:
            json.dump(payload, f)


if __name__ == "__main__":
    main()
