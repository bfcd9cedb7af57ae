#!/usr/bin/env python
"""Continual multimodal relation extraction with MSPT, under accelerate.

    accelerate launch examples/run_imre.py                      # offline demo: tiny model, synthetic benchmark
    accelerate launch examples/run_imre.py examples/configs/imre_sep10_paper.json   # the paper setting

Arguments: ModelArguments and DataArguments (continual_trainer/experiment.py) and ContinualTrainingArguments
(continual_trainer/arguments.py), on the command line or in one .json/.yaml file. Writes to --output_dir: the final
model and processor, task-XX/ checkpoints, results.json, accuracy_matrix.png, modality_balance.png and a model card.
"""

import logging

from transformers import set_seed

from continual_trainer import ContinualTrainer
from continual_trainer.experiment import (
    build_model,
    finish_run,
    format_matrix,
    load_data,
    parse_arguments,
    setup_logging,
    wants_resume,
)

logger = logging.getLogger(__name__)

DEFAULTS = {
    "output_dir": "outputs/imre",
    "benchmark": "synthetic",
    "benchmark_config": "re",
    "strategy": "mspt",
    "modulation_alpha": 0.1,  # IMRE settings of the paper (analysis §7)
    "distillation_weight": 1.0,
    "num_train_epochs": 20,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 3e-3,
    "warmup_steps": 0.1,
    "logging_steps": 25,
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "ddp_find_unused_parameters": False,
    "report_to": "none",
    "seed": 0,
}


def main():
    model_args, data_args, training_args = parse_arguments(DEFAULTS)
    setup_logging(training_args)
    set_seed(training_args.seed)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # one push at the end, finish_run

    benchmark = load_data(data_args, "re", training_args.seed)
    model, processor = build_model(model_args, benchmark, model_args.max_text_length or 80)
    trainer = ContinualTrainer(model=model, args=training_args, processing_class=processor)
    result = trainer.train_tasks(benchmark, resume_from_checkpoint=wants_resume(training_args))

    logger.info("Accuracy matrix (micro-F1 without None, task slices):\n%s", format_matrix(result.matrix))
    logger.info("Summary: %s", {k: round(v, 4) for k, v in result.summary.items()})
    finish_run(trainer, result, benchmark, model_args, data_args, push_to_hub=push_to_hub)


if __name__ == "__main__":
    main()
