"""The MD objective against hand computations and Monte Carlo expectations."""

import math
import warnings

import pytest
import torch

from mdlm.objective import (
    check_loss_options,
    denoiser_nll,
    mask_tokens,
    md_loss,
    nelbo_sums,
    suppress_tokens,
    token_nll,
)


def _hand_nll(logits, targets, suppressed=()):
    """-log softmax written out with Python floats."""
    out = []
    for b in range(logits.shape[0]):
        row = []
        for i in range(logits.shape[1]):
            z = [(-math.inf if v in suppressed else float(logits[b, i, v])) for v in range(logits.shape[2])]
            m = max(z)
            lse = m + math.log(sum(math.exp(x - m) for x in z))
            row.append(lse - z[int(targets[b, i])])
        out.append(row)
    return out


def test_token_nll_and_suppression_match_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[0, 1, 3], [4, 0, 1]])
    got = token_nll(logits, targets, suppress_token_ids=[2])
    want = _hand_nll(logits, targets, suppressed=(2,))
    assert torch.allclose(got, torch.tensor(want), atol=1e-5)
    s = suppress_tokens(logits, [2])
    assert torch.isinf(s[..., 2]).all() and (s[..., 2] < 0).all()
    assert torch.isfinite(logits).all()  # the input is left alone


def test_md_loss_by_hand_for_each_normalization():
    # two sequences of length 4; per-token NLL values chosen by hand
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 1.5, 2.5]])
    masked = torch.tensor([[True, False, True, False], [False, True, True, False]])
    maskable = torch.tensor([[True, True, True, True], [False, True, True, False]])
    t = torch.tensor([0.5, 0.25])
    s0, s1 = 1.0 + 3.0, 0.5 + 1.5  # masked sums
    w0, w1 = 1 / 0.5, 1 / 0.25
    cases = {
        ("elbo", "batch_tokens"): (w0 * s0 + w1 * s1) / 8,
        ("elbo", "maskable_tokens"): (w0 * s0 + w1 * s1) / 6,
        ("elbo", "per_sequence"): (w0 * s0 / 4 + w1 * s1 / 2) / 2,
        ("none", "batch_tokens"): (s0 + s1) / 8,
        ("none", "maskable_tokens"): (s0 + s1) / 6,
        ("none", "per_sequence"): (s0 / 4 + s1 / 2) / 2,
        ("none", "masked_tokens"): (s0 + s1) / 4,
    }
    for (weight, norm), want in cases.items():
        got = md_loss(nll, masked, t, maskable, weight, norm)
        assert got.item() == pytest.approx(want), (weight, norm)


def test_nothing_masked_gives_zero_not_nan():
    nll = torch.ones(3, 5)
    masked = torch.zeros(3, 5, dtype=torch.bool)
    maskable = torch.zeros(3, 5, dtype=torch.bool)
    for norm in ("batch_tokens", "maskable_tokens", "per_sequence", "masked_tokens"):
        loss = md_loss(nll, masked, torch.full((3,), 0.3), maskable, "elbo", norm)
        assert loss.item() == 0.0


def test_mask_tokens_respects_maskable_and_rate():
    ids = torch.arange(10).repeat(4000, 1) % 7 + 3
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :3] = False  # a "prompt"
    t = torch.linspace(0.05, 0.95, 4000)
    u = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    noisy, masked = mask_tokens(ids, t, 1, u, maskable)
    assert not masked[:, :3].any() and torch.equal(noisy[:, :3], ids[:, :3])
    assert torch.equal(noisy[masked], torch.ones(int(masked.sum()), dtype=ids.dtype))
    assert torch.equal(noisy[~masked], ids[~masked])
    # masking frequency per row follows t: regress the masked fraction on t
    frac = masked[:, 3:].float().mean(1)
    assert abs((frac - t).mean().item()) < 0.01
    for group_frac, group_t in zip(frac.view(10, -1).mean(1), t.view(10, -1).mean(1)):
        assert abs(group_frac - group_t) < 0.02  # 2800 Bernoulli draws per group


