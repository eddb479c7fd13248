"""Two CPU ranks (gloo): DDP and FSDP2 runs of a tiny MaskedDiffusionLM, checked against one process.

Run by ``tests/test_parallel.py::test_two_rank_ddp_and_fsdp2`` (never by pytest directly): the test
starts this script twice with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_PORT`` set, so Lightning
uses the externally created processes and every ``Trainer`` below runs on both ranks. Each rank
writes ``<out>/rank<R>.json``; rank 0 also writes ``ema_full.pt`` and ``fsdp2_final.ckpt``.

Runs (all: 2 ranks x micro-batch 4 x 2 accumulation steps = global batch 16, norm clipping, masked_tokens
normalisation whose normaliser is random and all-reduced):

1. DDP, 6 optimizer steps: losses, t per rank, clipped grad norms, per-rank training-state bytes;
2. FSDP2 (``FSDP2Strategy``, activation checkpointing of the blocks) + EMA, 6 steps: the same records,
   a sharded (DCP) checkpoint after step 3 (mid-epoch), the EMA against a hand-computed average of the
   gathered weights, bytes of the local shards;
3. FSDP2 resumed from that sharded checkpoint to step 6 (losses must repeat run 2's), then a
   consolidated checkpoint (``save_distributed_checkpoint=False``) for single-process loading;
4. FSDP2 with ``bf16-true``, 2 steps: parameters bf16, EMA shadows fp32, finite losses.

    python tests/scripts/distributed_checks.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

MICRO_BATCH = 4
ACCUMULATE = 2
STEPS = 6
SAVE_AT = 3
CLIP = 0.05
EMA_DECAY = 0.6


def backbone(vocab_size: int):
    from mdlm.models.transformer import Transformer

    return Transformer(vocab_size, n_layer=2, n_head=2, d_model=32, positional="learned")


def make_model():
    """The tiny model every run starts from (same seed, same weights).

    The backbone is set after construction so the hyperparameters hold no function and checkpoints
    load with ``weights_only=True`` (Lightning's restore-after-setup path does not forward
    ``weights_only=False``).
    """
    import torch

    from mdlm.module import MaskedDiffusionLM

    model = MaskedDiffusionLM(
        vocab_size=3, mask_token_id=2, loss_weight="none", normalization="masked_tokens",
        lr=3e-3, warmup_steps=0, lr_schedule="constant", weight_decay=0.1,
    )
    torch.manual_seed(0)
    model.backbone = backbone(3)
    return model


def make_data(batch_size: int):
    from mdlm.data.parity import ParityDataModule

    return ParityDataModule(n=10, k=3, num_train=64, num_val=16, batch_size=batch_size, seed=3)


def make_recorder():
    from lightning.pytorch import Callback

    class Recorder(Callback):
        """Per micro-batch: the logged global loss and this rank's t; per optimizer step: the grad norm."""

        def __init__(self) -> None:
            self.losses: list[float] = []
            self.t: list[list[float]] = []
            self.grad_norms: list[float] = []
            self.bytes: dict[str, int] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(trainer.callback_metrics["train/loss"]))
            self.t.append(trainer.lightning_module.sampler.last_t.tolist())

        def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
            from mdlm.parallel import training_state_bytes

            if pl_module.last_grad_norm is not None:
                self.grad_norms.append(float(pl_module.last_grad_norm))
            self.bytes = training_state_bytes(pl_module, optimizer)

    return Recorder()


