"""The push of a continual run to one Hub model repo: the final model at the root of a branch, each task in a
subfolder or on its own branch (`push_run_to_hub`), each finished task pushed as it is saved with
`--hub_strategy every_save` (`TaskPushCallback`), the repo id resolved and the token checked before a run starts
(`resolve_hub_repo_id`), timeouts and retries, and the call that pushes a run again when a push failed.
"""

import glob
import json
import logging
import os
import re
import shlex
import time
from contextlib import contextmanager

from transformers import TrainerCallback

from .state import RUN_NAME

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"  # the Hub's model card file
TASK_DIR_PATTERN = re.compile(r"task-\d+")
TASK_LAYOUTS = ("subfolders", "branches")
HUB_STRATEGIES = ("end", "every_save")  # what the example scripts push: at the end; also after every finished task
DEFAULT_COMMIT_MESSAGE = "Upload MSPT continual run"
# Answers worth another attempt: timeouts, rate limits and server errors (a refusal such as 401/403/404 is final).
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_MAX_RETRY_WAIT = 60.0


class HubPushError(RuntimeError):
    """A push of a run to the Hub failed: the server refused it, or it timed out / failed on every attempt. Nothing in
    the output directory was changed; the message says how to push it again."""


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


def task_branch(task_dir: str, revision: str | None = None) -> str:
    """The branch that holds the model of `task_dir` ("task-03") in the "branches" layout: the folder's name, prefixed
    with the final model's branch when that is not main (`v2-task-03`), so two runs on two branches stay apart."""
    return task_dir if revision in (None, "main") else f"{revision}-{task_dir}"


def check_layout(task_layout: str) -> None:
    if task_layout not in TASK_LAYOUTS:
        raise ValueError(f"`task_layout` must be one of {TASK_LAYOUTS}, got {task_layout!r}.")


def push_run_to_hub(output_dir: str, repo_id: str, token: str | None = None, private: bool | None = None,
                    commit_message: str = DEFAULT_COMMIT_MESSAGE, endpoint: str | None = None,
                    timeout: float = 60.0, retries: int = 3, retry_wait: float = 2.0, revision: str | None = None,
                    task_layout: str = "subfolders"):  # fmt: skip
    """Upload a continual run to one Hub model repo.

    Layout of the repo: the root of branch `revision` (main when None; created from main if it does not exist) holds
    what is at the root of `output_dir` (the final model and processor, the card `README.md`, `results.json`,
    `all_results.json`, the plots, `continual_run.json`). Each per-task checkpoint `task-XX/`:

    - `task_layout="subfolders"`: becomes a subfolder of that branch, in the same commit (one `upload_folder`):
      `from_pretrained(repo_id, subfolder="task-00", trust_remote_code=True)` loads the model after task 1;
    - `task_layout="branches"`: becomes the root of its own branch `task_branch("task-XX", revision)` (created from
      main, then holding exactly the task's files), one commit per task before the final model's:
      `from_pretrained(repo_id, revision="task-00", trust_remote_code=True)` loads it.

    Mid-task `checkpoint-*` folders, `*.tmp` files and other folders at the root are not uploaded (see `run_files`).
    Tasks pushed before (`TaskPushCallback`) are uploaded again: the repo ends the same as after a single push.

    Every HTTP request of the push gives up after `timeout` seconds without progress (huggingface_hub's own client
    waits forever on a server that accepts and never answers). A timeout, a connection error or a 408/429/5xx answer
    starts the whole push again (creating the repo and re-uploading the same files is harmless), after `retry_wait`,
    then twice as long each time (at most 60 s), `retries` times. When it still fails, or the Hub refuses the push,
    `HubPushError` says how to push the untouched `output_dir` again.

    Args:
        token: a Hub token with write access; the locally saved one when None.
        private: visibility of the repo if it has to be created; an existing repo keeps its own.
        revision: the branch of the final model (and of the task subfolders); main when None.
        task_layout: "subfolders" or "branches", see above.
        endpoint: the Hub URL (for a private Hub or a test server); `HF_ENDPOINT` when None.
        timeout: seconds without progress (connect, send, receive) before a request is abandoned. While the push
            runs, other huggingface_hub requests of this process use the same timeout.
        retries: further attempts after the first one fails with a timeout, a network error or a 408/429/5xx.
        retry_wait: seconds before the first retry.

    Returns:
        The `huggingface_hub.CommitInfo` of the final model's upload (`commit_url`, `oid`).

    Raises:
        HubPushError: the Hub refused the push, or every attempt failed.
    """
    from huggingface_hub import HfApi

    _check_retries(timeout, retries, retry_wait)
    check_layout(task_layout)
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
    final = revision or "main"

    def push():
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if task_layout == "branches":  # each task's own branch first: main is still as it was (empty when new)
            for task in tasks:
                _push_task_branch(api, repo, output_dir, task, files, revision, commit_message)
        if final != "main":
            api.create_branch(repo, branch=final, exist_ok=True, repo_type="model")
        pushed = files if task_layout == "subfolders" else sorted(root)
        logger.info("Uploading %d files (%s) to branch %s of %s", len(pushed),
                    "root and " + ", ".join(tasks) if task_layout == "subfolders" else "root", final, repo)
        return api.upload_folder(
            repo_id=repo,
            folder_path=output_dir,
            allow_patterns=[glob.escape(f) for f in pushed],  # exactly the files listed, nothing matched by accident
            commit_message=commit_message,
            revision=final,
            repo_type="model",
        )

    again = _repush_instructions(output_dir, repo_id, private, commit_message, endpoint, revision, task_layout)
    return _with_retries(push, f"Pushing {output_dir} to the Hub repo {repo_id!r}", again, timeout, retries,
                         retry_wait)  # fmt: skip


