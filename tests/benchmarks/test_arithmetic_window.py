"""experiments/arithmetic_window.py's paired comparison: differences per seed, the exact sign test."""

from __future__ import annotations

import json

import pytest

from benchmarks._common import sign_test_p
from experiments import arithmetic_window as aw


@pytest.mark.parametrize(
    ("wins", "losses", "p"),
    [(6, 0, 2 / 64), (5, 1, 2 * 7 / 64), (3, 3, 1.0), (2, 1, 1.0), (10, 0, 2 / 1024), (0, 0, 1.0)],
)
def test_sign_test_matches_the_binomial_tail(wins, losses, p):
    assert sign_test_p(wins, losses) == pytest.approx(p)


def test_paired_uses_only_seeds_both_samplers_have(tmp_path, monkeypatch):
    monkeypatch.setattr(aw, "OUT_DIR", tmp_path)
    acc = {("window_0.5_1", 0): 0.8, ("uniform_0_1", 0): 0.1, ("window_0.5_1", 1): 0.1, ("uniform_0_1", 1): 0.1,
           ("window_0.5_1", 2): 0.9, ("uniform_0_1", 2): 0.2, ("window_0.5_1", 3): 0.95}  # seed 3 unpaired
    for (name, seed), a in acc.items():
        aw.run_file(name, seed).write_text(json.dumps({"test": {"accuracy": a}}))
    d = aw.paired("window_0.5_1", "uniform_0_1", [0, 1, 2, 3])
    assert d["seeds"] == [0, 1, 2]
    assert d["differences"] == pytest.approx([0.7, 0.0, 0.7])
    assert (d["wins"], d["ties"], d["losses"]) == (2, 1, 0)
    assert d["mean"] == pytest.approx(1.4 / 3)
    assert d["se"] == pytest.approx((sum((x - 1.4 / 3) ** 2 for x in [0.7, 0.0, 0.7]) / 2) ** 0.5 / 3**0.5)
    assert d["sign_test_p"] == pytest.approx(0.5)
    assert "tied on 1" in aw._paired_line(d)
