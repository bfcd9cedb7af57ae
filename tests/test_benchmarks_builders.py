"""Builders on small hand-made folders: bad input, images and crops, label files, the cache."""

import json
import logging
from pathlib import Path

import datasets
import pytest
from PIL import Image

from datasets_scripts import IMRE, BenchmarkFormatError, load_benchmark

datasets.disable_progress_bars()


def _re_line(tokens, h, t, relation, img):
    return repr({"token": tokens, "h": {"name": " ".join(tokens[h[0]:h[1]]), "pos": list(h)},
                 "t": {"name": " ".join(tokens[t[0]:t[1]]), "pos": list(t)}, "img_id": img, "relation": relation})


A = _re_line(["Ada", "meets", "Ben", "today"], (0, 1), (2, 3), "/per/per/peer", "a.jpg")
B = _re_line(["Ben", "and", "Cleo"], (0, 1), (2, 3), "None", "b.jpg")
C = _re_line(["Cleo", "in", "Paris"], (0, 1), (2, 3), "/per/loc/place_of_residence", "c.jpg")
D = _re_line(["Dev", "at", "Rome"], (0, 1), (2, 3), "None", "d.jpg")


def make_imre(root: Path, files: dict[str, list[str]]) -> Path:
    """MNRE layout with the given ``txt/sep5/*`` files (two tasks by default)."""
    for name, lines in files.items():
        path = root / "txt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\r\n" for line in lines), encoding="utf-8")
    return root


TWO_TASKS = {
    "sep5/ours_train_0.txt": [A, B], "sep5/ours_val_0.txt": [B], "sep5/ours_test_0.txt": [A, B],
    "sep5/ours_train_1.txt": [C, D], "sep5/ours_val_1.txt": [D], "sep5/ours_test_1.txt": [D, A, C, B],
}

NER_SENTENCE = ["IMGID:1", "Ada\tB-PER", "Lovelace\tI-PER", "in\tO", "London\tB-OTHER", ""]


def make_imner(root: Path, overrides: dict[str, list[str]] | None = None) -> Path:
    folder = root / "sep-PLOM"
    folder.mkdir(parents=True)
    for k in range(2):
        for word in ("train", "valid", "test"):
            (folder / f"{word}_{k}.txt").write_text("\n".join(NER_SENTENCE) + "\n", encoding="utf-8")
    for name, lines in (overrides or {}).items():
        (folder / name).write_text("\n".join(lines), encoding="utf-8")
    return root


