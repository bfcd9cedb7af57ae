"""The builders on real split files: the miniature copies in tests/fixtures (always) and the full files in
$MSPT_DATA_DIR (sizes and counts of the reference notes §9; skipped when it is unset).

The behaviour tests (parsing, label order, task ids, cumulative test slices, the sep5 quirk) run on both."""

import ast
import collections
import shutil
from pathlib import Path
from typing import NamedTuple

import datasets
import pytest
from conftest import FIXTURES, full_data_dir

from datasets_scripts import load_benchmark

datasets.disable_progress_bars()

SEP10 = [  # new relations (train count) per task; None count
    ({"/per/per/peer": 960, "/per/misc/religion": 6}, 775),
    ({"/per/org/member_of": 872, "/per/per/charges": 24}, 775),
    ({"/loc/loc/contain": 629, "/per/per/siblings": 14}, 775),
    ({"/per/misc/present_in": 427, "/per/per/neighbor": 8}, 775),
    ({"/org/loc/locate_at": 316, "/per/misc/awarded": 57}, 775),
    ({"/per/loc/place_of_residence": 231, "/per/per/parent": 14}, 775),
    ({"/misc/loc/held_on": 192, "/per/misc/nationality": 98}, 775),
    ({"/org/org/subsidiary": 152, "/misc/misc/part_of": 81}, 775),
    ({"/per/per/alternate_names": 146, "/per/loc/place_of_birth": 69}, 775),
    ({"/per/per/couple": 115, "/org/org/alternate_names": 78}, 769),
]
SEP5_NEW = [
    {"/per/per/peer", "/per/org/member_of", "/per/per/charges", "/per/misc/religion"},
    {"/loc/loc/contain", "/per/misc/present_in", "/per/per/siblings", "/per/per/neighbor"},
    {"/org/loc/locate_at", "/per/loc/place_of_residence", "/per/misc/awarded", "/per/per/parent"},
    {"/misc/loc/held_on", "/org/org/subsidiary", "/per/misc/nationality", "/misc/misc/part_of"},
    {"/per/per/alternate_names", "/per/per/couple", "/org/org/alternate_names", "/per/loc/place_of_birth"},
]
SIZES = {  # train / validation / test per task
    "fixtures": {"sep5": ([6] * 5, [3] * 5, [6, 10, 15, 20, 25]), "plom": ([3] * 4, [2] * 4, [7] * 4)},
    "full": {"sep5": ([3411, 2627, 2167, 2072, 1956], [444, 347, 287, 289, 255], [463, 833, 1111, 1364, 1613]),
             "plom": ([943, 487, 909, 642], [200, 104, 205, 138], [723] * 4)},
}
TYPES = ["PER", "LOC", "ORG", "MISC"]


class Source(NamedTuple):
    name: str  # "fixtures" or "full"
    root: Path


@pytest.fixture(scope="module", params=["fixtures", "full"])
def source(request) -> Source:
    return Source(request.param, FIXTURES if request.param == "fixtures" else full_data_dir())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="module")
def sep5(source, cache):
    return load_benchmark("imre", "sep5", data_dir=source.root / "imre", cache_dir=cache)


@pytest.fixture(scope="module")
def plom(source, cache):
    return load_benchmark("imner", "plom", data_dir=source.root / "imner" / "twitter2017", cache_dir=cache)


@pytest.fixture(scope="module")
def sep10(cache):
    return load_benchmark("imre", "sep10", data_dir=full_data_dir() / "imre", cache_dir=cache)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _relations(dataset, benchmark) -> collections.Counter:
    return collections.Counter(benchmark.label_names[i] for i in dataset["relation"][:])


def _sizes(benchmark):
    return tuple([len(getattr(t, split)) for t in benchmark.tasks] for split in ("train", "validation", "test"))


@pytest.fixture(scope="module", params=["fixtures/sep5", "full/sep5", "full/sep10"])
def imre(request, cache):
    """``(config, the imre folder, the benchmark)``: sep5 from both sources, sep10 from the full files."""
    where, config = request.param.split("/")
    root = (FIXTURES if where == "fixtures" else full_data_dir()) / "imre"
    return config, root, load_benchmark("imre", config, data_dir=root, cache_dir=cache)


# --- IMRE ------------------------------------------------------------------------------------
def test_sep5_sizes_and_label_sets(sep5, source):
    assert _sizes(sep5) == SIZES[source.name]["sep5"]
    assert [set(t.new_labels) - {"None"} for t in sep5.tasks] == SEP5_NEW
    assert sep5.tasks[0].new_labels[0] == "None"


