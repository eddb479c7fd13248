"""Train and test the arithmetic SFT config exactly as a user would, and record what it measured.

    python benchmarks/arithmetic_sft.py --out benchmarks/results/arithmetic_sft.json

runs ``mdlm fit --config configs/sft_arithmetic.yaml`` and then ``mdlm test --config
configs/sft_arithmetic.yaml --ckpt_path <the run's last.ckpt>`` as subprocesses (one thread each,
``OMP_NUM_THREADS=1``, one after the other), samples the machine's load average every 10 s while
they run, reads the test metrics back from the run's TensorBoard events and writes the training
wall time, optimizer steps, validation history, per-level answer accuracy (with counts and 95 %
Wilson intervals), generation time and load average to ``--out``. ``--extra`` arguments go to both
commands (e.g. ``--extra --trainer.max_steps=100`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import REPO, LoadSampler, mdlm_executable, wilson_interval  # noqa: E402

CONFIG = "configs/sft_arithmetic.yaml"


def run(cmd: list[str], threads: int) -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, proc.stdout + proc.stderr


def tensorboard_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of every scalar in the TensorBoard events of ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--save-dir", default="runs")
    parser.add_argument("--name", default="sft_arithmetic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/arithmetic_sft.json")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI arguments for fit and test")
    args = parser.parse_args()

    import yaml

    from mdlm.data.arithmetic import LEVELS, ArithmeticDataModule
    from mdlm.results import git_commit, machine_info

    exe = mdlm_executable()
    run_dir = REPO / args.save_dir / args.name
    shutil.rmtree(run_dir, ignore_errors=True)
    logger = [f"--trainer.logger.init_args.save_dir={args.save_dir}", f"--trainer.logger.init_args.name={args.name}",
              "--trainer.enable_progress_bar=false"]
    fit_cmd = [exe, "fit", "--config", args.config, *logger, *args.extra]
    with LoadSampler() as fit_load:
        fit_wall, _ = run(fit_cmd, args.threads)
    version = run_dir / "version_0"
    ckpt = version / "checkpoints" / "last.ckpt"
    metrics = json.loads((version / "metrics.json").read_text())
    test_cmd = [exe, "test", "--config", args.config, *logger, *args.extra, f"--ckpt_path={ckpt.relative_to(REPO)}"]
    with LoadSampler() as test_load:
        test_wall, _ = run(test_cmd, args.threads)
    scalars = tensorboard_scalars(run_dir / "version_1")

    resolved = yaml.safe_load((version / "config.yaml").read_text())
    data_args = resolved["data"]["init_args"]
    dm = ArithmeticDataModule(levels=data_args["levels"], num_train=1, num_val=0, num_test=data_args["num_test"])
    counts = {f"Level {lv}": s["test"] for lv, s in dm.level_sizes.items()}
    per_level = {}
    for group, n in counts.items():
        acc = scalars[f"test/answer_accuracy/{group}"]
        k = round(acc * n)
        level = int(group.split()[1])
        per_level[group] = {
            "accuracy": round(acc, 4), "correct": k, "items": n, "wilson95": wilson_interval(k, n),
            "num_ops": LEVELS[level].num_ops, "digits": LEVELS[level].digits,
        }
    total = sum(counts.values())
    history = metrics["history"]
    result = {
        "task": "mdlm.data.arithmetic: templated arithmetic word problems, GSM8K format, test disjoint on (operands, operators)",
        "commands": {"fit": " ".join(["mdlm", *fit_cmd[1:]]), "test": " ".join(["mdlm", *test_cmd[1:]])},
        "config": args.config,
        "checkpoint": str(ckpt.relative_to(REPO)),
        "levels": data_args["levels"],
        "model": resolved["model"]["init_args"]["backbone"],
        "generation": {"preset": resolved["model"]["init_args"]["generation_preset"],
                       "overrides": resolved["model"]["init_args"]["generation_overrides"]},
        "train": {
            "wall_time_s": round(fit_wall, 1),
            "optimizer_steps": history[-1]["step"] if history else None,
            "train_problems_per_level": data_args["num_train"],
            "batch_size": data_args["batch_size"],
            "validation_history": [{"step": h["step"], "wall_time_s": round(h["wall_time_s"], 1),
                                    "val_nelbo": round(h["val/nelbo"], 4)} for h in history if "val/nelbo" in h],
            "load_average_1min": fit_load.summary(),
        },
        "test": {
            "items": total,
            "accuracy": round(scalars["test/answer_accuracy"], 4),
            "per_level": per_level,
            "wall_time_s": round(test_wall, 1),
            "load_average_1min": test_load.summary(),
        },
        "threads": args.threads,
        "git_commit": git_commit(REPO),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = (REPO / args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"train_wall_s": result["train"]["wall_time_s"], "steps": result["train"]["optimizer_steps"],
                      "per_level": {g: v["accuracy"] for g, v in per_level.items()}, "test_wall_s": result["test"]["wall_time_s"]}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
