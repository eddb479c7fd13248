r"""Mask-ratio theory for k-parity (Huang & Mirzasoleiman, 2026).

With secret set S (|S| = k) and the label at position n+1, a masked sequence is in the *signal*
regime when exactly one of the k+1 positions of S ∪ {label} is masked: that token is then
determined by the visible rest. For a mask ratio t this happens with probability
:math:`(k+1)\,t(1-t)^k`, maximal at the signal-optimal point :math:`t^* = 1/(k+1)`. For
:math:`t \sim U[t_0, t_1]`:

.. math:: P_S(t_0, t_1) = \frac{k+1}{t_1 - t_0} \int_{t_0}^{t_1} t(1-t)^k\,dt,
   \qquad \int_0^a t(1-t)^k dt = \frac{1 - (1-a)^{k+1}}{k+1} - \frac{1 - (1-a)^{k+2}}{k+2}.

With :math:`t_0 = 0` the best :math:`t_1^*` maximises :math:`P_S(0, t_1)`; for k = 6 it is 0.246
(:math:`P_S = 0.317`, against :math:`1/(k+2) = 0.125` for U[0, 1]).
"""

from __future__ import annotations

from typing import Literal

import torch

from mdlm.samplers.base import MaskRatioSampler


def _integral(k: int, a: float) -> float:
    """∫_0^a t (1 - t)^k dt in closed form."""
    return (1 - (1 - a) ** (k + 1)) / (k + 1) - (1 - (1 - a) ** (k + 2)) / (k + 2)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")


def signal_probability(k: int, t_min: float = 0.0, t_max: float = 1.0) -> float:
    """P_S for t ~ U[t_min, t_max] (or the point value (k+1) t (1-t)^k when t_min == t_max)."""
    _check_k(k)
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if t_min == t_max:
        return (k + 1) * t_min * (1 - t_min) ** k
    return (k + 1) * (_integral(k, t_max) - _integral(k, t_min)) / (t_max - t_min)


def signal_optimal_point(k: int) -> float:
    """t* = 1/(k+1), the maximiser of (k+1) t (1-t)^k."""
    _check_k(k)
    return 1.0 / (k + 1)


def signal_optimal_window_max(k: int, tol: float = 1e-10) -> float:
    """t1* = argmax over t1 in (0, 1] of P_S(0, t1), by golden-section search on a unimodal function."""
    _check_k(k)
    lo, hi = 1e-9, 1.0
    inv_phi = (5**0.5 - 1) / 2
    a, b = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
    fa, fb = signal_probability(k, 0.0, a), signal_probability(k, 0.0, b)
    while hi - lo > tol:
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + inv_phi * (hi - lo)
            fb = signal_probability(k, 0.0, b)
        else:
            hi, b, fb = b, a, fa
            a = hi - inv_phi * (hi - lo)
            fa = signal_probability(k, 0.0, a)
    return (lo + hi) / 2


class ParitySignalOptimal(MaskRatioSampler):
    """The paper's parity schedule for secret size ``k``.

    ``mode="window"``: t ~ U[eps, t1*] with t1* maximising P_S (0.246 for k = 6);
    ``mode="point"``: t = 1/(k+1) for every sequence.
    """

    def __init__(self, k: int = 6, mode: Literal["window", "point"] = "window", **kwargs) -> None:
        super().__init__(**kwargs)
        _check_k(k)
        if mode not in ("window", "point"):
            raise ValueError(f"mode={mode!r} must be 'window' or 'point'")
        self.k = int(k)
        self.mode = mode
        self.t_max = signal_optimal_window_max(k) if mode == "window" else signal_optimal_point(k)

    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        if self.mode == "point":
            return torch.full_like(u, self.t_max)
        return self.eps + (self.t_max - self.eps) * u

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, mode={self.mode!r}, t_max={self.t_max:.4f}, seed={self.seed})"
