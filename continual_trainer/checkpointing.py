"""How a continual run survives on disk: complete saves (`saved_files.json`), checkpoints verified before a resume
uses them (parsed, never unpickled) with fallback to the previous intact one or the task start (the random state
saved with each finished task), finished tasks saved and loaded, the lock that keeps a second run out of the
output_dir, a new run over an old one (`overwrite_output_dir`), and a full disk named as such.

Functions take what they act on (folders, the model, the `Accelerator`); `ContinualTrainer` calls them from its loop.
"""

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import socket
import time
import zipfile

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .state import (
    RUN_NAME,
    TASK_MARKER,
    ContinualState,
    check_settings,
    finished_tasks,
    read_run,
    task_dir,
    task_folders,
    write_json_atomic,
    write_run,
)

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to the pid in the lock file
    fcntl = None

logger = logging.getLogger(__name__)

MANIFEST_NAME = "saved_files.json"  # written once a save is complete: every file with its size
RNG_NAME = "rng_state_{rank}.json"  # each process's random state at the end of a task
LOCK_NAME = "continual_run.lock"
STRATEGY_STATE_NAME = "strategy_state.safetensors"  # the components' tensors of a finished task (EWC, DER++ logits)
STEP_RECORDS_NAME = "modulation_steps.safetensors"  # a tensor, never a pickle (a checkpoint may come from anyone)
CHECKPOINT_PATTERN = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
_DISK_FULL_SIGNS = ("No space left on device", "StorageFull", "inline_container.cc", "PytorchStreamWriter failed",
                    "file write failed")  # fmt: skip


# ------------------------------------------------------------------------------------------- a full disk
def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return any(sign in str(err) for sign in _DISK_FULL_SIGNS)


@contextlib.contextmanager
def disk_full_is_named(target: str, then):
    """Around a save to `target`: the errors a full disk gives (OSError ENOSPC; torch's "[enforce fail at
    inline_container.cc]" / "PytorchStreamWriter failed"; safetensors' "StorageFull") become one OSError(ENOSPC) that
    says so, where, how much space is left, and `then()`: what was kept and how to continue."""
    try:
        yield
    except Exception as err:
        if not _is_disk_full(err):
            raise
        tail = then()
        existing = target
        while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        free = shutil.disk_usage(existing).free / 2**20
        raise OSError(errno.ENOSPC, f"No space left on device while writing {target} ({type(err).__name__}: {err}); "
                                    f"{free:.0f} MiB free there. {tail}") from err  # fmt: skip


# ------------------------------------------------------------------------------- complete saves, verified
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


# ------------------------------------------------------------------------------------- mid-task checkpoints
def checkpoint_files(args, own_layout: bool = False) -> list:
    """The files resuming from an HF checkpoint reads (a tuple: any of them). DeepSpeed and FSDP (`own_layout`) have
    layouts of their own: their checkpoints are checked against `saved_files.json` only."""
    if own_layout:
        return ["trainer_state.json"]
    rng = ["rng_state.pth"] if args.world_size <= 1 else [f"rng_state_{i}.pth" for i in range(args.world_size)]
    files = ["trainer_state.json", ("model.safetensors", "model.safetensors.index.json"), "optimizer.pt",
             "scheduler.pt", *rng]  # fmt: skip
    return files + [STEP_RECORDS_NAME] if args.gradient_modulation else files


def _checkpoints(folder: str) -> list[str]:
    """The checkpoint folders of a task folder, newest first."""
    found = [(int(m.group(1)), m.group(0)) for m in map(CHECKPOINT_PATTERN.fullmatch,
             os.listdir(folder) if os.path.isdir(folder) else []) if m]  # fmt: skip
    return [os.path.join(folder, name) for _, name in sorted(found, reverse=True)]


def intact_checkpoint(folder: str, required: list, accelerator) -> str | None:
    """The newest checkpoint of a task folder with every file it needs, or None. Newer ones that are incomplete or
    damaged are removed, each with a warning (older ones are rotated out as usual)."""
    chosen, damaged = None, []
    for path in _checkpoints(folder):
        problem = folder_problem(path, required)
        if problem is None:
            chosen = path
            break
        damaged.append((path, problem))
    accelerator.wait_for_everyone()  # every process has chosen before anything is removed
    if accelerator.is_main_process:
        for path, problem in damaged:
            logger.warning("%s is incomplete or damaged (%s): removed; the run continues from %s.", path, problem,
                           chosen or "the start of the task")  # fmt: skip
            shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return chosen


def last_save(folder: str, root: str, required: list) -> str:
    """Where a resume would continue from, for messages: the newest intact checkpoint of `folder` (a task folder),
    else the end of the last finished task of the run in `root`, else the beginning."""
    for path in _checkpoints(folder):
        if folder_problem(path, required) is None:
            return f"the last intact save is {path}"
    finished = finished_tasks(root)
    if finished:
        return f"the last intact save is {task_dir(root, finished[-1])} (a finished task)"
    return "nothing was saved before it: a resume starts from task 1"


def save_step_records(folder: str, records: list) -> None:
    """A task's modulation records so far (one tensor per optimizer step), as safetensors."""
    save_file({"records": torch.stack(records).cpu().contiguous()}, os.path.join(folder, STEP_RECORDS_NAME))


def load_step_records(checkpoint: str | None, device) -> list:
    """The modulation records saved with `checkpoint` (safetensors: loading never runs code), or []."""
    path = os.path.join(checkpoint, STEP_RECORDS_NAME) if checkpoint is not None else None
    if path is None or not os.path.exists(path):
        return []
    return list(load_file(path, device=str(device))["records"])


