"""The paper's 8B SFT route rehearsed end to end on 2 CPU processes (``benchmarks/rehearse_8b_route.py``).

A LLaDA stand-in with remote code and sharded safetensors, the paper config's FSDP2 strategy with its
bf16 policy, meta init with per-rank loading, block checkpointing, validation, EMA, a sharded
checkpoint, then ``mdlm test`` generating and scoring MATH-500 answers from that checkpoint.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import needs_math500


@pytest.mark.slow
@pytest.mark.distributed
@needs_math500
def test_the_8b_route_rehearsal_runs_end_to_end(tmp_path):
    from benchmarks import rehearse_8b_route as rehearsal

    out = tmp_path / "rehearsal"
    results = rehearsal.main(["--out", str(out), "--json", str(tmp_path / "rehearsal.json")])
    assert json.loads((tmp_path / "rehearsal.json").read_text())["wall_s"] == results["wall_s"]
    assert len(results["standin"]["shards"]) > 1  # sharded safetensors, as real checkpoints ship
    assert results["fit"]["sharded_checkpoint"]  # a DCP directory written by both ranks
    evaluations = results["fit"]["evaluations"]
    assert evaluations and evaluations[-1]["step"] == 6
    assert all(math.isfinite(e["val/nelbo"]) and math.isfinite(e["train/loss"]) for e in evaluations)
    # the prompts were generated, decoded and scored (a random stand-in is not expected to be right)
    assert 0.0 <= results["test"]["test/answer_accuracy"] <= 1.0
    assert any(key.startswith("test/answer_accuracy/Level") for key in results["test"])
