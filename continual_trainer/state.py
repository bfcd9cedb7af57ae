"""What a continual run carries from task to task, saved with each finished task as `task-XX/continual_state.json`.

The file is written last, atomically, after the task's model: its presence marks the task as finished.
"""

import json
import os
from dataclasses import asdict, dataclass, field

STATE_NAME = "continual_state.json"
RUN_NAME = "continual_run.json"  # written at the start of a run: what it trains on, checked by a resume
STATE_VERSION = 1


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
    version: int = STATE_VERSION

    def save(self, directory: str) -> None:
        path = os.path.join(directory, STATE_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)
        os.replace(tmp, path)

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


def finished_tasks(root: str) -> list[int]:
    """Task ids whose state file exists under `root`, sorted."""
    if not os.path.isdir(root):
        return []
    ids = []
    for name in os.listdir(root):
        if name.startswith("task-") and os.path.exists(os.path.join(root, name, STATE_NAME)):
            ids.append(int(name[5:]))
    return sorted(ids)


def write_run(root: str, benchmark: dict, strategy: str) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, RUN_NAME), "w", encoding="utf-8") as f:
        json.dump({"benchmark": benchmark, "strategy": strategy}, f, indent=1)


def read_run(root: str) -> dict | None:
    path = os.path.join(root, RUN_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable or corrupt ({err}); start a new output_dir.") from err
