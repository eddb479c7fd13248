r"""Curriculum schedules over training progress, usable from YAML (``class_path`` + ``init_args``).

Every schedule maps uniforms ``u`` and the progress p ∈ [0, 1] to t by an inverse CDF (no extra
randomness), so the base class's keyed draws, stratification, floor, state and logging apply, and
each has a closed-form :meth:`support` and :meth:`analytic_mean` (used by the tests).

- :class:`WindowCurriculum` — t ~ U[a(p), b(p)], the window moving from ``start`` to ``end`` with
  ``shape`` ``linear``, ``cosine`` (slow–fast–slow) or ``step`` (a switch at ``switch_at``, or
  ``num_steps`` equal stages); :class:`CosineCurriculum` and :class:`StepCurriculum` fix the shape.
- :class:`WarmStart` — U[eps, 1] for the first ``warmup_progress``, then the target window,
  optionally reached by a linear blend of the window ends over ``blend_progress``.
- :class:`Mixture` — a fixed mixture of windows with weights, e.g. 80 % [0.45, 0.55] + 20 % U[0, 1]:
  u is split at the cumulative weights and each piece is rescaled onto its window.

YAML, e.g. the paper's window after a uniform start::

    sampler:
      class_path: mdlm.samplers.schedules.WarmStart
      init_args: {window: [0.45, 0.55], warmup_progress: 0.1, blend_progress: 0.2}

    sampler:
      class_path: mdlm.samplers.schedules.Mixture
      init_args: {windows: [[0.45, 0.55], [0.0, 1.0]], weights: [0.8, 0.2]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from mdlm.samplers.base import MaskRatioSampler
from mdlm.samplers.curriculum import Curriculum
from mdlm.samplers.windows import check_window

Shape = Literal["linear", "cosine", "step"]
SHAPES: tuple[str, ...] = ("linear", "cosine", "step")


def _window(value: Sequence[float], name: str, eps: float) -> tuple[float, float]:
    """A validated (t_min, t_max) pair; errors name the argument and the bad value."""
    try:
        t_min, t_max = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a pair (t_min, t_max) with 0 <= t_min < t_max <= 1") from None
    try:
        check_window(t_min, t_max, eps)
    except ValueError as err:
        raise ValueError(f"{name}={value!r}: {err}") from None
    return t_min, t_max


def _progress(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must lie in [0, 1] (a fraction of training)")
    return value


class _WindowMixin:
    """Support and mean of a single window t ~ U[max(eps, t_min), t_max]."""

    eps: float

    def support(self, progress: float) -> tuple[float, float]:
        """The interval t lives in at ``progress`` (after the floor eps)."""
        t_min, t_max = self.window(progress)
        return max(self.eps, t_min), t_max

    def analytic_mean(self, progress: float) -> float:
        """E[t] at ``progress``: the window's midpoint."""
        low, high = self.support(progress)
        return (low + high) / 2