def remove_checkpoints(out_dir: str) -> None:
    """A finished task's mid-task checkpoints and replay-phase folder: not needed any more."""
    for name in os.listdir(out_dir):
        if CHECKPOINT_PATTERN.fullmatch(name) or name == "replay":
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


# --------------------------------------------------------------------------------------- finished tasks
def save_task(out_dir: str, state: ContinualState, model, processor, tensors: dict, accelerator) -> None:
    """A finished task: model, processor, the strategy components' tensors (`tensors`, name -> tensor: EWC anchors and
    Fisher, DER++ logits), each process's random state, `saved_files.json`, then `continual_state.json` (atomic, last:
    it marks the task finished). Its mid-task checkpoints go after that."""
    with disk_full_is_named(out_dir, lambda: f"{out_dir} is not marked finished; its last checkpoint is kept. Free "
                            "some space, then continue with --resume_from_checkpoint true."):  # fmt: skip
        os.makedirs(out_dir, exist_ok=True)
        save_rng_state(os.path.join(out_dir, RNG_NAME.format(rank=accelerator.process_index)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            model.save_pretrained(out_dir)
            processor.save_pretrained(out_dir)
            if tensors:
                save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, os.path.join(out_dir, STRATEGY_STATE_NAME))
            write_manifest(out_dir, recursive=False)
            state.save(out_dir)
    if accelerator.is_main_process:
        remove_checkpoints(out_dir)
    accelerator.wait_for_everyone()


def load_task(task_folder: str, model, device) -> dict:
    """Load a finished task's weights into `model`; returns the strategy components' tensors ({} if none)."""
    model.load_state_dict(load_file(os.path.join(task_folder, "model.safetensors"), device=str(device)))
    path = os.path.join(task_folder, STRATEGY_STATE_NAME)
    return load_file(path, device=str(device)) if os.path.exists(path) else {}


# --------------------------------------------------------------------------------------- start or resume
def start_run(root: str, identity: dict, strategy: str, settings: dict, overwrite: bool, accelerator) -> None:
    """A new run in `root`. Over an existing run only with `overwrite` (`overwrite_output_dir`), which deletes the task
    folders this package wrote (`task-NN/` with its marker) and nothing else; a `task-NN/` it did not write is
    refused."""
    ours, foreign = task_folders(root)
    if (ours or foreign or read_run(root) is not None) and not overwrite:
        names = ", ".join(os.path.basename(p) for p in ours + foreign) or RUN_NAME
        raise ValueError(f"output_dir {root} holds a continual run ({names}): continue it with "
                         "--resume_from_checkpoint true, replace it with --overwrite_output_dir true (deletes its "
                         "task folders), or choose another output_dir.")  # fmt: skip
    if foreign:
        raise ValueError(f"output_dir {root}: {', '.join(os.path.basename(p) for p in foreign)} not written by "
                         f"this package (no {TASK_MARKER} inside), and a run writes its tasks there: move "
                         "it away or choose another output_dir.")  # fmt: skip
    accelerator.wait_for_everyone()  # every process has looked before anything is deleted
    if accelerator.is_main_process:
        if ours:
            logger.warning("overwrite_output_dir: deleting the %d task folders of the previous run in %s.",
                           len(ours), root)  # fmt: skip
        for path in ours:
            shutil.rmtree(path)
        write_run(root, identity, strategy, settings)
    accelerator.wait_for_everyone()


def resume_point(root: str, identity: dict, strategy: str, settings: dict, required: list):
    """(state after the last finished task or None, the finished task ids) for a resume of the run in `root` with these
    data, strategy and result-changing settings; refused when they differ from the run's, or when the last finished
    task is damaged or lacks a `required` file."""
    run = read_run(root)
    if run is None:
        raise ValueError(f"resume_from_checkpoint: {root} holds no continual run ({RUN_NAME} is missing).")
    ContinualState(benchmark=run["benchmark"], strategy=run["strategy"]).check_compatible(identity, strategy, root)
    check_settings(run.get("settings"), settings, root)
    finished = finished_tasks(root)
    if finished and finished != list(range(len(finished))):
        raise ValueError(f"{root}: finished task folders {finished} are not consecutive from task-00.")
    if not finished:
        return None, finished
    last_dir = task_dir(root, finished[-1])
    state = ContinualState.load(last_dir)
    state.check_compatible(identity, strategy, root)
    problem = folder_problem(last_dir, ["model.safetensors", *required])
    if problem:
        raise ValueError(f"{last_dir} is damaged ({problem}): delete it, and any later task folder, to redo "
                         "that task with --resume_from_checkpoint true, or start over with "
                         "--overwrite_output_dir true.")  # fmt: skip
    return state, finished


# ------------------------------------------------------------------------------------------- random states
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


def restore_task_start(last_dir: str, rank: int) -> None:
    """The random state the uninterrupted run had when it began the task after `last_dir` (saved when it finished)."""
    path = os.path.join(last_dir, RNG_NAME.format(rank=rank))
    if os.path.exists(path):
        load_rng_state(path)
    else:
        logger.warning("%s is missing (a run of an older version): the next task starts from another random "
                       "state than the uninterrupted run had, so its results differ slightly.", path)  # fmt: skip


# --------------------------------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def output_dir_locked(root: str, accelerator):
    """Hold `root`'s `RunLock` for the block (the main process holds it). Another run on the same output_dir is refused
    with the holder's pid and host, on every process; a lock left by a killed run is taken over."""
    lock, error = None, None
    if accelerator.is_main_process:
        lock = RunLock(root)
        try:
            lock.acquire()
        except RuntimeError as err:
            error = str(err)
    if accelerator.num_processes > 1:  # every process raises the same error
        error = broadcast_object_list([error])[0]
    if error:
        raise RuntimeError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


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
