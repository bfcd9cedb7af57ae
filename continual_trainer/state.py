"""What a continual run carries from task to task and how it sits on disk: `continual_run.json` (what the run trains
on, with the arguments that change its results), per finished task `task-XX/continual_state.json` (written last,
atomically: its presence marks the task finished), the files a save must leave complete, the random state at a task's
end, and the lock that keeps a second run out of the output_dir.
"""

import json
import logging
import os
import random
import re
import socket
import time
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from safetensors import safe_open

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to the pid in the lock file
    fcntl = None

logger = logging.getLogger(__name__)

STATE_NAME = "continual_state.json"
RUN_NAME = "continual_run.json"  # written at the start of a run: what it trains on, checked by a resume
TASK_MARKER = "continual_task.json"  # in every task-XX folder this package creates: only those are ever deleted
MANIFEST_NAME = "saved_files.json"  # written once a save is complete: every file with its size
RNG_NAME = "rng_state_{rank}.json"  # each process's random state at the end of a task
LOCK_NAME = "continual_run.lock"
TASK_DIR_PATTERN = re.compile(r"task-(\d+)")
STATE_VERSION = 1
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
    memory: dict | None = None
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


# -------------------------------------------------------------------------------- complete saves, random states
def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_manifest(folder: str, recursive: bool = True) -> None:
    """Sync every file of `folder` to disk and record it with its size in `saved_files.json`, written last: a folder
    with its manifest was saved completely, and a file that later lost bytes is caught by its size."""
    files = {}
    for dirpath, dirnames, names in os.walk(folder):
        if not recursive:
            dirnames.clear()
        for name in names:
            path = os.path.join(dirpath, name)
            if name != MANIFEST_NAME and not name.endswith(".tmp"):
                _fsync(path)
                files[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    write_json_atomic(os.path.join(folder, MANIFEST_NAME), {"files": files})


def _unreadable(path: str) -> str | None:
    """Why a file cannot be what its name says (parsed, never unpickled), or None."""
    name = os.path.basename(path)
    try:
        if name.endswith(".safetensors"):
            with safe_open(path, framework="pt"):
                pass
        elif name.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                json.load(f)
        elif name.endswith((".pt", ".pth", ".bin")):  # torch.save's zip archive: its directory is at the very end
            with zipfile.ZipFile(path):
                pass
    except Exception as err:  # noqa: BLE001 - every parse error means the same: not usable
        return f"{name} is unreadable ({type(err).__name__}: {err})"
    return None


def folder_problem(folder: str, required=()) -> str | None:
    """What keeps a saved folder from being resumed from, or None. A file listed in its manifest is missing or has
    another size; a required file (a name, or a tuple of alternatives) is absent; a required or listed safetensors,
    JSON or torch file does not parse (parsed only: nothing is unpickled)."""
    listed = {}
    manifest = os.path.join(folder, MANIFEST_NAME)
    if os.path.exists(manifest):  # folders saved before manifests existed are checked by their required files
        try:
            with open(manifest, encoding="utf-8") as f:
                listed = dict(json.load(f)["files"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"{MANIFEST_NAME} is unreadable ({err})"
    for name, size in listed.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} were saved (cut short or overwritten)"
    present = set(listed)
    for need in required:
        options = (need,) if isinstance(need, str) else need
        found = [o for o in options if os.path.isfile(os.path.join(folder, o))]
        if not found:
            return f"{' or '.join(options)} is missing"
        present.add(found[0])
    for name in sorted(present):
        problem = _unreadable(os.path.join(folder, name))
        if problem:
            return problem
    return None


def save_rng_state(path: str) -> None:
    """This process's Python, NumPy, torch (and CUDA) random states as JSON: a task restarted from its beginning
    draws what the uninterrupted run drew."""
    version, python, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(python), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    write_json_atomic(path, state)


def load_rng_state(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    version, python, gauss = state["python"]
    random.setstate((version, tuple(python), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# --------------------------------------------------------------------------------------------------- the lock
def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _flock(fd: int) -> bool | None:
    """True: locked; False: no flock here (no fcntl, or the file system refuses it); None: another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    except OSError:
        return False
    return True


def _alive(holder: dict) -> bool:
    """Whether the holder may still run: unknown (so yes) on another host or without a way to ask."""
    if holder.get("host") != socket.gethostname() or os.name == "nt" or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


class RunLock:
    """An exclusive lock on an output_dir for as long as a run works in it (main process only).

    `flock` on `output_dir/continual_run.lock`, which the system releases when the holder dies however it dies; the file
    names the holder (pid, host, start) for the message that refuses a second run, and a file left by a holder that
    died is taken over with a warning. Where `flock` is missing (Windows, some network file systems) the pid in the file
    decides: a live process on this host, or any on another host, holds the lock.
    """

    def __init__(self, root: str):
        self.root, self.path, self._fd = root, os.path.join(root, LOCK_NAME), None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _busy(self, holder: dict, flock: bool) -> RuntimeError:
        hint = "" if flock else f" If that process is gone, delete {self.path}."
        return RuntimeError(f"output_dir {self.root} is in use by another run ({_describe(holder)}; lock file "
                            f"{self.path}). Wait for it to end, or use another output_dir.{hint}")  # fmt: skip

    def acquire(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            flock = _flock(fd)
            if flock is None:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._busy(holder, True)
            previous = _read_holder(fd)
            if not flock and previous and _alive(previous):
                os.close(fd)
                raise self._busy(previous, False)
            try:  # the holder may have released (unlinked) the file between our open and our flock
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        if previous:
            logger.warning("%s: taking over the lock of %s, which ended without releasing it (killed?).", self.path,
                           _describe(previous))  # fmt: skip
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
