"""Two CPU DDP ranks (gloo) read a TextDataModule; every rank records the blocks it receives.

Run by ``tests/test_data_text.py::test_ddp_ranks_receive_different_blocks`` (never by pytest
directly). Lightning's ddp strategy re-executes this script for rank 1, so everything runs under
``if __name__ == "__main__"``. Each rank writes ``<out>/rank<R>.json`` with the global block index
and the token ids of every train and val block it saw.

    python tests/scripts/ddp_text_shards.py --train T.txt --val V.txt --cache DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", default="bpe:300")
    parser.add_argument("--block-length", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk-tokens", type=int, default=96)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import torch
    from lightning.pytorch import LightningModule, Trainer

    from mdlm.data.text import TextDataModule

    class Recorder(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[str, list] = {"train": [], "val": []}

        def _record(self, split: str, batch: dict) -> None:
            assert batch["input_ids"].dtype == torch.long
            for idx, row in zip(batch["index"].tolist(), batch["input_ids"].tolist()):
                self.seen[split].append([idx, row])

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            self._record("train", batch)
            return (self.weight * batch["input_ids"].float().mean()).sum()

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            self._record("val", batch)

        def on_fit_end(self) -> None:
            out = Path(args.out) / f"rank{self.global_rank}.json"
            payload = {"world_size": self.trainer.world_size, "pid": os.getpid(), **self.seen}
            out.write_text(json.dumps(payload))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = TextDataModule(
        train_files=args.train,
        val_files=args.val,
        tokenizer=args.tokenizer,
        documents="line",
        block_length=args.block_length,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache_dir=args.cache,
        chunk_tokens=args.chunk_tokens,
        seed=7,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Recorder(), datamodule=dm)


if __name__ == "__main__":
    main()
