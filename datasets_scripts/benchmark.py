"""``load_benchmark``: the public door. Builds (or reuses from the cache) a benchmark's builder and
returns its task stream as a ``ContinualBenchmark``."""

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace

import datasets
import pyarrow.compute as pc

from . import common, imner, imre, synthetic
from .common import BenchmarkFormatError, fingerprint, parse_split_name, source_hash

logger = logging.getLogger(__name__)

BUILDERS: dict[str, type[datasets.GeneratorBasedBuilder]] = {
    "imre": imre.IMRE,
    "imner": imner.IMNER,
    "synthetic": synthetic.Synthetic,
}


@dataclass
class ContinualTask:
    """One step of the stream: its own train/validation data and the cumulative test set."""

    task_id: int
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    new_labels: list[str]


@dataclass
class ContinualBenchmark:
    """A continual task sequence over one label space.

    ``label_names`` is the full label space (``None``/``O`` at id 0); ``tasks[k].new_labels`` are the
    labels task k introduces; ``fingerprint`` hashes the builder code and source files (for results).
    ``missing_images`` counts the images fed as zero images (``image=None``): absent files, and the files in
    ``unreadable_images`` (path -> why) that exist but could not be decoded when the benchmark was built.
    """

    name: str
    config_name: str
    task_type: str  # "re" or "ner"
    label_names: list[str]
    tasks: list[ContinualTask]
    missing_images: int = 0
    fingerprint: str = ""
    missing_image_paths: list[str] = field(default_factory=list, repr=False)
    unreadable_images: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def seen_labels(self, task_id: int) -> list[str]:
        """Labels introduced by tasks ``0..task_id``, in label-id order."""
        seen = {label for task in self.tasks[: task_id + 1] for label in task.new_labels}
        return [name for name in self.label_names if name in seen]

    def vocabulary(self) -> list[str]:
        """Every word of every split, lower-cased and sorted: the vocabulary of a word-level tokenizer for the tiny
        demo models (`MSPTProcessor.from_word_vocabulary`)."""
        words = set()
        for task in self.tasks:
            for split in (task.train, task.validation, task.test):
                words.update(w.lower() for sentence in split["tokens"][:] for w in sentence)
        return sorted(words)

    def subset(self, train_per_task: int = 0, validation_per_task: int = 0, test_fraction: float = 1.0,
               seed: int = 0) -> "ContinualBenchmark":
        """The same stream on less data, for runs that must fit a budget: a random `train_per_task` rows of each task's
        training set and `validation_per_task` of its validation set (0: all; the draw is fixed by `seed`), and the
        test rows whose content hash falls below `test_fraction` — the same rows in every cumulative test set and for
        every seed, so a test row seen after task 1 is seen again after task 5. Labels and new_labels are unchanged."""
        if not 0 < test_fraction <= 1:
            raise ValueError(f"test_fraction must be in (0, 1], got {test_fraction}")
        if train_per_task < 0 or validation_per_task < 0:
            raise ValueError(f"train_per_task / validation_per_task must be >= 0 (0: all), got {train_per_task} / "
                             f"{validation_per_task}")  # fmt: skip

        def draw(split, n):
            return split.shuffle(seed=seed).select(range(n)) if 0 < n < len(split) else split

        def kept(row) -> bool:  # the row's content without its image: the same text gives the same answer anywhere
            text = json.dumps({k: v for k, v in row.items() if k != "image"}, sort_keys=True, default=str)
            return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 16**8 < test_fraction

        tasks = []
        for task in self.tasks:
            test = task.test if test_fraction == 1 else task.test.filter(kept)
            tasks.append(replace(task, train=draw(task.train, train_per_task),
                                             validation=draw(task.validation, validation_per_task), test=test))
        return replace(self, tasks=tasks)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{len(t.train)}/{len(t.validation)}/{len(t.test)}" for t in self.tasks)
        return (f"ContinualBenchmark({self.name}/{self.config_name}, {self.task_type}, {len(self.label_names)} labels, "
                f"{self.num_tasks} tasks train/validation/test: {sizes}, missing_images={self.missing_images})")


