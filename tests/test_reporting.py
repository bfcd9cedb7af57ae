"""Reporting: results.json, the two plots, the model card, and the push of a whole run to a local Hub server."""

import json
import os
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import make_config
from continual_trainer.reporting import (
    ACCURACY_PLOT_NAME,
    BALANCE_PLOT_NAME,
    plot_accuracy_matrix,
    plot_modality_balance,
    push_run_to_hub,
    run_files,
    write_all_results,
    write_model_card,
    write_results,
)
from continual_trainer.state import ContinualState, describe_benchmark, write_run
from continual_trainer.trainer import ContinualResult
from datasets_scripts.benchmark import ContinualBenchmark, ContinualTask
from hub_server import local_hub

MATRIX = [[0.9], [0.7, 0.8], [0.6, 0.65, 0.75]]
SUMMARY = {"final_average": 2.0 / 3, "average_incremental": 0.7666666666666666, "forgetting": 0.225, "bwt": -0.225}
LABELS = ["None", "/per/per/peer", "/per/org/member_of", "/loc/loc/contain"]


def modulation_entry(steps, start, fixed=None):
    rho = [start + 0.1 * s for s in range(steps)]
    k_text = [1.0] * steps
    k_vision = [1 - np.tanh(0.5 * r) for r in rho]
    applied = fixed or (k_text, k_vision)
    return {"rho_vision": rho, "k_text": k_text, "k_vision": k_vision, "k_text_applied": list(applied[0]),
            "k_vision_applied": list(applied[1]), "k_text_mean": 1.0,
            "k_vision_mean": float(np.mean(k_vision))}  # fmt: skip


@pytest.fixture
def result():
    task_metrics = [{"task": k, "metric": "micro_f1", "cumulative": c, "slices": row,
                     "cumulative_metrics": {"micro_f1": c, "precision": np.float32(0.5), "recall": float("nan")}}
                    for k, (c, row) in enumerate(zip([0.9, 0.74, 0.66], MATRIX))]  # fmt: skip
    modulation = [modulation_entry(6, 1.2), modulation_entry(4, 0.8, fixed=([1.0] * 4, [0.6] * 4)), {}]
    return ContinualResult(MATRIX, [0.9, 0.74, 0.66], dict(SUMMARY), task_metrics, modulation)


@pytest.fixture
def benchmark():
    def split(n, task):
        return datasets.Dataset.from_dict({"relation": [task] * n})

    new_labels = [["/per/per/peer", "None"], ["/per/org/member_of"], ["/loc/loc/contain"]]
    tasks = [ContinualTask(k, split(5 + k, k), split(2, k), split(3 * (k + 1), k), new_labels[k]) for k in range(3)]
    return ContinualBenchmark("synthetic", "re", "re", LABELS, tasks, fingerprint="f00dcafe")


@pytest.fixture
def results(tmp_path, result, benchmark):
    arguments = {"strategy": "mspt", "learning_rate": np.float64(3e-5), "hub_token": "hf_secret", "seed": 7}
    return write_results(str(tmp_path), result, arguments, benchmark, seed=7)


