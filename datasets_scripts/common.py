"""Pieces shared by the benchmark builders: the error type, line reading, images, fingerprints.

Every builder yields splits named ``{train,validation,test}_{k}`` for task ``k`` (0-based);
``benchmark.load_benchmark`` groups them into tasks.
"""

import hashlib
import io
import logging
import ntpath
import os
import posixpath
import re
from collections.abc import Iterable, Iterator

import datasets
from PIL import Image

from .remote import RemoteFile

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class BenchmarkFormatError(ValueError):
    """Bad input in a benchmark file. The message starts with ``path:line:``."""

    def __init__(self, path: str, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


def split_name(split: str, task_id: int) -> str:
    return f"{split}_{task_id}"


def parse_split_name(name: str) -> tuple[str, int]:
    """``"validation_3"`` -> ``("validation", 3)``."""
    split, _, task = str(name).rpartition("_")
    if split not in SPLITS or not task.isdigit():
        raise ValueError(f"split {name!r} is not of the form '<train|validation|test>_<task id>'")
    return split, int(task)


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, line ending removed, CRLF or LF).

    An empty file and bytes that are not UTF-8 are errors that name the file (and line).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise BenchmarkFormatError(path, None, "the file is empty (truncated or not downloaded?)")
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            yield number, line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            raise BenchmarkFormatError(path, number, f"not valid UTF-8 ({err.reason})") from None


def task_files(folder: str, pattern: str, splits: dict[str, str], names: Iterable[str] | None = None) -> list[dict[str, str]]:
    """Find the per-task files ``pattern.format(split=..., k=...)`` in ``folder``.

    ``splits`` maps our split names to the file's split word (e.g. ``{"validation": "val"}``).
    The task count is what is there: tasks 0..T-1 must each have all three files. ``names`` lists the folder
    instead of the disk (the pinned files of a download; ``folder`` is then a repository path).
    Returns one ``{split: path}`` dict per task.
    """
    if names is None:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"benchmark folder {folder} does not exist; check data_dir")
        names, join = os.listdir(folder), os.path.join
    else:
        names, join = list(names), posixpath.join
    prefix, suffix = pattern.format(split=splits["train"], k="\0").split("\0")
    found = {
        int(name[len(prefix): len(name) - len(suffix)]) for name in names
        if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix): len(name) - len(suffix)].isdigit()
    }
    if not found:
        raise FileNotFoundError(f"no task files in {folder} (expected {pattern.format(split=splits['train'], k=0)}, ...)")
    tasks = []
    for k in range(max(found) + 1):
        files = {s: pattern.format(split=splits[s], k=k) for s in SPLITS}
        missing = [join(folder, name) for name in files.values() if name not in names]
        if missing:
            raise FileNotFoundError(f"task {k} is incomplete in {folder}: missing {', '.join(missing)}")
        tasks.append({s: join(folder, name) for s, name in files.items()})
    return tasks


def check_image_id(path: str, line: int, image_id: str, field: str) -> None:
    """An image id names a file inside the image folder: a relative path without ``..``, drive or NUL (lexically, on
    any platform, so a symlinked image folder still works). Anything else is an error naming ``path:line``."""
    parts = re.split(r"[\\/]", image_id)
    if (posixpath.isabs(image_id) or ntpath.isabs(image_id) or ntpath.splitdrive(image_id)[0] or ".." in parts
            or "\0" in image_id):
        raise BenchmarkFormatError(
            path, line, f"{field} {image_id!r} points outside the image folder; an image id must be a file name (or a "
            "relative path without '..') inside it. Fix the line."
        )