def load_benchmark(
    name: str,
    config_name: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    *,
    require_images: bool = False,
    revision: str | None = None,
    **config_kwargs,
) -> ContinualBenchmark:
    """Build a benchmark and return its task stream.

    Args:
        name: ``"imre"`` (configs ``sep5``/``sep7``/``sep10``), ``"imner"`` (``plom``/``polm``) or
            ``"synthetic"`` (``re``/``ner``; no files needed); or the folder or Hub dataset repo id (``org/name``) of
            an export (``datasets_scripts.export``): its Parquet files are read with ``datasets.load_dataset`` and
            give the same tasks, labels and rows as the builder did.
        config_name: the builder config; its default when omitted.
        data_dir: the benchmark's folder (see ``imre``/``imner``); not used by ``synthetic``. Without it, the text
            split files of ``imre`` ``sep5``/``sep10`` and ``imner`` ``plom`` are downloaded from the paper's
            repository at a pinned commit (``$MSPT_DATA_URL`` or ``data_url=`` names a mirror) and checked against
            pinned SHA-256 sums; images are never downloaded (pass ``image_dir``). ``sep7`` and ``polm`` need it.
        cache_dir: the ``datasets`` cache root; a second call with the same arguments reuses it.
            The cache key holds the data dir, the config, the builder code and the source files' content.
        require_images: raise if any image file is missing or unreadable (empty, not an image, truncated, too large
            to decode), instead of counting them and warning once (such an image is ``image=None``: zero pixels and
            ``image_mask=0`` downstream). Images are decoded once when the benchmark is built, so a broken file
            never stops a run half-way.
        config_kwargs: builder config fields, e.g. ``seed=1, num_tasks=3`` for ``synthetic``,
            ``embed_images=True`` to copy image bytes into the cache, ``check_labels=False`` to skip the label checks
            of ``imre``/``imner`` (files that deliberately differ from the published split).
        revision: an exported benchmark on the Hub: the branch, tag or commit to read.
    """
    from . import export  # here, not at the top: `python -m datasets_scripts.export` runs that module as __main__

    if name not in BUILDERS and export.is_export_location(name):
        if data_dir is not None or config_kwargs:
            raise ValueError(f"{name!r} is an exported benchmark (a folder or Hub repo of Parquet files): it takes no "
                             f"data_dir or builder config fields, got {['data_dir'] if data_dir else []}"
                             f"{sorted(config_kwargs)}")  # fmt: skip
        return _load_export(name, config_name, cache_dir, require_images, revision)
    if name not in BUILDERS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BUILDERS)}, or give the folder or Hub "
                         "dataset repo of an export (python -m datasets_scripts.export)")
    if revision is not None:
        raise ValueError("revision= is for exported benchmarks on the Hub; the builders read local or pinned files")
    builder_cls = BUILDERS[name]
    config_name = config_name or builder_cls.DEFAULT_CONFIG_NAME
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data_dir {data_dir} does not exist")
    # first pass: what the data is made of; second: the builder whose cache key includes it
    scout = builder_cls(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, **config_kwargs)
    files, folders = scout.source_files()
    key = fingerprint(files, folders, extra=source_hash(common, sys.modules[builder_cls.__module__]))
    builder = builder_cls(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, hash=key, **config_kwargs)
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, BenchmarkFormatError):  # show the file:line error, not the wrapper
            raise err.__cause__ from None
        raise
    splits = builder.as_dataset()

    by_task: dict[int, dict[str, datasets.Dataset]] = {}
    for split, dataset in splits.items():
        kind, task_id = parse_split_name(split)
        by_task.setdefault(task_id, {})[kind] = dataset
    assert sorted(by_task) == list(range(len(by_task))), f"tasks {sorted(by_task)} are not numbered 0..T-1"

    label_names = _label_names(builder)
    tasks = _tasks(by_task, builder.task_type, label_names)
    missing, unreadable = _missing_images(builder, splits)
    paths = sorted(missing | set(unreadable))
    benchmark = ContinualBenchmark(name, config_name, builder.task_type, label_names, tasks,
                                   len(paths), key, paths, unreadable)  # fmt: skip
    return _check_images(benchmark, sorted(missing), unreadable, require_images, _images_hint(builder))


def _tasks(by_task: dict[int, dict[str, datasets.Dataset]], task_type: str, label_names: list[str]) -> list[ContinualTask]:
    """The task stream from each task's splits; a task's new labels are those of its train split not seen before."""
    tasks, seen = [], set()
    for task_id in range(len(by_task)):
        parts = by_task[task_id]
        new = [label for label in _train_labels(parts["train"], task_type, label_names) if label not in seen]
        seen.update(new)
        tasks.append(ContinualTask(task_id, parts["train"], parts["validation"], parts["test"], new))
    return tasks


