"""The README's commands and code examples are real."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_quick_start_has_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    run, test = commands
    assert "mdlm fit --config configs/parity_md.yaml" in run
    assert test.rstrip().endswith("pytest")
    for command in commands:
        assert "pip install torch==2.13.0" in command  # the pinned CPU wheel


def test_ci_runs_the_readme_test_command():
    script = REPO / ".ci" / "run"
    extracted = subprocess.run(
        ["bash", "-c", "grep -A1 -F '# install and pass the tests' README.md | tail -n 1"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert extracted == _quick_start_commands()[1]
    assert "eval \"$cmd\"" in script.read_text()


def test_sampler_guide_example_runs(tmp_path):
    section = README.split("### Write your own schedule", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README-sampler-guide", "exec"), namespace)
    narrowing = namespace["Narrowing"](final_width=0.2, seed=0)
    t0 = narrowing.draw(20_000, 0.0, step=0)
    t1 = narrowing.draw(20_000, 1.0, step=1)
    assert t0.min() < 0.01 and t0.max() > 0.99  # U[0, 1] at the start (floor applied)
    assert t1.min() >= 0.4 - 1e-6 and t1.max() <= 0.6 + 1e-6
    assert t1.mean().item() == pytest.approx(0.5, abs=0.005)

    # and it trains through the Trainer like a built-in sampler
    from conftest import tiny_trainer

    from mdlm.data.parity import ParityDataModule
    from mdlm.module import MaskedDiffusionLM

    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2)
    dm = ParityDataModule(n=6, k=2, num_train=32, num_val=16, batch_size=8)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[narrowing])
    trainer.fit(model, datamodule=dm)
    assert narrowing.num_draws == 2 + 2 and torch.isfinite(narrowing.last_t).all()
