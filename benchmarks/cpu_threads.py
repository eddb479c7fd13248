"""CPU threads per process for parity training: 1 thread vs all cores, alternated in one process.

    python benchmarks/cpu_threads.py [--steps 40] [--rounds 3] [--out benchmarks/results/cpu_threads.json]

Trains the quick start's model (configs/parity_md.yaml: 2 layers, width 128, batch 256) for
``--steps`` optimizer steps per measurement with ``torch.set_num_threads(n)`` for n in 1 and the
usable cores, alternating the settings for ``--rounds`` rounds so that contention from other jobs
hits both alike; records seconds per step, the load average before and after, and what
:func:`mdlm.console.default_num_threads` picks on this machine now (the ``mdlm`` CLI's default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, machine_record, write_json  # noqa: E402


def _steps_per_second(threads: int, steps: int) -> float:
    from mdlm.data.parity import ParityDataModule
    from mdlm.module import MaskedDiffusionLM
    from mdlm.samplers.parity import ParitySignalOptimal

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, loss_weight="none", normalization="masked_tokens")
    dm = ParityDataModule(n=14, k=3, num_train=1000, num_val=16, batch_size=256)
    from lightning.pytorch import Trainer

    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[ParitySignalOptimal(k=3, mode="window")])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "cpu_threads.json"))
    args = parser.parse_args()
    from mdlm.console import default_num_threads

    cores = len(os.sched_getaffinity(0))
    settings = sorted({1, cores})
    record = {"machine": machine_record(), "default_num_threads_now": default_num_threads(1), "steps": args.steps}
    seconds: dict[int, list[float]] = {n: [] for n in settings}
    for _ in range(args.rounds):
        for n in settings:
            seconds[n].append(_steps_per_second(n, args.steps))
    record["s_per_step"] = {str(n): {"median": statistics.median(v), "all": v} for n, v in seconds.items()}
    record["loadavg_after"] = list(os.getloadavg())
    if len(settings) == 2:
        record["ratio_1_thread_over_all"] = statistics.median(seconds[settings[-1]]) / statistics.median(seconds[1])
    write_json(Path(args.out), record)
    print({k: v for k, v in record.items() if k != "machine"}, record["machine"]["loadavg"])


if __name__ == "__main__":
    main()
