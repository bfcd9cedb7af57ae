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
"""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets

from . import remote
from .common import BenchmarkFormatError, bio_labels, image_value, ner_features, read_lines, split_name, task_files

logger = logging.getLogger(__name__)

FILE_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
REMOTE_ROOT = "MNER/data/twitter2017"  # data_dir's counterpart in the paper's repository
PATTERN = "{split}_{k}.txt"


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
        embed_images (`bool`): store image bytes in the cache instead of paths.
        data_url (`str`, *optional*): without ``data_dir``, download from this mirror of the repository
            (``<data_url>/<commit>/MNER/data/twitter2017/...``) instead of ``$MSPT_DATA_URL`` or GitHub.
    """

    split_dir: str | None = None
    entity_types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "MISC"])
    tag_aliases: dict[str, str] = field(default_factory=lambda: {"OTHER": "MISC"})
    image_dir: str | None = None
    embed_images: bool = False
    data_url: str | None = None


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
            word, sep, tag = line.rpartition("\t") if "\t" in line else line.rpartition(" ")
            if not sep or not tag.strip():
                raise BenchmarkFormatError(path, number, f"malformed line {line!r}: expected 'word<TAB>tag' (truncated file?)")
            if tag.strip() not in tag_map:
                raise BenchmarkFormatError(path, number, f"unknown tag {tag.strip()!r}; known: {sorted(tag_map)}")
            sentence[2].append(word)
            sentence[3].append(tag_map[tag.strip()])
    if sentence is not None:
        raise BenchmarkFormatError(
            path, sentence[0], "the file ends inside this sentence (no blank line after its last word): truncated?"
        )


class IMNER(datasets.GeneratorBasedBuilder):
    """Twitter-2017 NER as a continual task stream (``plom``, ``polm``)."""

    BUILDER_CONFIG_CLASS = IMNERConfig
    BUILDER_CONFIGS = [
        IMNERConfig(name="plom", version=datasets.Version("1.0.0"), split_dir="sep-PLOM",
                    description="PER -> LOC -> ORG -> MISC"),
        IMNERConfig(name="polm", version=datasets.Version("1.0.0"), split_dir="sep-POLM-NEW",
                    description="PER -> ORG -> LOC -> MISC"),
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

    def _generate_examples(self, path: str, split: str, task_id: int):
        for number, image_id, words, tags in read_conll(path, self._tag_map()):
            file_name = image_id if os.path.splitext(image_id)[1] else f"{image_id}.jpg"
            yield number, {
                "tokens": words,
                "ner_tags": tags,
                "image": image_value(self.image_path(split, file_name), self.config.embed_images) if self.image_root else None,
                "image_id": file_name,
                "task_id": self._first_tagged.get((image_id, tuple(words)), -1) if split == "test" else task_id,
            }
