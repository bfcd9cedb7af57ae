"""Continual-learning strategies as components that `ContinualTrainer` composes (SPEC §2).

Each mechanism is one small object with a life cycle, in the spirit of Avalanche's plugins (`before_backward`,
`after_training_exp`) and of trl's trainers (the loss terms computed in `compute_loss`, logged as averages), without a
parallel framework: the trainer keeps the loop, evaluation, saving and resume, and calls, in this order,

    before_task(task, state)          a task starts: label sets, fixed coefficients, ...
    task_dataset(task, dataset)       what the task trains on (interleaved replay adds the memory)
    before_fit(dataset, phase, ckpt)  a fit starts (the task's, or a replay phase): caches, mid-task state
    prepare_rows(batches)             instead of before_task's data, outside a run (`prepare_task`)
    forward_kwargs(inputs, phase)     extra arguments of the student's forward (label masks are intersected)
    loss_terms(step)                  [(name, weight, term)], added to the loss, `term` logged under `name`
    before_optimizer_step()           the gradients of one optimizer step are complete (and all-reduced)
    save_checkpoint(folder)           a mid-task HF checkpoint is written (exact resume)
    after_task_fit(task)              the task's own fit is done (memory selection, stored logits)
    extra_phases(task)                more fits after it: [(name, dataset, epochs)] (the separate replay phase)
    after_task(task, state)           every fit of the task is done (Fisher), before evaluation and save
    state_dict() / load_state_dict()  what a finished task saves: tensors go to safetensors, the rest to JSON

`COMPONENTS` lists the classes; a class's `wanted(args)` says whether the arguments switch it on. Adding a strategy is
a class here, a line in `arguments.STRATEGY_PRESETS` and a test. A component that needs the frozen previous-task model
sets `needs_teacher`; the trainer snapshots one teacher for all of them (`ContinualTrainer.snapshot_teacher`).

What each does with the CRF (NER): `ewc` penalises the CRF's transitions like every other parameter; `lwf` distils
the per-word emission distributions (the CRF's input) over the previously seen tags; `er` replays CRF NLL on memory
sentences; `derpp` matches the stored emissions at word starts (the transitions learn from the replayed tags' NLL
only, its β term); `er_ace` gives the old tags absent from an incoming batch an emission of -1e4, so the CRF's
partition function of incoming sentences runs over the current tags, O and the tags not seen yet.
"""

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F
from datasets import concatenate_datasets
from torch.utils.data import DataLoader

from .checkpointing import load_step_records, save_step_records
from .losses import (
    attention_profiles,
    ewc_penalty,
    lwf_loss,
    modality_scores,
    modulation_coefficients,
    profile_distillation,
    reference_profile_distillation,
    softmax_attention_profiles,
    softmax_profile_distillation,
)
from .replay import ReplayMemory
from .teacher_cache import ROW_INDEX, TeacherProfiles

logger = logging.getLogger(__name__)


class Step:
    """One micro-batch as the components see it: the student's inputs and outputs, the rows of the fit's dataset
    they came from (when the fit tagged them), and the frozen teacher's outputs, run at most once and only if asked."""

    def __init__(self, trainer, model, inputs, outputs, rows, label_kwargs):
        self.trainer, self.model, self.inputs, self.outputs, self.rows = trainer, model, inputs, outputs, rows
        self.label_kwargs = label_kwargs  # the trainer's label mask (not a component's), for the teacher and replay
        self._teacher = None

    @property
    def is_ner(self) -> bool:
        return self.outputs.logits.dim() == 3

    def teacher_outputs(self, attentions: bool = False):
        """The teacher's outputs on this batch (no gradient); with `attentions`, its interaction maps too."""
        if self._teacher is None or (attentions and self._teacher.interaction_attentions is None):
            with torch.no_grad():
                inputs = {k: v for k, v in self.inputs.items() if k != "labels"}
                if self.is_ner:  # the teacher's Viterbi tags are not needed
                    inputs["return_tags"] = False
                self._teacher = self.trainer.teacher(**inputs, **self.label_kwargs,
                                                     output_interaction_attentions=attentions)  # fmt: skip
        return self._teacher