def test_sep10_sizes_and_relations_match_the_analysis(sep10):
    assert sep10.num_tasks == 10 and sep10.task_type == "re"
    assert _sizes(sep10) == ([1741, 1671, 1418, 1210, 1148, 1020, 1065, 1008, 990, 962],
                             [221, 223, 184, 163, 156, 131, 149, 140, 123, 132],
                             [255, 464, 662, 836, 984, 1115, 1241, 1369, 1495, 1614])  # fmt: skip
    for task, (new, none) in zip(sep10.tasks, SEP10):
        assert _relations(task.train, sep10) == collections.Counter(new) + collections.Counter({"None": none})
        assert set(task.new_labels) == set(new) | ({"None"} if task.task_id == 0 else set())


def test_imre_splits_equal_the_files_line_by_line(imre):
    config, root, benchmark = imre
    for task in benchmark.tasks:
        for split, word in (("train", "train"), ("validation", "val"), ("test", "test")):
            records = [ast.literal_eval(line) for line in _lines(root / "txt" / config / f"ours_{word}_{task.task_id}.txt")]
            data = getattr(task, split)
            assert len(data) == len(records), (config, split, task.task_id)
            assert data["tokens"][:] == [r["token"] for r in records]
            assert data["image_id"][:] == [r["img_id"] for r in records]
            assert list(zip(data["head_name"][:], data["head_start"][:], data["head_end"][:])) == [
                (r["h"]["name"], *r["h"]["pos"]) for r in records]
            assert list(zip(data["tail_name"][:], data["tail_start"][:], data["tail_end"][:])) == [
                (r["t"]["name"], *r["t"]["pos"]) for r in records]
            assert [benchmark.label_names[i] for i in data["relation"][:]] == [r["relation"] for r in records]


def test_imre_train_and_validation_hold_only_the_task_relations_and_none(imre):
    _, _, benchmark = imre
    assert benchmark.label_names[0] == "None"
    assert len(benchmark.label_names) == 21  # /per/per/alumi and /per/misc/race are in no task
    seen = set()
    for task in benchmark.tasks:
        new = set(task.new_labels) | {"None"}
        assert not (set(task.new_labels) - {"None"}) & seen, "a relation is introduced twice"
        assert set(_relations(task.train, benchmark)) <= new
        assert set(_relations(task.validation, benchmark)) <= new
        seen |= new
        assert set(_relations(task.test, benchmark)) <= seen, "the test set holds an unseen relation"
        assert set(task.train["task_id"][:]) == {task.task_id}


def _test_rows(dataset) -> collections.Counter:
    columns = zip(dataset["tokens"][:], dataset["head_start"][:], dataset["tail_start"][:], dataset["relation"][:])
    return collections.Counter((tuple(tokens), *rest) for tokens, *rest in columns)


def test_imre_tests_are_cumulative_and_tagged_with_the_introducing_task(imre):
    config, _, benchmark = imre
    previous = collections.Counter()
    for task in benchmark.tasks:
        current = _test_rows(task.test)
        lost = previous - current
        # reference notes §9.1: sep5 is nested except one /per/per/peer test example of task 0; sep10 is nested
        assert sum(lost.values()) == (1 if config == "sep5" and task.task_id == 1 else 0), task.task_id
        ids = collections.Counter(task.test["task_id"][:])
        assert ids[task.task_id] == len(task.test) - (sum(previous.values()) - sum(lost.values()))
        assert max(ids) == task.task_id
        previous = current
    final = benchmark.tasks[-1].test
    for task_id, relation in zip(final["task_id"][:], final["relation"][:]):
        assert benchmark.label_names[relation] in set(benchmark.tasks[task_id].new_labels) | {"None"}


def test_sep5_quirk_one_peer_example_leaves_the_test_set(sep5):
    lost = _test_rows(sep5.tasks[0].test) - _test_rows(sep5.tasks[1].test)
    assert sum(lost.values()) == 1
    assert sep5.label_names[next(iter(lost))[3]] == "/per/per/peer"


def test_missing_images_are_counted_not_fatal(sep5):
    all_ids = set()
    for task in sep5.tasks:
        for split, folder in (("train", "train"), ("validation", "val"), ("test", "test")):
            all_ids |= {(folder, i) for i in getattr(task, split)["image_id"][:]}
    assert sep5.missing_images == len(all_ids)  # text-only files: every image is missing
    assert sep5.tasks[0].train[0]["image"] is None


# --- IMNER -----------------------------------------------------------------------------------
def _b_counts(dataset, benchmark) -> collections.Counter:
    names = benchmark.label_names
    return collections.Counter(names[t] for tags in dataset["ner_tags"][:] for t in tags if names[t] != "O")


def test_plom_sizes_types_and_label_order(plom, source):
    assert plom.task_type == "ner" and plom.num_tasks == 4
    assert plom.label_names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    assert _sizes(plom) == SIZES[source.name]["plom"]
    assert [t.new_labels for t in plom.tasks] == [["O", "B-PER", "I-PER"], ["B-LOC", "I-LOC"],
                                                  ["B-ORG", "I-ORG"], ["B-MISC", "I-MISC"]]
    for task, kind in zip(plom.tasks, TYPES):  # train/valid tag only the task's type
        for split in (task.train, task.validation):
            assert {label[2:] for label in _b_counts(split, plom)} == {kind}


