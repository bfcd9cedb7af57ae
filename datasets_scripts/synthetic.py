"""Synthetic multimodal benchmark: PIL-drawn images plus sentences, deterministic per seed, in seconds.

Each task ``k`` owns a 2 x C grid. The rows are two text cues of its own (RE: the verb between the
two entities; NER: the title word just before the name); the columns are C shapes, one of which is
drawn large in the image (random colour, size, position, distractor dots). Each cell holds one of
the task's ``labels_per_task`` new labels or the no-label (RE: ``None``; NER: the name is not an
entity, all ``O``), e.g. for 3 labels a task reads::

                 circle      square
    "meets"      /t0/meets/circle   /t0/meets/square
    "joins"      /t0/joins/circle   None

Every row and every column holds two or more different labels, so within a task the text alone or
the image alone leaves at least two cells possible (with the defaults and no reversed RE pairs the
best single-modality accuracy on the final test set is 1/2 from the text and 3/8 from the image), while both together
decide the label. Late fusion is enough: a label scores 2 when both its cues are present and at
most 1 otherwise, the no-label 1.5, so a linear head on ``[text features ; image features]``, the
head MSPT uses, can reach 100%. ``probe.probe_modalities`` measures the three accuracies.

Relations are directed: a fraction ``reversed_rate`` (default 0.2) of the RE examples swap the head
and tail markers of the sentence and are labelled ``None``, whatever their cell, so a model must read
the markers' order (this lifts the text-only ceiling to ``r + (1 - r) / 2`` = 0.6). Half the NER
sentences name a second titled person (``... with TITLE NAME``) whose type follows the same grid,
with the same image, so a sentence can hold two entities, as knowledge-graph posts do
(``datasets_scripts/posts.py``); a name after ``with`` without a title is never an entity.

RE test sets are cumulative (tasks ``0..k``, like IMRE); every NER test set holds all tasks' test
sentences with the types of later tasks tagged ``O`` (like IMNER).
"""

import io
import logging
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw

from .common import SPLITS, bio_labels, ner_features, re_features, split_name

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
VERBS = ("meets", "joins", "visits", "hires", "praises", "calls", "thanks", "follows", "leads", "helps",
         "sues", "backs", "greets", "signs", "funds", "blames", "hosts", "admires", "beats", "invites")
TITLES = ("coach", "mayor", "agent", "judge", "doctor", "pilot", "chef", "senator", "captain", "singer",
          "author", "banker", "nurse", "sheriff", "dean", "admiral", "bishop", "editor", "ranger", "consul")
FIRST = ("Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Milo",
         "Nia", "Oto", "Pia", "Quin", "Rae", "Sol", "Tess", "Uma", "Vic", "Wes", "Xia", "Yuri", "Zoe")
LAST = ("Abe", "Berg", "Cruz", "Diaz", "Egan", "Fox", "Grant", "Hale", "Ito", "Jain", "Khan", "Lund",
        "Moss", "Noor", "Ortiz", "Park", "Reyes", "Stone", "Tran", "Vogel")
FILLER = ("today", "news", "wow", "look", "the", "event", "photo", "yesterday", "in", "town", "big", "day",
          "live", "update", "#news", "via", "@user", "!", ".", "great", "again", "RT", ":", "so")
PALETTE = ((200, 30, 30), (30, 120, 40), (30, 60, 200), (150, 40, 160), (220, 120, 0), (0, 140, 150),
           (90, 90, 90), (120, 70, 20))


@dataclass
class SyntheticConfig(datasets.BuilderConfig):
    """Synthetic task stream (configs ``re`` and ``ner``).

    Args:
        seed (`int`): the same seed gives the same data, byte for byte.
        num_tasks (`int`): number of tasks (each adds ``labels_per_task`` labels).
        labels_per_task (`int`): new relations / entity types per task, at least 2.
        train_per_task, validation_per_task, test_per_task (`int`): examples generated per task.
        image_size (`int`): side of the square RGB images in pixels.
        missing_image_rate (`float`): fraction of examples left without image (``image=None``),
            to exercise the missing-image path downstream.
        reversed_rate (`float`): RE only: fraction of examples whose head and tail are swapped and
            labelled ``None`` (relations are directed).
    """

    seed: int = 0
    num_tasks: int = 4
    labels_per_task: int = 3
    train_per_task: int = 400
    validation_per_task: int = 100
    test_per_task: int = 100
    image_size: int = 32
    missing_image_rate: float = 0.0
    reversed_rate: float = 0.2

    def validate(self):
        """Range checks (``datasets`` sets overriding kwargs after ``__post_init__``, so the builder calls this)."""
        cues = len(VERBS if self.name == "re" else TITLES)
        if not 1 <= self.num_tasks <= cues // 2:
            raise ValueError(f"num_tasks={self.num_tasks}: use 1..{cues // 2} (two text cues per task)")
        if not 2 <= self.labels_per_task <= 2 * len(SHAPES) - 1:
            raise ValueError(f"labels_per_task={self.labels_per_task}: use 2..{2 * len(SHAPES) - 1} "
                             "(with 1 label the image could not matter)")
        for size in ("train_per_task", "validation_per_task", "test_per_task"):
            if getattr(self, size) < 1:
                raise ValueError(f"{size}={getattr(self, size)}: must be at least 1")
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size}: use 16 or more so the shapes stay recognisable")
        if not 0.0 <= self.missing_image_rate < 1.0:
            raise ValueError(f"missing_image_rate={self.missing_image_rate}: must be in [0, 1)")
        if not 0.0 <= self.reversed_rate < 1.0:
            raise ValueError(f"reversed_rate={self.reversed_rate}: must be in [0, 1)")


