"""README result tables are generated from the JSON in benchmarks/results/, not typed by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    if str(REPO / "benchmarks") not in sys.path:  # the scripts import their shared helpers (benchmarks/_fit.py)
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parity_summary_on_a_hand_made_history():
    report = _load("parity_report")
    history = [
        {"step": 100, "wall_time_s": 10.0, "train/label_acc": 0.60, "val/label_acc": 0.50},
        {"step": 200, "wall_time_s": 20.0, "train/label_acc": 0.995, "val/label_acc": 0.55},
        {"step": 300, "wall_time_s": 30.0, "train/label_acc": 1.0, "val/label_acc": 0.58},
        {"step": 400, "wall_time_s": 40.0, "train/label_acc": 1.0, "val/label_acc": 0.992},
        {"step": 500, "wall_time_s": 50.0, "train/label_acc": 1.0, "val/label_acc": 0.30},
    ]
    s = report.summarize({"name": "x", "seed": 0, "history": history, "run": {"wall_time_s": 55.0}})
    assert s["steps_to_99"] == 400 and s["wall_s_to_99"] == 40.0
    assert s["max_gap_points"] == pytest.approx(44.5)  # step 200: 0.995 - 0.55 (step 500 is after reaching)
    assert s["memorised_steps"] == 300  # steps 200, 300 and 500, 100 steps apart
    assert s["final_val"] == 0.30


def test_readme_parity_table_matches_the_json():
    files = sorted((REPO / "benchmarks" / "results").glob("parity*.json"))
    readme = (REPO / "README.md").read_text()
    report = _load("parity_report")
    if report.START not in readme:
        assert not files, "parity results exist but the README has no parity table"
        pytest.skip("no parity results shipped yet")
    section = readme.split(report.START, 1)[1].split(report.END, 1)[0].strip()
    assert section == report.table(report.load(files))


def test_readme_wikitext_ablation_table_matches_the_json():
    results_file = REPO / "benchmarks" / "results" / "wikitext_ablation.json"
    readme = (REPO / "README.md").read_text()
    ablation = _load("wikitext_ablation")
    if ablation.START not in readme:
        assert not results_file.exists(), "wikitext_ablation.json exists but the README has no ablation table"
        pytest.skip("no ablation results shipped yet")
    section = readme.split(ablation.START, 1)[1].split(ablation.END, 1)[0].strip()
    assert section == ablation.table(json.loads(results_file.read_text()))


def test_ablation_summary_mean_and_standard_error():
    ablation = _load("wikitext_ablation")
    runs = [
        {"name": "bin4", "seed": 0, "final": {"val/nelbo": 4.0}},
        {"name": "bin4", "seed": 1, "final": {"val/nelbo": 5.0}},
        {"name": "uniform", "seed": 0, "final": {"val/nelbo": 6.0}},
    ]
    rows = {r["name"]: r for r in ablation.summarize({"runs": runs})}
    assert rows["bin4"]["mean"] == 4.5 and rows["bin4"]["se"] == pytest.approx(0.5)  # sd 0.7071 / sqrt(2)
    assert rows["uniform"]["n"] == 1


@pytest.mark.parametrize(
    "script, marker", [("train_throughput", "perf-train"), ("generation_throughput", "perf-generation"),
                       ("data_throughput", "perf-data")]
)
def test_readme_performance_tables_match_the_json(script, marker):
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))  # the throughput scripts import their shared helpers
    try:
        module = importlib.import_module(script)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    results = json.loads((REPO / "benchmarks" / "results" / f"{script}.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme.split(f"<!-- {marker}:start -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0].strip()
    assert section == module.markdown(results).strip()
