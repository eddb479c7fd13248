"""Monte Carlo ELBO of log p(continuation | prompt): checked against an exact enumeration of every
mask subset, its standard error against the exact variance, and the greedy check against an
independent greedy loop (all on tiny CPU models)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from mdlm.likelihood import (
    draw_masks,
    estimate_log_likelihood,
    estimate_log_likelihoods,
    greedy_matches,
    model_max_length,
)
from mdlm.models.transformer import Transformer

MASK = 3  # vocabulary {0, 1, 2} + [MASK]
PROMPT = [0, 2, 1]


class Counted(nn.Module):
    """Wraps a model, counts forward passes, and (optionally) boosts the [MASK] logit, which the
    estimator must suppress."""

    def __init__(self, inner: nn.Module, mask_boost: float = 0.0):
        super().__init__()
        self.inner = inner
        self.mask_boost = mask_boost
        self.calls = 0
        self.rows = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        self.rows += input_ids.shape[0]
        logits = self.inner(input_ids, attention_mask=attention_mask)
        if self.mask_boost:
            logits = logits.clone()
            logits[..., MASK] += self.mask_boost
        return logits


def sharp_transformer(seed: int = 0, max_seq_len: int = 16) -> Transformer:
    """A random tiny transformer with large weights, so its predictions depend strongly on which
    tokens are masked (a default-initialised one predicts almost uniformly)."""
    torch.manual_seed(seed)
    model = Transformer(4, preset="tiny", max_seq_len=max_seq_len)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


class JointModel(nn.Module):
    """A proper joint p(x) over continuations x in {0,1,2}^L (after a fixed-length prompt): its
    prediction at a masked position is the exact conditional marginal given the visible tokens."""

    def __init__(self, prompt_len: int, length: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.prompt_len, self.length = prompt_len, length
        self.table = list(itertools.product(range(3), repeat=length))
        self.logp = torch.log_softmax(3.0 * torch.randn(len(self.table), generator=g, dtype=torch.float64), 0)

    def log_joint(self, x) -> float:
        return float(self.logp[self.table.index(tuple(x))])

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, 4, dtype=torch.float64)
        for b in range(B):
            cont = input_ids[b, self.prompt_len :].tolist()
            keep = torch.tensor(
                [all(c == MASK or c == x for c, x in zip(cont, row)) for row in self.table], dtype=torch.bool
            )
            for i, c in enumerate(cont):
                if c != MASK:
                    continue
                for v in range(3):
                    sel = keep & torch.tensor([row[i] == v for row in self.table])
                    value = float(torch.logsumexp(self.logp[sel], 0)) if sel.any() else -50.0
                    logits[b, self.prompt_len + i, v] = value
            logits[b, :, MASK] = 10.0  # must be suppressed
        return logits


# ------------------------------------------------------------------ independent enumeration
def _masked_logprobs(model, prompt, cont, subset) -> float:
    """sum_{i in S} log p(x_i | prompt, x with S masked), log-softmax over the real tokens only."""
    x = list(prompt) + [MASK if i in subset else c for i, c in enumerate(cont)]
    with torch.no_grad():
        logits = model(torch.tensor([x])).double()[0]
    logp = torch.log_softmax(logits[:, :MASK], dim=-1)  # the [MASK] column never competes
    return sum(float(logp[len(prompt) + i, cont[i]]) for i in subset)


def enumerate_elbo(model, prompt, cont):
    """Exact ELBO = E_l E_{|S|=l} (L/l) sum_{i in S} log p, its per-l conditional means/variances,
    and the value of every subset."""
    L = len(cont)
    values = {}
    by_l = {}
    for ell in range(1, L + 1):
        vals = []
        for S in itertools.combinations(range(L), ell):
            v = (L / ell) * _masked_logprobs(model, prompt, cont, set(S))
            values[frozenset(S)] = v
            vals.append(v)
        vals = torch.tensor(vals, dtype=torch.float64)
        by_l[ell] = (float(vals.mean()), float(((vals - vals.mean()) ** 2).mean()))
    elbo = sum(m for m, _ in by_l.values()) / L
    second = sum(var + m * m for m, var in by_l.values()) / L
    return elbo, second - elbo * elbo, by_l, values


def order_mixture_loglik(model, prompt, cont) -> float:
    """log E_sigma p_sigma(x): the any-order autoregressive mixture the ELBO bounds from below."""
    L = len(cont)
    logs = []
    for order in itertools.permutations(range(L)):
        masked, total = set(range(L)), 0.0
        for i in order:
            x = list(prompt) + [MASK if j in masked else c for j, c in enumerate(cont)]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([x])).double()[0][:, :MASK], -1)
            total += float(logp[len(prompt) + i, cont[i]])
            masked.discard(i)
        logs.append(total)
    return float(torch.logsumexp(torch.tensor(logs, dtype=torch.float64), 0)) - math.log(len(logs))


@pytest.fixture(scope="module")
def model():
    return Counted(sharp_transformer(), mask_boost=4.0)


# ------------------------------------------------------------------ the draws
@pytest.mark.slow
@pytest.mark.parametrize("stratified", [False, True])
def test_draws_mask_l_uniform_positions_uniform_subsets(stratified):
    L, n = 4, 24000
    masks = draw_masks(L, n, seed=3, item=7, stratified=stratified)
    counts = masks.sum(1)
    assert masks.shape == (n, L) and int(counts.min()) >= 1 and int(counts.max()) <= L
    per_l = torch.bincount(counts, minlength=L + 1)[1:]
    if stratified:
        assert per_l.tolist() == [n // L] * L  # exactly even when L divides mc_num
    else:
        sd = math.sqrt(n * (1 / L) * (1 - 1 / L))
        assert (per_l - n / L).abs().max() < 4.5 * sd
    for ell in range(1, L + 1):  # given l, every l-subset equally likely
        rows = masks[counts == ell]
        subsets = [tuple(r.nonzero().flatten().tolist()) for r in rows]
        k = math.comb(L, ell)
        freq = torch.tensor([subsets.count(S) for S in itertools.combinations(range(L), ell)], dtype=torch.float64)
        expected = len(subsets) / k
        sd = math.sqrt(len(subsets) * (1 / k) * (1 - 1 / k)) if k > 1 else 1.0
        assert len(freq) == k and (freq - expected).abs().max() < 4.5 * sd


def test_draws_are_keyed_by_seed_item_and_draw():
    a = draw_masks(5, 64, seed=1, item=2)
    assert torch.equal(a, draw_masks(5, 64, seed=1, item=2))
    assert torch.equal(a[:16], draw_masks(5, 16, seed=1, item=2))  # row d depends on d only
    assert not torch.equal(a, draw_masks(5, 64, seed=1, item=3))
    assert not torch.equal(a, draw_masks(5, 64, seed=2, item=2))
    assert torch.equal(draw_masks(5, 8, item=(1, 2)), draw_masks(5, 8, item=(1, 2)))
    # stratified: l_d on a shifted grid, each l used mc_num / L times
    s = draw_masks(5, 64 * 5, seed=1, item=2, stratified=True)
    assert torch.bincount(s.sum(1))[1:].tolist() == [64] * 5


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("length,stratified", [(3, False), (4, False), (3, True), (4, True)])
def test_mean_equals_enumerated_elbo(model, length, stratified):
    cont = [1, 2, 0, 2][:length]
    elbo, var, _, values = enumerate_elbo(model, PROMPT, cont)
    mc_num = 20000
    model.calls = 0
    est = estimate_log_likelihood(
        model, PROMPT, cont, mask_token_id=MASK, mc_num=mc_num, batch_size=32, seed=5, stratified=stratified
    )
    # every draw is one enumerated subset value (distinct masks are evaluated once: <= 2^L - 1 rows)
    assert model.calls == 1
    masks = draw_masks(length, mc_num, seed=5, item=0, stratified=stratified)
    expected = torch.tensor([values[frozenset(r.nonzero().flatten().tolist())] for r in masks], dtype=torch.float64)
    assert torch.allclose(est.samples, expected, rtol=2e-6, atol=1e-5)  # fp32 log-softmax
    assert torch.equal(est.num_masked, masks.sum(1))
    assert est.samples.dtype == torch.float64 and est.mc_num == mc_num and est.num_tokens == length
    assert var > 0.05  # the model is context-sensitive: the test is not trivial
    assert abs(est.mean - elbo) < 4 * est.stderr
    assert abs(est.mean - elbo) < 0.02 * abs(elbo)


def test_mask_logit_is_suppressed(model):
    """The boosted [MASK] logit would dominate an unsuppressed log-softmax."""
    cont = [2, 2, 1]
    est = estimate_log_likelihood(model, PROMPT, cont, mask_token_id=MASK, mc_num=64)
    x = torch.tensor([PROMPT + [MASK] * 3])
    with torch.no_grad():
        full = torch.log_softmax(model(x).double()[0], -1)
        real = torch.log_softmax(model(x).double()[0][:, :MASK], -1)
    value_full = sum(float(full[3 + i, c]) for i, c in enumerate(cont))
    value_real = sum(float(real[3 + i, c]) for i, c in enumerate(cont))
    fully_masked = est.samples[est.num_masked == 3]
    assert len(fully_masked) > 0
    assert torch.allclose(fully_masked, torch.tensor(value_real, dtype=torch.float64), atol=1e-5)
    assert value_full < value_real - 1.0


def test_stderr_matches_exact_variance_and_shrinks_like_inverse_sqrt(model):
    cont = [1, 2, 0, 2]
    elbo, var, by_l, _ = enumerate_elbo(model, PROMPT, cont)
    se = {
        n: estimate_log_likelihood(model, PROMPT, cont, mask_token_id=MASK, mc_num=n, seed=11).stderr
        for n in (64, 1024)
    }
    assert 3.2 < se[64] / se[1024] < 5.0  # sqrt(1024 / 64) = 4
    for n, tol in ((64, 0.3), (1024, 0.1)):
        assert abs(se[n] / math.sqrt(var / n) - 1) < tol
    # stratified: only the within-l variance remains (exact formula for L | mc_num)
    strat = estimate_log_likelihood(model, PROMPT, cont, mask_token_id=MASK, mc_num=1024, seed=11, stratified=True)
    within = sum(v for _, v in by_l.values()) / len(cont)
    assert abs(strat.stderr / math.sqrt(within / 1024) - 1) < 0.1
    assert within < var and strat.stderr < se[1024]


def test_single_token_continuation_is_exact_in_one_pass(model):
    model.calls = model.rows = 0
    est = estimate_log_likelihood(model, PROMPT, [2], mask_token_id=MASK, mc_num=128, batch_size=4)
    assert model.calls == 1 and model.rows == 1
    assert est.stderr == 0.0
    assert est.mean == pytest.approx(_masked_logprobs(model, PROMPT, [2], {0}), abs=1e-5)


def test_proper_joint_bound_is_tight():
    """For conditionals of one joint the ELBO equals log p(x | prompt); the estimate matches it."""
    for cont in ([0, 2, 1], [2, 2, 2]):
        joint = JointModel(len(PROMPT), 3, seed=1)
        elbo, _, _, _ = enumerate_elbo(joint, PROMPT, cont)
        exact = joint.log_joint(cont)
        assert elbo == pytest.approx(exact, abs=1e-9)
        est = estimate_log_likelihood(joint, PROMPT, cont, mask_token_id=MASK, mc_num=512, stratified=True)
        assert abs(est.mean - exact) < 4 * est.stderr + 1e-5


def test_bound_is_below_the_order_mixture_loglik(model):
    for cont in ([1, 2, 0], [0, 0, 1]):
        elbo, _, _, _ = enumerate_elbo(model, PROMPT, cont)
        mixture = order_mixture_loglik(model, PROMPT, cont)
        assert elbo <= mixture + 1e-9 and elbo < 0
        est = estimate_log_likelihood(model, PROMPT, cont, mask_token_id=MASK, mc_num=2048, stratified=True)
        assert abs(est.mean - elbo) < 4 * est.stderr


# ------------------------------------------------------------------ batching and keys
def test_results_do_not_depend_on_batch_size_or_other_requests(model):
    requests = [(PROMPT, [1, 2, 0, 2]), ([1], [0, 1]), (PROMPT, [2, 2, 1, 0]), ([], [1, 1, 1])]
    runs = [estimate_log_likelihoods(model, requests, mask_token_id=MASK, mc_num=96, batch_size=b) for b in (1, 5, 256)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.num_masked, b.num_masked)
            assert torch.allclose(a.samples, b.samples, rtol=2e-6, atol=1e-5)  # batched fp32 matmuls
    # request 2 alone, keyed by its index in the list: the same draws and value
    alone = estimate_log_likelihood(model, PROMPT, [2, 2, 1, 0], mask_token_id=MASK, mc_num=96, item=2)
    assert torch.equal(alone.num_masked, runs[0][2].num_masked)
    assert alone.mean == pytest.approx(runs[0][2].mean, rel=1e-6)
    # equal item keys give common random numbers across continuations of the same length
    a, b = estimate_log_likelihoods(
        model, [(PROMPT, [1, 2, 0]), (PROMPT, [2, 0, 0])], mask_token_id=MASK, mc_num=32, items=[9, 9]
    )
    assert torch.equal(a.num_masked, b.num_masked)


def test_tensor_inputs_and_model_with_logits_attribute():
    inner = sharp_transformer()

    class HFStyle(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": inner(input_ids)})()

    a = estimate_log_likelihood(HFStyle(), torch.tensor(PROMPT), torch.tensor([1, 0]), mask_token_id=MASK, mc_num=16)
    b = estimate_log_likelihood(inner, PROMPT, [1, 0], mask_token_id=MASK, mc_num=16)
    assert a.mean == pytest.approx(b.mean, abs=1e-9)


# ------------------------------------------------------------------ greedy check
def reference_greedy(model, prompt, length):
    """LLaDA's suffix_greedy_prediction: commit the single most confident masked prediction per step."""
    x = torch.tensor([list(prompt) + [MASK] * length])
    for _ in range(length):
        with torch.no_grad():
            logits = model(x)[0].double()
        logits[:, MASK] = float("-inf")
        probs = torch.softmax(logits, -1)
        conf, tok = probs.max(-1)
        masked = x[0] == MASK
        conf = torch.where(masked, conf, torch.tensor(-1.0, dtype=torch.float64))
        i = int(conf.argmax())
        x[0, i] = tok[i]
    return x[0, len(prompt) :].tolist()


