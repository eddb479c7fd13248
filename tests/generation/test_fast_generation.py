"""Parallel decoding (confidence threshold, cap), early stop at EOS, lockstep and block caching of
:func:`mdlm.generation.generate` (Fast-dLLM style), checked against the exact loop, LLaDA's loop
(the port in test_generation.py) and hand-computed schedules."""

from __future__ import annotations

import math

import pytest
import torch
from test_generation import (
    EOS,
    MASK,
    ORDINARY,
    PAD,
    TargetModel,
    TinyBidirectional,
    V,
    llada_generate,
    rand_ids,
)
from test_padding_blind import TinyAttention

from mdlm.generation import PRESETS, block_cache_model, generate, get_preset
from mdlm.models.transformer import Transformer


@pytest.fixture(scope="module")
def tiny():
    return TinyBidirectional(seed=0)


def zero_noise(kind, step):  # LLaDA's loop at temperature 0 ignores the noise values
    return torch.tensor(0.5, dtype=torch.float64)


class ConfidenceModel:
    """At answer position ``j`` the top token is ``target[j]`` with probability ``conf[j]`` (after
    the mask logit is suppressed), whatever the context."""

    def __init__(self, prompt_len: int, target: torch.Tensor, conf: list[float]):
        self.prompt_len, self.target = prompt_len, target
        others = V - 1 - 1  # the mask token is suppressed, the target is one of the rest
        self.height = torch.tensor([math.log(others * p / (1 - p)) for p in conf], dtype=torch.float64)
        self.calls = 0

    def __call__(self, input_ids, attention_mask=None):
        self.calls += 1
        b, length = input_ids.shape
        logits = torch.zeros(b, length, V, dtype=torch.float64)
        gen = slice(self.prompt_len, self.prompt_len + len(self.target))
        logits[:, gen] = logits[:, gen].scatter(-1, self.target[None, :, None].expand(b, -1, 1),
                                                self.height[None, :, None].expand(b, -1, 1))
        return logits


# --------------------------------------------------------------------------------------
# tau -> 1: the exact loop, token for token
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch,gen_length,steps,block_length,cfg_scale", [
    (1, 16, 16, 16, 0.0), (2, 16, 16, 4, 0.0), (2, 12, 6, 6, 0.0), (1, 12, 12, 4, 0.7),
    (2, 16, 8, 8, 0.0),
])
def test_threshold_one_equals_llada_loop(tiny, batch, gen_length, steps, block_length, cfg_scale):
    prompt = torch.stack([rand_ids(5, 40 + b) for b in range(batch)])
    reference = llada_generate(tiny, prompt, steps, gen_length, block_length, 0.0, cfg_scale,
                               "low_confidence", MASK, zero_noise)
    kw = dict(mask_token_id=MASK, gen_length=gen_length, steps=steps, block_length=block_length,
              cfg_scale=cfg_scale)
    exact = generate(tiny, list(prompt), **kw)
    fast = generate(tiny, list(prompt), threshold=1.0, max_tokens_per_step=gen_length, **kw)
    assert torch.equal(exact.canvas, reference) and torch.equal(fast.canvas, reference)
    assert torch.equal(fast.committed_per_step, exact.committed_per_step)
    assert fast.forward_passes == exact.forward_passes == steps


def test_threshold_one_equals_exact_with_sampling_and_padding(tiny):
    prompts = [rand_ids(3, 50), rand_ids(6, 51), rand_ids(4, 52)]
    kw = dict(mask_token_id=MASK, gen_length=12, steps=12, block_length=4, temperature=0.9,
              pad_token_id=PAD)
    exact = generate(tiny, prompts, generator=torch.Generator().manual_seed(3), **kw)
    fast = generate(tiny, prompts, generator=torch.Generator().manual_seed(3), threshold=1.0, **kw)
    assert torch.equal(fast.tokens, exact.tokens)


