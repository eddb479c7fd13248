r"""torchmetrics for masked diffusion evaluation.

:class:`NELBO` accumulates, in float64 sum states (correct under DDP: states are summed, never an
average of per-batch means),

.. math:: \mathrm{NELBO}/\mathrm{token} = \frac{\sum_b \frac{1}{t_b}\sum_i m_{bi}\,\ell_{bi}}{\sum_b |\mathrm{maskable}_b|},
   \qquad \mathrm{PPL\ bound} = \exp(\mathrm{NELBO}/\mathrm{token}),

for t drawn over the full range [eps, 1]; and the contribution of each evaluation-t bin
:math:`[j/K, (j+1)/K)`, normalised by the bin width :math:`1/K` so that

.. math:: \frac{1}{K}\sum_j \mathrm{bin}_j = \mathrm{NELBO}/\mathrm{token}

exactly. ``bin_j`` reads as the loss density at t in bin j: with uniform t it estimates
:math:`E[\frac{1}{t}\sum_i m_i\ell_i \mid t \in \mathrm{bin}_j] / E|\mathrm{maskable}|`.

Both metrics derive from :class:`FixedDtypeMetric`, so their float64 states stay float64 under
every ``trainer.precision`` (``bf16-true`` and ``16-true`` cast the whole LightningModule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torchmetrics import Metric


def _keep_dtype(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` where it keeps the dtype (device moves, ``to_empty``, ...); a device move of the
    *original* tensor where ``fn`` would change the dtype (so no value is ever rounded)."""

    def apply(tensor: Tensor) -> Tensor:
        out = fn(tensor)
        return out if out.dtype == tensor.dtype else tensor.to(device=out.device)

    return apply


class FixedDtypeMetric(Metric):
    """A Metric whose states keep the dtype they were declared with (float64 sums here).

    torchmetrics casts floating states whenever the owning module is cast through
    ``Module.to(dtype)`` / ``to(tensor)`` (only ``.half()``/``.float()``/``.double()``/``.type()``
    are guarded), which is what Lightning's ``bf16-true``/``16-true`` precision does: sums then
    lose their precision (bf16 counts stop being exact past 256) and float64 updates fail to
    ``index_add_`` into them. Here every module function is still applied to the states, their
    defaults and the cached results, except that a dtype change is dropped: device moves work,
    dtypes never change (``set_dtype`` included), and :attr:`dtype` keeps its value.
    """

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> nn.Module:
        excluded = {exclude_state} if isinstance(exclude_state, str) else set(exclude_state)
        dtype, computed, forward_cache = self._dtype, self._computed, self._forward_cache
        self._computed = self._forward_cache = None  # handled below, without the cast
        # torchmetrics applies `fn` to parameters/buffers and updates `device`; the states are ours
        this = super()._apply(fn, exclude_state=tuple(self._defaults))
        keep = _keep_dtype(fn)
        for key, default in this._defaults.items():
            if key in excluded:
                continue
            this._defaults[key] = apply_to_collection(default, Tensor, keep)
            setattr(this, key, apply_to_collection(getattr(this, key), Tensor, keep))
        this._computed = apply_to_collection(computed, Tensor, keep)
        this._forward_cache = apply_to_collection(forward_cache, Tensor, keep)
        this._dtype = dtype
        return this


class NELBO(FixedDtypeMetric):
    """NELBO per token, perplexity bound and the per-t-bin decomposition (float64 states)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, num_bins: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_bins < 1:
            raise ValueError(f"num_bins={num_bins} must be >= 1")
        self.num_bins = num_bins
        self.add_state("nelbo_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("token_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bin_sum", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bin_sequences", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sequence_nelbo: torch.Tensor, maskable_count: torch.Tensor, t: torch.Tensor) -> None:
        """``sequence_nelbo`` [B] = (1/t_b) Σ_i m_bi ℓ_bi; ``maskable_count`` [B]; ``t`` [B]."""
        sequence_nelbo = sequence_nelbo.to(torch.float64)
        self.nelbo_sum += sequence_nelbo.sum()
        self.token_count += maskable_count.to(torch.float64).sum()
        bins = (t.to(torch.float64) * self.num_bins).long().clamp(0, self.num_bins - 1)
        self.bin_sum.index_add_(0, bins, sequence_nelbo)
        self.bin_sequences.index_add_(0, bins, torch.ones_like(sequence_nelbo))

    def compute(self) -> dict[str, torch.Tensor]:
        tokens = self.token_count.clamp(min=1)
        nelbo = self.nelbo_sum / tokens
        out = {"nelbo": nelbo, "ppl": torch.exp(nelbo), "tokens": self.token_count}
        bins = self.bin_sum / tokens * self.num_bins
        for j in range(self.num_bins):
            out[f"nelbo_bin/{j / self.num_bins:.1f}-{(j + 1) / self.num_bins:.1f}"] = bins[j]
        return out


class TokenAccuracy(FixedDtypeMetric):
    """Accuracy of predictions at query positions (e.g. the parity label), summed counts."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor, where: torch.Tensor) -> None:
        self.correct += ((predictions == targets) & where).sum().to(torch.float64)
        self.total += where.sum().to(torch.float64)

    def compute(self) -> torch.Tensor:
        if self.total == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.correct / self.total
