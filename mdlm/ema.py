r"""Exponential moving average (EMA) of the weights: Lightning's ``WeightAveraging``, extended to FSDP2.

After optimizer step k (from ``update_starting_at_step`` on, every ``update_every_n_steps``)

.. math:: \bar\theta_1 = \theta_1, \qquad \bar\theta_k = d\,\bar\theta_{k-1} + (1-d)\,\theta_k

(``torch.optim.swa_utils.get_ema_multi_avg_fn``: a foreach ``lerp`` with weight 1 - d), so after
n updates :math:`\bar\theta = d^{n-1}\theta_1 + (1-d)\sum_{j=2}^{n} d^{\,n-j}\theta_j`. The shadow
weights are float32 whatever the training precision (``bf16-true`` included).

- **Unsharded** (one device, DDP): :class:`EMA` is Lightning's
  :class:`~lightning.pytorch.callbacks.WeightAveraging` with an fp32 ``AveragedModel``
  (:class:`FP32AveragedModel`); Lightning's logic does the scheduling and the checkpoint format.
- **FSDP2** (``ModelParallelStrategy`` / :class:`mdlm.parallel.FSDP2Strategy`): the shadows are
  ``DTensor`` s sharded exactly like the parameters (:class:`ShardedEMA`; each rank holds and
  updates only its shard, no communication). They are gathered only when a consolidated
  checkpoint or an export is written; a sharded (DCP) checkpoint stores them as shards.

In both cases the EMA weights replace the training weights during validation (swapped back
afterwards), are copied into the model when training ends (so ``test``/``predict``/generation
after ``fit`` use them), and are the checkpoint's ``state_dict`` — what ``validate``/``test``/
``predict --ckpt_path`` load; the training weights are kept beside them
(``current_model_state``, or the ``current_model.`` keys of a sharded checkpoint) and restored on
resume. ``export_path`` writes the EMA weights (a full ``torch`` state dict keyed like the
LightningModule) when training ends; :meth:`EMA.export` does it on demand.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

#: prefix of the training weights inside a sharded checkpoint's ``state_dict`` (the EMA has the plain keys)
CURRENT_PREFIX = "current_model."


class FP32AveragedModel(AveragedModel):
    """``AveragedModel`` whose floating-point parameters and buffers are float32 copies.

    ``update_parameters`` casts the model's tensors to the shadow dtype and device before the
    averaging function (``AveragedModel`` itself requires equal dtypes). Without an explicit
    ``device`` the shadows follow the model's device at the first update (the callback is set up
    before the strategy moves the model to its accelerator).
    """

    def __init__(self, model: nn.Module, device: torch.device | None = None, **kwargs: Any) -> None:
        super().__init__(model, device=device, **kwargs)
        self.follow_device = device is None
        for t in itertools.chain(self.module.parameters(), self.module.buffers()):
            if t.is_floating_point():
                t.data = t.data.float()

    def _pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mine = itertools.chain(self.module.parameters(), self.module.buffers()) if self.use_buffers else self.parameters()
        theirs = itertools.chain(model.parameters(), model.buffers()) if self.use_buffers else model.parameters()
        return list(zip(mine, theirs, strict=True))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        pairs = self._pairs(model)
        if self.follow_device and pairs and pairs[0][0].device != pairs[0][1].device:
            self.module.to(pairs[0][1].device)
            self.n_averaged = self.n_averaged.to(pairs[0][1].device)
            pairs = self._pairs(model)
        first = bool(self.n_averaged == 0)
        shadows, currents = [], []
        for shadow, current in pairs:
            value = current.detach().to(device=shadow.device, dtype=shadow.dtype)
            if first or not shadow.is_floating_point():
                shadow.detach().copy_(value)
            else:
                shadows.append(shadow.detach())
                currents.append(value)
        if shadows:
            self.multi_avg_fn(shadows, currents, self.n_averaged)
        self.n_averaged += 1


class ShardedEMA:
    """fp32 EMA shadows of ``DTensor`` (FSDP2) parameters, sharded like them; the math runs on local shards.

    Only floating-point parameters are averaged (buffers are left to the model). Indexed by the
    parameters' fully qualified names, which FSDP2 and composable activation checkpointing keep.
    """

    def __init__(self, pl_module: nn.Module, multi_avg_fn) -> None:
        self.names: list[str] = []
        self.shadows: list[torch.Tensor] = []
        for name, p in pl_module.named_parameters():
            if p.is_floating_point():
                self.names.append(name)
                self.shadows.append(p.detach().to(torch.float32).clone())
        self.multi_avg_fn = multi_avg_fn
        self.n_averaged = 0
        self._backup: list[torch.Tensor] | None = None

    def _params(self, pl_module: nn.Module) -> list[torch.Tensor]:
        named = dict(pl_module.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise RuntimeError(f"EMA shadows name parameters the model lacks: {missing[:3]}")
        return [named[n] for n in self.names]

    @staticmethod
    def _local(t: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        return t.to_local() if isinstance(t, DTensor) else t

    @torch.no_grad()
    def update_parameters(self, pl_module: nn.Module) -> None:
        shadows = [self._local(s) for s in self.shadows]
        currents = [self._local(p.detach()).float() for p in self._params(pl_module)]
        if self.n_averaged == 0:
            torch._foreach_copy_(shadows, currents)
        else:
            self.multi_avg_fn(shadows, currents, None)
        self.n_averaged += 1

    @torch.no_grad()
    def copy_to(self, pl_module: nn.Module) -> None:
        """Write the EMA into the model's (local) parameter shards."""
        for p, s in zip(self._params(pl_module), self.shadows):
            self._local(p.detach()).copy_(self._local(s))

    @torch.no_grad()
    def copy_from(self, pl_module: nn.Module) -> None:
        """Set the shadows to the model's current parameters."""
        for p, s in zip(self._params(pl_module), self.shadows):
            self._local(s).copy_(self._local(p.detach()))

    @torch.no_grad()
    def swap(self, pl_module: nn.Module) -> None:
        """First call: keep the training weights aside and load the EMA; second call: restore them."""
        params = self._params(pl_module)
        if self._backup is None:
            self._backup = [self._local(p.detach()).clone() for p in params]
            self.copy_to(pl_module)
        else:
            for p, b in zip(params, self._backup):
                self._local(p.detach()).copy_(b)
            self._backup = None

    def full_state(self) -> dict[str, torch.Tensor]:
        """Gathered fp32 EMA weights on CPU (a collective: every rank must call it)."""
        from torch.distributed.tensor import DTensor

        return {n: (s.full_tensor() if isinstance(s, DTensor) else s).detach().cpu() for n, s in zip(self.names, self.shadows)}


