"""The signal computations of experiments/adaptive_signal_probe.py against independent small computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments import adaptive_signal_probe as asp
from mdlm.models.transformer import Transformer


def _toy(seed: int = 0, n_layer: int = 2) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(asp.VOCAB, n_layer=n_layer, n_head=2, d_model=8, positional="learned", max_seq_len=8)
    with torch.no_grad():  # break GPT-2 init symmetry a little so every gradient is non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _half(seed: int, B: int = 5, L: int = 6, t_range=(0.2, 0.6)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2, (B, L), generator=g)
    t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(B, generator=g)
    u = torch.rand(B, L, generator=g)
    return ids, t, u


def _by_hand_loss(model, ids, t, u):
    """Mean cross-entropy over the masked tokens, [MASK] never predicted, written out without mdlm.objective."""
    masked = u < t[:, None]
    noisy = ids.clone()
    noisy[masked] = asp.MASK_ID
    logits = model(noisy).clone()
    logits[..., asp.MASK_ID] = -1e30
    logp = logits - torch.logsumexp(logits, -1, keepdim=True)
    ce = -logp.gather(-1, ids[..., None])[..., 0]
    return (ce * masked).sum() / masked.sum().clamp(min=1), ce, masked


def _grad_np(model, loss, names=None):
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named])
    keep = [g.reshape(-1) for (n, _), g in zip(named, grads) if names is None or n in names]
    return torch.cat(keep).double().numpy()


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_bin_signals_match_by_hand():
    model = _toy()
    halves = [_half(1), _half(2)]
    n_params = sum(p.numel() for p in model.parameters())
    g_val = torch.randn(n_params, generator=torch.Generator().manual_seed(3))
    precond = torch.rand(n_params, generator=torch.Generator().manual_seed(4)) + 0.1
    got = asp.bin_signals(model, halves, g_val, asp.subset_index(model), precond)

    sub = {n for n, _ in model.named_parameters() if n.startswith(("blocks.1.", "norm_f.", "lm_head."))}
    assert sub == set(asp.lastblock_names(model))
    ga, gb, sa, sb, losses = [], [], [], [], []
    for ids, t, u in halves:
        loss, _, _ = _by_hand_loss(model, ids, t, u)
        losses.append(float(loss.detach()))
        (ga if not ga else gb).append(_grad_np(model, loss))
        loss, _, _ = _by_hand_loss(model, ids, t, u)
        (sa if not sa else sb).append(_grad_np(model, loss, sub))
    ga, gb, sa, sb = ga[0], gb[0], sa[0], sb[0]
    gv = g_val.double().numpy()
    pc = precond.double().numpy()
    sub_idx = asp.subset_index(model).numpy()
    assert got["coherence_full"] == pytest.approx(_cos(ga, gb), abs=1e-6)
    assert got["coherence_lastblock"] == pytest.approx(_cos(sa, sb), abs=1e-6)
    assert got["coherence_adam"] == pytest.approx(_cos(ga * pc, gb * pc), abs=1e-6)
    assert got["align_val"] == pytest.approx(_cos(ga + gb, gv), abs=1e-6)
    assert got["align_val_lastblock"] == pytest.approx(_cos(sa + sb, gv[sub_idx]), abs=1e-6)
    assert got["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)

    # head SNR: per-sequence autograd gradients of S_b = sum of masked CE w.r.t. lm_head.weight, one sequence at a time
    rows = []
    for ids, t, u in halves:
        for b in range(ids.shape[0]):
            _, ce, masked = _by_hand_loss(model, ids[b : b + 1], t[b : b + 1], u[b : b + 1])
            (g,) = torch.autograd.grad((ce * masked).sum(), [model.lm_head.weight])
            rows.append(g.reshape(-1).double().numpy())
    G = np.stack(rows)
    n = G.shape[0]
    mean = G.mean(0)
    tr = ((G - mean) ** 2).sum() / (n - 1)
    assert got["snr_head"] == pytest.approx((mean @ mean - tr / n) / tr, rel=1e-6, abs=1e-9)


def test_head_per_sample_grads_equal_autograd():
    model = _toy(5, n_layer=1)
    ids, t, u = _half(7, B=4)
    loss, logits, hidden, masked = asp.loss_terms(model, ids, t, u, "none", "masked_tokens")
    G = asp.head_per_sample_grads(hidden, logits, ids, masked, [asp.MASK_ID])
    for b in range(ids.shape[0]):
        _, ce, m = _by_hand_loss(model, ids[b : b + 1], t[b : b + 1], u[b : b + 1])
        (g,) = torch.autograd.grad((ce * m).sum(), [model.lm_head.weight])
        assert torch.allclose(G[b], g.reshape(-1).double(), atol=1e-6)


def test_snr_estimator_is_unbiased_for_known_signal():
    g = torch.Generator().manual_seed(0)
    P, sigma = 50, 1.0
    mu = torch.zeros(P, dtype=torch.float64)
    mu[0] = 0.5  # |mu|^2 / tr(Sigma) = 0.25 / 50 = 0.005
    est = [asp.snr_from_samples(mu + sigma * torch.randn(64, P, generator=g, dtype=torch.float64)) for _ in range(400)]
    assert np.mean(est) == pytest.approx(0.005, abs=0.0015)
    # pure noise: centred on 0 (the naive |g_bar|^2 / tr would sit at 1/n = 0.0156)
    est0 = [asp.snr_from_samples(sigma * torch.randn(64, P, generator=g, dtype=torch.float64)) for _ in range(400)]
    assert abs(np.mean(est0)) < 0.0015


def test_cosine_and_flat():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0])
    assert asp.cosine(a, b) == pytest.approx(24 / 25)
    assert asp.cosine(a, torch.zeros(2)) == 0.0
    assert asp.flat([torch.ones(2, 2), torch.zeros(3)]).tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_p_signal_bins_peak_near_one_over_k_plus_one():
    centres = asp.bin_centres()
    for k in (2, 3, 4, 6):
        p = asp.p_signal_bins(k)
        top = int(np.argmax(p))
        assert abs(centres[top] - 1 / (k + 1)) <= 0.1 + 1e-9
        # the bin average of (k+1) t (1-t)^k, checked by a midpoint rule
        ts = np.linspace(0.3, 0.4, 10001)
        assert p[3] == pytest.approx(np.mean((k + 1) * ts * (1 - ts) ** k), rel=1e-4)


def test_decide_rule():
    g = torch.Generator().manual_seed(0)
    R = 40
    noise = 0.01 * torch.randn(R, 10, generator=g, dtype=torch.float64)
    peaked = noise.clone()
    peaked[:, 3] += 0.05  # bin [0.3, 0.4]: centre 0.35, within 0.1 of 1/3
    d = asp.decide(peaked, k=2)
    assert d["top_bin_selection_half"] == 3 and d["top_in_window"] and d["excludes_uniform"] and d["go"]
    assert d["excess_over_mean_heldout"][0] == pytest.approx(0.05 * 0.9, abs=0.01)
    far = noise.clone()
    far[:, 8] += 0.05  # a real peak, but at t = 0.85: not the signal-optimal point
    d = asp.decide(far, k=2)
    assert d["excludes_uniform"] and not d["top_in_window"] and not d["go"]
    flat_ = asp.decide(noise, k=2)  # no peak: the held-out half must not confirm the selected bin
    assert not flat_["excludes_uniform"] and not flat_["go"]
    m, lo, hi = asp.t_interval(torch.tensor([1.0, 2.0, 3.0]))
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)


def test_plateau_checkpoints():
    rec = {"checkpoints": [{"step": 0}] + [{"step": s, "val_label_acc": a} for s, a in
                                           [(50, 0.5), (100, 0.49), (150, 0.52), (200, 0.51), (250, 0.55), (300, 0.8), (350, 0.5)]]}
    got = [c["step"] for c in asp.plateau_checkpoints(rec, 0.6, 3)]
    assert got == [50, 150, 250]
    assert [c["step"] for c in asp.plateau_checkpoints(rec, 0.6, 10)] == [50, 100, 150, 200, 250]


def test_rule_masks_regimes():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 2, (64, 9), generator=g)
    relevant = [1, 4, 8]  # S = {1, 4}, label at 8
    for signal, count in ((True, 1), (False, 2)):
        noisy, target = asp.rule_masks(ids, relevant, signal, g)
        masked = noisy == asp.MASK_ID
        assert (target.sum(1) == 1).all() and (masked[target]).all()
        assert (masked[:, relevant].sum(1) == count).all()
        assert target[:, [0, 2, 3, 5, 6, 7]].sum() == 0
        assert (noisy[~masked] == ids[~masked]).all()


def test_summary_keeps_seeds_apart_and_counts_go_per_seed():
    """Two seeds of one (sampler, k): a peaked signal in seed 0 and a flat one in seed 1 must give two
    decisions (GO and no), not one pooled over both runs."""
    g = torch.Generator().manual_seed(1)

    def probe(seed: int, step: int, peak: float) -> dict:
        values = 0.01 * torch.randn(30, 10, generator=g, dtype=torch.float64)
        values[:, 3] += peak  # bin [0.3, 0.4]: within 0.1 of 1/3 for k = 2
        return {"meta": {"k": 2, "sampler": "window", "seed": seed, "step": step, "val_label_acc": 0.5},
                "values": {"coherence_full": values.tolist()}}

    results = {"probes": [probe(0, 50, 0.05), probe(0, 100, 0.05), probe(1, 50, 0.0), probe(1, 100, 0.0)]}
    summary = asp.summarise(results)
    assert sorted(summary) == ["window_k2", "window_k2_seed1"]  # seed 0 keeps the first session's key
    assert summary["window_k2"]["pooled"]["coherence_full"]["go"]
    assert not summary["window_k2_seed1"]["pooled"]["coherence_full"]["go"]
    (row,) = asp.across_seeds(summary)
    assert (row["seeds"], row["go"], row["repeats"]) == ([0, 1], [True, False], [30, 30])
    assert row["top_bin_centre"][0] == pytest.approx(0.35)
    assert "| window | 2 (0.33) | coherence_full | 0, 1 | 30, 30 | 0.35*, " in asp.across_seeds_markdown([row])
    assert asp.probe_key({"k": 3, "sampler": "uniform", "step": 100}) == (3, "uniform", 0, 100)  # old files: seed 0
