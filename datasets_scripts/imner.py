"""IMNER: continual multimodal NER over Twitter-2017, one entity type per task.

``data_dir`` is the ``twitter2017`` folder that holds::

    sep-PLOM/{train,valid,test}_{k}.txt      PER -> LOC -> ORG -> MISC   (config ``plom``)
    sep-POLM-NEW/{train,valid,test}_{k}.txt  PER -> ORG -> LOC -> MISC   (config ``polm``)
    twitter2017_images/<IMGID>.jpg           optional (also looked up beside data_dir)

CoNLL style: an ``IMGID:<id>`` line, one ``word<TAB>tag`` line per word, a blank line after each
sentence. ``OTHER`` is read as ``MISC``. Train/valid files tag only the task's type; every test
file holds the same sentences, tagged for the types seen so far. A test sentence's ``task_id`` is
the first task whose test file tags an entity in it (``-1``: never). See reference notes §9.2.

Without ``data_dir`` the ``sep-PLOM`` files are downloaded from the paper's repository at a pinned commit and
checked against pinned SHA-256 sums (``remote``); images stay the user's (``image_dir``). ``polm``
(``sep-POLM-NEW``) is not pinned and needs ``data_dir``.

Tags are checked before anything is generated (``check_labels``), because a stray tag silently moves a type into
another task's new labels: in every split, a type tagged in a valid/test file must have a training example in that
task or an earlier one; under the published configurations (``plom``, ``polm`` in their own folders, all four
tasks there), train/valid files of task k tag only type k and test files only types 0..k (``PUBLISHED``).
Errors name the file and line.
"""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets

from . import remote
from .common import (
    SPLITS,
    BenchmarkFormatError,
    bio_labels,
    check_image_id,
    image_value,
    ner_features,
    read_lines,
    split_name,
    task_files,
)

logger = logging.getLogger(__name__)

FILE_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
REMOTE_ROOT = "MNER/data/twitter2017"  # data_dir's counterpart in the paper's repository
PATTERN = "{split}_{k}.txt"
# The published configurations: their folder and the entity type each task introduces (reference notes §9.2).
PUBLISHED = {"plom": ("sep-PLOM", ["PER", "LOC", "ORG", "MISC"]),
             "polm": ("sep-POLM-NEW", ["PER", "ORG", "LOC", "MISC"])}


@dataclass
class IMNERConfig(datasets.BuilderConfig):
    """IMNER task sequence.

    Args:
        split_dir (`str`, *optional*): folder under ``data_dir`` with the task files.
        entity_types (`list[str]`): the known types; the label space is ``O`` then ``B-``/``I-`` of
            each type in this order (the same ids for every task order).
        tag_aliases (`dict[str, str]`): types renamed on load (``OTHER`` -> ``MISC``).
        image_dir (`str`, *optional*): folder of ``<IMGID>.jpg``; default ``data_dir/twitter2017_images``,
            or ``twitter2017_images`` beside ``data_dir`` when only that one exists.
        embed_images (`bool`): store image bytes in the cache instead of paths (the cache then outlives the folder).
        check_labels (`bool`, defaults to `True`): check each file's tags (module docstring); turn off only for files
            that deliberately differ from the published split.
        data_url (`str`, *optional*): without ``data_dir``, download from this mirror of the repository
            (``<data_url>/<commit>/MNER/data/twitter2017/...``) instead of ``$MSPT_DATA_URL`` or GitHub.
    """

    split_dir: str | None = None
    entity_types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "MISC"])
    tag_aliases: dict[str, str] = field(default_factory=lambda: {"OTHER": "MISC"})
    image_dir: str | None = None
    embed_images: bool = False
    data_url: str | None = None
    check_labels: bool = True


