"""Padding-blind models (LLaDA: attention ignores ``attention_mask``): generation, infilling,
likelihood and the greedy check never batch prompts of different lengths for them, so a prompt's
output is the same alone and among prompts of other lengths. A padding-hiding model keeps the
single left-padded batch."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdlm.generation import generate, infill, padding_hidden
from mdlm.likelihood import draw_masks, estimate_log_likelihoods, greedy_matches

V = 20
MASK = 19
PAD = 18
EOS = 17
ORDINARY = 17  # ids 0..16


class TinyAttention(nn.Module):
    """A random 2-layer bidirectional self-attention model in float64 with a relative position
    bias (like rotary embeddings: logits do not depend on absolute offsets).

    ``hide=False`` (padding-blind, ``padding_hidden = False``): ``attention_mask`` is ignored, so
    padded keys are attended to — LLaDA's behaviour. ``hide=True``: padded keys get ``-inf``.
    ``calls`` records ``(input shape, whether an attention mask was passed)`` of every forward.
    """

    vocab_size = V

    def __init__(self, hide: bool, seed: int = 0, d: int = 24, layers: int = 2, span: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def param(*shape, scale=1.0):
            return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

        self.hide, self.span = hide, span
        self.padding_hidden = hide
        self.emb = param(V, d)
        self.rel = nn.ParameterList([param(2 * span + 1, scale=2.0) for _ in range(layers)])
        self.wq = nn.ParameterList([param(d, d, scale=d**-0.5) for _ in range(layers)])
        self.wk = nn.ParameterList([param(d, d, scale=d**-0.5) for _ in range(layers)])
        self.wv = nn.ParameterList([param(d, d, scale=d**-0.5) for _ in range(layers)])
        self.out = param(d, V, scale=d**-0.5)
        self.calls: list[tuple[tuple[int, int], bool]] = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append((tuple(input_ids.shape), attention_mask is not None))
        length = input_ids.shape[1]
        i = torch.arange(length)
        offset = (i[:, None] - i[None, :]).clamp(-self.span, self.span) + self.span
        h = self.emb[input_ids]
        for rel, wq, wk, wv in zip(self.rel, self.wq, self.wk, self.wv):
            scores = (h @ wq) @ (h @ wk).transpose(1, 2) / h.shape[-1] ** 0.5 + rel[offset]
            if self.hide and attention_mask is not None:
                scores = scores.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
            h = F.layer_norm(h + torch.softmax(scores, -1) @ (h @ wv), h.shape[-1:])
        return (2.0 * h @ self.out).index_fill(-1, torch.tensor([MASK]), -1e9)


def rand_ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, ORDINARY, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def blind():
    return TinyAttention(hide=False)


@pytest.fixture
def hiding():
    return TinyAttention(hide=True)


PROMPTS = [rand_ids(3, 1), rand_ids(8, 2), rand_ids(5, 3), rand_ids(1, 4)]  # all lengths differ


# --------------------------------------------------------------------------------------
# The helper and the stand-in
# --------------------------------------------------------------------------------------
def test_padding_hidden_reads_the_attribute_through_wrappers(blind, hiding):
    assert padding_hidden(lambda ids, attention_mask=None: ids) is True  # absent: hidden
    assert padding_hidden(blind) is False and padding_hidden(hiding) is True
    assert padding_hidden(types.SimpleNamespace(backbone=blind)) is False
    assert padding_hidden(types.SimpleNamespace(module=types.SimpleNamespace(backbone=blind))) is False
    assert padding_hidden(types.SimpleNamespace(padding_hidden=True, backbone=blind)) is True  # nearest wins
    assert padding_hidden(types.SimpleNamespace(module=types)) is True  # a Python module is not a wrapper


def test_the_blind_stand_in_leaks_padding(blind, hiding):
    """(a) left-padded batched logits of a row differ from the row alone (the hiding twin: equal)."""
    short, long_ = PROMPTS[0], PROMPTS[1]
    batch = torch.stack([torch.cat([torch.full((5,), PAD), short]), long_])
    attn = torch.stack([torch.arange(8) >= 5, torch.ones(8, dtype=torch.bool)])
    with torch.no_grad():
        leak = (blind(batch, attention_mask=attn)[0, 5:] - blind(short[None])[0]).abs().max()
        hidden = (hiding(batch, attention_mask=attn)[0, 5:] - hiding(short[None])[0]).abs().max()
    assert leak > 0.1
    assert hidden < 1e-10


# --------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_scale,block_length,steps", [(0.0, 8, 8), (0.0, 4, 4), (0.7, 4, 8)])
def test_generate_alone_equals_among_other_lengths(blind, cfg_scale, block_length, steps):
    """(b) token for token, greedy; the model never sees padding nor an attention mask."""
    kw = dict(mask_token_id=MASK, gen_length=8, steps=steps, block_length=block_length,
              cfg_scale=cfg_scale, eos_token_id=EOS)
    batched = generate(blind, PROMPTS, pad_token_id=PAD, **kw)
    calls = blind.calls[:]
    width = max(len(p) for p in PROMPTS)
    assert batched.canvas.shape == (4, width + 8) and batched.committed_per_step.shape == (4, steps)
    rows = 2 if cfg_scale else 1  # CFG: conditional and unconditional rows in one pass
    assert {shape for shape, _ in calls} == {(rows, len(p) + 8) for p in PROMPTS}
    assert not any(has_mask for _, has_mask in calls)
    for b, p in enumerate(PROMPTS):
        alone = generate(blind, [p], **kw)
        assert torch.equal(batched.tokens[b], alone.tokens[0]), f"prompt {b}"
        assert torch.equal(batched.committed_per_step[b], alone.committed_per_step[0])
        assert torch.equal(batched.sequences[b], alone.sequences[0])
        # the common left-padded layout of GenerationOutput
        pad = width - len(p)
        assert torch.equal(batched.canvas[b], torch.cat([torch.full((pad,), PAD), p, alone.tokens[0]]))
        assert batched.attention_mask[b].tolist() == [False] * pad + [True] * (len(p) + 8)
    # the same batch as a padded tensor plus its attention mask
    pre = generate(blind, batched.canvas[:, :width], attention_mask=batched.attention_mask[:, :width], **kw)
    assert torch.equal(pre.canvas, batched.canvas)


def test_generate_groups_equal_lengths_and_strips_common_padding(blind):
    prompts = [PROMPTS[0], PROMPTS[1], rand_ids(3, 5), PROMPTS[2], rand_ids(8, 6)]
    kw = dict(mask_token_id=MASK, gen_length=4, steps=4)
    batched = generate(blind, prompts, pad_token_id=PAD, **kw)
    assert {shape for shape, _ in blind.calls} == {(2, 3 + 4), (2, 8 + 4), (1, 5 + 4)}
    threes = generate(blind, [prompts[0], prompts[2]], **kw)  # the prompts of its own length
    assert torch.equal(batched.tokens[[0, 2]], threes.tokens)
    # a tensor whose rows all carry the same padding: the padding is stripped too
    blind.calls.clear()
    padded = torch.cat([torch.full((2, 2), PAD), torch.stack([prompts[0], prompts[2]])], dim=1)
    out = generate(blind, padded, attention_mask=padded != PAD, **kw)
    assert {shape for shape, _ in blind.calls} == {(2, 3 + 4)}
    assert torch.equal(out.tokens, threes.tokens) and torch.equal(out.canvas[:, :2], padded[:, :2])


def test_without_grouping_the_blind_model_differs(blind):
    """Sensitivity: the same model claimed to hide padding gets one padded batch, and its rows
    change (so the tests above would catch a regression)."""
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8)
    alone = [generate(blind, [p], **kw).tokens[0] for p in PROMPTS]
    blind.padding_hidden = True
    blind.calls.clear()
    batched = generate(blind, PROMPTS, pad_token_id=PAD, **kw)
    assert all(shape == (4, 8 + 8) and has_mask for shape, has_mask in blind.calls)
    differs = [not torch.equal(batched.tokens[b], alone[b]) for b in range(4)]
    assert not differs[1]  # the longest prompt has no padding
    assert sum(differs) >= 2


def test_padding_hiding_model_keeps_one_padded_batch(hiding):
    """(d) padding_hidden True: today's single left-padded batch, with the attention mask."""
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, block_length=4)
    batched = generate(hiding, PROMPTS, pad_token_id=PAD, **kw)
    assert len(hiding.calls) == 8
    assert all(shape == (4, 8 + 8) and has_mask for shape, has_mask in hiding.calls)
    for b, p in enumerate(PROMPTS):  # hidden padding: batched equals alone as well
        assert torch.equal(batched.tokens[b], generate(hiding, [p], **kw).tokens[0])
    hiding.calls.clear()
    x = torch.tensor([[PAD, PAD, 1, MASK, 2], [3, MASK, MASK, 4, 5]])
    infill(hiding, x, mask_token_id=MASK, steps=3, attention_mask=x != PAD)
    assert all(shape == (2, 5) and has_mask for shape, has_mask in hiding.calls)


