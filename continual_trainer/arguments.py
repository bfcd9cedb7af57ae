"""ContinualTrainingArguments: TrainingArguments plus the continual-learning switches, and the strategy presets."""

import os
from dataclasses import dataclass, field

import torch

from transformers import TrainingArguments

# What each `strategy` switches on (SPEC §2). A switch left at None takes the preset's value; a switch set explicitly
# wins over the preset, so ablations are "a preset minus one switch". A preset's `distillation_weight` > 0 means "on":
# its value then comes from TASK_HYPERPARAMETERS for the `task_type` (one table for scripts, configs and benchmarks).
_OFF = dict(gradient_modulation=False, distillation_weight=0.0, memory_per_label=0, replay_mode="interleave",
            replay_weight=1.0, logit_replay_weight=0.0, asymmetric_replay=False, ewc_lambda=0.0, lwf_weight=0.0)
STRATEGY_PRESETS = {
    "finetune": dict(_OFF),
    "replay": dict(_OFF, memory_per_label=6),
    "er": dict(_OFF, memory_per_label=6, replay_mode="batch"),
    # DER++'s α = 0.1, β = 0.5: Buzzega et al.'s choice for their smallest buffer on Seq-CIFAR-10 (their Table 11).
    "derpp": dict(_OFF, memory_per_label=6, replay_mode="batch", replay_weight=0.5, logit_replay_weight=0.1),
    "er_ace": dict(_OFF, memory_per_label=6, replay_mode="batch", asymmetric_replay=True),
    "ewc": dict(_OFF, ewc_lambda=100.0),
    "lwf": dict(_OFF, lwf_weight=1.0),
    "mspt": dict(_OFF, gradient_modulation=True, distillation_weight=1.0, memory_per_label=6),
    "joint": dict(_OFF),
}
# The paper's per-benchmark values (reference notes §7) of the MSPT mechanisms: α of the modulation and γ of the
# attention distillation. They apply only where the preset (or an explicit switch) turns the mechanism on.
TASK_HYPERPARAMETERS = {
    "re": dict(modulation_alpha=0.1, distillation_weight=1.0),  # IMRE
    "ner": dict(modulation_alpha=0.3, distillation_weight=0.1),  # IMNER
}
_CHOICES = {
    "strategy": tuple(STRATEGY_PRESETS),
    "task_type": (None, "re", "ner"),
    "modulation_schedule": ("paper", "reference"),
    "distillation_pooling": (None, "width", "height", "both"),
    "distillation_impl": ("attention", "probability", "asymmetric", "pod", "reference"),
    "modulation_target": ("update", "gradient"),
    "replay_mode": ("interleave", "separate_phase", "batch"),
}


