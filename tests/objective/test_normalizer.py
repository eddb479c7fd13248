"""GlobalBatchNormalizer against an independent computation: one process, one full batch, ΣN / max(1, ΣZ).

Micro-batches of a toy per-token loss with a random normaliser (the number of masked tokens, as
``normalization="masked_tokens"``), accumulated as Lightning does (each loss divided by A before
backward) and, for W ranks, gradients averaged as DDP does; the all-reduce of (N, Z) is simulated
in one process.
"""

import pytest
import torch
import torch.distributed as dist

from mdlm.normalizer import GlobalBatchNormalizer

A, W, B, D = 3, 2, 4, 5


def _data(seed=0, rows=A * W * B):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 7, D, generator=g, dtype=torch.float64)
    masked = torch.rand(rows, 7, generator=g) < torch.rand(rows, 1, generator=g)  # random Z per micro-batch
    return x, masked


def _parts(weight, x, masked):
    """N = Σ of a per-token loss over the masked tokens, Z = the number of masked tokens."""
    per_token = (x @ weight).pow(2)
    return torch.where(masked, per_token, torch.zeros_like(per_token)).sum(), masked.sum().to(torch.float64)


def _reference(x, masked):
    weight = torch.linspace(-1, 1, D, dtype=torch.float64).requires_grad_()
    n, z = _parts(weight, x, masked)
    (n / z.clamp(min=1)).backward()
    return weight.grad


def _accumulated(x, masked, accumulate, world, monkeypatch):
    """Gradient of one optimizer step through the normaliser: rank r's micro-batch a holds rows (aW + r)B …"""
    weights = [torch.linspace(-1, 1, D, dtype=torch.float64).requires_grad_() for _ in range(world)]
    normalizers = [GlobalBatchNormalizer() for _ in range(world)]
    logged = []
    for a in range(accumulate):
        rows = [slice((a * world + r) * B, (a * world + r + 1) * B) for r in range(world)]
        parts = [_parts(weights[r], x[rows[r]], masked[rows[r]]) for r in range(world)]
        summed = torch.stack([torch.stack([n.detach().float(), z.float()]) for n, z in parts]).sum(0)
        monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, group=None, summed=summed: tensor.copy_(summed))
        for r in range(world):
            loss, log = normalizers[r](*parts[r], micro_step=a, world_size=world)
            (loss / accumulate).backward()
            logged.append(float(log))
    grad = torch.stack([w.grad for w in weights]).mean(0)  # DDP's average over the ranks
    rescaled = []
    for normalizer in normalizers:  # each rank rescales its copy of the averaged gradient
        param = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))
        param.grad = grad.clone()
        normalizer.rescale_gradients([param], accumulate)
        rescaled.append(param.grad)
    assert all(torch.equal(g, rescaled[0]) for g in rescaled)
    return rescaled[0], logged


@pytest.mark.parametrize("accumulate, world", [(1, 1), (A, 1), (1, W), (A, W)])
def test_micro_batches_equal_one_full_batch(accumulate, world, monkeypatch):
    x, masked = _data()
    rows = accumulate * world * B
    x, masked = x[:rows], masked[:rows]
    got, logged = _accumulated(x, masked, accumulate, world, monkeypatch)
    torch.testing.assert_close(got, _reference(x, masked), rtol=1e-6, atol=0)
    # logged: the global micro-batch loss Σ_r N_r / max(1, Σ_r Z_r), the same on every rank
    weight = torch.linspace(-1, 1, D, dtype=torch.float64)
    for a in range(accumulate):
        sl = slice(a * world * B, (a + 1) * world * B)
        n, z = _parts(weight, x[sl], masked[sl])
        for r in range(world):
            assert logged[a * world + r] == pytest.approx(float(n / z.clamp(min=1)), rel=1e-6)


def test_without_the_rescale_accumulation_is_biased(monkeypatch):
    """The gradient before rescale_gradients weights micro-batches by 1/Z_ref, not 1/ΣZ: it differs."""
    x, masked = _data()
    monkeypatch.setattr(GlobalBatchNormalizer, "rescale_gradients", lambda self, params, accumulate: None)
    got, _ = _accumulated(x[: A * B], masked[: A * B], A, 1, monkeypatch)
    assert not torch.allclose(got, _reference(x[: A * B], masked[: A * B]), rtol=1e-3)


def test_nothing_masked_gives_zero_not_nan_and_windows_close():
    norm = GlobalBatchNormalizer()
    n = torch.tensor(0.0, requires_grad=True)
    loss, logged = norm(n, torch.tensor(0.0), micro_step=0, world_size=1)
    assert loss.item() == 0.0 and logged.item() == 0.0
    norm(torch.tensor(3.0), torch.tensor(6.0), micro_step=1, world_size=1)
    assert norm.gradient_scale(accumulate=2) == pytest.approx(2 * 1 / 6)
    assert norm.gradient_scale(accumulate=2) == 1.0  # the window closed: nothing open, no rescale
    norm(torch.tensor(3.0), torch.tensor(4.0), micro_step=0, world_size=1)
    assert norm.gradient_scale(accumulate=1) == 1.0


def test_micro_step_zero_opens_a_new_window():
    """A window left open (e.g. an interrupted step) does not leak into the next optimizer step."""
    norm = GlobalBatchNormalizer()
    norm(torch.tensor(1.0), torch.tensor(100.0), micro_step=0, world_size=1)
    loss, _ = norm(torch.tensor(2.0), torch.tensor(4.0), micro_step=0, world_size=1)
    assert loss.item() == 0.5
    norm(torch.tensor(1.0), torch.tensor(6.0), micro_step=1, world_size=1)
    assert norm.gradient_scale(accumulate=2) == pytest.approx(2 * 4 / 10)