def push_task_to_hub(task_dir: str, repo_id: str, token: str | None = None, private: bool | None = None,
                     commit_message: str = DEFAULT_COMMIT_MESSAGE, endpoint: str | None = None,
                     timeout: float = 60.0, retries: int = 3, retry_wait: float = 2.0, revision: str | None = None,
                     task_layout: str = "subfolders"):  # fmt: skip
    """Upload one finished task folder `output_dir/task-XX` of a run where `push_run_to_hub` puts it: to `task-XX/`
    of branch `revision` (main when None) in the "subfolders" layout, to the root of its own branch
    `task_branch("task-XX", revision)` in the "branches" layout. Nothing else of the repo changes. Same arguments,
    timeouts and retries as `push_run_to_hub`.

    Raises:
        HubPushError: the Hub refused the push, or every attempt failed.
    """
    from huggingface_hub import HfApi

    _check_retries(timeout, retries, retry_wait)
    check_layout(task_layout)
    output_dir, task = os.path.split(os.path.normpath(task_dir))
    if not TASK_DIR_PATTERN.fullmatch(task):
        raise ValueError(f"{task_dir} is not a task-XX folder of a continual run.")
    files = [f for f in run_files(output_dir) if f.startswith(task + "/")]
    api = HfApi(endpoint=endpoint, token=token)
    final = revision or "main"

    def push():
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if task_layout == "branches":
            return _push_task_branch(api, repo, output_dir, task, files, revision, commit_message)
        if final != "main":
            api.create_branch(repo, branch=final, exist_ok=True, repo_type="model")
        logger.info("Uploading %s to %s/ of branch %s of %s", task, task, final, repo)
        return api.upload_folder(repo_id=repo, folder_path=output_dir, allow_patterns=[glob.escape(f) for f in files],
                                 commit_message=f"{commit_message}: {task}", revision=final,
                                 repo_type="model")  # fmt: skip

    again = _repush_instructions(output_dir, repo_id, private, commit_message, endpoint, revision, task_layout,
                                 finished=False)
    return _with_retries(push, f"Pushing {task_dir} to the Hub repo {repo_id!r}", again, timeout, retries,
                         retry_wait)  # fmt: skip


class TaskPushCallback(TrainerCallback):
    """`--hub_strategy every_save` for a continual run: after each finished task is saved (the trainer's
    `on_task_end` event), the main process pushes its `task-XX` folder (`push_task_to_hub`, the keyword arguments
    of `push_run_to_hub` given here). A failed push is a warning with the error, never the end of training: the push
    of the whole run at the end uploads every task again. Mid-task `checkpoint-*` folders are never pushed."""

    def __init__(self, **hub):
        self.hub = hub
        self.failed: list[str] = []  # the task folders whose push failed

    def on_task_end(self, args, state, control, task_dir=None, **kwargs):
        if not state.is_world_process_zero or task_dir is None:
            return
        try:
            push_task_to_hub(task_dir, **self.hub)
        except HubPushError as err:
            self.failed.append(os.path.basename(os.path.normpath(task_dir)))
            logger.warning("Training goes on without this task on the Hub: %s", err)


