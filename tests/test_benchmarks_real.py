"""The builders on the real split files in ../shared/data: sizes, label sets, cumulative tests.

Expected numbers are those of the reference analysis §9 (and are re-counted from the files)."""

import ast
import collections
import shutil
from pathlib import Path

import datasets
import pytest

from datasets_scripts import load_benchmark

datasets.disable_progress_bars()

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

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


def _data() -> Path:
    if not (DATA / "imre" / "txt").is_dir() or not (DATA / "imner" / "twitter2017").is_dir():
        pytest.fail(f"the real split files are missing: expected {DATA}/imre/txt and {DATA}/imner/twitter2017 "
                    "(the shared/data folder beside the repository clone)")
    return DATA


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="module")
def sep10(cache):
    return load_benchmark("imre", "sep10", data_dir=_data() / "imre", cache_dir=cache)


@pytest.fixture(scope="module")
def sep5(cache):
    return load_benchmark("imre", "sep5", data_dir=_data() / "imre", cache_dir=cache)


@pytest.fixture(scope="module")
def plom(cache):
    return load_benchmark("imner", "plom", data_dir=_data() / "imner" / "twitter2017", cache_dir=cache)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _relations(dataset, benchmark) -> collections.Counter:
    return collections.Counter(benchmark.label_names[i] for i in dataset["relation"][:])


# --- IMRE ------------------------------------------------------------------------------------
def test_sep10_sizes_and_relations_match_the_analysis(sep10):
    assert sep10.num_tasks == 10 and sep10.task_type == "re"
    assert [len(t.train) for t in sep10.tasks] == [1741, 1671, 1418, 1210, 1148, 1020, 1065, 1008, 990, 962]
    assert [len(t.validation) for t in sep10.tasks] == [221, 223, 184, 163, 156, 131, 149, 140, 123, 132]
    assert [len(t.test) for t in sep10.tasks] == [255, 464, 662, 836, 984, 1115, 1241, 1369, 1495, 1614]
    for task, (new, none) in zip(sep10.tasks, SEP10):
        assert _relations(task.train, sep10) == collections.Counter(new) + collections.Counter({"None": none})
        assert set(task.new_labels) == set(new) | ({"None"} if task.task_id == 0 else set())


def test_sep5_sizes_and_label_sets(sep5):
    assert [len(t.train) for t in sep5.tasks] == [3411, 2627, 2167, 2072, 1956]
    assert [len(t.validation) for t in sep5.tasks] == [444, 347, 287, 289, 255]
    assert [len(t.test) for t in sep5.tasks] == [463, 833, 1111, 1364, 1613]
    assert [set(t.new_labels) - {"None"} for t in sep5.tasks] == SEP5_NEW


@pytest.mark.parametrize("config", ["sep5", "sep10"])
def test_imre_splits_equal_the_files(config, sep5, sep10):
    benchmark = {"sep5": sep5, "sep10": sep10}[config]
    folder = DATA / "imre" / "txt" / config
    for task in benchmark.tasks:
        for split, word in (("train", "train"), ("validation", "val"), ("test", "test")):
            lines = _lines(folder / f"ours_{word}_{task.task_id}.txt")
            dataset = getattr(task, split)
            assert len(dataset) == len(lines), (config, split, task.task_id)
            first, row = ast.literal_eval(lines[0]), dataset[0]
            assert row["tokens"] == first["token"] and row["image_id"] == first["img_id"]
            assert (row["head_start"], row["head_end"]) == tuple(first["h"]["pos"])
            assert (row["tail_name"], row["tail_start"], row["tail_end"]) == (first["t"]["name"], *first["t"]["pos"])
            assert benchmark.label_names[row["relation"]] == first["relation"]


@pytest.mark.parametrize("config", ["sep5", "sep10"])
def test_imre_train_and_validation_hold_only_the_task_relations_and_none(config, sep5, sep10):
    benchmark = {"sep5": sep5, "sep10": sep10}[config]
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


def test_sep10_tests_are_cumulative_and_tagged_with_the_introducing_task(sep10):
    def rows(dataset):
        return collections.Counter(
            (tuple(r["tokens"]), r["head_start"], r["tail_start"], r["relation"]) for r in dataset
        )

    previous = collections.Counter()
    for task in sep10.tasks:
        current = rows(task.test)
        assert not previous - current, "a test example disappeared"
        ids = collections.Counter(task.test["task_id"][:])
        assert ids[task.task_id] == len(task.test) - sum(previous.values())
        assert max(ids) == task.task_id
        previous = current
    final = sep10.tasks[-1].test
    for task_id, relation in zip(final["task_id"][:], final["relation"][:]):
        assert sep10.label_names[relation] in set(sep10.tasks[task_id].new_labels) | {"None"}


