import math

import torch

from mdlm.rng import keyed_hash, keyed_uniform


def test_uniform_moments_and_histogram():
    u = keyed_uniform((7, torch.arange(200_000)), dtype=torch.float64)
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.003
    assert abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = u.numel() / 20
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 60  # 19 dof: p ~ 1e-6 at 60


def test_pure_function_of_keys_not_of_batch_layout():
    full = keyed_uniform((3, 11, torch.arange(100).unsqueeze(1), torch.arange(5).unsqueeze(0)))
    part = keyed_uniform((3, 11, torch.arange(40, 47).unsqueeze(1), torch.arange(5).unsqueeze(0)))
    assert torch.equal(full[40:47], part)
    single = keyed_uniform((3, 11, 42, 4))
    assert single.item() == full[42, 4].item()


def test_different_keys_decorrelate():
    a = keyed_uniform((1, torch.arange(50_000)), dtype=torch.float64)
    b = keyed_uniform((2, torch.arange(50_000)), dtype=torch.float64)
    c = keyed_uniform((1, torch.arange(1, 50_001)), dtype=torch.float64)  # neighbouring index
    for x, y in ((a, b), (a, c)):
        corr = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
        assert abs(corr) < 0.02
    assert not torch.equal(a, b)


def test_large_seeds_and_hash_range():
    h = keyed_hash((2**40 + 5, torch.arange(1000)))
    assert h.min() >= 0 and h.max() < 2**32
    h2 = keyed_hash((5, torch.arange(1000)))
    assert not torch.equal(h, h2)  # the high word of the seed matters


def test_lowbias32_matches_reference_integer_arithmetic():
    """The int64 implementation equals the hash written with Python's unbounded integers."""

    def mix(h):
        h ^= h >> 16
        h = (h * 0x7FEB352D) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 0x846CA68B) & 0xFFFFFFFF
        return h ^ (h >> 16)

    def ref(keys):
        h = 0x9E3779B9
        for k in keys:
            h = mix(h ^ (k & 0xFFFFFFFF))
            h = mix(h ^ ((k >> 32) & 0xFFFFFFFF))
        return h

    for keys in [(0,), (1, 2, 3), (2**33 + 17, 99), (123456789, 0xFFFFFFFF, 5)]:
        assert keyed_hash(keys).item() == ref(keys)
        u = keyed_uniform(keys, dtype=torch.float64).item()
        assert math.isclose(u, (ref(keys) + 0.5) / 2**32)