def trainer_kwargs(**kwargs):
    base = dict(
        accelerator="cpu", max_steps=STEPS, accumulate_grad_batches=ACCUMULATE, gradient_clip_val=CLIP,
        gradient_clip_algorithm="norm", limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    base.update(kwargs)
    return base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from lightning.pytorch import Callback, Trainer

    from mdlm.ema import EMA
    from mdlm.parallel import FSDP2Strategy
    from mdlm.samplers import Uniform

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    result: dict = {"rank": rank}

    def record(name: str, rec, trainer) -> None:
        result[name] = {"losses": rec.losses, "t": rec.t, "grad_norms": rec.grad_norms, "bytes": rec.bytes,
                        "world_size": trainer.world_size}

    # 1. DDP ------------------------------------------------------------------------------
    rec = make_recorder()
    trainer = Trainer(**trainer_kwargs(devices=2, strategy="ddp", callbacks=[Uniform(seed=5), rec]))
    trainer.fit(make_model(), datamodule=make_data(MICRO_BATCH))
    record("ddp", rec, trainer)

    # 2. FSDP2 + EMA, sharded checkpoint mid-epoch ---------------------------------------
    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == SAVE_AT and (batch_idx + 1) % ACCUMULATE == 0:
                trainer.save_checkpoint(out / "sharded.ckpt")

    class Snapshots(Callback):
        """Full (gathered) weights after every optimizer step, for the hand-computed EMA."""

        def __init__(self) -> None:
            self.snaps: list[dict[str, torch.Tensor]] = []
            self._last = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step > self._last:
                self._last = trainer.global_step
                self.snaps.append({n: p.full_tensor().double() for n, p in pl_module.named_parameters()})

    rec, snaps, ema = make_recorder(), Snapshots(), EMA(decay=EMA_DECAY)
    strategy = FSDP2Strategy(checkpoint_blocks=True)
    trainer = Trainer(**trainer_kwargs(devices=2, strategy=strategy, callbacks=[Uniform(seed=5), rec, snaps, ema, SaveAt()]))
    model = make_model()
    trainer.fit(model, datamodule=make_data(MICRO_BATCH))
    record("fsdp2", rec, trainer)
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    result["fsdp2"]["sharded_blocks"] = all(isinstance(b, FSDPModule) for b in model.backbone.blocks)
    result["fsdp2"]["dtensor_params"] = all(isinstance(p, DTensor) for p in model.parameters())
    expected = snaps.snaps[0]
    for snap in snaps.snaps[1:]:
        expected = {n: EMA_DECAY * expected[n] + (1 - EMA_DECAY) * snap[n] for n in expected}
    got = ema.ema_state_dict()
    result["fsdp2"]["ema_max_abs_error"] = max(float((got[n].double() - expected[n]).abs().max()) for n in expected)
    result["fsdp2"]["ema_updates"] = len(snaps.snaps)
    if rank == 0:
        torch.save(got, out / "ema_full.pt")

    # 3. resume from the sharded checkpoint, then a consolidated checkpoint ---------------
    rec, ema = make_recorder(), EMA(decay=EMA_DECAY)
    strategy = FSDP2Strategy(checkpoint_blocks=True, save_distributed_checkpoint=False)
    trainer = Trainer(**trainer_kwargs(devices=2, strategy=strategy, callbacks=[Uniform(seed=5), rec, ema]))
    trainer.fit(make_model(), datamodule=make_data(MICRO_BATCH), ckpt_path=str(out / "sharded.ckpt"))
    record("fsdp2_resumed", rec, trainer)
    resumed = ema.ema_state_dict()
    result["fsdp2_resumed"]["ema_vs_uninterrupted"] = max(float((resumed[n] - got[n]).abs().max()) for n in got)
    trainer.save_checkpoint(out / "fsdp2_final.ckpt")

    # 4. bf16-true -----------------------------------------------------------------------
    rec, ema = make_recorder(), EMA(decay=EMA_DECAY)
    trainer = Trainer(**trainer_kwargs(devices=2, strategy=FSDP2Strategy(), precision="bf16-true", max_steps=2,
                                       callbacks=[Uniform(seed=5), rec, ema]))
    model = make_model()
    trainer.fit(model, datamodule=make_data(MICRO_BATCH))
    record("fsdp2_bf16", rec, trainer)
    result["fsdp2_bf16"]["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    result["fsdp2_bf16"]["ema_dtypes"] = sorted({str(s.dtype) for s in ema._average_model.shadows})

    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
