"""What a finished continual run leaves behind for people: `results.json` and `all_results.json`, the accuracy-matrix
heatmap, the modality-balance curve (the paper's Fig. 3) and a model card with a `model-index`. The push to the Hub is
in `hub.py`; its public names are importable from here too (`push_run_to_hub`, `HubPushError`, `resolve_hub_repo_id`,
`run_files`, `task_branch`).
"""

import importlib.metadata
import json
import logging
import math
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .hub import (  # noqa: F401 - the Hub names re-exported: they were defined here before hub.py
    CARD_NAME,
    TASK_DIR_PATTERN,
    TASK_LAYOUTS,
    HubPushError,
    TaskPushCallback,
    check_layout,
    push_run_to_hub,
    push_task_to_hub,
    resolve_hub_repo_id,
    run_files,
    task_branch,
)
from .state import describe_benchmark

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
ALL_RESULTS_NAME = "all_results.json"
ACCURACY_PLOT_NAME = "accuracy_matrix.png"
BALANCE_PLOT_NAME = "modality_balance.png"
SUMMARY_METRICS = ("final_average", "average_incremental", "forgetting", "bwt")
VERSIONED_PACKAGES = ("torch", "transformers", "datasets", "accelerate", "huggingface_hub", "mspt")
DEFAULT_LICENSE = "apache-2.0"
_SUMMARY_NAMES = {"final_average": "Final average", "average_incremental": "Average incremental",
                  "forgetting": "Forgetting", "bwt": "Backward transfer"}  # fmt: skip
