"""Optimiser helpers: AdamW parameter groups and the warm-up + cosine/constant learning-rate factor."""

from __future__ import annotations

import math
from typing import Literal

import torch.nn as nn

NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


def parameter_groups(model: nn.Module, weight_decay: float, exclude_norms_biases_embeddings: bool = True) -> list[dict]:
    """Two AdamW groups: decayed matrices, and (when excluding) norms, biases and embeddings at decay 0.

    A parameter shared by several modules (tied embeddings) is placed once, in the no-decay group if
    any owner is an embedding or a norm.
    """
    if not exclude_norms_biases_embeddings:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    no_decay_ids: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_MODULES) or name.endswith("bias") or p.dim() < 2:
                no_decay_ids.add(id(p))
    decay, no_decay = [], []
    for p in model.parameters():  # de-duplicated by nn.Module
        if not p.requires_grad:
            continue
        (no_decay if id(p) in no_decay_ids else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    schedule: Literal["cosine", "constant"] = "cosine",
    min_lr_ratio: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate at optimiser ``step`` (0-based).

    Warm-up: (step + 1) / warmup_steps for step < warmup_steps. Then ``constant``: 1; ``cosine``:
    r + (1 - r) · (1 + cos(π s)) / 2 with s = (step - warmup) / (total - warmup) clipped to [0, 1]
    and r = ``min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"lr_schedule={schedule!r} must be 'cosine' or 'constant'")
    span = max(1, total_steps - warmup_steps)
    s = min(max((step - warmup_steps) / span, 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * s))
