"""Posts for knowledge-graph construction: reading them from disk, and synthetic posts whose truth is known.

A post is a dict ``{"id": str, "text": str, "image": path | PIL.Image | None}``; this is what
``modeling_mspt.MSPTKnowledgeGraphPipeline`` takes.

- ``read_posts(path)``: a JSON Lines file (one ``{id, text, image}`` per line, ``image`` a path relative to the
  file, optional ``entity_spans``) or a directory of ``<stem>.txt`` files with an image of the same stem. Bad lines
  do not stop the reading: they come back as ``PostError`` records naming the file, the line and the id when it
  could be read; so do bad ``entity_spans`` and a repeated id (ids name the posts in the graph).
- ``synthetic_posts(n, ...)``: ``[filler] TITLE1 NAME1 VERB TITLE2 NAME2 [filler]`` and an image of one large
  shape, built from the synthetic benchmark's task grids (``synthetic.task_grid``), so their entities and triples
  follow from the same rules the NER and RE models of the demo runs learned: NAME_i is an entity of type
  ``label_of(k, TITLE_i, shape, "ner")`` when that cell of task k's NER grid has a type, and
  ``(NAME1, label_of(k, VERB, shape, "re"), NAME2)`` is a triple when the RE cell has a relation and both names are
  entities. The RE benchmark always puts the verb's subject in the head slot, so only that direction is true.
"""

import io
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .synthetic import _filler, _name, draw_image, label_of, task_grid

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclass
class PostError:
    """A post that could not be read: ``id`` when known (else ``None``), where it was and why."""

    id: str | None
    where: str
    error: str


