"""Tests of mdlm.generation (the LLaDA-style reverse process) against independent computations."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mdlm.generation.denoise as denoise_mod  # _denoise looks up _draw_uniform here
from mdlm.generation import (
    PRESETS,
    GenerationConfig,
    generate,
    get_preset,
    infill,
    num_transfer_tokens,
)

V = 20  # vocabulary size of the test models
MASK = 19
PAD = 18
EOS = 17
ORDINARY = 17  # ids 0..16 are ordinary tokens


# --------------------------------------------------------------------------------------
# Test models
# --------------------------------------------------------------------------------------
class TargetModel:
    """Logits one-hot (margin 50) on ``target[b, i]`` at position ``i``; records masks seen."""

    def __init__(self, target: torch.Tensor):
        self.target = target if target.dim() == 2 else target.unsqueeze(0)
        self.calls: list[torch.Tensor] = []

    def __call__(self, input_ids, attention_mask=None):
        self.calls.append((input_ids == MASK).clone())
        b, length = input_ids.shape
        tgt = self.target.expand(b, length) if self.target.shape[0] == 1 else self.target
        logits = torch.zeros(b, length, V)
        return logits.scatter_(-1, tgt.unsqueeze(-1), 50.0)


class TinyBidirectional(nn.Module):
    """A random 2-layer bidirectional self-attention model in float64 (no causal mask).

    Position ids count real tokens only (cumsum of the attention mask) and padded keys are
    masked out, so left padding does not change the logits at real positions. Weights are
    large enough that the answer depends strongly on the prompt (for CFG tests). The mask
    token's logit is pushed to -1e9 so that LLaDA's loop (which does not suppress it) and
    mdlm (which sets it to -inf) see the same distribution.
    """

    vocab_size = V

    def __init__(self, seed: int = 0, d: int = 24, layers: int = 2, max_len: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def param(*shape, scale=1.0):
            return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

        self.emb, self.pos = param(V, d), param(max_len, d)
        self.wq = nn.ParameterList([param(d, d, scale=d**-0.5) for _ in range(layers)])
        self.wk = nn.ParameterList([param(d, d, scale=d**-0.5) for _ in range(layers)])
        self.wv = nn.ParameterList([param(d, d, scale=d**-0.5) for _ in range(layers)])
        self.out = param(d, V, scale=d**-0.5)

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            pos = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        else:
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = self.emb[input_ids] + self.pos[pos]
        for wq, wk, wv in zip(self.wq, self.wk, self.wv):
            scores = (h @ wq) @ (h @ wk).transpose(1, 2) / h.shape[-1] ** 0.5
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask[:, None, :], float("-inf"))
            h = F.layer_norm(h + torch.softmax(scores, -1) @ (h @ wv), h.shape[-1:])
        logits = 2.0 * h @ self.out
        return logits.index_fill(-1, torch.tensor([MASK]), -1e9)


@pytest.fixture(scope="module")
def tiny():
    return TinyBidirectional(seed=0)


def rand_ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, ORDINARY, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# A plain port of LLaDA's published generate loop (ML-GSAI/LLaDA generate.py)
# --------------------------------------------------------------------------------------
def llada_add_gumbel_noise(logits, temperature, noise):
    logits = logits.to(torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def llada_get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, : remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def llada_generate(model, prompt, steps, gen_length, block_length, temperature, cfg_scale,
                   remasking, mask_id, noise_table):
    """LLaDA's loop; ``noise_table(kind, step)`` replaces torch.rand_like / torch.rand."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    global_step = 0
    for num_block in range(num_blocks):
        lo = prompt.shape[1] + num_block * block_length
        block_mask_index = x[:, lo : lo + block_length] == mask_id
        num_transfer_tokens = llada_get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                logits = model(x_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x)
            logits_with_noise = llada_add_gumbel_noise(
                logits, temperature, noise_table("gumbel", global_step)
            )
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits.to(torch.float64), dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == "random":
                x0_p = noise_table("random", global_step).clone()
            else:
                raise NotImplementedError(remasking)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length :] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
            global_step += 1
    return x


