"""Curricula: the window moves with training progress."""

from __future__ import annotations

import torch

from mdlm.samplers.base import MaskRatioSampler
from mdlm.samplers.windows import check_window


class Curriculum(MaskRatioSampler):
    """Base class of curricula: override :meth:`window` (progress -> (t_min, t_max)).

    t ~ U[max(eps, t_min(p)), t_max(p)] at progress p = global_step / estimated_stepping_batches.
    """

    def window(self, progress: float) -> tuple[float, float]:
        raise NotImplementedError(f"{type(self).__name__} must override window(progress)")

    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        t_min, t_max = self.window(progress)
        low = max(self.eps, t_min)
        return low + (t_max - low) * u


class LinearCurriculum(Curriculum):
    """Linear interpolation from the ``start`` window to the ``end`` window.

    (t_min, t_max)(p) = (1 - s) start + s end with s = clip((p - p0) / (p1 - p0), 0, 1), where
    p0 = ``start_progress`` and p1 = ``end_progress``. Default: U[0, 1] into [0.45, 0.55].
    """

    def __init__(
        self,
        start: tuple[float, float] = (0.0, 1.0),
        end: tuple[float, float] = (0.45, 0.55),
        start_progress: float = 0.0,
        end_progress: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_window(*start, self.eps)
        check_window(*end, self.eps)
        if not 0.0 <= start_progress < end_progress <= 1.0:
            raise ValueError(
                f"need 0 <= start_progress < end_progress <= 1, got start_progress={start_progress}, "
                f"end_progress={end_progress}"
            )
        self.start = (float(start[0]), float(start[1]))
        self.end = (float(end[0]), float(end[1]))
        self.start_progress = float(start_progress)
        self.end_progress = float(end_progress)

    def window(self, progress: float) -> tuple[float, float]:
        s = (progress - self.start_progress) / (self.end_progress - self.start_progress)
        s = min(max(s, 0.0), 1.0)
        return (
            (1 - s) * self.start[0] + s * self.end[0],
            (1 - s) * self.start[1] + s * self.end[1],
        )
