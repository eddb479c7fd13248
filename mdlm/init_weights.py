"""Start a run from another run's weights (fine-tuning), as a Lightning callback.

``--ckpt_path`` *resumes* a run: weights, optimizer, step, sampler and data position all come back.
Fine-tuning wants only the weights: a base model trained once, then several runs that each start
from it with their own optimizer, schedule, mask-ratio sampler and seed. :class:`InitWeights` loads
the backbone weights of an mdlm checkpoint (a Lightning ``.ckpt`` file or a sharded DCP directory;
the EMA weights when it has them, unless ``weights: raw``) into the module when ``fit`` sets up,
before the first step::

    trainer:
      callbacks:
        - class_path: mdlm.init_weights.InitWeights
          init_args: {path: runs/base/version_0/checkpoints/last.ckpt}

An :class:`mdlm.ema.EMA` callback set up before this one restarts its average from the loaded
weights. Resuming such a run with ``--ckpt_path`` works: Lightning restores the run's own checkpoint after
``setup``, so the resumed weights win. The backbone is loaded strictly: a missing, unexpected or
differently shaped tensor (another model size, another tokenizer's vocabulary) is an error that names
it. Models built on the meta device (FSDP ``init_device: meta``) get their weights from their own
pretrained loader (``HFBackbone``), not from this callback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

PREFIX = "backbone."


class InitWeightsError(ValueError):
    """The checkpoint's weights do not fit this run's model (one-line message)."""


class InitWeights(Callback):
    """Load the backbone weights of ``path`` into the module at the start of ``fit``.

    Args:
        path: an mdlm checkpoint (``.ckpt`` file or sharded directory).
        weights: ``auto`` (EMA when the checkpoint has it, else raw), ``ema`` or ``raw``.
    """

    def __init__(self, path: str, weights: Literal["auto", "ema", "raw"] = "auto") -> None:
        if weights not in ("auto", "ema", "raw"):
            raise InitWeightsError(f"weights={weights!r} must be 'auto', 'ema' or 'raw'")
        self.path = str(path)
        self.weights = weights
        self.loaded: dict[str, object] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from mdlm.export import load_checkpoint_weights

        if not Path(self.path).exists():
            raise InitWeightsError(f"InitWeights path={self.path!r} does not exist (runs/<name>/version_<n>/checkpoints/last.ckpt?)")
        ckpt = load_checkpoint_weights(self.path, self.weights)
        state = {k[len(PREFIX):]: v for k, v in ckpt.state_dict.items() if k.startswith(PREFIX)}
        if not state:
            raise InitWeightsError(f"{self.path} has no '{PREFIX}*' weights: not an mdlm checkpoint")
        load_backbone_state(pl_module.backbone, state, self.path)
        from mdlm.ema import EMA

        for callback in getattr(trainer, "callbacks", None) or []:  # an EMA set up before us averaged the old weights
            if isinstance(callback, EMA):
                callback.restart_from(pl_module)
        self.loaded = {"path": self.path, "weights": ckpt.weights, "global_step": ckpt.global_step, "tensors": len(state)}
        rank_zero_info(f"InitWeights: {len(state)} backbone tensors ({ckpt.weights} weights, trained "
                       f"{ckpt.global_step} steps) from {self.path}")


def load_backbone_state(backbone: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``backbone`` in place, strictly; errors name the first offending tensor."""
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InitWeightsError(
            f"{source} does not fit this backbone: {len(missing)} tensors missing from it (first: "
            f"{missing[:1]}), {len(unexpected)} it has that the model lacks (first: {unexpected[:1]}) — "
            "is it the same backbone class and size?")
    for name, tensor in own.items():
        if tensor.is_meta:
            raise InitWeightsError(f"backbone tensor {name!r} is on the meta device: InitWeights needs a "
                                   "materialised model (load pretrained weights through the backbone instead)")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise InitWeightsError(
                f"{source}: {PREFIX}{name} has shape {tuple(state[name].shape)}, the model's is "
                f"{tuple(tensor.shape)} (a different model size, or a tokenizer with another vocabulary)")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name].to(dtype=tensor.dtype))