# --------------------------------------------------------------------------------------
# Fixed-target model: output, schedule, block order
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "steps,block_length",
    [(8, 8), (4, 8), (8, 4), (4, 2), (16, 4), (12, 2), (1, 8)],
)
def test_fixed_target_is_reproduced(steps, block_length):
    prompt_len, gen_length = 3, 8
    target = rand_ids(prompt_len + gen_length, seed=1)
    model = TargetModel(target)
    out = generate(model, [target[:prompt_len]], mask_token_id=MASK, gen_length=gen_length,
                   steps=steps, block_length=block_length)
    assert torch.equal(out.tokens[0], target[prompt_len:])
    assert out.tokens.shape == (1, gen_length)
    assert torch.equal(out.canvas[0], target)
    assert out.committed_per_step.shape == (1, steps)
    assert int(out.committed_per_step.sum()) == gen_length


@pytest.mark.parametrize("temperature,remasking", [(0.9, "low_confidence"), (0.0, "random"),
                                                   (1.5, "random")])
def test_fixed_target_with_sampling_and_random_remasking(temperature, remasking):
    target = rand_ids(2 + 12, seed=2)
    out = generate(TargetModel(target), [target[:2]], mask_token_id=MASK, gen_length=12,
                   steps=6, block_length=4, temperature=temperature, remasking=remasking,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens[0], target[2:])


