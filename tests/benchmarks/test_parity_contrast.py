"""experiments/parity_contrast.py: every planned run's command parses to the intended setting, the
report counts a run that never reached 99 % as censored (never as a number), and the budget adds up."""

from __future__ import annotations

import json

import pytest
from conftest import REPO_ROOT as REPO

from experiments import parity_contrast as pc
from mdlm.cli import build_cli


@pytest.mark.parametrize("name", sorted(pc.RUNS))
def test_every_run_parses_to_its_setting(name, capsys):
    config, _ = pc.RUNS[name]
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(REPO / config), *pc.overrides(name, 70), "--print_config"])
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    data, model, sampler = cfg["data"]["init_args"], cfg["model"]["init_args"], cfg["sampler"]
    assert (data["n"], data["k"]) == (20, 6)
    assert data["num_train"] == (5000 if name.endswith("N5000") else 2000)
    assert cfg["trainer"]["max_steps"] == (pc.PROBE_STEPS if name in pc.PROBE else pc.MAX_STEPS)
    assert cfg["trainer"]["max_time"] == "00:01:10:00"
    backbone = model["backbone"]["init_args"]
    assert (backbone["n_layer"] or 2, backbone["d_model"] or 128, model["lr"]) == (  # None: the tiny preset
        4 if name == "md_opt_L4" else 2, 256 if name == "md_opt_w256" else 128, 3e-3 if name == "md_opt_lr3e-3" else 1e-3)
    assert model["objective"] == ("output_supervision" if name.startswith("ce") else "masked_diffusion")
    assert model["loss_weight"] == ("elbo" if name.endswith("_elbo") else "none")
    if name.startswith("md_w"):
        assert sampler["class_path"] == "mdlm.samplers.Window"
        assert (sampler["init_args"]["t_min"], sampler["init_args"]["t_max"]) == (0.0, float(name[4:]))
    else:
        assert sampler["class_path"].endswith("ParitySignalOptimal") and sampler["init_args"]["k"] == 6


def _history(steps, val, train):
    return [{"step": s, "wall_time_s": 0.2 * s, "val/label_acc": v, "train/label_acc": t} for s, v, t in zip(steps, val, train)]


def test_report_marks_censored_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(pc, "OUT_DIR", tmp_path)
    learnt = {"name": "md_opt", "seed": 0, "overrides": ["--data.init_args.num_train=2000"], "threads": 1,
              "history": _history([250, 500, 750], [0.5, 0.7, 0.995], [0.5, 0.72, 0.999])}
    stuck = {"name": "ce", "seed": 0, "overrides": ["--data.init_args.num_train=2000"], "threads": 1,
             "history": _history([250, 500, 750], [0.5, 0.51, 0.5], [0.8, 1.0, 1.0])}
    (tmp_path / "md_opt_seed0.json").write_text(json.dumps(learnt))
    (tmp_path / "ce_seed0.json").write_text(json.dumps(stuck))
    rows = {r["name"]: r for r in pc.report()["rows"]}
    assert rows["md_opt"]["steps_to_99"] == 750 and not rows["md_opt"]["censored"]
    assert rows["ce"]["steps_to_99"] is None and rows["ce"]["censored"] and rows["ce"]["last_step"] == 750
    assert rows["ce"]["memorised_steps"] == 500  # two evaluations 250 steps apart with train >= 0.99, val <= 0.6
    assert rows["md_opt"]["s_per_step"] == pytest.approx(0.2)
    text = pc.markdown(pc.report())
    assert "> 750 (censored)" in text and "| md_opt | 0 | 2000 | 750 |" in text


def test_budget_is_runs_times_steps_times_seconds():
    b = pc.budget(s_per_step=0.2)
    steps = sum(len(s) * (8000 if n in pc.PROBE else 12000) * {"md_opt_L4": 1.9, "md_opt_w256": 2.9}.get(n, 1)
                for n, s in pc.PLAN.items())
    assert b["total_core_hours"] == pytest.approx(steps * 0.2 / 3600, abs=0.1)


def test_budget_reports_core_hours_spent_per_run(tmp_path, monkeypatch):
    monkeypatch.setattr(pc, "OUT_DIR", tmp_path)
    for seed, wall in ((0, 1800.0), (1, 3600.0)):
        run = {"name": "md_opt", "seed": seed, "overrides": [], "threads": 1, "process_wall_time_s": wall,
               "history": _history([250], [0.5], [0.5])}
        (tmp_path / f"md_opt_seed{seed}.json").write_text(json.dumps(run))
    rows = {r["run"]: r for r in pc.report()["budget"]["rows"]}
    assert (rows["md_opt"]["seeds_run"], rows["md_opt"]["spent_core_hours"]) == (2, 1.5)
    assert (rows["ce"]["seeds_run"], rows["ce"]["spent_core_hours"]) == (0, 0.0)
