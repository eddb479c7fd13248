"""SFT datasets and collators: training-format samples (:class:`SFTCollator`) and generation prompts
(:class:`PromptCollator`); the batch formats are in :mod:`mdlm.data.sft`'s docstring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from mdlm.data.sft.records import PAD_TO, SFTDataError, _check_choice
from mdlm.data.sft.rendering import Tokenized

__all__ = ["PromptCollator", "PromptDataset", "SFTCollator", "SFTDataset"]


class SFTDataset(Dataset):
    """Training-format samples: ``{"input_ids": LongTensor[n], "prompt_length": int, "index": int}``."""

    def __init__(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], indices: Sequence[int]) -> None:
        self.sequences = [torch.tensor(s, dtype=torch.long) for s in sequences]
        self.prompt_lengths = list(prompt_lengths)
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.sequences[i], "prompt_length": self.prompt_lengths[i], "index": self.indices[i]}


class SFTCollator:
    """Pad training samples with ``pad_token_id`` (EOS) into the training batch format.

    ``pad_to="max_length"``: every row has ``max_length`` tokens; ``"batch"``: the longest row of
    the batch. ``supervise_padding``: padding is maskable and attended (LLaDA), else neither. With
    ``"batch"`` padding and ``supervise_padding=True`` the number of supervised EOS tokens of a
    sample depends on the other samples of its batch.
    """

    def __init__(
        self, pad_token_id: int, max_length: int, pad_to: str = "max_length", supervise_padding: bool = True
    ) -> None:
        _check_choice("pad_to", pad_to, PAD_TO)
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.pad_to = pad_to
        self.supervise_padding = bool(supervise_padding)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(it["input_ids"]) for it in items]
        if max(lengths) > self.max_length:
            raise SFTDataError(f"a sample of {max(lengths)} tokens exceeds max_length={self.max_length}")
        width = self.max_length if self.pad_to == "max_length" else max(lengths)
        B = len(items)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.long)
        real = torch.zeros((B, width), dtype=torch.bool)
        prompt = torch.zeros((B, width), dtype=torch.bool)
        for b, it in enumerate(items):
            n = lengths[b]
            input_ids[b, :n] = it["input_ids"]
            real[b, :n] = True
            prompt[b, : int(it["prompt_length"])] = True
        pad = ~real
        maskable = (real & ~prompt) | (pad if self.supervise_padding else torch.zeros_like(pad))
        attention_mask = real | (pad if self.supervise_padding else torch.zeros_like(pad))
        return {
            "input_ids": input_ids,
            "maskable": maskable,
            "attention_mask": attention_mask,
            "prompt_length": torch.tensor([int(it["prompt_length"]) for it in items], dtype=torch.long),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        }


class PromptDataset(Dataset):
    """Generation prompts with their reference answers (see the module docstring)."""

    def __init__(self, items: Sequence[Tokenized]) -> None:
        self.items = [
            {
                "prompt_input_ids": torch.tensor(t.prompt_ids, dtype=torch.long),
                "reference": t.record.reference,
                "group": t.record.group,
                "prompt_text": t.prompt_text,
                "dataset": t.record.dataset,
                "index": t.record.index,
            }
            for t in items
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class PromptCollator:
    """LEFT-pad prompts with ``pad_token_id``; keep the string fields as python lists."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        width = max(len(it["prompt_input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.bool)
        for b, it in enumerate(items):
            n = len(it["prompt_input_ids"])
            ids[b, width - n :] = it["prompt_input_ids"]
            mask[b, width - n :] = True
        return {
            "prompt_input_ids": ids,
            "prompt_attention_mask": mask,
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
            "reference": [it["reference"] for it in items],
            "group": [it["group"] for it in items],
            "prompt_text": [it["prompt_text"] for it in items],
            "dataset": [it["dataset"] for it in items],
        }
