"""IMRE: continual multimodal relation extraction over the MNRE layout (MEGA / MKGformer release).

``data_dir`` is the folder that holds::

    txt/sepN/ours_{train,val,test}_{k}.txt   task k's files, one Python-literal dict a line
    txt/ours_{train,val,test}.txt            optional: full splits (global line index, for the crops)
    ours_rel2id.json                         optional: label ids ({"None": 0, "/per/per/parent": 1, ...})
    img_org/{train,val,test}/<img_id>        optional: images (a missing one becomes image=None)
    img_vg/{train,val,test}/crops/<i>_*.png  optional: object crops of the line with global index i

Without ``data_dir`` the text files of ``sep5``/``sep10`` (and the full splits, for ``crops_dir``) are downloaded
from the paper's repository at a pinned commit and checked against pinned SHA-256 sums (``remote``); images stay
the user's: pass ``image_dir`` (and ``crops_dir``). ``sep7`` is not pinned and needs ``data_dir``.

Train/val files hold the task's new relations plus ``None``; test files are cumulative. Every
example's ``task_id`` is its file's task; in test files it is the first test file holding the line,
i.e. the task that introduced it (the per-task test slices). See reference notes §9.1.

Labels are checked before anything is generated (``check_labels``), because without ``ours_rel2id.json`` a typo
would silently become a label of its own and shift every id after it: in every split, a relation of a val/test
file (``None`` aside) must have a training example in that task or an earlier one; under the published
configurations (``sep5``, ``sep7``, ``sep10`` in their own folders) a relation must be one of the 23 of MNRE and,
when all the tasks are there, belong to the task the published split gives it (``SCHEDULES``). Errors name the
file and line.
"""

import ast
import json
import logging
import os
import re
from dataclasses import dataclass

import datasets

from . import remote
from .common import BenchmarkFormatError, check_image_id, image_value, read_lines, re_features, split_name, task_files

logger = logging.getLogger(__name__)

FILE_SPLITS = {"train": "train", "validation": "val", "test": "test"}
NO_RELATION = "None"
REMOTE_ROOT = "MRE/data"  # data_dir's counterpart in the paper's repository
PATTERN = "ours_{split}_{k}.txt"
_RELATION_RE = re.compile(r"""['"]relation['"]\s*:\s*(['"])(.*?)\1""")

# The published task schedules, reference notes §9.1: the relations each task introduces.
SCHEDULES = {
    "sep5": [
        ["/per/per/peer", "/per/org/member_of", "/per/per/charges", "/per/misc/religion"],
        ["/loc/loc/contain", "/per/misc/present_in", "/per/per/siblings", "/per/per/neighbor"],
        ["/org/loc/locate_at", "/per/loc/place_of_residence", "/per/misc/awarded", "/per/per/parent"],
        ["/misc/loc/held_on", "/org/org/subsidiary", "/per/misc/nationality", "/misc/misc/part_of"],
        ["/per/per/alternate_names", "/per/per/couple", "/org/org/alternate_names", "/per/loc/place_of_birth"],
    ],
    "sep7": [
        ["/per/per/peer", "/per/org/member_of", "/per/misc/religion"],
        ["/loc/loc/contain", "/per/per/charges", "/per/per/siblings"],
        ["/per/misc/present_in", "/org/loc/locate_at", "/per/per/neighbor"],
        ["/per/loc/place_of_residence", "/per/misc/awarded", "/per/per/parent"],
        ["/misc/loc/held_on", "/org/org/subsidiary", "/per/misc/nationality"],
        ["/per/per/alternate_names", "/misc/misc/part_of", "/per/loc/place_of_birth"],
        ["/per/per/couple", "/org/org/alternate_names"],
    ],
    "sep10": [
        ["/per/per/peer", "/per/misc/religion"],
        ["/per/org/member_of", "/per/per/charges"],
        ["/loc/loc/contain", "/per/per/siblings"],
        ["/per/misc/present_in", "/per/per/neighbor"],
        ["/org/loc/locate_at", "/per/misc/awarded"],
        ["/per/loc/place_of_residence", "/per/per/parent"],
        ["/misc/loc/held_on", "/per/misc/nationality"],
        ["/org/org/subsidiary", "/misc/misc/part_of"],
        ["/per/per/alternate_names", "/per/loc/place_of_birth"],
        ["/per/per/couple", "/org/org/alternate_names"],
    ],
}
# The 23 labels of MNRE (its ours_rel2id.json): the 20 of the schedules, two that are in no task, and None.
MNRE_RELATIONS = frozenset([NO_RELATION, "/per/per/alumi", "/per/misc/race",
                            *(relation for task in SCHEDULES["sep5"] for relation in task)])


