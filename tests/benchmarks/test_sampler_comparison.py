"""benchmarks/sampler_comparison.py: equal-compute accounting, the overrides it passes, its summaries."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT as REPO
from conftest import marked_section

from benchmarks import sampler_comparison as sc
from mdlm.cli import build_cli
from mdlm.samplers import AdaptiveBins, CosineCurriculum, Uniform, Window

ONE_STEP = ["--trainer.fast_dev_run=1", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_adaptive_overhead_counts_probe_forwards_against_three_passes_per_training_token():
    # 10 bins x 16 probe sequences every 25 steps, batch 32: 160 probe rows per 25*32*3 = 2400 row-passes
    assert sc.adaptive_overhead(10, 16, 32, 25) == pytest.approx(160 / 2400)
    assert sc.equal_compute_steps(300, 160 / 2400) == 281  # 300 / (1 + 1/15) = 281.25
    assert sc.equal_compute_steps(300, 0.0) == 300


@pytest.mark.parametrize("name, cls", [("uniform", Uniform), ("window", Window), ("curriculum", CosineCurriculum),
                                       ("adaptive", AdaptiveBins)])
@pytest.mark.slow
def test_each_sampler_override_builds_that_sampler_and_trains_a_step(name, cls, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = sc.task_overrides("parity", 3, None, None) + sc.sampler_overrides("parity", name, 3, 1500)
    cli = build_cli(["fit", "--config", "configs/parity_md.yaml", *overrides, *ONE_STEP,
                     f"--trainer.default_root_dir={tmp_path}"])
    samplers = [cb for cb in cli.trainer.callbacks if isinstance(cb, cls)]
    assert len(samplers) == 1 and cli.trainer.global_step == 1
    sampler = samplers[0]
    t1 = _brute_force_t1(3)
    if name == "window":
        assert (sampler.low, sampler.t_max) == pytest.approx((1e-3, t1), abs=2e-4)  # P_S-optimal for k = 3
    if name == "curriculum":
        assert sampler.window(0.0) == pytest.approx((0.0, 1.0))
        assert sampler.window(0.6) == pytest.approx((0.0, t1), abs=2e-4)
    if name == "adaptive":
        assert sampler.probe_source == "val" and sampler.probe_size == 128
    assert cli.datamodule.hparams.seed == 3


def _brute_force_t1(k: int) -> float:
    """argmax over a grid of a of P_S(U[0, a]) = (k+1)/a * integral_0^a t(1-t)^k dt (midpoint rule)."""
    def p_s(a: float, m: int = 2000) -> float:
        return (k + 1) * sum((a * (i + 0.5) / m) * (1 - a * (i + 0.5) / m) ** k for i in range(m)) / m
    return max((i / 2000 for i in range(1, 2001)), key=p_s)


def test_wikitext_adaptive_evaluates_at_its_last_step():
    overrides = sc.sampler_overrides("wikitext", "adaptive", None, 300)
    assert "--trainer.max_steps=281" in overrides and "--trainer.val_check_interval=281" in overrides
    assert "--sampler.init_args.t_min=0.45" in sc.sampler_overrides("wikitext", "window", None, 300)


def _run(task, name, seed, history, k=None):
    return {"task": task, "name": name, "seed": seed, "k": k, "wall_time_s": 10.0, "history": history}


def test_summaries_on_hand_made_runs():
    runs = [
        _run("wikitext", "uniform", 0, [{"step": 300, "val/nelbo": 5.0}]),
        _run("wikitext", "uniform", 1, [{"step": 300, "val/nelbo": 5.2}]),
        _run("parity", "adaptive", 0, [
            {"step": 100, "val/label_acc": 0.5, **{f"adaptive/prob_bin{j:02d}": (0.5 if j == 2 else 0.5 / 9) for j in range(10)}},
            {"step": 200, "val/label_acc": 0.995, **{f"adaptive/prob_bin{j:02d}": (0.3 if j == 2 else 0.7 / 9) for j in range(10)}},
            {"step": 300, "val/label_acc": 1.0, **{f"adaptive/prob_bin{j:02d}": 0.1 for j in range(10)}},
        ], k=3),
        _run("parity", "adaptive", 1, [{"step": 100, "val/label_acc": 0.5}], k=3),
    ]
    rows = {(r["task"], r["name"]): r for r in sc.summarize(runs)}
    assert rows["wikitext", "uniform"]["mean"] == pytest.approx(5.1)
    assert rows["wikitext", "uniform"]["se"] == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    parity = rows["parity", "adaptive"]
    assert parity["per_seed"] == [200, None] and parity["reached"] == 1
    (mass,) = sc.mass_rows(runs)
    # averaged over the evaluations up to 99 % (steps 100 and 200), seed 1 logged no allocation
    assert mass["q"][2] == pytest.approx(0.4) and mass["argmax"] == 2 and mass["n"] == 1
    assert sum(mass["q"]) == pytest.approx(1.0)
    assert "| adaptive | 1/2 | 200, — |" in sc.table(runs)


def test_readme_table_matches_the_json():
    files = sorted((REPO / "benchmarks" / "results").glob("sampler_comparison_*.json"))
    readme = (REPO / "docs" / "samplers.md").read_text()
    section = marked_section(readme, sc.START, sc.END)
    if section is None:
        assert not files, "sampler comparison results exist but docs/samplers.md has no table"
        pytest.skip("no comparison results shipped yet")
    assert section == sc.table(sc.load(files))
    assert all(r["returncode"] == 0 for f in files for r in json.loads(f.read_text())["runs"])


@pytest.mark.slow
def test_run_one_fits_in_a_subprocess_and_reads_back_the_history(tmp_path):
    overrides = sc.task_overrides("parity", 0, None, None) + sc.sampler_overrides("parity", "uniform", 3, 2) + [
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.init_args.num_val=64",
        "--trainer.enable_model_summary=false",
    ]
    run = sc.run_one("parity", "uniform", overrides, 0, tmp_path, threads=1)
    assert run["returncode"] == 0, run
    assert [h["step"] for h in run["history"]] == [2] and "val/label_acc" in run["history"][0]
    assert "<workdir>" in run["command"] and str(tmp_path) not in run["command"]
    assert sc._reusable(run) == sc._reusable({"command": run["command"].replace("<workdir>", "/elsewhere")})