_HEADS = {  # task type -> Auto class, task, kind of label, model-index task type = pipeline tag, tag, Hub metrics
    "re": ("AutoModelForSequenceClassification", "relation extraction", "relation", "text-classification",
           "relation-extraction", ["f1", "precision", "recall"]),
    "ner": ("AutoModelForTokenClassification", "named-entity recognition", "entity", "token-classification",
            "named-entity-recognition", ["seqeval", "f1"]),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ results
def write_results(output_dir: str, result, arguments: dict, benchmark, seed: int) -> dict:
    """Write `output_dir/results.json` and return its content.

    Keys: `accuracy_matrix` (row i = after task i, i+1 values), `cumulative`, `summary`, `metric_definitions`,
    `task_metrics` (from the `ContinualResult`), `arguments` (tokens redacted), `versions` (python and the
    packages, None when absent), `data` (benchmark, config, task type, labels, per-task sizes, `checksum` = the
    benchmark fingerprint) and `seed`; and `unreadable_images` (reference -> why) when the run met images it could
    not read (fed as zero images). The JSON is strict: NaN and infinities are written as null.

    Args:
        result: the `ContinualResult` of `ContinualTrainer.train_tasks`.
        arguments: the run's arguments, e.g. `training_args.to_dict()` merged with the script's own.
        benchmark: the `ContinualBenchmark`, or its description as stored in `continual_run.json`.
    """
    results = {
        "accuracy_matrix": _lower_triangle(result.matrix),
        "cumulative": list(result.cumulative),
        "summary": dict(result.summary),
        "metric_definitions": dict(result.metric_definitions),
        "task_metrics": list(result.task_metrics),
        "arguments": _redact(arguments),
        "versions": package_versions(),
        "data": _describe_data(benchmark),
        "seed": seed,
    }
    if getattr(result, "unreadable_images", None):
        results["unreadable_images"] = dict(result.unreadable_images)
    results = _jsonable(results)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    os.replace(path + ".tmp", path)
    logger.info("Wrote %s", path)
    return results


def write_all_results(output_dir: str, results: dict) -> dict:
    """Write `output_dir/all_results.json`, the flat metrics dict the transformers examples leave
    (`trainer.save_metrics("all", ...)`): the continual summary (`final_average`, `average_incremental`,
    `forgetting`, `bwt`), `num_tasks`, `final_cumulative` (the last model on all tasks' test sets) and
    `final_task_{j}` (the last model on task j's slice, j from 1). Non-finite values are written as null.

    Args:
        results: the dict returned by `write_results` (or read from `results.json`).
    """
    matrix, cumulative = results["accuracy_matrix"], results.get("cumulative") or [None]
    metrics = {k: results["summary"][k] for k in SUMMARY_METRICS if k in results["summary"]}
    metrics.update(num_tasks=len(matrix), final_cumulative=cumulative[-1])
    metrics.update({f"final_task_{j + 1}": v for j, v in enumerate(matrix[-1] if matrix else [])})
    metrics = _jsonable(metrics)
    path = os.path.join(output_dir, ALL_RESULTS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=4, sort_keys=True, allow_nan=False)
    os.replace(path + ".tmp", path)
    logger.info("Wrote %s", path)
    return metrics


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _lower_triangle(matrix) -> list:
    rows = []
    for i, row in enumerate(matrix):
        row = list(row)
        if len(row) < i + 1:
            raise ValueError(f"accuracy matrix row {i} has {len(row)} values; row i needs i+1 (tasks 0..i).")
        rows.append(row[: i + 1])
    return rows


def _describe_data(benchmark) -> dict:
    identity = dict(benchmark) if isinstance(benchmark, Mapping) else describe_benchmark(benchmark)
    return {
        "benchmark": identity["name"],
        "config": identity["config_name"],
        "task_type": identity["task_type"],
        "label_names": list(identity["label_names"]),
        "new_labels": [list(labels) for labels in identity["new_labels"]],
        "sizes": [dict(zip(("train", "validation", "test"), sizes)) for sizes in identity["sizes"]],
        "checksum": identity.get("fingerprint") or None,
    }


def _redact(arguments: dict) -> dict:
    """Access tokens never reach a file that gets pushed."""
    return {k: "<redacted>" if ("token" in k.lower() and isinstance(v, str) and v) else v for k, v in arguments.items()}


def _jsonable(value):
    """Plain JSON types; non-finite floats become None, numpy/torch values become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return _jsonable(value.tolist())
    return str(value)


# -------------------------------------------------------------------------------------------------------- plots
def _figure(**kwargs):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install 'mspt[plots]' (or pip install matplotlib).") from err
    fig = Figure(**kwargs)  # no pyplot: no global figure state, Agg whatever the session's backend
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy_matrix(matrix, path: str, title: str | None = None) -> str:
    """Heatmap of the accuracy matrix: row i = after task i, column j = task j's slice, empty above the diagonal,
    each cell annotated. Tasks are numbered from 1 as in the paper (task i is `task-{i-1:02d}/`)."""
    rows = _lower_triangle(matrix)
    T = len(rows)
    if T == 0:
        raise ValueError("the accuracy matrix is empty: no task has finished.")
    grid = np.full((T, T), np.nan)
    for i, row in enumerate(rows):
        grid[i, : i + 1] = [np.nan if v is None else v for v in row]
    side = min(2.4 + 0.6 * T, 8.0)
    fig = _figure(figsize=(side + 1.2, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fontsize = 10 if T <= 6 else 8
    for i in range(T):
        for j in range(i + 1):
            value = grid[i, j]
            text = "–" if np.isnan(value) else f"{value:.3f}" if T <= 6 else f"{value:.2f}"
            color = "black" if not np.isnan(value) and value > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    ticks = np.arange(T)
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel("task j slice")
    ax.set_ylabel("after task i")
    ax.set_title(title or "Accuracy matrix")
    fig.tight_layout()
    fig.savefig(path)
    logger.info("Wrote %s", path)
    return path


def plot_modality_balance(modulation, path: str) -> str:
    """The paper's Fig. 3: per optimizer step, over all tasks in order, the vision/text score ratio `rho_vision`
    (top) and the coefficients applied to the text and vision streams' gradients (bottom), with the per-step
    coefficients drawn faintly (they differ from the applied ones when the paper schedule fixes them from task 2
    on). Dashed lines mark task boundaries. A run without gradient modulation gets a figure that says so."""
    modulation = list(modulation or [])
    series = {name: [] for name in ("rho_vision", "k_text", "k_vision", "k_text_applied", "k_vision_applied")}
    boundaries = [0]
    for t, entry in enumerate(modulation):
        entry = entry or {}
        lengths = {len(entry.get(name, [])) for name in series}
        if len(lengths) > 1:
            raise ValueError(f"modulation entry of task {t}: the per-step lists {sorted(series)} differ in length.")
        for name in series:
            series[name].extend(entry.get(name, []))
        boundaries.append(boundaries[-1] + lengths.pop())
    steps = boundaries[-1]

    fig = _figure(figsize=(9.5, 5), dpi=100)
    if steps == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "Gradient modulation was off:\nno modality ratio or coefficient was recorded.",
                ha="center", va="center", fontsize=12, transform=ax.transAxes)  # fmt: skip
        fig.savefig(path)
        logger.info("Wrote %s (no modulation recorded)", path)
        return path

    top, bottom = fig.subplots(2, 1, sharex=True)
    styles = [(top, "rho_vision", dict(color="tab:purple", lw=1.2), "ρ vision/text")]
    for modality, color in (("text", "tab:blue"), ("vision", "tab:orange")):
        styles.append((bottom, f"k_{modality}_applied", dict(color=color, lw=1.4), f"k {modality} (applied)"))
        styles.append((bottom, f"k_{modality}", dict(color=color, lw=0.8, alpha=0.35), f"k {modality} (per step)"))
    for ax, name, style, label in styles:
        values = np.asarray(series[name], dtype=float)
        values[~np.isfinite(values)] = np.nan  # a zero text score gives an infinite ratio: leave a gap
        for start, stop in zip(boundaries[:-1], boundaries[1:]):  # one segment per task, no line across a boundary
            if stop > start:
                ax.plot(np.arange(start + 1, stop + 1), values[start:stop], label=label, **style)
                label = None  # one legend entry per series
    top.axhline(1.0, color="gray", lw=0.8, ls=":")
    top.set_ylabel("ρ = s_vision / s_text")
    bottom.set_ylim(-0.02, 1.05)
    bottom.set_ylabel("gradient coefficient k")
    bottom.set_xlabel("optimizer step (all tasks)")
    for ax in (top, bottom):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        for b in boundaries[1:-1]:
            ax.axvline(b + 0.5, color="gray", lw=0.8, ls="--")
    for t in range(len(modulation)):
        if boundaries[t + 1] > boundaries[t]:
            top.text((boundaries[t] + boundaries[t + 1] + 1) / 2, 1.02, f"task {t + 1}", ha="center", va="bottom",
                     fontsize=8, transform=top.get_xaxis_transform())  # fmt: skip
    fig.suptitle("Modality balance per optimizer step")
    fig.tight_layout()
    fig.savefig(path)
    logger.info("Wrote %s", path)
    return path


# --------------------------------------------------------------------------------------------------- model card
def write_model_card(output_dir: str, results: dict, model_name: str, task_type: str,
                     base_models: list[str] | None = None, *, repo_id: str | None = None, revision: str | None = None,
                     task_layout: str = "subfolders", license: str | None = None,
                     datasets: list[str] | None = None) -> str:  # fmt: skip
    """Write `output_dir/README.md`: YAML front matter (license, library, pipeline tag, tags, datasets, metrics, base
    models, a `model-index` with one result per continual summary metric) and the card text (what the model is, how
    to load it and its per-task checkpoints, the accuracy matrix, the summaries, the plots found in `output_dir`
    embedded by relative link, the metric definitions). The card is parsed back with `huggingface_hub.ModelCard`
    before it is written.

    Args:
        results: the dict returned by `write_results` (or read from `results.json`).
        model_name: the card's title.
        task_type: "re" or "ner".
        base_models: the Hub ids of the text and vision towers the model started from, if any.
        repo_id: the Hub repo the run is pushed to: the loading snippet names it. None: a run kept on disk, the
            snippet names `output_dir`.
        revision: the branch of `repo_id` that holds the final model (None or "main": the default branch).
        task_layout: where the model after each task is: "subfolders" (`task-XX/` of the same branch) or "branches"
            (its own branch, `task_branch`); as `push_run_to_hub`'s.
        license: the card's license, `apache-2.0` when None.
        datasets: the Hub ids of the datasets the run trained on, if any.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if task_type not in _HEADS:
        raise ValueError(f"task_type must be 're' or 'ner', got {task_type!r}.")
    check_layout(task_layout)
    _, task_name, _, hub_task, tag, hub_metrics = _HEADS[task_type]
    data, summary = results["data"], results["summary"]
    metric = results["task_metrics"][-1]["metric"] if results.get("task_metrics") else "score"
    dataset = f"{data['benchmark']}/{data['config']}"
    eval_results = [
        EvalResult(task_type=hub_task, task_name=f"Continual multimodal {task_name}", dataset_type=data["benchmark"],
                   dataset_name=dataset, dataset_config=data["config"], metric_type=key,
                   metric_name=f"{_SUMMARY_NAMES[key]} ({metric})", metric_value=summary[key])
        for key in SUMMARY_METRICS if summary.get(key) is not None
    ]  # fmt: skip
    card_data = ModelCardData(
        license=license or DEFAULT_LICENSE,
        library_name="transformers",
        pipeline_tag=hub_task,  # what the Auto class the checkpoint registers (config.auto_map) does
        tags=["mspt", "continual-learning", "multimodal", tag, data["benchmark"]],
        datasets=list(datasets) if datasets else None,
        metrics=list(hub_metrics),
        base_model=list(base_models) if base_models else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    location = repo_id or os.path.abspath(output_dir)
    load = _LoadSpec(location, repo_id is not None, revision if repo_id and revision not in (None, "main") else None,
                     task_layout if repo_id else "subfolders", _saved_task_dirs(output_dir),
                     [p for p in _PLOTS if os.path.isfile(os.path.join(output_dir, p))])  # fmt: skip
    body = _card_body(results, model_name, task_type, metric, dataset, load)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")  # parses the front matter: raises if invalid
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CARD_NAME)
    card.save(path)
    logger.info("Wrote %s", path)
    return path


def _saved_task_dirs(output_dir: str) -> list[str]:
    """The `task-XX` folders of `output_dir` that hold a saved model, sorted."""
    if not os.path.isdir(output_dir):
        return []
    names = [d for d in os.listdir(output_dir) if TASK_DIR_PATTERN.fullmatch(d)]
    return sorted(d for d in names if os.path.isfile(os.path.join(output_dir, d, "config.json")))


_PLOTS = {ACCURACY_PLOT_NAME: "Accuracy matrix: row i is the model after task i, column j task j's test slice",
          BALANCE_PLOT_NAME: "Modality balance per optimizer step (the paper's Fig. 3)"}  # fmt: skip


@dataclass
class _LoadSpec:
    """Where the card says the model is: `location` (a repo id when `on_hub`, else a folder), the final model's
    `revision` (None: the default branch), the `layout` of the per-task models, the saved `task_dirs`, the `plots`
    next to the card."""

    location: str
    on_hub: bool
    revision: str | None
    layout: str
    task_dirs: list[str]
    plots: list[str]


def _checkpoints_text(load: _LoadSpec) -> str:
    home = f"branch `{load.revision}`" if load.revision else "the repository" if load.on_hub else "this folder"
    text = f"The root of {home} holds the final model."
    if not load.task_dirs:
        return text
    if load.layout == "branches":
        first = task_branch(load.task_dirs[0], load.revision)
        branches = ", ".join(f"`{task_branch(d, load.revision)}` (after task {int(d[5:]) + 1})" for d in load.task_dirs)
        return text + (f" The model after each task is on its own branch of the same repository: {branches}. "
                       f'Pass `revision="{first}"` to both calls instead to load one.')  # fmt: skip
    folders = ", ".join(f"`{d}/` (after task {int(d[5:]) + 1})" for d in load.task_dirs)
    return text + (f" The model after each task is kept in a subfolder of {home}: {folders}. "
                   f'Pass `subfolder="{load.task_dirs[0]}"` to both calls to load one.')  # fmt: skip


def _card_body(results, model_name, task_type, metric, dataset, load: _LoadSpec) -> str:
    auto_class, task_name, label_kind, _, _, _ = _HEADS[task_type]
    source = f'"{load.location}"' + (f', revision="{load.revision}"' if load.revision else "")
    data, matrix, summary = results["data"], results["accuracy_matrix"], results["summary"]
    T = len(matrix)
    strategy = results.get("arguments", {}).get("strategy")
    definitions = results.get("metric_definitions", {})
    lines = [
        f"# {model_name}",
        "",
        f"An [MSPT](https://arxiv.org/abs/2305.08698) model (Multimodal Stability-Plasticity Transformer, Chen et "
        f"al., IJCAI 2024) for multimodal {task_name}: it reads a sentence and its image through a text and a vision "
        f"stream that interact through a shared key. It was trained continually on `{dataset}`, {T} tasks in a row, "
        f"each adding new {label_kind} types"
        + (f", with the `{strategy}` strategy." if strategy else "."),
        "",
        "## How to load",
        "",
        "```python",
        f"from transformers import {auto_class}, AutoProcessor",
        "",
        f"model = {auto_class}.from_pretrained({source}, trust_remote_code=True)",
        f"processor = AutoProcessor.from_pretrained({source}, trust_remote_code=True)",
        "```",
        "",
        _checkpoints_text(load),
        "",
        "## Continual results",
        "",
        f"Metric: `{metric}`. Row i is the model after task i, column j is task j's test slice; `cumulative` is "
        "the cumulative test set of task i (all tasks so far).",
        "",
        "| after task | " + " | ".join(f"task {j + 1}" for j in range(T)) + " | cumulative |",
        "|---" * (T + 2) + "|",
    ]
    cumulative = results.get("cumulative", [])
    for i, row in enumerate(matrix):
        cells = [_fmt(v) for v in row] + [""] * (T - len(row))
        cells.append(_fmt(cumulative[i]) if i < len(cumulative) else "")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", "| summary | value |", "|---|---|"]
    lines += [f"| {_SUMMARY_NAMES[k]} (`{k}`) | {_fmt(summary[k])} |" for k in SUMMARY_METRICS if k in summary]
    for name in load.plots:  # relative links: the PNGs are pushed next to the card
        lines += ["", f"![{_PLOTS[name]}]({name})"]
    lines += ["", "### Metric definitions", ""]
    lines += [f"- **{name}**: {text}" for name, text in definitions.items()]
    lines += ["", "## Training data", "", f"- Benchmark `{dataset}`, data checksum `{data.get('checksum')}`."]
    for t, (labels, sizes) in enumerate(zip(data.get("new_labels", []), data.get("sizes", []))):
        size_text = ", ".join(f"{n} {split}" for split, n in sizes.items())
        lines.append(f"- Task {t + 1}: {', '.join(f'`{x}`' for x in labels)} ({size_text}).")
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items() if v)
    lines += ["", f"Seed {results.get('seed')}; {versions}. Full numbers and arguments: `results.json`.", ""]
    lines += ["## Citation", "", "```bibtex", "@inproceedings{chen2024continual,",
              "  title = {Continual Multimodal Knowledge Graph Construction},", "  author = {Chen, Xiang and others},",
              "  booktitle = {Proceedings of IJCAI 2024}, pages = {6225--6233}, year = {2024},",
              "  doi = {10.24963/ijcai.2024/688}", "}", "```", ""]  # fmt: skip
    return "\n".join(lines)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}"
