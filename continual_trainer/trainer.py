"""ContinualTrainer: the HF Trainer run task after task, with gradient modulation (§3), attention distillation from the
previous task's frozen model (§4), replay (§5), EWC / LwF baselines, evaluation after each task and crash-safe resume.
"""

import contextlib
import copy
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import concatenate_datasets
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkpointing import (
    EWC_NAME,
    checkpoint_files,
    disk_full_is_named,
    intact_checkpoint,
    last_save,
    load_step_records,
    load_task,
    output_dir_locked,
    remove_checkpoints,
    restore_task_start,
    resume_point,
    save_step_records,
    save_task,
    start_run,
    write_manifest,
)
from .collator import MSPTDataCollator
from .losses import (
    attention_profiles,
    ewc_penalty,
    lwf_loss,
    modality_scores,
    modulation_coefficients,
    profile_distillation,
    reference_profile_distillation,
)
from .metrics import METRIC_DEFINITIONS, continual_summary, score_task
from .replay import ReplayMemory
from .teacher_cache import ROW_INDEX, TeacherProfiles
from .state import ContinualState, describe_benchmark, mark_task_dir, run_settings, task_dir

logger = logging.getLogger(__name__)

_TEXT_PREFIXES = ("text_embeddings.", "encoder.text_layers.")
_VISION_PREFIXES = ("vision_embeddings.", "encoder.vision_layers.", "vision_post_layernorm.")


def parameter_role(name: str, base_prefix: str) -> str:
    """'text' | 'vision' (the two streams, modulated; their attention biases too, §3.1), 'key' (shared, never
    modulated) or 'head' (classifier, CRF)."""
    name = name.removeprefix(base_prefix + ".")
    if "shared_key" in name:
        return "key"
    if "text_attention_bias" in name or name.startswith(_TEXT_PREFIXES):
        return "text"
    if "vision_attention_bias" in name or name.startswith(_VISION_PREFIXES):
        return "vision"
    return "head"


@dataclass
class ContinualResult:
    """What `train_tasks` returns: the accuracy matrix (row i = after task i), the cumulative-test metric per task,
    the summaries, the full per-task metrics and the modulation history. Definitions in `metric_definitions`.
    `unreadable_images`: the images the run could not read (reference -> why), fed as zero images."""

    matrix: list
    cumulative: list
    summary: dict
    task_metrics: list
    modulation: list
    metric_definitions: dict = field(default_factory=lambda: dict(METRIC_DEFINITIONS))
    unreadable_images: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"accuracy_matrix": self.matrix, "cumulative": self.cumulative, "summary": self.summary,
                "task_metrics": self.task_metrics, "metric_definitions": self.metric_definitions,
                "unreadable_images": self.unreadable_images}  # fmt: skip


