"""Turns raw benchmark rows (datasets_scripts features) into model inputs with the MSPTProcessor, batch by batch."""

import logging

import datasets
import torch
from PIL import Image

from modeling_mspt.processing_mspt import image_reference, load_image

from .teacher_cache import ROW_INDEX

logger = logging.getLogger(__name__)


class MSPTDataCollator:
    """RE rows: `tokens`, `head_start/end`, `tail_start/end`, `relation`, `image`. NER rows: `tokens`, `ner_tags`,
    `image`. With `with_task_ids`, the batch also carries `task_id` (popped by the evaluation loop, never fed to
    the model). Rows with a `row_index` (the trainer's teacher cache, `teacher_cache.ROW_INDEX`) pass it on; the
    trainer pops it before the model's forward. Object crops (`aux_images`) go in when the processor takes them.

    An image is a PIL image (rows decoded by `datasets`), a path or a `{"bytes", "path"}` dict (rows read with
    `datasets.Image(decode=False)`: decoded here), or `None`. One that cannot be read never stops the run: it is fed
    as a zero image with `image_mask=0`, recorded in `unreadable_images` (reference -> reason) and warned about once
    per file, with the running count. `undecoded(dataset)` gives a dataset whose rows reach it that way."""

    def __init__(self, processor, task_type: str, with_task_ids: bool = False):
        if task_type not in ("re", "ner"):
            raise ValueError(f"`task_type` must be 're' or 'ner', got {task_type!r}.")
        self.processor, self.task_type, self.with_task_ids = processor, task_type, with_task_ids
        self.unreadable_images: dict[str, str] = {}

    def undecoded(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """`dataset` with its images left undecoded (`datasets.Image(decode=False)`), for a DataLoader feeding this
        collator: images are then decoded here, so a file that broke after the benchmark was built (overwritten,
        deleted) is a zero image, not an exception in the DataLoader's fetch that stops the run. Object crops
        (`aux_images`) likewise when the processor takes them; otherwise the column is dropped (never decoded)."""
        features = getattr(dataset, "features", None)
        if features is None:  # not a `datasets.Dataset`: its rows are what they are
            return dataset
        if isinstance(features.get("image"), datasets.Image) and features["image"].decode:
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        crops = features.get("aux_images")
        if crops is not None and not getattr(self.processor, "num_aux_images", 0):
            dataset = dataset.remove_columns("aux_images")
        elif isinstance(getattr(crops, "feature", None), datasets.Image) and crops.feature.decode:
            dataset = dataset.cast_column("aux_images", datasets.List(datasets.Image(decode=False)))
        return dataset

    def __call__(self, rows: list[dict]) -> dict:
        words = [row["tokens"] for row in rows]
        images = [self._load(row.get("image")) for row in rows]
        kwargs = {}
        if getattr(self.processor, "num_aux_images", 0) and "aux_images" in rows[0]:
            kwargs["aux_images"] = [[self._load(c) for c in row["aux_images"] or []] for row in rows]
        if self.task_type == "re":
            batch = self.processor(
                words, images=images,
                head_spans=[(row["head_start"], row["head_end"]) for row in rows],
                tail_spans=[(row["tail_start"], row["tail_end"]) for row in rows],
                labels=[row["relation"] for row in rows], **kwargs,
            )  # fmt: skip
        else:
            batch = self.processor(words, images=images, word_labels=[row["ner_tags"] for row in rows], **kwargs)
        batch = dict(batch)
        if ROW_INDEX in rows[0]:
            batch[ROW_INDEX] = torch.tensor([row[ROW_INDEX] for row in rows])
        if self.with_task_ids:
            batch["task_id"] = torch.tensor([row["task_id"] for row in rows])
        return batch

    def _load(self, image):
        """A decoded image, or `None` (absent, or unreadable: recorded and warned about once). PIL images (rows that
        `datasets` decoded) pass through: the processor converts them."""
        if image is None or isinstance(image, Image.Image):
            return image
        decoded = load_image(image)
        if decoded.problem:
            where = image_reference(image)
            if where not in self.unreadable_images:
                self.unreadable_images[where] = decoded.problem
                logger.warning("unreadable image (%d so far): %s: %s; fed as a zero image with image_mask=0",
                               len(self.unreadable_images), where, decoded.problem)  # fmt: skip
        return decoded.image
