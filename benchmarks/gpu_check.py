"""GPU check: FSDPStrategy (mdlm.parallel.BlockFSDPStrategy) + bf16 + activation checkpointing on one CUDA device.

Trains a small MaskedDiffusionLM for a few steps with the block wrap policy, activation
checkpointing, ``bf16-mixed`` and norm clipping through the FSDP root, then checks: every block is an
FSDP unit wrapped in a checkpoint wrapper, the loss is finite and decreases, the clipped gradient
norm was recorded, and a full checkpoint saves and reloads. Prints one JSON line.

    python benchmarks/gpu_check.py [--steps 30]

Without CUDA it prints a message and exits 0 (nothing to check on a CPU-only machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; skipped (FSDPStrategy needs a GPU).")
        return 0
    warnings.filterwarnings("ignore")
    from lightning.pytorch import Callback, Trainer
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel

    from mdlm.data.parity import ParityDataModule
    from mdlm.models.transformer import Transformer, TransformerBlock
    from mdlm.module import MaskedDiffusionLM
    from mdlm.parallel import BlockFSDPStrategy
    from mdlm.samplers import Uniform

    class Record(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.norms: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))
            if pl_module.last_grad_norm is not None:
                self.norms.append(float(pl_module.last_grad_norm))

    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, lr=1e-3, lr_schedule="constant", loss_weight="none",
                              normalization="masked_tokens")
    torch.manual_seed(0)
    model.backbone = Transformer(3, preset="small", positional="learned")
    rec = Record()
    strategy = BlockFSDPStrategy(checkpoint_blocks=True, state_dict_type="full")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator="gpu", devices=1, strategy=strategy, precision="bf16-mixed", max_steps=args.steps,
            gradient_clip_val=1.0, gradient_clip_algorithm="norm", limit_val_batches=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
            callbacks=[Uniform(seed=0), rec],
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=ParityDataModule(n=20, k=3, num_train=4096, num_val=64, batch_size=128))
        seconds = time.perf_counter() - start
        root = trainer.strategy.model
        units = [m for m in root.modules() if isinstance(m, FullyShardedDataParallel)]
        wrapped_blocks = [m for m in root.modules() if isinstance(m, CheckpointWrapper)]
        blocks = [m for m in root.modules() if isinstance(m, TransformerBlock)]
        path = Path(tmp) / "full.ckpt"
        trainer.save_checkpoint(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        reloaded = MaskedDiffusionLM(vocab_size=3, mask_token_id=2)
        reloaded.backbone = Transformer(3, preset="small", positional="learned")
        reloaded.load_state_dict(ckpt["state_dict"])
    k = max(1, len(rec.losses) // 5)
    report = {
        "device": torch.cuda.get_device_name(0),
        "steps": len(rec.losses),
        "seconds": round(seconds, 2),
        "fsdp_units": len(units),
        "blocks": len(blocks),
        "checkpointed_blocks": len(wrapped_blocks),
        "first_loss": sum(rec.losses[:k]) / k,
        "last_loss": sum(rec.losses[-k:]) / k,
        "grad_norms_recorded": len(rec.norms),
        "max_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }
    print(json.dumps(report))
    ok = (
        report["fsdp_units"] == len(blocks) + 1
        and report["checkpointed_blocks"] == len(blocks)
        and all(map(lambda x: x == x and abs(x) < 1e4, rec.losses))
        and report["last_loss"] < report["first_loss"]
        and report["grad_norms_recorded"] > 0
    )
    print("gpu_check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