def _is_sharded_strategy(trainer: Trainer) -> bool:
    return isinstance(trainer.strategy, ModelParallelStrategy)


class EMA(WeightAveraging):
    """EMA of the weights for validation, generation, checkpoints and export (unsharded and FSDP2).

    Args:
        decay: d in the update above, in [0, 1].
        update_every_n_steps: update after every n-th optimizer step.
        update_starting_at_step: first optimizer step (0-based) that updates the EMA (the first
            update copies the weights).
        device: where the unsharded shadow weights live (default: the model's device).
        export_path: write the EMA weights there (``torch.save`` of a full state dict, rank 0) when
            training ends.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int = 0,
        device: str | None = None,
        export_path: str | None = None,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay} must lie in [0, 1]")
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps={update_every_n_steps} must be >= 1")
        if update_starting_at_step < 0:
            raise ValueError(f"update_starting_at_step={update_starting_at_step} must be >= 0")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = float(decay)
        self.update_every_n_steps = int(update_every_n_steps)
        self.update_starting_at_step = int(update_starting_at_step)
        self.export_path = export_path
        self._sharded = False
        self._backup: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ schedule and creation
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None
            and step_idx >= self.update_starting_at_step
            and (step_idx - self.update_starting_at_step) % self.update_every_n_steps == 0
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            raise NotImplementedError(
                "EMA under FSDPStrategy (FSDP v1 flat parameters) is not supported: use the FSDP2 route "
                "(strategy: mdlm.parallel.FSDP2Strategy, see configs/trainer/fsdp2_bf16.yaml) or DDP"
            )
        self._sharded = _is_sharded_strategy(trainer)
        if not self._sharded:  # sharded shadows are made once configure_model has sharded the model
            self._average_model = FP32AveragedModel(
                pl_module, device=self._device, use_buffers=self._use_buffers, **self._kwargs
            )

    def restart_from(self, pl_module: LightningModule) -> None:
        """Rebuild the average from the module's current weights (the shadow made in ``setup`` copied the
        weights of that moment; :class:`mdlm.init_weights.InitWeights` loads others after it)."""
        if self._average_model is not None and not self._sharded:
            self._average_model = FP32AveragedModel(
                pl_module, device=self._device, use_buffers=self._use_buffers, **self._kwargs
            )

    def _ensure_sharded(self, pl_module: LightningModule) -> ShardedEMA:
        if self._average_model is None:
            self._average_model = ShardedEMA(pl_module, self._kwargs["multi_avg_fn"])  # type: ignore[assignment]
        return self._average_model  # type: ignore[return-value]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._sharded:
            self._ensure_sharded(pl_module)

    # ------------------------------------------------------------------ swapping
    @torch.no_grad()
    def _swap_models(self, pl_module: LightningModule) -> None:
        """Validation start: keep the training weights aside, load the EMA; validation end: restore.

        (Lightning swaps the two tensors, which would round fp32 shadows to a bf16 model's dtype.)
        """
        if isinstance(self._average_model, ShardedEMA):
            self._average_model.swap(pl_module)
            return
        current = list(itertools.chain(pl_module.parameters(), pl_module.buffers()))
        if self._backup is None:
            self._backup = [t.detach().clone() for t in current]
            self._copy_average_to_current(pl_module)
        else:
            for t, b in zip(current, self._backup):
                t.detach().copy_(b)
            self._backup = None

    @torch.no_grad()
    def _copy_average_to_current(self, pl_module: LightningModule) -> None:
        if isinstance(self._average_model, ShardedEMA):
            self._average_model.copy_to(pl_module)
            return
        assert self._average_model is not None
        average = itertools.chain(self._average_model.module.parameters(), self._average_model.module.buffers())
        current = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for a, c in zip(average, current):
            c.detach().copy_(a.detach())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.export_path:
            self.export(self.export_path, trainer)

    # ------------------------------------------------------------------ state
    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The full fp32 EMA weights keyed like the LightningModule's parameters (collective when sharded)."""
        if self._average_model is None:
            raise RuntimeError("the EMA has no weights yet: it is created when fit starts")
        if isinstance(self._average_model, ShardedEMA):
            return self._average_model.full_state()
        named = dict(self._average_model.module.named_parameters())
        return {n: t.detach().cpu() for n, t in named.items()}

    def export(self, path: str | Path, trainer: Trainer | None = None) -> Path:
        """Write the EMA weights (full fp32 state dict, ``torch.save``) to ``path`` on global rank 0."""
        state = self.ema_state_dict()
        path = Path(path)
        if trainer is None or trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "decay": self.decay}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """EMA weights under ``state_dict``, training weights beside them (see the module docstring)."""
        ema = self._average_model
        if not isinstance(ema, ShardedEMA):
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        from torch.distributed.tensor import DTensor

        current = checkpoint["state_dict"]
        shadows = dict(zip(ema.names, ema.shadows))
        checkpoint["averaging_state"] = {"n_averaged": torch.tensor(ema.n_averaged)}
        if any(isinstance(v, DTensor) for v in current.values()):  # sharded (DCP) checkpoint: stays sharded
            state = {k: shadows.get(k, v) for k, v in current.items()}
            state.update({CURRENT_PREFIX + k: v for k, v in current.items()})
            checkpoint["state_dict"] = state
        else:  # consolidated: gathered on every rank (a collective), kept on rank 0 only
            full = ema.full_state()
            checkpoint["current_model_state"] = current
            checkpoint["state_dict"] = {k: full.get(k, v) for k, v in current.items()} if current else {}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._sharded:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            return
        ema = self._ensure_sharded(pl_module)
        ema.n_averaged = int(checkpoint.get("averaging_state", {}).get("n_averaged", 0))
        path = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        if path is not None and path.is_dir():
            self._load_sharded(pl_module, ema, path)
        elif "current_model_state" in checkpoint:
            # the strategy loaded the EMA (``state_dict``) into the model: move it to the shadows,
            # then load the training weights
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            ema.copy_from(pl_module)
            set_model_state_dict(
                pl_module, checkpoint["current_model_state"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            ema.copy_from(pl_module)

    @staticmethod
    def _load_sharded(pl_module: LightningModule, ema: ShardedEMA, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        current = get_model_state_dict(pl_module)
        state = {"state_dict": {**dict(zip(ema.names, ema.shadows)), **{CURRENT_PREFIX + k: v for k, v in current.items()}}}
        has_current = True
        try:
            dcp.load(state, checkpoint_id=path)
        except Exception:  # a checkpoint written without EMA: the model weights seed the shadows
            has_current = False
        if has_current:
            loaded = {k[len(CURRENT_PREFIX) :]: v for k, v in state["state_dict"].items() if k.startswith(CURRENT_PREFIX)}
            set_model_state_dict(pl_module, loaded)
        else:
            ema.copy_from(pl_module)
            ema.n_averaged = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(decay={self.decay}, every={self.update_every_n_steps}, start={self.update_starting_at_step})"
