"""ContinualTrainer: the HF Trainer run task after task, with gradient modulation (§3), attention distillation from the
previous task's frozen model (§4), replay (§5), EWC / LwF baselines, evaluation after each task and crash-safe resume.
"""

import copy
import glob
import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import concatenate_datasets
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

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
from .state import RUN_NAME, ContinualState, describe_benchmark, finished_tasks, read_run, task_dir, write_run

logger = logging.getLogger(__name__)

STEP_RECORDS_NAME = "modulation_steps.pt"
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
    the summaries, the full per-task metrics and the modulation history. Definitions in `metric_definitions`."""

    matrix: list
    cumulative: list
    summary: dict
    task_metrics: list
    modulation: list
    metric_definitions: dict = field(default_factory=lambda: dict(METRIC_DEFINITIONS))

    def to_dict(self) -> dict:
        return {"accuracy_matrix": self.matrix, "cumulative": self.cumulative, "summary": self.summary,
                "task_metrics": self.task_metrics, "metric_definitions": self.metric_definitions}  # fmt: skip


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
        """Per-step terms are averaged since the last log (as trl does), not logged per micro-batch."""
        if self._metrics and "loss" in logs:
            for key, values in self._metrics.items():
                logs[key] = torch.stack(values).float().mean().item()
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------- the task loop
    def train_tasks(self, benchmark, resume_from_checkpoint: bool = False) -> ContinualResult:
        """Train on `benchmark.tasks` in order (SPEC §2): per task, train (plus replay), evaluate on the cumulative
        test set and on each seen task's slice, update the replay memory, snapshot the frozen teacher and save the
        task state under `output_dir/task-XX/`. With `resume_from_checkpoint`, continue an interrupted run."""
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
        resume_mid_task = False
        if resume_from_checkpoint:
            state, resume_mid_task = self._resume(identity)
        else:
            self._clear_previous_run(root)
            if self.is_world_process_zero():
                write_run(root, identity, args.strategy)
            state = ContinualState(benchmark=identity, strategy=args.strategy)
        try:
            if args.strategy == "joint":
                self._train_joint(state, resume_mid_task)
            else:
                for task in benchmark.tasks[state.completed_tasks :]:
                    self._train_task(task, state, resume_mid_task)
                    resume_mid_task = False
        finally:
            args.output_dir, args.num_train_epochs = root, self.task_epochs
        summary = continual_summary(state.matrix, state.cumulative)
        return ContinualResult(state.matrix, state.cumulative, summary, state.task_metrics, state.modulation)

    def _train_task(self, task, state, resume_mid_task):
        args, k = self.args, task.task_id
        out_dir = task_dir(self.root_dir, k)
        logger.info("Task %d/%d: %d training examples, new labels %s", k + 1, len(self.benchmark.tasks),
                    len(task.train), task.new_labels)  # fmt: skip
        self._set_label_mask(k)
        self._set_fixed_coefficients(state, k)
        train_set = task.train
        if args.memory_per_label and args.replay_mode == "interleave" and len(self.memory):
            train_set = concatenate_datasets([task.train, self._memory_dataset()])
        self._phase = "task"
        self._fit(train_set, out_dir, self.task_epochs, resume_mid_task)
        if args.memory_per_label:
            self.memory.add_task(k, self._buckets(task.train))
        if args.memory_per_label and args.replay_mode == "separate_phase" and k > 0:
            self._phase = "replay"  # the reference's extra epochs on the memory alone, no distillation (D20)
            self._fit(self._memory_dataset(), os.path.join(out_dir, "replay"), args.replay_epochs, False)
            self._phase = "task"
        if args.ewc_lambda > 0:
            self._update_ewc(task.train)
        self._finish_task(state, k, [task])

    def _train_joint(self, state, resume_mid_task):
        """Upper bound: one model trained on the union of all tasks, evaluated as if after each task."""
        tasks = self.benchmark.tasks
        last = len(tasks) - 1
        self._set_label_mask(last)
        self._fit(concatenate_datasets([t.train for t in tasks]), task_dir(self.root_dir, last),
                  self.task_epochs, resume_mid_task)  # fmt: skip
        for k in range(len(tasks)):
            self._finish_task(state, k, tasks[: k + 1], save=k == last)

    def _fit(self, dataset, output_dir, epochs, resume):
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
        self._step_records = []
        self._metrics.clear()
        checkpoint = None
        if resume:
            checkpoint = get_last_checkpoint(output_dir)
            records = os.path.join(checkpoint, STEP_RECORDS_NAME)
            if os.path.exists(records):
                self._step_records = list(torch.load(records, map_location=self.args.device))
        self.train(resume_from_checkpoint=checkpoint)

    def _save_checkpoint(self, model, trial):
        """HF checkpoint plus this task's modulation records, so a resumed task ends with the same history."""
        super()._save_checkpoint(model, trial)
        if self.is_world_process_zero() and self._step_records:
            folder = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            torch.save(torch.stack(self._step_records).cpu(), os.path.join(folder, STEP_RECORDS_NAME))

    def _finish_task(self, state, k, tasks, save=True):
        metrics = self.evaluate_task(k)
        state.matrix.append(metrics["slices"])
        state.cumulative.append(metrics["cumulative"])
        state.task_metrics.append(metrics)
        state.modulation.append(self._modulation_history())
        state.completed_tasks = k + 1
        state.memory = self.memory.state_dict()
        logger.info("After task %d: cumulative %.4f, slices %s", k + 1, metrics["cumulative"],
                    [round(x, 4) for x in metrics["slices"]])  # fmt: skip
        self._snapshot_teacher()
        if save:
            self._save_task(task_dir(self.root_dir, k), state)

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
        loader = DataLoader(dataset.select(order[rank::world]), batch_size=1, collate_fn=self.data_collator)
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
        loader = DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, shuffle=False,
                            collate_fn=self._eval_collator)  # fmt: skip
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

    # --------------------------------------------------------------------------------------- state and resume
    def _save_task(self, out_dir, state):
        if self.is_world_process_zero():
            os.makedirs(out_dir, exist_ok=True)
            self.model.save_pretrained(out_dir)
            self.processing_class.save_pretrained(out_dir)
            if self._ewc is not None:
                anchors, fisher = self._ewc
                tensors = {f"anchor.{i}": a for i, a in enumerate(anchors)}
                tensors.update({f"fisher.{i}": f for i, f in enumerate(fisher)})
                save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, os.path.join(out_dir, "ewc.safetensors"))
            for checkpoint in glob.glob(os.path.join(out_dir, "checkpoint-*")) + [os.path.join(out_dir, "replay")]:
                shutil.rmtree(checkpoint, ignore_errors=True)  # mid-task checkpoints are not needed any more
            state.save(out_dir)  # last: marks the task as finished
        self.accelerator.wait_for_everyone()

    def _clear_previous_run(self, root):
        stale = sorted(glob.glob(os.path.join(root, "task-*")))
        if stale and self.is_world_process_zero():
            logger.warning("output_dir %s holds a previous continual run (%d task folders); starting a new run over "
                           "it. Pass resume_from_checkpoint=True to continue it instead.", root, len(stale))  # fmt: skip
            for path in stale:
                shutil.rmtree(path)
        self.accelerator.wait_for_everyone()

    def _resume(self, identity):
        root, args = self.root_dir, self.args
        run = read_run(root)
        if run is None:
            raise ValueError(f"resume_from_checkpoint: {root} holds no continual run ({RUN_NAME} is missing).")
        ContinualState(benchmark=run["benchmark"], strategy=run["strategy"]).check_compatible(
            identity, args.strategy, root
        )
        finished = finished_tasks(root)
        if finished and finished != list(range(len(finished))):
            raise ValueError(f"{root}: finished task folders {finished} are not consecutive from task-00.")
        state = None
        if finished:
            last_dir = task_dir(root, finished[-1])
            state = ContinualState.load(last_dir)
            state.check_compatible(identity, args.strategy, root)
            weights = os.path.join(last_dir, "model.safetensors")
            if not os.path.exists(weights):
                raise ValueError(f"{weights} is missing; delete {last_dir} to redo that task.")
            self.model.load_state_dict(load_file(weights, device=str(args.device)))
            self.memory = ReplayMemory.from_state_dict(state.memory)
            ewc_path = os.path.join(last_dir, "ewc.safetensors")
            if os.path.exists(ewc_path):
                tensors = load_file(ewc_path, device=str(args.device))
                n = len(tensors) // 2
                self._ewc_params = [p for p in self.model.parameters() if p.requires_grad]
                self._ewc = ([tensors[f"anchor.{i}"] for i in range(n)], [tensors[f"fisher.{i}"] for i in range(n)])
            self._snapshot_teacher()
            logger.info("Resuming after task %d of %s", finished[-1] + 1, root)
        next_task = len(finished) if args.strategy != "joint" else len(identity["new_labels"]) - 1
        mid_task = bool(glob.glob(os.path.join(task_dir(root, next_task), "checkpoint-*")))
        if state is None and not mid_task:
            raise ValueError(f"resume_from_checkpoint: {root} holds no finished task and no checkpoint to resume.")
        if state is None:
            state = ContinualState(benchmark=identity, strategy=args.strategy)
        return state, mid_task
