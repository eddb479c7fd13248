"""Every shipped config parses (--print_config) and instantiates and trains one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import SHARED_DATA

from mdlm.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))

#: per-config overrides that shrink a run to one quick step on this CPU
TINY = {
    "default": [
        "--trainer.fast_dev_run=1",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ],
}


def _is_trainer_fragment(path: Path) -> bool:
    return "model" not in (yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_prints(config, capsys):
    if _is_trainer_fragment(config):
        pytest.skip("trainer fragment: composed with a full config")
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_runs_one_step(config, tmp_path, monkeypatch):
    if _is_trainer_fragment(config):
        pytest.skip("trainer fragment: composed with a full config")
    if "../shared/data" in config.read_text() and not SHARED_DATA.is_dir():
        pytest.skip(f"{config.name} reads the shipped data in {SHARED_DATA}, which is absent")
    monkeypatch.chdir(REPO)  # configs name data paths relative to the repository root
    monkeypatch.setenv("MDLM_CACHE_DIR", str(tmp_path / "cache"))
    cli = build_cli(["fit", "--config", str(config), *TINY["default"], f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 1
