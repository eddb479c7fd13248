"""Seeded per-epoch shuffles for map-style datasets, exact on resume.

:class:`EpochShuffleSampler` (one process; exact resume from end-of-epoch checkpoints) and
:class:`GlobalBatchShuffleSampler` + :class:`ResumableDataLoader` (data parallel, split by global
batch, exact resume from mid-epoch checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The permutation of range(num_samples) for ``epoch``: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=g).tolist()


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
        return iter(epoch_permutation(self.num_samples, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.num_samples


class GlobalBatchShuffleSampler(DistributedSampler):
    r"""A seeded per-epoch shuffle split across data-parallel ranks by *global batch*, resumable mid-epoch.

    Epoch e draws the permutation :math:`\pi_e` of range(n) (a pure function of (seed, e)). Global
    batch k of size :math:`WB` is :math:`\pi_e[kWB : (k+1)WB]`; rank r takes its contiguous slice
    :math:`\pi_e[kWB + rB : kWB + (r+1)B]`. Concatenating the ranks' micro-batches therefore gives
    exactly the batch one process with batch size WB reads, which is what makes a W-rank run equal
    a one-process run (the keyed t and masks use the same global row index, see
    :func:`mdlm.samplers.base.global_batch_rows`). With ``drop_last`` the incomplete last global batch
    is dropped; without it, its rows are split into W contiguous parts of equal length (wrapping
    around to the start of :math:`\pi_e` to pad), so every rank yields the same number of batches.

    It subclasses ``DistributedSampler`` only so that Lightning keeps it instead of wrapping it.
    :meth:`start_at` makes the next iteration begin at a given local batch (mid-epoch resume).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must lie in [0, num_replicas={num_replicas})")
        if drop_last and num_samples < batch_size * num_replicas:
            raise ValueError(
                f"drop_last=True with num_samples={num_samples} < batch_size * num_replicas = "
                f"{batch_size * num_replicas} leaves no batch: lower the batch size or set drop_last=False"
            )
        # DistributedSampler.__init__ would query the process group; set its public fields directly
        self.num_samples_total = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.shuffle = True
        self.epoch = 0
        self._start_batch = 0
        global_batch = self.batch_size * self.num_replicas
        full, rest = divmod(self.num_samples_total, global_batch)
        self._full_batches = full
        self._tail = 0 if (drop_last or rest == 0) else -(-rest // self.num_replicas)  # ceil(rest / W)
        self.num_samples = full * self.batch_size + self._tail  # indices per rank and epoch
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def start_at(self, batch: int) -> None:
        """Make the next iteration skip its first ``batch`` local batches (then start from 0 again)."""
        if batch < 0:
            raise ValueError(f"start batch={batch} must be >= 0")
        self._start_batch = int(batch)

    def permutation(self) -> list[int]:
        """:math:`\\pi_e` of the current epoch."""
        return epoch_permutation(self.num_samples_total, self.seed, self.epoch)

    def local_indices(self) -> list[int]:
        """This rank's indices of the epoch, in order (before any start offset)."""
        perm = self.permutation()
        B, W, r = self.batch_size, self.num_replicas, self.rank
        out: list[int] = []
        for k in range(self._full_batches):
            start = k * W * B + r * B
            out.extend(perm[start : start + B])
        if self._tail:
            base = self._full_batches * W * B
            padded = perm[base:] + perm[: self._tail * W - (len(perm) - base)]
            out.extend(padded[r * self._tail : (r + 1) * self._tail])
        return out

    def __iter__(self) -> Iterator[int]:
        indices = self.local_indices()[self._start_batch * self.batch_size :]
        self._start_batch = 0
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position inside the epoch is checkpointed (Lightning's ``_Stateful``).

    Its sampler must be a :class:`GlobalBatchShuffleSampler`. It counts the batches it has handed
    out in the current epoch; Lightning stores :meth:`state_dict` in the checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and, when resuming mid-epoch, calls
    :meth:`load_state_dict` before the first iteration, which then skips the batches already
    trained on (by index, without loading them). For sized loaders Lightning does not prefetch, so
    the count equals the number of batches the training loop consumed. With several workers the
    count is still taken on the consumer side. Its own seeded ``generator`` (the workers' base seed)
    keeps iterator creation from drawing from the global RNG, whose checkpointed state must not
    shift when a resumed run re-creates the iterator mid-epoch.
    """

    def __init__(self, dataset, *, sampler: GlobalBatchShuffleSampler, **kwargs) -> None:
        if not isinstance(sampler, GlobalBatchShuffleSampler):
            raise TypeError(f"ResumableDataLoader needs a GlobalBatchShuffleSampler, got {type(sampler).__name__}")
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._yielded = 0
        self._epoch_of_count = sampler.epoch
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip at the next iteration

    def __iter__(self):
        sampler: GlobalBatchShuffleSampler = self.sampler  # type: ignore[assignment]
        start = 0
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == sampler.epoch and batches < len(self):
                start = batches
        sampler.start_at(start)
        self._yielded, self._epoch_of_count = start, sampler.epoch
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the batches of ``epoch`` handed out so far."""
        return {"epoch": self._epoch_of_count, "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))