def read_conll(path: str, tag_map: dict[str, str]) -> Iterator[tuple[int, str, list[str], list[str]]]:
    """Yield ``(line of IMGID, image id, words, tags)`` per sentence; tags mapped by ``tag_map``."""
    sentence = None
    for number, line in read_lines(path):
        if line.startswith("IMGID:"):
            if sentence is not None:
                raise BenchmarkFormatError(path, number, f"IMGID line before the blank line that ends the sentence of line {sentence[0]}")
            image_id = line[len("IMGID:"):].strip()
            if not image_id:
                raise BenchmarkFormatError(path, number, "empty IMGID")
            check_image_id(path, number, image_id, "IMGID")
            sentence = (number, image_id, [], [])
        elif not line.strip():
            if sentence is not None:
                if not sentence[2]:
                    raise BenchmarkFormatError(path, sentence[0], "sentence without any word line")
                yield sentence
                sentence = None
        else:
            if sentence is None:
                raise BenchmarkFormatError(path, number, "word line outside a sentence (no 'IMGID:' line before it)")
            fields = line.split("\t") if "\t" in line else line.split(" ")
            if len(fields) != 2 or not fields[1].strip():
                raise BenchmarkFormatError(path, number, f"malformed line {line!r}: expected 'word<TAB>tag', one word "
                                           f"and one tag, found {len(fields)} field(s) (truncated file?)")  # fmt: skip
            word, tag = fields[0], fields[1].strip()
            if tag not in tag_map:
                raise BenchmarkFormatError(path, number, f"unknown tag {tag!r}; known: {sorted(tag_map)}")
            sentence[2].append(word)
            sentence[3].append(tag_map[tag])
    if sentence is not None:
        raise BenchmarkFormatError(
            path, sentence[0], "the file ends inside this sentence (no blank line after its last word): truncated?"
        )


