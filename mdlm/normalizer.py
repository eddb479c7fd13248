r"""Normalising micro-batch losses by the normaliser of the whole optimizer step's global batch.

An optimizer step sees A accumulation micro-steps on each of W data-parallel ranks. With the loss of
micro-batch (a, r) written as a ratio :math:`N_{a,r} / Z_{a,r}` (:func:`mdlm.objective.md_loss_parts`),
the loss of the step is the ratio of the sums,

.. math:: \mathcal{L} = \frac{\sum_{a,r} N_{a,r}}{\max(1, \sum_{a,r} Z_{a,r})},

which equals one process on the same global batch even when Z is random (``masked_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class GlobalBatchNormalizer:
    r"""Divides each micro-batch's N by the global batch's Z; one instance per training run.

    :meth:`__call__` (every micro-step) all-reduces :math:`(N, Z)` over the W ranks and returns the loss to
    back-propagate, :math:`W N_{a,r} / Z_{\mathrm{ref}}` with :math:`Z_{\mathrm{ref}} = \max(1, \sum_r Z_{0,r})`
    (the window's first micro-step). DDP/FSDP average gradients over the ranks and Lightning divides by
    A, so the accumulated gradient is :math:`\sum_{a,r} \nabla N_{a,r} / (A Z_{\mathrm{ref}})`;
    :meth:`rescale_gradients` (before the optimizer step) multiplies it by
    :math:`A Z_{\mathrm{ref}} / \max(1, \sum_{a,r} Z_{a,r})`, giving :math:`\nabla \mathcal{L}` (a no-op for A = 1).
    """

    def __init__(self) -> None:
        self._reference: torch.Tensor | None = None  # Z_ref of the open window
        self._total: torch.Tensor | None = None  # running sum of the window's global Z

    def __call__(
        self, numerator: torch.Tensor, normaliser: torch.Tensor, micro_step: int, world_size: int, group: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""(loss to back-propagate, global micro-batch loss :math:`\sum_r N_r / \max(1, \sum_r Z_r)` to log).

        ``micro_step`` 0 opens a new window; ``group`` is the data-parallel process group (None: the default).
        """
        parts = torch.stack([numerator.detach().float(), normaliser.detach().float()])
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(parts, op=dist.ReduceOp.SUM, group=group)
        z = parts[1].clamp(min=1)
        if micro_step == 0 or self._reference is None:
            self._reference, self._total = z, parts[1].clone()
        else:
            self._total = self._total + parts[1]
        loss = numerator / self._reference.to(numerator.dtype)
        if world_size > 1:
            loss = loss * world_size
        return loss, parts[0] / z

    def gradient_scale(self, accumulate: int) -> float:
        r""":math:`A Z_{\mathrm{ref}} / \max(1, \sum_{a,r} Z_{a,r})` of the open window, and close it (1.0 when A = 1
        or no window is open)."""
        reference, total = self._reference, self._total
        self._reference = self._total = None
        if reference is None or accumulate == 1:
            return 1.0
        return float(accumulate * reference / total.clamp(min=1))

    def rescale_gradients(self, parameters: Iterable[torch.nn.Parameter], accumulate: int) -> None:
        """Multiply the accumulated gradients by :meth:`gradient_scale` (in place; skipped when it is 1)."""
        factor = self.gradient_scale(accumulate)
        if factor == 1.0:
            return
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(factor)
