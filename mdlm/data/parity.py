"""k-parity: the synthetic task of the paper.

A secret set S ⊂ {0, …, n−1} of size k is drawn from ``seed``; inputs x are uniform in {0, 1}^n
and the label y = ⊕_{j∈S} x_j is placed at position n (the (n+1)-th token). Tokens: 0, 1 and
[MASK] = 2. The training set is a fixed sample of ``num_train`` sequences; validation uses
``num_val`` fresh sequences that do not occur in the training set. Batches carry ``query_mask``
(True at the label) for the label-accuracy metric and the ``output_supervision`` objective, and
``index`` (the global sample index) for keyed evaluation randomness.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, Dataset

from mdlm.data.contract import MDLMDataModule
from mdlm.data.shuffle import GlobalBatchShuffleSampler, ResumableDataLoader

log = logging.getLogger(__name__)

MASK_TOKEN_ID = 2
VOCAB_SIZE = 3


def draw_secret(n: int, k: int, seed: int) -> list[int]:
    """The secret positions S (sorted), a seeded uniform k-subset of range(n)."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def parity_labels(bits: torch.Tensor, secret: list[int]) -> torch.Tensor:
    """y = XOR of bits[:, S] (sum mod 2)."""
    return bits[:, secret].sum(-1) % 2


def _codes(bits: torch.Tensor) -> torch.Tensor:
    """Integer code of each bit row (for de-duplication); n <= 62."""
    weights = 2 ** torch.arange(bits.shape[1], dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)


class ParityDataset(Dataset):
    """Sequences [x_1..x_n, y] with their global index and label query mask."""

    def __init__(self, bits: torch.Tensor, secret: list[int], index_offset: int = 0) -> None:
        self.tokens = torch.cat([bits, parity_labels(bits, secret).unsqueeze(1)], dim=1).long()
        self.index_offset = index_offset
        query = torch.zeros(self.tokens.shape[1], dtype=torch.bool)
        query[-1] = True
        self.query = query

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.tokens[i],
            "query_mask": self.query,
            "index": torch.tensor(self.index_offset + i),
        }


class ParityDataModule(MDLMDataModule):
    """k-parity with a finite training set.

    Args:
        n: number of input bits (n <= 62).
        k: size of the secret set (1 <= k <= n).
        num_train: size of the fixed training set.
        num_val: number of fresh validation sequences (disjoint from the training set).
        num_train_eval: training sequences re-evaluated for train accuracy (0 = all).
        seed: seeds the secret and the data.
        batch_size: training batch size; eval_batch_size: evaluation batch size.
    Validation runs two loaders, named ``val`` (fresh data) and ``train`` (training data), so the
    logged metrics are ``val/label_acc`` and ``train/label_acc``. The data contract
    (:mod:`mdlm.data.contract`): ``vocab_size`` 3, ``mask_token_id`` 2, no tokenizer, EOS or padding.
    """

    val_dataloader_names = ["val", "train"]
    test_dataloader_names = ["test"]

    def __init__(
        self,
        n: int = 20,
        k: int = 6,
        num_train: int = 2000,
        num_val: int = 2000,
        num_train_eval: int = 0,
        seed: int = 0,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= n <= 62:
            raise ValueError(f"n={n} must lie in [1, 62]")
        if not 1 <= k <= n:
            raise ValueError(f"k={k} must lie in [1, n={n}] (the secret is a k-subset of n bits)")
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train={num_train} and num_val={num_val} must be >= 1")
        if num_train + num_val > 2**n:
            raise ValueError(
                f"num_train + num_val = {num_train + num_val} exceeds the 2^{n} = {2**n} distinct inputs of n={n} bits"
            )
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1")
        self.save_hyperparameters()
        self.n, self.k = n, k
        self.secret = draw_secret(n, k, seed)
        self.vocab_size = VOCAB_SIZE
        self.mask_token_id = MASK_TOKEN_ID
        self.pad_token_id = None
        self.eos_token_id = None
        self._built = False

    def _build(self) -> None:
        if self._built:
            return
        hp = self.hparams
        g = torch.Generator().manual_seed(hp.seed + 1)
        train_bits = self._unique_bits(hp.num_train, g, exclude=set())
        train_codes = set(_codes(train_bits).tolist())
        val_bits = self._unique_bits(hp.num_val, g, exclude=train_codes)
        test_bits = self._unique_bits(hp.num_val, g, exclude=train_codes)
        self.train_set = ParityDataset(train_bits, self.secret, index_offset=0)
        num_eval = hp.num_train if hp.num_train_eval <= 0 else min(hp.num_train_eval, hp.num_train)
        self.train_eval_set = ParityDataset(train_bits[:num_eval], self.secret, index_offset=0)
        self.val_set = ParityDataset(val_bits, self.secret, index_offset=10_000_000)
        self.test_set = ParityDataset(test_bits, self.secret, index_offset=20_000_000)
        self._built = True
        log.info("k-parity n=%d k=%d secret S=%s", self.n, self.k, self.secret)

    def _unique_bits(self, count: int, g: torch.Generator, exclude: set[int]) -> torch.Tensor:
        """``count`` distinct uniform bit rows whose codes are not in ``exclude``."""
        rows: list[torch.Tensor] = []
        seen = set(exclude)
        while sum(r.shape[0] for r in rows) < count:
            cand = torch.randint(0, 2, (max(2 * count, 64), self.n), generator=g)
            keep = []
            for i, c in enumerate(_codes(cand).tolist()):
                if c not in seen:
                    seen.add(c)
                    keep.append(i)
            rows.append(cand[keep])
        return torch.cat(rows)[:count]

    def setup(self, stage: str | None = None) -> None:
        self._build()
        if self.trainer is not None and self.trainer.logger is not None and stage == "fit":
            self.trainer.logger.log_hyperparams({"parity_secret": str(self.secret)})

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch, split across data-parallel ranks by global batch, resumable mid-epoch.

        Rank r of W reads slice r of each global batch of ``W * batch_size`` sequences
        (:class:`~mdlm.data.shuffle.GlobalBatchShuffleSampler`), so W ranks see exactly the
        batches of one process with batch size ``W * batch_size``.
        """
        replicas, rank = 1, 0
        kwargs = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer is not None else None
        if kwargs:
            replicas, rank = int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))
        bs = self.hparams.batch_size
        sampler = GlobalBatchShuffleSampler(
            len(self.train_set),
            batch_size=bs,
            seed=self.hparams.seed + 2,
            num_replicas=replicas,
            rank=rank,
            drop_last=len(self.train_set) >= bs * replicas,
        )
        return ResumableDataLoader(
            self.train_set, batch_size=bs, sampler=sampler, num_workers=self.hparams.num_workers
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        # an explicit generator: iterating the loader then leaves the global RNG alone
        return DataLoader(
            dataset,
            batch_size=self.hparams.eval_batch_size,
            shuffle=False,
            num_workers=self.hparams.num_workers,
            generator=torch.Generator().manual_seed(0),
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(self.val_set), self._eval_loader(self.train_eval_set)]

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """The test sequences with the label masked: predictions are the model's labels."""
        masked = ParityDataset(self.test_set.tokens[:, :-1], self.secret, index_offset=20_000_000)
        masked.tokens[:, -1] = MASK_TOKEN_ID
        return self._eval_loader(masked)