def expected_schedule(masked: int, steps: int) -> list[int]:
    out = []
    for i in range(steps):
        out.append(masked // steps + (1 if i < masked % steps else 0))
    return out


def test_schedule_literal_example():
    # 6 masked tokens over 4 steps: 1.5 per step -> floor 1, remainder 2 to the first steps.
    assert num_transfer_tokens(torch.tensor([6, 4, 0, 9]), 4).tolist() == [
        [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [3, 2, 2, 2]]


@pytest.mark.parametrize("gen_length,block_length,steps", [(12, 6, 8), (12, 4, 6), (10, 10, 4),
                                                           (9, 3, 6)])
def test_committed_per_step_matches_schedule(gen_length, block_length, steps):
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    target = rand_ids(2 + gen_length, seed=3)
    model = TargetModel(target)
    out = generate(model, [target[:2]], mask_token_id=MASK, gen_length=gen_length, steps=steps,
                   block_length=block_length)
    expected = expected_schedule(block_length, spb) * num_blocks
    assert out.committed_per_step[0].tolist() == expected
    # Independently from what the model saw: masks before each call minus masks after it.
    counts = [int(c.sum()) for c in model.calls] + [int((out.canvas == MASK).sum())]
    assert [a - b for a, b in zip(counts, counts[1:])] == [k for k in expected if k > 0]


def test_steps_with_nothing_to_commit_skip_the_model():
    # block of 2 masks, 4 steps per block -> [1, 1, 0, 0] per block; only 2 calls per block.
    target = rand_ids(1 + 4, seed=4)
    model = TargetModel(target)
    out = generate(model, [target[:1]], mask_token_id=MASK, gen_length=4, steps=8,
                   block_length=2)
    assert out.committed_per_step[0].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    assert len(model.calls) == 4
    assert torch.equal(out.tokens[0], target[1:])


def test_positions_beyond_current_block_are_never_committed():
    prompt_len, gen_length, block_length, steps = 2, 12, 4, 9
    target = rand_ids(prompt_len + gen_length, seed=5)
    model = TargetModel(target)
    generate(model, [target[:prompt_len]], mask_token_id=MASK, gen_length=gen_length,
             steps=steps, block_length=block_length)
    spb = steps // (gen_length // block_length)
    assert len(model.calls) == steps  # 4 masks over 3 steps per block: no empty step
    for call, masked in enumerate(model.calls):
        block = call // spb
        lo = prompt_len + block * block_length
        hi = lo + block_length
        assert not masked[0, :prompt_len].any()
        assert not masked[0, prompt_len:lo].any(), "earlier blocks must be complete"
        assert masked[0, hi:].all(), f"call {call}: a position beyond block {block} committed"
        if call % spb == 0:
            assert masked[0, lo:hi].all(), "a block starts fully masked"


def test_eos_cut():
    gen_length = 6
    t0 = torch.tensor([1, 2, 3, 4, 5, EOS, 6, EOS])  # 2 prompt + 6 generated
    t1 = torch.tensor([1, 2, 7, 8, 9, 10, 11, 12])  # no EOS
    t2 = torch.tensor([1, 2, EOS, 3, 3, 3, 3, 3])  # EOS first
    target = torch.stack([t0, t1, t2])
    prompts = [t[:2] for t in target]
    out = generate(TargetModel(target), prompts, mask_token_id=MASK, gen_length=gen_length,
                   steps=6, block_length=3, eos_token_id=EOS)
    assert torch.equal(out.tokens, target[:, 2:])
    assert [s.tolist() for s in out.sequences] == [[3, 4, 5], [7, 8, 9, 10, 11, 12], []]
    out = generate(TargetModel(target), prompts, mask_token_id=MASK, gen_length=gen_length,
                   steps=6, block_length=3)
    assert [s.tolist() for s in out.sequences] == target[:, 2:].tolist()


def test_mask_and_suppressed_ids_are_never_produced():
    def model(input_ids, attention_mask=None):
        b, length = input_ids.shape
        logits = torch.randn(b, length, V, generator=torch.Generator().manual_seed(length))
        logits[..., MASK] = 100.0  # the model "wants" the mask token
        logits[..., 5] = 90.0
        return logits

    out = generate(model, [torch.tensor([1, 2])], mask_token_id=MASK, gen_length=8, steps=4,
                   suppress_token_ids=[5], temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert not (out.tokens == MASK).any()
    assert not (out.tokens == 5).any()


def test_hf_style_output_with_logits_attribute():
    target = rand_ids(6, seed=6)
    inner = TargetModel(target)
    model = lambda ids, attention_mask=None: types.SimpleNamespace(logits=inner(ids))  # noqa: E731
    out = generate(model, target[:2], mask_token_id=MASK, gen_length=4, steps=4)
    assert torch.equal(out.tokens[0], target[2:])


# --------------------------------------------------------------------------------------
# Infilling
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,remasking", [(1, "low_confidence"), (3, "low_confidence"),
                                             (7, "random"), (20, "low_confidence")])
def test_infill_fills_masks_and_keeps_the_rest(tiny, steps, remasking):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, ORDINARY, (2, 14), generator=g)
    holes = torch.rand(2, 14, generator=g) < torch.tensor([[0.5], [0.25]])
    holes[0, 0] = holes[1, -1] = True
    x = ids.masked_fill(holes, MASK)
    out = infill(tiny, x, mask_token_id=MASK, steps=steps, remasking=remasking,
                 generator=torch.Generator().manual_seed(0))
    assert not (out.tokens == MASK).any()
    assert torch.equal(out.tokens[~holes], x[~holes])
    assert out.committed_per_step.sum(1).tolist() == holes.sum(1).tolist()
    for b in range(2):
        assert out.committed_per_step[b].tolist() == expected_schedule(int(holes[b].sum()), steps)


def test_infill_with_fixed_target_and_padding():
    target = rand_ids(10, seed=8)
    x = target.clone()
    x[[1, 4, 5, 9]] = MASK
    out = infill(TargetModel(target), x, mask_token_id=MASK, steps=2)
    assert torch.equal(out.tokens[0], target)
    # masks on padded positions are left alone; sequences drop the padding
    attn = torch.ones(10, dtype=torch.bool)
    attn[:2] = False
    x2 = x.clone()
    x2[0] = MASK
    out = infill(TargetModel(target), x2, mask_token_id=MASK, steps=4, attention_mask=attn)
    assert int(out.tokens[0, 0]) == MASK
    assert torch.equal(out.tokens[0, 2:], target[2:])
    assert torch.equal(out.sequences[0], target[2:])