def test_results_json_strict_and_complete(tmp_path, results, benchmark):
    with open(tmp_path / "results.json") as f:
        text = f.read()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert loaded == results
    assert set(loaded) == {"accuracy_matrix", "cumulative", "summary", "metric_definitions", "task_metrics",
                           "arguments", "versions", "data", "seed"}  # fmt: skip
    assert loaded["accuracy_matrix"] == MATRIX and [len(r) for r in loaded["accuracy_matrix"]] == [1, 2, 3]
    assert loaded["cumulative"] == [0.9, 0.74, 0.66]
    assert loaded["summary"] == SUMMARY
    assert "forgetting" in loaded["metric_definitions"] and "accuracy_matrix" in loaded["metric_definitions"]
    assert loaded["task_metrics"][1]["cumulative_metrics"] == {"micro_f1": 0.74, "precision": 0.5, "recall": None}
    assert loaded["arguments"] == {"strategy": "mspt", "learning_rate": 3e-5, "hub_token": "<redacted>", "seed": 7}
    assert "hf_secret" not in text
    versions = loaded["versions"]
    assert set(versions) == {"python", "torch", "transformers", "datasets", "accelerate", "huggingface_hub", "mspt"}
    assert versions["transformers"] and versions["torch"] and versions["python"].count(".") == 2
    assert loaded["data"] == {
        "benchmark": "synthetic", "config": "re", "task_type": "re", "label_names": LABELS,
        "new_labels": [["/per/per/peer", "None"], ["/per/org/member_of"], ["/loc/loc/contain"]],
        "sizes": [{"train": 5, "validation": 2, "test": 3}, {"train": 6, "validation": 2, "test": 6},
                  {"train": 7, "validation": 2, "test": 9}],
        "checksum": "f00dcafe",
    }  # fmt: skip
    assert loaded["seed"] == 7
    # the description stored in continual_run.json gives the same data block (reports without loading the data)
    again = write_results(str(tmp_path / "again"), ContinualResult(MATRIX, [0.9, 0.74, 0.66], SUMMARY, [], []), {},
                          describe_benchmark(benchmark), seed=7)  # fmt: skip
    assert again["data"] == loaded["data"]


def test_results_reject_a_short_matrix_row(tmp_path, benchmark):
    bad = ContinualResult([[0.9], [0.7]], [0.9, 0.7], dict(SUMMARY), [], [])
    with pytest.raises(ValueError, match="row 1 has 1 values"):
        write_results(str(tmp_path), bad, {}, benchmark, seed=0)


def assert_png(path, min_size=300):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_size, image.size
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 20  # not a blank canvas


def test_plots_are_valid_images(tmp_path, result):
    path = plot_accuracy_matrix(result.matrix, str(tmp_path / "matrix.png"), title="synthetic/re")
    assert_png(path)
    assert_png(plot_modality_balance(result.modulation, str(tmp_path / "balance.png")))
    # modulation off: every entry is {}; the figure says so instead of failing
    assert_png(plot_modality_balance([{}, {}, {}], str(tmp_path / "off.png")), min_size=200)
    with pytest.raises(ValueError, match="task 0"):
        plot_modality_balance([{"rho_vision": [1.0, 2.0], "k_text": [1.0]}], str(tmp_path / "bad.png"))


def test_plots_without_matplotlib_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if matplotlib were absent
    with pytest.raises(ImportError, match=r"mspt\[plots\]"):
        plot_accuracy_matrix(MATRIX, str(tmp_path / "matrix.png"))


@pytest.mark.parametrize("task_type,auto_class,pipeline_tag", [
    ("re", "AutoModelForSequenceClassification", "text-classification"),
    ("ner", "AutoModelForTokenClassification", "token-classification")])  # fmt: skip
def test_model_card_yaml_and_model_index(tmp_path, results, task_type, auto_class, pipeline_tag):
    from huggingface_hub import ModelCard

    for k in range(3):  # the per-task checkpoints the card points to
        (tmp_path / f"task-{k:02d}").mkdir()
        (tmp_path / f"task-{k:02d}" / "config.json").write_text("{}")
    path = write_model_card(str(tmp_path), results, "mspt-synthetic", task_type,
                            base_models=["bert-base-uncased", "openai/clip-vit-base-patch32"],
                            repo_id="tester/mspt-synthetic", datasets=["tester/imre"])  # fmt: skip
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == pipeline_tag  # the task of the Auto class the checkpoint registers
    assert data.datasets == ["tester/imre"]
    assert data.metrics == (["f1", "precision", "recall"] if task_type == "re" else ["seqeval", "f1"])
    assert {"mspt", "continual-learning", "multimodal", "synthetic"} <= set(data.tags)
    assert data.base_model == ["bert-base-uncased", "openai/clip-vit-base-patch32"]
    assert data.model_name == "mspt-synthetic"
    assert {r.metric_type: r.metric_value for r in data.eval_results} == SUMMARY
    assert {(r.dataset_type, r.dataset_name, r.dataset_config) for r in data.eval_results} == {
        ("synthetic", "synthetic/re", "re")}  # fmt: skip
    text = card.text
    assert f'{auto_class}.from_pretrained("tester/mspt-synthetic", trust_remote_code=True)' in text
    assert 'AutoProcessor.from_pretrained("tester/mspt-synthetic", trust_remote_code=True)' in text
    assert "| 2 | 0.7000 | 0.8000 |  | 0.7400 |" in text  # a matrix row: empty above the diagonal, then cumulative
    assert "| Backward transfer (`bwt`) | -0.2250 |" in text
    assert "`task-00/` (after task 1), `task-01/` (after task 2), `task-02/` (after task 3)" in text
    assert 'subfolder="task-00"' in text and "f00dcafe" in text
    assert "](accuracy_matrix.png)" not in text  # no plot written: none embedded


