"""experiments/wikitext_generation.py: its metrics against hand computations, and the smoke path end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from experiments import wikitext_generation as wg


# ------------------------------------------------------------------ unigram entropy
def test_entropy_of_known_distributions():
    assert wg.unigram_entropy([1, 1, 2, 2]) == pytest.approx(1.0)  # two equally likely tokens: 1 bit
    assert wg.unigram_entropy(list(range(8))) == pytest.approx(3.0)  # 8 distinct tokens: 3 bits
    # p = (3/4, 1/4): -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.8112781244591328
    assert wg.unigram_entropy([5, 5, 5, 9]) == pytest.approx(0.8112781244591328)
    assert wg.unigram_entropy([5, 5, 9, 5], base=math.e) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert wg.unigram_entropy([7] * 20) == 0.0
    assert not math.copysign(1.0, wg.unigram_entropy([7] * 20)) < 0  # no "-0.00" in tables
    assert math.isnan(wg.unigram_entropy([]))


# ------------------------------------------------------------------ repetition
def test_repetition_rate_of_known_sequences():
    # a b c d a b c d: 4-grams abcd bcda cdab dabc abcd -> 5, of which 4 distinct -> 1/5 repeated
    assert wg.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(0.2)
    assert wg.repetition_rate([7] * 10) == pytest.approx(6 / 7)  # 7 identical 4-grams
    assert wg.repetition_rate(list(range(10))) == 0.0
    assert wg.repetition_rate([1, 2, 1, 2, 1], n=2) == pytest.approx(0.5)  # 12 21 12 21
    assert math.isnan(wg.repetition_rate([1, 2, 3]))


# ------------------------------------------------------------------ judge perplexity
class BigramJudge(torch.nn.Module):
    """logits[b, i] = log P[ids[b, i]]: a causal judge whose next-token distribution is a known table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.logp = table.log()
        self.seen_masks: list[torch.Tensor] = []

    def forward(self, ids, attention_mask=None):
        self.seen_masks.append(attention_mask)
        return self.logp[ids] + 3.0  # a constant shift: logits need not be normalised


def _table(v: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(v, v, generator=g, dtype=torch.float64), dim=-1)


def test_continuation_nll_is_the_constructed_bigram_nll():
    P = _table()
    judge = BigramJudge(P)
    prompts = [[0, 1], [3], [2, 2, 2]]
    conts = [[2, 0, 1], [], [1]]
    nlls = wg.continuation_nll(judge, prompts, conts, batch=2)
    by_hand = [
        [-math.log(P[1, 2]), -math.log(P[2, 0]), -math.log(P[0, 1])],
        [],
        [-math.log(P[2, 1])],
    ]
    for got, want in zip(nlls, by_hand):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # pooled perplexity over the 4 scored tokens
    want_ppl = math.exp(sum(sum(x) for x in by_hand) / 4)
    assert wg.pooled_perplexity(nlls) == pytest.approx(want_ppl, rel=1e-6)
    # right padding is marked in the attention mask (row 0 is 5 long, row 2 is 4 long in one batch)
    assert any(m is not None and (m == 0).any() for m in judge.seen_masks)
    # one at a time gives the same numbers as batched with padding
    alone = [wg.continuation_nll(BigramJudge(P), [p], [c])[0] for p, c in zip(prompts, conts)]
    for a, b in zip(alone, nlls):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_perplexity_of_a_uniform_judge_is_the_vocabulary_size():
    v = 7
    judge = BigramJudge(torch.full((v, v), 1.0 / v, dtype=torch.float64))
    nlls = wg.continuation_nll(judge, [[1, 2], [3]], [[4, 5, 6], [0]])
    assert wg.pooled_perplexity(nlls) == pytest.approx(v)
    lo, hi = wg.bootstrap_perplexity(nlls)
    assert lo == pytest.approx(v) and hi == pytest.approx(v)


def test_bootstrap_interval_brackets_the_pooled_value():
    rng = np.random.default_rng(1)
    nlls = [rng.uniform(2, 6, size=rng.integers(5, 30)) for _ in range(40)]
    ppl = wg.pooled_perplexity(nlls)
    lo, hi = wg.bootstrap_perplexity(nlls, reps=500)
    assert lo < ppl < hi
    assert math.isnan(wg.pooled_perplexity([np.zeros(0)]))


def test_quality_and_paired_difference():
    prompts = [[0], [0]]
    conts = [[1, 1, 2, 2], [3, 3, 3, 3]]
    nlls = [np.array([1.0, 1.0, 2.0, 2.0]), np.array([3.0, 3.0, 3.0, 3.0])]
    q = wg.quality(prompts, conts, nlls)
    assert q["judge_ppl"] == pytest.approx(math.exp((1 + 1 + 2 + 2 + 3 * 4) / 8))
    assert q["judge_nll_mean"] == pytest.approx((1.5 + 3.0) / 2)
    assert q["entropy_bits_mean"] == pytest.approx(0.5)  # 1 bit and 0 bits
    assert q["entropy_bits_pooled"] == pytest.approx(-(0.25 * math.log2(0.25) * 2 + 0.5 * math.log2(0.5)))
    assert q["rep4_mean"] == pytest.approx(0.0) and q["tokens_per_sample"] == 4.0
    m, se, n = wg.paired_difference([1.0, 2.0, float("nan")], [0.5, 1.0, 3.0])
    assert (m, n) == (pytest.approx(0.75), 2) and se == pytest.approx(0.25)


