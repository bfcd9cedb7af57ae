"""Benchmarks as standard Parquet datasets: ``load_dataset(<folder or repo>, "sep10")`` gives train/validation/test.

A benchmark config is exported into a folder (and optionally pushed to a Hub dataset repo) laid out as::

    README.md                                   dataset card: `configs:` and `dataset_info:` per benchmark config
    data/<config>/train-00000-of-00010.parquet  task 0's train split, ...; one file per split and task
    data/<config>/benchmark.json                what Parquet cannot say: name, source fingerprint, left-out images

Each config has the splits ``train``, ``validation`` and ``test``; the column ``task`` (int32) is the step of the
stream a row belongs to, so ``ds["train"].filter(lambda t: t == k, input_columns="task")`` is task k's training set.
The test split holds every task's (cumulative) test set one after the other, so a row can appear under several
``task`` values; ``task_id`` keeps the builders' meaning (the task that introduced the example). Images are embedded
as bytes (``Image`` feature) and the ``ClassLabel`` names travel in the Parquet schema and in the card, so
``load_benchmark(<folder or repo>, "sep10")`` gives back the same tasks, labels and rows as the builder did.

    python -m datasets_scripts.export --benchmark imre --config sep10 --data_dir data/imre --out exports/imre \\
        [--push_to_hub org/imre]
"""

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field

import datasets
from datasets.info import DatasetInfosDict
from datasets.table import embed_table_storage
from datasets.utils.metadata import MetadataConfigs

from .common import SPLITS, fingerprint

logger = logging.getLogger(__name__)

TASK_COLUMN = "task"
SIDECAR = "benchmark.json"
FORMAT_VERSION = 1
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
CARD_BODY = """
# {name}

Continual multimodal benchmark `{name}`, exported by MSPT (`python -m datasets_scripts.export`). Each config is a
task stream; the column `task` is the step a row belongs to (the test split holds each task's cumulative test set).

```python
from datasets import load_dataset
ds = load_dataset("<this repo or folder>", "<config>")
task_0_train = ds["train"].filter(lambda t: t == 0, input_columns="task")

from datasets_scripts import load_benchmark   # the MSPT task stream
benchmark = load_benchmark("<this repo or folder>", "<config>")
```
"""


def data_dir_of(config_name: str) -> str:
    return f"data/{config_name}"


def shard_name(split: str, task_id: int, num_tasks: int) -> str:
    return f"{split}-{task_id:05d}-of-{num_tasks:05d}.parquet"