def test_model_card_branches_revision_plots_and_license(tmp_path, results, result):
    from huggingface_hub import ModelCard

    for k in range(2):
        (tmp_path / f"task-{k:02d}").mkdir()
        (tmp_path / f"task-{k:02d}" / "config.json").write_text("{}")
    plot_accuracy_matrix(result.matrix, str(tmp_path / ACCURACY_PLOT_NAME))
    plot_modality_balance(result.modulation, str(tmp_path / BALANCE_PLOT_NAME))
    path = write_model_card(str(tmp_path), results, "mspt-run", "re", repo_id="org/mspt-run", revision="v2",
                            task_layout="branches", license="mit")  # fmt: skip
    card = ModelCard.load(path)
    assert card.data.license == "mit" and card.data.base_model is None and card.data.datasets is None
    text = card.text
    load = 'AutoModelForSequenceClassification.from_pretrained("org/mspt-run", revision="v2", trust_remote_code=True)'
    assert load in text
    assert "The root of branch `v2` holds the final model." in text
    assert "`v2-task-00` (after task 1), `v2-task-01` (after task 2)" in text and 'revision="v2-task-00"' in text
    assert "subfolder=" not in text
    # the plots are embedded by relative links to the PNGs pushed next to the card
    assert "](accuracy_matrix.png)" in text and "](modality_balance.png)" in text
    # a run kept on disk: the snippet names its folder; the main branch needs no revision argument
    local = write_model_card(str(tmp_path / "local"), results, "local", "re")
    assert f'from_pretrained("{tmp_path / "local"}", trust_remote_code=True)' in ModelCard.load(local).text
    main = write_model_card(str(tmp_path / "main"), results, "m", "re", repo_id="org/m", revision="main")
    assert 'from_pretrained("org/m", trust_remote_code=True)' in ModelCard.load(main).text
    with pytest.raises(ValueError, match="task_layout"):
        write_model_card(str(tmp_path), results, "m", "re", repo_id="org/m", task_layout="branch")