@dataclass
class IMREConfig(datasets.BuilderConfig):
    """IMRE task sequence.

    Args:
        split_dir (`str`, *optional*): folder under ``txt/`` with the task files; the config name
            (``sep5``, ``sep7``, ``sep10``) by default.
        label_names (`list[str]`, *optional*): the full label space, ``"None"`` first. By default read
            from ``ours_rel2id.json`` when present, otherwise derived from the files: ``"None"``, then
            the relations in order of first appearance (train, val, test of task 0, then task 1, ...).
        image_dir (`str`, *optional*): folder with ``{train,val,test}/`` images; ``data_dir/img_org``.
        crops_dir (`str`, *optional*): folder with ``{train,val,test}/crops/``; ``data_dir/img_vg``.
        embed_images (`bool`): store image bytes in the cache instead of paths to ``image_dir``, so that the cache
            (and a ``save_to_disk`` copy) keeps the pixels when the image folder moves.
        check_labels (`bool`, defaults to `True`): check each file's relations (module docstring); turn off only for
            files that deliberately differ from the published split.
        data_url (`str`, *optional*): without ``data_dir``, download from this mirror of the repository
            (``<data_url>/<commit>/MRE/data/txt/...``) instead of ``$MSPT_DATA_URL`` or GitHub.
    """

    split_dir: str | None = None
    label_names: list[str] | None = None
    image_dir: str | None = None
    crops_dir: str | None = None
    embed_images: bool = False
    data_url: str | None = None
    check_labels: bool = True


def parse_line(path: str, number: int, line: str, labels: set[str]) -> dict:
    """One MNRE line -> example dict (without image and task columns). Errors name ``path:number``."""
    try:
        record = ast.literal_eval(line)  # a literal, never executed
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as err:
        raise BenchmarkFormatError(path, number, f"malformed line, not a Python-literal dict (truncated file?): {err}") from None
    if not isinstance(record, dict):
        raise BenchmarkFormatError(path, number, f"malformed line: expected a dict, got {type(record).__name__}")
    missing = {"token", "h", "t", "img_id", "relation"} - record.keys()
    if missing:
        raise BenchmarkFormatError(path, number, f"malformed line: missing key(s) {sorted(missing)}")
    tokens = record["token"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(w, str) for w in tokens):
        raise BenchmarkFormatError(path, number, "malformed line: 'token' must be a non-empty list of strings")
    example = {"tokens": tokens}
    for key, role in (("h", "head"), ("t", "tail")):
        entity = record[key]
        pos = entity.get("pos") if isinstance(entity, dict) else None
        if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and all(isinstance(p, int) for p in pos)):
            raise BenchmarkFormatError(path, number, f"malformed line: {key!r} needs 'name' and 'pos': [start, end]")
        start, end = pos
        if not 0 <= start < end <= len(tokens):
            raise BenchmarkFormatError(
                path, number, f"{role} entity span [{start}, {end}) is outside the sentence of {len(tokens)} words"
            )
        example.update({f"{role}_name": str(entity.get("name", " ".join(tokens[start:end]))),
                        f"{role}_start": start, f"{role}_end": end})
    relation = record["relation"]
    if relation not in labels:
        raise BenchmarkFormatError(path, number, f"unknown relation {relation!r}; the label space has {len(labels)} labels")
    if not isinstance(record["img_id"], str) or not record["img_id"]:
        raise BenchmarkFormatError(path, number, "malformed line: 'img_id' must be a non-empty string")
    check_image_id(path, number, record["img_id"], "img_id")
    example.update(relation=relation, image_id=record["img_id"])
    return example


