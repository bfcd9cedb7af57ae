"""Turns raw benchmark rows (datasets_scripts features) into model inputs with the MSPTProcessor, batch by batch."""

import torch

from .teacher_cache import ROW_INDEX


class MSPTDataCollator:
    """RE rows: `tokens`, `head_start/end`, `tail_start/end`, `relation`, `image`. NER rows: `tokens`, `ner_tags`,
    `image`. With `with_task_ids`, the batch also carries `task_id` (popped by the evaluation loop, never fed to
    the model). Rows with a `row_index` (the trainer's teacher cache, `teacher_cache.ROW_INDEX`) pass it on; the
    trainer pops it before the model's forward."""

    def __init__(self, processor, task_type: str, with_task_ids: bool = False):
        if task_type not in ("re", "ner"):
            raise ValueError(f"`task_type` must be 're' or 'ner', got {task_type!r}.")
        self.processor, self.task_type, self.with_task_ids = processor, task_type, with_task_ids

    def __call__(self, rows: list[dict]) -> dict:
        words = [row["tokens"] for row in rows]
        images = [row.get("image") for row in rows]
        if self.task_type == "re":
            batch = self.processor(
                words, images=images,
                head_spans=[(row["head_start"], row["head_end"]) for row in rows],
                tail_spans=[(row["tail_start"], row["tail_end"]) for row in rows],
                labels=[row["relation"] for row in rows],
            )  # fmt: skip
        else:
            batch = self.processor(words, images=images, word_labels=[row["ner_tags"] for row in rows])
        batch = dict(batch)
        if ROW_INDEX in rows[0]:
            batch[ROW_INDEX] = torch.tensor([row[ROW_INDEX] for row in rows])
        if self.with_task_ids:
            batch["task_id"] = torch.tensor([row["task_id"] for row in rows])
        return batch
