"""Hostile benchmark data (issue 16): broken and huge images, image ids that leave the image folder, embedded images
that must outlive their folder, label typos and stray tags, IMNER lines with two tags.

Every case is built in a temporary folder (copies of the real-format fixtures where the known-split checks need the
whole published task schedule); nothing here reads $MSPT_DATA_DIR."""

import io
import logging
import os
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from conftest import FIXTURES
from PIL import Image, UnidentifiedImageError

from continual_trainer.collator import MSPTDataCollator
from datasets_scripts import BenchmarkFormatError, load_benchmark

datasets.disable_progress_bars()


def _re_line(tokens, relation="None", img="a.jpg", h=(0, 1), t=(1, 2)):
    return repr({"token": tokens, "h": {"name": tokens[h[0]], "pos": list(h)},
                 "t": {"name": tokens[t[0]], "pos": list(t)}, "img_id": img, "relation": relation})  # fmt: skip


def make_imre(root: Path, tasks: list[dict[str, list[str]]], split_dir: str = "sep5") -> Path:
    """``tasks[k] = {"train": [...], "val": [...], "test": [...]}`` lines -> ``root/txt/<split_dir>/``."""
    folder = root / "txt" / split_dir
    folder.mkdir(parents=True)
    for k, files in enumerate(tasks):
        for word, lines in files.items():
            (folder / f"ours_{word}_{k}.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return root


PEER = _re_line(["Ada", "Ben"], "/per/per/peer", "a.jpg")
NONE = _re_line(["Cleo", "Dev"], "None", "b.jpg")
HOME = _re_line(["Eve", "Rome"], "/per/loc/place_of_residence", "c.jpg")
NONE2 = _re_line(["Fay", "Gus"], "None", "d.jpg")
TWO_TASKS = [{"train": [PEER, NONE], "val": [NONE], "test": [PEER, NONE]},
             {"train": [HOME, NONE2], "val": [NONE2], "test": [PEER, NONE, HOME, NONE2]}]  # fmt: skip


def _jpeg(size=(20, 10), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def _png(size=(20, 10), color=(30, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


BROKEN = {"empty": b"", "random": os.urandom(2000), "truncated": _jpeg((64, 64))[:300]}


def _every_row(benchmark):
    """Read (decode) every row of every split: a broken image the builder let through raises here."""
    for task in benchmark.tasks:
        for split in (task.train, task.validation, task.test):
            for row in split:
                yield row


# --- case 1: zero-byte, random and truncated images ---------------------------------------------------------------
def test_broken_images_are_caught_when_the_benchmark_is_built(tmp_path, caplog):
    root = make_imre(tmp_path / "data", TWO_TASKS)
    images = root / "img_org"
    for split in ("train", "val", "test"):
        _write(images / split / "a.jpg", _jpeg())
        for name, data in zip("bcd", BROKEN.values()):
            _write(images / split / f"{name}.jpg", data)
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")
    rows = list(_every_row(benchmark))  # before the fix: UnidentifiedImageError / OSError (truncated) here
    assert sum(row["image"] is not None for row in rows) == sum(row["image_id"] == "a.jpg" for row in rows) > 0
    unreadable = {os.path.basename(p) for p in benchmark.unreadable_images}
    assert unreadable == {"b.jpg", "c.jpg", "d.jpg"} and len(benchmark.unreadable_images) == 8  # 3 train 2 val 3 test
    assert benchmark.missing_images == 8  # counted with the missing ones: each is fed as a zero image
    assert all(reason for reason in benchmark.unreadable_images.values())
    warning = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warning) == 1 and "8 images" in warning[0], warning
    with pytest.raises(BenchmarkFormatError, match=r"8 images .* cannot be read .*require_images") as err:
        load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c", require_images=True)
    assert "img_org/" in str(err.value)


def test_broken_imner_image_is_counted_and_required(tmp_path):
    folder = tmp_path / "twitter2017" / "sep-PLOM"
    folder.mkdir(parents=True)
    for k, kind in enumerate(["PER", "LOC"]):
        for word in ("train", "valid", "test"):
            folder.joinpath(f"{word}_{k}.txt").write_text(f"IMGID:{k}\nAda\tB-{kind}\nsays\tO\n\n", encoding="utf-8")
    _write(tmp_path / "twitter2017" / "twitter2017_images" / "0.jpg", _jpeg())
    _write(tmp_path / "twitter2017" / "twitter2017_images" / "1.jpg", BROKEN["truncated"])
    benchmark = load_benchmark("imner", "plom", data_dir=tmp_path / "twitter2017", cache_dir=tmp_path / "c")
    assert [r["image"] is None for r in _every_row(benchmark)] == [False] * 3 + [True] * 3
    assert [os.path.basename(p) for p in benchmark.unreadable_images] == ["1.jpg"]
    with pytest.raises(BenchmarkFormatError, match=r"1\.jpg"):
        load_benchmark("imner", "plom", data_dir=tmp_path / "twitter2017", cache_dir=tmp_path / "c",
                       require_images=True)  # fmt: skip


def test_collator_feeds_unreadable_images_as_zero_images_and_reports_each_path_once(tiny_processor, tmp_path, caplog):
    good = _write(tmp_path / "good.jpg", _jpeg((40, 30)))
    broken = {name: _write(tmp_path / f"{name}.jpg", data) for name, data in BROKEN.items()}
    row = {"tokens": ["john", "visited", "paris"], "head_start": 0, "head_end": 1, "tail_start": 2, "tail_end": 3,
           "relation": 1}  # fmt: skip
    images = [Image.open(good), {"path": broken["empty"], "bytes": None}, broken["random"],
              {"path": None, "bytes": BROKEN["truncated"]}, {"path": good, "bytes": None}, None]  # fmt: skip
    collator = MSPTDataCollator(tiny_processor, "re")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the same bad images again: no new warning
            batch = collator([dict(row, image=image) for image in images])
    assert batch["image_mask"].tolist() == [1, 0, 0, 0, 1, 0]
    assert (batch["pixel_values"][[1, 2, 3, 5]] == 0).all() and batch["pixel_values"][[0, 4]].abs().sum() > 0
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][4])
    assert len(collator.unreadable_images) == 3
    messages = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(messages) == 3, messages
    assert broken["empty"] in messages[0] and "1 so far" in messages[0] and "3 so far" in messages[2]


def test_an_image_broken_after_the_build_does_not_stop_the_collator(tiny_processor, tmp_path):
    """The rows as a trainer reads them with `image` undecoded (`datasets.Image(decode=False)`): decoding happens in
    the collator, which never raises on a bad file."""
    root = make_imre(tmp_path / "data", TWO_TASKS)
    for name in "abcd":
        _write(root / "img_org" / "train" / f"{name}.jpg", _jpeg())
    train = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c").tasks[0].train
    (root / "img_org" / "train" / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows = list(train.cast_column("image", datasets.Image(decode=False)))
    batch = MSPTDataCollator(tiny_processor, "re")(rows)
    assert batch["image_mask"].tolist() == [1, 0]


def test_a_run_survives_images_that_break_after_the_build_and_reports_them(tmp_path, caplog):
    """An image overwritten with garbage of the same size (the builder's cache key does not change) and one deleted
    while the run goes on: the rows reach the collator undecoded (training, replay, teacher cache, EWC, evaluation),
    so both are zero images with image_mask=0, warned about, and counted per task and in the result."""
    from conftest import tiny_args, tiny_setup

    from continual_trainer import ContinualTrainer
    from continual_trainer.reporting import write_results

    root = make_imre(tmp_path / "data", TWO_TASKS)
    for split in ("train", "val", "test"):
        for name in "abcd":
            _write(root / "img_org" / split / f"{name}.jpg", _jpeg())
    benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")
    assert benchmark.missing_images == 0
    overwritten, deleted = root / "img_org" / "train" / "b.jpg", root / "img_org" / "test" / "c.jpg"
    overwritten.write_bytes(b"\x00" * overwritten.stat().st_size)  # task 1's training rows (and the replay memory)
    deleted.unlink()  # task 2's test rows
    model, processor = tiny_setup(benchmark)
    args = tiny_args(tmp_path / "run", "mspt", num_train_epochs=2, per_device_train_batch_size=2, ewc_lambda=0.1)
    trainer = ContinualTrainer(model=model, args=args, processing_class=processor)
    with caplog.at_level(logging.INFO, logger="continual_trainer"):
        result = trainer.train_tasks(benchmark)  # before: UnidentifiedImageError in the DataLoader's fetch
    assert len(result.matrix) == 2
    assert result.unreadable_images.keys() == {str(overwritten), str(deleted)}
    assert "file not found" in result.unreadable_images[str(deleted)]
    counts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("After task")]
    assert "1 unreadable image (1 in the run)" in counts[0] and "1 unreadable image (2 in the run)" in counts[1], counts
    results = write_results(str(tmp_path / "run"), result, {}, benchmark, 0)
    assert sorted(results["unreadable_images"]) == sorted(map(str, (overwritten, deleted)))


# --- case 2: images too large to decode ---------------------------------------------------------------------------
def test_huge_images_are_decoded_downscaled_or_refused_never_raised(tiny_processor, tmp_path, monkeypatch):
    """PIL refuses an image over 2 * Image.MAX_IMAGE_PIXELS (DecompressionBombError; 14000 x 14000 with the default
    limit). Lowering the limit simulates one cheaply: a JPEG is decoded at reduced scale, a PNG (no reduced decode) is
    a zero image with a reason."""
    jpeg = _write(tmp_path / "huge.jpg", _jpeg((1600, 1200)))
    png = _write(tmp_path / "huge.png", _png((1600, 1200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 1600 x 1200 = 1.92M > 2 x 200k
    with pytest.raises(Image.DecompressionBombError):
        Image.open(jpeg)
    batch = tiny_processor([["a", "cat"]] * 3, images=[jpeg, png, None])  # before the fix: DecompressionBombError
    assert batch["image_mask"].tolist() == [1, 0, 0]
    from modeling_mspt.processing_mspt import load_image

    image, size, problem = load_image(jpeg)
    assert problem is None and size == (1600, 1200) and image.width * image.height <= 200_000
    assert image.getpixel((0, 0))[0] > 150  # the red survives the reduced decode
    image, _, problem = load_image(png)
    assert image is None and "MAX_IMAGE_PIXELS" in problem


def test_huge_images_are_stored_downscaled_by_the_builder(tmp_path, monkeypatch):
    root = make_imre(tmp_path / "data", TWO_TASKS)
    _write(root / "img_org" / "train" / "a.jpg", _jpeg((1600, 1200)))
    _write(root / "img_org" / "train" / "b.jpg", _png((1600, 1200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")
    first, second = list(benchmark.tasks[0].train)  # before the fix: DecompressionBombError here
    assert first["image"].width * first["image"].height <= 200_000 and first["image"].size[0] > 100
    assert second["image"] is None and "MAX_IMAGE_PIXELS" in benchmark.unreadable_images[
        str(root / "img_org" / "train" / "b.jpg")]


# --- case 3: image ids that leave the image folder ----------------------------------------------------------------
@pytest.mark.parametrize("image_id", ["../../../../etc/passwd", "/etc/passwd", "train/../../secret.jpg",
                                      "..\\..\\secret.jpg", "C:\\Windows\\win.ini"])  # fmt: skip
def test_imre_image_ids_outside_the_image_folder_are_an_error(tmp_path, image_id):
    tasks = [dict(files) for files in TWO_TASKS]
    tasks[1]["train"] = [HOME, _re_line(["Fay", "Gus"], "None", image_id)]
    root = make_imre(tmp_path / "data", tasks)
    _write(root / "img_org" / "secret.jpg", _jpeg())
    with pytest.raises(BenchmarkFormatError, match="outside the image folder") as err:
        load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")
    assert "ours_train_1.txt:2:" in str(err.value) and repr(image_id) in str(err.value)


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "/etc/hostname"])
def test_imner_image_ids_outside_the_image_folder_are_an_error(tmp_path, image_id):
    folder = tmp_path / "twitter2017" / "sep-PLOM"
    folder.mkdir(parents=True)
    for word in ("train", "valid", "test"):
        lines = "IMGID:1\nAda\tB-PER\n\n" + (f"IMGID:{image_id}\nBen\tB-PER\n\n" if word == "valid" else "")
        (folder / f"{word}_0.txt").write_text(lines, encoding="utf-8")
    with pytest.raises(BenchmarkFormatError, match="outside the image folder") as err:
        load_benchmark("imner", "plom", data_dir=tmp_path / "twitter2017", cache_dir=tmp_path / "c")
    assert "valid_0.txt:4:" in str(err.value)


# --- case 4: embedded images outlive their folder -----------------------------------------------------------------
def test_embedded_images_survive_the_image_folder_being_removed(tmp_path):
    root = make_imre(tmp_path / "data", TWO_TASKS)
    _write(root / "img_org" / "train" / "a.jpg", _jpeg((21, 11)))
    crops = root / "img_vg" / "train" / "crops"
    (root / "txt" / "ours_train.txt").write_text(f"{PEER}\n{NONE}\n{HOME}\n{NONE2}\n", encoding="utf-8")
    _write(crops / "0_pred_yolo_crop_0.png", _png((5, 7)))
    benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c", embed_images=True)
    train = benchmark.tasks[0].train
    assert train.data.column("image")[0]["bytes"].as_py() is not None  # before the fix: None (a path only)
    shutil.rmtree(root / "img_org")
    shutil.rmtree(root / "img_vg")
    row = train[0]
    assert row["image"].size == (21, 11) and [c.size for c in row["aux_images"]] == [(5, 7)]
    train.save_to_disk(tmp_path / "saved")  # a copy elsewhere still holds the pixels
    assert datasets.load_from_disk(tmp_path / "saved")[0]["image"].size == (21, 11)


# --- case 10: labels checked against the known configurations -----------------------------------------------------
def _copy_fixtures(tmp_path: Path, part: str) -> Path:
    target = tmp_path / part
    shutil.copytree(FIXTURES / part, target)
    return target


def _edit_line(path: Path, number: int, old: str, new: str) -> None:
    lines = path.read_bytes().split(b"\n")
    assert old.encode() in lines[number - 1], (path, number, lines[number - 1][:200])
    lines[number - 1] = lines[number - 1].replace(old.encode(), new.encode(), 1)
    path.write_bytes(b"\n".join(lines))


def _line_with(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if text in line)


@pytest.mark.parametrize("file, relation, new, message", [
    ("ours_train_2.txt", "/org/loc/locate_at", "/org/loc/locate_att", "not one of the 23 MNRE relations"),
    ("ours_test_3.txt", "/misc/loc/held_on", "/misc/loc/held_onn", "not one of the 23 MNRE relations"),
    ("ours_train_0.txt", "/per/per/charges", "/per/loc/place_of_residence", "introduces it in task 2"),
    ("ours_test_0.txt", "'/per/per/peer'", "'/per/per/alumi'", "introduces it in no task"),
])  # fmt: skip
def test_imre_relation_typos_in_a_known_split_are_an_error(tmp_path, file, relation, new, message):
    imre = _copy_fixtures(tmp_path, "imre")
    path = imre / "txt" / "sep5" / file
    number = _line_with(path, relation)
    _edit_line(path, number, relation, new)
    with pytest.raises(BenchmarkFormatError, match=message) as err:
        load_benchmark("imre", "sep5", data_dir=imre, cache_dir=tmp_path / "c")
    assert f"{file}:{number}:" in str(err.value) and "check_labels=False" in str(err.value)
    if "MNRE" in message:
        assert "label_names" in str(err.value)  # the fix when other relations are meant
    else:  # the escape hatch: files that deliberately differ from the published split
        benchmark = load_benchmark("imre", "sep5", data_dir=imre, cache_dir=tmp_path / "c", check_labels=False)
        assert new.strip("'") in benchmark.label_names


def test_imre_relation_seen_only_in_a_test_file_is_an_error_in_any_split(tmp_path):
    tasks = [dict(files) for files in TWO_TASKS]
    tasks[0]["test"] = [PEER, NONE, _re_line(["Hal", "Ivy"], "/per/per/couple", "e.jpg")]
    root = make_imre(tmp_path / "data", tasks, split_dir="mine")
    with pytest.raises(BenchmarkFormatError, match=r"ours_test_0\.txt:3: .*'/per/per/couple' has no training example"):
        load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c", split_dir="mine")


def test_stray_imner_tag_in_a_known_split_is_an_error(tmp_path):
    imner = _copy_fixtures(tmp_path, "imner") / "twitter2017"
    path = imner / "sep-PLOM" / "train_0.txt"
    number = _line_with(path, "\tO")
    _edit_line(path, number, "\tO", "\tI-LOC")
    with pytest.raises(BenchmarkFormatError, match=r"tag 'I-LOC' in a task-0 file of imner/plom") as err:
        load_benchmark("imner", "plom", data_dir=imner, cache_dir=tmp_path / "c")
    assert f"train_0.txt:{number}:" in str(err.value) and "only PER" in str(err.value)
    loose = load_benchmark("imner", "plom", data_dir=imner, cache_dir=tmp_path / "c", check_labels=False)
    assert "I-LOC" in loose.tasks[0].new_labels  # what happened silently before


def test_imner_type_seen_only_in_a_test_file_is_an_error_in_any_split(tmp_path):
    folder = tmp_path / "sep-PLOM"
    folder.mkdir()
    for word in ("train", "valid", "test"):
        tag = "B-ORG" if word == "test" else "B-PER"
        (folder / f"{word}_0.txt").write_text(f"IMGID:1\nAda\tB-PER\nInc\t{tag}\n\n", encoding="utf-8")
    with pytest.raises(BenchmarkFormatError, match=r"test_0\.txt:3: .*'B-ORG'.* no training example"):
        load_benchmark("imner", "plom", data_dir=tmp_path, cache_dir=tmp_path / "c")


# --- case 11: an IMNER line with more than one tag ----------------------------------------------------------------
@pytest.mark.parametrize("line", ["word\tI-PER\tO", "word\tB-PER\t", "word I-PER O"])
def test_imner_line_with_two_tags_is_an_error(tmp_path, line):
    folder = tmp_path / "sep-PLOM"
    folder.mkdir()
    for word in ("train", "valid", "test"):
        body = f"IMGID:1\nAda\tB-PER\n{line}\n\n" if word == "train" else "IMGID:1\nAda\tB-PER\n\n"
        (folder / f"{word}_0.txt").write_text(body, encoding="utf-8")
    with pytest.raises(BenchmarkFormatError, match="expected 'word<TAB>tag'") as err:
        load_benchmark("imner", "plom", data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert "train_0.txt:3:" in str(err.value)


def test_collator_passes_object_crops_to_a_processor_that_takes_them(tiny_tokenizer, tiny_image_processor, tmp_path):
    """Crops were never given to the processor: a model with `num_aux_images` trained on zero crops."""
    from modeling_mspt import MSPTProcessor

    processor = MSPTProcessor(tiny_image_processor, tiny_tokenizer, max_length=16, num_aux_images=2,
                              aux_image_size=16)  # fmt: skip
    crop = Image.new("RGB", (9, 7), (0, 255, 0))
    broken = _write(tmp_path / "crop.png", BROKEN["truncated"])
    rows = [{"tokens": ["a", "cat"], "ner_tags": [0, 0], "image": None, "aux_images": [crop, broken]},
            {"tokens": ["dog"], "ner_tags": [0], "image": None, "aux_images": []}]  # fmt: skip
    batch = MSPTDataCollator(processor, "ner")(rows)
    assert batch["aux_mask"].tolist() == [[1, 0], [0, 0]]
    assert batch["aux_pixel_values"][0, 0].abs().sum() > 0


def test_undecoded_rows_keep_the_crops_a_processor_takes_and_a_broken_crop_stops_nothing(tiny_tokenizer,
                                                                                       tiny_image_processor, tmp_path):
    from modeling_mspt import MSPTProcessor

    root = make_imre(tmp_path / "data", TWO_TASKS)
    _write(root / "img_org" / "train" / "a.jpg", _jpeg())
    (root / "txt" / "ours_train.txt").write_text(f"{PEER}\n{NONE}\n{HOME}\n{NONE2}\n", encoding="utf-8")
    crop = Path(_write(root / "img_vg" / "train" / "crops" / "0_pred_yolo_crop_0.png", _png((5, 7))))
    train = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c").tasks[0].train
    crop.write_bytes(b"\x00" * crop.stat().st_size)  # broken after the build
    with pytest.raises(UnidentifiedImageError):  # what a DataLoader fetch of decoded rows met
        train[0]
    takes_crops = MSPTProcessor(tiny_image_processor, tiny_tokenizer, max_length=16, num_aux_images=1,
                                aux_image_size=16)  # fmt: skip
    collator = MSPTDataCollator(takes_crops, "re")
    rows = collator.undecoded(train)
    assert rows.features["aux_images"].feature.decode is False and rows.features["image"].decode is False
    batch = collator(list(rows))
    assert batch["aux_mask"].tolist() == [[0], [0]] and batch["image_mask"].tolist() == [1, 0]
    assert list(collator.unreadable_images) == [str(crop)]
    plain = MSPTDataCollator(MSPTProcessor(tiny_image_processor, tiny_tokenizer, max_length=16), "re")
    assert "aux_images" not in plain.undecoded(train).column_names  # never decoded when nothing takes them
