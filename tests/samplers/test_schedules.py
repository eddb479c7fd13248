"""Curriculum schedules: support and mean against analytic values, mixture weights, YAML and errors."""

import math

import pytest
import torch
from jsonargparse import ArgumentParser

from mdlm.samplers import MaskRatioSampler
from mdlm.samplers.schedules import CosineCurriculum, Mixture, StepCurriculum, WarmStart, WindowCurriculum

N = 50_000
EPS = 1e-3


def _draw(sampler, progress, step=0, n=N):
    return sampler.draw(n, progress, step=step).double()


def _check(sampler, progress, low, high):
    """Draws lie in [low, high], cover it, and match the analytic mean; so do support()/analytic_mean()."""
    assert sampler.support(progress) == pytest.approx((low, high), abs=1e-12)
    assert sampler.analytic_mean(progress) == pytest.approx((low + high) / 2, abs=1e-12)
    assert sampler.mean(progress) == pytest.approx((low + high) / 2, abs=1e-5)  # midpoint grid of u
    t = _draw(sampler, progress)
    width = high - low
    assert t.min() >= low - 1e-6 and t.max() <= high + 1e-6
    assert t.min() < low + 0.01 * width and t.max() > high - 0.01 * width
    assert t.mean().item() == pytest.approx((low + high) / 2, abs=4 * width / math.sqrt(12 * N) + 1e-6)


def _mix(start, end, s):
    return ((1 - s) * start[0] + s * end[0], (1 - s) * start[1] + s * end[1])


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.25, 0.5, 0.8, 1.0])
def test_linear_and_cosine_interpolation(progress):
    start, end = (0.0, 1.0), (0.45, 0.55)
    lin = WindowCurriculum(start, end, shape="linear", seed=1)
    a, b = _mix(start, end, progress)
    _check(lin, progress, max(EPS, a), b)
    cos = CosineCurriculum(start, end, seed=1)
    s = (1 - math.cos(math.pi * progress)) / 2
    a, b = _mix(start, end, s)
    _check(cos, progress, max(EPS, a), b)


def test_cosine_is_slow_fast_slow_within_its_progress_range():
    cos = WindowCurriculum((0.0, 1.0), (0.5, 1.0), shape="cosine", start_progress=0.2, end_progress=0.6)
    assert cos.fraction(0.1) == 0.0 and cos.fraction(0.2) == 0.0
    assert cos.fraction(0.4) == pytest.approx(0.5)
    assert cos.fraction(0.25) == pytest.approx((1 - math.cos(math.pi / 8)) / 2)
    assert cos.fraction(0.6) == pytest.approx(1.0) and cos.fraction(0.9) == 1.0
    _check(cos, 0.4, 0.25, 1.0)


@pytest.mark.parametrize(
    "progress, s",
    [(0.0, 0.0), (0.2, 0.0), (0.2499, 0.0), (0.25, 1 / 3), (0.5, 2 / 3), (0.7499, 2 / 3), (0.75, 1.0), (1.0, 1.0)],
)
def test_step_curriculum_with_equal_stages(progress, s):
    # 4 equal stages of [0, 1]: start, 1/3, 2/3, end
    step = StepCurriculum((0.0, 1.0), (0.45, 0.55), num_steps=4, seed=2)
    assert step.fraction(progress) == pytest.approx(s)
    a, b = _mix((0.0, 1.0), (0.45, 0.55), s)
    _check(step, progress, max(EPS, a), b)


@pytest.mark.parametrize("progress, expected", [(0.0, (EPS, 0.3)), (0.39, (EPS, 0.3)), (0.4, (0.5, 1.0)), (1.0, (0.5, 1.0))])
def test_step_curriculum_single_switch(progress, expected):
    step = WindowCurriculum((0.0, 0.3), (0.5, 1.0), shape="step", switch_at=0.4, seed=3)
    _check(step, progress, *expected)


def test_step_switch_defaults_to_the_midpoint_of_the_progress_range():
    step = StepCurriculum(start_progress=0.2, end_progress=0.6)
    assert step.fraction(0.3999) == 0.0 and step.fraction(0.4) == 1.0


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.0, (EPS, 1.0)),
        (0.099, (EPS, 1.0)),
        (0.1, (EPS, 1.0)),  # the blend starts from U[0, 1]
        (0.2, (0.225, 0.775)),  # halfway through the blend
        (0.3, (0.45, 0.55)),
        (0.9, (0.45, 0.55)),
    ],
)
def test_warm_start_with_blend(progress, expected):
    _check(WarmStart((0.45, 0.55), warmup_progress=0.1, blend_progress=0.2, seed=4), progress, *expected)


@pytest.mark.parametrize("progress, expected", [(0.0, (EPS, 1.0)), (0.1999, (EPS, 1.0)), (0.2, (0.5, 1.0)), (1.0, (0.5, 1.0))])
def test_warm_start_abrupt(progress, expected):
    _check(WarmStart((0.5, 1.0), warmup_progress=0.2, seed=4), progress, *expected)


