"""Pieces shared by the benchmark builders: the error type, line reading, images, fingerprints.

Every builder yields splits named ``{train,validation,test}_{k}`` for task ``k`` (0-based);
``benchmark.load_benchmark`` groups them into tasks.
"""

import hashlib
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator

import datasets

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


def image_value(path: str, embed: bool) -> str | dict | None:
    """What to give a ``datasets.Image()`` feature: ``None`` when the file is absent (counted later),
    the path (the Arrow cache then points at the file), or the bytes (self-contained cache)."""
    if not os.path.isfile(path):
        return None
    if embed:
        with open(path, "rb") as f:
            return {"path": path, "bytes": f.read()}
    return path


def fingerprint(paths: Iterable["str | RemoteFile"], folders: Iterable[str] = (), extra: str = "") -> str:
    """Hash of file contents plus the listing of ``folders`` (so adding images invalidates a cache).

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
                h.update("\0".join(sorted(files)).encode())
    return h.hexdigest()[:16]


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
