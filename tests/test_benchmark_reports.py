"""The report logic of benchmarks/strategies.py on fabricated records: what the recipe table chooses (only on a
complete grid, by the mean over seeds) and which MSPT run is the median whose accuracy matrix is plotted."""

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def strategies():
    spec = importlib.util.spec_from_file_location("benchmark_strategies", ROOT / "benchmarks" / "strategies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**kwargs):
    base = dict(num_tasks=3, train_per_task=200, test_per_task=100, real_overrides=[], shared_key="additive",
                tuning_seeds=[100, 101], recipe_seeds=None, recipe_benchmarks=["imre_sep5"], recipe_strategy="replay",
                real_seeds=[0], real_benchmarks=["imre_sep5"], real_presets=["mspt"], real_ablation_benchmarks=[])  # fmt: skip
    return argparse.Namespace(**{**base, **kwargs})


def _record(spec, final=0.2, validation=0.2):
    return {"key": spec.key(), "seed": spec.seed, "metric": "micro_f1", "wall_s": 1.0, "cpu_s": 1.0,
            "summary": {"final_average": final, "average_incremental": final, "forgetting": 0.1, "bwt": -0.1},
            "validation": {"cumulative": validation, "slices": [validation] * 5},
            "matrix": [[final] * (i + 1) for i in range(5)], "data": spec.data, "training": spec.training}  # fmt: skip


def _recipe_section(strategies, specs, records):
    by_key = {r["key"]: r for r in records}
    (section,) = strategies.recipe_report(specs, by_key)
    return section


def test_recipe_is_chosen_by_the_mean_over_seeds_and_only_on_a_complete_grid(strategies):
    specs = strategies.plan(_args(suite=["recipe"], recipe_grid=[(1800, 1), (900, 2), (600, 3)]))
    assert [(s.variant, s.seed) for s in specs] == [(f"replay {g}", seed) for g in ("1800x1", "900x2", "600x3")
                                                    for seed in (100, 101)]  # fmt: skip
    # --recipe-seeds, when given, replaces the tuning seeds for the recipe runs only.
    own = strategies.plan(_args(suite=["recipe"], recipe_grid=[(600, 3)], recipe_seeds=[7], tuning_seeds=[100]))
    assert [s.seed for s in own] == [7]
    # Seed 100 alone would choose 1800x1; the mean over both seeds chooses 600x3.
    validation = {("replay 1800x1", 100): 0.5, ("replay 1800x1", 101): 0.1, ("replay 900x2", 100): 0.2,
                  ("replay 900x2", 101): 0.3, ("replay 600x3", 100): 0.3, ("replay 600x3", 101): 0.35}  # fmt: skip
    records = [_record(s, validation=validation[(s.variant, s.seed)]) for s in specs]

    section = _recipe_section(strategies, specs, records)
    chosen = [line for line in section.splitlines() if "**chosen**" in line]
    assert len(chosen) == 1 and chosen[0].startswith("| replay 600x3 | 2 | 0.325 ± ")
    assert "the config's recipe: 600x3" in section and "Incomplete" not in section

    incomplete = _recipe_section(strategies, specs, records[:-1])  # 600x3 lacks seed 101
    assert "**chosen**" not in incomplete
    assert "missing: replay 600x3 seed 101" in incomplete


def test_the_median_mspt_run_is_the_middle_one_and_the_lower_middle_for_an_even_count(strategies):
    for finals, expected_seed in (((0.4, 0.1, 0.3), 2), ((0.4, 0.1, 0.3, 0.2), 3)):
        specs = strategies.plan(_args(suite=["real"], real_seeds=list(range(len(finals)))))
        assert [(s.variant, s.seed) for s in specs] == [("mspt", seed) for seed in range(len(finals))]
        records = [_record(s, final=finals[s.seed]) for s in specs]
        run, n = strategies.median_runs(specs, records)["imre_sep5"]
        assert (run["seed"], n) == (expected_seed, len(finals))