def _mixture_cdf(x, windows, weights):
    total = 0.0
    for (a, b), w in zip(windows, weights):
        a = max(EPS, a)
        total += w * min(max((x - a) / (b - a), 0.0), 1.0)
    return total


@pytest.mark.parametrize(
    "windows, weights",
    [
        ([(0.45, 0.55), (0.0, 1.0)], [0.8, 0.2]),  # the brief's example: overlapping components
        ([(0.0, 0.2), (0.5, 1.0)], [1.0, 3.0]),  # unnormalised weights
        ([(0.1, 0.2), (0.3, 0.4), (0.8, 0.9)], [0.2, 0.5, 0.3]),
    ],
)
def test_mixture_support_mean_and_cdf(windows, weights):
    m = Mixture(windows, weights, seed=5)
    w = [x / sum(weights) for x in weights]
    mean = sum(wj * (max(EPS, a) + b) / 2 for (a, b), wj in zip(windows, w))
    low, high = min(max(EPS, a) for a, _ in windows), max(b for _, b in windows)
    assert m.support() == pytest.approx((low, high))
    assert m.analytic_mean() == pytest.approx(mean, abs=1e-12)
    assert m.mean() == pytest.approx(mean, abs=1e-5)
    t = _draw(m, 0.0)
    assert t.min() >= low - 1e-6 and t.max() <= high + 1e-6
    assert t.mean().item() == pytest.approx(mean, abs=4 * t.std().item() / math.sqrt(N))
    # empirical CDF against the analytic mixture CDF (Kolmogorov-Smirnov distance)
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    empirical = (t.unsqueeze(0) <= grid.unsqueeze(1)).double().mean(1)
    analytic = torch.tensor([_mixture_cdf(x, windows, w) for x in grid.tolist()], dtype=torch.float64)
    assert (empirical - analytic).abs().max() < 1.63 / math.sqrt(N) * 1.5  # ~1% KS level, with slack


def test_mixture_splits_u_by_cumulative_weights_and_keeps_stratification():
    m = Mixture([(0.0, 0.2), (0.5, 1.0)], [0.25, 0.75], seed=6, stratified=True)
    u = m.uniforms(400, step=0)
    comp = m.component(u)
    assert int((comp == 0).sum()) == 100 and int((comp == 1).sum()) == 300  # exact under stratification
    t = m.sample(u, 0.0)
    assert torch.all(t[comp == 0] <= 0.2) and torch.all(t[comp == 1] >= 0.5)
    # monotone in u (an inverse CDF), piece j rescaled onto window j
    assert torch.all(torch.diff(m.sample(torch.sort(u).values, 0.0)) >= 0)
    assert m.sample(torch.tensor([0.125], dtype=torch.float64), 0.0).item() == pytest.approx((EPS + 0.2) / 2)
    assert m.sample(torch.tensor([0.625], dtype=torch.float64), 0.0).item() == pytest.approx(0.75)


def test_mixture_zero_weight_component_is_never_drawn():
    m = Mixture([(0.0, 0.1), (0.4, 0.6), (0.9, 1.0)], [0.5, 0.0, 0.5], seed=7)
    t = _draw(m, 0.0)
    assert not torch.any((t > 0.1 + 1e-6) & (t < 0.9 - 1e-6))
    assert m.support() == pytest.approx((EPS, 1.0))


def test_schedules_are_deterministic_under_the_seed():
    for make in (lambda s: Mixture(seed=s), lambda s: WarmStart(seed=s), lambda s: CosineCurriculum(seed=s)):
        assert torch.equal(make(3).draw(64, 0.5, step=2), make(3).draw(64, 0.5, step=2))
        assert not torch.equal(make(3).draw(64, 0.5, step=2), make(4).draw(64, 0.5, step=2))


def _parser():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(MaskRatioSampler, "sampler")
    return parser


def _from_yaml(text):
    parser = _parser()
    cfg = parser.parse_string(text)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg).sampler


@pytest.mark.parametrize(
    "text, cls, check",
    [
        (
            "sampler:\n  class_path: mdlm.samplers.schedules.Mixture\n"
            "  init_args: {windows: [[0.45, 0.55], [0.0, 1.0]], weights: [0.8, 0.2], seed: 3}\n",
            Mixture,
            lambda s: s.windows == [(0.45, 0.55), (0.0, 1.0)] and s.weights == pytest.approx([0.8, 0.2]),
        ),
        (
            "sampler:\n  class_path: mdlm.samplers.schedules.WarmStart\n"
            "  init_args: {window: [0.45, 0.55], warmup_progress: 0.1, blend_progress: 0.2}\n",
            WarmStart,
            lambda s: s.target == (0.45, 0.55) and s.blend_progress == 0.2,
        ),
        (
            "sampler:\n  class_path: mdlm.samplers.schedules.WindowCurriculum\n"
            "  init_args: {start: [0.0, 1.0], end: [0.5, 1.0], shape: cosine, end_progress: 0.5}\n",
            WindowCurriculum,
            lambda s: s.shape == "cosine" and s.window(0.5) == pytest.approx((0.5, 1.0)),
        ),
        (
            "sampler:\n  class_path: mdlm.samplers.schedules.StepCurriculum\n  init_args: {num_steps: 4}\n",
            StepCurriculum,
            lambda s: s.num_steps == 4 and s.shape == "step",
        ),
        (
            "sampler:\n  class_path: mdlm.samplers.schedules.CosineCurriculum\n  init_args: {eps: 0.01}\n",
            CosineCurriculum,
            lambda s: s.eps == 0.01 and s.support(0.0) == (0.01, 1.0),
        ),
    ],
)
def test_yaml_construction(text, cls, check):
    sampler = _from_yaml(text)
    assert type(sampler) is cls and check(sampler)