class IMRE(datasets.GeneratorBasedBuilder):
    """MNRE relation extraction as a continual task stream (``sep5``, ``sep7``, ``sep10``)."""

    BUILDER_CONFIG_CLASS = IMREConfig
    BUILDER_CONFIGS = [
        IMREConfig(name=name, version=datasets.Version("1.1.0"), description=f"MNRE split into {name[3:]} tasks")
        for name in ("sep5", "sep7", "sep10")
    ]
    DEFAULT_CONFIG_NAME = "sep10"
    task_type = "re"

    # -- where things are ---------------------------------------------------------------------
    @property
    def data_root(self) -> str | None:
        """``data_dir``; ``None`` when the text files are downloaded."""
        return self.config.data_dir or None

    @property
    def image_root(self) -> str | None:
        if self.config.image_dir or not self.data_root:
            return self.config.image_dir
        return os.path.join(self.data_root, "img_org")

    def image_path(self, split: str, image_id: str) -> str:
        """The image's path; relative to the expected ``image_dir`` when there is none (downloaded text)."""
        return os.path.join(self.image_root or "", FILE_SPLITS[split], image_id)

    def images_hint(self) -> str:
        if self.image_root:
            return f"images are read from {self.image_root}/{{train,val,test}}/<img_id>"
        return ("images are not downloaded (only the text splits are): get the MNRE images from the dataset "
                "authors, lay them out as <folder>/{train,val,test}/<img_id> and pass image_dir=<folder>")

    def source_files(self) -> tuple[list, list[str]]:
        """Files whose content, and folders whose listing, decide the prepared data (cache key): local paths,
        or the pinned ``RemoteFile``s of a download."""
        folders = [f for f in (self.image_root, self._crops_root()) if f]
        if not self.data_root:
            tasks = self._task_files()
            names = [path for files in tasks for path in files.values()] + self._remote_full_files()
            return [remote.remote_file(name, self.config.data_url) for name in names], folders
        txt = os.path.join(self.data_root, "txt")
        folder = os.path.join(txt, self.config.split_dir or self.config.name)
        files = [os.path.join(folder, f) for f in os.listdir(folder)] if os.path.isdir(folder) else []
        files += [p for p in (self._rel2id_path(), *(self._full_file(s) for s in FILE_SPLITS)) if os.path.isfile(p)]
        return files, folders

    def _task_files(self) -> list[dict[str, str]]:
        """Local paths, or repository paths of the pinned files when downloading."""
        split_dir = self.config.split_dir or self.config.name
        if self.data_root:
            return task_files(os.path.join(self.data_root, "txt", split_dir), PATTERN, FILE_SPLITS)
        folder = f"{REMOTE_ROOT}/txt/{split_dir}"
        pinned = remote.remote_files(folder, self.config.data_url)
        if not pinned:
            raise remote.not_pinned_error(f"imre/{self.config.name}", folder, ".../MRE/data")
        return task_files(folder, PATTERN, FILE_SPLITS, names=pinned)

    def _remote_full_files(self) -> list[str]:
        """The full splits key the crops by line: downloaded only when there are crops."""
        return [f"{REMOTE_ROOT}/txt/ours_{word}.txt" for word in FILE_SPLITS.values()] if self.config.crops_dir else []

    def _rel2id_path(self) -> str | None:
        return os.path.join(self.data_root, "ours_rel2id.json") if self.data_root else None

    def _full_file(self, split: str) -> str | None:
        if not self.data_root:
            return getattr(self, "_downloaded", {}).get(f"{REMOTE_ROOT}/txt/ours_{FILE_SPLITS[split]}.txt")
        return os.path.join(self.data_root, "txt", f"ours_{FILE_SPLITS[split]}.txt")

    def _crops_root(self) -> str | None:
        if self.config.crops_dir or not self.data_root:
            return self.config.crops_dir
        return os.path.join(self.data_root, "img_vg")

    # -- label space --------------------------------------------------------------------------
    def _label_names(self, tasks: list[dict[str, str]] | None = None) -> list[str]:
        """``tasks``: the local task files (after a download); read from ``data_dir`` when omitted."""
        if self.config.label_names:
            names = list(self.config.label_names)
        elif (path := self._rel2id_path()) and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                rel2id = json.load(f)
            if sorted(rel2id.values()) != list(range(len(rel2id))):
                raise BenchmarkFormatError(path, None, "ids must be 0..N-1, each used once")
            names = sorted(rel2id, key=rel2id.get)
        else:
            names = [NO_RELATION]
            for files in tasks or self._task_files():
                for split in ("train", "validation", "test"):
                    for _, line in read_lines(files[split]):
                        match = _RELATION_RE.search(line)
                        if match and match.group(2) not in names:
                            names.append(match.group(2))
        if NO_RELATION in names and names.index(NO_RELATION) != 0:
            raise ValueError(
                f"the no-relation label {NO_RELATION!r} has id {names.index(NO_RELATION)}; the package expects "
                "id 0: renumber ours_rel2id.json or pass label_names with 'None' first"
            )
        return names

    def _info(self) -> datasets.DatasetInfo:
        # downloading: the label space is known once the files are here (set in _split_generators)
        provisional = not self.data_root and not self.config.label_names
        labels = [NO_RELATION] if provisional else self._label_names()
        return datasets.DatasetInfo(description=__doc__, features=re_features(labels))

    # -- generation ---------------------------------------------------------------------------
    def _split_generators(self, dl_manager):
        tasks = self._task_files()
        if not self.data_root:
            wanted = [path for files in tasks for path in files.values()] + self._remote_full_files()
            self._downloaded = remote.download(dl_manager, [remote.remote_file(p, self.config.data_url) for p in wanted])
            tasks = [{split: self._downloaded[path] for split, path in files.items()} for files in tasks]
            self.info.features = re_features(self._label_names(tasks))
        if self.config.check_labels:
            self._check_labels(tasks)
        self._checked_images = {}  # path -> verdict: test files repeat their images
        # first test file holding each line: the task that introduced the example
        self._first_test_task = {}
        for task_id, files in enumerate(tasks):
            for _, line in read_lines(files["test"]):
                if line.strip():
                    self._first_test_task.setdefault(line.strip(), task_id)
        return [
            datasets.SplitGenerator(name=split_name(split, task_id),
                                    gen_kwargs={"path": files[split], "split": split, "task_id": task_id})
            for task_id, files in enumerate(tasks) for split in ("train", "validation", "test")
        ]

    def _check_labels(self, tasks: list[dict[str, str]]) -> None:
        """Every file's relations against the label space, the published schedule and the training files (module
        docstring), before anything is generated. Errors name ``path:line`` and the fix."""
        name = self.config.name
        explicit = bool(self.config.label_names) or bool((p := self._rel2id_path()) and os.path.isfile(p))
        published = name in SCHEDULES and (self.config.split_dir or name) == name
        schedule = SCHEDULES[name] if published and len(tasks) == len(SCHEDULES[name]) else None
        labels = set(self.info.features["relation"].names)
        opt_out = "or pass check_labels=False if your files deliberately differ from the published split"
        trained = set()
        for k, files in enumerate(tasks):
            for split in ("train", "validation", "test"):
                for number, line in read_lines(files[split]):
                    match = _RELATION_RE.search(line)
                    if not match:
                        continue  # malformed: parse_line names it
                    relation, path = match.group(2), files[split]
                    if explicit and relation not in labels:
                        raise BenchmarkFormatError(path, number, f"unknown relation {relation!r}; the label space has "
                                                   f"{len(labels)} labels (label_names or ours_rel2id.json): fix the "
                                                   "line or add the relation there")  # fmt: skip
                    if published and not explicit and relation not in MNRE_RELATIONS:
                        raise BenchmarkFormatError(path, number, (
                            f"relation {relation!r} is not one of the 23 MNRE relations (a typo?). Fix the line; if "
                            "your files use other relations on purpose, give the label space (label_names=[...] with "
                            f"'None' first, or data_dir/ours_rel2id.json), {opt_out}"))
                    if schedule and relation != NO_RELATION:
                        allowed = schedule[k] if split != "test" else [r for t in schedule[: k + 1] for r in t]
                        if relation not in allowed:
                            task = next((f"task {j}" for j, t in enumerate(schedule) if relation in t), "no task")
                            raise BenchmarkFormatError(path, number, (
                                f"relation {relation!r} in a task-{k} {split} file of imre/{name}: the published "
                                f"split introduces it in {task} (task {k} adds {', '.join(schedule[k])}; reference "
                                f"notes §9.1). Fix the line, {opt_out}"))
                    if split == "train":
                        trained.add(relation)
                    elif relation not in trained and relation != NO_RELATION:  # None: always in the label space
                        raise BenchmarkFormatError(path, number, (
                            f"relation {relation!r} has no training example in tasks 0..{k}: no model learns it and "
                            f"its examples can only be scored wrong (a typo?). Fix the line, {opt_out}"))

    def _crops(self, split: str) -> dict[str, list[str]]:
        """Crops of each example keyed by its line in the full split file (fixes D10: the crops
        are numbered by global line index, not by the index in the task file)."""
        if not self._crops_root():
            return {}
        folder = os.path.join(self._crops_root(), FILE_SPLITS[split], "crops")
        full = self._full_file(split)
        if not os.path.isdir(folder):
            return {}
        if not full or not os.path.isfile(full):
            logger.warning("crops in %s are ignored: they are keyed by line of %s, which is missing", folder, full)
            return {}
        by_index: dict[int, list[str]] = {}
        for name in os.listdir(folder):
            prefix = name.split("_", 1)[0]
            if prefix.isdigit():
                by_index.setdefault(int(prefix), []).append(os.path.join(folder, name))
        return {
            line.strip(): sorted(by_index[number - 1], key=_natural_key)
            for number, line in read_lines(full) if line.strip() and number - 1 in by_index
        }

    def _generate_examples(self, path: str, split: str, task_id: int):
        labels = set(self.info.features["relation"].names)
        crops = self._crops(split)
        embed, checked = self.config.embed_images, self._checked_images
        for number, line in read_lines(path):
            if not line.strip():
                continue
            example = parse_line(path, number, line, labels)
            match = _RELATION_RE.search(line)
            if match is None or match.group(2) != example["relation"]:  # what _check_labels read is what is used
                raise BenchmarkFormatError(path, number, "malformed line: more than one 'relation' entry")
            key = line.strip()
            image = self.image_path(split, example["image_id"])
            example["image"] = image_value(image, embed, checked)[0] if self.image_root else None  # None: counted
            example["aux_images"] = []
            for crop in crops.get(key, []):
                reported = crop in checked
                value, problem = image_value(crop, embed, checked)
                if problem and not reported:
                    logger.warning("object crop %s is left out of line %s:%d: %s", crop, path, number, problem)
                if value is not None:
                    example["aux_images"].append(value)
            example["task_id"] = self._first_test_task.get(key, task_id) if split == "test" else task_id
            yield number, example


def _natural_key(path: str) -> list:
    """``x_2.png`` before ``x_10.png``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]
