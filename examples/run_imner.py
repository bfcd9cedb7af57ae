#!/usr/bin/env python
"""Continual multimodal named-entity recognition with MSPT, under accelerate.

    accelerate launch examples/run_imner.py                      # offline demo: tiny model, synthetic benchmark
    accelerate launch examples/run_imner.py examples/configs/imner_plom_paper.json   # the paper setting

Arguments: ModelArguments and DataArguments (continual_trainer/experiment.py) and ContinualTrainingArguments
(continual_trainer/arguments.py), on the command line or in a .json/.yaml file given first (arguments after it
override the file); `--help` lists them with the defaults below. The paper's α and γ for this benchmark type apply only
to the mechanisms the `--strategy` preset turns on (continual_trainer.arguments.TASK_HYPERPARAMETERS). The run:
benchmark -> processor/model -> ContinualTrainer.train_tasks -> outputs (`continual_trainer.experiment.run`).
Writes to --output_dir: the final model and processor, task-XX/ checkpoints, results.json, all_results.json,
accuracy_matrix.png, modality_balance.png and a model card. `--push_to_hub true` (with --hub_model_id, --hub_revision,
--hub_private_repo, --hub_task_layout subfolders|branches) checks the token and repo id before training and pushes
the run once it is finished.
"""

from continual_trainer.experiment import DEMO_DEFAULTS, run

DEFAULTS = {
    **DEMO_DEFAULTS,
    "output_dir": "outputs/imner",
    "benchmark_config": "ner",
    "max_text_length": 128,
}


def main():
    run("ner", DEFAULTS)


if __name__ == "__main__":
    main()
