"""The result tables in docs/ are generated from the JSON in benchmarks/results/, not typed by hand."""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import REPO_ROOT as REPO
from conftest import marked_section

from benchmarks import parity_report, wikitext_ablation


def test_parity_summary_on_a_hand_made_history():
    history = [
        {"step": 100, "wall_time_s": 10.0, "train/label_acc": 0.60, "val/label_acc": 0.50},
        {"step": 200, "wall_time_s": 20.0, "train/label_acc": 0.995, "val/label_acc": 0.55},
        {"step": 300, "wall_time_s": 30.0, "train/label_acc": 1.0, "val/label_acc": 0.58},
        {"step": 400, "wall_time_s": 40.0, "train/label_acc": 1.0, "val/label_acc": 0.992},
        {"step": 500, "wall_time_s": 50.0, "train/label_acc": 1.0, "val/label_acc": 0.30},
    ]
    s = parity_report.summarize({"name": "x", "seed": 0, "history": history, "run": {"wall_time_s": 55.0}})
    assert s["steps_to_99"] == 400 and s["wall_s_to_99"] == 40.0
    assert s["max_gap_points"] == pytest.approx(44.5)  # step 200: 0.995 - 0.55 (step 500 is after reaching)
    assert s["memorised_steps"] == 300  # steps 200, 300 and 500, 100 steps apart
    assert s["final_val"] == 0.30


def test_readme_parity_table_matches_the_json():
    files = sorted((REPO / "benchmarks" / "results").glob("parity*.json"))
    readme = (REPO / "docs" / "parity.md").read_text()
    section = marked_section(readme, parity_report.START, parity_report.END)
    if section is None:
        assert not files, "parity results exist but docs/parity.md has no parity table"
        pytest.skip("no parity results shipped yet")
    assert section == parity_report.table(parity_report.load(files))


def test_readme_wikitext_ablation_table_matches_the_json():
    results_file = REPO / "benchmarks" / "results" / "wikitext_ablation.json"
    readme = (REPO / "docs" / "data.md").read_text()
    section = marked_section(readme, wikitext_ablation.START, wikitext_ablation.END)
    if section is None:
        assert not results_file.exists(), "wikitext_ablation.json exists but docs/data.md has no ablation table"
        pytest.skip("no ablation results shipped yet")
    assert section == wikitext_ablation.table(json.loads(results_file.read_text()))


def test_ablation_summary_mean_and_standard_error():
    runs = [
        {"name": "bin4", "seed": 0, "final": {"val/nelbo": 4.0}},
        {"name": "bin4", "seed": 1, "final": {"val/nelbo": 5.0}},
        {"name": "uniform", "seed": 0, "final": {"val/nelbo": 6.0}},
    ]
    rows = {r["name"]: r for r in wikitext_ablation.summarize({"runs": runs})}
    assert rows["bin4"]["mean"] == 4.5 and rows["bin4"]["se"] == pytest.approx(0.5)  # sd 0.7071 / sqrt(2)
    assert rows["uniform"]["n"] == 1


@pytest.mark.parametrize(
    "script, marker", [("train_throughput", "perf-train"), ("generation_throughput", "perf-generation"),
                       ("data_throughput", "perf-data")]
)
def test_readme_performance_tables_match_the_json(script, marker):
    module = importlib.import_module(f"benchmarks.{script}")
    results = json.loads((REPO / "benchmarks" / "results" / f"{script}.json").read_text())
    readme = (REPO / "docs" / "performance.md").read_text()
    section = readme.split(f"<!-- {marker}:start -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0].strip()
    assert section == module.markdown(results).strip()


def test_docs_parity_contrast_table_matches_the_run_files():
    from experiments import parity_contrast

    runs = sorted(parity_contrast.OUT_DIR.glob("*_seed*.json"))
    section = marked_section((REPO / "docs" / "parity.md").read_text(), parity_contrast.START, parity_contrast.END)
    if section is None:
        assert not runs, "parity contrast results exist but docs/parity.md has no contrast table"
        pytest.skip("no parity contrast results shipped yet")
    assert section == parity_contrast.markdown(parity_contrast.report()).strip()


def test_wikitext_ablation_pairs_bins_with_uniform_of_the_same_seed():
    """A seed effect of 0.3 nats would hide a 0.02 bin effect unpaired; paired by seed it is resolved."""
    runs = []
    for seed in range(4):
        runs.append({"name": "uniform", "seed": seed, "final": {"val/nelbo": 6.0 + 0.3 * seed}})
        runs.append({"name": "bin4", "seed": seed, "final": {"val/nelbo": 5.98 + 0.3 * seed + 0.001 * seed}})
        runs.append({"name": "bin0", "seed": seed, "final": {"val/nelbo": 6.0 + 0.3 * seed + 0.01 * (-1) ** seed}})
    runs.append({"name": "bin9", "seed": 7, "final": {"val/nelbo": 7.0}})  # no U[0, 1] of seed 7: left out
    p = wikitext_ablation.paired({"runs": runs})
    diffs = [-0.02 + 0.001 * s for s in range(4)]
    mean = sum(diffs) / 4
    assert p["bin4"]["n"] == 4 and p["bin4"]["mean"] == pytest.approx(mean)
    assert p["bin4"]["vs_uniform"] == "better" and p["bin0"]["vs_uniform"] == "not resolved"
    assert "bin9" not in p
    assert "| [0.4, 0.5] |" in wikitext_ablation.table({"runs": runs}) and ": better |" in wikitext_ablation.table({"runs": runs})


def test_wikitext_ablation_preset_goes_after_the_config(monkeypatch, tmp_path):
    seen = {}

    def fake_fit(config, flags, workdir, run_name, threads):
        seen.update(config=config, flags=flags)
        return {"cmd": ["mdlm", "fit"], "returncode": 0, "wall_time_s": 1.0, "metrics": {"history": []}}

    monkeypatch.setattr(wikitext_ablation, "fit_subprocess", fake_fit)
    wikitext_ablation.run_one("bin4", ["--sampler.init_args.index=4"], 3, tmp_path, 1, [], "configs/presets/ucurve_small.yaml")
    assert seen["config"] == wikitext_ablation.CONFIG
    assert seen["flags"][:3] == ["--config", "configs/presets/ucurve_small.yaml", "--seed_everything=3"]


def test_docs_adaptive_across_seeds_table_matches_the_json():
    from experiments import adaptive_signal_probe as asp

    data = json.loads((REPO / "benchmarks" / "results" / "adaptive_signal_probe.json").read_text())
    section = marked_section((REPO / "docs" / "adaptive_signal.md").read_text(), *asp.ACROSS_SEEDS_MARKERS)
    assert section == asp.across_seeds_markdown(data["across_seeds"])
    assert data["across_seeds"] == asp.across_seeds(asp.summarise(data))  # the stored table is the probes' decision
