"""Prompt batching: left-padding of prompts, groups of equal real length, cutting at EOS."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mdlm.generation.config import _check_token_id

PromptsLike = Tensor | Sequence[Tensor | Sequence[int]]


def _equal_length_groups(lengths: Tensor) -> list:
    """``[(length, row indices)]`` of the rows of equal ``lengths``, by first appearance."""
    values = lengths.tolist()
    order = list(dict.fromkeys(values))
    return [(n, torch.tensor([b for b, v in enumerate(values) if v == n], device=lengths.device))
            for n in order]


def _prepare_prompts(
    prompts: PromptsLike, attention_mask: Tensor | None, pad_token_id: int | None
) -> tuple:
    """Return ``(ids [B, P], prompt_mask [B, P] or None)``; left padding."""
    if isinstance(prompts, Tensor):
        ids = prompts
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
            if attention_mask is not None and attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
        if ids.dim() != 2:
            raise ValueError(
                f"a prompt tensor must be 1-D [P] or 2-D [B, P], got shape {tuple(prompts.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise ValueError(f"prompt ids must be an integer tensor, got dtype {ids.dtype}")
        ids = ids.long()
        if attention_mask is None:
            return ids, None
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the prompts have "
                f"shape {tuple(ids.shape)}; they must match"
            )
        pmask = attention_mask.to(device=ids.device).bool()
        if ids.shape[1] > 1 and bool((pmask[:, 1:].long() < pmask[:, :-1].long()).any()):
            raise ValueError(
                "attention_mask must describe LEFT padding (False…False True…True on each row): "
                "the generated tokens follow the last prompt token"
            )
        return ids, (None if bool(pmask.all()) else pmask)

    if attention_mask is not None:
        raise ValueError(
            "attention_mask is only accepted with an already padded prompt tensor [B, P]; "
            "a list of prompts is padded here"
        )
    seqs = [p if isinstance(p, Tensor) else torch.as_tensor(p, dtype=torch.long) for p in prompts]
    if len(seqs) == 0:
        raise ValueError("prompts is empty; pass at least one prompt")
    for j, p in enumerate(seqs):
        if p.dim() != 1:
            raise ValueError(f"prompt {j} must be a 1-D tensor of ids, got shape {tuple(p.shape)}")
        if p.dtype.is_floating_point or p.dtype == torch.bool or p.is_complex():
            raise ValueError(f"prompt {j} must hold integer ids, got dtype {p.dtype}")
    device = seqs[0].device
    lengths = [int(p.numel()) for p in seqs]
    width = max(lengths)
    if all(n == width for n in lengths):
        return torch.stack([p.to(device).long() for p in seqs]), None
    if pad_token_id is None:
        raise ValueError(
            f"prompts have different lengths {lengths}; pass pad_token_id to left-pad them"
        )
    _check_token_id("pad_token_id", pad_token_id)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long, device=device)
    pmask = torch.zeros((len(seqs), width), dtype=torch.bool, device=device)
    for j, p in enumerate(seqs):  # once per call, not per step
        if lengths[j]:
            ids[j, width - lengths[j] :] = p.to(device).long()
            pmask[j, width - lengths[j] :] = True
    return ids, pmask


def _cut_at_eos(tokens: Tensor, eos_token_id: int | None) -> list:
    if eos_token_id is None:
        return list(tokens.unbind(0))
    is_eos = tokens == eos_token_id
    first = torch.where(is_eos.any(dim=1), is_eos.long().argmax(dim=1), tokens.shape[1])
    return [row[:cut] for row, cut in zip(tokens.unbind(0), first.tolist())]