def image_value(path: str, embed: bool, checked: dict | None = None) -> tuple[str | bytes | None, str | None]:
    """What to give a ``datasets.Image()`` feature for the file at ``path``, and why it was left out.

    The file is decoded once here (``load_image``), so a broken image is caught when the benchmark is built, not
    in the middle of a run: ``(None, None)`` when it is absent, ``(None, reason)`` when it cannot be read (empty, not
    an image, truncated, too large for PIL); both become zero images downstream and are counted by ``load_benchmark``.
    A readable image gives its path (the Arrow cache points at the file) or, with ``embed``, its bytes (the cache
    holds the pixels and no longer needs the folder). An image over the decode budget (``DECODE_MAX_PIXELS`` or
    ``PIL.Image.MAX_IMAGE_PIXELS``, the lower) is stored downscaled, as JPEG bytes, so that decoding a row never
    hits PIL's size limit. ``checked`` memoises the verdict per path (test files repeat their images).
    """
    if not os.path.isfile(path):
        return None, None
    # the processor's decoder, so that what passes here decodes there; imported here: it brings torch and transformers
    from modeling_mspt.processing_mspt import DECODE_MAX_PIXELS, load_image

    checked = {} if checked is None else checked
    if path not in checked:
        decoded = load_image(path)
        reduced = None
        limit = Image.MAX_IMAGE_PIXELS
        budget = min(DECODE_MAX_PIXELS, limit) if limit else DECODE_MAX_PIXELS
        if decoded.image is not None and decoded.size[0] * decoded.size[1] > budget:
            buffer = io.BytesIO()
            decoded.image.save(buffer, "JPEG", quality=95)
            reduced = buffer.getvalue()
            logger.info("%s is %d x %d pixels: stored downscaled to %d x %d in the cache", path, *decoded.size,
                        *decoded.image.size)  # fmt: skip
        checked[path] = (decoded.problem, reduced)
    problem, reduced = checked[path]
    if problem:
        return None, problem
    if reduced is not None:
        return reduced, None
    if embed:
        with open(path, "rb") as f:
            return f.read(), None  # bytes alone: datasets keeps only the path of a {"path", "bytes"} on disk
    return path, None


def fingerprint(paths: Iterable["str | RemoteFile"], folders: Iterable[str] = (), extra: str = "") -> str:
    """Hash of file contents plus the listing of ``folders`` with file sizes (so adding or replacing images
    invalidates a cache).

    A ``RemoteFile`` (a pinned download) counts by its URL and its pinned content hash: no download needed.
    """
    h = hashlib.sha256(extra.encode())
    for path in sorted(paths, key=str):
        if isinstance(path, RemoteFile):
            h.update(f"{path.url}\0".encode() + bytes.fromhex(path.sha256))
            continue
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for folder in sorted(folders):
        h.update(folder.encode())
        if os.path.isdir(folder):
            for root, dirs, files in os.walk(folder):
                dirs.sort()
                h.update(root.encode())
                for name in sorted(files):  # names and sizes: a truncated or replaced image is verified again
                    h.update(f"{name}\0{_size(os.path.join(root, name))}\0".encode())
    return h.hexdigest()[:16]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # a dangling link
        return -1


def source_hash(*modules) -> str:
    """Hash of the builders' own source, so a changed generator never reuses a stale cache."""
    h = hashlib.sha256()
    for module in modules:
        with open(module.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def re_features(label_names: list[str]) -> datasets.Features:
    """Relation extraction: word tokens, head/tail word spans ``[start, end)``, relation, image(s)."""
    string, int32 = datasets.Value("string"), datasets.Value("int32")
    return datasets.Features({
        "tokens": datasets.List(string),
        "head_name": string, "head_start": int32, "head_end": int32,
        "tail_name": string, "tail_start": int32, "tail_end": int32,
        "relation": datasets.ClassLabel(names=list(label_names)),
        "image": datasets.Image(),                      # None when the file is missing
        "aux_images": datasets.List(datasets.Image()),  # object crops, possibly none
        "image_id": string,
        "task_id": int32,
    })


def ner_features(label_names: list[str]) -> datasets.Features:
    """Named-entity recognition: word tokens with one BIO tag each, one image per sentence."""
    string = datasets.Value("string")
    return datasets.Features({
        "tokens": datasets.List(string),
        "ner_tags": datasets.List(datasets.ClassLabel(names=list(label_names))),
        "image": datasets.Image(),
        "image_id": string,
        "task_id": datasets.Value("int32"),
    })


def bio_labels(entity_types: Iterable[str]) -> list[str]:
    """``["O", "B-T1", "I-T1", "B-T2", ...]``: "O" is id 0."""
    return ["O"] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]
