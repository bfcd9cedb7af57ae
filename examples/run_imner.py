#!/usr/bin/env python
"""Continual multimodal named-entity recognition with MSPT, under accelerate.

    accelerate launch examples/run_imner.py                      # offline demo: tiny model, synthetic benchmark
    accelerate launch examples/run_imner.py examples/configs/imner_plom_paper.json   # the paper setting

Arguments: ModelArguments and DataArguments (continual_trainer/experiment.py) and ContinualTrainingArguments
(continual_trainer/arguments.py), on the command line or in one .json/.yaml file; `--help` lists them. The run:
benchmark -> processor/model -> ContinualTrainer.train_tasks -> outputs (`continual_trainer.experiment.run`).
Writes to --output_dir: the final model and processor, task-XX/ checkpoints, results.json, accuracy_matrix.png,
modality_balance.png and a model card.
"""

from continual_trainer.experiment import DEMO_DEFAULTS, run

DEFAULTS = {
    **DEMO_DEFAULTS,
    "output_dir": "outputs/imner",
    "benchmark_config": "ner",
    "max_text_length": 128,
    "modulation_alpha": 0.3,  # IMNER settings of the paper (analysis §7)
    "distillation_weight": 0.1,
}


def main():
    run("ner", DEFAULTS)


if __name__ == "__main__":
    main()