def test_yaml_errors_name_the_bad_value():
    with pytest.raises(Exception, match=r"windows\[0\]=\(0.55, 0.45\): t_min=0.55 > t_max=0.45"):
        _from_yaml(
            "sampler:\n  class_path: mdlm.samplers.schedules.Mixture\n"
            "  init_args: {windows: [[0.55, 0.45]], weights: [1.0]}\n"
        )
    with pytest.raises(Exception, match=r"shape"):
        _from_yaml("sampler:\n  class_path: mdlm.samplers.schedules.WindowCurriculum\n  init_args: {shape: exp}\n")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: WindowCurriculum(shape="exp"), r"shape='exp' must be one of \('linear', 'cosine', 'step'\)"),
        (lambda: WindowCurriculum(start=(0.6, 0.4)), r"start=\(0.6, 0.4\): t_min=0.6 > t_max=0.4"),
        (lambda: WindowCurriculum(end=(0.2, 1.5)), r"end=\(0.2, 1.5\): t_max=1.5 lies outside \[0, 1\]"),
        (lambda: WindowCurriculum(end=(0.5,)), r"end=\(0.5,\) must be a pair \(t_min, t_max\)"),
        (lambda: WindowCurriculum(start_progress=0.7, end_progress=0.3), r"start_progress=0.7, end_progress=0.3"),
        (lambda: WindowCurriculum(end_progress=1.5), r"end_progress=1.5 must lie in \[0, 1\]"),
        (lambda: WindowCurriculum(shape="linear", num_steps=3), r"num_steps=3 only applies to shape='step'"),
        (lambda: WindowCurriculum(shape="cosine", switch_at=0.5), r"switch_at=0.5 only applies to shape='step'"),
        (lambda: StepCurriculum(switch_at=0.5, num_steps=3), r"switch_at=0.5 or num_steps=3, not both"),
        (lambda: StepCurriculum(num_steps=1), r"num_steps=1 must be an integer >= 2"),
        (lambda: StepCurriculum(num_steps=2.5), r"num_steps=2.5 must be an integer >= 2"),
        (lambda: StepCurriculum(start_progress=0.2, end_progress=0.4, switch_at=0.5), r"switch_at=0.5 must lie in"),
        (lambda: WarmStart(window=(0.5, 0.5)), r"window=\(0.5, 0.5\): t_min == t_max == 0.5: use Fixed"),
        (lambda: WarmStart(warmup_progress=-0.1), r"warmup_progress=-0.1 must lie in \[0, 1\]"),
        (lambda: WarmStart(warmup_progress=0.8, blend_progress=0.3), r"warmup_progress \+ blend_progress = 0.8 \+ 0.3"),
        (lambda: Mixture([], []), r"windows=\[\] is empty"),
        (lambda: Mixture([(0.0, 1.0)], [0.5, 0.5]), r"weights=\[0.5, 0.5\] has 2 entries but windows has 1"),
        (lambda: Mixture([(0.0, 1.0), (0.2, 0.3)], [1.0, -1.0]), r"contains -1.0: weights must be finite and >= 0"),
        (lambda: Mixture([(0.0, 1.0)], [0.0]), r"weights=\[0.0\] sum to 0.0"),
        (lambda: Mixture([(0.0, 0.0005)], [1.0]), r"windows\[0\]=\(0.0, 0.0005\): .*empty after the floor eps=0.001"),
    ],
)
def test_bad_arguments_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_training_progress_runs_from_zero_at_the_first_step_to_one_at_the_last():
    from mdlm.samplers.base import training_progress

    assert [training_progress(s, 5) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert training_progress(0, 1) == 1.0 and training_progress(3, math.inf) == 0.0


def test_a_curriculum_reaches_its_final_window_at_the_last_training_step(tmp_path):
    """Through the Trainer: the t of the last of S steps is drawn at progress 1.0 (it was (S - 1) / S)."""
    from conftest import tiny_trainer

    from mdlm.data.parity import ParityDataModule
    from mdlm.module import MaskedDiffusionLM

    seen = []

    class Recording(WindowCurriculum):
        def sample(self, u, progress):
            seen.append(progress)
            return super().sample(u, progress)

    curriculum = Recording(start=(0.0, 1.0), end=(0.4, 0.6))
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2)
    dm = ParityDataModule(n=8, k=3, num_train=64, num_val=16, batch_size=16)
    tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[curriculum]).fit(model, datamodule=dm)
    assert seen == [0.0, 1 / 3, 2 / 3, 1.0]
    assert curriculum.support(seen[-1]) == pytest.approx((0.4, 0.6))