def test_expected_elbo_loss_equals_sum_of_token_losses():
    """E_{t,mask}[(1/t) Σ m_i ℓ_i] = Σ_i ℓ_i when ℓ does not depend on the mask (unbiasedness of 1/t)."""
    g = torch.Generator().manual_seed(1)
    B, L = 200_000, 6
    ell = torch.tensor([0.3, 1.2, 2.0, 0.1, 0.7, 1.5])
    nll = ell.expand(B, L)
    t = 0.05 + 0.95 * torch.rand(B, generator=g)
    masked = torch.rand(B, L, generator=g) < t[:, None]
    est = md_loss(nll, masked, t, None, "elbo", "maskable_tokens").item()
    assert est == pytest.approx(ell.mean().item(), rel=0.01)
    # unweighted: E = E[t] * mean(ell)
    est_none = md_loss(nll, masked, t, None, "none", "maskable_tokens").item()
    assert est_none == pytest.approx(t.mean().item() * ell.mean().item(), rel=0.01)
    # nelbo_sums is the per-sequence numerator in float64
    seq = nelbo_sums(nll, masked, t)
    assert seq.dtype == torch.float64
    assert (seq.sum() / (B * L)).item() == pytest.approx(est, rel=1e-6)


def test_option_validation_and_biased_combination_warning():
    with pytest.raises(ValueError, match="loss_weight='sqrt'"):
        check_loss_options("sqrt", "maskable_tokens")
    with pytest.raises(ValueError, match="normalization='tokens'"):
        check_loss_options("elbo", "tokens")
    with pytest.warns(UserWarning, match="not an unbiased"):
        check_loss_options("elbo", "masked_tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_loss_options("none", "masked_tokens")


def test_token_nll_on_bf16_logits_equals_the_fp32_reference_and_never_writes_fp32_input():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 6, (2, 5))
    want = torch.nn.functional.cross_entropy(
        suppress_tokens(logits.detach().float(), [6]).reshape(-1, 7), targets.reshape(-1), reduction="none"
    ).reshape(2, 5)
    got = token_nll(logits, targets, [6])
    assert got.dtype == torch.float32 and torch.equal(got, want)
    got.sum().backward()  # the in-place fill on the cast copy keeps autograd valid
    assert logits.grad is not None and torch.all(logits.grad[..., 6] == 0)
    fp32 = logits.detach().float().clone()
    before = fp32.clone()
    token_nll(fp32, targets, [6])
    assert torch.equal(fp32, before)


class _Recording(torch.nn.Module):
    """Logits from a fixed table by token id; records how it was called; optionally wraps them in ``.logits``."""

    def __init__(self, wrap=False):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
        self.wrap, self.calls = wrap, []

    def forward(self, ids, attention_mask=None):
        self.calls.append(attention_mask)
        logits = self.table[ids]
        return type("Out", (), {"logits": logits})() if self.wrap else logits


def test_denoiser_nll_is_one_forward_then_token_nll():
    """The shared scoring function: model(noisy[, attention_mask]) -> token_nll; .logits unwrapped; from ``start``."""
    ids = torch.tensor([[0, 1, 3, 4], [4, 0, 1, 2]])
    noisy = torch.tensor([[0, 5, 3, 5], [5, 0, 5, 2]])
    model = _Recording()
    want = token_nll(model(noisy), ids, [5])
    model.calls.clear()
    assert torch.equal(denoiser_nll(model, noisy, ids, [5]), want)
    attention = torch.ones_like(ids, dtype=torch.bool)
    assert torch.equal(denoiser_nll(model, noisy, ids, [5], attention), want)
    assert model.calls[0] is None and model.calls[1] is attention  # no mask: called with the ids alone
    assert torch.equal(denoiser_nll(_Recording(wrap=True), noisy, ids, [5]), want)
    assert torch.equal(denoiser_nll(model, noisy, ids, [5], start=2), want[:, 2:])
    assert torch.isinf(denoiser_nll(model, noisy, torch.full_like(ids, 5), [5])).all()  # [MASK] is never predicted
