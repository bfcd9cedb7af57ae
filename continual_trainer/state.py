"""What a continual run carries from task to task and where it sits: `continual_run.json` (what the run trains on,
with the arguments that change its results), per finished task `task-XX/continual_state.json` (written last,
atomically: its presence marks the task finished), and the `task-XX` folders. How saves are made complete, verified,
resumed from and locked is `checkpointing`.
"""

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field

logger = logging.getLogger(__name__)

STATE_NAME = "continual_state.json"
RUN_NAME = "continual_run.json"  # written at the start of a run: what it trains on, checked by a resume
TASK_MARKER = "continual_task.json"  # in every task-XX folder this package creates: only those are ever deleted
TASK_DIR_PATTERN = re.compile(r"task-(\d+)")
STATE_VERSION = 2  # 2: `components` (the strategy components' state) replaces `memory`
# Training arguments that change no result: where and how often to log and save, progress bars, Hub, data workers.
NEUTRAL_ARGUMENTS = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "run_name", "project", "report_to", "disable_tqdm",
    "log_level", "log_level_replica", "log_on_each_node", "logging_steps", "logging_strategy", "logging_first_step",
    "logging_nan_inf_filter", "save_strategy", "save_steps", "save_total_limit", "save_on_each_node",
    "save_only_model", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers", "dataloader_pin_memory",
    "dataloader_multiprocessing_context", "ddp_timeout", "ddp_find_unused_parameters", "local_rank",
    "skip_memory_metrics", "include_num_input_tokens_seen", "torch_empty_cache_steps",
})  # fmt: skip
_NEUTRAL_CONFIG = ("_name_or_path", "transformers_version", "_commit_hash", "architectures")  # set by save_pretrained


def task_dir(root: str, task_id: int) -> str:
    return os.path.join(root, f"task-{task_id:02d}")


def describe_benchmark(benchmark) -> dict:
    """The identity of a benchmark, compared on resume: a run never continues on other data or labels."""
    return {
        "name": benchmark.name,
        "config_name": benchmark.config_name,
        "task_type": benchmark.task_type,
        "label_names": list(benchmark.label_names),
        "num_tasks": len(benchmark.tasks),
        "new_labels": [list(t.new_labels) for t in benchmark.tasks],
        "sizes": [[len(t.train), len(t.validation), len(t.test)] for t in benchmark.tasks],
        "fingerprint": getattr(benchmark, "fingerprint", ""),
    }