class ContinualComponent:
    """A mechanism of a continual strategy. Every hook is a no-op here; see the module docstring for the order."""

    name = "component"
    needs_teacher = False
    saves_tensors = False  # state_dict() holds tensors once a task is finished: its save must have them
    def __init__(self, trainer):
        self.trainer = trainer

    @classmethod
    def wanted(cls, args) -> bool:
        raise NotImplementedError

    @property
    def args(self):
        return self.trainer.args

    def before_task(self, task, state):
        pass

    def task_dataset(self, task, dataset):
        return dataset

    def before_fit(self, dataset, phase: str, checkpoint: str | None):
        return dataset

    def prepare_rows(self, batches: list):
        """`ContinualTrainer.prepare_task` outside a run: `batches` (collated, `row_index`-tagged) stand for the
        previous task's and this task's rows (benchmarks/step_cost.py)."""

    def forward_kwargs(self, inputs: dict, phase: str) -> dict:
        return {}

    def loss_terms(self, step: Step) -> list:
        return []

    def before_optimizer_step(self):
        pass

    def save_checkpoint(self, folder: str):
        pass

    def after_task_fit(self, task):
        pass

    def extra_phases(self, task) -> list:
        return []

    def after_task(self, task, state):
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass


# -------------------------------------------------------------------------------------------------- replay (§5)
class _MemoryComponent(ContinualComponent):
    """Holds a `ReplayMemory`: per label bucket, `memory_per_label` rows of each finished task (seeded, identical on
    every rank and after a resume), selected when the task's own fit ends."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.memory = ReplayMemory(self.args.memory_per_label, self.args.seed)

    def after_task_fit(self, task):
        self.memory.add_task(task.task_id, self.trainer.replay_buckets(task.train))

    def memory_dataset(self):
        """The memory's rows, task by task (the order stored logits follow)."""
        tasks = self.trainer.benchmark.tasks
        parts = [tasks[t].train.select(idx) for t, idx in sorted(self.memory.indices.items()) if idx]
        return concatenate_datasets(parts) if parts else None

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict):
        self.memory = ReplayMemory.from_state_dict(state["memory"])


class InterleavedReplay(_MemoryComponent):
    """`replay` / `mspt`: the memory is concatenated onto each new task's training set (`replay_mode="interleave"`),
    or trained alone for `replay_epochs` after each task from the second on (`"separate_phase"`, the released code,
    D20)."""

    name = "replay"

    @classmethod
    def wanted(cls, args) -> bool:
        return args.memory_per_label > 0 and args.replay_mode in ("interleave", "separate_phase")

    def task_dataset(self, task, dataset):
        if self.args.replay_mode == "interleave" and len(self.memory):
            return concatenate_datasets([dataset, self.memory_dataset()])
        return dataset

    def extra_phases(self, task) -> list:
        if self.args.replay_mode == "separate_phase" and task.task_id > 0:
            return [("replay", self.memory_dataset(), self.args.replay_epochs)]
        return []