def test_plom_tag_counts_match_the_analysis(cache):
    plom = load_benchmark("imner", "plom", data_dir=full_data_dir() / "imner" / "twitter2017", cache_dir=cache)
    train = [(1394, 1052), (623, 277), (1397, 439), (701, 862)]
    for task, (b, i), kind in zip(plom.tasks, train, TYPES):
        assert _b_counts(task.train, plom) == {f"B-{kind}": b, f"I-{kind}": i}
    final = _b_counts(plom.tasks[-1].test, plom)
    assert {k: final[f"B-{k}"] for k in TYPES} == {"PER": 621, "LOC": 178, "ORG": 395, "MISC": 157}


def test_plom_splits_equal_the_files(plom, source):
    folder = source.root / "imner" / "twitter2017" / "sep-PLOM"
    for task in plom.tasks:
        for split, word in (("train", "train"), ("validation", "valid"), ("test", "test")):
            blocks = [b for b in (folder / f"{word}_{task.task_id}.txt").read_text(encoding="utf-8").split("\n\n")
                      if b.strip()]  # fmt: skip
            data = getattr(task, split)
            assert len(data) == len(blocks)
            words = [[line.rstrip("\r").split("\t")[0] for line in b.strip().splitlines()[1:]] for b in blocks]
            assert data["tokens"][:] == words
            assert data["image_id"][:] == [b.strip().splitlines()[0].strip()[len("IMGID:"):] + ".jpg" for b in blocks]


def test_plom_tests_are_cumulative_over_the_same_sentences(plom, source):
    names = plom.label_names
    final = plom.tasks[-1].test
    for task in plom.tasks:
        assert task.test["tokens"][:] == final["tokens"][:]
        keep = set(TYPES[: task.task_id + 1])
        for tags, full in zip(task.test["ner_tags"][:], final["ner_tags"][:]):
            assert [names[t] for t in tags] == [names[t] if names[t][2:] in keep else "O" for t in full]
    ids = final["task_id"][:]
    for tags, task_id in zip(final["ner_tags"][:], ids):
        types = {names[t][2:] for t in tags if t}
        assert task_id == (min(TYPES.index(t) for t in types) if types else -1)
    assert -1 in ids and set(range(4)) <= set(ids)  # the fixtures keep an entity-free sentence and every type
    assert any(any(ord(c) > 127 for w in words for c in w) for words in final["tokens"][:])  # UTF-8 words


def test_polm_is_the_same_files_in_another_order(tmp_path, plom, source, cache):
    """No sep-POLM-NEW here: build it from the PLOM files (PER -> ORG -> LOC -> MISC)."""
    folder, target = source.root / "imner" / "twitter2017" / "sep-PLOM", tmp_path / "sep-POLM-NEW"
    target.mkdir()
    for new, old in enumerate([0, 2, 1, 3]):
        for word in ("train", "valid"):
            shutil.copy(folder / f"{word}_{old}.txt", target / f"{word}_{new}.txt")
        keep = {"O"} | {f"{p}-{t}" for t in ["PER", "ORG", "LOC", "MISC"][: new + 1] for p in "BI"}
        lines = []
        for line in (folder / "test_3.txt").read_text(encoding="utf-8").splitlines():
            word, _, tag = line.partition("\t")
            lines.append(line if not tag or tag in keep else f"{word}\tO")
        (target / f"test_{new}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    polm = load_benchmark("imner", "polm", data_dir=tmp_path, cache_dir=cache)
    assert polm.label_names == plom.label_names  # the same ids in every order
    assert [t.new_labels[-2:] for t in polm.tasks] == [["B-PER", "I-PER"], ["B-ORG", "I-ORG"],
                                                       ["B-LOC", "I-LOC"], ["B-MISC", "I-MISC"]]
    assert [len(t.train) for t in polm.tasks] == [len(plom.tasks[k].train) for k in (0, 2, 1, 3)]
    assert polm.tasks[-1].test["ner_tags"][:] == plom.tasks[-1].test["ner_tags"][:]


# --- the fixtures are real -------------------------------------------------------------------
def test_fixtures_are_verbatim_excerpts_of_the_full_files():
    full = full_data_dir()
    files = sorted(p for p in FIXTURES.rglob("*.txt"))
    assert len(files) == 15 + 12
    for path in files:
        relative = path.relative_to(FIXTURES)
        if relative.parts[0] == "imre":
            mine, theirs = path.read_bytes().split(b"\n"), (full / relative).read_bytes().split(b"\n")
        else:
            mine, theirs = path.read_bytes().split(b"\r\n\r\n"), (full / relative).read_bytes().split(b"\r\n\r\n")
        mine = [part for part in mine if part.strip()]
        position = {part: i for i, part in enumerate(theirs)}
        assert all(part in position for part in mine), relative
        assert [position[part] for part in mine] == sorted(position[part] for part in mine), f"{relative}: order"