class ContinualTrainer(Trainer):
    """`Trainer` for a task sequence. `processing_class` must be an `MSPTProcessor`; call `train_tasks(benchmark)`."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = None
        self.memory = ReplayMemory(self.args.memory_per_label, self.args.seed)
        self._metrics = defaultdict(list)
        self._phase = "task"
        self._label_mask = None
        self._old_labels = None  # label ids seen before the current task (LwF distils these only)
        self._teacher_profiles = None  # TeacherProfiles of the rows of the current fit, or None
        self._scores = None  # modality scores summed over the micro-batches of one optimizer step
        self._fixed_coefficients = None  # paper schedule from task 2 on: (k_text, k_vision)
        self._step_records = []  # per optimizer step: (rho_vision, k_text, k_vision, k_text applied, k_vision applied)
        self._ewc = None  # (anchors, fisher) lists aligned with self._ewc_params
        self._loss_finite = None  # bool tensor on the loss's device: every loss since the fit began was finite
        self._holding_lock = False
        base = self.model.base_model_prefix
        roles = defaultdict(list)
        for name, param in self.model.named_parameters():
            roles[parameter_role(name, base)].append(param)
        self._roles = dict(roles)

    # ------------------------------------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        """One group per role and decay: encoders at `learning_rate`, shared keys at `key_learning_rate`, attention
        biases at `bias_learning_rate`, head and CRF at `head_learning_rate` (§7). No decay on norms and biases."""
        if self.optimizer is not None:
            return self.optimizer
        args, base = self.args, self.model.base_model_prefix
        decay = set(self.get_decay_parameter_names(self.model))
        groups = defaultdict(list)
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            role = parameter_role(name, base)
            if "attention_bias" in name:
                lr = args.bias_learning_rate
            else:
                lr = {"key": args.key_learning_rate, "head": args.head_learning_rate}.get(role, args.learning_rate)
            groups[(lr, name in decay)].append(param)
        param_groups = [{"params": params, "lr": lr, "weight_decay": args.weight_decay if decayed else 0.0}
                        for (lr, decayed), params in groups.items()]  # fmt: skip
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # --------------------------------------------------------------------------------------------------- losses
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        rows = inputs.pop(ROW_INDEX, None)
        distill = self._distils()
        lwf = self.teacher is not None and args.lwf_weight > 0 and self._phase == "task"
        cached = distill and self._teacher_profiles is not None and rows is not None
        extra = {} if self._label_mask is None else {"label_mask": self._label_mask}
        outputs = model(**inputs, **extra, output_interaction_attentions=distill)
        loss = outputs.loss
        self._metrics["task_loss"].append(loss.detach())
        if lwf or (distill and not cached):
            with torch.no_grad():
                teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
                if outputs.logits.dim() == 3:  # NER: the teacher's Viterbi tags are not needed
                    teacher_inputs["return_tags"] = False
                teacher = self.teacher(**teacher_inputs, **extra, output_interaction_attentions=distill and not cached)
        if distill:
            pooling, maps = args.distillation_pooling, outputs.interaction_attentions
            student = (attention_profiles(maps.text, pooling), attention_profiles(maps.vision, pooling))
            if cached:
                target = self._teacher_profiles.targets(rows, *student)
            else:
                t = teacher.interaction_attentions
                target = (attention_profiles(t.text, pooling), attention_profiles(t.vision, pooling))
            term = sum(self._distillation(a, b) for a, b in zip(student, target))
            loss = loss + args.distillation_weight * term
            self._metrics["distillation_loss"].append(term.detach())
        if lwf:
            valid = inputs["labels"] != -100 if outputs.logits.dim() == 3 else None
            student_logits, teacher_logits = outputs.logits, teacher.logits
            if self._old_labels is not None:  # class-incremental LwF: the labels the teacher was trained on
                student_logits = student_logits.index_select(-1, self._old_labels)
                teacher_logits = teacher_logits.index_select(-1, self._old_labels)
            term = lwf_loss(student_logits, teacher_logits, args.lwf_temperature, valid)
            loss = loss + args.lwf_weight * term
            self._metrics["lwf_loss"].append(term.detach())
        if self._ewc is not None and args.ewc_lambda > 0:
            term = ewc_penalty(self._ewc_params, *self._ewc)
            loss = loss + args.ewc_lambda * term
            self._metrics["ewc_penalty"].append(term.detach())
        if args.gradient_modulation and model.training:
            scores = modality_scores(outputs.text_logits, outputs.vision_logits, inputs["labels"],
                                     inputs.get("image_mask"))  # fmt: skip
            self._scores = scores if self._scores is None else self._scores + scores
        return (loss, outputs) if return_outputs else loss

    def _distils(self) -> bool:
        """Attention distillation is on: a teacher, a positive weight, and the task phase (not a replay phase)."""
        return self.teacher is not None and self.args.distillation_weight > 0 and self._phase == "task"

    def _distillation(self, student_profiles, teacher_profiles):
        impl = self.args.distillation_impl
        if impl == "reference":
            return reference_profile_distillation(student_profiles, teacher_profiles)
        return profile_distillation(student_profiles, teacher_profiles, "teacher" if impl == "asymmetric" else "separate")

    # ------------------------------------------------------------------------------------- gradient modulation
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)  # stays on the device: read at logging steps and before saves (_check_finite)
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        # On the last micro-batch of an accumulation the gradients are complete (and all-reduced under DDP):
        # modulate them here, before clipping and the optimizer step (§3.1 step 5).
        if self.args.gradient_modulation and self.accelerator.sync_gradients and self._scores is not None:
            self._modulate()
        return loss

    def _modulate(self):
        scores, self._scores = self._scores, None
        if self.accelerator.num_processes > 1:  # identical coefficients on every rank
            scores = self.accelerator.reduce(scores, reduction="sum")
        rho, k_text, k_vision = modulation_coefficients(scores[0], scores[1], self.args.modulation_alpha)
        applied = (k_text, k_vision) if self._fixed_coefficients is None else self._fixed_coefficients
        self._step_records.append(torch.stack([rho, k_text, k_vision, *applied]))
        for role, k in zip(("text", "vision"), applied):
            grads = [p.grad for p in self._roles.get(role, []) if p.grad is not None]
            if not grads:
                continue
            torch._foreach_mul_(grads, k)
            if self.args.modulation_noise:  # OGM-GE noise, seeded per step so every rank and every resume agree
                g = torch.Generator(grads[0].device).manual_seed(self.args.seed * 100_003 + self.state.global_step)
                for grad in grads:
                    grad.add_(torch.randn(grad.shape, generator=g, device=grad.device) * (grad.std() + 1e-8))
        for name, value in zip(("rho_vision", "k_text", "k_vision"), (rho, *applied)):
            self._metrics[f"modulation/{name}"].append(value)

    def log(self, logs, start_time=None):
        """Per-step terms are averaged since the last log (as trl does), not logged per micro-batch. A non-finite loss
        stops the run here (HF would log the mean of the finite ones)."""
        if "loss" in logs:
            self._check_finite("logging", weights=False)
        if self._metrics and "loss" in logs:
            for key, values in self._metrics.items():
                logs[key] = torch.stack(values).float().mean().item()
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------- the task loop
    def train_tasks(self, benchmark, resume_from_checkpoint: bool = False) -> ContinualResult:
        """Train on `benchmark.tasks` in order (SPEC §2): per task, train (plus replay), evaluate on the cumulative
        test set and on each seen task's slice, update the replay memory, snapshot the frozen teacher and save the
        task state under `output_dir/task-XX/`. With `resume_from_checkpoint`, continue an interrupted run, with the
        arguments it was started with. The output_dir is locked meanwhile (`output_dir_lock`)."""
        args = self.args
        if args.task_type not in (None, benchmark.task_type):
            raise ValueError(f"task_type={args.task_type!r} (its α and γ were applied) but the benchmark "
                             f"{benchmark.name}/{benchmark.config_name} is {benchmark.task_type!r}: set "
                             f"task_type={benchmark.task_type!r}.")  # fmt: skip
        self.benchmark = benchmark
        self.data_collator = MSPTDataCollator(self.processing_class, benchmark.task_type)
        self._eval_collator = MSPTDataCollator(self.processing_class, benchmark.task_type, with_task_ids=True)
        self.root_dir = root = args.output_dir
        self.task_epochs = args.num_train_epochs  # _fit changes args.num_train_epochs for the replay phase
        identity = describe_benchmark(benchmark)
        settings = run_settings(args, self.model.config, self.accelerator.num_processes)
        with self.output_dir_lock():
            if resume_from_checkpoint:
                state, checkpoint = self._resume(identity, settings)
            else:
                start_run(root, identity, args.strategy, settings, args.overwrite_output_dir, self.accelerator)
                state, checkpoint = ContinualState(benchmark=identity, strategy=args.strategy), None
            try:
                if args.strategy == "joint":
                    self._train_joint(state, checkpoint)
                else:
                    for task in benchmark.tasks[state.completed_tasks :]:
                        self._train_task(task, state, checkpoint)
                        checkpoint = None
            finally:
                args.output_dir, args.num_train_epochs = root, self.task_epochs
        summary = continual_summary(state.matrix, state.cumulative)
        return ContinualResult(state.matrix, state.cumulative, summary, state.task_metrics, state.modulation,
                               unreadable_images=dict(state.unreadable_images))  # fmt: skip

    def _train_task(self, task, state, checkpoint):
        """One task, from its beginning or from `checkpoint` (an intact HF checkpoint of it)."""
        args, k = self.args, task.task_id
        out_dir = task_dir(self.root_dir, k)
        if self.is_world_process_zero():
            mark_task_dir(out_dir, k)
        logger.info("Task %d/%d: %d training examples, new labels %s", k + 1, len(self.benchmark.tasks),
                    len(task.train), task.new_labels)  # fmt: skip
        self._set_label_mask(k)
        self._set_fixed_coefficients(state, k)
        train_set = task.train
        if args.memory_per_label and args.replay_mode == "interleave" and len(self.memory):
            train_set = concatenate_datasets([task.train, self._memory_dataset()])
        self._phase = "task"
        self._fit(train_set, out_dir, self.task_epochs, checkpoint)
        if args.memory_per_label:
            self.memory.add_task(k, self._buckets(task.train))
        if args.memory_per_label and args.replay_mode == "separate_phase" and k > 0:
            self._phase = "replay"  # the reference's extra epochs on the memory alone, no distillation (D20)
            self._fit(self._memory_dataset(), os.path.join(out_dir, "replay"), args.replay_epochs, None)
            self._phase = "task"
        if args.ewc_lambda > 0:
            self._update_ewc(task.train)
        self._finish_task(state, k, [task])

    def _train_joint(self, state, checkpoint):
        """Upper bound: one model trained on the union of all tasks, evaluated as if after each task."""
        tasks = self.benchmark.tasks
        last = len(tasks) - 1
        if self.is_world_process_zero():
            mark_task_dir(task_dir(self.root_dir, last), last)
        self._set_label_mask(last)
        self._fit(concatenate_datasets([t.train for t in tasks]), task_dir(self.root_dir, last),
                  self.task_epochs, checkpoint)  # fmt: skip
        for k in range(len(tasks)):
            self._finish_task(state, k, tasks[: k + 1], save=k == last)

    def _fit(self, dataset, output_dir, epochs, checkpoint):
        dataset = self.data_collator.undecoded(dataset)  # decoded by the collator, which survives a broken image
        self.args.output_dir = output_dir
        self.args.num_train_epochs = epochs
        self.optimizer, self.lr_scheduler = None, None  # a fresh optimizer and schedule per task
        self._teacher_profiles = None
        if self._distils() and self.args.cache_teacher_attention:
            dataset = dataset.add_column(ROW_INDEX, np.arange(len(dataset)))
            self._teacher_profiles = TeacherProfiles.build(
                self.teacher, dataset, self.data_collator, self.args.distillation_pooling,
                self.args.per_device_eval_batch_size, self.args.device,
            )  # fmt: skip
            logger.info("Teacher attention profiles of %d rows cached (%.1f MiB)", len(dataset),
                        self._teacher_profiles.nbytes / 2**20)  # fmt: skip
        self.train_dataset = dataset
        self._step_records = load_step_records(checkpoint, self.args.device)  # a resumed task keeps its history
        self._metrics.clear()
        self._loss_finite = None
        self.train(resume_from_checkpoint=checkpoint)
        self._check_finite("the end of the task")

    def _save_checkpoint(self, model, trial):
        """The HF checkpoint plus this task's modulation records (so a resumed task ends with the same history), then
        `saved_files.json`. Older checkpoints are rotated out only once the new one is complete; nothing is written
        from a diverged model (`_check_finite`), and a full disk is named (`disk_full_is_named`)."""
        self._check_finite("a checkpoint")
        folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

        def remove_partial():
            if self.is_world_process_zero():
                shutil.rmtree(folder, ignore_errors=True)
            return (f"The partial {os.path.basename(folder)} was removed; {self._last_save(os.path.dirname(folder))}"
                    ". Free some space, then continue with --resume_from_checkpoint true (same output_dir and "
                    "arguments).")  # fmt: skip

        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            with disk_full_is_named(folder, remove_partial):
                super()._save_checkpoint(model, trial)
                if self.is_world_process_zero() and self._step_records:
                    save_step_records(folder, self._step_records)
                self.accelerator.wait_for_everyone()  # every process's rng_state_*.pth is written
                if self.is_world_process_zero():
                    write_manifest(folder)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate_checkpoints(os.path.dirname(folder), limit, self.state.best_model_checkpoint, use_mtime=True)

    def _checkpoint_files(self) -> list:
        return checkpoint_files(self.args, own_layout=self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _last_save(self, folder: str) -> str:
        return last_save(folder, self.root_dir, self._checkpoint_files())

    def _check_finite(self, where: str, weights: bool = True):
        """Raise FloatingPointError when a loss since the fit began, or (with `weights`) a weight, is nan/inf: called
        at logging steps, before every checkpoint and at the end of each fit, so a diverged model is never saved.
        One host sync per call; the per-step flag stays on the device (`training_step`)."""
        device = self.args.device
        loss_bad = torch.zeros((), device=device)
        if self._loss_finite is not None:
            loss_bad = (~self._loss_finite).float().to(device)
        bad_weights = torch.zeros((), device=device)
        if weights:
            bad_weights = torch.stack([~torch.isfinite(p).all() for p in self.model.parameters()]).sum().float()
        flags = torch.stack([loss_bad, bad_weights])
        if self.accelerator.num_processes > 1:  # every process stops at the same point
            flags = self.accelerator.reduce(flags, reduction="sum")
        loss_bad, bad_weights = flags.tolist()
        if not loss_bad and not bad_weights:
            return
        found = (("the loss", loss_bad), (f"{int(bad_weights)} weight tensors", bad_weights))
        what = " and ".join(name for name, bad in found if bad)
        folder = self.args.output_dir
        raise FloatingPointError(
            f"Training diverged in {folder} (step {self.state.global_step}): {what} became non-finite (nan/inf), "
            f"found at {where}. Nothing was saved from it; {self._last_save(folder)}. "
            f"Lower learning_rate (now {self.args.learning_rate}) or set max_grad_norm, then start again with "
            "--overwrite_output_dir true or in another output_dir (a resume keeps the arguments the run began with)."
        )

    def _finish_task(self, state, k, tasks, save=True):
        metrics = self.evaluate_task(k)
        state.matrix.append(metrics["slices"])
        state.cumulative.append(metrics["cumulative"])
        state.task_metrics.append(metrics)
        state.modulation.append(self._modulation_history())
        state.completed_tasks = k + 1
        state.memory = self.memory.state_dict()
        new = self._record_unreadable_images(state)
        logger.info("After task %d: cumulative %.4f, slices %s; %d unreadable image%s (%d in the run)%s", k + 1,
                    metrics["cumulative"], [round(x, 4) for x in metrics["slices"]], new, "" if new == 1 else "s",
                    len(state.unreadable_images), self._uncounted_images())  # fmt: skip
        self._snapshot_teacher()
        if save:
            save_task(task_dir(self.root_dir, k), state, self.model, self.processing_class, self._ewc, self.accelerator)

    def _record_unreadable_images(self, state) -> int:
        """Add the images the collators (of every process) could not read to `state.unreadable_images`; returns how
        many were not there yet. Each was warned about once and fed as a zero image with image_mask=0."""
        found = {**self.data_collator.unreadable_images, **self._eval_collator.unreadable_images}
        if self.accelerator.num_processes > 1:
            found = {ref: why for part in gather_object([found]) for ref, why in part.items()}
        new = {ref: why for ref, why in sorted(found.items()) if ref not in state.unreadable_images}
        state.unreadable_images.update(new)
        return len(new)

    def _uncounted_images(self) -> str:
        workers = self.args.dataloader_num_workers
        if not workers:
            return ""
        return (f", not counting the training batches collated in the {workers} DataLoader worker processes (their "
                "warnings name those images)")  # fmt: skip

    # ------------------------------------------------------------------------------------------------- helpers
    def _seen_mask(self, k) -> torch.Tensor:
        """[num_labels] bool: the labels of tasks 0..k, and None / O (always allowed)."""
        names = self.benchmark.label_names
        seen = set(self.benchmark.seen_labels(k)) | {names[0]}
        return torch.tensor([name in seen for name in names], device=self.args.device)

    def _set_label_mask(self, k):
        self._label_mask = self._seen_mask(k) if self.args.mask_unseen_labels else None
        self._old_labels = self._seen_mask(k - 1).nonzero().squeeze(1) if k > 0 else None

    def _set_fixed_coefficients(self, state, k):
        """Paper schedule (§3.2): from task 2 on, the mean of the previous tasks' mean coefficients."""
        self._fixed_coefficients = None
        if self.args.gradient_modulation and self.args.modulation_schedule == "paper" and k > 0:
            means = [(h["k_text_mean"], h["k_vision_mean"]) for h in state.modulation if "k_text_mean" in h]
            if means:
                k_text, k_vision = np.mean(means, axis=0)
                device = self.args.device
                self._fixed_coefficients = (torch.tensor(k_text, device=device), torch.tensor(k_vision, device=device))

    def _modulation_history(self) -> dict:
        if not self._step_records:
            return {}
        records = torch.stack(self._step_records).cpu().numpy()  # one host sync per task
        rho, k_text, k_vision, applied_text, applied_vision = records.T.tolist()
        return {"rho_vision": rho, "k_text": k_text, "k_vision": k_vision, "k_text_applied": applied_text,
                "k_vision_applied": applied_vision, "k_text_mean": float(np.mean(k_text)),
                "k_vision_mean": float(np.mean(k_vision))}  # fmt: skip

    def _buckets(self, dataset):
        """Replay buckets (§5): the relation for RE; the first entity type of the sentence (or 'none') for NER."""
        if self.benchmark.task_type == "re":
            return dataset["relation"][:]
        names = self.benchmark.label_names
        buckets = []
        for tags in dataset["ner_tags"][:]:
            first = next((names[t][2:] for t in tags if names[t].startswith("B-")), "none")
            buckets.append(first)
        return buckets

    def _memory_dataset(self):
        parts = [self.benchmark.tasks[t].train.select(idx) for t, idx in sorted(self.memory.indices.items()) if idx]
        return concatenate_datasets(parts)

    def _snapshot_teacher(self):
        """The frozen model of the task just finished: eval mode, no gradients (never the train-mode copy, D8)."""
        if self.args.distillation_weight > 0 or self.args.lwf_weight > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)

    def _update_ewc(self, dataset):
        """Diagonal empirical Fisher, the mean of squared per-example gradients on `ewc_fisher_samples` training rows
        (a seeded draw, split over the ranks); summed over tasks. Per example: the square of a batch-mean gradient
        would be about 1/batch of it (benchmarks/RESULTS.md §5)."""
        model, args = self.model, self.args
        params = [p for p in model.parameters() if p.requires_grad]
        fisher = [torch.zeros_like(p) for p in params]
        count = min(args.ewc_fisher_samples, len(dataset))
        order = np.random.default_rng([args.seed, len(dataset)]).permutation(len(dataset))[:count]
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        dataset = self.data_collator.undecoded(dataset.select(order[rank::world]))
        loader = DataLoader(dataset, batch_size=1, collate_fn=self.data_collator)
        was_training = model.training
        model.eval()
        for batch in loader:
            model.zero_grad()
            model(**{k: v.to(args.device) for k, v in batch.items()}).loss.backward()
            for f, p in zip(fisher, params):
                if p.grad is not None:
                    f.add_(p.grad.detach() ** 2)
        model.zero_grad()
        model.train(was_training)
        if world > 1:
            fisher = [self.accelerator.reduce(f, reduction="sum") for f in fisher]
        fisher = [f / max(count, 1) for f in fisher]
        if self._ewc is not None:
            fisher = [f + old for f, old in zip(fisher, self._ewc[1])]
        self._ewc_params = params
        self._ewc = ([p.detach().clone() for p in params], fisher)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate_task(self, k: int, benchmark=None) -> dict:
        """Evaluate the current model on task k's cumulative test set and on each task slice j <= k (of `benchmark`,
        default the one being trained)."""
        if benchmark is not None:
            self.benchmark = benchmark
            self._eval_collator = MSPTDataCollator(self.processing_class, benchmark.task_type, with_task_ids=True)
        bench = self.benchmark
        test = bench.tasks[k].test
        return score_task(bench, k, *self._predict(test))

    def _predict(self, dataset):
        """Predictions over a dataset, gathered across processes: (predictions, labels, task ids) as numpy arrays.
        RE predictions are argmax relation ids; NER predictions are Viterbi tags (-100 off word starts)."""
        loader = DataLoader(self._eval_collator.undecoded(dataset), batch_size=self.args.per_device_eval_batch_size,
                            shuffle=False, collate_fn=self._eval_collator)  # fmt: skip
        loader = self.accelerator.prepare_data_loader(loader)
        model = self.model
        was_training = model.training
        model.eval()
        extra = {} if self._label_mask is None else {"label_mask": self._label_mask}
        outputs = []
        with torch.inference_mode():
            for batch in loader:
                task_ids, labels = batch.pop("task_id"), batch.pop("labels")
                out = model(**batch, **extra)
                pred = out.logits.argmax(-1) if out.logits.dim() == 2 else out.tags
                if pred.dim() == 2:
                    pred = self.accelerator.pad_across_processes(pred, dim=1, pad_index=-100)
                    labels = self.accelerator.pad_across_processes(labels, dim=1, pad_index=-100)
                outputs.append([t.cpu() for t in self.accelerator.gather_for_metrics((pred, labels, task_ids))])
        model.train(was_training)
        if outputs and outputs[0][0].dim() == 2:  # pad NER batches to one width
            width = max(o[0].shape[1] for o in outputs)
            for o in outputs:
                for i in (0, 1):
                    o[i] = torch.nn.functional.pad(o[i], (0, width - o[i].shape[1]), value=-100)
        return tuple(torch.cat([o[i] for o in outputs]).numpy() for i in range(3))

    # --------------------------------------------------------------------------------------- lock and resume
    @contextlib.contextmanager
    def output_dir_lock(self):
        """Hold `output_dir`'s `RunLock` for the block (`checkpointing.output_dir_locked`; re-entrant): another run on
        the same output_dir is refused with the holder's pid and host; a lock left by a killed run is taken over."""
        if self._holding_lock:
            yield
            return
        with output_dir_locked(self.args.output_dir, self.accelerator):
            self._holding_lock = True
            try:
                yield
            finally:
                self._holding_lock = False

    def _resume(self, identity, settings):
        """(state after the last finished task, the intact HF checkpoint of the next task or None). None: that task
        starts from its beginning, with the random state the previous one ended with."""
        root, args = self.root_dir, self.args
        state, finished = resume_point(root, identity, args.strategy, settings, [EWC_NAME] if args.ewc_lambda else [])
        last_dir = task_dir(root, finished[-1]) if finished else None
        if last_dir is not None:
            ewc = load_task(last_dir, self.model, args.device)
            self.memory = ReplayMemory.from_state_dict(state.memory)
            if ewc is not None:
                self._ewc_params = [p for p in self.model.parameters() if p.requires_grad]
                self._ewc = ewc
            self._snapshot_teacher()
            if self.is_world_process_zero():
                remove_checkpoints(last_dir)  # left if the run was killed right after the task finished
            logger.info("Resuming after task %d of %s", finished[-1] + 1, root)
        next_task = len(finished) if args.strategy != "joint" else len(identity["new_labels"]) - 1
        checkpoint = None
        if next_task < len(identity["new_labels"]):
            next_dir = task_dir(root, next_task)
            checkpoint = intact_checkpoint(next_dir, self._checkpoint_files(), self.accelerator)
            if checkpoint is None and os.path.isdir(next_dir) and self.is_world_process_zero():
                logger.warning("Task %d restarts from its start: %s holds no intact checkpoint.", next_task + 1,
                               next_dir)  # fmt: skip
            if checkpoint is None and last_dir is not None:
                restore_task_start(last_dir, self.accelerator.process_index)
        if state is None:
            state = ContinualState(benchmark=identity, strategy=args.strategy)
        return state, checkpoint
