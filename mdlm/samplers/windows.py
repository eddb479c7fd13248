"""Fixed-shape samplers: the full range, a window, a fixed ratio, one bin of m equal bins."""

from __future__ import annotations

import torch

from mdlm.samplers.base import MaskRatioSampler


def check_window(t_min: float, t_max: float, eps: float) -> None:
    """Raise a ValueError naming the bad value unless 0 <= t_min < t_max <= 1 and t_max > eps."""
    if not 0.0 <= t_min <= 1.0:
        raise ValueError(f"t_min={t_min} lies outside [0, 1]")
    if not 0.0 <= t_max <= 1.0:
        raise ValueError(f"t_max={t_max} lies outside [0, 1]")
    if t_min > t_max:
        raise ValueError(f"t_min={t_min} > t_max={t_max}: a window needs t_min < t_max")
    if t_min == t_max:
        raise ValueError(f"t_min == t_max == {t_min}: use Fixed(t={t_min}) for a single mask ratio")
    if t_max <= eps:
        raise ValueError(f"the window [{t_min}, {t_max}] is empty after the floor eps={eps}: need t_max > eps")


class Window(MaskRatioSampler):
    """t ~ U[max(eps, t_min), t_max]: e.g. the signal-rich [0.45, 0.55] or the high-mask [0.5, 1.0].

    Inverse CDF: t = a + (b - a) u with a = max(eps, t_min), b = t_max; mean (a + b) / 2.
    """

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        check_window(t_min, t_max, self.eps)
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    @property
    def low(self) -> float:
        return max(self.eps, self.t_min)

    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        return self.low + (self.t_max - self.low) * u

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min}, t_max={self.t_max}, eps={self.eps}, seed={self.seed})"


class Uniform(Window):
    """t ~ U[eps, 1], the standard MD training distribution."""

    def __init__(self, **kwargs) -> None:
        super().__init__(t_min=0.0, t_max=1.0, **kwargs)


class Fixed(MaskRatioSampler):
    """t = constant for every sequence (0 < t <= 1)."""

    def __init__(self, t: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < t <= 1.0:
            raise ValueError(f"Fixed(t={t}): t must lie in (0, 1]; t = 0 masks nothing and its 1/t weight is infinite")
        if t < self.eps:
            raise ValueError(f"Fixed(t={t}) lies below the floor eps={self.eps}")
        self.t = float(t)

    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        return torch.full_like(u, self.t)


class Bins(Window):
    """Bin ``index`` of ``num_bins`` equal bins of [0, 1]: t ~ U[max(eps, i/m), (i+1)/m].

    ``Bins(index=4)`` is the paper's [0.4, 0.5] run of the ten-bin ablation.
    """

    def __init__(self, index: int = 0, num_bins: int = 10, **kwargs) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins={num_bins} must be >= 1")
        if not 0 <= index < num_bins:
            raise ValueError(f"bin index={index} must lie in [0, {num_bins - 1}] for num_bins={num_bins}")
        self.index = int(index)
        self.num_bins = int(num_bins)
        super().__init__(t_min=index / num_bins, t_max=(index + 1) / num_bins, **kwargs)