def _load_export(location: str, config_name: str | None, cache_dir: str | None, require_images: bool,
                 revision: str | None) -> ContinualBenchmark:
    """``load_benchmark`` on an export: its ``train_k``/``validation_k``/``test_k`` and the sidecar's metadata."""
    from . import export

    splits, info, key = export.read_export(location, config_name, cache_dir=cache_dir, revision=revision)
    by_task: dict[int, dict[str, datasets.Dataset]] = {}
    for split, dataset in splits.items():
        kind, task_id = parse_split_name(split)
        by_task.setdefault(task_id, {})[kind] = dataset
    task_type = "re" if "relation" in splits["train_0"].features else "ner"
    feature = splits["train_0"].features["relation" if task_type == "re" else "ner_tags"]
    label_names = list(getattr(feature, "feature", feature).names)
    tasks = _tasks(by_task, task_type, label_names)
    stored = (info["task_type"], info["label_names"], info["new_labels"])
    if stored != (task_type, label_names, [task.new_labels for task in tasks]):
        raise ValueError(f"the export {location} ({info['config_name']}) disagrees with its {export.SIDECAR}: the "
                         "Parquet files give another task type, label space or new labels per task; export it again")
    unreadable = {path: why for path, why in info["missing_images"].items() if why}
    missing = sorted(path for path, why in info["missing_images"].items() if not why)
    benchmark = ContinualBenchmark(info["name"], info["config_name"], task_type, label_names, tasks,
                                   len(info["missing_images"]), key, sorted(info["missing_images"]), unreadable)
    hint = f"the export {location} holds no bytes for them (they were missing when {info['name']} was exported)"
    return _check_images(benchmark, missing, unreadable, require_images, hint)


def _check_images(benchmark: ContinualBenchmark, missing: list[str], unreadable: dict[str, str], require_images: bool,
                  hint: str) -> ContinualBenchmark:
    """Raise (``require_images``) or warn once about the images left out of ``benchmark``."""
    name, config_name = benchmark.name, benchmark.config_name
    if missing and require_images:
        raise FileNotFoundError(
            f"{len(missing)} images of {name}/{config_name} are missing (require_images=True); first: "
            + ", ".join(missing[:5]) + f". {hint}."
            + (f" {len(unreadable)} more cannot be read." if unreadable else "")
        )
    if unreadable and require_images:
        first = next(iter(unreadable))
        raise BenchmarkFormatError(first, None, (
            f"{len(unreadable)} images of {name}/{config_name} cannot be read (require_images=True): "
            + "; ".join(f"{path}: {why}" for path, why in list(unreadable.items())[:5])
            + ". Replace these files (or delete them: without require_images a missing image is a zero image)."))
    if missing:
        logger.warning(
            "%d images of %s/%s are missing (first: %s; %s); they are fed as zero images with image_mask=0. "
            "Pass require_images=True to make this an error.", len(missing), name, config_name, missing[0], hint,
        )
    if unreadable:
        first, why = next(iter(unreadable.items()))
        logger.warning(
            "%d images of %s/%s are unreadable (first: %s: %s); they are fed as zero images with image_mask=0 "
            "(ContinualBenchmark.unreadable_images lists them). Pass require_images=True to make this an error.",
            len(unreadable), name, config_name, first, why,
        )
    return benchmark


def _images_hint(builder) -> str:
    """Where the builder looks for images, or how to give it some (downloaded text has none)."""
    return builder.images_hint() if hasattr(builder, "images_hint") else "see the builder's image_dir"


def _label_names(builder) -> list[str]:
    feature = builder.info.features["relation" if builder.task_type == "re" else "ner_tags"]
    return list(getattr(feature, "feature", feature).names)


def _train_labels(dataset: datasets.Dataset, task_type: str, label_names: list[str]) -> list[str]:
    """Labels present in a train split, in label-id order. NER: both tags of each entity type present."""
    column = dataset.data.column("relation" if task_type == "re" else "ner_tags")
    if task_type == "ner":
        column = pc.list_flatten(column)
    present = {label_names[i] for i in pc.unique(column).to_pylist()}
    if task_type == "ner":
        types = {label[2:] for label in present if label != "O"}
        present |= {label for label in label_names if label[2:] in types}
    return [label for label in label_names if label in present]


def _missing_images(builder, splits: datasets.DatasetDict) -> tuple[set[str], dict[str, str]]:
    """The images left out (``image`` is null, read from Arrow without decoding): the paths of the absent files,
    and the files that exist but were unreadable when the benchmark was built, with the reason (sorted by path)."""
    nulls = set()
    for split, dataset in splits.items():
        kind, _ = parse_split_name(split)
        for image_id in pc.filter(dataset.data.column("image_id"), dataset.data.column("image").is_null()).to_pylist():
            nulls.add(builder.image_path(kind, image_id))
    present = sorted(p for p in nulls if os.path.isfile(p)) if getattr(builder, "image_root", None) else []
    if not present:  # (without an image folder, downloaded text, every image is missing)
        return nulls, {}
    from modeling_mspt.processing_mspt import load_image  # brings torch and transformers: only when needed

    unreadable = {path: load_image(path).problem or "unreadable when the benchmark was built" for path in present}
    return nulls - set(unreadable), unreadable
