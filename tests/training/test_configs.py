"""Every shipped config parses (--print_config), and trains two steps plus one validation.

Full configs live in configs/; override sets in configs/presets/ are composed with them. Configs
written for a GPU node or a Hub model (the paper's settings) run here with the CPU override set
that :data:`CPU_OVERRIDES` assigns them (and their header names), and configs too big for this
machine instantiate their model on the meta device.
"""

from __future__ import annotations

import math
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT as REPO
from conftest import SHARED_DATA
from torchmetrics import Metric

from mdlm.cli import build_cli

FULL = sorted((REPO / "configs").glob("*.yaml"))
PRESETS = sorted((REPO / "configs" / "presets").glob("*.yaml"))

#: The override sets (relative to configs/) each shipped config is composed with to run on this
#: CPU, by file-name pattern; ``[]``: the config's own defaults are its CPU setting. Every config
#: must match exactly one pattern (test_every_config_has_a_cpu_setting), so a new config gets an
#: entry here, and an override set must be named in the header comment of each config it serves.
CPU_OVERRIDES: dict[str, list[str]] = {
    "parity_*.yaml": [],
    "wikitext_*.yaml": [],  # the tiny CPU preset; presets/wikitext_50m.yaml is the paper's GPU setting
    # the paper's setting: LLaDA-8B and tulu-3 from the Hub, 8 GPUs -> local task data + a tiny model
    "sft_math_*.yaml": ["data/math_train.yaml", "presets/sft_tiny_cpu.yaml"],
    "sft_gsm8k_*.yaml": ["data/gsm8k_train.yaml", "presets/sft_tiny_cpu.yaml"],
    "sft_arithmetic.yaml": [],  # a CPU config: the synthetic task and a small model from scratch
}

#: data-module arguments that shrink a run, passed where the composed config's data module takes them
SHRINK_DATA = {
    "num_train": 64, "num_val": 32,                  # generated data (parity)
    "limit_train": 64, "limit_eval": 8, "val_size": 8,  # record files (SFT)
    "batch_size": 2, "eval_batch_size": 2,           # SFT's 50k-token vocabulary makes each row costly
}