def test_sampling_with_grouping_is_reproducible(blind):
    """Sampled noise comes from one generator stream, group after group: reproducible for the
    same call, but (as in any batch) not independent of the other rows."""
    kw = dict(mask_token_id=MASK, gen_length=8, steps=8, temperature=1.0, remasking="random",
              pad_token_id=PAD)
    a = generate(blind, PROMPTS, generator=torch.Generator().manual_seed(0), **kw)
    b = generate(blind, PROMPTS, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.canvas, b.canvas) and not (a.tokens == MASK).any()


def test_module_with_a_blind_backbone_is_grouped(blind):
    """A MaskedDiffusionLM wrapping a padding-blind backbone is treated as padding-blind."""
    from mdlm.module import MaskedDiffusionLM

    module = MaskedDiffusionLM(backbone=lambda vocab: blind, vocab_size=V, mask_token_id=MASK).eval()
    assert padding_hidden(module) is False
    kw = dict(mask_token_id=MASK, gen_length=4, steps=4)
    batched = generate(module, PROMPTS[:2], pad_token_id=PAD, **kw)
    assert {shape for shape, _ in blind.calls} == {(1, 3 + 4), (1, 8 + 4)}
    assert torch.equal(batched.tokens[0], generate(module, PROMPTS[:1], **kw).tokens[0])


