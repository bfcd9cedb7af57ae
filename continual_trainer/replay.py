"""Per-label random replay memory (reference notes §5), selected per example (D9 fixed), seeded by (seed, task) so that every
rank and every resumed run picks the same examples. Pure: it stores indices into each task's training set."""

import numpy as np


class ReplayMemory:
    """Keeps at most `memory_per_label` training examples per label bucket of each task.

    A bucket is the relation for RE (so `None` has its own bucket) and the first entity type of the sentence, or
    "none", for NER, as in the reference. Nothing is ever evicted: the memory grows by one selection per task.
    """

    def __init__(self, memory_per_label: int, seed: int):
        self.memory_per_label = memory_per_label
        self.seed = seed
        self.indices: dict[int, list[int]] = {}  # task id -> selected row indices of that task's training set

    def add_task(self, task_id: int, buckets) -> list[int]:
        """Select from one task's training set, given each row's bucket. Returns the selected row indices (sorted)."""
        self.indices[task_id] = self.select(task_id, buckets)
        return self.indices[task_id]

    def select(self, task_id: int, buckets) -> list[int]:
        """The rows `add_task` keeps for this task, without keeping them: the draw depends on (seed, task) and the
        buckets only, so it is known before the task is trained (ER-ACE replays them during their own task)."""
        buckets = np.asarray(buckets)
        rng = np.random.default_rng([self.seed, task_id])
        chosen = []
        for bucket in np.unique(buckets):  # sorted, so the draw order does not depend on row order
            rows = np.flatnonzero(buckets == bucket)
            take = min(self.memory_per_label, len(rows))
            chosen.extend(rng.choice(rows, size=take, replace=False).tolist())
        return sorted(chosen)

    def __len__(self):
        return sum(len(v) for v in self.indices.values())

    def state_dict(self) -> dict:
        return {"memory_per_label": self.memory_per_label, "seed": self.seed,
                "indices": {str(k): v for k, v in self.indices.items()}}  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: dict) -> "ReplayMemory":
        memory = cls(state["memory_per_label"], state["seed"])
        memory.indices = {int(k): [int(i) for i in v] for k, v in state["indices"].items()}
        return memory