def _image(path: Path, size=(20, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (255, 0, 0)).save(path)


# --- the task stream -------------------------------------------------------------------------
def test_task_count_comes_from_the_files_and_labels_are_derived(tmp_path):
    benchmark = load_benchmark("imre", "sep5", data_dir=make_imre(tmp_path, TWO_TASKS), cache_dir=tmp_path / "c")
    assert benchmark.num_tasks == 2
    assert benchmark.label_names == ["None", "/per/per/peer", "/per/loc/place_of_residence"]
    assert [t.new_labels for t in benchmark.tasks] == [["None", "/per/per/peer"], ["/per/loc/place_of_residence"]]
    assert benchmark.seen_labels(0) == ["None", "/per/per/peer"]
    test = benchmark.tasks[1].test
    assert [r["tokens"][0] for r in test] == ["Dev", "Ada", "Cleo", "Ben"]  # file order kept
    assert test["task_id"][:] == [1, 0, 1, 0]  # first test file holding the line


def test_rel2id_fixes_the_label_ids(tmp_path):
    root = make_imre(tmp_path, TWO_TASKS)
    rel2id = {"None": 0, "/per/loc/place_of_residence": 1, "/per/per/alumi": 2, "/per/per/peer": 3}
    (root / "ours_rel2id.json").write_text(json.dumps(rel2id))
    benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")
    assert benchmark.label_names == list(rel2id)
    assert benchmark.tasks[0].train["relation"][:] == [3, 0]
    (root / "ours_rel2id.json").write_text(json.dumps({"/per/per/peer": 0, "None": 1, "/per/loc/place_of_residence": 2}))
    with pytest.raises(ValueError, match="'None' has id 1"):
        load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")


# --- bad input: the error names the file and the line -----------------------------------------
@pytest.mark.parametrize("bad_line, line_no, message", [
    ("{'token': ['a', 'b'], 'h': {'name'", 2, "malformed line"),                          # truncated file
    ("__import__('os').system('false')", 2, "malformed line"),                            # never executed
    (_re_line(["a", "b"], (0, 1), (1, 3), "None", "x.jpg"), 2, r"tail entity span \[1, 3\) is outside"),
    ("['not', 'a', 'dict']", 2, "expected a dict"),
])
def test_imre_bad_lines(tmp_path, bad_line, line_no, message):
    files = dict(TWO_TASKS, **{"sep5/ours_train_1.txt": [C, bad_line, D]})
    with pytest.raises(BenchmarkFormatError, match=message) as err:
        load_benchmark("imre", "sep5", data_dir=make_imre(tmp_path, files), cache_dir=tmp_path / "c")
    assert f"ours_train_1.txt:{line_no}:" in str(err.value)
    assert err.value.line == line_no and err.value.path.endswith("ours_train_1.txt")


def test_imre_unknown_relation_with_a_label_file(tmp_path):
    root = make_imre(tmp_path, TWO_TASKS)
    (root / "ours_rel2id.json").write_text(json.dumps({"None": 0, "/per/per/peer": 1}))
    with pytest.raises(BenchmarkFormatError, match=r"ours_train_1\.txt:1: unknown relation '/per/loc/place_of_residence'"):
        load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("file, lines, line_no, message", [
    ("train_1.txt", ["IMGID:1", "Ada\tB-PER", "Lovelace\tB-NORP", ""], 3, "unknown tag 'B-NORP'"),
    ("train_1.txt", ["IMGID:1", "Ada\tB-PER", "Lovelace", ""], 3, "malformed line 'Lovelace'"),
    ("valid_0.txt", ["IMGID:1", "Ada\tB-PER", "", "IMGID:2", "Ada\tB-PER", "Lovel"], 6, "truncated file"),
    ("valid_1.txt", ["IMGID:1", "Ada\tB-PER", "", "IMGID:2", "Ada\tB-PER"], 4, "file ends inside"),
    ("test_1.txt", ["IMGID:1", "Ada\tB-PER", "", "", "Ada\tO", ""], 5, "no 'IMGID:' line"),
    ("test_0.txt", ["IMGID:1", "", "IMGID:2", "Ada\tO", ""], 1, "without any word"),
    ("train_0.txt", [""], None, "empty"),
])
def test_imner_bad_input(tmp_path, file, lines, line_no, message):
    with pytest.raises(BenchmarkFormatError, match=message) as err:
        load_benchmark("imner", "plom", data_dir=make_imner(tmp_path, {file: lines}), cache_dir=tmp_path / "c")
    where = f"{file}:{line_no}:" if line_no else f"{file}:"
    assert where in str(err.value)


def test_imner_other_is_misc_and_missing_folders_are_clear(tmp_path):
    benchmark = load_benchmark("imner", "plom", data_dir=make_imner(tmp_path / "a"), cache_dir=tmp_path / "c")
    row = benchmark.tasks[0].train[0]
    assert [benchmark.label_names[t] for t in row["ner_tags"]] == ["B-PER", "I-PER", "O", "B-MISC"]
    assert row["image_id"] == "1.jpg"
    with pytest.raises(FileNotFoundError, match="sep-POLM-NEW does not exist"):
        load_benchmark("imner", "polm", data_dir=tmp_path / "a", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"imre/sep7 cannot be downloaded.*MRE/data/txt/sep7/.*pass data_dir"):
        load_benchmark("imre", "sep7", cache_dir=tmp_path / "c")  # not pinned: no request is made
    with pytest.raises(ValueError, match=r"imner/polm cannot be downloaded.*sep-POLM-NEW/.*pass data_dir"):
        load_benchmark("imner", "polm", cache_dir=tmp_path / "c")
    files = {k: v for k, v in TWO_TASKS.items() if k != "sep5/ours_val_1.txt"}
    with pytest.raises(FileNotFoundError, match=r"task 1 is incomplete .*ours_val_1\.txt"):
        load_benchmark("imre", "sep5", data_dir=make_imre(tmp_path / "b", files), cache_dir=tmp_path / "c")
    gap = {k.replace("_1.txt", "_2.txt"): v for k, v in TWO_TASKS.items()}  # tasks 0 and 2, no 1
    with pytest.raises(FileNotFoundError, match=r"task 1 is incomplete .*ours_train_1\.txt"):
        load_benchmark("imre", "sep5", data_dir=make_imre(tmp_path / "g", gap), cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown benchmark 'mnre'"):
        load_benchmark("mnre")


# --- images ----------------------------------------------------------------------------------
def test_missing_images_counted_warned_once_or_required(tmp_path, caplog):
    root = make_imre(tmp_path, TWO_TASKS)
    _image(root / "img_org" / "train" / "a.jpg")
    _image(root / "img_org" / "test" / "a.jpg")
    with caplog.at_level(logging.WARNING, logger="datasets_scripts"):
        benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c")
    # missing: train b c d, val b d, test b c d -> 8 distinct paths
    assert benchmark.missing_images == 8
    assert len([r for r in caplog.records if "missing" in r.getMessage()]) == 1
    first = benchmark.tasks[0].train
    assert first[0]["image"].size == (20, 10) and first[1]["image"] is None
    with pytest.raises(FileNotFoundError, match=r"8 images .* missing .*img_org/test/b\.jpg"):
        load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c", require_images=True)


def test_images_beside_the_imner_folder_are_found(tmp_path):
    root = make_imner(tmp_path / "data" / "twitter2017")
    _image(tmp_path / "data" / "twitter2017_images" / "1.jpg", size=(7, 5))
    benchmark = load_benchmark("imner", "plom", data_dir=root, cache_dir=tmp_path / "c", require_images=True)
    assert benchmark.missing_images == 0
    assert benchmark.tasks[1].test[0]["image"].size == (7, 5)


def test_crops_are_keyed_by_the_global_line_index(tmp_path):
    """D10: crop files are numbered by the line in txt/ours_train.txt, not in the task file."""
    root = make_imre(tmp_path, dict(TWO_TASKS, **{"ours_train.txt": [D, C, B, A]}))
    crops = root / "img_vg" / "train" / "crops"
    for name in ("3_pred_yolo_crop_10.png", "3_pred_yolo_crop_2.png", "1_pred_yolo_crop_0.png"):
        _image(crops / name)
    benchmark = load_benchmark("imre", "sep5", data_dir=root, cache_dir=tmp_path / "c", embed_images=True)
    aux = [len(r["aux_images"]) for r in benchmark.tasks[0].train]          # A is global line 3, B line 2
    assert aux == [2, 0]
    assert [len(r["aux_images"]) for r in benchmark.tasks[1].train] == [1, 0]  # C is line 1
    assert benchmark.tasks[0].validation[0]["aux_images"] == []               # no val crops folder


# --- the cache -------------------------------------------------------------------------------
def test_second_build_reuses_the_cache_and_data_dirs_do_not_collide(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    one = make_imre(tmp_path / "one", TWO_TASKS)
    two = make_imre(tmp_path / "two", dict(TWO_TASKS, **{"sep5/ours_train_0.txt": [A, B, B]}))
    first = load_benchmark("imre", "sep5", data_dir=one, cache_dir=cache)

    def no_generation(self, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(IMRE, "_generate_examples", no_generation)
    again = load_benchmark("imre", "sep5", data_dir=one, cache_dir=cache)
    assert again.tasks[0].train.data.table.equals(first.tasks[0].train.data.table)
    with pytest.raises(AssertionError, match="regenerated"):  # another folder is another dataset
        load_benchmark("imre", "sep5", data_dir=two, cache_dir=cache)
    monkeypatch.undo()
    assert len(load_benchmark("imre", "sep5", data_dir=two, cache_dir=cache).tasks[0].train) == 3
    assert len(load_benchmark("imre", "sep5", data_dir=one, cache_dir=cache).tasks[0].train) == 2
    # an edited file is not served from a stale cache
    (one / "txt" / "sep5" / "ours_train_0.txt").write_text(A + "\n", encoding="utf-8")
    assert len(load_benchmark("imre", "sep5", data_dir=one, cache_dir=cache).tasks[0].train) == 1
