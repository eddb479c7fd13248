"""Every shipped config parses (--print_config) and instantiates and trains one step.

Full configs live in configs/; override sets in configs/presets/ are composed with them. Configs
written for a GPU node (the paper's settings) run their step with the CPU override set they name,
and configs too big for this machine instantiate their model on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_DATA

from mdlm.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
FULL = sorted((REPO / "configs").glob("*.yaml"))
PRESETS = sorted((REPO / "configs" / "presets").glob("*.yaml"))

#: full configs that need a GPU node or the Hub, and the CPU override set that runs them here
CPU_OVERRIDE = {
    "sft_math_high_mask.yaml": "presets/sft_tiny_cpu.yaml",
    "sft_math_uniform.yaml": "presets/sft_tiny_cpu.yaml",
    "sft_gsm8k_mid_mask.yaml": "presets/sft_tiny_cpu.yaml",
    "sft_gsm8k_uniform.yaml": "presets/sft_tiny_cpu.yaml",
}

ONE_STEP = [
    "--trainer.fast_dev_run=1",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _ids(p: Path) -> str:
    return p.name


def test_every_preset_is_used_or_documented():
    for preset in PRESETS:
        text = preset.read_text()
        assert text.startswith("#") and f"configs/presets/{preset.name}" in text, f"{preset} must say how to compose it"


@pytest.mark.parametrize("config", FULL, ids=_ids)
def test_config_prints(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["sampler"]["class_path"].startswith("mdlm.samplers")


@pytest.mark.parametrize("config", FULL, ids=_ids)
def test_config_runs_one_step(config, tmp_path, monkeypatch):
    configs = [config]
    if config.name in CPU_OVERRIDE:
        configs.append(REPO / "configs" / CPU_OVERRIDE[config.name])
    if any("../shared/data" in c.read_text() for c in configs) and not SHARED_DATA.is_dir():
        pytest.skip(f"{config.name} reads the shipped data in {SHARED_DATA}, which is absent")
    monkeypatch.chdir(REPO)  # configs name data paths relative to the repository root
    monkeypatch.setenv("MDLM_CACHE_DIR", str(tmp_path / "cache"))
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))]
    cli = build_cli([*args, *ONE_STEP, f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 1


def test_wikitext_50m_preset_instantiates_on_the_meta_device(monkeypatch):
    """The paper's 50M GPU setting: the backbone it configures, built without memory."""
    from mdlm.models.transformer import Transformer

    base = yaml.safe_load((REPO / "configs" / "wikitext_uniform.yaml").read_text())
    preset = yaml.safe_load((REPO / "configs" / "presets" / "wikitext_50m.yaml").read_text())
    backbone = preset["model"]["init_args"]["backbone"]
    assert backbone["class_path"] == "mdlm.models.transformer.Transformer"
    with torch.device("meta"):
        model = Transformer(50259, **backbone["init_args"])  # GPT-2 + [MASK] + [PAD]
    assert 49e6 < model.num_parameters(non_embedding=True) < 50e6 + 50259 * 640
    assert all(p.is_meta for p in model.parameters())
    assert preset["trainer"]["max_steps"] == 6000 and base["data"]["init_args"]["block_length"] == 150
    assert preset["data"]["init_args"]["batch_size"] * preset["trainer"]["devices"] == 1024


def test_sampler_override_from_the_command_line(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--sampler=mdlm.samplers.Window",
                   "--sampler.init_args.t_max=0.1", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sampler"] == {
        "class_path": "mdlm.samplers.Window",
        "init_args": {"t_min": 0.0, "t_max": 0.1, "eps": 0.001, "seed": None, "stratified": False, "log_every_n_steps": 50},
    }


TRAINER_SETS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("config", TRAINER_SETS, ids=_ids)
def test_trainer_override_sets_compose_with_a_full_config(config, capsys, monkeypatch):
    """configs/trainer/*.yaml are trainer-only override sets: each says how to compose it and parses
    on top of a full config (strategies that need a GPU or 2 processes are parsed, not run, here)."""
    text = config.read_text()
    assert text.startswith("#") and f"configs/trainer/{config.name}" in text, f"{config} must say how to compose it"
    assert set(yaml.safe_load(text)) == {"trainer"}
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(REPO / "configs" / "parity_md.yaml"), "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load(text)["trainer"]
    for key, value in expected.items():
        if key == "strategy" and isinstance(value, dict):
            assert printed["trainer"]["strategy"]["class_path"] == value["class_path"]
        elif key == "callbacks":
            assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [c["class_path"] for c in value]
        else:
            assert printed["trainer"][key] == value, key
