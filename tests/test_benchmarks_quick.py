"""The benchmark scripts' --quick modes run end to end (as subprocesses, side by side) and write what RESULTS.md is
built from, so the scripts cannot rot. No timing is asserted: these are smoke runs, not measurements."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_modes_of_both_benchmark_scripts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    commands = {
        "step_cost": [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--quick", "--output-dir",
                      str(tmp_path / "step")],  # fmt: skip
        "strategies": [sys.executable, str(ROOT / "benchmarks" / "strategies.py"), "--quick", "--output-dir",
                       str(tmp_path / "strategies"), "--cache-dir", str(tmp_path / "cache"),
                       "--suite", "tuning", "presets", "ablations", "real", "recipe",
                       "--data-dir", str(ROOT / "tests" / "fixtures")],  # fmt: skip
    }
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, cmd in commands.items()}  # fmt: skip
    logs = {name: proc.communicate(timeout=300)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}:\n{logs[name][-4000:]}"

    step = json.loads((tmp_path / "step" / "step_cost_quick.json").read_text())
    assert step["machine"]["versions"]["torch"] and step["machine"]["nproc"]
    assert [(r["shape"], r["task"]) for r in step["results"]] == [("tiny", "re"), ("tiny", "ner")]
    for result in step["results"]:
        variants = result["variants"]
        assert set(variants) == {"finetune", "mspt", "mspt_live_teacher", "eval"}
        assert variants["mspt"]["amortised_ratio_to_finetune"] > variants["mspt"]["time_ratio_to_finetune"]
        assert variants["mspt"]["cache_bytes_per_row"] > 0 and "cache_bytes_per_row" not in variants["mspt_live_teacher"]
        assert variants["finetune"]["time_ratio_to_finetune"] == 1.0
        assert variants["mspt"]["median_s"] > 0 and variants["mspt"]["n"] == 2
        assert variants["mspt"]["static_bytes"]["teacher"] > 0 == variants["finetune"]["static_bytes"]["teacher"]
        assert variants["mspt"]["peak_bytes"] > variants["mspt"]["static_bytes"]["parameters"]
        assert variants["eval"]["examples_per_s"] > 0
    assert "| tiny | ner | mspt |" in (tmp_path / "step" / "step_cost_quick.md").read_text()

    lines = (tmp_path / "strategies" / "strategies_quick.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert not [r["error"] for r in records if "error" in r]
    seen = {(r["suite"], r["benchmark"], r["task"], r["variant"]) for r in records}
    assert ("presets", "synthetic", "ner", "joint") in seen and ("ablations_additive", "synthetic", "re", "sgd") in seen
    assert ("real", "imre_sep5", "re", "mspt") in seen and ("real_ablations", "imre_sep5", "re", "shared_key_bank") in seen
    bank = next(r for r in records if r["variant"] == "shared_key_bank")
    assert bank["model"]["shared_key_mode"] == "bank" and bank["model"]["text_model"].startswith("wheel:")
    for r in records:
        assert [len(row) for row in r["matrix"]] == list(range(1, len(r["matrix"]) + 1))
        assert set(r["summary"]) == {"final_average", "average_incremental", "forgetting", "bwt"}
    imre = next(r for r in records if r["benchmark"] == "imre_sep5")
    assert imre["num_train"] == [4] * 5  # the subset of each sep5 task
    table = (tmp_path / "strategies" / "strategies_quick.md").read_text()
    assert "### presets: synthetic/ner" in table and "each row minus mspt" in table
    assert "### real_ablations: imre_sep5/re" in table
    # The recipe grid ran on the tuning seed and chose one recipe on validation; the median MSPT run is plotted.
    recipes = [r for r in records if r["suite"] == "recipe"]
    assert sorted((r["variant"], r["seed"], r["num_train"][0]) for r in recipes) == [("replay 2x2", 100, 2),
                                                                                     ("replay 4x1", 100, 4)]
    recipe_table = table.split("### recipe: imre_sep5")[1].split("###")[0]
    assert recipe_table.count("**chosen**") == 1 and "| replay 2x2 | 1 |" in recipe_table
    assert (tmp_path / "strategies" / "imre_sep5_mspt_median_matrix.png").read_bytes()[:4] == b"\x89PNG"

    # A second start finds every run recorded and trains nothing.
    again = subprocess.run(commands["strategies"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "0 runs to do (22 already recorded" in again.stdout + again.stderr
    assert len((tmp_path / "strategies" / "strategies_quick.jsonl").read_text().splitlines()) == len(lines)
