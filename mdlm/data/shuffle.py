"""A seeded per-epoch shuffle for map-style datasets (exact on resume)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Permutation of range(n) that is a pure function of (seed, epoch).

    Lightning calls ``set_epoch`` at the start of every epoch (also on one device), so a run
    resumed from an end-of-epoch checkpoint sees the same order as the uninterrupted run.
    Under DDP Lightning replaces it with a ``DistributedSampler`` (seeded, also per epoch).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples
