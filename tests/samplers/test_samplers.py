"""Mask-ratio samplers: support, mean, determinism, state and errors, against analytic values."""

import math

import pytest
import torch

from mdlm.samplers import (
    Bins,
    Curriculum,
    Fixed,
    LinearCurriculum,
    MaskRatioSampler,
    ParitySignalOptimal,
    Uniform,
    Window,
    signal_optimal_window_max,
    signal_probability,
)

N = 100_000


def _draw(sampler, progress=0.0, step=0, n=N):
    return sampler.draw(n, progress, step=step).double()


@pytest.mark.parametrize(
    "sampler, low, high",
    [
        (Uniform(seed=1), 1e-3, 1.0),
        (Window(0.45, 0.55, seed=1), 0.45, 0.55),
        (Window(0.5, 1.0, seed=1), 0.5, 1.0),
        (Window(0.0, 0.2, seed=1), 1e-3, 0.2),  # t_min = 0 is valid; the floor applies
        (Bins(index=3, seed=1), 0.3, 0.4),
        (Bins(index=0, num_bins=10, seed=1), 1e-3, 0.1),
        (Bins(index=9, seed=1), 0.9, 1.0),
    ],
)
def test_window_support_mean_and_variance(sampler, low, high):
    t = _draw(sampler)
    assert t.min() >= low - 1e-6 and t.max() <= high + 1e-6
    assert t.mean().item() == pytest.approx((low + high) / 2, abs=3 * (high - low) / math.sqrt(12 * N) + 1e-6)
    assert t.var().item() == pytest.approx((high - low) ** 2 / 12, rel=0.02)
    # covers the window: the extremes are approached
    assert t.min() < low + 0.01 * (high - low) and t.max() > high - 0.01 * (high - low)
    assert sampler.mean() == pytest.approx((low + high) / 2, abs=1e-4)


def test_fixed_and_parity_point():
    assert torch.all(_draw(Fixed(0.3), n=10) == torch.tensor(0.3, dtype=torch.float32).double())
    t = _draw(ParitySignalOptimal(k=6, mode="point"), n=10)
    assert torch.allclose(t, torch.full_like(t, 1 / 7), atol=1e-7)


def test_parity_window_matches_numerical_maximisation():
    # independent check: maximise P_S(0, t1) on a grid with trapezoid integration
    for k, paper in ((6, 0.246), (3, None)):
        grid = torch.linspace(1e-4, 1, 20_001, dtype=torch.float64)
        f = (k + 1) * grid * (1 - grid) ** k
        cumulative = torch.cumulative_trapezoid(f, grid)
        p_s = cumulative / (grid[1:] - grid[0])
        t1_numeric = grid[1:][p_s.argmax()].item()
        assert signal_optimal_window_max(k) == pytest.approx(t1_numeric, abs=2e-4)
        if paper is not None:
            assert round(signal_optimal_window_max(k), 3) == paper
    assert signal_probability(6, 0, signal_optimal_window_max(6)) == pytest.approx(0.317, abs=5e-4)
    assert signal_probability(6, 0, 1) == pytest.approx(1 / 8)
    t = _draw(ParitySignalOptimal(k=6))
    assert t.max() <= 0.2460 and t.mean().item() == pytest.approx((1e-3 + 0.24593) / 2, abs=2e-3)


def test_linear_curriculum_moves_the_window():
    s = LinearCurriculum(start=(0.0, 1.0), end=(0.45, 0.55), seed=0)
    assert s.window(0.0) == (0.0, 1.0)
    assert s.window(1.0) == pytest.approx((0.45, 0.55))
    assert s.window(0.5) == pytest.approx((0.225, 0.775))
    t_end = _draw(s, progress=1.0)
    assert t_end.min() >= 0.45 - 1e-6 and t_end.max() <= 0.55 + 1e-6
    assert _draw(s, progress=0.5).mean().item() == pytest.approx(0.5, abs=0.01)


def test_determinism_and_independence_across_steps_and_ranks():
    a = Window(0.2, 0.8, seed=5).draw(64, 0.0, step=3)
    b = Window(0.2, 0.8, seed=5).draw(64, 0.0, step=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, Window(0.2, 0.8, seed=6).draw(64, 0.0, step=3))
    assert not torch.equal(a, Window(0.2, 0.8, seed=5).draw(64, 0.0, step=4))
    # rank 1 of a 2-rank run draws rows 64..127 of the same global batch: no repeats, and the
    # two ranks together equal one process with the global batch
    s = Window(0.2, 0.8, seed=5)
    rank0 = s.draw(64, 0.0, step=3, first_index=0, global_batch_size=128)
    rank1 = s.draw(64, 0.0, step=3, first_index=64, global_batch_size=128)
    whole = s.draw(128, 0.0, step=3, first_index=0, global_batch_size=128)
    assert torch.equal(torch.cat([rank0, rank1]), whole)
    assert len(set(whole.tolist())) == 128


