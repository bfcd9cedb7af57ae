"""Continual training of MSPT models: the Trainer subclass, its arguments, losses, replay memory, metrics, state."""

from .arguments import STRATEGY_PRESETS, ContinualTrainingArguments
from .collator import MSPTDataCollator
from .losses import (
    attention_distillation,
    ewc_penalty,
    lwf_loss,
    modality_scores,
    modulation_coefficients,
    reference_attention_distillation,
)
from .metrics import METRIC_DEFINITIONS, continual_summary, entity_scores, load_metric, metric_path, relation_scores
from .replay import ReplayMemory
from .hub import HubPushError, TaskPushCallback, push_run_to_hub, push_task_to_hub, resolve_hub_repo_id, run_files
from .reporting import plot_accuracy_matrix, plot_modality_balance, write_all_results, write_model_card, write_results
from .state import ContinualState
from .strategies import (
    COMPONENTS,
    AsymmetricReplay,
    AttentionDistillation,
    ContinualComponent,
    DarkExperienceReplay,
    ElasticWeightConsolidation,
    ExperienceReplay,
    GradientModulation,
    InterleavedReplay,
    LearningWithoutForgetting,
)
from .trainer import ContinualResult, ContinualTrainer

__all__ = [
    "ContinualTrainer",
    "ContinualTrainingArguments",
    "ContinualResult",
    "ContinualState",
    "MSPTDataCollator",
    "ReplayMemory",
    "STRATEGY_PRESETS",
    "METRIC_DEFINITIONS",
    "attention_distillation",
    "reference_attention_distillation",
    "modality_scores",
    "modulation_coefficients",
    "lwf_loss",
    "ewc_penalty",
    "relation_scores",
    "entity_scores",
    "continual_summary",
    "metric_path",
    "load_metric",
    "ContinualComponent",
    "COMPONENTS",
    "InterleavedReplay",
    "ExperienceReplay",
    "DarkExperienceReplay",
    "AsymmetricReplay",
    "ElasticWeightConsolidation",
    "LearningWithoutForgetting",
    "AttentionDistillation",
    "GradientModulation",
    "write_results",
    "write_all_results",
    "plot_accuracy_matrix",
    "plot_modality_balance",
    "write_model_card",
    "push_run_to_hub",
    "push_task_to_hub",
    "TaskPushCallback",
    "resolve_hub_repo_id",
    "HubPushError",
    "run_files",
]
