"""The base class of every mask-ratio sampler.

A sampler is a Lightning ``Callback`` that decides the mask ratio t of each training sequence.
Subclasses override exactly one method, :meth:`MaskRatioSampler.sample`, which maps uniforms
``u ~ U(0, 1)`` (one per sequence of the batch) and the training progress in [0, 1] to mask ratios
(inverse-CDF sampling). The base class owns everything else, and hands the module what it needs
for a micro-batch through one call, :meth:`MaskRatioSampler.draw_batch` (a :class:`MaskDraw`: t, the
token-mask uniforms and optional per-sequence weights):

- the randomness: ``u`` is a pure function of (seed, optimizer step, global row index)
  (:mod:`mdlm.rng`), so draws never repeat across ranks, do not depend on workers, and resume
  exactly from a checkpoint. The global batch of one optimizer step is the concatenation of every
  accumulation micro-step's micro-batches of every data-parallel rank (:func:`global_batch_rows`):
  with A accumulation steps, W ranks and micro-batch B, row ``j = a·W·B + r·B + i`` of
  ``G = A·W·B``, so a run on W ranks draws the same t as one process on the same global batch;
- optional stratification of ``u`` over that global batch: ``u_j = (j + v_j) / G`` for global row
  j of G (lower variance, same marginal distribution; each rank and micro-step takes its own strata);
- the floor ``t >= eps`` (default 1e-3) and the ceiling ``t <= 1``;
- checkpointed state (seed, number of draws) and logging of t (mean, and a TensorBoard histogram).

A user-defined schedule, e.g. t = U[0, 1]^2 (more low mask ratios)::

    class Squared(MaskRatioSampler):
        def sample(self, u, progress):
            return u ** 2
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mdlm.rng import keyed_uniform

#: stream identifiers folded into the keyed RNG so t and masks use independent numbers
STREAM_T = 0x7A11
STREAM_MASK = 0x3A5C


def resolve_seed(seed: int | None) -> int:
    """An explicit seed, else the one `seed_everything` recorded (``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def training_progress(step: int, total_steps: float) -> float:
    r"""Progress of optimizer step ``step`` (0-based) of a run of ``total_steps``: :math:`s / (S - 1)`.

    The first step has progress 0 and the last (step S − 1) progress 1, so a curriculum reaches its
    final window; 0 for an unknown (infinite) length, 1 for a one-step run.
    """
    if not math.isfinite(total_steps) or total_steps <= 0:
        return 0.0
    if total_steps <= 1:
        return 1.0
    return min(1.0, step / (total_steps - 1))


def global_batch_rows(
    batch_size: int, micro_step: int, rank: int, world_size: int, accumulate: int = 1
) -> tuple[int, int]:
    r"""``(first_row, global_batch_size)`` of one micro-batch inside its optimizer step's global batch.

    Micro-step ``a`` (0 <= a < A) of data-parallel rank ``r`` (0 <= r < W) holds rows
    :math:`aWB + rB, \dots, aWB + rB + B - 1` of :math:`G = AWB` (micro-batches of equal size B).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if accumulate < 1 or not 0 <= micro_step < accumulate:
        raise ValueError(f"micro_step={micro_step} must lie in [0, accumulate={accumulate}) with accumulate >= 1")
    return (micro_step * world_size + rank) * batch_size, accumulate * world_size * batch_size


@dataclass(frozen=True)
class MaskDraw:
    """What a sampler hands the module for one micro-batch of B sequences of length L.

    Attributes:
        t: mask ratios, float32 [B] in [eps, 1].
        uniforms: keyed uniforms, float32 [B, L]: maskable token i of row b is masked iff
            ``uniforms[b, i] < t[b]`` (:func:`mdlm.objective.mask_tokens`).
        weights: per-sequence loss weights, float32 [B] (importance weights p(t)/q(t)), or None (all 1).
    """

    t: torch.Tensor
    uniforms: torch.Tensor
    weights: torch.Tensor | None = None


class MaskRatioSampler(Callback):
    """Base class: override :meth:`sample` (uniforms and progress -> t).

    Args:
        eps: floor on t (the 1/t weight and the per-token bound are undefined at t = 0).
        seed: seed of the keyed RNG; ``None`` takes the run's ``seed_everything`` value.
        stratified: stratify the uniforms over the global batch.
        log_every_n_steps: how often t is logged (histogram + mean); 0 disables logging.
    """

    def __init__(
        self,
        eps: float = 1e-3,
        seed: int | None = None,
        stratified: bool = False,
        log_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps={eps} must lie in (0, 1)")
        self.eps = float(eps)
        self._seed_arg = seed
        self.seed = resolve_seed(seed)
        self.stratified = bool(stratified)
        self.log_every_n_steps = int(log_every_n_steps)
        self.num_draws = 0
        self.last_t: torch.Tensor | None = None

    # ------------------------------------------------------------------ the method to override
    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        """Map uniforms ``u`` (shape [B], in (0, 1)) at training ``progress`` in [0, 1] to t (shape [B])."""
        raise NotImplementedError(f"{type(self).__name__} must override sample(u, progress)")

    # ------------------------------------------------------------------ machinery
    def uniforms(
        self, batch_size: int, step: int, first_index: int = 0, global_batch_size: int | None = None, device=None
    ) -> torch.Tensor:
        """The keyed uniforms of one micro-batch: rows ``first_index .. first_index + batch_size - 1``."""
        index = torch.arange(first_index, first_index + batch_size, device=device)
        u = keyed_uniform((self.seed, STREAM_T, step, index), device=device, dtype=torch.float64)
        if self.stratified:
            g = global_batch_size or batch_size
            u = (index.to(torch.float64) + u) / g
        return u

    def draw(
        self,
        batch_size: int,
        progress: float,
        step: int,
        first_index: int = 0,
        global_batch_size: int | None = None,
        device=None,
    ) -> torch.Tensor:
        """t for one micro-batch (float32, in [eps, 1]); counts the draw and remembers it for logging."""
        u = self.uniforms(batch_size, step, first_index, global_batch_size, device=device)
        t = self.sample(u, float(min(max(progress, 0.0), 1.0)))
        t = torch.as_tensor(t, dtype=torch.float64, device=u.device)
        if t.shape != (batch_size,):
            raise ValueError(f"{type(self).__name__}.sample returned shape {tuple(t.shape)}, expected ({batch_size},)")
        t = t.clamp(min=self.eps, max=1.0).to(torch.float32)
        self.num_draws += 1
        self.last_t = t.detach()
        return t

    def draw_batch(
        self,
        shape: tuple[int, int],
        progress: float,
        step: int,
        first_index: int = 0,
        global_batch_size: int | None = None,
        device=None,
    ) -> MaskDraw:
        """The module's one call per training micro-batch of ``shape = (B, L)``: t (:meth:`draw`), the
        token-mask uniforms (:meth:`mask_uniforms`) and the sequence weights (None here).

        Rows ``first_index .. first_index + B - 1`` of the optimizer step's global batch of
        ``global_batch_size`` (:func:`global_batch_rows`); ``progress`` in [0, 1], ``step`` the optimizer step.
        """
        B, L = shape
        t = self.draw(B, progress, step, first_index, global_batch_size, device=device)
        return MaskDraw(t, self.mask_uniforms((B, L), step, first_index, device=device))

    def mask_uniforms(self, shape: tuple[int, int], step: int, first_index: int = 0, device=None) -> torch.Tensor:
        """Keyed uniforms for the token masks of one micro-batch (shape [B, L])."""
        B, L = shape
        index = torch.arange(first_index, first_index + B, device=device).unsqueeze(1)
        pos = torch.arange(L, device=device).unsqueeze(0)
        return keyed_uniform((self.seed, STREAM_MASK, step, index, pos), device=device, dtype=torch.float32)

    def mean(self, progress: float = 0.0, num: int = 100_000) -> float:
        """Monte-Carlo-free mean of t at ``progress`` via a fine midpoint grid of u (inverse CDF)."""
        u = (torch.arange(num, dtype=torch.float64) + 0.5) / num
        t = torch.as_tensor(self.sample(u, progress), dtype=torch.float64).clamp(min=self.eps, max=1.0)
        return float(t.mean())

    # ------------------------------------------------------------------ callback hooks
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.last_t is None or self.log_every_n_steps <= 0:
            return
        if trainer.global_step % self.log_every_n_steps != 0:
            return
        pl_module.log("train/t_mean", self.last_t.mean(), on_step=True, on_epoch=False)
        logger = trainer.logger
        experiment = getattr(logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_histogram"):
            experiment.add_histogram("train/t", self.last_t.float().cpu(), global_step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_draws": self.num_draws, "stratified": self.stratified, "eps": self.eps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
        self.num_draws = int(state_dict["num_draws"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, seed={self.seed}, stratified={self.stratified})"