def test_sep5_quirk_one_peer_example_leaves_the_test_set(sep5):
    """Analysis §9.1: sep5 is nested except one /per/per/peer test example of task 1."""
    key = lambda r: (tuple(r["tokens"]), r["head_start"], r["tail_start"], r["relation"])
    first, second = (collections.Counter(key(r) for r in sep5.tasks[k].test) for k in (0, 1))
    lost = first - second
    assert sum(lost.values()) == 1
    assert sep5.label_names[next(iter(lost))[3]] == "/per/per/peer"


def test_missing_images_are_counted_not_fatal(sep10):
    all_ids = set()
    for task in sep10.tasks:
        for split, folder in (("train", "train"), ("validation", "val"), ("test", "test")):
            all_ids |= {(folder, i) for i in getattr(task, split)["image_id"][:]}
    assert sep10.missing_images == len(all_ids)  # text-only copy: every image is missing
    assert sep10.tasks[0].train[0]["image"] is None


# --- IMNER -----------------------------------------------------------------------------------
def _b_counts(dataset, benchmark) -> collections.Counter:
    names = benchmark.label_names
    return collections.Counter(names[t] for tags in dataset["ner_tags"][:] for t in tags if names[t] != "O")


def test_plom_sizes_types_and_tag_counts(plom):
    assert plom.task_type == "ner" and plom.num_tasks == 4
    assert plom.label_names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    assert [len(t.train) for t in plom.tasks] == [943, 487, 909, 642]
    assert [len(t.validation) for t in plom.tasks] == [200, 104, 205, 138]
    assert [len(t.test) for t in plom.tasks] == [723] * 4
    assert [t.new_labels for t in plom.tasks] == [["O", "B-PER", "I-PER"], ["B-LOC", "I-LOC"],
                                                  ["B-ORG", "I-ORG"], ["B-MISC", "I-MISC"]]
    train = [(1394, 1052), (623, 277), (1397, 439), (701, 862)]
    for task, (b, i), kind in zip(plom.tasks, train, ["PER", "LOC", "ORG", "MISC"]):
        assert _b_counts(task.train, plom) == {f"B-{kind}": b, f"I-{kind}": i}
    final = _b_counts(plom.tasks[-1].test, plom)
    assert {k: final[f"B-{k}"] for k in ("PER", "LOC", "ORG", "MISC")} == {"PER": 621, "LOC": 178, "ORG": 395, "MISC": 157}


def test_plom_splits_equal_the_files(plom):
    folder = DATA / "imner" / "twitter2017" / "sep-PLOM"
    for task in plom.tasks:
        for split, word in (("train", "train"), ("validation", "valid"), ("test", "test")):
            text = (folder / f"{word}_{task.task_id}.txt").read_text(encoding="utf-8")
            assert len(getattr(task, split)) == text.count("IMGID:")
        words = [line.split("\t")[0] for line in text.splitlines()[1:] if line.strip()][:3]
        assert task.test[0]["tokens"][:3] == words


def test_plom_tests_are_cumulative_over_the_same_sentences(plom):
    names, order = plom.label_names, ["PER", "LOC", "ORG", "MISC"]
    final = plom.tasks[-1].test
    for task in plom.tasks:
        assert task.test["tokens"][:] == final["tokens"][:]
        keep = set(order[: task.task_id + 1])
        for tags, full in zip(task.test["ner_tags"][:], final["ner_tags"][:]):
            assert [names[t] for t in tags] == [names[t] if names[t][2:] in keep else "O" for t in full]
    for tags, task_id in zip(final["ner_tags"][:], final["task_id"][:]):
        types = {names[t][2:] for t in tags if t}
        assert task_id == (min(order.index(t) for t in types) if types else -1)


def test_polm_is_the_same_files_in_another_order(tmp_path, plom, cache):
    """No sep-POLM-NEW in shared/data: build it from the PLOM files (PER -> ORG -> LOC -> MISC)."""
    source, target = DATA / "imner" / "twitter2017" / "sep-PLOM", tmp_path / "sep-POLM-NEW"
    target.mkdir()
    for new, old in enumerate([0, 2, 1, 3]):
        for word in ("train", "valid"):
            shutil.copy(source / f"{word}_{old}.txt", target / f"{word}_{new}.txt")
        keep = {"O"} | {f"{p}-{t}" for t in ["PER", "ORG", "LOC", "MISC"][: new + 1] for p in "BI"}
        lines = []
        for line in (source / "test_3.txt").read_text(encoding="utf-8").splitlines():
            word, _, tag = line.partition("\t")
            lines.append(line if not tag or tag in keep else f"{word}\tO")
        (target / f"test_{new}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    polm = load_benchmark("imner", "polm", data_dir=tmp_path, cache_dir=cache)
    assert polm.label_names == plom.label_names  # the same ids in every order
    assert [t.new_labels[-2:] for t in polm.tasks] == [["B-PER", "I-PER"], ["B-ORG", "I-ORG"],
                                                       ["B-LOC", "I-LOC"], ["B-MISC", "I-MISC"]]
    assert [len(t.train) for t in polm.tasks] == [943, 909, 487, 642]
    assert polm.tasks[-1].test["ner_tags"][:] == plom.tasks[-1].test["ner_tags"][:]