# --------------------------------------------------------------------------------------
# Batching with left padding
# --------------------------------------------------------------------------------------
def test_tiny_model_is_invariant_to_left_padding(tiny):
    short, long_ = rand_ids(4, seed=9), rand_ids(7, seed=10)
    padded = torch.cat([torch.full((3,), PAD), short])
    batch = torch.stack([padded, long_])
    attn = torch.stack([torch.arange(7) >= 3, torch.ones(7, dtype=torch.bool)])
    with torch.no_grad():
        both = tiny(batch, attention_mask=attn)
        alone_short, alone_long = tiny(short[None]), tiny(long_[None])
    torch.testing.assert_close(both[0, 3:], alone_short[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(both[1], alone_long[0], rtol=0, atol=1e-10)


def test_tiny_model_is_informative(tiny):
    # Guards the power of the comparisons below: varied outputs that depend on the prompt
    # and on the guidance scale.
    kw = dict(mask_token_id=MASK, gen_length=12, steps=12)
    a = generate(tiny, [rand_ids(5, 20)], **kw).tokens
    b = generate(tiny, [rand_ids(5, 21)], **kw).tokens
    assert len(set(a[0].tolist())) >= 3 and not torch.equal(a, b)
    c1 = generate(tiny, [rand_ids(5, 20)], cfg_scale=0.5, **kw).tokens
    c2 = generate(tiny, [rand_ids(5, 20)], cfg_scale=1.0, **kw).tokens
    assert not torch.equal(a, c1) and not torch.equal(c1, c2)


@pytest.mark.parametrize("cfg_scale,block_length,steps", [(0.0, 4, 8), (0.0, 8, 4),
                                                          (0.7, 4, 4)])
def test_batched_equals_one_by_one(tiny, cfg_scale, block_length, steps):
    prompts = [rand_ids(3, 11), rand_ids(7, 12), rand_ids(5, 13)]
    kw = dict(mask_token_id=MASK, gen_length=8, steps=steps, block_length=block_length,
              cfg_scale=cfg_scale)
    batched = generate(tiny, prompts, pad_token_id=PAD, **kw)
    assert batched.attention_mask is not None
    assert batched.canvas.shape == (3, 7 + 8)
    for b, p in enumerate(prompts):
        alone = generate(tiny, [p], **kw)
        assert alone.attention_mask is None
        assert torch.equal(batched.tokens[b], alone.tokens[0]), f"sample {b}"
        assert torch.equal(batched.committed_per_step[b], alone.committed_per_step[0])
    # The same batch given as a padded tensor plus its attention mask.
    pre = generate(tiny, batched.canvas[:, :7], attention_mask=batched.attention_mask[:, :7], **kw)
    assert torch.equal(pre.tokens, batched.tokens)


# --------------------------------------------------------------------------------------
# Token-for-token agreement with LLaDA's loop
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "batch,gen_length,steps,block_length,temperature,cfg_scale,remasking",
    [
        (1, 16, 16, 16, 0.0, 0.0, "low_confidence"),
        (1, 16, 8, 4, 0.0, 0.0, "low_confidence"),
        (1, 12, 10, 6, 0.0, 0.0, "low_confidence"),  # 6 masks / 5 steps: uneven schedule
        (2, 12, 6, 4, 0.0, 0.0, "low_confidence"),
        (1, 16, 8, 8, 0.8, 0.0, "low_confidence"),
        (2, 12, 12, 6, 1.3, 0.0, "low_confidence"),
        (1, 12, 6, 6, 0.0, 0.5, "low_confidence"),
        (2, 8, 8, 4, 0.7, 1.0, "low_confidence"),
        (1, 12, 6, 4, 0.0, 0.0, "random"),
        (2, 8, 4, 8, 0.5, 0.3, "random"),
    ],
)
def test_matches_llada_loop(tiny, monkeypatch, batch, gen_length, steps, block_length,
                            temperature, cfg_scale, remasking):
    prompt_len = 5
    prompt = torch.stack([rand_ids(prompt_len, 20 + b) for b in range(batch)])
    total = prompt_len + gen_length
    g = torch.Generator().manual_seed(123)
    gumbel_u = [torch.rand(batch, total, V, dtype=torch.float64, generator=g)
                for _ in range(steps)]
    random_u = [torch.rand(batch, total, dtype=torch.float64, generator=g) for _ in range(steps)]

    def table(kind, step):
        return gumbel_u[step] if kind == "gumbel" else random_u[step]

    def fixed_uniform(shape, *, start, step, dtype, device, generator):
        src = gumbel_u[step] if len(shape) == 3 else random_u[step]
        out = src[:, start : start + shape[1]]
        assert out.shape == tuple(shape)
        return out.to(dtype)

    reference = llada_generate(tiny, prompt, steps, gen_length, block_length, temperature,
                               cfg_scale, remasking, MASK, table)
    monkeypatch.setattr(denoise_mod, "_draw_uniform", fixed_uniform)
    ours = generate(tiny, list(prompt), mask_token_id=MASK, gen_length=gen_length, steps=steps,
                    block_length=block_length, temperature=temperature, cfg_scale=cfg_scale,
                    remasking=remasking)
    assert torch.equal(ours.canvas, reference)
    assert not (ours.tokens == MASK).any()


def test_sampling_is_reproducible_with_a_generator(tiny):
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, block_length=4, temperature=1.0)
    runs = [generate(tiny, [rand_ids(3, 30)], generator=torch.Generator().manual_seed(s), **kw)
            for s in (0, 0, 1, 2, 3)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert any(not torch.equal(runs[0].tokens, r.tokens) for r in runs[2:])


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------
def test_presets():
    assert {"llada_gsm8k", "llada_math", "cpu_tiny"} <= set(PRESETS)
    tiny_cfg = get_preset("cpu_tiny")
    assert (tiny_cfg.gen_length, tiny_cfg.steps, tiny_cfg.block_length) == (64, 64, 32)
    llada = get_preset("llada_gsm8k")
    assert (llada.gen_length, llada.steps, llada.temperature, llada.cfg_scale) == (512, 512, 0, 0)
    assert llada.extraction == "gsm8k" and get_preset("llada_math").extraction == "math"
    for cfg in PRESETS.values():
        assert isinstance(cfg, GenerationConfig) and cfg.description
    target = rand_ids(2 + 64, seed=31)
    out = generate(TargetModel(target), [target[:2]], mask_token_id=MASK,
                   **tiny_cfg.generate_kwargs())
    assert torch.equal(out.tokens[0], target[2:])
    assert tiny_cfg.replace(steps=32).steps == 32
    with pytest.raises(ValueError, match=r"unknown generation preset 'nope'.*cpu_tiny"):
        get_preset("nope")
    with pytest.raises(ValueError, match=r"gen_length=64 is not a multiple of block_length=30"):
        tiny_cfg.replace(block_length=30)
    with pytest.raises(ValueError, match=r"extraction='mbpp'.*'gsm8k', 'math'"):
        tiny_cfg.replace(extraction="mbpp")


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
def never_called(input_ids, attention_mask=None):
    raise AssertionError("the model must not be called")


def logits_only(input_ids, attention_mask=None):
    return torch.zeros(*input_ids.shape, V)


P = [torch.tensor([1, 2, 3])]


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(gen_length=10, steps=10, block_length=4),
         r"gen_length=10 is not a multiple of block_length=4"),
        (dict(gen_length=8, steps=5, block_length=4),
         r"steps=5 is not a multiple of the number of blocks 2"),
        (dict(gen_length=8, steps=0), r"steps must be a positive integer.*got 0"),
        (dict(gen_length=0, steps=4), r"gen_length must be a positive integer.*got 0"),
        (dict(gen_length=8, steps=4, block_length=0),
         r"block_length must be a positive integer.*got 0"),
        (dict(gen_length=8, steps=4, remasking="lowest"),
         r"remasking='lowest'.*valid: 'low_confidence', 'random'"),
        (dict(gen_length=8, steps=4, temperature=-0.5), r"temperature must be .*got -0.5"),
        (dict(gen_length=8, steps=4, cfg_scale=-1.0), r"cfg_scale must be .*got -1.0"),
        (dict(gen_length=8, steps=4, mask_token_id=-1), r"mask_token_id=-1 is out of range"),
    ],
)
def test_argument_errors(kwargs, pattern):
    kwargs = {"mask_token_id": MASK, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        generate(never_called, P, **kwargs)


def test_mask_id_out_of_vocabulary():
    # Known up front from model.vocab_size: the model is never called.
    class VocabOnly:
        vocab_size = V

        def __call__(self, input_ids, attention_mask=None):
            raise AssertionError("must fail before calling the model")

    model = VocabOnly()
    with pytest.raises(ValueError, match=r"mask_token_id=25 is out of range .* size 20; "
                                         r"valid: 0\.\.19"):
        generate(model, P, mask_token_id=25, gen_length=4, steps=4)
    # Only known from the logits' last dimension.
    with pytest.raises(ValueError, match=r"mask_token_id=20 is out of range .* size 20"):
        generate(logits_only, P, mask_token_id=20, gen_length=4, steps=4)
    with pytest.raises(ValueError, match=r"suppress_token_ids entry=99 is out of range"):
        generate(logits_only, P, mask_token_id=MASK, gen_length=4, steps=4,
                 suppress_token_ids=[99])
    with pytest.raises(ValueError, match=r"mask_token_id=20 is out of range"):
        infill(logits_only, torch.tensor([1, 20, 2]), mask_token_id=20, steps=1)


def test_prompt_errors():
    kw = dict(mask_token_id=MASK, gen_length=4, steps=4)
    with pytest.raises(ValueError, match=r"different lengths \[3, 1\]; pass pad_token_id"):
        generate(never_called, [torch.tensor([1, 2, 3]), torch.tensor([4])], **kw)
    right_padded = torch.tensor([[1, 2, PAD]])
    with pytest.raises(ValueError, match=r"LEFT padding"):
        generate(never_called, right_padded, attention_mask=torch.tensor([[1, 1, 0]]).bool(), **kw)
    with pytest.raises(ValueError, match=r"prompts is empty"):
        generate(never_called, [], **kw)
    with pytest.raises(ValueError, match=r"prompt 0 must be a 1-D tensor"):
        generate(never_called, [torch.ones(2, 2, dtype=torch.long)], **kw)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\)"):
        generate(never_called, torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2).bool(),
                 **kw)
    bad = lambda ids, attention_mask=None: torch.zeros(ids.shape[0], V)  # noqa: E731
    with pytest.raises(ValueError, match=r"logits of shape \[B, L, V\]"):
        generate(bad, P, **kw)


def test_infill_errors():
    x = torch.tensor([1, MASK, 2])
    with pytest.raises(ValueError, match=r"steps must be a positive integer.*got 0"):
        infill(never_called, x, mask_token_id=MASK, steps=0)
    with pytest.raises(ValueError, match=r"remasking='greedy'"):
        infill(never_called, x, mask_token_id=MASK, steps=1, remasking="greedy")
    with pytest.raises(ValueError, match=r"input_ids must be a 1-D"):
        infill(never_called, torch.zeros(1, 1, 3, dtype=torch.long), mask_token_id=MASK, steps=1)