class ExperienceReplay(_MemoryComponent):
    """`er`: experience replay in its standard form (Chaudhry et al. 2019): every step, a batch of `replay_batch_size`
    rows drawn from the memory is trained on beside the incoming batch, `replay_weight` × its loss (the model's own:
    cross-entropy, CRF NLL for NER). The memory is class-balanced (`memory_per_label` per label and task, filled at
    each task's end). The draw is seeded by (seed, task, global step, micro-batch, rank): the same after a resume, and
    different on every rank."""

    name = "er"
    stream = 0  # the draw's stream: DER++ draws its own batch

    @classmethod
    def wanted(cls, args) -> bool:
        return args.memory_per_label > 0 and args.replay_mode == "batch" and args.replay_weight > 0

    def __init__(self, trainer):
        super().__init__(trainer)
        self._rows, self._micro = None, (None, 0)

    def before_fit(self, dataset, phase, checkpoint):
        rows = self.replay_dataset()
        self._rows = None if rows is None else self.trainer.data_collator.undecoded(rows)
        return dataset

    def replay_dataset(self):
        """What the memory batch is drawn from: the memory; with ER-ACE's asymmetric loss, from the second task on,
        also the current task's rows that the memory will keep (selected now: the draw depends on the seed, the task
        and the buckets, not on the model), as a reservoir buffer holds the incoming rows during their own task
        (Caccia et al.'s and Mammoth's code). Without them nothing sets the new labels against the old ones on the
        new rows (the incoming loss masks the old labels) and each task is learned one task late."""
        memory = self.memory_dataset()
        trainer = self.trainer
        if not self.args.asymmetric_replay or not trainer.current_task or trainer.benchmark is None:
            return memory
        train = trainer.benchmark.tasks[trainer.current_task].train
        current = train.select(self.memory.select(trainer.current_task, trainer.replay_buckets(train)))
        return current if memory is None else concatenate_datasets([memory, current])

    def draw(self, step: Step, stream: int):
        """(memory row ids, collated batch on the device) for this micro-batch, or (None, None) with an empty memory."""
        if self._rows is None or not self.trainer.model.training:
            return None, None
        trainer = self.trainer
        global_step = trainer.state.global_step
        key, micro = self._micro
        micro = micro + 1 if key == (global_step, stream) else 0
        self._micro = ((global_step, stream), micro)
        rng = np.random.default_rng([self.args.seed, trainer.current_task, global_step, micro, stream,
                                     trainer.accelerator.process_index])  # fmt: skip
        size = min(self.args.replay_batch_size or self.args.per_device_train_batch_size, len(self._rows))
        ids = np.sort(rng.choice(len(self._rows), size=size, replace=False))
        batch = trainer.data_collator([self._rows[int(i)] for i in ids])
        return ids, {k: v.to(self.args.device) for k, v in batch.items()}

    def loss_terms(self, step: Step) -> list:
        ids, batch = self.draw(step, self.stream)
        if batch is None:
            return []
        # The unwrapped model: under DDP one backward of the summed loss reduces every parameter's gradient once.
        outputs = self.trainer.model(**batch, **step.label_kwargs)
        return [("replay_loss", self.args.replay_weight, outputs.loss)]


