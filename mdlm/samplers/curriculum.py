"""Curricula: the window moves with training progress."""

from __future__ import annotations

import torch

from mdlm.samplers.base import MaskRatioSampler


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