def export_benchmark(benchmark, out_dir: str, source_root: str | None = None) -> list[str]:
    """Write ``benchmark`` (a ``ContinualBenchmark``) as Parquet shards plus its card entry into ``out_dir``.

    Other configs already in ``out_dir`` (their files and card entries) are kept; this config's are replaced.
    ``source_root``: the benchmark's data folder, so that left-out image paths are stored relative to it.
    Returns the paths written, relative to ``out_dir``.
    """
    config, num_tasks = benchmark.config_name, benchmark.num_tasks
    folder = os.path.join(out_dir, data_dir_of(config))
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # a previous export of this config (maybe with other tasks)
        if name.endswith(".parquet") or name == SIDECAR:
            os.remove(os.path.join(folder, name))
    features = None
    splits_info = {split: datasets.SplitInfo(name=split, num_bytes=0, num_examples=0) for split in SPLITS}
    written = []
    for task in benchmark.tasks:
        for split in SPLITS:
            dataset = getattr(task, split)
            column = [task.task_id] * len(dataset)
            dataset = dataset.add_column(TASK_COLUMN, column, feature=datasets.Value("int32"))
            features = features or dataset.features
            # image files become bytes (as Dataset.push_to_hub does); rows that had none stay null
            dataset = dataset.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
            path = os.path.join(data_dir_of(config), shard_name(split, task.task_id, num_tasks))
            splits_info[split].num_bytes += dataset.to_parquet(os.path.join(out_dir, path))
            splits_info[split].num_examples += len(dataset)
            written.append(path)
    info = {
        "format_version": FORMAT_VERSION, "name": benchmark.name, "config_name": config,
        "task_type": benchmark.task_type, "num_tasks": num_tasks, "label_names": benchmark.label_names,
        "new_labels": [task.new_labels for task in benchmark.tasks], "source_fingerprint": benchmark.fingerprint,
        "missing_images": _relative_images(benchmark, source_root),
    }  # fmt: skip
    sidecar = os.path.join(data_dir_of(config), SIDECAR)
    with open(os.path.join(out_dir, sidecar), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
    written.append(sidecar)
    card_path = os.path.join(out_dir, datasets.config.REPOCARD_FILENAME)
    existing = open(card_path, encoding="utf-8").read() if os.path.isfile(card_path) else None
    with open(card_path, "w", encoding="utf-8") as f:
        f.write(card_text(benchmark.name, config, features, list(splits_info.values()), existing))
    written.append(datasets.config.REPOCARD_FILENAME)
    logger.info("exported %s/%s (%d tasks) to %s", benchmark.name, config, num_tasks, out_dir)
    return written


def card_text(name: str, config_name: str, features: datasets.Features, splits: list[datasets.SplitInfo],
              existing: str | None = None) -> str:
    """The dataset card with this config's ``configs:`` and ``dataset_info:`` entries added to (or replaced in)
    ``existing``, whose other entries and body are kept."""
    from huggingface_hub import DatasetCard, DatasetCardData

    card = DatasetCard(existing) if existing else None
    data = card.data if card is not None else DatasetCardData()
    info = datasets.DatasetInfo(features=features, splits=datasets.SplitDict({s.name: s for s in splits}),
                                dataset_size=sum(s.num_bytes for s in splits))  # fmt: skip
    DatasetInfosDict({config_name: info}).to_dataset_card_data(data)
    files = [{"split": split, "path": f"{data_dir_of(config_name)}/{split}-*.parquet"} for split in SPLITS]
    MetadataConfigs({config_name: {"data_files": files}}).to_dataset_card_data(data)
    body = card.text if card is not None else CARD_BODY.format(name=name)
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _relative_images(benchmark, source_root: str | None) -> dict[str, str | None]:
    """Left-out images -> why (None: absent), with paths relative to ``source_root`` (or, when some lie outside
    it, to the folder they share): no local folder ends up in a published card."""
    absolute = [path for path in benchmark.missing_image_paths if os.path.isabs(path)]
    root = os.path.abspath(source_root) if source_root else None
    if absolute and (root is None or any(os.path.relpath(path, root).startswith("..") for path in absolute)):
        root = os.path.commonpath([os.path.dirname(path) for path in absolute])
    out = {}
    for path in benchmark.missing_image_paths:
        key = os.path.relpath(path, root).replace(os.sep, "/") if os.path.isabs(path) else path
        why = benchmark.unreadable_images.get(path)
        out[key] = why.replace(path, key) if why else None
    return dict(sorted(out.items()))


def push_export(out_dir: str, repo_id: str, config_name: str, *, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None) -> str:
    """Upload config ``config_name`` of the export in ``out_dir`` to the Hub dataset repo ``repo_id`` (created if
    needed) in one commit: its shards and sidecar replace the repo's ``data/<config>/``, and its card entries are
    merged into the repo's card (other configs stay). Returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import EntryNotFoundError

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    prefix = data_dir_of(config_name) + "/"
    remote = set(api.list_repo_files(repo_id, repo_type="dataset", revision=revision))
    local = sorted(prefix + name for name in os.listdir(os.path.join(out_dir, prefix)))
    ops = [CommitOperationDelete(path) for path in sorted(remote) if path.startswith(prefix) and path not in local]
    ops += [CommitOperationAdd(path, os.path.join(out_dir, path)) for path in local]
    with open(os.path.join(out_dir, datasets.config.REPOCARD_FILENAME), encoding="utf-8") as f:
        card = f.read()
    try:  # the repo's card, with this config's entries from ours
        existing_path = api.hf_hub_download(repo_id, datasets.config.REPOCARD_FILENAME, repo_type="dataset",
                                            revision=revision)  # fmt: skip
        with open(existing_path, encoding="utf-8") as f:
            card = _merge_card(card, config_name, f.read())
    except EntryNotFoundError:
        pass
    ops.append(CommitOperationAdd(datasets.config.REPOCARD_FILENAME, card.encode()))
    commit = api.create_commit(repo_id, ops, repo_type="dataset", revision=revision,
                               commit_message=commit_message or f"Upload benchmark config {config_name}")  # fmt: skip
    logger.info("pushed %s to %s: %s", prefix, repo_id, commit.commit_url)
    return commit.commit_url


def _merge_card(ours: str, config_name: str, theirs: str) -> str:
    """``theirs`` with the ``configs:``/``dataset_info:`` entries of ``config_name`` taken from ``ours``."""
    from huggingface_hub import DatasetCard

    data = DatasetCard(ours).data
    infos = DatasetInfosDict.from_dataset_card_data(data)
    info = infos[config_name]
    return card_text("", config_name, info.features, list(info.splits.values()), theirs)


# -------------------------------------------------------------------------------------------------------- reading
def is_export_location(path: str) -> bool:
    """Whether ``load_benchmark(path, ...)`` reads an export: an existing folder or a Hub repo id."""
    return os.path.isdir(os.path.expanduser(path)) or bool(REPO_ID.match(path))


def read_export(path: str, config_name: str | None, cache_dir: str | None = None, revision: str | None = None):
    """``(splits, info, key)`` of an export: ``{"train_0": Dataset, ...}`` (the ``task`` column removed), the
    sidecar's dict and a fingerprint of the data (the files' contents locally, the commit on the Hub)."""
    local = os.path.isdir(os.path.expanduser(path))
    location = os.path.abspath(os.path.expanduser(path)) if local else path
    config_name = config_name or _only_config(location, local, revision)
    sidecar = f"{data_dir_of(config_name)}/{SIDECAR}"
    if local:
        sidecar_path = os.path.join(location, sidecar)
        if not os.path.isfile(sidecar_path):
            raise FileNotFoundError(f"{location} holds no export of config {config_name!r} ({sidecar} is missing); "
                                    "write one with `python -m datasets_scripts.export`")  # fmt: skip
        folder = os.path.dirname(sidecar_path)
        key = fingerprint([os.path.join(folder, name) for name in os.listdir(folder)], extra=config_name)
    else:
        from huggingface_hub import HfApi, hf_hub_download

        revision = HfApi().dataset_info(location, revision=revision).sha  # pin: card, sidecar and shards agree
        sidecar_path = hf_hub_download(location, sidecar, repo_type="dataset", revision=revision, cache_dir=cache_dir)
        key = fingerprint([], extra=f"{location}@{revision}:{config_name}")
    with open(sidecar_path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{sidecar} of {location} has format_version {info.get('format_version')!r}; this MSPT "
                         f"reads {FORMAT_VERSION}")  # fmt: skip
    loaded = datasets.load_dataset(location, config_name, cache_dir=cache_dir, revision=None if local else revision)
    splits = {}
    for split in SPLITS:
        dataset = loaded[split]
        tasks = dataset.data.column(TASK_COLUMN).to_numpy()
        for task_id in range(info["num_tasks"]):
            rows = (tasks == task_id).nonzero()[0]
            contiguous = len(rows) == 0 or rows[-1] - rows[0] + 1 == len(rows)
            part = dataset.select(range(rows[0], rows[-1] + 1) if contiguous and len(rows) else rows)
            splits[f"{split}_{task_id}"] = part.remove_columns(TASK_COLUMN)
    return splits, info, key


def _only_config(location: str, local: bool, revision: str | None) -> str:
    names = datasets.get_dataset_config_names(location, revision=None if local else revision)
    if len(names) != 1:
        raise ValueError(f"{location} holds the configs {names}: pass config_name")
    return names[0]


# ------------------------------------------------------------------------------------------------------------ CLI
@dataclass
class ExportArguments:
    benchmark: str = field(metadata={"help": "imre, imner or synthetic"})
    out: str = field(metadata={"help": "folder to write (other configs already there are kept)"})
    config: str | None = field(default=None, metadata={"help": "builder config, e.g. sep10, plom, re"})
    data_dir: str | None = field(default=None, metadata={"help": "the benchmark's folder (see load_benchmark)"})
    cache_dir: str | None = field(default=None, metadata={"help": "the datasets cache for building"})
    config_kwargs: str = field(default="{}", metadata={"help": 'builder config fields as JSON, e.g. {"num_tasks": 2}'})
    push_to_hub: str | None = field(default=None, metadata={"help": "also push to this Hub dataset repo (org/name)"})
    private: bool | None = field(default=None, metadata={"help": "create the repo private"})
    revision: str | None = field(default=None, metadata={"help": "branch to push to"})


def main(argv: list[str] | None = None) -> str:
    from transformers import HfArgumentParser

    from .benchmark import load_benchmark

    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    kwargs = json.loads(args.config_kwargs)
    if not isinstance(kwargs, dict):
        raise ValueError(f"--config_kwargs must be a JSON object, got {args.config_kwargs!r}")
    benchmark = load_benchmark(args.benchmark, args.config, data_dir=args.data_dir, cache_dir=args.cache_dir, **kwargs)
    export_benchmark(benchmark, args.out, source_root=args.data_dir)
    if args.push_to_hub:
        push_export(args.out, args.push_to_hub, benchmark.config_name, private=args.private, revision=args.revision)
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
