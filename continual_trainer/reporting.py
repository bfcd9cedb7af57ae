"""What a finished continual run leaves behind for people: `results.json`, the accuracy-matrix heatmap, the
modality-balance curve (the paper's Fig. 3), a model card with a `model-index`, and the push of the whole run
(final model at the root, one subfolder per task) to the Hub.
"""

import glob
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shlex
import time
from collections.abc import Mapping
from contextlib import contextmanager
from enum import Enum

import numpy as np

from .state import RUN_NAME, describe_benchmark

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
CARD_NAME = "README.md"
ACCURACY_PLOT_NAME = "accuracy_matrix.png"
BALANCE_PLOT_NAME = "modality_balance.png"
SUMMARY_METRICS = ("final_average", "average_incremental", "forgetting", "bwt")
VERSIONED_PACKAGES = ("torch", "transformers", "datasets", "accelerate", "huggingface_hub", "mspt")
TASK_DIR_PATTERN = re.compile(r"task-\d+")
_SUMMARY_NAMES = {"final_average": "Final average", "average_incremental": "Average incremental",
                  "forgetting": "Forgetting", "bwt": "Backward transfer"}  # fmt: skip
_HEADS = {  # task type -> Auto class, task, kind of label, model-index task type, tag
    "re": ("AutoModelForSequenceClassification", "relation extraction", "relation", "text-classification",
           "relation-extraction"),
    "ner": ("AutoModelForTokenClassification", "named-entity recognition", "entity", "token-classification",
            "named-entity-recognition"),
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
                     base_models: list[str] | None = None) -> str:  # fmt: skip
    """Write `output_dir/README.md`: YAML front matter (library, tags, base models, a `model-index` with one result
    per continual summary metric) and the card text (what the model is, how to load it and its per-task
    checkpoints, the accuracy matrix, the summaries and the metric definitions). The card is parsed back with
    `huggingface_hub.ModelCard` before it is written.

    Args:
        results: the dict returned by `write_results` (or read from `results.json`).
        model_name: the Hub repo id the run will be pushed to (used in the loading snippet), or a display name.
        task_type: "re" or "ner".
        base_models: the Hub ids of the text and vision towers the model started from, if any.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if task_type not in _HEADS:
        raise ValueError(f"task_type must be 're' or 'ner', got {task_type!r}.")
    _, task_name, _, hub_task, tag = _HEADS[task_type]
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
        library_name="transformers",
        tags=["mspt", "continual-learning", "multimodal", tag, data["benchmark"]],
        base_model=list(base_models) if base_models else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    body = _card_body(results, model_name, task_type, metric, dataset, _saved_task_dirs(output_dir))
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


def _card_body(results, model_name, task_type, metric, dataset, task_dirs) -> str:
    auto_class, task_name, label_kind, _, _ = _HEADS[task_type]
    checkpoints = "The repository root holds the final model."
    if task_dirs:
        folders = ", ".join(f"`{d}/` (after task {int(d[5:]) + 1})" for d in task_dirs)
        checkpoints += (f" The model after each task is kept in a subfolder of the same repository: {folders}. "
                        f'Pass `subfolder="{task_dirs[0]}"` to both calls to load one.')  # fmt: skip
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
        f'model = {auto_class}.from_pretrained("{model_name}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)',
        "```",
        "",
        checkpoints,
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


# ---------------------------------------------------------------------------------------------------------- Hub
def run_files(output_dir: str) -> list[str]:
    """The files of a run that `push_run_to_hub` uploads, relative to `output_dir`, sorted: the files at the root
    and everything under `task-XX/`, except mid-task `checkpoint-*` folders and `*.tmp` files."""
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"output_dir {output_dir} does not exist.")
    files, skipped = [], set()
    for path in glob.glob("**", root_dir=output_dir, recursive=True):
        if not os.path.isfile(os.path.join(output_dir, path)):
            continue
        parts = path.split(os.sep)
        if len(parts) > 1 and not TASK_DIR_PATTERN.fullmatch(parts[0]):
            skipped.add(parts[0] + "/")
        elif any(p.startswith("checkpoint-") for p in parts[:-1]):
            skipped.add("/".join(parts[:2]) + "/")
        elif not parts[-1].endswith(".tmp"):
            files.append("/".join(parts))
    if skipped:
        logger.info("Not uploaded from %s: %s", output_dir, ", ".join(sorted(skipped)))
    return sorted(files)


class HubPushError(RuntimeError):
    """A push of a run to the Hub failed: the server refused it, or it timed out / failed on every attempt. Nothing in
    the output directory was changed; the message says how to push it again."""


# Answers worth another attempt: timeouts, rate limits and server errors (a refusal such as 401/403/404 is final).
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_MAX_RETRY_WAIT = 60.0


def push_run_to_hub(output_dir: str, repo_id: str, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload MSPT continual run", endpoint: str | None = None,
                    timeout: float = 60.0, retries: int = 3, retry_wait: float = 2.0):  # fmt: skip
    """Upload a continual run to one Hub model repo, in one `upload_folder` call.

    Layout of the repo: the root holds what is at the root of `output_dir` (the final model and processor, the card
    `README.md`, `results.json`, the plots, `continual_run.json`); each per-task checkpoint `task-XX/` becomes a
    **subfolder** of the same repo, on the same branch (not a revision or a branch per task), so
    `from_pretrained(repo_id, subfolder="task-00", trust_remote_code=True)` loads the model after task 1. Mid-task
    `checkpoint-*` folders, `*.tmp` files and other folders at the root are not uploaded (see `run_files`).

    Every HTTP request of the push gives up after `timeout` seconds without progress (huggingface_hub's own client
    waits forever on a server that accepts and never answers). A timeout, a connection error or a 408/429/5xx answer
    starts the whole push again (creating the repo and re-uploading the same files is harmless), after `retry_wait`,
    then twice as long each time (at most 60 s), `retries` times. When it still fails, or the Hub refuses the push,
    `HubPushError` says how to push the untouched `output_dir` again.

    Args:
        token: a Hub token with write access; the locally saved one when None.
        private: visibility of the repo if it has to be created; an existing repo keeps its own.
        endpoint: the Hub URL (for a private Hub or a test server); `HF_ENDPOINT` when None.
        timeout: seconds without progress (connect, send, receive) before a request is abandoned. While the push
            runs, other huggingface_hub requests of this process use the same timeout.
        retries: further attempts after the first one fails with a timeout, a network error or a 408/429/5xx.
        retry_wait: seconds before the first retry.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload (`commit_url`, `oid`).

    Raises:
        HubPushError: the Hub refused the push, or every attempt failed.
    """
    from huggingface_hub import HfApi

    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}.")
    if not (isinstance(retries, int) and retries >= 0):
        raise ValueError(f"`retries` must be an integer >= 0, got {retries!r}.")
    if not (isinstance(retry_wait, (int, float)) and retry_wait >= 0):
        raise ValueError(f"`retry_wait` must be a number of seconds >= 0, got {retry_wait!r}.")
    files = run_files(output_dir)
    tasks = sorted({f.split("/")[0] for f in files if "/" in f})
    if not tasks:
        raise ValueError(f"{output_dir} holds no task-XX/ folder: it is not the output_dir of a continual run.")
    root = {f for f in files if "/" not in f}
    for name, what in (("config.json", "no final model (save it with trainer.save_model())"),
                       (CARD_NAME, "no model card (write_model_card)"), (RUN_NAME, f"no {RUN_NAME}")):  # fmt: skip
        if name not in root:
            logger.warning("%s holds %s; pushing without it.", output_dir, what)
    api = HfApi(endpoint=endpoint, token=token)

    def push():
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        logger.info("Uploading %d files (root and %s) to %s", len(files), ", ".join(tasks), repo_url)
        return api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=output_dir,
            allow_patterns=[glob.escape(f) for f in files],  # exactly the files listed, nothing matched by accident
            commit_message=commit_message,
            repo_type="model",
        )

    again = _repush_instructions(output_dir, repo_id, private, commit_message, endpoint)
    for attempt in range(retries + 1):
        try:
            with _hub_timeout(timeout):
                return push()
        except Exception as err:
            transient = _is_transient(err)
            if transient is None:  # not a Hub or network error: a bug to see as it is
                raise
            attempts = f"{attempt + 1} attempt{'s' if attempt else ''}"
            if not transient or attempt == retries:
                raise HubPushError(
                    f"Pushing {output_dir} to the Hub repo {repo_id!r} failed after {attempts} "
                    f"({type(err).__name__}: {err}). {again}"
                ) from err
            wait = min(retry_wait * 2**attempt, _MAX_RETRY_WAIT)
            logger.warning("Hub push attempt %d of %d failed (%s: %s); retrying in %.1f s.", attempt + 1,
                           retries + 1, type(err).__name__, err, wait)  # fmt: skip
            time.sleep(wait)


def _is_transient(err: Exception) -> bool | None:
    """True: worth another attempt; False: a refusal; None: not a Hub or network error at all."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        import httpx2 as httpx  # huggingface_hub >= 2
    except ImportError:  # pragma: no cover - huggingface_hub 1.x
        import httpx
    if isinstance(err, HfHubHTTPError):
        response = getattr(err, "response", None)
        return getattr(response, "status_code", None) in _RETRY_STATUS
    if isinstance(err, (httpx.TransportError, OSError)):  # timeouts, refused or dropped connections
        return True
    return None