# --------------------------------------------------------------------------------------
# infill
# --------------------------------------------------------------------------------------
def test_infill_alone_equals_among_other_lengths(blind):
    rows = [rand_ids(6, 10), rand_ids(9, 11), rand_ids(4, 12)]
    holes = [[1, 2, 4], [0, 3, 5, 7, 8], [0, 2, 3]]
    rows = [r.index_fill(0, torch.tensor(h), MASK) for r, h in zip(rows, holes)]
    width = 9
    left = torch.stack([torch.cat([torch.full((width - len(r),), PAD), r]) for r in rows])
    right = torch.stack([torch.cat([r, torch.full((width - len(r),), PAD)]) for r in rows])
    for x in (left, right):
        attn = x != PAD
        blind.calls.clear()
        out = infill(blind, x, mask_token_id=MASK, steps=4, attention_mask=attn)
        assert {shape for shape, _ in blind.calls} == {(1, 6), (1, 9), (1, 4)}
        assert torch.equal(out.tokens[~attn], x[~attn])  # padding untouched
        for b, r in enumerate(rows):
            alone = infill(blind, r, mask_token_id=MASK, steps=4)
            assert torch.equal(out.sequences[b], alone.tokens[0]), f"row {b}"
            assert torch.equal(out.committed_per_step[b], alone.committed_per_step[0])
    blind.padding_hidden = True  # sensitivity: one padded batch changes a row
    out = infill(blind, left, mask_token_id=MASK, steps=4, attention_mask=left != PAD)
    assert any(not torch.equal(out.sequences[b], infill(blind, r, mask_token_id=MASK, steps=4).tokens[0])
               for b, r in enumerate(rows))


# --------------------------------------------------------------------------------------
# likelihood and the greedy check
# --------------------------------------------------------------------------------------
def test_likelihood_alone_equals_among_other_lengths(blind):
    """(c) exact equality of every draw; each forward pass holds one request shape, unpadded."""
    requests = [(PROMPTS[0], rand_ids(4, 20)), (PROMPTS[1], rand_ids(2, 21)), (PROMPTS[2], rand_ids(5, 22)),
                (PROMPTS[0], rand_ids(3, 23))]
    kw = dict(mask_token_id=MASK, mc_num=16, batch_size=8, seed=3)
    together = estimate_log_likelihoods(blind, requests, items=[0, 1, 2, 3], **kw)
    widths = {len(p) + len(c) for p, c in requests}
    assert all(shape[1] in widths and not has_mask for shape, has_mask in blind.calls)
    for j, req in enumerate(requests):
        (alone,) = estimate_log_likelihoods(blind, [req], items=[j], **kw)
        assert torch.equal(alone.samples, together[j].samples), f"request {j}"
        assert alone.mean == together[j].mean and alone.stderr == together[j].stderr

    # sensitivity: draw 0 of request 0 scored in a left-padded batch with a longer request differs
    (prompt, cont), plen = requests[0], len(requests[0][0])
    where = draw_masks(len(cont), 1, seed=3, item=0)[0]
    noisy = torch.cat([prompt, cont.masked_fill(where, MASK)])
    other = torch.cat([requests[1][0], requests[1][1]])
    pad = len(other) - len(noisy)
    batch = torch.stack([torch.cat([torch.full((pad,), PAD), noisy]), other])
    with torch.no_grad():
        logits = blind(batch, attention_mask=batch != PAD)[0, pad + plen :]
    logp = torch.log_softmax(logits.index_fill(-1, torch.tensor([MASK]), float("-inf")), -1)
    padded = float(logp.gather(-1, cont[:, None])[:, 0][where].sum()) * len(cont) / int(where.sum())
    assert int(together[0].num_masked[0]) == int(where.sum())
    assert abs(padded - float(together[0].samples[0])) > 1e-3


def test_greedy_matches_alone_equals_among_other_lengths(blind):
    prompts = PROMPTS[:3]
    # continuations: the blind model's own greedy answer to each prompt alone (so the check is True)
    conts = [generate(blind, [p], mask_token_id=MASK, gen_length=L, steps=L).tokens[0]
             for p, L in zip(prompts, (3, 4, 2))]
    requests = list(zip(prompts, conts)) + [(prompts[0], conts[1])]
    together = greedy_matches(blind, requests, mask_token_id=MASK)
    assert together[:3] == [True, True, True]
    assert together == [greedy_matches(blind, [r], mask_token_id=MASK)[0] for r in requests]