def test_greedy_matches_reference_loop(model):
    requests = []
    for prompt in (PROMPT, [2], [1, 1, 0, 2, 2]):
        greedy = reference_greedy(model, prompt, 3)
        wrong = list(greedy)
        wrong[1] = (wrong[1] + 1) % 3
        requests += [(prompt, greedy), (prompt, wrong)]
    requests.append(([], reference_greedy(model, [], 2)))  # empty prompt
    got = greedy_matches(model, requests, mask_token_id=MASK, batch_size=2)
    assert got == [True, False] * 3 + [True]


# ------------------------------------------------------------------ bad input
def test_bad_input_errors_name_the_value(model):
    with pytest.raises(ValueError, match=r"continuation is empty \(0 tokens\)"):
        estimate_log_likelihood(model, PROMPT, [], mask_token_id=MASK)
    too_long = r"prompt \(15 tokens\) \+ continuation \(2 tokens\) = 17 tokens exceeds the model's max_length=16"
    with pytest.raises(ValueError, match=too_long):
        estimate_log_likelihood(model.inner, [0] * 15, [1, 2], mask_token_id=MASK)
    with pytest.raises(ValueError, match="max_length=8"):
        estimate_log_likelihood(model, [0] * 7, [1, 2], mask_token_id=MASK, max_length=8)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"mc_num={bad} is invalid"):
            estimate_log_likelihood(model, PROMPT, [1], mask_token_id=MASK, mc_num=bad)
    with pytest.raises(ValueError, match=r"mc_num=2.5"):
        estimate_log_likelihood(model, PROMPT, [1], mask_token_id=MASK, mc_num=2.5)
    with pytest.raises(ValueError, match=r"batch_size=0"):
        estimate_log_likelihood(model, PROMPT, [1], mask_token_id=MASK, batch_size=0)
    with pytest.raises(ValueError, match=r"contains mask_token_id=3"):
        estimate_log_likelihood(model, PROMPT, [1, MASK], mask_token_id=MASK)
    with pytest.raises(ValueError, match=r"items has 1 keys for 2 requests"):
        estimate_log_likelihoods(model, [(PROMPT, [1]), (PROMPT, [2])], mask_token_id=MASK, items=[0])
    with pytest.raises(ValueError, match=r"continuation is empty"):
        greedy_matches(model, [(PROMPT, [])], mask_token_id=MASK)
    assert model_max_length(model.inner) == 16 and model_max_length(nn.Linear(2, 2)) is None