def task_grid(task_id: int, labels_per_task: int, flavour: str) -> list[tuple[str, str, int | None]]:
    """Cells ``(text cue, shape, label index within the task or None)`` of task ``task_id``.

    2 rows x C columns, C = ceil((labels_per_task + 1) / 2); the one or two no-label cells sit at
    (row 1, last column) and (row 0, second-to-last column), so every row and column is ambiguous.
    """
    cols = (labels_per_task + 2) // 2
    no_label = {(1, cols - 1)} | ({(0, cols - 2)} if 2 * cols - labels_per_task == 2 else set())
    cues = (VERBS if flavour == "re" else TITLES)[2 * task_id: 2 * task_id + 2]
    num_shapes = max(4, cols)
    cells, label = [], 0
    for row in range(2):
        for col in range(cols):
            shape = SHAPES[(task_id * cols + col) % num_shapes]
            if (row, col) in no_label:
                cells.append((cues[row], shape, None))
            else:
                cells.append((cues[row], shape, label))
                label += 1
    return cells


def label_of(task_id: int, cue: str, shape: str, flavour: str) -> str:
    return f"/t{task_id}/{cue}/{shape}" if flavour == "re" else f"T{task_id}_{cue}_{shape}".upper()


def draw_image(rng: np.random.Generator, shape: str, size: int) -> bytes:
    """A light background, 0-2 distractor dots and one large ``shape`` in a random colour, as PNG."""
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(205, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 3))):
        x, y, r = *rng.integers(0, size, 2), max(1, size // 16)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=PALETTE[int(rng.integers(len(PALETTE)))])
    side = int(size * rng.uniform(0.45, 0.7))
    x0, y0 = (int(v) for v in rng.integers(1, size - side, 2))
    x1, y1, cx, cy = x0 + side, y0 + side, x0 + side // 2, y0 + side // 2
    color = PALETTE[int(rng.integers(len(PALETTE)))]
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "cross":
        arm = max(2, side // 3)
        draw.rectangle((cx - arm // 2, y0, cx + arm // 2, y1), fill=color)
        draw.rectangle((x0, cy - arm // 2, x1, cy + arm // 2), fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    else:  # ring
        draw.ellipse((x0, y0, x1, y1), outline=color, width=max(2, side // 5))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _name(rng: np.random.Generator, avoid: str = "") -> list[str]:
    while True:
        words = [FIRST[int(rng.integers(len(FIRST)))]] + ([LAST[int(rng.integers(len(LAST)))]] if rng.random() < 0.5 else [])
        if " ".join(words) != avoid:
            return words


def _filler(rng: np.random.Generator, most: int) -> list[str]:
    return [FILLER[int(i)] for i in rng.integers(0, len(FILLER), int(rng.integers(0, most + 1)))]


def re_sentence(rng: np.random.Generator, verb: str, reverse: bool = False) -> dict:
    """``[filler] [title] head verb [title] tail [filler]`` or ``[filler] with [title] tail , [title] head verb [filler]``.

    The optional title words (any of ``TITLES``, half the time each) carry no label: they make RE sentences
    read like the posts of ``posts.py``, where NER needs them. ``reverse``: the verb's object gets the head
    markers and its subject the tail markers.
    """
    head = _name(rng)
    tail = _name(rng, avoid=" ".join(head))
    head_title, tail_title = ([TITLES[int(rng.integers(len(TITLES)))]] if rng.random() < 0.5 else [] for _ in "ht")
    prefix = _filler(rng, 3)
    if rng.random() < 0.5:
        tokens = prefix + head_title + head + [verb] + tail_title + tail
        head_start = len(prefix) + len(head_title)
        tail_start = head_start + len(head) + 1 + len(tail_title)
    else:
        tokens = prefix + ["with"] + tail_title + tail + [","] + head_title + head + [verb]
        tail_start = len(prefix) + 1 + len(tail_title)
        head_start = tail_start + len(tail) + 1 + len(head_title)
    tokens += _filler(rng, 3)
    if reverse:
        head, tail, head_start, tail_start = tail, head, tail_start, head_start
    return {"tokens": tokens,
            "head_name": " ".join(head), "head_start": head_start, "head_end": head_start + len(head),
            "tail_name": " ".join(tail), "tail_start": tail_start, "tail_end": tail_start + len(tail)}


def _tagged(name: list[str], entity_type: str | None) -> list[str]:
    return ["O"] * len(name) if entity_type is None else [f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(name) - 1)


def ner_sentence(rng: np.random.Generator, title: str, entity_type: str | None,
                 second: tuple[str, str | None] | None = None) -> dict:
    """``[filler] title NAME [filler] [with (TITLE2 NAME2 | OTHER-NAME)] [filler]``.

    NAME is typed ``entity_type``; ``second = (TITLE2, type)`` adds ``with TITLE2 NAME2`` typed ``type``;
    otherwise, half the time, an untitled name follows ``with`` and is never an entity.
    """
    name = _name(rng)
    tokens = _filler(rng, 2) + [title] + name
    tags = ["O"] * (len(tokens) - len(name)) + _tagged(name, entity_type)
    middle = _filler(rng, 2)
    tokens, tags = tokens + middle, tags + ["O"] * len(middle)
    if second is not None:
        other = _name(rng, avoid=" ".join(name))
        tokens, tags = tokens + ["with", second[0]] + other, tags + ["O", "O"] + _tagged(other, second[1])
    elif rng.random() < 0.5:  # a distractor name that never is an entity
        other = ["with"] + _name(rng, avoid=" ".join(name))
        tokens, tags = tokens + other, tags + ["O"] * len(other)
    suffix = _filler(rng, 2)
    return {"tokens": tokens + suffix, "ner_tags": tags + ["O"] * len(suffix)}


class Synthetic(datasets.GeneratorBasedBuilder):
    """Generated task stream whose labels need the text and the image together."""

    BUILDER_CONFIG_CLASS = SyntheticConfig
    BUILDER_CONFIGS = [
        SyntheticConfig(name="re", version=datasets.Version("1.1.0"), description="relation extraction"),
        SyntheticConfig(name="ner", version=datasets.Version("1.1.0"), description="named-entity recognition"),
    ]
    DEFAULT_CONFIG_NAME = "re"

    @property
    def task_type(self) -> str:
        return self.config.name

    def image_path(self, split: str, image_id: str) -> str:
        return f"synthetic://{image_id}"

    def source_files(self) -> tuple[list[str], list[str]]:
        if self.config.data_dir:
            raise ValueError("the synthetic benchmark is generated; it takes no data_dir")
        return [], []

    def _labels(self) -> list[str]:
        """Task-ordered new labels; RE: relation names, NER: entity types."""
        c = self.config
        return [label_of(k, cue, shape, c.name)
                for k in range(c.num_tasks)
                for cue, shape, j in task_grid(k, c.labels_per_task, c.name) if j is not None]

    def _info(self) -> datasets.DatasetInfo:
        self.config.validate()
        if self.config.name == "re":
            return datasets.DatasetInfo(description=__doc__, features=re_features(["None"] + self._labels()))
        return datasets.DatasetInfo(description=__doc__, features=ner_features(bio_labels(self._labels())))

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=split_name(split, k), gen_kwargs={"split": split, "task_id": k})
                for k in range(self.config.num_tasks) for split in SPLITS]

    def _generate_examples(self, split: str, task_id: int):
        c = self.config
        if split != "test":
            sources = [task_id]
        else:  # RE: tasks 0..k; NER: every task, later types untagged
            sources = range(task_id + 1) if c.name == "re" else range(c.num_tasks)
        for source in sources:
            for i, example in enumerate(self._task_examples(split, source)):
                if c.name == "ner" and source > task_id:
                    example["ner_tags"] = ["O"] * len(example["tokens"])
                yield f"{source}-{i}", example

    def _task_examples(self, split: str, task_id: int):
        """The examples task ``task_id`` contributes to ``split``: the same for every caller."""
        c = self.config
        count = getattr(c, f"{split}_per_task")
        rng = np.random.default_rng([c.seed, ("re", "ner").index(c.name), SPLITS.index(split), task_id])
        cells = task_grid(task_id, c.labels_per_task, c.name)
        order = rng.permutation(np.arange(count) % len(cells))  # balanced over the cells
        for i, cell in enumerate(order):
            cue, shape, j = cells[int(cell)]
            label = None if j is None else label_of(task_id, cue, shape, c.name)
            if c.name == "re":
                reverse = bool(rng.random() < c.reversed_rate)
                example = re_sentence(rng, cue, reverse) | {"relation": "None" if reverse or label is None else label,
                                                            "aux_images": []}
            else:
                second = None
                if rng.random() < 0.5:  # a second titled person in the same image (§ module docstring)
                    title = cells[int(rng.integers(len(cells)))][0]
                    j2 = next(j for cue2, shape2, j in cells if (cue2, shape2) == (title, shape))
                    second = (title, None if j2 is None else label_of(task_id, title, shape, c.name))
                example = ner_sentence(rng, cue, label, second)
            png = draw_image(rng, shape, c.image_size)
            image_id = f"{c.name}-{c.seed}-{split}-{task_id}-{i}.png"
            keep = rng.random() >= c.missing_image_rate
            yield example | {"image": {"path": None, "bytes": png} if keep else None,
                             "image_id": image_id, "task_id": task_id}
