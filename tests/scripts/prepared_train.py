"""Train a recorder model from a prepared dataset (mdlm.data.prepare); record the sample ids seen.

Used by ``tests/test_prepare.py`` (never collected by pytest):

* ``--devices 2``: two CPU DDP ranks (gloo); Lightning re-executes this script for rank 1. Each rank
  writes ``<out>/rank<R>.json`` with the block index and tokens of every train/val block it saw.
* ``--kill-after-step K --ckpt-every C``: checkpoints every C steps, then SIGKILLs itself after step
  K (a crash, not a clean stop; every rank kills itself); ``<out>/steps<R>.jsonl`` holds the step, ids
  and loss of every step of rank R.
* ``--resume CKPT``: resumes from a checkpoint.
* ``--lr``: the SGD learning rate (default 0: the weight stays 1). With ``lr > 0`` the loss
  ``weight * mean(tokens)`` depends on every earlier step, so a resume that did not restore the weight
  (or the optimizer) shows in the losses.

The functions are importable too (``run``), so the tests run the single-process references in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import warnings
from pathlib import Path
from typing import Any


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from lightning.pytorch import LightningModule

    from mdlm.data.text import TextDataModule

    out = Path(args.out)

    class Recorder(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.seen: dict[str, list] = {"train": [], "val": []}

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            assert batch["input_ids"].dtype == torch.long
            ids = batch["index"].tolist()
            self.seen["train"].append([[i, row] for i, row in zip(ids, batch["input_ids"].tolist())])
            loss = (self.weight * batch["input_ids"].float().mean()).sum()
            with open(out / f"steps{self.global_rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": self.global_step, "ids": ids, "loss": loss.item()}) + "\n")
            return loss

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if args.kill_after_step and self.global_step >= args.kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            for i, row in zip(batch["index"].tolist(), batch["input_ids"].tolist()):
                self.seen["val"].append([i, row])

        def on_fit_end(self) -> None:
            flat = [x for step in self.seen["train"] for x in step]
            payload = {"world_size": self.trainer.world_size, "pid": os.getpid(), "train": flat, "val": self.seen["val"]}
            (out / f"rank{self.global_rank}.json").write_text(json.dumps(payload))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=args.lr, momentum=0.9 if args.lr else 0.0)

    prepared = {"train": args.train}
    if args.val:
        prepared["val"] = args.val
    storage = {"endpoint_url": args.endpoint_url} if args.endpoint_url else None
    dm = TextDataModule(
        prepared=prepared,
        storage_options=storage,
        tokenizer=args.tokenizer,
        block_length=args.block_length,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache_dir=args.cache,
        seed=7,
    )
    return Recorder(), dm


def run(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", default=None)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--block-length", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--kill-after-step", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--lr", type=float, default=0.0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    Path(args.out).mkdir(parents=True, exist_ok=True)
    model, dm = build(args)
    callbacks = []
    if args.ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=str(Path(args.out) / "ckpt"), every_n_train_steps=args.ckpt_every,
                                         save_top_k=-1, filename="{step}"))
    trainer = Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=1,
        max_steps=args.max_steps,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if args.val else 0,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=args.resume)
    return model


if __name__ == "__main__":
    run()