class IMNER(datasets.GeneratorBasedBuilder):
    """Twitter-2017 NER as a continual task stream (``plom``, ``polm``)."""

    BUILDER_CONFIG_CLASS = IMNERConfig
    BUILDER_CONFIGS = [
        IMNERConfig(name=name, version=datasets.Version("1.1.0"), split_dir=folder, description=" -> ".join(types))
        for name, (folder, types) in PUBLISHED.items()
    ]
    DEFAULT_CONFIG_NAME = "plom"
    task_type = "ner"

    @property
    def data_root(self) -> str | None:
        """``data_dir``; ``None`` when the text files are downloaded."""
        return self.config.data_dir or None

    @property
    def image_root(self) -> str | None:
        if self.config.image_dir or not self.data_root:
            return self.config.image_dir
        inside = os.path.join(self.data_root, "twitter2017_images")
        beside = os.path.join(os.path.dirname(os.path.normpath(self.data_root)), "twitter2017_images")
        return beside if not os.path.isdir(inside) and os.path.isdir(beside) else inside

    def image_path(self, split: str, image_id: str) -> str:
        """The image's path; relative to the expected ``image_dir`` when there is none (downloaded text)."""
        return os.path.join(self.image_root or "", image_id)

    def images_hint(self) -> str:
        if self.image_root:
            return f"images are read from {self.image_root}/<IMGID>.jpg"
        return ("images are not downloaded (only the text splits are): get the Twitter-2017 images from the "
                "dataset authors, put them in one folder as <IMGID>.jpg and pass image_dir=<folder>")

    def source_files(self) -> tuple[list, list[str]]:
        """Local files, or the pinned ``RemoteFile``s of a download, and the image folder (cache key)."""
        folders = [self.image_root] if self.image_root else []
        if not self.data_root:
            pinned = self._pinned()
            return [pinned[os.path.basename(p)] for files in self._task_files() for p in files.values()], folders
        folder = self._folder()
        files = [os.path.join(folder, f) for f in os.listdir(folder)] if os.path.isdir(folder) else []
        return files, folders

    def _folder(self) -> str:
        return os.path.join(self.data_root, self.config.split_dir or self.config.name)

    def _pinned(self) -> dict[str, remote.RemoteFile]:
        folder = self._remote_folder()
        pinned = remote.remote_files(folder, self.config.data_url)
        if not pinned:
            raise remote.not_pinned_error(f"imner/{self.config.name}", folder, ".../MNER/data/twitter2017")
        return pinned

    def _task_files(self) -> list[dict[str, str]]:
        """Local paths, or repository paths of the pinned files when downloading."""
        if self.data_root:
            return task_files(self._folder(), PATTERN, FILE_SPLITS)
        return task_files(self._remote_folder(), PATTERN, FILE_SPLITS, names=self._pinned())

    def _remote_folder(self) -> str:
        return f"{REMOTE_ROOT}/{self.config.split_dir or self.config.name}"

    def _tag_map(self) -> dict[str, str]:
        types = {t: t for t in self.config.entity_types} | dict(self.config.tag_aliases)
        return {"O": "O"} | {f"{p}-{alias}": f"{p}-{t}" for alias, t in types.items() for p in "BI"}

    def _info(self) -> datasets.DatasetInfo:
        unknown = set(self.config.tag_aliases.values()) - set(self.config.entity_types)
        if unknown:
            raise ValueError(f"tag_aliases maps to {sorted(unknown)}, which are not in entity_types={self.config.entity_types}")
        return datasets.DatasetInfo(description=__doc__, features=ner_features(bio_labels(self.config.entity_types)))

    def _split_generators(self, dl_manager):
        tasks = self._task_files()
        if not self.data_root:
            pinned = self._pinned()
            local = remote.download(dl_manager, [pinned[os.path.basename(p)] for files in tasks for p in files.values()])
            tasks = [{split: local[path] for split, path in files.items()} for files in tasks]
        tag_map = self._tag_map()
        if self.config.check_labels:
            self._check_labels(tasks, tag_map)
        self._checked_images = {}  # path -> verdict: the test files repeat their images
        self._first_tagged = {}
        for task_id, files in enumerate(tasks):
            for _, image_id, words, tags in read_conll(files["test"], tag_map):
                if any(t != "O" for t in tags):
                    self._first_tagged.setdefault((image_id, tuple(words)), task_id)
        return [
            datasets.SplitGenerator(name=split_name(split, task_id),
                                    gen_kwargs={"path": files[split], "split": split, "task_id": task_id})
            for task_id, files in enumerate(tasks) for split in ("train", "validation", "test")
        ]

    def _check_labels(self, tasks: list[dict[str, str]], tag_map: dict[str, str]) -> None:
        """Every file's tags against the published schedule and the training files (module docstring), before
        anything is generated. Errors name ``path:line`` and the fix."""
        name = self.config.name
        folder, schedule = PUBLISHED.get(name, (None, None))
        if self.config.split_dir != folder or len(tasks) != len(schedule or ()):
            schedule = None
        opt_out = "or pass check_labels=False if your files deliberately differ from the published split"
        trained = set()
        for k, files in enumerate(tasks):
            for split in SPLITS:
                for line, _, _, tags in read_conll(files[split], tag_map):
                    for number, tag in enumerate(tags, start=line + 1):  # the word lines follow the IMGID line
                        kind = tag[2:]
                        if tag == "O":
                            continue
                        allowed = (schedule[k:k + 1] if split != "test" else schedule[:k + 1]) if schedule else [kind]
                        if kind not in allowed:
                            raise BenchmarkFormatError(files[split], number, (
                                f"tag {tag!r} in a task-{k} file of imner/{name} ({' -> '.join(schedule)}): its "
                                f"{split} files tag only {', '.join(allowed)} (reference notes §9.2). Fix the tag "
                                f"(O?), {opt_out}"))
                        if split == "train":
                            trained.add(kind)
                        elif kind not in trained:
                            raise BenchmarkFormatError(files[split], number, (
                                f"tag {tag!r}: type {kind} has no training example in tasks 0..{k}, so no model learns "
                                f"it and its entities can only be scored wrong (a typo?). Fix the tag, {opt_out}"))

    def _generate_examples(self, path: str, split: str, task_id: int):
        embed, checked = self.config.embed_images, self._checked_images
        for number, image_id, words, tags in read_conll(path, self._tag_map()):
            file_name = image_id if os.path.splitext(image_id)[1] else f"{image_id}.jpg"
            yield number, {
                "tokens": words,
                "ner_tags": tags,
                # None (absent or unreadable) is counted by load_benchmark
                "image": image_value(self.image_path(split, file_name), embed, checked)[0] if self.image_root else None,
                "image_id": file_name,
                "task_id": self._first_tagged.get((image_id, tuple(words)), -1) if split == "test" else task_id,
            }