def test_threshold_one_equals_exact_for_a_padding_blind_model():
    blind = TinyAttention(hide=False)
    prompts = [rand_ids(3, 60), rand_ids(6, 61), rand_ids(3, 62)]
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, block_length=4, pad_token_id=PAD)
    exact = generate(blind, prompts, **kw)
    blind.calls.clear()
    fast = generate(blind, prompts, threshold=1.0, stop_at_eos=True, eos_token_id=EOS, **kw)
    assert torch.equal(fast.tokens, exact.tokens)
    assert all(not has_mask for _, has_mask in blind.calls)  # groups still run unpadded
    assert {shape[1] for shape, _ in blind.calls} == {3 + 8, 6 + 8}


# --------------------------------------------------------------------------------------
# The threshold rule, computed by hand
# --------------------------------------------------------------------------------------
CONF = [0.95, 0.5, 0.99, 0.3, 0.92, 0.1, 0.2, 0.97]  # >= 0.9 at positions 0, 2, 4, 7


def conf_model():
    target = rand_ids(8, seed=70)
    return ConfidenceModel(2, target, CONF), target


@pytest.mark.parametrize("steps,cap,expected", [
    (8, None, [4, 1, 1, 1, 1, 0, 0, 0]),  # then one per step, the block ends after 5 calls
    (2, None, [4, 4]),  # quota ceil(8/2) = 4 = the four above tau
    (4, None, [4, 2, 1, 1]),  # step 1: 4 left over 3 steps -> 2
    (8, 2, [2, 2, 1, 1, 1, 1, 0, 0]),  # cap 2: the top two each step while >= tau
])
def test_threshold_commit_counts(steps, cap, expected):
    model, target = conf_model()
    out = generate(model, [torch.tensor([1, 2])], mask_token_id=MASK, gen_length=8, steps=steps,
                   threshold=0.9, max_tokens_per_step=cap)
    assert out.committed_per_step[0].tolist() == expected
    assert model.calls == out.forward_passes == sum(1 for k in expected if k)
    assert torch.equal(out.tokens[0], target)


def test_threshold_commits_the_confident_positions_first():
    model, target = conf_model()
    seen = []
    inner = model.__call__

    def spy(ids, attention_mask=None):
        seen.append((ids[0, 2:] != MASK).tolist())
        return inner(ids, attention_mask)

    generate(spy, [torch.tensor([1, 2])], mask_token_id=MASK, gen_length=8, steps=8, threshold=0.9)
    assert seen[1] == [c >= 0.9 for c in CONF]  # after step 0: exactly the confident ones
    assert seen[2] == [c >= 0.9 or c == 0.5 for c in CONF]  # then the most confident left


def test_threshold_zero_commits_a_block_per_call(tiny):
    out = generate(tiny, [rand_ids(4, 71)], mask_token_id=MASK, gen_length=12, steps=12,
                   block_length=4, threshold=0.0)
    assert out.forward_passes == 3 and out.committed_per_step[0].tolist() == [4, 0, 0, 0] * 3
    assert not (out.tokens == MASK).any()


def test_threshold_and_cap_validation():
    kw = dict(mask_token_id=MASK, gen_length=8, block_length=8)
    with pytest.raises(ValueError, match=r"max_tokens_per_step=1 cannot finish a block of 8 tokens in 4 steps; "
                                         r"use max_tokens_per_step >= 2"):
        generate(TargetModel(rand_ids(10, 1)), [torch.tensor([1])], steps=4, max_tokens_per_step=1, **kw)
    with pytest.raises(ValueError, match=r"threshold must be None or a number in \[0, 1\], got 1.5"):
        generate(TargetModel(rand_ids(10, 1)), [torch.tensor([1])], steps=8, threshold=1.5, **kw)
    with pytest.raises(ValueError, match=r"threshold needs remasking='low_confidence'"):
        generate(TargetModel(rand_ids(10, 1)), [torch.tensor([1])], steps=8, threshold=0.9,
                 remasking="random", **kw)
    with pytest.raises(ValueError, match=r"cache='full' is not a known cache mode; valid: None, 'prefix', 'dual'"):
        generate(TargetModel(rand_ids(10, 1)), [torch.tensor([1])], steps=8, cache="full", **kw)
    with pytest.raises(ValueError, match=r"cache_refresh is set but cache is None"):
        generate(TargetModel(rand_ids(10, 1)), [torch.tensor([1])], steps=8, cache_refresh=2, **kw)
    with pytest.raises(ValueError, match=r"lockstep must be True or False"):
        get_preset("cpu_tiny").replace(lockstep="yes")


