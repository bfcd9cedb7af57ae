"""Benchmarks exported as Parquet + dataset card (datasets_scripts/export.py): ``datasets.load_dataset`` reads them,
``load_benchmark`` on the export equals ``load_benchmark`` on the builder, and both work from the local Hub."""

import ast
import io
import json
import shutil
import sys

import datasets
import pytest
from conftest import FIXTURES
from hub_server import local_hub
from PIL import Image

from datasets_scripts import load_benchmark
from datasets_scripts.export import export_benchmark, main, push_export

SMALL = dict(num_tasks=2, train_per_task=10, validation_per_task=4, test_per_task=5)


@pytest.fixture(autouse=True)
def quiet():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


def _image_bytes(value):
    """An undecoded image's bytes (a path-backed image is read from its file); None for a missing image."""
    if value is None:
        return None
    if value["bytes"] is not None:
        return value["bytes"]
    with open(value["path"], "rb") as f:
        return f.read()


def _rows(dataset) -> list[dict]:
    """Every row, with the images as bytes."""
    plain = dataset.cast_column("image", datasets.Image(decode=False))
    if "aux_images" in plain.features:
        plain = plain.cast_column("aux_images", datasets.List(datasets.Image(decode=False)))
    rows = []
    for row in plain:
        row["image"] = _image_bytes(row["image"])
        if "aux_images" in row:
            row["aux_images"] = [_image_bytes(v) for v in row["aux_images"]]
        rows.append(row)
    return rows


def assert_same_benchmark(exported, original):
    assert (exported.name, exported.config_name, exported.task_type) == (original.name, original.config_name,
                                                                        original.task_type)  # fmt: skip
    assert exported.label_names == original.label_names
    assert exported.num_tasks == original.num_tasks
    assert exported.missing_images == original.missing_images
    assert len(exported.unreadable_images) == len(original.unreadable_images)
    for got, want in zip(exported.tasks, original.tasks):
        assert got.task_id == want.task_id and got.new_labels == want.new_labels
        for split in ("train", "validation", "test"):
            a, b = getattr(got, split), getattr(want, split)
            assert a.features == b.features, split
            assert _rows(a) == _rows(b), f"task {got.task_id} {split}"


# --------------------------------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("kind", ["re", "ner"])
def test_synthetic_round_trip_and_load_dataset(tmp_path, cache, kind):
    original = load_benchmark("synthetic", kind, cache_dir=cache, **SMALL)
    out = tmp_path / "export"
    export_benchmark(original, str(out))

    ds = datasets.load_dataset(str(out), kind, cache_dir=cache)
    assert sorted(ds) == ["test", "train", "validation"]
    label = "relation" if kind == "re" else "ner_tags"
    names = ds["train"].features[label]
    assert list(getattr(names, "feature", names).names) == original.label_names  # ClassLabel names travel
    assert isinstance(ds["train"].features["image"], datasets.Image)
    assert ds["train"]["task"][:] == [0] * 10 + [1] * 10
    assert ds["test"]["task"][:] == [0] * len(original.tasks[0].test) + [1] * len(original.tasks[1].test)
    # the image bytes are in the Parquet file: decoding needs nothing else
    assert ds["train"][0]["image"].size == (32, 32)
    task1 = ds["validation"].filter(lambda t: t == 1, input_columns="task").remove_columns("task")
    assert _rows(task1) == _rows(original.tasks[1].validation)

    exported = load_benchmark(str(out), kind, cache_dir=cache)
    assert_same_benchmark(exported, original)
    assert exported.fingerprint != original.fingerprint  # the data's hash, not the builder's
    assert load_benchmark(str(out), cache_dir=cache).config_name == kind  # the only config


def test_two_configs_share_a_folder_and_reexport_replaces_one(tmp_path, cache):
    out = str(tmp_path / "export")
    export_benchmark(load_benchmark("synthetic", "re", cache_dir=cache, **SMALL), out)
    export_benchmark(load_benchmark("synthetic", "ner", cache_dir=cache, **SMALL), out)
    assert datasets.get_dataset_config_names(out) == ["ner", "re"]
    smaller = load_benchmark("synthetic", "re", cache_dir=cache, **{**SMALL, "num_tasks": 1})
    export_benchmark(smaller, out)  # one task now: the 2-task shards of re are gone, ner untouched
    assert load_benchmark(out, "re", cache_dir=cache).num_tasks == 1
    assert load_benchmark(out, "ner", cache_dir=cache).num_tasks == 2
    with pytest.raises(ValueError, match="pass config_name"):
        load_benchmark(out, cache_dir=cache)
    with pytest.raises(ValueError, match="takes no data_dir"):
        load_benchmark(out, "re", data_dir=out)


def test_an_edited_export_is_refused(tmp_path, cache):
    out = tmp_path / "export"
    export_benchmark(load_benchmark("synthetic", "re", cache_dir=cache, **SMALL), str(out))
    sidecar = out / "data" / "re" / "benchmark.json"
    info = json.loads(sidecar.read_text())
    info["new_labels"][1] = info["new_labels"][1][:1]
    sidecar.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="disagrees with its benchmark.json"):
        load_benchmark(str(out), "re", cache_dir=cache)