class DarkExperienceReplay(ExperienceReplay):
    """`derpp`: DER++ (Buzzega et al., NeurIPS 2020). The memory stores, with each row, the logits of the model at the
    end of the task the row was selected in; every step, `logit_replay_weight` (α) × the MSE between the current
    logits of a memory batch and the stored ones, plus β × the loss on another memory batch's labels (`replay_weight`,
    the `er` component). The MSE covers the labels seen when the row was stored (the others were never trained then)
    and, for NER, the word starts (the CRF's emissions). Departure: logits are recorded when a task ends, not at
    reservoir insertion during the task (the memory is filled at task boundaries here, identical on every rank)."""

    name = "derpp"
    stream = 1
    saves_tensors = True

    @classmethod
    def wanted(cls, args) -> bool:
        return args.memory_per_label > 0 and args.replay_mode == "batch" and args.logit_replay_weight > 0

    def __init__(self, trainer):
        super().__init__(trainer)
        self.logits = {}  # task id -> [rows, C] (RE) or [rows, max_text_length, C] (NER), raw (no label mask)
        self._stored = None  # (logits, seen labels) in the memory's row order, for the current fit

    def after_task_fit(self, task):
        super().after_task_fit(task)
        trainer = self.trainer
        rows = trainer.data_collator.undecoded(task.train.select(self.memory.indices[task.task_id]))
        loader = DataLoader(rows, batch_size=self.args.per_device_eval_batch_size, collate_fn=trainer.data_collator)
        model, chunks = trainer.model, []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in loader:
                batch.pop("labels")
                out = model(**{key: v.to(self.args.device) for key, v in batch.items()})
                logits = out.logits.float()
                if logits.dim() == 3:  # pad to the longest text, so every row of the task fits in one tensor
                    width = model.config.max_text_length
                    logits = F.pad(logits, (0, 0, 0, width - logits.shape[1]))
                chunks.append(logits)
        model.train(was_training)
        self.logits[task.task_id] = torch.cat(chunks)

    def replay_dataset(self):
        return self.memory_dataset()  # rows with stored logits only

    def before_fit(self, dataset, phase, checkpoint):
        """Also lines the stored logits up with the memory's rows, with [rows, C] the labels seen when each row was
        stored, once per fit (the memory does not change within one)."""
        dataset = super().before_fit(dataset, phase, checkpoint)
        tasks = [t for t, idx in sorted(self.memory.indices.items()) if idx]  # `memory_dataset`'s order
        self._stored = None
        if tasks:
            device = self.args.device
            logits = torch.cat([self.logits[t] for t in tasks]).to(device)
            seen = torch.cat([self.trainer.seen_mask(t).expand(len(self.memory.indices[t]), -1) for t in tasks])
            self._stored = (logits, seen.to(device))
        return dataset

    def loss_terms(self, step: Step) -> list:
        ids, batch = self.draw(step, self.stream)
        if batch is None:
            return []
        rows = torch.as_tensor(ids, device=self.args.device)
        stored, seen = self._stored[0][rows], self._stored[1][rows]
        labels = batch.pop("labels")
        logits = self.trainer.model(**batch).logits
        if logits.dim() == 3:
            stored = stored[:, : logits.shape[1]]
            valid = (labels != -100).unsqueeze(-1) & seen.unsqueeze(1)
        else:
            valid = seen
        valid = valid.expand_as(logits)
        term = (logits - stored).pow(2).masked_select(valid).mean()
        return [("logit_replay_loss", self.args.logit_replay_weight, term)]

    def state_dict(self) -> dict:
        return {**super().state_dict(), **{f"logits.{t}": v for t, v in self.logits.items()}}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.logits = {int(k.split(".")[1]): v for k, v in state.items() if k.startswith("logits.")}


class AsymmetricReplay(ContinualComponent):
    """`er_ace`: ER-ACE's asymmetric cross-entropy (Caccia et al., ICLR 2022). From the second task on, the loss of
    the incoming batch only sees the logits of the labels present in that batch and of the labels not seen yet (as
    the authors' code): the old labels are masked (-1e4), so incoming data cannot push old classes' logits down; the
    memory batch (the `er` component) trains on every seen label, and during a task it also holds the rows of that
    task the memory will keep (`ExperienceReplay.replay_dataset`), as the authors' reservoir buffer holds incoming
    rows: the memory batch is the only loss that sets the new labels against the old ones, so without the current
    task's rows there each task would be learned only once it is old."""

    name = "er_ace"

    @classmethod
    def wanted(cls, args) -> bool:
        return args.asymmetric_replay

    def __init__(self, trainer):
        super().__init__(trainer)
        self._old = None

    def before_task(self, task, state):
        k = task.task_id
        self._old = self.trainer.seen_mask(k - 1) if k > 0 else None
        if self._old is not None:
            self._old[0] = False  # None / O is never old

    def forward_kwargs(self, inputs: dict, phase: str) -> dict:
        """The incoming batch's label mask: every label but the old ones absent from the batch (task 2 on)."""
        if self._old is None or phase != "task" or not self.trainer.model.training:
            return {}
        labels = inputs["labels"]
        present = torch.zeros_like(self._old)
        present[labels[labels != -100].unique()] = True
        return {"label_mask": ~self._old | present}