# --------------------------------------------------------------------------------------
# Early stop at EOS
# --------------------------------------------------------------------------------------
def test_stop_at_eos_fills_the_tail_and_stops():
    answer = torch.tensor([3, 4, EOS, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    target = torch.cat([torch.tensor([1, 2]), answer])
    kw = dict(mask_token_id=MASK, gen_length=12, steps=12, block_length=4, eos_token_id=EOS)
    model = TargetModel(target)
    exact = generate(model, [target[:2]], **kw)
    assert torch.equal(exact.tokens[0], answer) and exact.forward_passes == 12
    model = TargetModel(target)
    out = generate(model, [target[:2]], stop_at_eos=True, **kw)
    # equal confidences: leftmost first, so positions 0, 1, 2 (EOS) take three calls
    assert len(model.calls) == out.forward_passes == 3
    assert out.tokens[0].tolist() == [3, 4] + [EOS] * 10
    assert out.committed_per_step[0].tolist() == [1, 1, 1] + [0] * 9
    assert [s.tolist() for s in out.sequences] == [s.tolist() for s in exact.sequences] == [[3, 4]]
    # an EOS with a mask before it does not stop the row: only after the gap is filled
    later = TargetModel(target)
    out = generate(later, [target[:2]], stop_at_eos=True, **{**kw, "block_length": 12})
    assert len(later.calls) == 3


def most_common_token(tokens: torch.Tensor) -> int:
    return int(torch.bincount(tokens.flatten(), minlength=V)[:ORDINARY].argmax())


@pytest.mark.parametrize("threshold,cfg_scale", [(None, 0.0), (0.6, 0.0), (None, 0.8)])
def test_stop_at_eos_keeps_greedy_sequences(tiny, threshold, cfg_scale):
    """Lossless for greedy ``sequences``: batched, padded, with rows leaving the batch."""
    prompts = [rand_ids(n, 80 + n) for n in (3, 7, 5, 4)]
    kw = dict(mask_token_id=MASK, gen_length=16, steps=16, block_length=4, pad_token_id=PAD,
              threshold=threshold, cfg_scale=cfg_scale)
    eos = most_common_token(generate(tiny, prompts, **kw).tokens)  # an "EOS" the model emits
    full = generate(tiny, prompts, eos_token_id=eos, **kw)
    fast = generate(tiny, prompts, eos_token_id=eos, stop_at_eos=True, **kw)
    assert [s.tolist() for s in fast.sequences] == [s.tolist() for s in full.sequences]
    assert fast.forward_passes < full.forward_passes
    assert (fast.row_forward_passes <= full.row_forward_passes).all()
    assert len(set(fast.row_forward_passes.tolist())) > 1  # rows left at different times
    for b, p in enumerate(prompts):  # each row as it would be alone
        alone = generate(tiny, [p], eos_token_id=eos, stop_at_eos=True, **kw)
        assert torch.equal(alone.tokens[0], fast.tokens[b])
        assert int(alone.row_forward_passes[0]) == int(fast.row_forward_passes[b])
    for row, seq in zip(fast.tokens, fast.sequences):  # after the first EOS: EOS only
        assert (row[len(seq):] == eos).all()


def test_stop_at_eos_without_eos_id_changes_nothing(tiny):
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, block_length=4)
    a = generate(tiny, [rand_ids(4, 90)], **kw)
    b = generate(tiny, [rand_ids(4, 90)], stop_at_eos=True, **kw)
    assert torch.equal(a.tokens, b.tokens) and a.forward_passes == b.forward_passes


# --------------------------------------------------------------------------------------
# Lockstep: the exact loop's number of calls, the same output
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gen_length,steps,block_length", [(16, 16, 4), (16, 8, 8), (8, 16, 4)])
def test_lockstep_calls_like_the_exact_loop(gen_length, steps, block_length):
    torch.manual_seed(0)
    model = Transformer(V, preset="tiny", max_seq_len=64).eval()
    prompts = [rand_ids(5, 91), rand_ids(5, 92)]
    kw = dict(mask_token_id=MASK, gen_length=gen_length, steps=steps, block_length=block_length,
              threshold=0.0, stop_at_eos=True, cache="dual", eos_token_id=3)
    exact = generate(model, prompts, mask_token_id=MASK, gen_length=gen_length, steps=steps,
                     block_length=block_length)
    free = generate(model, prompts, **kw)
    locked = generate(model, prompts, lockstep=True, **kw)
    assert torch.equal(locked.tokens, free.tokens)
    assert free.forward_passes < exact.forward_passes
    spb = steps // (gen_length // block_length)
    assert locked.forward_passes == exact.forward_passes == (gen_length // block_length) * min(spb, block_length)


# --------------------------------------------------------------------------------------
# Block caching
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Transformer(V, preset="tiny", max_seq_len=96).eval()


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_cache_refreshed_every_step_equals_exact(net, cache, cfg_scale):
    prompts = [rand_ids(5, 93), rand_ids(9, 94), rand_ids(2, 95)]
    kw = dict(mask_token_id=MASK, gen_length=16, steps=16, block_length=4, pad_token_id=PAD,
              cfg_scale=cfg_scale)
    exact = generate(net, prompts, **kw)
    cached = generate(net, prompts, cache=cache, cache_refresh=1, **kw)
    assert cached.cache == cache and exact.cache is None
    assert torch.equal(cached.tokens, exact.tokens)
    assert cached.forward_passes == exact.forward_passes


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_query_positions_and_plausible_output(net, cache):
    prompt = rand_ids(6, 96)
    kw = dict(mask_token_id=MASK, gen_length=16, steps=16, block_length=4)
    exact = generate(net, [prompt], **kw)
    out = generate(net, [prompt], cache=cache, **kw)
    length = 6 + 16
    if cache == "dual":  # per block: one full forward, then three forwards of the block
        expected = 4 * (length + 3 * 4)
    else:  # ... then three forwards of the block and everything after it
        expected = sum(length + 3 * (length - (6 + 4 * j)) for j in range(4))
    assert int(out.row_query_positions[0]) == expected
    assert int(exact.row_query_positions[0]) == 16 * length
    assert out.forward_passes == 16 and not (out.tokens == MASK).any()
    refreshed = generate(net, [prompt], cache=cache, cache_refresh=2, **kw)
    assert refreshed.forward_passes == 16
    assert int(refreshed.row_query_positions[0]) > expected


def test_cache_with_threshold_eos_and_cfg_runs(net):
    prompts = [rand_ids(5, 97), rand_ids(8, 98), rand_ids(3, 99)]
    kw = dict(mask_token_id=MASK, gen_length=16, steps=16, block_length=4, pad_token_id=PAD,
              cfg_scale=0.5)
    eos = most_common_token(generate(net, prompts, **kw).tokens)
    for cache in ("prefix", "dual"):
        out = generate(net, prompts, threshold=0.05, stop_at_eos=True, cache=cache,
                       eos_token_id=eos, **kw)
        assert not (out.tokens == MASK).any() and out.cache == cache
        assert out.forward_passes < 16


def test_cache_falls_back_to_the_exact_path(tiny):
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, block_length=4)
    exact = generate(tiny, [rand_ids(4, 100)], **kw)
    out = generate(tiny, [rand_ids(4, 100)], cache="dual", **kw)
    assert out.cache is None and torch.equal(out.tokens, exact.tokens)
    assert block_cache_model(tiny) is None


def test_cache_found_through_a_wrapper(net):
    from mdlm.module import MaskedDiffusionLM

    module = MaskedDiffusionLM(backbone=lambda vocab_size: net, vocab_size=V, mask_token_id=MASK).eval()
    assert block_cache_model(module) is net
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, block_length=4)
    a = generate(module, [rand_ids(4, 101)], cache="dual", **kw)
    b = generate(net, [rand_ids(4, 101)], cache="dual", **kw)
    assert a.cache == "dual" and torch.equal(a.tokens, b.tokens)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------