def test_all_results_json_is_flat_and_strict(tmp_path, results):
    metrics = write_all_results(str(tmp_path), results)
    loaded = json.loads((tmp_path / "all_results.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))  # fmt: skip
    assert loaded == metrics == {**SUMMARY, "num_tasks": 3, "final_cumulative": 0.66, "final_task_1": 0.6,
                                 "final_task_2": 0.65, "final_task_3": 0.75}  # fmt: skip
    results = {**results, "summary": {**SUMMARY, "bwt": float("nan")}}
    assert write_all_results(str(tmp_path), results)["bwt"] is None


# ------------------------------------------------------------------------------------------------------- push
@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The local Hub, with huggingface_hub pointed at it and every non-loopback connection refused."""
    with local_hub(monkeypatch, tmp_path) as server:
        yield server


@pytest.fixture
def run_dir(tmp_path, result, benchmark, tiny_processor):
    """An output_dir as a finished 2-task run leaves it, plus what must not be uploaded."""
    from modeling_mspt import MSPTForRelationExtraction

    root = tmp_path / "run"
    model = MSPTForRelationExtraction(make_config())
    write_run(str(root), describe_benchmark(benchmark), "mspt")
    for k in range(2):
        model.save_pretrained(root / f"task-{k:02d}")
        tiny_processor.save_pretrained(root / f"task-{k:02d}")
        ContinualState(describe_benchmark(benchmark), "mspt", completed_tasks=k + 1).save(str(root / f"task-{k:02d}"))
    model.save_pretrained(root)
    tiny_processor.save_pretrained(root)
    results = write_results(str(root), result, {"strategy": "mspt"}, benchmark, seed=7)
    write_model_card(str(root), results, "mspt-run", "re", repo_id="tester/mspt-run")
    plot_accuracy_matrix(result.matrix, str(root / ACCURACY_PLOT_NAME))
    plot_modality_balance(result.modulation, str(root / BALANCE_PLOT_NAME))
    # not for the Hub: a mid-task HF checkpoint, a half-written file, a folder beside the tasks
    (root / "task-01" / "checkpoint-3").mkdir()
    (root / "task-01" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (root / "task-01" / "checkpoint-3" / "model.safetensors").write_bytes(b"x" * 10)
    (root / "task-01" / "continual_state.json.tmp").write_text("{")
    (root / "runs").mkdir()
    (root / "runs" / "events.out.tfevents").write_bytes(b"log")
    return root


def test_push_run_uploads_root_and_task_subfolders(hub, run_dir):
    expected = {name for name in os.listdir(run_dir) if (run_dir / name).is_file()}
    for k in range(2):
        task = f"task-{k:02d}"
        expected |= {f"{task}/{n}" for n in os.listdir(run_dir / task) if (run_dir / task / n).is_file()}
    expected -= {"task-01/continual_state.json.tmp"}
    assert {"README.md", "results.json", "config.json", "model.safetensors", "continual_run.json",
            "accuracy_matrix.png", "modality_balance.png", "task-00/model.safetensors", "task-01/continual_state.json",
            "task-01/modeling_mspt.py", "task-00/tokenizer.json"} <= expected  # fmt: skip
    assert set(run_files(str(run_dir))) == expected

    info = push_run_to_hub(str(run_dir), "tester/mspt-run", token="hf_test", endpoint=hub.endpoint)

    stored = hub.files("tester/mspt-run")
    assert set(stored) == expected  # no checkpoint-*, no *.tmp, no runs/
    assert all(stored[path] == (run_dir / path).read_bytes() for path in expected)
    assert info.commit_url.startswith(f"{hub.endpoint}/tester/mspt-run/commit/")
    assert [c[:2] for c in hub.commits] == [("tester/mspt-run", "main")]
    assert hub.commits[0][2] == "Upload MSPT continual run"
    routes = [r for r in hub.requests if r != ("GET", "/api/agent-harnesses")]
    assert routes[0] == ("POST", "/api/repos/create")
    assert routes[-2:] == [("POST", "/api/models/tester/mspt-run/preupload/main"),
                           ("POST", "/api/models/tester/mspt-run/commit/main")]  # fmt: skip
    assert set(routes[1:-2]) <= {("POST", "/api/validate-yaml")}

    # a second push goes to the existing repo (create_repo answers 409, exist_ok)
    push_run_to_hub(str(run_dir), "tester/mspt-run", token="hf_test", endpoint=hub.endpoint, commit_message="again")
    assert [c[2] for c in hub.commits] == ["Upload MSPT continual run", "again"]
    assert set(hub.files("tester/mspt-run")) == expected


def test_push_refuses_a_folder_without_tasks(hub, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no task-XX/ folder"):
        push_run_to_hub(str(tmp_path), "tester/empty", token="hf_test", endpoint=hub.endpoint)
    assert hub.requests == []