# ------------------------------------------------------------------------------------------------ regularisers
class ElasticWeightConsolidation(ContinualComponent):
    """`ewc`: λ/2 · Σ F (θ - θ*)² (Kirkpatrick et al. 2017) with the diagonal empirical Fisher, the mean of squared
    per-example gradients on `ewc_fisher_samples` training rows of each finished task (a seeded draw, split over the
    ranks), summed over tasks; θ* the weights at the end of the last task. Per example: the square of a batch-mean
    gradient would be about 1/batch of it (benchmarks/RESULTS.md §5)."""

    name = "ewc"
    saves_tensors = True

    @classmethod
    def wanted(cls, args) -> bool:
        return args.ewc_lambda > 0

    def __init__(self, trainer):
        super().__init__(trainer)
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.anchors, self.fisher = None, None

    def prepare_rows(self, batches: list):
        self.consolidate([{k: v[i : i + 1] for k, v in b.items()} for b in batches for i in range(len(b[ROW_INDEX]))])

    def loss_terms(self, step: Step) -> list:
        if self.anchors is None:
            return []
        return [("ewc_penalty", self.args.ewc_lambda, ewc_penalty(self.params, self.anchors, self.fisher))]

    def after_task(self, task, state):
        dataset, args, trainer = task.train, self.args, self.trainer
        count = min(args.ewc_fisher_samples, len(dataset))
        order = np.random.default_rng([args.seed, len(dataset)]).permutation(len(dataset))[:count]
        rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
        rows = trainer.data_collator.undecoded(dataset.select(order[rank::world]))
        self.consolidate(DataLoader(rows, batch_size=1, collate_fn=trainer.data_collator), count)

    def consolidate(self, batches, count: int | None = None):
        """Add the Fisher diagonal of `batches` (collated single rows; `count` of them over all ranks) to the sum, and
        anchor the current weights. Public: `benchmarks/step_cost.py` sets the state of a later task with it."""
        model, args, accelerator = self.trainer.model, self.args, self.trainer.accelerator
        fisher = [torch.zeros_like(p) for p in self.params]
        was_training = model.training
        model.eval()
        seen = 0
        for batch in batches:
            model.zero_grad()
            inputs = {k: v.to(args.device) for k, v in batch.items() if k != ROW_INDEX}
            model(**inputs).loss.backward()
            seen += 1
            for f, p in zip(fisher, self.params):
                if p.grad is not None:
                    f.add_(p.grad.detach() ** 2)
        model.zero_grad()
        model.train(was_training)
        if accelerator.num_processes > 1:
            fisher = [accelerator.reduce(f, reduction="sum") for f in fisher]
        fisher = [f / max(count if count is not None else seen, 1) for f in fisher]
        if self.fisher is not None:
            fisher = [f + old for f, old in zip(fisher, self.fisher)]
        self.anchors, self.fisher = [p.detach().clone() for p in self.params], fisher

    def state_dict(self) -> dict:
        if self.anchors is None:
            return {}
        return {**{f"anchor.{i}": a for i, a in enumerate(self.anchors)},
                **{f"fisher.{i}": f for i, f in enumerate(self.fisher)}}  # fmt: skip

    def load_state_dict(self, state: dict):
        n = sum(1 for k in state if k.startswith("anchor."))
        if n:
            self.anchors = [state[f"anchor.{i}"] for i in range(n)]
            self.fisher = [state[f"fisher.{i}"] for i in range(n)]


