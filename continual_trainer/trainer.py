"""ContinualTrainer: the HF Trainer run task after task. The trainer keeps the loop, evaluation after each task, saving
and crash-safe resume; every continual mechanism (replay and its variants, EWC, LwF, attention distillation from the
previous task's frozen model, gradient modulation) is a component from `strategies.py` that the arguments switch on.
"""

import contextlib
import inspect
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from accelerate.utils import gather_object
from datasets import concatenate_datasets
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkpointing import (
    STRATEGY_STATE_NAME,
    checkpoint_files,
    disk_full_is_named,
    intact_checkpoint,
    last_save,
    load_task,
    output_dir_locked,
    remove_checkpoints,
    restore_task_start,
    resume_point,
    save_task,
    start_run,
    write_manifest,
)
from .collator import MSPTDataCollator
from .evaluation import ContinualMetrics, call_task_end, reported_step, summary_metrics, task_prefix
from .metrics import METRIC_DEFINITIONS, continual_summary
from .replay import ReplayMemory
from .state import ContinualState, describe_benchmark, mark_task_dir, run_settings, task_dir
from .strategies import Step, build_components, copy_teacher
from .teacher_cache import ROW_INDEX
from modeling_mspt.modeling_mspt import STREAM_OF_ROLE

logger = logging.getLogger(__name__)


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
    """`Trainer` for a task sequence. `processing_class` must be an `MSPTProcessor`; call `train_tasks(benchmark)`.
    `components`: the strategy's mechanisms (`strategies.build_components`), by name."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, **kwargs):
        given = inspect.signature(Trainer.__init__).bind(None, *args, **kwargs).arguments
        training_args = given.get("args")
        eval_strategy = getattr(training_args, "eval_strategy", "no")
        # Without an eval_dataset, `--eval_strategy steps|epoch` evaluates the validation rows of the tasks seen so far
        # (`evaluate`): HF's check for an eval_dataset, made here, is for the benchmark `train_tasks` will bring.
        deferred = given.get("eval_dataset") is None and eval_strategy != "no"
        if deferred:
            training_args.eval_strategy = "no"
        try:
            super().__init__(*args, **kwargs)
        finally:
            if deferred:
                training_args.eval_strategy = eval_strategy
        if self.compute_metrics is not None:
            raise ValueError("ContinualTrainer scores every evaluation with the continual metrics (per task slice, "
                             "`evaluation.ContinualMetrics`); `compute_metrics` would not be used: leave it unset.")
        self.teacher = None  # the frozen model of the previous task, when a component needs one
        self.benchmark = None
        self.current_task = 0
        self.phase = "task"  # or the name of an extra phase (`replay`)
        self._label_mask = None  # mask_unseen_labels: the labels seen so far
        self._metrics = defaultdict(list)
        self._loss_finite = None  # bool tensor on the loss's device: every loss since the fit began was finite
        self._holding_lock = False
        self._steps_before_fit, self._fit_started = 0, False  # run_global_step
        self._step_shown = False  # _run_wide_step
        self.components = build_components(self)

    # ------------------------------------------------------------------------------------------- the model's roles
    def stream_parameters(self) -> dict:
        """{"text": [...], "vision": [...]}: the parameters of each stream, its attention biases included (§3.1), as
        the model assigns them (`MSPTPreTrainedModel.parameter_roles`)."""
        roles, params = self.model.parameter_roles(), dict(self.model.named_parameters())
        streams = defaultdict(list)
        for name, role in roles.items():
            if role in STREAM_OF_ROLE:
                streams[STREAM_OF_ROLE[role]].append(params[name])
        return dict(streams)

    def get_decay_parameter_names(self, model) -> list[str]:
        """`Trainer`'s list (no decay on norms and biases) without DINOv2's layer-scale vectors (`layer_scale1/2`):
        they are per-channel gains like a norm's weight, and DINOv2's own training does not decay them either; decayed,
        they would pull each residual branch toward zero."""
        return [name for name in super().get_decay_parameter_names(model) if "layer_scale" not in name]

    def create_optimizer(self, model=None):
        """One group per stream, learning rate and decay (roles from `MSPTPreTrainedModel.parameter_roles`): streams at
        `learning_rate`, shared keys at `key_learning_rate`, attention biases at `bias_learning_rate`, head and CRF at
        `head_learning_rate` (§7). No decay on norms, biases and layer-scales (`get_decay_parameter_names`)."""
        if self.optimizer is not None:
            return self.optimizer
        args = self.args
        learning_rates = {"text": args.learning_rate, "vision": args.learning_rate, "shared_key": args.key_learning_rate,
                          "text_bias": args.bias_learning_rate, "vision_bias": args.bias_learning_rate,
                          "head": args.head_learning_rate}  # fmt: skip
        decay = set(self.get_decay_parameter_names(self.model))
        roles = self.model.parameter_roles()
        groups = defaultdict(list)
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                role = roles[name]
                groups[(STREAM_OF_ROLE.get(role), learning_rates[role], name in decay)].append(param)
        # `stream`: the groups whose step the modulation may scale (modulation_target="update").
        param_groups = [{"params": params, "lr": lr, "weight_decay": args.weight_decay if decayed else 0.0,
                         "stream": stream} for (stream, lr, decayed), params in groups.items()]  # fmt: skip
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # --------------------------------------------------------------------------------------------------- losses
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss plus every component's weighted terms (each logged, averaged, under its name)."""
        rows = inputs.pop(ROW_INDEX, None)
        label_kwargs = {} if self._label_mask is None else {"label_mask": self._label_mask}
        kwargs = dict(label_kwargs)
        for component in self.components.values():
            for key, value in component.forward_kwargs(inputs, self.phase).items():
                kwargs[key] = value & kwargs[key] if key == "label_mask" and key in kwargs else value
        outputs = model(**inputs, **kwargs)
        loss = outputs.loss
        self.record_metric("task_loss", loss.detach())
        step = Step(self, model, inputs, outputs, rows, label_kwargs)
        for component in self.components.values():
            for name, weight, term in component.loss_terms(step):
                loss = loss + weight * term
                self.record_metric(name, term.detach())
        return (loss, outputs) if return_outputs else loss

    def record_metric(self, name: str, value: torch.Tensor):
        """A per-step value, averaged since the last log and logged under `name` (no host sync until then)."""
        self._metrics[name].append(value)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)  # stays on the device: read at logging steps and before saves (_check_finite)
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        # On the last micro-batch of an accumulation the gradients are complete (and all-reduced under DDP): the
        # components act on them here, before clipping and the optimizer step (§3.1 step 5).
        if self.accelerator.sync_gradients:
            for component in self.components.values():
                component.before_optimizer_step()
        return loss

    def log(self, logs, start_time=None):
        """Per-step terms are averaged since the last log (as trl does), not logged per micro-batch. A non-finite loss
        stops the run here (HF would log the mean of the finite ones)."""
        if "loss" in logs:
            self._check_finite("logging", weights=False)
        if self._metrics and "loss" in logs:
            for key, values in self._metrics.items():
                logs[key] = torch.stack(values).float().mean().item()
            self._metrics.clear()
        with self._run_wide_step():
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
        if args.strategy == "joint" and self.components:
            raise ValueError(f"strategy='joint' trains once on every task; it takes no continual mechanism, but "
                             f"{sorted(self.components)} are switched on: leave them unset, or choose another "
                             "strategy.")  # fmt: skip
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
            self._start_step_axis(state)
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
        self.log(summary_metrics(summary))
        return ContinualResult(state.matrix, state.cumulative, summary, state.task_metrics, state.modulation,
                               unreadable_images=dict(state.unreadable_images))  # fmt: skip

    def _train_task(self, task, state, checkpoint):
        """One task, from its beginning or from `checkpoint` (an intact HF checkpoint of it): the components' life
        cycle around the task's fit and any extra phase (strategies.py)."""
        k = task.task_id
        out_dir = task_dir(self.root_dir, k)
        if self.is_world_process_zero():
            mark_task_dir(out_dir, k)
        logger.info("Task %d/%d: %d training examples, new labels %s", k + 1, len(self.benchmark.tasks),
                    len(task.train), task.new_labels)  # fmt: skip
        self._begin_task(task, state)
        train_set = task.train
        for component in self.components.values():
            train_set = component.task_dataset(task, train_set)
        self._fit(train_set, out_dir, self.task_epochs, checkpoint)
        for component in self.components.values():
            component.after_task_fit(task)
        for component in self.components.values():
            for phase, dataset, epochs in component.extra_phases(task):
                self.phase = phase
                self._fit(dataset, os.path.join(out_dir, phase), epochs, None)
                self.phase = "task"
        self._finish_task(state, k)

    def _begin_task(self, task, state):
        self.current_task, self.phase = task.task_id, "task"
        self._label_mask = self.seen_mask(task.task_id) if self.args.mask_unseen_labels else None
        for component in self.components.values():
            component.before_task(task, state)

    def _train_joint(self, state, checkpoint):
        """Upper bound: one model trained on the union of all tasks, evaluated as if after each task."""
        tasks = self.benchmark.tasks
        last = len(tasks) - 1
        if self.is_world_process_zero():
            mark_task_dir(task_dir(self.root_dir, last), last)
        self._begin_task(tasks[last], state)
        self._fit(concatenate_datasets([t.train for t in tasks]), task_dir(self.root_dir, last),
                  self.task_epochs, checkpoint)  # fmt: skip
        for k in range(len(tasks)):
            self._finish_task(state, k, joint=True)

    def _fit(self, dataset, output_dir, epochs, checkpoint):
        dataset = self.data_collator.undecoded(dataset)  # decoded by the collator, which survives a broken image
        self.args.output_dir = output_dir
        self.args.num_train_epochs = epochs
        self.optimizer, self.lr_scheduler = None, None  # a fresh optimizer and schedule per task
        for component in self.components.values():
            dataset = component.before_fit(dataset, self.phase, checkpoint)
        self.train_dataset = dataset
        self._metrics.clear()
        self._loss_finite = None
        self._steps_before_fit, self._fit_started = self.run_global_step(), True
        self.train(resume_from_checkpoint=checkpoint)
        self._check_finite("the end of the task")

    def _save_checkpoint(self, model, trial):
        """The HF checkpoint plus the components' mid-task state (the modulation records: a resumed task ends with the
        same history), then
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
                for component in self.components.values():
                    component.save_checkpoint(folder)
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

    def _finish_task(self, state, k, joint=False):
        """After every fit of task k: the components' end-of-task work, evaluation, the state, the teacher of the next
        task, the save (joint: once, after the last)."""
        state.modulation.append({})  # filled by the modulation component, if any
        if not joint:
            for component in self.components.values():
                component.after_task(self.benchmark.tasks[k], state)
        metrics, logged = self._evaluate_task(k)
        metrics["global_step"] = self.run_global_step()  # where its metrics were logged; a resume continues from it
        state.matrix.append(metrics["slices"])
        state.cumulative.append(metrics["cumulative"])
        state.task_metrics.append(metrics)
        state.completed_tasks = k + 1
        tensors = {}
        state.components = {}
        for name, component in self.components.items():
            saved = component.state_dict()
            tensors.update({f"{name}.{key}": v for key, v in saved.items() if torch.is_tensor(v)})
            state.components[name] = {key: v for key, v in saved.items() if not torch.is_tensor(v)}
        new = self._record_unreadable_images(state)
        logger.info("After task %d: cumulative %.4f, slices %s; %d unreadable image%s (%d in the run)%s", k + 1,
                    metrics["cumulative"], [round(x, 4) for x in metrics["slices"]], new, "" if new == 1 else "s",
                    len(state.unreadable_images), self._uncounted_images())  # fmt: skip
        self.snapshot_teacher()
        if not joint or k == len(self.benchmark.tasks) - 1:
            save_task(task_dir(self.root_dir, k), state, self.model, self.processing_class, tensors, self.accelerator)
            with self._run_wide_step():
                self.control = call_task_end(self.callback_handler.callbacks, self.args, self.state, self.control,
                                             task_id=k, task_dir=task_dir(self.root_dir, k), metrics=logged,
                                             model=self.model, processing_class=self.processing_class)  # fmt: skip

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

    # ------------------------------------------------------------------------------------- for the components
    def seen_mask(self, k) -> torch.Tensor | None:
        """[num_labels] bool: the labels of tasks 0..k, and None / O (always allowed); None without a benchmark."""
        if self.benchmark is None:
            return None
        names = self.benchmark.label_names
        seen = set(self.benchmark.seen_labels(k)) | {names[0]}
        return torch.tensor([name in seen for name in names], device=self.args.device)

    def replay_buckets(self, dataset):
        """Replay buckets (§5): the relation for RE; the first entity type of the sentence (or 'none') for NER."""
        if self.benchmark.task_type == "re":
            return dataset["relation"][:]
        names = self.benchmark.label_names
        buckets = []
        for tags in dataset["ner_tags"][:]:
            first = next((names[t][2:] for t in tags if names[t].startswith("B-")), "none")
            buckets.append(first)
        return buckets

    @property
    def memory(self) -> ReplayMemory:
        """The replay memory of the strategy (an empty one when it replays nothing)."""
        for component in self.components.values():
            if hasattr(component, "memory"):
                return component.memory
        return ReplayMemory(0, self.args.seed)

    def snapshot_teacher(self):
        """Freeze the current model as the teacher of the next task, if a component needs one (eval mode, no
        gradients; never the train-mode copy, D8)."""
        if any(c.needs_teacher for c in self.components.values()):
            self.teacher = copy_teacher(self.model)

    def prepare_task(self, task_id: int, batches=None, state=None):
        """Put the trainer where the first step of task `task_id` (0-based) starts, outside `train_tasks`: for a task
        after the first the current model becomes the previous task's frozen teacher (if a component needs one), each
        component's `before_task` runs, and `batches` (collated rows, tagged with `row_index` in order) stand for the
        task's training rows: the attention distillation caches the teacher's profiles of them and EWC consolidates on
        them as on a finished task. Public: `benchmarks/step_cost.py` times a later task's step with it."""
        if task_id > 0:
            self.snapshot_teacher()
        self.current_task, self.phase = task_id, "task"
        state = state if state is not None else ContinualState(benchmark={}, strategy=self.args.strategy)
        for component in self.components.values():
            component.before_task(SimpleNamespace(task_id=task_id), state)
        if batches is not None and task_id > 0:
            for component in self.components.values():
                component.prepare_rows(batches)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate_task(self, k: int, benchmark=None, split: str = "test") -> dict:
        """Evaluate the current model on task k's cumulative test set and on each task slice j <= k (of `benchmark`,
        default the one being trained). `split="validation"`: on the validation rows of tasks 0..k instead (what
        hyper-parameters are chosen on; never the test rows). Runs `evaluate`, so the metrics are also logged
        (`test_task_<k+1>_...` / `eval_task_<k+1>_...`, `evaluation.LOGGED_METRICS`); returns `score_task`'s dict."""
        if benchmark is not None:
            self.benchmark = benchmark
            self._eval_collator = MSPTDataCollator(self.processing_class, benchmark.task_type, with_task_ids=True)
        return self._evaluate_task(k, split)[0]

    def _evaluate_task(self, k: int, split: str = "test") -> tuple[dict, dict]:
        """(`score_task`'s dict, the metrics as logged)."""
        bench = self.benchmark
        if split == "test":
            rows = bench.tasks[k].test
        elif split == "validation":
            rows = self._validation_rows(k)
        else:
            raise ValueError(f"evaluate_task: split must be 'test' or 'validation', got {split!r}.")
        with self._scoring(k) as scorer:
            logged = self.evaluate(rows, metric_key_prefix=task_prefix(split, k))
        return scorer.scores, logged

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """`Trainer.evaluate` with the continual metrics (`evaluation.ContinualMetrics`) on benchmark rows, reported at
        the run-wide step. Without a dataset (and none given to the trainer): the validation rows of the tasks seen so
        far, which is what `--eval_strategy steps|epoch` evaluates during each task."""
        if self.benchmark is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if eval_dataset is None and self.eval_dataset is None:
            eval_dataset = self._validation_rows(self.current_task)
        scoring = self._scoring(self.current_task)
        if isinstance(self.compute_metrics, ContinualMetrics):  # evaluate_task chose the task
            scoring = contextlib.nullcontext()
        was_training = self.model.training
        try:
            with scoring, self._run_wide_step():
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.model.train(was_training)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """Benchmark rows through the evaluation collator (it keeps the task ids and decodes the images), in order and
        all of them (never `dataloader_drop_last`), sharded across processes; the loop gathers them back."""
        if self.benchmark is None:
            return super().get_eval_dataloader(eval_dataset)
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        loader = DataLoader(self._eval_collator.undecoded(dataset), batch_size=self.args.per_device_eval_batch_size,
                            shuffle=False, collate_fn=self._eval_collator)  # fmt: skip
        return self.accelerator.prepare_data_loader(loader)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """One evaluation batch: the model's own loss (the components' terms are training signals: no memory draw, no
        teacher), predictions `(label ids, task ids)` and labels. RE predictions are argmax relation ids; NER
        predictions are Viterbi tags (-100 off word starts)."""
        if self.benchmark is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        task_ids, labels = inputs.pop("task_id"), inputs["labels"]
        extra = {} if self._label_mask is None else {"label_mask": self._label_mask}
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs, **extra)
        loss = None if outputs.loss is None else outputs.loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        predictions = outputs.logits.argmax(-1) if outputs.logits.dim() == 2 else outputs.tags
        return loss, (predictions, task_ids), labels

    def _predict(self, dataset):
        """Predictions over a dataset, gathered across processes: (predictions, labels, task ids) as numpy arrays."""
        was_training = self.model.training
        try:
            output = self.evaluation_loop(self.get_eval_dataloader(dataset), "Prediction", prediction_loss_only=False)
        finally:
            self.model.train(was_training)
        (predictions, task_ids), labels = output.predictions, output.label_ids
        return predictions, labels, task_ids

    def _validation_rows(self, k: int):
        return concatenate_datasets([t.validation for t in self.benchmark.tasks[: k + 1]])

    @contextlib.contextmanager
    def _scoring(self, k: int):
        """`compute_metrics` scores task k's slices inside the block; yields the `ContinualMetrics`."""
        scorer = ContinualMetrics(self.benchmark, k)
        self.compute_metrics = scorer
        try:
            yield scorer
        finally:
            self.compute_metrics = None

    # ------------------------------------------------------------------------------ the run-wide step of the logs
    def run_global_step(self) -> int:
        """Optimizer steps since the run began, over every task and phase: the step of every log and evaluation, so
        that TensorBoard, W&B, trackio, ... draw one axis for the run. Each task's `train()` still counts from 0 in
        `state.global_step` (its schedule, logging and saving intervals, checkpoint names)."""
        return self._steps_before_fit + (self.state.global_step if self._fit_started else 0)

    def _start_step_axis(self, state):
        """At the start of `train_tasks`: the axis continues from the last finished task (a resume) or starts at 0.
        TensorBoard writes under `output_dir/runs/` (HF's default; each task's fit moves `args.output_dir`)."""
        done = state.task_metrics[-1].get("global_step", 0) if state.task_metrics else 0
        self._steps_before_fit, self._fit_started = done, False
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.root_dir, default_logdir())

    @contextlib.contextmanager
    def _run_wide_step(self):
        """`state.global_step` reads `run_global_step()` inside the block (re-entrant: `evaluate` logs)."""
        if self._step_shown:
            yield
            return
        self._step_shown = True
        try:
            with reported_step(self.state, self.run_global_step()):
                yield
        finally:
            self._step_shown = False

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
        tensor_state = any(getattr(c, "saves_tensors", False) for c in self.components.values())
        state, finished = resume_point(root, identity, args.strategy, settings, [STRATEGY_STATE_NAME] if tensor_state else [])
        last_dir = task_dir(root, finished[-1]) if finished else None
        if last_dir is not None:
            tensors = load_task(last_dir, self.model, args.device)
            for name, component in self.components.items():
                saved = dict(state.components.get(name, {}))
                saved.update({key[len(name) + 1 :]: v for key, v in tensors.items() if key.startswith(name + ".")})
                component.load_state_dict(saved)
            self.snapshot_teacher()
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
