"""The `mdlm` console script end to end, in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _mdlm() -> list[str]:
    exe = shutil.which("mdlm") or str(Path(sys.executable).parent / "mdlm")
    return [exe]


def _run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(_mdlm() + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_console_script_fit_override_validate(tmp_path):
    small = [
        "--trainer.max_steps=12",
        "--trainer.val_check_interval=6",
        "--trainer.log_every_n_steps=2",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.n=8",
        "--data.init_args.k=3",
        "--data.init_args.num_train=64",
        "--data.init_args.num_val=32",
        "--data.init_args.batch_size=16",
        "--sampler=mdlm.samplers.Window",
        "--sampler.init_args.t_max=0.1",
        "--sampler.init_args.log_every_n_steps=2",
    ]
    _run(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), *small], cwd=tmp_path)
    run_dir = tmp_path / "runs" / "parity_md" / "version_0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed_everything"] == 0  # the seed is recorded in the saved config
    assert config["sampler"]["class_path"] == "mdlm.samplers.Window"
    assert config["sampler"]["init_args"]["t_max"] == 0.1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["hparams"]["vocab_size"] == 3  # linked from the data module
    assert [r["step"] for r in metrics["history"]] == [6, 12]
    assert {"val/label_acc", "train/label_acc", "val/nelbo", "val/ppl"} <= metrics["history"][-1].keys()
    assert metrics["run"]["seed"] == 0 and metrics["run"]["machine"]["cpu_count"] >= 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "train/t" in events.Tags()["histograms"]
    t_means = [e.value for e in events.Scalars("train/t_mean")]
    assert t_means and all(0.0 < v <= 0.1 for v in t_means)  # the CLI override reached the sampler

    ckpt = next((run_dir / "checkpoints").glob("*.ckpt"))
    proc = _run(
        ["validate", "--config", str(REPO / "configs" / "parity_md.yaml"), "--ckpt_path", str(ckpt),
         "--data.init_args.n=8", "--data.init_args.k=3", "--data.init_args.num_train=64",
         "--data.init_args.num_val=32", "--trainer.enable_progress_bar=false"],
        cwd=tmp_path,
    )
    assert "val/nelbo" in proc.stdout


def test_print_config_lists_the_sampler_key(tmp_path):
    proc = _run(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--print_config"], cwd=tmp_path)
    printed = yaml.safe_load(proc.stdout)
    assert printed["sampler"]["class_path"] == "mdlm.samplers.parity.ParitySignalOptimal"


def test_fit_without_sampler_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        _mdlm() + ["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--sampler=null",
                   "--trainer.max_steps=1", "--trainer.logger=false"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode != 0
    assert "exactly one mask-ratio sampler callback, found none" in proc.stderr