def read_posts(path: str | os.PathLike) -> tuple[list[dict], list[PostError]]:
    """Posts from a ``.jsonl`` file or a directory of ``.txt`` files, and the ones that could not be read.

    JSONL: ``{"id": ..., "text": ..., "image": "img/1.jpg"}`` per line (``image`` optional, relative to the file's
    folder; blank lines are skipped; a missing ``id`` becomes ``line-<n>``). An id already used by an earlier line is
    an error (two posts with one id would merge in the graph). ``entity_spans`` (optional): the post's entities as
    word spans ``[start, end]`` or ``[start, end, type]`` of ``text.split()`` (end exclusive); checked here and
    kept, so the pipeline runs only its RE stage on them. Directory: each ``<stem>.txt`` is a post with id
    ``<stem>``; its image is the first ``<stem>.<ext>`` found for the usual image extensions. Images are returned as
    paths and not opened here, so a missing image file is reported by the pipeline, per post.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_directory(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such JSON Lines file or directory of .txt posts")
    posts, errors = [], []
    first_line: dict[str, int] = {}  # id -> the line that has it
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            errors.append(PostError(_salvage_id(raw), where, f"unreadable JSON line ({err})"))
            continue
        if not isinstance(record, dict):
            errors.append(PostError(None, where, f"expected a JSON object, got {type(record).__name__}"))
            continue
        post_id = str(record["id"]) if record.get("id") is not None else f"line-{number}"
        if post_id in first_line:
            errors.append(PostError(post_id, where, f"duplicate id {post_id!r}: {path}:{first_line[post_id]} has it "
                                                    "already; ids name the posts in the graph, make them unique"))
            continue
        first_line[post_id] = number
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            errors.append(PostError(post_id, where, f"`image` must be a path string, got {type(image).__name__}"))
            continue
        post = {"id": post_id, "text": record.get("text"), "image": None if not image else os.path.join(folder, image)}
        if record.get("entity_spans") is not None:
            problem = _span_problem(record["entity_spans"], record.get("text"))
            if problem:
                errors.append(PostError(post_id, where, f"bad `entity_spans`: {problem}"))
                continue
            post["entity_spans"] = record["entity_spans"]
        posts.append(post)
    return posts, errors


def _span_problem(spans, text) -> str | None:
    """Why ``entity_spans`` is not a list of ``[start, end]`` / ``[start, end, type]`` word spans of ``text``."""
    if not isinstance(spans, list):
        return f"expected a list of [start, end] or [start, end, type] word spans, got {type(spans).__name__}"
    words = len(text.split()) if isinstance(text, str) else None
    for span in spans:
        if not isinstance(span, list) or len(span) not in (2, 3):
            return f"{span!r} is not [start, end] or [start, end, type]"
        start, end = span[:2]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in (start, end)):
            return f"{span!r}: start and end must be integers (word indices)"
        if len(span) == 3 and not isinstance(span[2], str):
            return f"{span!r}: the type must be a string"
        if not 0 <= start < end or (words is not None and end > words):
            return f"{span!r} is outside the text of {words} words (spans are [start, end) word indices)"
    return None


def _salvage_id(raw: bytes) -> str | None:
    """The id of a broken JSON line when it can still be seen (``"id": "..."`` near the start), else None."""
    text = raw.decode("utf-8", errors="replace")
    key = text.find('"id"')
    if key < 0:
        return None
    rest = text[key + 4 :].lstrip(" :")
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return rest[1:end] if end > 0 else None
    digits = "".join(c for c in rest[:32] if c.isdigit() or c == "-")
    return digits or None


def _read_directory(folder: str) -> tuple[list[dict], list[PostError]]:
    posts, errors = [], []
    names = sorted(os.listdir(folder))
    by_stem = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(stem, os.path.join(folder, name))
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext != ".txt":
            continue
        where = os.path.join(folder, name)
        try:
            with open(where, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            errors.append(PostError(stem, where, f"unreadable text file ({err})"))
            continue
        posts.append({"id": stem, "text": text, "image": by_stem.get(stem)})
    if not posts and not errors:
        raise FileNotFoundError(f"{folder}: no .txt posts in this directory")
    return posts, errors


def synthetic_posts(n: int, seed: int = 0, num_tasks: int = 1, labels_per_task: int = 3, image_size: int = 32,
                    tasks: list[int] | None = None) -> list[dict]:  # fmt: skip
    """``n`` synthetic posts ``{id, text, image (PIL), entities, triples, task_id, shape}`` with their truth.

    Args:
        n: number of posts; the cells (title, title, verb, shape) are drawn uniformly within a task.
        seed: the same seed gives the same posts.
        num_tasks / labels_per_task / image_size: as in ``SyntheticConfig`` (the models must be trained on the
            same values for the truth to be reachable).
        tasks: task ids to draw from (default: all ``num_tasks``), e.g. ``[0]`` for task 0 only.

    ``entities``: ``{"text", "type", "start", "end"}`` (word span ``[start, end)`` of ``text.split()``).
    ``triples``: ``{"head", "relation", "tail", "head_span", "tail_span"}``.
    """
    if n < 0:
        raise ValueError(f"n={n}: the number of posts cannot be negative")
    tasks = list(range(num_tasks)) if tasks is None else list(tasks)
    if not tasks or not all(0 <= k < num_tasks for k in tasks):
        raise ValueError(f"tasks={tasks}: give task ids in 0..{num_tasks - 1}")
    rng = np.random.default_rng([seed, 7])
    posts = []
    for i in range(n):
        k = tasks[int(rng.integers(len(tasks)))]
        ner_cells = {(cue, shape): j for cue, shape, j in task_grid(k, labels_per_task, "ner")}
        re_cells = {(cue, shape): j for cue, shape, j in task_grid(k, labels_per_task, "re")}
        titles = sorted({cue for cue, _ in ner_cells})
        verbs = sorted({cue for cue, _ in re_cells})
        shapes = sorted({shape for _, shape in ner_cells})
        shape = shapes[int(rng.integers(len(shapes)))]
        verb = verbs[int(rng.integers(len(verbs)))]
        first_title, second_title = (titles[int(t)] for t in rng.integers(len(titles), size=2))
        first = _name(rng)
        second = _name(rng, avoid=" ".join(first))
        words = _filler(rng, 2) + [first_title]
        spans = [(len(words), len(words) + len(first))]
        words += first + [verb, second_title]
        spans.append((len(words), len(words) + len(second)))
        words += second + _filler(rng, 2)

        entities = []
        for title, name, (start, end) in zip((first_title, second_title), (first, second), spans):
            if ner_cells[(title, shape)] is not None:
                entities.append({"text": " ".join(name), "type": label_of(k, title, shape, "ner"),
                                 "start": start, "end": end})  # fmt: skip
        triples = []
        if len(entities) == 2 and re_cells[(verb, shape)] is not None:
            triples.append({"head": entities[0]["text"], "relation": label_of(k, verb, shape, "re"),
                            "tail": entities[1]["text"], "head_span": list(spans[0]),
                            "tail_span": list(spans[1])})  # fmt: skip
        image = Image.open(io.BytesIO(draw_image(rng, shape, image_size))).convert("RGB")
        posts.append({"id": f"post-{seed}-{i}", "text": " ".join(words), "image": image, "entities": entities,
                      "triples": triples, "task_id": k, "shape": shape})  # fmt: skip
    return posts


def write_posts(posts: list[dict], folder: str | os.PathLike, name: str = "posts.jsonl") -> str:
    """Write posts as ``folder/name`` (JSON Lines) and their PIL images as ``folder/images/<id>.png``, the layout
    ``read_posts`` reads; other keys (e.g. the synthetic truth) are kept in the lines. Returns the file's path."""
    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        for post in posts:
            record = dict(post)
            if isinstance(post.get("image"), Image.Image):
                record["image"] = f"images/{post['id']}.png"
                post["image"].save(os.path.join(folder, record["image"]))
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def score_posts(posts: list[dict], results: list[dict], directed: bool = True) -> dict[str, float]:
    """Precision / recall / F1 of the pipeline's entities and triples against the truth of ``synthetic_posts``.

    An entity counts when its post, word span and type are right; a triple when its post, head and tail spans and
    relation are right (``directed=False``: the two spans in either order). Results are matched to posts by id.
    """
    def entity_keys(post_id, entities, span):
        return {(post_id, *span(e), e["type"]) for e in entities}

    def triple_keys(post_id, triples, spans):
        keys = set()
        for t in triples:
            head, tail = (tuple(s) for s in spans(t))
            keys.add((post_id, (head, tail) if directed else frozenset((head, tail)), t["relation"]))
        return keys

    gold_entities, gold_triples, found_entities, found_triples = set(), set(), set(), set()
    for post in posts:
        gold_entities |= entity_keys(post["id"], post["entities"], lambda e: (e["start"], e["end"]))
        gold_triples |= triple_keys(post["id"], post["triples"], lambda t: (t["head_span"], t["tail_span"]))
    for result in results:
        found_entities |= entity_keys(result["id"], result["entities"], lambda e: tuple(e["provenance"]["span"]))
        found_triples |= triple_keys(result["id"], result["triples"],
                                     lambda t: (t["provenance"]["head_span"],
                                                t["provenance"]["tail_span"]))  # fmt: skip
    scores = {}
    for kind, gold, found in (("entity", gold_entities, found_entities), ("triple", gold_triples, found_triples)):
        hits = len(gold & found)
        precision = hits / len(found) if found else 0.0
        recall = hits / len(gold) if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        scores |= {f"{kind}_precision": precision, f"{kind}_recall": recall, f"{kind}_f1": f1,
                   f"{kind}_found": len(found), f"{kind}_gold": len(gold)}  # fmt: skip
    return scores


__all__ = ["PostError", "read_posts", "score_posts", "synthetic_posts", "write_posts"]
