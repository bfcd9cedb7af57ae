"""What the example scripts really run with: presets untouched by script defaults, `--help` showing the defaults in
force, a config file combined with command-line overrides, and a quiet CPU run. No training here."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from continual_trainer import STRATEGY_PRESETS, ContinualTrainingArguments
from continual_trainer.experiment import parse_arguments

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"re": "run_imre.py", "ner": "run_imner.py"}
# The paper's values (IMRE α 0.1, γ 1; IMNER α 0.3, γ 0.1), written here independently of the package's table.
PAPER = {"re": {"modulation_alpha": 0.1, "distillation_weight": 1.0},
         "ner": {"modulation_alpha": 0.3, "distillation_weight": 0.1}}  # fmt: skip
SWITCHES = ("gradient_modulation", "distillation_weight", "memory_per_label", "ewc_lambda", "lwf_weight")


def script_defaults(task):
    spec = importlib.util.spec_from_file_location(f"example_{task}", ROOT / "examples" / SCRIPTS[task])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {**module.DEFAULTS, "task_type": task}


@pytest.mark.parametrize("task", ["re", "ner"])
@pytest.mark.parametrize("strategy", sorted(STRATEGY_PRESETS))
def test_script_defaults_do_not_change_a_preset(task, strategy, tmp_path):
    _, _, args = parse_arguments(script_defaults(task), ["--strategy", strategy, "--output_dir", str(tmp_path)])
    preset = STRATEGY_PRESETS[strategy]
    for name in SWITCHES:
        expected = PAPER[task].get(name, preset[name]) if preset[name] else preset[name]
        assert getattr(args, name) == expected, (strategy, name)
    if strategy != "mspt":  # no baseline distils attention or modulates
        assert args.distillation_weight == 0 and not args.gradient_modulation
    assert args.modulation_alpha == PAPER[task]["modulation_alpha"]
    # The Python API with the same preset and task type agrees with the script.
    direct = ContinualTrainingArguments(output_dir=str(tmp_path), strategy=strategy, task_type=task)
    assert {n: getattr(direct, n) for n in SWITCHES} == {n: getattr(args, n) for n in SWITCHES}


@pytest.mark.parametrize("config, task", [("imre_sep10_paper.json", "re"), ("imner_plom_paper.json", "ner")])
def test_paper_config_then_command_line_overrides(config, task, tmp_path):
    path = str(ROOT / "examples" / "configs" / config)
    _, data, args = parse_arguments(script_defaults(task), [path])
    assert data.benchmark == ("imre" if task == "re" else "imner") and args.seed == 1234
    assert args.distillation_weight == PAPER[task]["distillation_weight"] and args.gradient_modulation
    assert args.num_train_epochs == 10 and args.per_device_train_batch_size == 2  # the paper's, not the demo's
    _, _, args = parse_arguments(script_defaults(task), [path, "--seed", "1", "--strategy", "replay"])
    assert args.seed == 1 and args.strategy == "replay" and args.num_train_epochs == 10
    assert args.distillation_weight == 0 and not args.gradient_modulation and args.memory_per_label == 6


def test_config_file_values_sit_between_script_defaults_and_command_line(tmp_path):
    config = tmp_path / "my.json"
    config.write_text(json.dumps({"seed": 5, "num_train_epochs": 2, "output_dir": str(tmp_path / "out")}))
    _, _, args = parse_arguments(script_defaults("re"), [str(config), "--seed", "1"])
    assert (args.seed, args.num_train_epochs, args.learning_rate) == (1, 2, 3e-3)  # command line, file, script
    config.write_text(json.dumps({"num_train_epoch": 2}))
    with pytest.raises(ValueError, match="unknown argument.*num_train_epoch"):
        parse_arguments(script_defaults("re"), [str(config)])


def test_help_shows_the_defaults_the_script_runs_with():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "run_imner.py"), "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join(out.stdout.split()).split(" options: ", 1)[1]  # the option list, not the usage line
    for option, default in (("--num_train_epochs", "20"), ("--learning_rate", "0.003"), ("--max_text_length", "128"),
                            ("--output_dir", "outputs/imner"), ("--task_type", "ner")):  # fmt: skip
        alias = f"{option.replace('_', '-')} {option[2:].upper()}"  # the second spelling, then the help text
        section = text.split(alias, 1)[1].split(" --", 1)[0]
        assert f"(default: {default})" in section, (option, section)


def test_a_benchmark_of_the_other_type_is_refused(synthetic_benchmarks, tmp_path):
    from conftest import tiny_args, tiny_setup

    from continual_trainer import ContinualTrainer

    model, processor = tiny_setup(synthetic_benchmarks["re"])
    trainer = ContinualTrainer(model=model, args=tiny_args(tmp_path, "mspt", task_type="ner"), processing_class=processor)
    with pytest.raises(ValueError, match="task_type='ner'.*set task_type='re'"):
        trainer.train_tasks(synthetic_benchmarks["re"])


def test_no_pinned_memory_without_an_accelerator(tmp_path):
    import torch

    args = ContinualTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.dataloader_pin_memory is False
    if not torch.accelerator.is_available():
        assert ContinualTrainingArguments(output_dir=str(tmp_path)).dataloader_pin_memory is False
