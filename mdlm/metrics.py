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
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class NELBO(Metric):
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


class TokenAccuracy(Metric):
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