# ----------------------------------------------------------------------------------------- real-format fixtures
def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (9, 7), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def real_data(tmp_path):
    """The fixtures with some images: IMRE sep5 (3 readable images, 1 unreadable) and IMNER plom (2 readable)."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    lines = (root / "imre/txt/sep5/ours_train_0.txt").read_text().splitlines()
    ids = [ast.literal_eval(line)["img_id"] for line in lines if line.strip()]
    folder = root / "imre/img_org/train"
    folder.mkdir(parents=True)
    for i, image_id in enumerate(ids[:3]):
        (folder / image_id).write_bytes(_png((40 * i, 90, 200)))
    (folder / ids[3]).write_bytes(b"not an image")
    plom = root / "imner/twitter2017"
    image_ids = [line[len("IMGID:"):] for line in (plom / "sep-PLOM/train_0.txt").read_text().splitlines()
                 if line.startswith("IMGID:")]  # fmt: skip
    (plom / "twitter2017_images").mkdir()
    for i, image_id in enumerate(image_ids[:2]):
        (plom / "twitter2017_images" / f"{image_id}.jpg").write_bytes(_png((200, 40 * i, 0)))
    return root


@pytest.mark.parametrize("name, config, folder", [("imre", "sep5", "imre"), ("imner", "plom", "imner/twitter2017")])
def test_real_format_round_trip(tmp_path, cache, real_data, name, config, folder):
    original = load_benchmark(name, config, data_dir=real_data / folder, cache_dir=cache)
    assert 0 < original.missing_images < sum(len(t.train) + len(t.validation) + len(t.test) for t in original.tasks)
    assert len(original.unreadable_images) == (name == "imre")
    out = tmp_path / "export"
    export_benchmark(original, str(out), source_root=str(real_data / folder))
    exported = load_benchmark(str(out), config, cache_dir=cache)
    assert_same_benchmark(exported, original)
    stored = exported.tasks[0].train.cast_column("image", datasets.Image(decode=False))["image"][:]
    assert all(value is None or value["bytes"] for value in stored)  # bytes in the Parquet file, not paths
    images = [row["image"] for task in exported.tasks for row in _rows(task.train)]
    assert len({image for image in images if image is not None}) == (3 if name == "imre" else 2)  # pixels travelled
    sidecar = json.loads((out / "data" / config / "benchmark.json").read_text())
    assert str(tmp_path) not in json.dumps(sidecar)  # no local folder in what gets published
    if name == "imre":
        assert sidecar["missing_images"] and all(not path.startswith("/") for path in sidecar["missing_images"])
        assert [why.split(":")[0] for why in exported.unreadable_images.values()] == ["unreadable (UnidentifiedImageError"]
        with pytest.raises(Exception, match="cannot be read|are missing"):
            load_benchmark(str(out), config, cache_dir=cache, require_images=True)


# --------------------------------------------------------------------------------------------------- local Hub
@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The local Hub; huggingface_hub and datasets pointed at it, every non-loopback connection refused."""
    import huggingface_hub.constants as constants

    with local_hub(monkeypatch, tmp_path) as server:
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", server.endpoint)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        # what load_dataset asks other hosts for, best effort: the download counter (S3) and the dataset viewer
        monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)
        yield server


def test_push_to_the_hub_and_load_back(hub, tmp_path):
    cache = str(tmp_path / "cache")
    out = str(tmp_path / "export")
    sizes = json.dumps(SMALL)
    main(["--benchmark", "synthetic", "--config", "re", "--config_kwargs", sizes, "--out", out,
          "--cache_dir", cache, "--push_to_hub", "tester/synthetic"])  # fmt: skip
    files = hub.files("tester/synthetic", "dataset")
    assert {"README.md", "data/re/benchmark.json", "data/re/train-00000-of-00002.parquet",
            "data/re/test-00001-of-00002.parquet"} <= set(files)  # fmt: skip
    # a second config from another folder: the repo's card keeps the first
    other = str(tmp_path / "other")
    main(["--benchmark", "synthetic", "--config", "ner", "--config_kwargs", sizes, "--out", other,
          "--cache_dir", cache, "--push_to_hub", "tester/synthetic"])  # fmt: skip
    card = hub.files("tester/synthetic", "dataset")["README.md"].decode()
    assert "config_name: re" in card and "config_name: ner" in card

    original = load_benchmark("synthetic", "re", cache_dir=cache, **SMALL)
    assert_same_benchmark(load_benchmark("tester/synthetic", "re", cache_dir=str(tmp_path / "c1")), original)
    ds = datasets.load_dataset("tester/synthetic", "ner", cache_dir=str(tmp_path / "c2"))
    assert sorted(ds) == ["test", "train", "validation"] and ds["train"]["task"][:] == [0] * 10 + [1] * 10
    assert ("POST", "/api/datasets/tester/synthetic/commit/main") in hub.requests

    # re-pushing a smaller stream removes the shards it no longer has
    smaller = load_benchmark("synthetic", "re", cache_dir=cache, **{**SMALL, "num_tasks": 1})
    export_benchmark(smaller, out)
    push_export(out, "tester/synthetic", "re")
    assert not any(path.startswith("data/re/") and "-of-00002" in path for path in hub.files("tester/synthetic", "dataset"))
    assert load_benchmark("tester/synthetic", "re", cache_dir=str(tmp_path / "c3")).num_tasks == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