@dataclass
class ContinualTrainingArguments(TrainingArguments):
    strategy: str = field(
        default="mspt",
        metadata={"help": "Preset of the switches below: finetune | replay | er | derpp | er_ace | ewc | lwf | mspt | "
                          "joint (SPEC §2). `joint` trains once on the union of all tasks (upper bound)."},
    )  # fmt: skip
    task_type: str | None = field(
        default=None,
        metadata={"help": "re | ner: picks the paper's α and γ for the mechanisms the preset turns on "
                          "(TASK_HYPERPARAMETERS; unset: IMRE's). The example scripts set it; training on a benchmark "
                          "of the other type is refused."},
    )  # fmt: skip
    gradient_modulation: bool | None = field(
        default=None, metadata={"help": "Balance text/vision learning speed by scaling the dominant stream's "
                                        "gradients (OGM-GE, reference notes §3). Default: from `strategy`."}
    )  # fmt: skip
    modulation_alpha: float | None = field(
        default=None, metadata={"help": "α in k = 1 - tanh(α·ρ) (§3.1). Default: the task type's (0.1 IMRE, 0.3 IMNER)."}
    )
    modulation_schedule: str = field(
        default="paper",
        metadata={"help": "`paper`: per-step coefficients in the first task, then the mean coefficient of the previous "
                          "tasks (§3.2). `reference`: per-step coefficients in every task, as the released code (D5)."},
    )  # fmt: skip
    modulation_target: str = field(
        default="update",
        metadata={"help": "`update`: the dominant stream's step is scaled by k (its learning rate, for that step): "
                          "acts under AdamW. `gradient`: its gradients are scaled by k (the reference), which AdamW "
                          "undoes for a constant k (§3.1)."},
    )  # fmt: skip
    modulation_noise: bool = field(
        default=False,
        metadata={"help": "Add OGM-GE Gaussian noise N(0, std(g)^2) to modulated gradients (never to parameters "
                          "without a gradient, D7). Off by default: under AdamW it becomes random updates (§3.1)."},
    )  # fmt: skip
    distillation_weight: float | None = field(
        default=None, metadata={"help": "γ, weight of attention distillation from the previous task's frozen model "
                                        "(§4). 0 turns it off. Default: off unless `strategy` turns it on, then the "
                                        "task type's γ (1 for IMRE, 0.1 for IMNER)."}
    )  # fmt: skip
    distillation_pooling: str | None = field(
        default=None,
        metadata={"help": "Pool the attention maps over queries (`height`: the attention each key receives), over keys "
                          "(`width`) or `both`. Default: `height` for the `attention` / `probability` distillation, "
                          "`width` for the pre-softmax ones."},
    )  # fmt: skip
    distillation_impl: str = field(
        default="attention",
        metadata={"help": "`attention`: on relative attention R = p / max p per row (post-softmax: invariant to a "
                          "constant added to a row or to every bias); attention the student lost costs, attention "
                          "added below a row's top is free. `probability`: on post-softmax probabilities. "
                          "`asymmetric`: ‖ReLU(teacher - student)‖ of the pooled pre-softmax scores scaled by the "
                          "teacher's norm (the previous default; a bias shift zeroes it). `pod`: pre-softmax, both "
                          "L2-normalised (§4.4). `reference`: the released code's loss, whose gradient is zero (D2); "
                          "for ablations."},
    )  # fmt: skip
    memory_per_label: int | None = field(
        default=None, metadata={"help": "Replay examples kept per label bucket and task (§5; 6 in the paper). "
                                        "0 turns replay off. Default: from `strategy`."}
    )  # fmt: skip
    replay_mode: str | None = field(
        default=None,
        metadata={"help": "`interleave`: memory mixed into each new task's training set. `separate_phase`: extra "
                          "epochs on the memory alone after each task from the second on (the released code, D20). "
                          "`batch`: a memory batch drawn every step beside the incoming one (er, derpp, er_ace). "
                          "Default: from `strategy`."},
    )  # fmt: skip
    replay_batch_size: int | None = field(
        default=None, metadata={"help": "Rows of the memory batch of `replay_mode='batch'`. Default: "
                                        "per_device_train_batch_size."}
    )  # fmt: skip
    replay_weight: float | None = field(
        default=None, metadata={"help": "Weight of the memory batch's loss on its labels (`replay_mode='batch'`; "
                                        "DER++'s β). Default: from `strategy` (1; derpp 0.5)."}
    )  # fmt: skip
    logit_replay_weight: float | None = field(
        default=None, metadata={"help": "DER++'s α: weight of the MSE between a memory batch's logits and those stored "
                                        "with it. 0 turns it off. Default: from `strategy` (derpp 0.1)."}
    )  # fmt: skip
    asymmetric_replay: bool | None = field(
        default=None, metadata={"help": "ER-ACE: the incoming batch's loss does not see the old labels absent from it. "
                                        "Default: from `strategy` (er_ace)."}
    )  # fmt: skip
    replay_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of the separate replay phase. Default: `num_train_epochs`."}
    )
    cache_teacher_attention: bool = field(
        default=True, metadata={"help": "Pool the frozen teacher's attention maps once per task for every training row "
                                        "instead of running the teacher at every step; the result is the same (the "
                                        "teacher is in eval mode). Costs layers x heads x length floats per row and "
                                        "stream (about 18 KiB a row at BERT-base + CLIP-B/32 shapes)."}
    )  # fmt: skip
    ewc_lambda: float | None = field(
        default=None, metadata={"help": "EWC penalty weight (λ/2 Σ F (θ-θ*)^2). 0 turns it off. Default: from `strategy`."}
    )
    ewc_fisher_samples: int = field(
        default=256, metadata={"help": "Training examples whose squared gradients estimate the diagonal Fisher "
                                       "after each task (one backward each)."}
    )  # fmt: skip
    lwf_weight: float | None = field(
        default=None, metadata={"help": "Weight of LwF logit distillation from the previous task's model. "
                                        "0 turns it off. Default: from `strategy`."}
    )  # fmt: skip
    lwf_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the LwF loss."})
    mask_unseen_labels: bool = field(
        default=False, metadata={"help": "Only labels seen so far can be predicted (logits of the others masked)."}
    )
    key_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the shared keys. Default: learning_rate / 10 (§7)."}
    )
    bias_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the modality attention biases. Default: learning_rate (§7)."}
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the classifier and CRF. Default: learning_rate."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run over a continual run in output_dir: its task-XX folders are deleted (only "
                          "those this package wrote). Without it, such an output_dir is refused; "
                          "--resume_from_checkpoint true continues it instead."},
    )  # fmt: skip
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator turns raw benchmark rows into model inputs."}
    )

    def __post_init__(self):
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # Several processes and no GPU (`accelerate launch --multi_gpu` / torchrun on CPUs): without use_cpu the
            # process group is created but the Trainer does not run DDP (gloo); with it, it does.
            self.use_cpu = True
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn once per data loader
        super().__post_init__()
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices and not (name == "replay_mode" and self.replay_mode is None):
                raise ValueError(f"`{name}` must be one of {choices}, got {getattr(self, name)!r}.")
        task_values = TASK_HYPERPARAMETERS[self.task_type or "re"]
        for name, value in STRATEGY_PRESETS[self.strategy].items():
            if getattr(self, name) is None:
                setattr(self, name, task_values[name] if value and name in task_values else value)
        if self.modulation_alpha is None:
            self.modulation_alpha = task_values["modulation_alpha"]
        for name in ("modulation_alpha", "distillation_weight", "ewc_lambda", "lwf_weight", "memory_per_label",
                     "ewc_fisher_samples"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.lwf_temperature <= 0:
            raise ValueError(f"`lwf_temperature` must be > 0, got {self.lwf_temperature}.")
        if self.replay_mode in ("separate_phase", "batch") and self.memory_per_label == 0:
            raise ValueError(f"`replay_mode={self.replay_mode!r}` needs `memory_per_label` > 0.")
        for name in ("replay_weight", "logit_replay_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        batch_only = [n for n in ("logit_replay_weight", "asymmetric_replay") if getattr(self, n)]
        if batch_only and self.replay_mode != "batch":
            raise ValueError(f"{batch_only} act on the memory batch of `replay_mode='batch'`, but replay_mode is "
                             f"{self.replay_mode!r}: set --replay_mode batch (or --strategy derpp / er_ace).")
        if self.asymmetric_replay and not self.replay_weight:
            raise ValueError("`asymmetric_replay` (ER-ACE) trains the old labels through the memory batch's loss: "
                             "`replay_weight` must be > 0.")
        if self.replay_batch_size is not None and self.replay_batch_size < 1:
            raise ValueError(f"`replay_batch_size` must be >= 1, got {self.replay_batch_size}.")
        self.key_learning_rate = self.learning_rate / 10 if self.key_learning_rate is None else self.key_learning_rate
        self.bias_learning_rate = self.bias_learning_rate or self.learning_rate
        self.head_learning_rate = self.head_learning_rate or self.learning_rate
        if self.replay_epochs is None:
            self.replay_epochs = self.num_train_epochs
        if self.distillation_pooling is None:
            self.distillation_pooling = "height" if self.distillation_impl in ("attention", "probability") else "width"
        if self.distillation_impl == "probability" and self.distillation_pooling != "height":
            raise ValueError("distillation_impl='probability' pools over queries only (width sums of probabilities "
                             "are 1): set --distillation_pooling height.")
