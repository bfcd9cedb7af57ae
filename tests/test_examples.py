"""The example scripts end to end, as a user runs them: outputs, reload, CLI resume, 2 processes, Hub push."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic_num_tasks", "2", "--synthetic_train_per_task", "32", "--synthetic_test_per_task", "16",
        "--num_train_epochs", "1", "--tiny_hidden_size", "32", "--save_strategy", "no", "--logging_steps", "1"]  # fmt: skip


def run_example(script, out, cache, *extra, launcher=(sys.executable,), env=None):
    cmd = [*launcher, str(ROOT / "examples" / script), "--output_dir", str(out), "--dataset_cache_dir", str(cache),
           *TINY, *map(str, extra)]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    environment.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})
    result = subprocess.run(cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    logs = {}
    for script, kind in (("run_imre.py", "re"), ("run_imner.py", "ner")):
        logs[kind] = run_example(script, root / kind, root / "cache").stdout
    return root, logs


@pytest.mark.parametrize("kind", ["re", "ner"])
def test_outputs_exist_parse_and_print_the_matrix(runs, kind):
    root, logs = runs
    out = root / kind
    for name in ("config.json", "model.safetensors", "processor_config.json", "modeling_mspt.py", "results.json",
                 "accuracy_matrix.png", "modality_balance.png", "README.md", "task-00/model.safetensors",
                 "task-01/continual_state.json"):  # fmt: skip
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    assert [len(r) for r in results["accuracy_matrix"]] == [1, 2]
    assert set(results["summary"]) == {"final_average", "average_incremental", "forgetting", "bwt"}
    assert results["arguments"]["world_size"] == 1 and results["seed"] == 0
    assert results["data"]["benchmark"] == "synthetic" and results["versions"]["torch"]
    for png in ("accuracy_matrix.png", "modality_balance.png"):
        with Image.open(out / png) as image:
            assert min(image.size) > 100
    card = ModelCard.load(out / "README.md")
    metrics = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert metrics["final_average"] == pytest.approx(results["summary"]["final_average"])
    assert "after task 2:" in logs[kind] and "Summary:" in logs[kind]


@pytest.mark.parametrize("kind", ["re", "ner"])
def test_final_model_reloads_with_identical_predictions(runs, kind):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoProcessor

    from continual_trainer import ContinualTrainer, ContinualTrainingArguments
    from datasets_scripts import load_benchmark

    root, _ = runs
    out = root / kind
    auto = AutoModelForSequenceClassification if kind == "re" else AutoModelForTokenClassification
    model = auto.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    results = json.loads((out / "results.json").read_text())
    bench = load_benchmark("synthetic", kind, cache_dir=str(root / "cache"), num_tasks=2, train_per_task=32,
                           test_per_task=16, validation_per_task=8, seed=0)  # fmt: skip
    args = ContinualTrainingArguments(output_dir=str(root / "eval"), strategy="finetune", report_to="none",
                                      per_device_eval_batch_size=7)  # fmt: skip
    trainer = ContinualTrainer(model=model, args=args, processing_class=processor)
    metrics = trainer.evaluate_task(1, benchmark=bench)
    assert metrics["cumulative"] == results["cumulative"][-1]
    assert metrics["slices"] == results["accuracy_matrix"][-1]


def test_cli_resume_continues_an_interrupted_run(runs):
    root, _ = runs
    out = root / "resumed"
    shutil.copytree(root / "re", out)
    shutil.rmtree(out / "task-01")  # killed during the second task, before it finished
    (out / "results.json").unlink()
    log = run_example("run_imre.py", out, root / "cache", "--resume_from_checkpoint", "true").stdout
    assert "Resuming after task 1" in log
    resumed = json.loads((out / "results.json").read_text())
    expected = json.loads((root / "re" / "results.json").read_text())
    assert resumed["accuracy_matrix"] == expected["accuracy_matrix"]


@pytest.mark.slow
def test_two_process_launch_writes_one_coherent_result(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"  # the venv's, whether or not it is on PATH
    launcher = (str(accelerate) if accelerate.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes",
                "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29541")  # fmt: skip
    run_example("run_imre.py", tmp_path / "out", tmp_path / "cache", launcher=launcher)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["arguments"]["world_size"] == 2
    assert [len(r) for r in results["accuracy_matrix"]] == [1, 2]
    assert all(0 <= v <= 1 for row in results["accuracy_matrix"] for v in row)
    assert sorted(p.name for p in (tmp_path / "out").glob("task-*")) == ["task-00", "task-01"]


def test_push_to_hub_uploads_model_card_and_task_checkpoints(tmp_path):
    with HubServer() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf_home")}  # fmt: skip
        run_example("run_imre.py", tmp_path / "out", tmp_path / "cache", "--push_to_hub", "true", "--hub_model_id",
                    "me/mspt-imre-demo", "--hub_token", "hf_test", env=env)  # fmt: skip
        files = set(hub.files("me/mspt-imre-demo"))
    for name in ("config.json", "model.safetensors", "README.md", "results.json", "accuracy_matrix.png",
                 "processor_config.json", "task-00/model.safetensors", "task-01/continual_state.json"):  # fmt: skip
        assert name in files, name
    assert not any("checkpoint-" in f for f in files)
    assert all(method != "GET" or path.startswith("/api/") for method, path in hub.requests)
