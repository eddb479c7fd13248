r"""An adaptive mask-ratio sampler: put training where the probe loss is currently falling fastest.

:class:`AdaptiveBins` is not told where learning happens (k for k-parity, t* for text); it measures
it. t ∈ [eps, 1] is cut into ``num_bins`` equal bins :math:`B_j` (bin 0 starts at eps) with target
masses :math:`p_j = |B_j| / (1 - \epsilon)` (those of U[eps, 1]). Sampling is an inverse CDF on u
alone: the bin from the cumulative bin probabilities :math:`q`, then t uniform within the bin
(stratified u stay stratified). q = p until the first update; then:

1. **Probe.** A fixed batch, kept for the run and checkpointed: the first ``probe_size`` sequences
   of the first training batch (``probe_source="train"``) or of the first validation batch
   (``"val"``). Its token masks are keyed uniforms :math:`v_{bi}` fixed for the run; bin j masks
   :math:`v_{bi} < c_j` at the bin centre :math:`c_j` (nested masks, the same at every measurement).
2. **Measure.** At the first training batch and then every ``update_every`` optimizer steps
   (``on_train_batch_end``), ``num_bins`` no-grad, eval-mode forwards on the probe (train/eval flags
   restored) give the per-bin loss :math:`L_j`: the 1/t-weighted masked cross-entropy per maskable
   token at :math:`t = c_j`, whatever the module's ``loss_weight``. Averaged over DDP ranks (every
   rank keeps the same q); the probe tokens are counted in ``extra_forward_tokens``.
3. **Signal.** :math:`r_j = \log L_j^{prev} - \log L_j^{now}`, smoothed by an EMA
   :math:`s \leftarrow \beta s + (1-\beta) r` (``smoothing`` = β; the first update takes :math:`s = r`).
4. **Allocation.** A tilted softmax with a floor:

   .. math:: q_j = (1 - m\,\mu)\,
             \frac{p_j \exp(s_j / (\tau S))}{\sum_i p_i \exp(s_i / (\tau S))} + \mu,
             \qquad S = \max(\max_i |s_i|,\ \sigma)

   with τ = ``temperature``, μ = ``min_prob``, m = ``num_bins`` and σ = ``min_signal`` (signals below
   σ fade the tilt to q = p). Everything is deterministic given the seed.

``mode="distribution"`` trains on t ~ q (a different objective, like the paper's windows).
``mode="importance"`` draws t ~ q but weights each sequence by :math:`w = p_j / q_j` for t in bin j,
so :math:`E_q[w\,f(t)] = E_p[f(t)]`: the weighted loss stays an unbiased NELBO estimate (for the
``batch_tokens``, ``maskable_tokens`` and ``per_sequence`` normalisations, whose denominators do
not depend on t; ``masked_tokens`` is biased anyway). The weights are :attr:`importance_weights`
and the ``weights`` of :meth:`draw_batch`'s :class:`~mdlm.samplers.base.MaskDraw`; they belong to
the draw that made them (q changes only between steps, in ``on_train_batch_end``).

Why each choice (the log-ratio signal, the normalised temperature, σ, the floor) and what was
measured: ``docs/adaptive.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from mdlm.objective import denoiser_nll, mask_tokens, md_loss
from mdlm.rng import keyed_uniform
from mdlm.samplers.base import MaskDraw, MaskRatioSampler

#: keyed-RNG stream of the probe masks (distinct from the training t and mask streams)
STREAM_PROBE = 0x9B0E
#: batch fields kept in the probe
PROBE_KEYS = ("input_ids", "maskable", "attention_mask")
MODES = ("distribution", "importance")
PROBE_SOURCES = ("train", "val")
_TINY = 1e-12

Mode = Literal["distribution", "importance"]
ProbeSource = Literal["train", "val"]


class AdaptiveBins(MaskRatioSampler):
    """Adaptive distribution over ``num_bins`` equal t bins, driven by the measured probe-loss decrease.

    See the module docstring for the rule and ``docs/adaptive.md`` for its reasoning.

    Args:
        num_bins: number of equal bins of [0, 1] (bin 0 starts at eps).
        update_every: optimizer steps between probe measurements / updates of q.
        mode: ``distribution`` (train on q) or ``importance`` (draw from q, weight by p/q so the
            objective stays the U[eps, 1] NELBO; :attr:`importance_weights`).
        temperature: τ > 0 of the tilted softmax; smaller is more concentrated.
        smoothing: β ∈ [0, 1) of the EMA of the per-bin log-loss decrease (0: last update only).
        min_prob: floor μ ∈ [0, 1/num_bins) on every bin probability.
        min_signal: σ >= 0, the smallest signal (log-loss decrease per update) acted on in full
            (0: scale-free; see the rule).
        probe_size: sequences of the first batch kept as the probe (None: the whole batch).
        probe_source: ``train`` (the first training batch) or ``val`` (the data module's first
            validation batch: held-out data).
        **kwargs: ``eps``, ``seed``, ``stratified``, ``log_every_n_steps`` of
            :class:`~mdlm.samplers.MaskRatioSampler`.

    Logging (``log_every_n_steps > 0``): every ``log_every_n_steps`` steps ``pl_module.log`` of
    ``adaptive/prob_binJJ`` (q), ``adaptive/probe_loss_binJJ``, ``adaptive/probe_nelbo``,
    ``adaptive/mean_t`` and ``adaptive/extra_forward_tokens`` (written by the Trainer at its own
    ``log_every_n_steps``; keep the two equal); at every update a TensorBoard histogram
    ``adaptive/allocation`` of q over t (written directly, so its time series has every update).

    Attributes:
        probs: q, float64 [num_bins]; ``target_probs``: p; ``signal``: the EMA s.
        probe_losses: the latest per-bin probe losses (None before the first measurement).
        importance_weights: p/q of the latest draw (importance mode), else None.
        extra_forward_tokens / extra_forward_passes: probe cost so far; ``num_updates``.
        history: ``[{"step", "probs", "probe_losses"}]`` per measurement.
    """

    def __init__(
        self,
        num_bins: int = 10,
        update_every: int = 50,
        mode: Mode = "distribution",
        temperature: float = 0.5,
        smoothing: float = 0.9,
        min_prob: float = 0.02,
        min_signal: float = 0.01,
        probe_size: int | None = None,
        probe_source: ProbeSource = "train",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"num_bins={num_bins} must be an integer >= 2")
        num_bins = int(num_bins)
        if self.eps >= 1.0 / num_bins:
            raise ValueError(
                f"eps={self.eps} leaves bin 0 = [eps, 1/num_bins] = [{self.eps}, {1 / num_bins}] empty: "
                f"need eps < 1/num_bins, i.e. num_bins < {math.ceil(1 / self.eps)}"
            )
        if isinstance(update_every, bool) or int(update_every) != update_every or update_every < 1:
            raise ValueError(f"update_every={update_every} must be an integer >= 1 (optimizer steps)")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(f"temperature={temperature} must be > 0")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing={smoothing} must lie in [0, 1) (the EMA factor of the signal)")
        if not 0.0 <= min_prob < 1.0 / num_bins:
            raise ValueError(
                f"min_prob={min_prob} must lie in [0, 1/num_bins) = [0, {1 / num_bins:.6g}) for num_bins={num_bins}"
            )
        if not (math.isfinite(min_signal) and min_signal >= 0.0):
            raise ValueError(f"min_signal={min_signal} must be >= 0 (0: scale-free)")
        if probe_source not in PROBE_SOURCES:
            raise ValueError(f"probe_source={probe_source!r} must be one of {PROBE_SOURCES}")
        if probe_size is not None and (isinstance(probe_size, bool) or int(probe_size) != probe_size or probe_size < 1):
            raise ValueError(f"probe_size={probe_size} must be a positive integer or None (the whole first batch)")
        self.num_bins = num_bins
        self.update_every = int(update_every)
        self.mode = mode
        self.temperature = float(temperature)
        self.smoothing = float(smoothing)
        self.min_prob = float(min_prob)
        self.min_signal = float(min_signal)
        self.probe_size = None if probe_size is None else int(probe_size)
        self.probe_source = probe_source

        edges = torch.arange(num_bins + 1, dtype=torch.float64) / num_bins
        self.bin_low = edges[:-1].clamp(min=self.eps)
        self.bin_high = edges[1:]
        self.bin_centres = (self.bin_low + self.bin_high) / 2
        self.target_probs = (self.bin_high - self.bin_low) / (1.0 - self.eps)

        self.probs = self.target_probs.clone()
        self.signal = torch.zeros(num_bins, dtype=torch.float64)
        self.probe_losses: torch.Tensor | None = None
        self.probe: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self.extra_forward_tokens = 0
        self.extra_forward_passes = 0
        self.last_update_step = -1
        self.history: list[dict[str, Any]] = []
        self.importance_weights: torch.Tensor | None = None
        self._last_bins: torch.Tensor | None = None

    # ------------------------------------------------------------------ sampling
    def bin_of(self, u: torch.Tensor) -> torch.Tensor:
        """The bin chosen by each uniform: inverse CDF of q (bins of zero probability are never chosen)."""
        cum = torch.cumsum(self.probs, 0).to(u.device)
        j = torch.searchsorted(cum[:-1].contiguous(), u.to(torch.float64).contiguous(), right=True)
        return j.clamp(max=self.num_bins - 1)

    def sample(self, u: torch.Tensor, progress: float) -> torch.Tensor:
        u = u.to(torch.float64)
        dev = u.device
        j = self.bin_of(u)
        probs = self.probs.to(dev)
        cum_low = (torch.cumsum(probs, 0) - probs)[j]
        v = ((u - cum_low) / probs[j].clamp(min=1e-300)).clamp(0.0, 1.0)
        low, high = self.bin_low.to(dev)[j], self.bin_high.to(dev)[j]
        self._last_bins = j
        return low + (high - low) * v

    def weights_for_bins(self, bins: torch.Tensor) -> torch.Tensor:
        """Importance weights p_j / q_j of bin indices (float64)."""
        ratio = self.target_probs / self.probs.clamp(min=1e-300)
        return ratio.to(bins.device)[bins]

    def importance_weight(self, t: torch.Tensor) -> torch.Tensor:
        """p(t)/q(t) for mask ratios t (float64); bins are found from t, so exact edges may round."""
        t = torch.as_tensor(t, dtype=torch.float64)
        j = torch.searchsorted(self.bin_high[:-1].to(t.device), t.contiguous(), right=True).clamp(max=self.num_bins - 1)
        return self.weights_for_bins(j)

    def draw(
        self,
        batch_size: int,
        progress: float,
        step: int,
        first_index: int = 0,
        global_batch_size: int | None = None,
        device=None,
    ) -> torch.Tensor:
        """As :meth:`MaskRatioSampler.draw`; in importance mode also sets :attr:`importance_weights`."""
        t = super().draw(batch_size, progress, step, first_index, global_batch_size, device=device)
        if self.mode == "importance":
            self.importance_weights = self.weights_for_bins(self._last_bins).to(device=t.device, dtype=torch.float32)
        return t

    def draw_batch(self, *args, **kwargs) -> MaskDraw:
        """As :meth:`MaskRatioSampler.draw_batch`, with the importance weights p/q in importance mode."""
        draw = super().draw_batch(*args, **kwargs)
        return dataclasses.replace(draw, weights=self.importance_weights) if self.mode == "importance" else draw

    def analytic_mean(self, progress: float = 0.0) -> float:
        """E_q[t] = Σ_j q_j c_j."""
        return float((self.probs * self.bin_centres).sum())

    def support(self, progress: float = 0.0) -> tuple[float, float]:
        active = torch.nonzero(self.probs > 0).flatten()
        return float(self.bin_low[active].min()), float(self.bin_high[active].max())

    # ------------------------------------------------------------------ the adaptive rule
    def allocation(self, signal: torch.Tensor) -> torch.Tensor:
        """q from the smoothed signal: the target masses tilted by softmax(s / (τ max(max|s|, σ))), floored at μ."""
        signal = signal.to(torch.float64)
        scale = max(float(signal.abs().max()), self.min_signal)
        z = signal / (self.temperature * scale) if scale > _TINY else torch.zeros_like(signal)
        q = torch.softmax(z + self.target_probs.log(), 0)
        return (1.0 - self.num_bins * self.min_prob) * q + self.min_prob

    def update(self, losses: torch.Tensor, step: int | None = None) -> None:
        """Take one measurement of the per-bin probe losses: the first sets the baseline, later ones update q."""
        losses = torch.as_tensor(losses, dtype=torch.float64).detach().cpu()
        if losses.shape != (self.num_bins,):
            raise ValueError(f"losses has shape {tuple(losses.shape)}, expected ({self.num_bins},) (one per bin)")
        if self.probe_losses is not None:
            prev = self.probe_losses
            ok = (prev > _TINY) & (losses > _TINY) & torch.isfinite(prev) & torch.isfinite(losses)
            rel = torch.where(ok, prev.clamp(min=_TINY).log() - losses.clamp(min=_TINY).log(), torch.zeros_like(prev))
            if self.num_updates == 0:
                self.signal = rel
            else:
                self.signal = self.smoothing * self.signal + (1.0 - self.smoothing) * rel
            self.probs = self.allocation(self.signal)
            self.num_updates += 1
        self.probe_losses = losses
        self.history.append({"step": step, "probs": self.probs.tolist(), "probe_losses": losses.tolist()})

    # ------------------------------------------------------------------ the probe
    def set_probe(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Keep the first ``probe_size`` sequences of ``batch`` (``input_ids`` and, if present, ``maskable``
        and ``attention_mask``) as the fixed probe."""
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"AdaptiveBins needs dict batches with 'input_ids' for its probe, got {keys}")
        n = int(batch["input_ids"].shape[0])
        size = n if self.probe_size is None else min(self.probe_size, n)
        if self.probe_size is not None and self.probe_size > n:
            warnings.warn(
                f"AdaptiveBins(probe_size={self.probe_size}) exceeds the probe batch's {n} sequences: the probe keeps {n}",
                UserWarning,
                stacklevel=2,
            )
        self.probe = {k: batch[k][:size].detach().clone() for k in PROBE_KEYS if batch.get(k) is not None}

    @torch.no_grad()
    def measure(self, pl_module: torch.nn.Module, trainer: Trainer | None = None) -> torch.Tensor:
        """Per-bin probe losses (float64 [num_bins]): one no-grad, eval-mode forward per bin centre.

        Needs ``pl_module(noisy, attention_mask) -> logits`` and ``pl_module.mask_token_id``;
        ``pl_module.suppressed`` (ids never predicted) defaults to ``[mask_token_id]``.
        """
        if self.probe is None:
            raise RuntimeError("AdaptiveBins.measure needs a probe: call set_probe(batch) first")
        device = next((p.device for p in pl_module.parameters()), self.probe["input_ids"].device)
        ids = self.probe["input_ids"].to(device)
        maskable = self.probe.get("maskable")
        maskable = maskable.to(device) if maskable is not None else None
        attention = self.probe.get("attention_mask")
        attention = attention.to(device) if attention is not None else None
        P, L = ids.shape
        v = keyed_uniform(
            (self.seed, STREAM_PROBE, torch.arange(P, device=device).unsqueeze(1), torch.arange(L, device=device).unsqueeze(0)),
            device=device,
        )
        mask_id = int(pl_module.mask_token_id)
        suppressed = list(getattr(pl_module, "suppressed", [mask_id]))
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        losses = []
        try:
            with _forward_context(trainer):
                for c in self.bin_centres.tolist():
                    t = torch.full((P,), c, dtype=torch.float32, device=device)
                    noisy, masked = mask_tokens(ids, t, mask_id, v, maskable)
                    nll = denoiser_nll(pl_module, noisy, ids, suppressed, attention)
                    losses.append(md_loss(nll, masked, t, maskable, "elbo", "maskable_tokens").to(torch.float64))
                    self.extra_forward_tokens += P * L
                    self.extra_forward_passes += 1
        finally:
            for m, was_training in modes:
                m.training = was_training
        out = torch.stack(losses)
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and getattr(trainer, "world_size", 1) > 1:
            out = strategy.reduce(out, reduce_op="mean")
        return out.detach().cpu()

    # ------------------------------------------------------------------ callback hooks
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.probe is None:
            self.set_probe(batch if self.probe_source == "train" else _first_val_batch(trainer))
        if self.probe_losses is None:  # the baseline, before the first optimizer step
            self.update(self.measure(pl_module, trainer), step=int(trainer.global_step))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = int(trainer.global_step)
        if self.probe is None:  # on_train_batch_start was skipped: start here
            self.on_train_batch_start(trainer, pl_module, batch, batch_idx)
            self.last_update_step = step
        elif step > 0 and step % self.update_every == 0 and step != self.last_update_step:
            self.last_update_step = step
            self.update(self.measure(pl_module, trainer), step=step)
            self._log_histogram(trainer)
        if self.log_every_n_steps > 0 and step % self.log_every_n_steps == 0:
            self._log_scalars(pl_module)

    def _log_scalars(self, pl_module: LightningModule) -> None:
        """The current q and latest probe losses through ``pl_module.log`` (written at the Trainer's cadence)."""
        values = {f"adaptive/prob_bin{j:02d}": float(q) for j, q in enumerate(self.probs)}
        if self.probe_losses is not None:
            values.update({f"adaptive/probe_loss_bin{j:02d}": float(x) for j, x in enumerate(self.probe_losses)})
            values["adaptive/probe_nelbo"] = float(self.probe_losses.mean())
        values["adaptive/mean_t"] = self.analytic_mean()
        values["adaptive/extra_forward_tokens"] = float(self.extra_forward_tokens)
        for name, value in values.items():
            pl_module.log(name, value, on_step=True, on_epoch=False)

    def _log_histogram(self, trainer: Trainer) -> None:
        """q as a TensorBoard histogram over t (one per update, written directly by the logger)."""
        if self.log_every_n_steps <= 0 or not getattr(trainer, "is_global_zero", True):
            return
        experiment = getattr(getattr(trainer, "logger", None), "experiment", None)
        if not hasattr(experiment, "add_histogram_raw"):
            return
        counts = (self.probs * 10_000).round()
        c = self.bin_centres
        experiment.add_histogram_raw(
            "adaptive/allocation",
            min=0.0,
            max=1.0,
            num=float(counts.sum()),
            sum=float((counts * c).sum()),
            sum_squares=float((counts * c * c).sum()),
            bucket_limits=self.bin_high.tolist(),
            bucket_counts=counts.tolist(),
            global_step=int(trainer.global_step),
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            {
                "num_bins": self.num_bins,
                "mode": self.mode,
                "probs": self.probs.tolist(),
                "signal": self.signal.tolist(),
                "probe_losses": None if self.probe_losses is None else self.probe_losses.tolist(),
                "probe": None if self.probe is None else {k: v.detach().cpu().clone() for k, v in self.probe.items()},
                "num_updates": self.num_updates,
                "extra_forward_tokens": self.extra_forward_tokens,
                "extra_forward_passes": self.extra_forward_passes,
                "last_update_step": self.last_update_step,
                "history": [dict(h) for h in self.history],
            }
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if int(state_dict["num_bins"]) != self.num_bins:
            raise ValueError(
                f"checkpoint has num_bins={state_dict['num_bins']} but this AdaptiveBins has num_bins={self.num_bins}"
            )
        self.probs = torch.tensor(state_dict["probs"], dtype=torch.float64)
        self.signal = torch.tensor(state_dict["signal"], dtype=torch.float64)
        losses = state_dict["probe_losses"]
        self.probe_losses = None if losses is None else torch.tensor(losses, dtype=torch.float64)
        probe = state_dict["probe"]
        self.probe = None if probe is None else {k: v.clone() for k, v in probe.items()}
        self.num_updates = int(state_dict["num_updates"])
        self.extra_forward_tokens = int(state_dict["extra_forward_tokens"])
        self.extra_forward_passes = int(state_dict["extra_forward_passes"])
        self.last_update_step = int(state_dict["last_update_step"])
        self.history = [dict(h) for h in state_dict.get("history", [])]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_bins={self.num_bins}, update_every={self.update_every}, mode={self.mode!r}, "
            f"temperature={self.temperature}, min_prob={self.min_prob}, probe_source={self.probe_source!r}, seed={self.seed})"
        )


def _first_val_batch(trainer: Trainer) -> Any:
    """The first batch of the data module's (first) validation loader."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not callable(getattr(dm, "val_dataloader", None)):
        raise RuntimeError(
            "AdaptiveBins(probe_source='val') needs a data module with val_dataloader(); "
            "use probe_source='train' to probe the first training batch"
        )
    loaders = dm.val_dataloader()
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()))
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0]
    return next(iter(loaders))


def _forward_context(trainer: Trainer | None):
    """The precision plugin's forward context (autocast under mixed precision), else a no-op."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    if plugin is not None and hasattr(plugin, "forward_context"):
        return plugin.forward_context()
    return contextlib.nullcontext()