class WindowCurriculum(_WindowMixin, Curriculum):
    r"""t ~ U[a(p), b(p)], the window interpolated from ``start`` to ``end`` over training progress p.

    With :math:`s_{lin} = \mathrm{clip}((p - p_0)/(p_1 - p_0), 0, 1)` (:math:`p_0` =
    ``start_progress``, :math:`p_1` = ``end_progress``) the mixing fraction s is

    - ``linear``: :math:`s = s_{lin}`;
    - ``cosine``: :math:`s = (1 - \cos \pi s_{lin}) / 2` (slow start, fast middle, slow end);
    - ``step`` with ``num_steps = m``: m equal stages of [p0, p1], stage i (0-based) using
      :math:`s = i/(m-1)` — the first stage is ``start``, the last ``end``;
    - ``step`` otherwise: ``start`` before ``switch_at`` (default the midpoint of [p0, p1]), ``end``
      from it on.

    and :math:`(a, b) = (1-s)\,\mathrm{start} + s\,\mathrm{end}`, floored at eps. Default: U[0, 1]
    into [0.45, 0.55] (``shape="linear"`` is :class:`~mdlm.samplers.LinearCurriculum`).
    """

    def __init__(
        self,
        start: tuple[float, float] = (0.0, 1.0),
        end: tuple[float, float] = (0.45, 0.55),
        shape: Shape = "linear",
        start_progress: float = 0.0,
        end_progress: float = 1.0,
        switch_at: float | None = None,
        num_steps: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.start = _window(start, "start", self.eps)
        self.end = _window(end, "end", self.eps)
        if shape not in SHAPES:
            raise ValueError(f"shape={shape!r} must be one of {SHAPES}")
        self.start_progress = _progress(start_progress, "start_progress")
        self.end_progress = _progress(end_progress, "end_progress")
        if not self.start_progress < self.end_progress:
            raise ValueError(
                f"need start_progress < end_progress, got start_progress={start_progress}, end_progress={end_progress}"
            )
        if shape != "step" and (switch_at is not None or num_steps is not None):
            bad = f"switch_at={switch_at}" if switch_at is not None else f"num_steps={num_steps}"
            raise ValueError(f"{bad} only applies to shape='step', not shape={shape!r}")
        if switch_at is not None and num_steps is not None:
            raise ValueError(f"give switch_at={switch_at} or num_steps={num_steps}, not both")
        if switch_at is not None:
            switch_at = _progress(switch_at, "switch_at")
            if not self.start_progress <= switch_at <= self.end_progress:
                raise ValueError(
                    f"switch_at={switch_at} must lie in [start_progress, end_progress] = "
                    f"[{self.start_progress}, {self.end_progress}]"
                )
        if num_steps is not None and (isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 2):
            raise ValueError(f"num_steps={num_steps} must be an integer >= 2 (the first stage is start, the last end)")
        self.shape = shape
        self.switch_at = switch_at
        self.num_steps = None if num_steps is None else int(num_steps)

    def fraction(self, progress: float) -> float:
        """The mixing fraction s(p) ∈ [0, 1] between ``start`` (0) and ``end`` (1)."""
        p0, p1 = self.start_progress, self.end_progress
        s = min(max((progress - p0) / (p1 - p0), 0.0), 1.0)
        if self.shape == "linear":
            return s
        if self.shape == "cosine":
            return (1.0 - math.cos(math.pi * s)) / 2.0
        if self.num_steps is not None:
            stage = min(int(math.floor(s * self.num_steps)), self.num_steps - 1)
            return stage / (self.num_steps - 1)
        switch = self.switch_at if self.switch_at is not None else (p0 + p1) / 2
        return 1.0 if progress >= switch else 0.0

    def window(self, progress: float) -> tuple[float, float]:
        s = self.fraction(progress)
        return (
            (1 - s) * self.start[0] + s * self.end[0],
            (1 - s) * self.start[1] + s * self.end[1],
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(start={self.start}, end={self.end}, shape={self.shape!r}, "
            f"progress=[{self.start_progress}, {self.end_progress}], seed={self.seed})"
        )


class LinearCurriculum(WindowCurriculum):
    """:class:`WindowCurriculum` with ``shape="linear"``: default U[0, 1] into [0.45, 0.55]."""

    def __init__(
        self,
        start: tuple[float, float] = (0.0, 1.0),
        end: tuple[float, float] = (0.45, 0.55),
        start_progress: float = 0.0,
        end_progress: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(start, end, "linear", start_progress, end_progress, **kwargs)


class CosineCurriculum(WindowCurriculum):
    """:class:`WindowCurriculum` with ``shape="cosine"``."""

    def __init__(
        self,
        start: tuple[float, float] = (0.0, 1.0),
        end: tuple[float, float] = (0.45, 0.55),
        start_progress: float = 0.0,
        end_progress: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(start, end, "cosine", start_progress, end_progress, **kwargs)


class StepCurriculum(WindowCurriculum):
    """:class:`WindowCurriculum` with ``shape="step"``: one switch at ``switch_at`` or ``num_steps`` stages."""

    def __init__(
        self,
        start: tuple[float, float] = (0.0, 1.0),
        end: tuple[float, float] = (0.45, 0.55),
        start_progress: float = 0.0,
        end_progress: float = 1.0,
        switch_at: float | None = None,
        num_steps: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(start, end, "step", start_progress, end_progress, switch_at, num_steps, **kwargs)


class WarmStart(_WindowMixin, Curriculum):
    r"""U[eps, 1] for the first ``warmup_progress`` of training, then the target ``window``.

    With ``blend_progress = d > 0`` the window ends move linearly from (0, 1) to ``window`` over
    progress [w, w + d] (w = ``warmup_progress``); with d = 0 the switch is abrupt at w.
    """

    def __init__(
        self,
        window: tuple[float, float] = (0.45, 0.55),
        warmup_progress: float = 0.1,
        blend_progress: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.target = _window(window, "window", self.eps)
        self.warmup_progress = _progress(warmup_progress, "warmup_progress")
        self.blend_progress = _progress(blend_progress, "blend_progress")
        if self.warmup_progress + self.blend_progress > 1.0 + 1e-12:
            raise ValueError(
                f"warmup_progress + blend_progress = {warmup_progress} + {blend_progress} exceeds 1: "
                f"the target window would never be reached"
            )

    def window(self, progress: float) -> tuple[float, float]:
        w, d = self.warmup_progress, self.blend_progress
        if progress < w:
            s = 0.0
        elif d == 0.0 or progress >= w + d:
            s = 1.0
        else:
            s = (progress - w) / d
        return (s * self.target[0], (1 - s) * 1.0 + s * self.target[1])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(window={self.target}, warmup_progress={self.warmup_progress}, "
            f"blend_progress={self.blend_progress}, seed={self.seed})"
        )


class Mixture(MaskRatioSampler):
    r"""A fixed mixture of windows: with probability :math:`w_j` (normalised), t ~ U[windows[j]].

    Inverse CDF on u alone: with cumulative weights :math:`c_0 = 0 < c_1 < \dots < c_m = 1`, the
    component is the j with :math:`c_j \le u < c_{j+1}` and
    :math:`t = a_j + (b_j - a_j)\,(u - c_j)/w_j` (:math:`a_j` floored at eps), so stratified u stay
    stratified and no extra randomness is needed. Mean :math:`\sum_j w_j (a_j + b_j)/2`.
    Default: 80 % [0.45, 0.55] + 20 % U[0, 1]. Windows may overlap.
    """

    def __init__(
        self,
        windows: Sequence[tuple[float, float]] = ((0.45, 0.55), (0.0, 1.0)),
        weights: Sequence[float] = (0.8, 0.2),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        windows = list(windows)
        weights = [float(w) for w in weights]
        if not windows:
            raise ValueError("windows=[] is empty: give at least one (t_min, t_max) window")
        if len(weights) != len(windows):
            raise ValueError(
                f"weights={weights} has {len(weights)} entries but windows has {len(windows)}: give one weight per window"
            )
        for w in weights:
            if not (math.isfinite(w) and w >= 0.0):
                raise ValueError(f"weights={weights} contains {w}: weights must be finite and >= 0")
        total = sum(weights)
        if total <= 0.0:
            raise ValueError(f"weights={weights} sum to {total}: at least one weight must be > 0")
        self.windows = [_window(win, f"windows[{j}]", self.eps) for j, win in enumerate(windows)]
        self.weights = [w / total for w in weights]
        low = torch.tensor([max(self.eps, a) for a, _ in self.windows], dtype=torch.float64)
        high = torch.tensor([b for _, b in self.windows], dtype=torch.float64)
        prob = torch.tensor(self.weights, dtype=torch.float64)
        cum = torch.cumsum(prob, 0)
        cum[-1] = 1.0
        self._low, self._high, self._prob = low, high, prob
        self._cum_low = torch.cat([torch.zeros(1, dtype=torch.float64), cum[:-1]])

    def component(self, u: torch.Tensor) -> torch.Tensor:
        """Index of the mixture component of each uniform (zero-weight components are never chosen)."""
        edges = self._cum_low[1:].to(u.device)
        j = torch.searchsorted(edges, u.to(torch.float64).contiguous(), right=True)
        return j.clamp(max=len(self.windows) - 1)

    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        u = u.to(torch.float64)
        j = self.component(u)
        dev = u.device
        prob = self._prob.to(dev)[j]
        v = ((u - self._cum_low.to(dev)[j]) / prob.clamp(min=1e-300)).clamp(0.0, 1.0)
        low, high = self._low.to(dev)[j], self._high.to(dev)[j]
        return low + (high - low) * v

    def support(self, progress: float = 0.0) -> tuple[float, float]:
        """The smallest interval containing every component of positive weight."""
        active = [j for j, w in enumerate(self.weights) if w > 0]
        return float(min(self._low[active])), float(max(self._high[active]))

    def analytic_mean(self, progress: float = 0.0) -> float:
        return float((self._prob * (self._low + self._high) / 2).sum())

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.3g}·U{list(win)}" for win, w in zip(self.windows, self.weights))
        return f"{type(self).__name__}({parts}, seed={self.seed})"
