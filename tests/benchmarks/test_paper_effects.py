"""experiments/paper_effects.py: the README's effects table is generated from the result files, and the
verdict rules and intervals agree with computations written out here."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO_ROOT as REPO
from conftest import marked_section

from benchmarks._common import t_interval
from experiments import paper_effects as pe


def test_readme_effects_table_matches_the_result_files():
    assert marked_section((REPO / "README.md").read_text(), pe.START, pe.END) == pe.markdown(pe.collect()).strip()


def test_t_interval_by_hand():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · s / sqrt(n), s = 1
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), rel=1e-6)
    assert math.isnan(t_interval([1.0])[1])


def test_paired_verdict_needs_the_interval_on_the_papers_side():
    assert pe.verdict_paired(0.1, 0.5) == "direction only"
    assert pe.verdict_paired(-0.1, 0.5) == "not reproduced at this scale"
    assert pe.verdict_paired(-0.5, -0.1, better_is_positive=False) == "direction only"  # a loss: lower is better
    assert pe.verdict_paired(-0.5, 0.1, better_is_positive=False) == "not reproduced at this scale"
    assert pe.verdict_paired(float("nan"), float("nan")) == "not reproduced at this scale"


def test_parity_verdict():
    assert pe.verdict_parity([6000, 7000, 9000], True, 6400, paper_scale=True) == "reproduced"
    assert pe.verdict_parity([6000, 20000, 30000], True, 6400, paper_scale=True) == "direction only"  # median 20k > 2x
    assert pe.verdict_parity([900, 500], True, 6400, paper_scale=False) == "direction only"
    assert pe.verdict_parity([900, None], True, 6400, paper_scale=False) == "not reproduced at this scale"
    assert pe.verdict_parity([900, 500], False, 6400, paper_scale=False) == "not reproduced at this scale"
    assert pe.verdict_parity([], True, 6400, paper_scale=True) == "not reproduced at this scale"


def test_u_curve_pairs_each_bin_with_uniform_of_the_same_seed(tmp_path):
    """Five seeds whose seed effect (+0.5 per seed) would swamp unpaired bins: bin 4 is 0.05 better than
    U[0, 1] in every seed, bin 0 0.05 worse, the rest equal to it up to ±0.01."""
    runs = []
    for seed in range(5):
        base = 6.0 + 0.5 * seed
        runs.append({"name": "uniform", "seed": seed, "final": {"val/nelbo": base}})
        for j in range(10):
            delta = {4: -0.05, 0: 0.05}.get(j, 0.01 * (-1) ** (seed + j))
            runs.append({"name": f"bin{j}", "seed": seed, "final": {"val/nelbo": base + delta}})
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps({"runs": runs}))
    row = pe.u_curve(path)
    assert row["per_bin"]["bin4"][0] == pytest.approx(-0.05) and row["per_bin"]["bin4"][2] < 0
    assert row["per_bin"]["bin0"][1] > 0
    assert "best bin [0.4, 0.5]" in row["here"] and "better than U[0, 1]: 1, worse: 1 of 10" in row["here"]
    assert row["verdict"] == "direction only" and row["seeds"] == [0, 1, 2, 3, 4]


def test_shared_base_row_reads_the_experiments_report(tmp_path):
    data = {"base": {"accuracy": 0.05}, "rows": {"window_0.5_1": {"mean": 0.4}, "uniform_0_1": {"mean": 0.2}},
            "paired": {"window_0.5_1": {"seeds": [0, 1, 2], "mean": 0.2, "ci95": [0.05, 0.35]}}}
    path = tmp_path / "sft_shared_base.json"
    path.write_text(json.dumps(data))
    row = pe.sft_shared_base(path)
    assert row["verdict"] == "direction only" and "(base 0.050)" in row["here"] and "n = 3 seeds" in row["here"]


def test_compute_table_sums_wall_time_times_threads(tmp_path):
    """Core-hours spent = Σ wall seconds × threads / 3600, per part; the plan is shown only where one was written."""
    (tmp_path / "sft_shared_base").mkdir()
    for name, train_s, test_s, threads in [("base", 1800.0, 60.0, 1), ("uniform_0_1_seed0", 900.0, 90.0, 2)]:
        (tmp_path / "sft_shared_base" / f"{name}.json").write_text(json.dumps(
            {"train": {"wall_time_s": train_s}, "test": {"wall_time_s": test_s}, "threads": threads}))
    (tmp_path / "ucurve_small.json").write_text(json.dumps(
        {"runs": [{"wall_time_s": 3600.0, "threads": 1}, {"wall_time_s": 1800.0, "threads": 2}]}))
    rows = {r["part"].split(" (")[0].split(",")[0]: r for r in pe.compute_spent(tmp_path)}
    assert rows["SFT from one shared base"]["spent"] == pytest.approx((1860 + 990 * 2) / 3600, abs=0.005)
    assert rows["SFT from one shared base"]["runs"] == 2 and rows["SFT from one shared base"]["planned"] is None
    assert rows["U-curve"]["spent"] == pytest.approx(2.0) and rows["U-curve"]["planned"] == 4.0
    text = pe.compute_markdown(list(rows.values()))
    assert "3.1 core-hours spent" in text and "| — |" in text