def test_stratified_uniforms_have_one_per_stratum():
    s = Uniform(seed=3, stratified=True)
    u = torch.cat([s.uniforms(32, step=0, first_index=r * 32, global_batch_size=128) for r in range(4)])
    strata = torch.floor(u * 128).long()
    assert torch.equal(strata, torch.arange(128))


def test_state_round_trip():
    s = Window(0.1, 0.9, seed=11)
    for step in range(3):
        s.draw(8, 0.0, step=step)
    state = s.state_dict()
    fresh = Window(0.1, 0.9, seed=999)
    fresh.load_state_dict(state)
    assert fresh.seed == 11 and fresh.num_draws == 3
    assert torch.equal(fresh.draw(8, 0.0, step=3), s.draw(8, 0.0, step=3))


def test_seed_defaults_to_seed_everything(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "1234")
    assert Uniform().seed == 1234
    assert Uniform(seed=7).seed == 7


def test_user_subclass_in_a_few_lines():
    class Squared(MaskRatioSampler):
        """t = u^2: more small mask ratios; E[t] = 1/3."""

        def sample(self, u, progress):
            return u**2

    t = _draw(Squared(seed=0))
    assert t.mean().item() == pytest.approx(1 / 3, abs=0.005)
    assert (t >= 1e-3).all()

    class Shrinking(Curriculum):
        def window(self, progress):
            return (0.0, 1.0 - 0.5 * progress)

    assert _draw(Shrinking(seed=0), progress=1.0).max() <= 0.5 + 1e-6


def test_sample_must_return_one_t_per_sequence():
    class Broken(MaskRatioSampler):
        def sample(self, u, progress):
            return u[:2]

    with pytest.raises(ValueError, match=r"returned shape \(2,\), expected \(8,\)"):
        Broken().draw(8, 0.0, step=0)
    with pytest.raises(NotImplementedError, match="must override sample"):
        MaskRatioSampler().draw(4, 0.0, step=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Window(0.6, 0.4), r"t_min=0.6 > t_max=0.4"),
        (lambda: Window(-0.1, 0.4), r"t_min=-0.1 lies outside \[0, 1\]"),
        (lambda: Window(0.2, 1.5), r"t_max=1.5 lies outside \[0, 1\]"),
        (lambda: Window(0.0, 0.0005), r"empty after the floor eps=0.001"),
        (lambda: Window(0.3, 0.3), r"use Fixed"),
        (lambda: Fixed(0.0), r"Fixed\(t=0.0\)"),
        (lambda: Fixed(1.2), r"Fixed\(t=1.2\)"),
        (lambda: Bins(index=10), r"bin index=10 must lie in \[0, 9\]"),
        (lambda: Bins(index=0, num_bins=0), r"num_bins=0"),
        (lambda: Uniform(eps=0.0), r"eps=0.0"),
        (lambda: ParitySignalOptimal(k=0), r"k=0"),
        (lambda: ParitySignalOptimal(k=3, mode="edge"), r"mode='edge'"),
        (lambda: LinearCurriculum(start_progress=0.8, end_progress=0.2), r"start_progress=0.8"),
        (lambda: LinearCurriculum(end=(0.7, 0.2)), r"t_min=0.7 > t_max=0.2"),
    ],
)
def test_bad_windows_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_draw_batch_is_draw_and_mask_uniforms_in_one_call():
    """The module's one call: t, the token-mask uniforms and no weights, for a subclass that overrides only sample."""

    class Squared(MaskRatioSampler):  # the README's / base docstring's user schedule
        def sample(self, u, progress):
            return u**2

    a, b = Squared(seed=3, stratified=True), Squared(seed=3, stratified=True)
    draw = a.draw_batch((4, 9), 0.25, step=5, first_index=8, global_batch_size=16)
    assert torch.equal(draw.t, b.draw(4, 0.25, 5, first_index=8, global_batch_size=16))
    assert torch.equal(draw.uniforms, b.mask_uniforms((4, 9), 5, first_index=8))
    assert draw.t.dtype == draw.uniforms.dtype == torch.float32 and draw.uniforms.shape == (4, 9)
    assert draw.weights is None
    assert a.num_draws == 1 and torch.equal(a.last_t, draw.t)  # counted and logged like draw()