def test_fast_presets(net):
    for name in ("llada_gsm8k_fast", "llada_math_fast", "cpu_tiny_fast"):
        cfg = get_preset(name)
        base = get_preset(name[: -len("_fast")])
        assert (cfg.threshold, cfg.cache, cfg.stop_at_eos) == (0.9, "dual", True)
        assert (cfg.gen_length, cfg.steps, cfg.shots, cfg.extraction) == (
            base.gen_length, base.steps, base.shots, base.extraction)
        assert base.threshold is None and base.cache is None and not base.stop_at_eos
        assert cfg.generate_kwargs()["threshold"] == 0.9 and not cfg.generate_kwargs()["lockstep"]
    assert set(PRESETS) >= {"cpu_tiny_fast", "llada_math_fast", "llada_gsm8k_fast"}
    cfg = get_preset("cpu_tiny_fast").replace(gen_length=16, steps=16, block_length=8)
    out = generate(net, [rand_ids(4, 102)], mask_token_id=MASK, eos_token_id=EOS, **cfg.generate_kwargs())
    assert out.cache == "dual" and not (out.tokens == MASK).any()


# --------------------------------------------------------------------------------------
# mdlm test/predict through the GenerationConfig
# --------------------------------------------------------------------------------------
def test_module_answers_with_a_fast_preset(tmp_path, monkeypatch):
    """``generation_preset="cpu_tiny_fast"``: ``_answer`` passes the threshold, the cache and early
    stop to ``generate`` (the backbone's cache is found through the module)."""
    import json

    from conftest import GPT2, tiny_trainer

    gpt2 = GPT2
    if not (gpt2 / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer not staged at {gpt2}")
    import mdlm.module as module_mod
    from mdlm.data.sft import GSM8KDataModule
    from mdlm.module import MaskedDiffusionLM

    records = [{"question": f"What is {a} + 1?", "answer": f"{a} + 1 = {a + 1}\n#### {a + 1}"} for a in range(4)]
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dm = GSM8KDataModule(str(gpt2), train_path=str(tmp_path / "train.jsonl"), test_path=str(tmp_path / "test.jsonl"),
                         add_mask_token=True, max_length=64, batch_size=2, eval_batch_size=4)
    model = MaskedDiffusionLM(
        backbone=lambda v: Transformer(v, n_layer=1, n_head=2, d_model=32), vocab_size=dm.vocab_size,
        mask_token_id=dm.mask_token_id, generation_preset="cpu_tiny_fast",
        generation_overrides={"gen_length": 16, "steps": 16, "block_length": 8},
    )
    seen = []
    real = module_mod.generate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((kwargs, out))
        return out

    monkeypatch.setattr(module_mod, "generate", spy)
    tiny_trainer(tmp_path).test(model, datamodule=dm, verbose=False)
    assert seen
    for kwargs, out in seen:
        assert (kwargs["threshold"], kwargs["cache"], kwargs["stop_at_eos"]) == (0.9, "dual", True)
        assert out.cache == "dual" and out.forward_passes <= 16


@pytest.mark.slow
def test_fast_benchmark_smoke(tmp_path):
    """``benchmarks/generation_throughput.py --fast --smoke`` runs every setting and counts tokens up
    to the first EOS only."""
    import json

    from benchmarks import generation_throughput as bench

    prompts, answers = bench.copy_task(5, 20, seed=0)
    assert prompts.shape == (5, bench.COPY_PROMPT) and (answers[:, bench.COPY_PROMPT :] == bench.COPY_EOS).all()
    for p, a in zip(prompts, answers):  # the answer is the prompt's content, then EOS
        n = int((p != bench.COPY_FILL).sum())
        assert torch.equal(a[:n], p[:n]) and (a[n:] == bench.COPY_EOS).all()
    out = tmp_path / "fast.json"
    data = bench.main(["--fast", "--smoke", "--out", str(out)])
    rows = {r["setting"]: r for r in json.loads(out.read_text())["results"]["rows"]}
    assert set(rows) == set(bench.FAST_SETTINGS) and rows["exact"]["speedup"] == 1.0
    assert rows["eos"]["agreement_with_exact"] == 1.0  # early stop is lossless for greedy answers
    assert rows["exact"]["forward_passes_per_answer"] == 16
    assert data["results"]["rows"][0]["tokens_per_s"] >= 0
    assert out.with_suffix(".md").read_text().startswith("### Fast decoding")