class LearningWithoutForgetting(ContinualComponent):
    """`lwf`: LwF (Li & Hoiem 2017) in the class-incremental form: the KL between the frozen previous-task model's
    and the student's softened distributions (`lwf_temperature`) over the labels seen before the task, on the
    incoming batch, weighted `lwf_weight`; NER: per word start. Not during a replay phase."""

    name = "lwf"
    needs_teacher = True

    @classmethod
    def wanted(cls, args) -> bool:
        return args.lwf_weight > 0

    def __init__(self, trainer):
        super().__init__(trainer)
        self.old_labels = None

    def before_task(self, task, state):
        k = task.task_id
        self.old_labels = self.trainer.seen_mask(k - 1).nonzero().squeeze(1) if k > 0 else None

    def loss_terms(self, step: Step) -> list:
        if self.trainer.teacher is None or self.trainer.phase != "task":
            return []
        student, teacher = step.outputs.logits, step.teacher_outputs().logits
        valid = step.inputs["labels"] != -100 if step.is_ner else None
        if self.old_labels is not None:  # the labels the teacher was trained on
            student, teacher = student.index_select(-1, self.old_labels), teacher.index_select(-1, self.old_labels)
        return [("lwf_loss", self.args.lwf_weight, lwf_loss(student, teacher, self.args.lwf_temperature, valid))]


# ------------------------------------------------------------------------------------------ the MSPT mechanisms
class AttentionDistillation(ContinualComponent):
    """`mspt` (§4): asymmetric distillation of the interaction layers' pooled attention from the frozen model of the
    previous task, weight γ = `distillation_weight`, in the task phase. `distillation_impl`:

    - `"attention"` (default): on what attention does, `losses.softmax_attention_profiles` (relative attention
      R = p / max p per row, pooled over queries by default: the attention each key receives) and
      `losses.softmax_profile_distillation` (the share of the teacher's attention the student lost). Exactly invariant
      to a constant added to a row or to every bias; adding attention below a row's top key is free. Vision rows of
      samples without an image (`image_mask` 0) do not count.
    - `"probability"`: the same on post-softmax probabilities (height pooling only; not asymmetric: mass added to
      one key is taken from the others).
    - `"asymmetric"` / `"pod"`: the pooled pre-softmax scores (the previous default; a bias shift zeroes them),
      teacher-normalised / both normalised. `"reference"`: the released code's loss (zero gradient, D2).

    With `cache_teacher_attention` the teacher's profiles of every row of the fit are computed once (`teacher_cache`)
    instead of a teacher forward per step; the result is the same."""

    name = "distillation"
    needs_teacher = True
    SOFTMAX = {"attention": "relative", "probability": "probability"}

    @classmethod
    def wanted(cls, args) -> bool:
        return args.distillation_weight > 0

    def __init__(self, trainer):
        super().__init__(trainer)
        self.profiles = None  # TeacherProfiles of the rows of the current fit, or None

    def active(self, phase: str) -> bool:
        return self.trainer.teacher is not None and phase == "task"

    def pooled(self, maps) -> tuple:
        """(text, vision) profiles [B, layers, P, H, L] of `MSPTInteractionAttentions` for this `distillation_impl`."""
        pooling, kind = self.args.distillation_pooling, self.SOFTMAX.get(self.args.distillation_impl)
        if kind is None:
            return attention_profiles(maps.text, pooling), attention_profiles(maps.vision, pooling)
        return (softmax_attention_profiles(maps.text, maps.text_mask, pooling, kind),
                softmax_attention_profiles(maps.vision, maps.vision_mask, pooling, kind))  # fmt: skip

    def before_fit(self, dataset, phase, checkpoint):
        self.profiles = None
        if self.active(phase) and self.args.cache_teacher_attention:
            dataset = dataset.add_column(ROW_INDEX, np.arange(len(dataset)))
            loader = DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, shuffle=False,
                                collate_fn=self.trainer.data_collator, generator=torch.Generator())  # fmt: skip
            self.cache(loader)
            logger.info("Teacher attention profiles of %d rows cached (%.1f MiB)", len(dataset),
                        self.profiles.nbytes / 2**20)  # fmt: skip
        return dataset

    def cache(self, batches):
        """Cache the teacher's profiles of `batches` (collated rows in `row_index` order). Public:
        `benchmarks/step_cost.py` prepares a later task's step with it."""
        self.profiles = TeacherProfiles.from_batches(self.trainer.teacher, batches, self.pooled, self.args.device)

    def prepare_rows(self, batches: list):
        if self.args.cache_teacher_attention:
            self.cache(batches)

    def forward_kwargs(self, inputs: dict, phase: str) -> dict:
        return {"output_interaction_attentions": True} if self.active(phase) else {}

    def loss_terms(self, step: Step) -> list:
        if not self.active(self.trainer.phase):
            return []
        student = self.pooled(step.outputs.interaction_attentions)
        if self.profiles is not None and step.rows is not None:
            rounding = "entry" if self.args.distillation_impl in self.SOFTMAX else "norm"
            target = self.profiles.targets(step.rows, *student, rounding=rounding)
        else:
            target = self.pooled(step.teacher_outputs(attentions=True).interaction_attentions)
        image_mask = step.inputs.get("image_mask")
        masks = (None, None if image_mask is None else image_mask.bool())
        term = sum(self.distillation(a, b, m) for a, b, m in zip(student, target, masks))
        return [("distillation_loss", self.args.distillation_weight, term)]

    def distillation(self, student_profiles, teacher_profiles, sample_mask=None):
        impl = self.args.distillation_impl
        if impl in self.SOFTMAX:
            return softmax_profile_distillation(student_profiles, teacher_profiles, sample_mask)
        if impl == "reference":
            return reference_profile_distillation(student_profiles, teacher_profiles)
        return profile_distillation(student_profiles, teacher_profiles, "teacher" if impl == "asymmetric" else "separate")


