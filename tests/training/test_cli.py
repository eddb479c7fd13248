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
from conftest import REPO_ROOT as REPO


def _mdlm() -> list[str]:
    exe = shutil.which("mdlm") or str(Path(sys.executable).parent / "mdlm")
    return [exe]


def _run(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(_mdlm() + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
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


@pytest.mark.slow
def test_print_config_lists_the_sampler_key(tmp_path):
    proc = _run(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--print_config"], cwd=tmp_path)
    printed = yaml.safe_load(proc.stdout)
    assert printed["sampler"]["class_path"] == "mdlm.samplers.parity.ParitySignalOptimal"


@pytest.mark.slow
def test_fit_without_sampler_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        _mdlm() + ["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--sampler=null",
                   "--trainer.max_steps=1", "--trainer.logger=false"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode != 0
    assert "exactly one mask-ratio sampler callback, found none" in proc.stderr


# ---------------------------------------------------------------- console: a newcomer's first hour
TINY = ["--data.init_args.n=8", "--data.init_args.k=3", "--data.init_args.num_train=64",
        "--data.init_args.num_val=32", "--data.init_args.batch_size=16"]


def _fails(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("MDLM_TRACEBACK", None)
    proc = subprocess.run(_mdlm() + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    return proc


@pytest.mark.parametrize(("override", "message"), [
    (["--sampler=mdlm.samplers.Window", "--sampler.init_args.t_min=0.6", "--sampler.init_args.t_max=0.4"],
     "mdlm: error: mdlm.samplers.Window: t_min=0.6 > t_max=0.4: a window needs t_min < t_max"),
    (["--data.init_args.k=30"], "mdlm: error: mdlm.data.parity.ParityDataModule: k=30 must lie in [1, n=14]"),
])
@pytest.mark.slow
def test_a_bad_value_ends_with_one_line_naming_it(tmp_path, override, message):
    proc = _fails(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), *override,
                   "--trainer.max_steps=1", "--trainer.logger=false"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert lines[-2].startswith(message) and "Namespace(" not in lines[-2]
    assert lines[-1] == "(MDLM_TRACEBACK=1 shows the traceback)"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_an_offline_hub_tokenizer_says_the_local_option_and_the_cpu_preset(tmp_path):
    env_config = tmp_path / "offline.yaml"
    env_config.write_text("data:\n  init_args:\n    tokenizer: some-org/not-a-local-folder\n")
    proc = _fails(["fit", "--config", str(REPO / "configs" / "sft_math_high_mask.yaml"), "--config", str(env_config),
                   "--data.init_args.test_path=null"], REPO)
    last = proc.stderr.strip().splitlines()[-2]
    assert "could not load tokenizer 'some-org/not-a-local-folder'" in last
    assert "--data.init_args.tokenizer=../shared/data/tokenizers/gpt2" in last
    assert "configs/presets/sft_tiny_cpu.yaml" in last


@pytest.mark.slow
def test_fit_prints_steps_and_ends_with_the_run_folder_and_resumes_from_last(tmp_path):
    args = ["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), *TINY,
            "--trainer.max_steps=6", "--trainer.val_check_interval=3"]
    proc = _run(args, cwd=tmp_path)
    assert "Step" in proc.stdout and "Epoch 0/-2" not in proc.stdout and "v_num" not in proc.stdout
    assert "💡" not in proc.stdout + proc.stderr
    last_line = proc.stdout.strip().splitlines()[-1]
    assert last_line.startswith("mdlm fit: results in runs/parity_md/version_0/ — metrics.json")
    assert "checkpoints/last.ckpt" in last_line
    last = tmp_path / "runs" / "parity_md" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()
    resumed = _run([*args[:-2], "--trainer.max_steps=9", "--trainer.val_check_interval=3", "--ckpt_path=last"],
                   cwd=tmp_path)
    first = json.loads((tmp_path / "runs" / "parity_md" / "version_0" / "metrics.json").read_text())["history"]
    history = json.loads((tmp_path / "runs" / "parity_md" / "version_1" / "metrics.json").read_text())["history"]
    assert [row["step"] for row in history] == [3, 6, 9]
    assert history[:2] == first  # the rows of steps 3 and 6 came with the checkpoint: resumed, not rerun
    assert "results in runs/parity_md/version_1/" in resumed.stdout


@pytest.mark.slow
def test_ckpt_path_last_without_a_previous_run_fails_clearly(tmp_path):
    proc = _fails(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), *TINY, "--ckpt_path=last",
                   "--trainer.max_steps=1"], tmp_path)
    assert "--ckpt_path=last: no" in proc.stderr and "last.ckpt to resume from" in proc.stderr


@pytest.mark.slow
def test_a_run_shorter_than_the_validation_interval_warns_and_still_leaves_a_result(tmp_path):
    proc = _run(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), *TINY, "--trainer.max_steps=5",
                 "--trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert "max_steps=5 < trainer.val_check_interval=100" in proc.stderr
    run_dir = tmp_path / "runs" / "parity_md" / "version_0"
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [row["step"] for row in history] == [5] and "val/nelbo" in history[0]  # evaluated at the end
    import torch

    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5


def test_help_names_subcommands_configs_and_docs_without_importing_lightning():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(_mdlm() + ["--help"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0
    for word in ("fit", "validate", "test", "predict", "configs/parity_md.yaml", "README.md", "mdlm fit --help"):
        assert word in proc.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['mdlm', '--help']; import mdlm.entry as e\n"
         "try:\n    e.main()\nexcept SystemExit:\n    pass\nprint('lightning' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=60,
    )
    assert probe.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_a_corrupt_checkpoint_and_a_parity_k_mismatch_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    proc = _fails(["validate", "--config", str(REPO / "configs" / "parity_md.yaml"), "--ckpt_path", str(bad),
                   "--trainer.logger=false"], tmp_path)
    assert f"--ckpt_path {bad}: not a readable PyTorch checkpoint (7 bytes: truncated or corrupt" in proc.stderr
    assert "weights_only" not in proc.stderr
    proc = _fails(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--data.init_args.n=20",
                   "--data.init_args.k=6", "--trainer.max_steps=1", "--trainer.logger=false"], tmp_path)
    assert "sampler.init_args.k=3 but data.init_args.k=6" in proc.stderr and "--sampler.init_args.k=6" in proc.stderr
