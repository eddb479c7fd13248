"""experiments/sft_shared_base.py: fine-tunes start from the shared base's checkpoint with their own window
and seed; the paired report and the seeds-for-an-effect estimate agree with computations written out here."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import REPO_ROOT as REPO

from experiments import sft_shared_base as sb
from mdlm.cli import build_cli


def test_seeds_for_effect_by_hand():
    z = 1.959964 + 0.841621  # z_{0.975} + z_{0.8}
    assert sb.seeds_for_effect(0.05) == math.ceil((z * 0.05 / 0.02) ** 2) == 50
    assert sb.seeds_for_effect(0.001) == 2  # never fewer than a pair


def test_finetune_command_loads_the_base_and_sets_window_seed_steps(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sb, "OUT_DIR", tmp_path)
    seen = []
    monkeypatch.setattr(sb.subprocess, "run", lambda cmd, **kw: seen.append(cmd))
    sb.finetune("window_0.45_0.55", 3, 700)
    extra = seen[0][seen[0].index("--extra") + 1:]
    capsys.readouterr()  # the command line it printed
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(REPO / "configs/sft_arithmetic.yaml"), *extra, "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["seed_everything"] == 3 and cfg["trainer"]["max_steps"] == 700
    assert cfg["sampler"]["class_path"] == "mdlm.samplers.Window"
    assert (cfg["sampler"]["init_args"]["t_min"], cfg["sampler"]["init_args"]["t_max"]) == (0.45, 0.55)
    assert cfg["trainer"]["callbacks"][-1]["class_path"] == "mdlm.init_weights.InitWeights"
    assert cfg["trainer"]["callbacks"][-1]["init_args"]["path"] == "runs/sft_shared_base/base/version_0/checkpoints/last.ckpt"


def test_report_pairs_windows_with_uniform_by_seed(monkeypatch, tmp_path):
    monkeypatch.setattr(sb, "OUT_DIR", tmp_path)
    acc = {"window_0.5_1": [0.30, 0.40, 0.35], "uniform_0_1": [0.20, 0.25, 0.30], "window_0.45_0.55": [0.20, 0.26]}
    for window, values in acc.items():
        for seed, a in enumerate(values):
            sb.run_file(f"{window}_seed{seed}").write_text(json.dumps({"test": {"accuracy": a}}))
    sb.run_file("base").write_text(json.dumps({"test": {"accuracy": 0.1}, "train": {"optimizer_steps": 1500},
                                               "commands": {"fit": "mdlm fit ..."}}))
    data = sb.report([0, 1, 2])
    high = data["paired"]["window_0.5_1"]
    assert high["differences"] == pytest.approx([0.10, 0.15, 0.05])
    sd = 0.05  # s.d. of (0.10, 0.15, 0.05)
    half = 4.302653 * sd / math.sqrt(3)
    assert high["mean"] == pytest.approx(0.10) and high["ci95"] == pytest.approx([0.10 - half, 0.10 + half], rel=1e-5)
    assert high["sd"] == pytest.approx(sd) and high["seeds_for_2_points"] == sb.seeds_for_effect(sd)
    assert data["paired"]["window_0.45_0.55"]["seeds"] == [0, 1]  # only the seeds both have
    assert data["base"]["accuracy"] == 0.1
    text = sb.markdown(data)
    assert "Base: 1500 steps with U[0, 1], accuracy 0.100" in text and "| window_0.5_1 | +0.100, +0.150, +0.050 |" in text


def test_docs_table_matches_the_result_files():
    from conftest import marked_section

    path = REPO / "benchmarks" / "results" / "sft_shared_base.json"
    section = marked_section((REPO / "docs" / "arithmetic.md").read_text(), sb.START, sb.END)
    if not path.is_file():
        assert not section, "docs/arithmetic.md has a shared-base table but no sft_shared_base.json"
        return
    assert section == sb.markdown(json.loads(path.read_text())).strip()