def write_json_atomic(path: str, data) -> None:
    """Write to `path.tmp`, sync it to disk, then rename over `path`: a reader sees the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class ContinualState:
    benchmark: dict
    strategy: str
    completed_tasks: int = 0
    matrix: list = field(default_factory=list)  # row i: primary metric on slices 0..i after task i
    cumulative: list = field(default_factory=list)  # primary metric on the cumulative test set after task i
    task_metrics: list = field(default_factory=list)  # full metric dicts per task
    modulation: list = field(default_factory=list)  # per task: per-step rho_vision, k_text, k_vision, k applied
    components: dict = field(default_factory=dict)  # component name -> its state_dict() without tensors
    unreadable_images: dict = field(default_factory=dict)  # images fed as zero images (reference -> why), run so far
    version: int = STATE_VERSION

    def save(self, directory: str) -> None:
        write_json_atomic(os.path.join(directory, STATE_NAME), asdict(self))

    @classmethod
    def load(cls, directory: str) -> "ContinualState":
        path = os.path.join(directory, STATE_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            state = cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(
                f"{path} is unreadable or corrupt ({err}); delete {directory} to redo that task, or start a new "
                "output_dir."
            ) from err
        if state.version != STATE_VERSION:
            raise ValueError(f"{path} has state version {state.version}; this package reads version {STATE_VERSION}.")
        return state

    def check_compatible(self, benchmark: dict, strategy: str, where: str) -> None:
        differences = [k for k in benchmark if benchmark[k] != self.benchmark.get(k)]
        if differences:
            raise ValueError(
                f"{where} holds a run of benchmark {self.benchmark['name']}/{self.benchmark['config_name']} that "
                f"differs from the one given in {differences}; resume with the same benchmark or use another "
                "output_dir."
            )
        if strategy != self.strategy:
            raise ValueError(f"{where} holds a `{self.strategy}` run; resuming it as `{strategy}` is not possible.")


# ------------------------------------------------------------------------------------------- the run's folders
def finished_tasks(root: str) -> list[int]:
    """Task ids whose state file exists under `root` (in `task-NN` folders only), sorted."""
    if not os.path.isdir(root):
        return []
    ids = []
    for name in os.listdir(root):
        match = TASK_DIR_PATTERN.fullmatch(name)
        if match and os.path.exists(os.path.join(root, name, STATE_NAME)):
            ids.append(int(match.group(1)))
    return sorted(ids)


def mark_task_dir(path: str, task_id: int) -> None:
    """Create a task folder with the marker that says this package wrote it."""
    os.makedirs(path, exist_ok=True)
    if not os.path.exists(os.path.join(path, TASK_MARKER)):
        write_json_atomic(os.path.join(path, TASK_MARKER), {"task": task_id, "written_by": "mspt continual_trainer"})


def task_folders(root: str) -> tuple[list[str], list[str]]:
    """The `task-NN` folders of `root`: (written by this package, not). Other names (`task-notes/`) are neither."""
    ours, foreign = [], []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if TASK_DIR_PATTERN.fullmatch(name) and os.path.isdir(path):
                mine = any(os.path.exists(os.path.join(path, f)) for f in (TASK_MARKER, STATE_NAME))
                (ours if mine else foreign).append(path)
    return ours, foreign


def write_run(root: str, benchmark: dict, strategy: str, settings: dict | None = None) -> None:
    os.makedirs(root, exist_ok=True)
    run = {"benchmark": benchmark, "strategy": strategy}
    if settings is not None:
        run["settings"] = settings
    write_json_atomic(os.path.join(root, RUN_NAME), run)


def read_run(root: str) -> dict | None:
    path = os.path.join(root, RUN_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable or corrupt ({err}); start a new output_dir.") from err


# ------------------------------------------------------------------------------ arguments that change the results
def run_settings(args, model_config, world_size: int) -> dict:
    """What a resume must keep: every training argument but the neutral ones, the model config, the process count."""
    def without_paths(config: dict) -> dict:  # where the towers were loaded from, not what they are
        return {k: without_paths(v) if isinstance(v, dict) else v for k, v in config.items() if k not in _NEUTRAL_CONFIG}

    arguments = {k: v for k, v in args.to_dict().items() if k not in NEUTRAL_ARGUMENTS}
    config = without_paths(model_config.to_dict())
    return json.loads(json.dumps({"arguments": arguments, "model": config, "world_size": world_size}, default=str))


def _differences(saved, given, prefix="") -> list[str]:
    if isinstance(saved, dict) and isinstance(given, dict):
        return [d for key in sorted(set(saved) | set(given), key=str)
                for d in _differences(saved.get(key), given.get(key), f"{prefix}{key}.")]  # fmt: skip
    return [] if saved == given else [f"{prefix[:-1]}: {saved!r} at the start, {given!r} now"]


def check_settings(saved: dict | None, given: dict, root: str) -> None:
    """Refuse a resume whose arguments would train differently from those the run was started with."""
    if saved is None:
        logger.warning("%s was started by an older version that did not record its arguments: a resume with other "
                       "arguments cannot be detected.", os.path.join(root, RUN_NAME))  # fmt: skip
        return
    differences = [d.removeprefix("arguments.") for d in _differences(saved, given)]
    if differences:
        raise ValueError(
            f"resume_from_checkpoint: {root} was started with other arguments, and these change the results: "
            f"{'; '.join(differences)}. Resume with the same arguments as at the start (recorded in {RUN_NAME}), or "
            "start a new run: in another output_dir, or over this one with --overwrite_output_dir true."
        )
