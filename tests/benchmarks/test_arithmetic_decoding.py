"""experiments/arithmetic_decoding.py: its statistics against hand computations, its carry detector against
the generator's own operands, and one end-to-end run on a checkpoint trained for a few steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO_ROOT as REPO

from experiments import arithmetic_decoding as ad
from mdlm.data.arithmetic import generate_level


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (0, 5, 2 / 32),  # all 5 discordant pairs one way: 2 * 0.5**5
        (1, 9, 2 * (1 + 10) / 1024),  # 2 * P[X <= 1], X ~ Bin(10, 1/2)
        (5, 5, 1.0),  # symmetric: capped at 1
        (3, 7, 2 * (1 + 10 + 45 + 120) / 1024),
    ],
)
def test_mcnemar_exact_matches_the_binomial_tail(b, c, expected):
    assert ad.mcnemar_exact(b, c) == pytest.approx(expected)
    assert ad.mcnemar_exact(c, b) == pytest.approx(expected)  # two-sided: symmetric in b and c


def _carry_from_operands(operands, operators) -> bool:
    total, carry = operands[0], False
    for op, x in zip(operators, operands[1:]):
        if op == "+":
            carry = carry or (total % 10 + x % 10) >= 10
            total += x
        else:
            carry = carry or (total % 10) < (x % 10)
            total -= x
    return carry


@pytest.mark.parametrize("level", [1, 2])
def test_has_carry_reads_the_question_as_the_generator_built_it(level):
    problems = generate_level(level, {"test": 300}, seed=3)["test"]
    flags = [ad.has_carry("Question: " + p.question + "\nAnswer:") for p in problems]
    assert flags == [_carry_from_operands(p.operands, p.operators) for p in problems]
    assert 0 < sum(flags) < len(flags)  # both kinds occur, so the split is informative


def test_has_carry_refuses_text_that_is_not_an_arithmetic_question():
    with pytest.raises(ValueError, match="not an arithmetic question"):
        ad.has_carry("Question: What is the capital of France?\nAnswer:")


@pytest.mark.slow
def test_end_to_end_on_a_few_step_checkpoint(tmp_path, monkeypatch):
    from mdlm.cli import build_cli

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["mdlm"])
    configs = ["--config", "configs/sft_arithmetic.yaml", "--config", "configs/presets/arithmetic_smoke.yaml"]
    fit = build_cli(["fit", *configs, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                     f"--trainer.logger.init_args.save_dir={tmp_path}"])
    ckpt = Path(fit.trainer.log_dir, "checkpoints", "last.ckpt")
    out = tmp_path / "dec.json"
    data = ad.main(["--ckpt", str(ckpt), "--limit", "6", "--batch-size", "3", "--out", str(out),
                    "--settings", "exact b32", "tau0.5 b32", "exact b8", "tau0.9+dual b8"])
    assert json.loads(out.read_text())["results"]["problems"] == 6 and out.with_suffix(".md").is_file()
    rows = data["results"]["rows"]
    assert rows["exact b32"]["calls_per_answer"] == 32  # the exact loop: one call per committed token
    assert rows["exact b32"]["vs_exact"]["answer_agreement"] == 1.0 and rows["exact b32"]["vs_exact"]["mcnemar_p"] == 1
    assert rows["tau0.5 b32"]["calls_per_answer"] <= 32
    for r in rows.values():
        assert r["n"] == 6 and 0 <= r["accuracy"] <= 1 and math.isfinite(r["answers_per_s"])
        assert r["by_carry"]["carry"]["n"] + r["by_carry"]["no_carry"]["n"] == 6
    with pytest.raises(SystemExit):  # a fast setting needs its block length's exact reference
        ad.main(["--ckpt", str(ckpt), "--settings", "tau0.9 b8"])