#: two optimizer steps and one validation batch after the second, quietly
TWO_STEPS_AND_A_VALIDATION = [
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.check_val_every_n_epoch=null",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def cpu_overrides(config: Path) -> list[Path]:
    """The override files :data:`CPU_OVERRIDES` assigns to ``config`` (exactly one pattern must match)."""
    matches = [pattern for pattern in CPU_OVERRIDES if fnmatch(config.name, pattern)]
    assert len(matches) == 1, f"{config.name} matches {matches or 'no pattern'} of CPU_OVERRIDES: give it one entry"
    return [REPO / "configs" / name for name in CPU_OVERRIDES[matches[0]]]


def _ids(p: Path) -> str:
    return p.name


def _fast_only(paths: list[Path], fast: set[str]) -> list:
    """``paths`` as parameters: those named in ``fast`` stay in the fast tier, the others are marked ``slow``."""
    return [p if p.name in fast else pytest.param(p, marks=pytest.mark.slow) for p in paths]


def test_every_preset_is_used_or_documented():
    for preset in PRESETS:
        text = preset.read_text()
        assert text.startswith("#") and f"configs/presets/{preset.name}" in text, f"{preset} must say how to compose it"


# one config of each kind (parity, text, SFT) in the fast tier; ~0.3 s each
@pytest.mark.parametrize("config", _fast_only(FULL, {"parity_md.yaml", "wikitext_uniform.yaml", "sft_arithmetic.yaml"}),
                         ids=_ids)
def test_config_prints(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["sampler"]["class_path"].startswith("mdlm.samplers")


def test_every_config_has_a_cpu_setting():
    """Each config matches one CPU_OVERRIDES pattern, every pattern is used, and each override set
    it is composed with exists and is named in the config's header comment."""
    used = set()
    for config in FULL:
        header = "".join(line for line in config.read_text().splitlines(keepends=True) if line.startswith("#"))
        for override in cpu_overrides(config):
            assert override.is_file(), override
            assert f"configs/{override.relative_to(REPO / 'configs')}" in header, f"{config.name} must name {override}"
        used |= {pattern for pattern in CPU_OVERRIDES if fnmatch(config.name, pattern)}
    assert used == set(CPU_OVERRIDES), f"patterns matching no config: {set(CPU_OVERRIDES) - used}"


def _shrink_data(args: list[str], capsys) -> list[str]:
    """The :data:`SHRINK_DATA` arguments that the composed config's data module accepts."""
    with pytest.raises(SystemExit):
        build_cli([*args, "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["data"].get("init_args") or {}
    return [f"--data.init_args.{key}={value}" for key, value in SHRINK_DATA.items() if key in init_args]


@pytest.mark.slow
@pytest.mark.parametrize("config", FULL, ids=_ids)
def test_config_trains_two_steps_and_validates(config, tmp_path, monkeypatch, capsys):
    """Through the CLI: 2 training steps, then a validation whose metrics are logged and finite
    (under the composed config's own trainer.precision, with float64 metric states)."""
    configs = [config, *cpu_overrides(config)]
    if any("../shared/data" in c.read_text() for c in configs) and not SHARED_DATA.is_dir():
        pytest.skip(f"{config.name} reads the shipped data in {SHARED_DATA}, which is absent")
    monkeypatch.chdir(REPO)  # configs name data paths relative to the repository root
    monkeypatch.setenv("MDLM_CACHE_DIR", str(tmp_path / "cache"))
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))]
    args += _shrink_data(args, capsys)
    cli = build_cli([*args, *TWO_STEPS_AND_A_VALIDATION, f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    validated = {k: v for k, v in cli.trainer.callback_metrics.items() if k.endswith("/nelbo") and k != "train/nelbo"}
    assert validated, f"no validation NELBO was logged: {sorted(cli.trainer.callback_metrics)}"
    for key, value in validated.items():
        assert math.isfinite(float(value)), key
    metrics = [m for m in cli.model.eval_metrics.modules() if isinstance(m, Metric)]
    assert metrics and all(
        getattr(m, key).dtype in (torch.float64, torch.long) for m in metrics for key in m._defaults
    )


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


@pytest.mark.parametrize("config", _fast_only(TRAINER_SETS, {"ema.yaml", "fsdp2_cpu.yaml"}), ids=_ids)
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


PAPER_SFT = sorted([*(REPO / "configs").glob("sft_math_*.yaml"), *(REPO / "configs").glob("sft_gsm8k_*.yaml")])


@pytest.mark.parametrize("config", PAPER_SFT, ids=_ids)
def test_paper_sft_configs_are_the_papers_route(config):
    """Tulu-3 from the Hub by name, FSDP2 with fp32 master weights, bf16 compute and fp32 reduction,
    per-block checkpointing, meta init of LLaDA-8B-Base (never bf16-true: most updates would round away)."""
    cfg = yaml.safe_load(config.read_text())
    trainer, model, data = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert trainer["precision"] == "32-true"
    strategy = trainer["strategy"]
    assert strategy["class_path"] == "mdlm.parallel.FSDP2Strategy"
    assert {k: strategy["init_args"][k] for k in ("param_dtype", "reduce_dtype", "checkpoint_blocks")} == {
        "param_dtype": "bfloat16", "reduce_dtype": "float32", "checkpoint_blocks": True}
    assert model["init_device"] == "meta"
    backbone = model["backbone"]["init_args"]
    assert backbone["pretrained"] == "GSAI-ML/LLaDA-8B-Base" and backbone["dtype"] == "float32"
    assert data["hf_name"] == "allenai/tulu-3-sft-personas-math-filtered" and data["dataset"] == "chat"
    assert data["test_dataset"] == ("math500" if "_math_" in config.name else "gsm8k")
    assert data["mask_token_id"] == 126336


def test_every_data_variant_is_composed_somewhere():
    headers = "".join(path.read_text() for path in FULL)
    for variant in sorted((REPO / "configs" / "data").glob("*.yaml")):
        assert variant.read_text().startswith("#")
        assert f"configs/data/{variant.name}" in headers, f"no config says how to use {variant}"