class FixedMDLM(torch.nn.Module):
    """logits give token 3 probability 0.6 and tokens 1, 2 0.2 each once the mask (0) and pad (4) are excluded."""

    mask_token_id = 0

    def forward(self, ids):
        row = torch.tensor([50.0, math.log(0.2), math.log(0.2), math.log(0.6), 50.0])
        return row.expand(*ids.shape, 5).clone()


def test_confidence_profile_of_a_constructed_model():
    windows = np.ones((3, 4 + 2 * 8), dtype=np.int64)
    c = wg.confidence_profile(FixedMDLM(), windows, prompt_length=4, block_length=8, suppress=[4], blocks=(0, 1, 5), batch=2)
    start, half = c["block start"], c["half revealed"]
    assert start["positions"] == 3 * 8 * 2 and half["positions"] == 3 * 4 * 2  # block 5 lies beyond the windows
    assert start["mean_top_prob"] == pytest.approx(0.6) and half["max_top_prob"] == pytest.approx(0.6)
    assert start["frac_at_or_above"] == {"0.9": 0.0, "0.7": 0.0, "0.5": 1.0}


# ------------------------------------------------------------------ helpers and settings
def test_windows_and_cut():
    stream = np.arange(100)
    w = wg.valid_windows(stream, 10, 4)
    assert w.shape == (4, 10) and w[0, 0] == 0 and w[-1, 0] == 90
    with pytest.raises(ValueError):
        wg.valid_windows(stream, 10, 11)
    assert wg.cut_at([5, 6, 0, 7, 0], 0) == [5, 6]
    assert wg.cut_at([5, 6], 0) == [5, 6]


def test_every_setting_is_accepted_by_generate():
    from mdlm.generation import generate
    from mdlm.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(16, n_layer=1, n_head=2, d_model=16, max_seq_len=32).eval()
    prompts = torch.randint(2, 16, (2, 4))
    exact = None
    for name, kw in wg.SETTINGS.items():
        out = generate(model, prompts, mask_token_id=1, gen_length=8, steps=8, block_length=4, eos_token_id=0,
                       **{k: v for k, v in kw.items() if v is not None})
        assert out.tokens.shape == (2, 8)
        assert (out.cache is not None) == ("prefix" in name or "dual" in name)
        if name == "exact":
            exact = out
    assert exact is not None and int(exact.row_forward_passes[0]) == 8
    assert set(wg.SETTINGS) == {"exact", "prefix", "dual"} | {f"tau{t}{c}" for t in (0.9, 0.7, 0.5) for c in ("", "+prefix", "+dual")}


# ------------------------------------------------------------------ the smoke path
@pytest.mark.slow
def test_smoke_end_to_end(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MDLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "res.json"
    data = wg.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text().startswith("### Long generations")
    assert list(saved["runs"]) == ["1.0"]  # sampled by default
    run = data["runs"]["1.0"]
    assert set(run["settings"]) == set(wg.SETTINGS)
    assert saved["judge"]["valid_ppl"] > 1 and saved["mdlm"]["final"]["step"] == 2
    for r in run["settings"].values():
        assert r["quality"]["samples"] == 4 and r["tok_per_s"] > 0
        assert math.isfinite(r["quality"]["judge_ppl"]) or r["quality"]["tokens_per_sample"] == 0
    assert run["settings"]["exact"]["calls_per_sample"] == 32.0  # steps = gen_length, no early stop
    assert run["reference"]["quality"]["tokens_per_sample"] > 0
    assert run["machine"]["loadavg"] and run["machine"]["loadavg_end"]
    # a rerun reuses the MDLM and the judge, and adds its temperature's block to the same file
    again = wg.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--temperature", "0", "--settings", "tau0.7+dual"])
    assert again["mdlm"]["reused"] and again["judge"]["reused"] and again["runs"]["0.0"]["models_reused"]
    assert set(again["runs"]) == {"1.0", "0.0"}
    assert set(again["runs"]["0.0"]["settings"]) == {"exact", "tau0.7+dual"}
    assert "#### Temperature 0.0 (greedy)" in out.with_suffix(".md").read_text()
    assert again["confidence"]["block start"]["positions"] == 4 * 16  # 4 windows, block 0 of 16 positions
    conf = wg.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--confidence-only"])
    assert set(conf["runs"]) == {"1.0", "0.0"} and "MDLM confidence" in out.with_suffix(".md").read_text()