class GradientModulation(ContinualComponent):
    """`mspt` (§3): OGM-GE. The modality scores of each micro-batch are summed over the optimizer step; once its
    gradients are complete (all-reduced under DDP), the dominant stream (its parameters and attention biases,
    `MSPTPreTrainedModel.parameter_roles`) is slowed by k = 1 - tanh(α·ρ). `modulation_target`:

    - `"update"` (default): the stream's step is scaled by k: its optimizer groups' learning rates are multiplied by
      k for this step only (restored right after it). This is what OGM-GE does under SGD, and it acts under AdamW.
    - `"gradient"`: its gradients are multiplied by k (the reference, §3.1). Adam's update m/√v does not change when
      every gradient of a parameter is scaled by the same constant, so under AdamW a constant k is a no-op and a
      per-step k acts only through its variation from step to step (tests/test_strategies.py measures both).

    Paper schedule: per step in the first task, then the mean coefficient of the previous tasks; reference schedule:
    per step in every task. Every step's (ρ_v, k_text, k_vision, applied k_text, applied k_vision) is recorded (the
    paper's Fig. 3), saved with each mid-task checkpoint and, per task, in the state. OGM-GE's noise
    (`modulation_noise`) goes on the gradients in both targets."""

    name = "modulation"

    @classmethod
    def wanted(cls, args) -> bool:
        return bool(args.gradient_modulation)

    def __init__(self, trainer):
        super().__init__(trainer)
        self.params = trainer.stream_parameters()
        self.scores, self.fixed, self.records = None, None, []
        self._restore = []  # (param group, learning rate) to put back after the optimizer step
        self._hooked = None  # the optimizer whose step restores them

    def before_task(self, task, state):
        """Paper schedule (§3.2): from task 2 on, the mean of the previous tasks' mean coefficients."""
        self.fixed = None
        if self.args.modulation_schedule == "paper" and task.task_id > 0:
            means = [(h["k_text_mean"], h["k_vision_mean"]) for h in state.modulation if "k_text_mean" in h]
            if means:
                k_text, k_vision = np.mean(means, axis=0)
                device = self.args.device
                self.fixed = (torch.tensor(k_text, device=device), torch.tensor(k_vision, device=device))

    def before_fit(self, dataset, phase, checkpoint):
        if checkpoint is not None or phase == "task":  # a replay phase continues the task's records
            self.records = load_step_records(checkpoint, self.args.device)
        self.scores = None
        return dataset

    def loss_terms(self, step: Step) -> list:
        if step.model.training:
            out, inputs = step.outputs, step.inputs
            scores = modality_scores(out.text_logits, out.vision_logits, inputs["labels"], inputs.get("image_mask"))
            self.scores = scores if self.scores is None else self.scores + scores
        return []

    def before_optimizer_step(self):
        if self.scores is None:
            return
        scores, self.scores = self.scores, None
        trainer = self.trainer
        if trainer.accelerator.num_processes > 1:  # identical coefficients on every rank
            scores = trainer.accelerator.reduce(scores, reduction="sum")
        rho, k_text, k_vision = modulation_coefficients(scores[0], scores[1], self.args.modulation_alpha)
        applied = (k_text, k_vision) if self.fixed is None else self.fixed
        self.records.append(torch.stack([rho, k_text, k_vision, *applied]))
        for stream, k in zip(("text", "vision"), applied):
            grads = [p.grad for p in self.params.get(stream, []) if p.grad is not None]
            if not grads:
                continue
            if self.args.modulation_target == "gradient":
                torch._foreach_mul_(grads, k)
            else:
                self._scale_step(stream, k)
            if self.args.modulation_noise:  # OGM-GE noise, seeded per step so every rank and every resume agree
                g = torch.Generator(grads[0].device).manual_seed(self.args.seed * 100_003 + trainer.state.global_step)
                for grad in grads:
                    grad.add_(torch.randn(grad.shape, generator=g, device=grad.device) * (grad.std() + 1e-8))
        for name, value in zip(("rho_vision", "k_text", "k_vision"), (rho, *applied)):
            trainer.record_metric(f"modulation/{name}", value)

    def _scale_step(self, stream: str, k: torch.Tensor):
        """Multiply the learning rate of `stream`'s optimizer groups by k for the coming step only."""
        optimizer = getattr(self.trainer.optimizer, "optimizer", self.trainer.optimizer)  # accelerate wraps it
        if self._hooked is not optimizer:
            optimizer.register_step_post_hook(lambda *_: self._restore_learning_rates())
            self._hooked = optimizer
        factor = float(k)  # the learning rate is a Python float: one host sync per step
        for group in optimizer.param_groups:
            if group.get("stream") == stream:
                self._restore.append((group, group["lr"]))
                group["lr"] = group["lr"] * factor

    def _restore_learning_rates(self):
        for group, lr in self._restore:
            group["lr"] = lr
        self._restore = []

    def save_checkpoint(self, folder: str):
        if self.records and self.trainer.is_world_process_zero():
            save_step_records(folder, self.records)

    def after_task(self, task, state):
        state.modulation[-1] = self.history()

    def history(self) -> dict:
        if not self.records:
            return {}
        records = torch.stack(self.records).cpu().numpy()  # one host sync per task
        rho, k_text, k_vision, applied_text, applied_vision = records.T.tolist()
        return {"rho_vision": rho, "k_text": k_text, "k_vision": k_vision, "k_text_applied": applied_text,
                "k_vision_applied": applied_vision, "k_text_mean": float(np.mean(k_text)),
                "k_vision_mean": float(np.mean(k_vision))}  # fmt: skip


# Composition order: data (replay), then the loss terms in this order, the optimizer-step hooks in this order.
COMPONENTS = (InterleavedReplay, ExperienceReplay, DarkExperienceReplay, AsymmetricReplay, ElasticWeightConsolidation,
              LearningWithoutForgetting, AttentionDistillation, GradientModulation)  # fmt: skip


def build_components(trainer) -> dict:
    """name -> component, for the arguments' switches, in `COMPONENTS` order."""
    return {cls.name: cls(trainer) for cls in COMPONENTS if cls.wanted(trainer.args)}


def copy_teacher(model):
    """The frozen model of the task just finished: eval mode, no gradients (never the train-mode copy, D8)."""
    return copy.deepcopy(model).eval().requires_grad_(False)