@contextmanager
def _hub_timeout(seconds: float):
    """Give huggingface_hub's shared HTTP client a timeout (its default is None: wait forever) for the duration."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    # The factory in force (a user's own, with proxies or certificates, if they set one); not public API.
    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

    def with_timeout():
        client = previous()
        client.timeout = seconds
        return client

    set_client_factory(with_timeout)  # closes the current shared client; the next request builds one with a timeout
    try:
        yield
    finally:
        set_client_factory(previous)


def _repush_instructions(output_dir, repo_id, private, commit_message, endpoint) -> str:
    arguments = [os.path.abspath(output_dir), repo_id]
    options = {"private": private, "endpoint": endpoint}
    if commit_message != "Upload MSPT continual run":
        options["commit_message"] = commit_message
    python = ", ".join([*map(repr, arguments), *(f"{k}={v!r}" for k, v in options.items() if v is not None)])
    shell = ", ".join([*map(json.dumps, arguments),
                       *(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in options.items()
                         if v is not None)])  # fmt: skip
    code = f"from continual_trainer import push_run_to_hub; push_run_to_hub({shell})"
    return (
        f"The run in {os.path.abspath(output_dir)} is complete on disk and was not changed. Push it again, with a "
        f"write token in HF_TOKEN (or after `hf auth login`), from Python:\n"
        f"    from continual_trainer import push_run_to_hub; push_run_to_hub({python})\n"
        f"or from a shell:\n    python -c {shlex.quote(code)}"
    )