def resolve_hub_repo_id(hub_model_id: str | None, output_dir: str, token: str | None = None,
                        endpoint: str | None = None, timeout: float = 30.0) -> str:  # fmt: skip
    """The full id (`namespace/name`) of the repo a run will be pushed to, resolved and checked before the run starts
    so that a bad Hub setting fails in seconds, not after training. As transformers' `Trainer` does: the name is
    `hub_model_id`, or the output_dir's folder name when None; a name without a namespace goes to the token's user.
    The token (`token`, else `HF_TOKEN` or the one saved by `hf auth login`) must exist, be accepted by the Hub's
    `whoami` and not be read-only.

    Raises:
        ValueError: no token, a refused or read-only token, an invalid repo id, or a Hub that cannot be reached; the
            message names the argument to fix (`--hub_token`, `--hub_model_id`) or says how to push later.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    later = ("Or train without --push_to_hub and push the output_dir afterwards with "
             "`continual_trainer.push_run_to_hub(output_dir, repo_id)`.")  # fmt: skip
    token = token or get_token()
    if not token:
        raise ValueError("--push_to_hub true needs a Hub token with write access and none was found: pass "
                         f"--hub_token, set HF_TOKEN or run `hf auth login`. {later}")  # fmt: skip
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with _hub_timeout(timeout):
            me = api.whoami(cache=True)
    except Exception as err:
        if _is_transient(err) is None:
            raise
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            what = "The Hub refused the token (401): give a valid write token (--hub_token, HF_TOKEN, `hf auth login`)."
        elif status is not None:
            what = f"The Hub at {api.endpoint} answered {status} when asked whose the token is; try again later."
        else:
            what = (f"The Hub at {api.endpoint} could not be reached to check the token and resolve the repo id "
                    "(HF_HUB_OFFLINE set? no network?).")  # fmt: skip
        raise ValueError(f"--push_to_hub true: {what} ({type(err).__name__}: {err}) {later}") from err
    role = me.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise ValueError(f"--push_to_hub true: the Hub token of {me.get('name')!r} is read-only; give a write token "
                         f"with --hub_token, HF_TOKEN or `hf auth login`. {later}")  # fmt: skip
    name = hub_model_id or os.path.basename(os.path.abspath(output_dir))
    repo_id = name if "/" in name else f"{me['name']}/{name}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        source = "--hub_model_id" if hub_model_id else f"the output_dir's folder name ({name!r}, the default)"
        raise ValueError(f"--push_to_hub true: {source} gives the repo id {repo_id!r}, which the Hub does not accept "
                         f"({err}). Pass --hub_model_id namespace/name.") from err  # fmt: skip
    return repo_id


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


def _repush_instructions(output_dir, repo_id, private, commit_message, endpoint, revision=None,
                         task_layout="subfolders", finished=True) -> str:  # fmt: skip
    arguments = [os.path.abspath(output_dir), repo_id]
    options = {"private": private, "endpoint": endpoint, "revision": revision,
               "task_layout": None if task_layout == "subfolders" else task_layout}  # fmt: skip
    if commit_message != DEFAULT_COMMIT_MESSAGE:
        options["commit_message"] = commit_message
    python = ", ".join([*map(repr, arguments), *(f"{k}={v!r}" for k, v in options.items() if v is not None)])
    shell = ", ".join([*map(json.dumps, arguments),
                       *(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in options.items()
                         if v is not None)])  # fmt: skip
    code = f"from continual_trainer import push_run_to_hub; push_run_to_hub({shell})"
    state = ("is complete on disk and was not changed. Push it again" if finished else
             "is training; the push of the whole run at the end uploads every task again. If that one fails too, "
             "push the run once it is finished")  # fmt: skip
    return (
        f"The run in {os.path.abspath(output_dir)} {state}, with a write token in HF_TOKEN (or after `hf auth login`), from Python:\n"
        f"    from continual_trainer import push_run_to_hub; push_run_to_hub({python})\n"
        f"or from a shell:\n    python -c {shlex.quote(code)}"
    )


def _push_task_branch(api, repo: str, output_dir: str, task: str, files: list[str], revision, commit_message):
    """Make branch `task_branch(task, revision)` (from main) hold exactly the files of `output_dir/task`."""
    branch = task_branch(task, revision)
    task_files = [f[len(task) + 1 :] for f in files if f.startswith(task + "/")]
    api.create_branch(repo, branch=branch, exist_ok=True, repo_type="model")
    logger.info("Uploading %s to branch %s of %s", task, branch, repo)
    return api.upload_folder(repo_id=repo, folder_path=os.path.join(output_dir, task),
                             allow_patterns=[glob.escape(f) for f in task_files],
                             delete_patterns="*",  # the branch holds the task's files only (main's were copied)
                             commit_message=f"{commit_message}: {task}", revision=branch,
                             repo_type="model")  # fmt: skip


def _check_retries(timeout, retries, retry_wait) -> None:
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}.")
    if not (isinstance(retries, int) and retries >= 0):
        raise ValueError(f"`retries` must be an integer >= 0, got {retries!r}.")
    if not (isinstance(retry_wait, (int, float)) and retry_wait >= 0):
        raise ValueError(f"`retry_wait` must be a number of seconds >= 0, got {retry_wait!r}.")


def _with_retries(push, what: str, again: str, timeout: float, retries: int, retry_wait: float):
    """`push()` under a request timeout, again after a transient failure (backoff), else `HubPushError`."""
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
                    f"{what} failed after {attempts} ({type(err).__name__}: {err}). {again}"
                ) from err
            wait = min(retry_wait * 2**attempt, _MAX_RETRY_WAIT)
            logger.warning("Hub push attempt %d of %d failed (%s: %s); retrying in %.1f s.", attempt + 1,
                           retries + 1, type(err).__name__, err, wait)  # fmt: skip
            time.sleep(wait)
