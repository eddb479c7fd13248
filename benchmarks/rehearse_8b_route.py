"""The paper's 8B SFT route, end to end on 2 CPU processes, with sizes shrunk and nothing else changed.

    python benchmarks/rehearse_8b_route.py [--out runs/rehearsal_8b_route] [--json benchmarks/results/rehearsal_8b_route.json]

1. writes a tiny LLaDA stand-in (:mod:`mdlm.testing.standins`: LLaDA's remote-code traits, forced
   ``init_device="cpu"``, mask ignored, no HF checkpointing) with random weights as *sharded* safetensors
   + index, vocabulary GPT-2 + [MASK] (LLaDA's own tokenizer needs the Hub);
2. ``mdlm fit --config configs/sft_math_high_mask.yaml --config configs/data/math_train.yaml --config
   configs/presets/rehearsal_cpu.yaml``: the paper config's FSDP2 strategy (bf16 compute, fp32 master
   weights and reduction, block checkpointing), meta init with per-rank sharded loading, validation
   NELBO, EMA;
3. ``mdlm test`` of the last (sharded DCP) checkpoint: generation + answer scoring on MATH-500 prompts;
4. prints and writes the wall times and the final metrics (JSON).

Each step is a subprocess running the ``mdlm`` console script beside this Python; Lightning starts
the second process itself. Exit status non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import REPO, mdlm_executable  # noqa: E402

CONFIGS = ["configs/sft_math_high_mask.yaml", "configs/data/math_train.yaml", "configs/presets/rehearsal_cpu.yaml"]

#: the stand-in: GPT-2's 50,257 tokens + [MASK] (50257), embedding padded to a multiple of 128 as LLaDA's
STANDIN = dict(vocab_size=50258, embedding_size=50304, mask_token_id=50257, eos_token_id=50256, pad_token_id=50256,
               d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, max_sequence_length=512)


#: what the JSON keeps of each evaluation of metrics.json
EVAL_KEYS = ("step", "wall_time_s", "train/loss", "train/grad_norm", "val/nelbo", "val/ppl")


def _run(args: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{' '.join(args[:2])} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return elapsed


def _latest_version(root: Path) -> Path:
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise SystemExit(f"no run folder under {root}")
    return versions[-1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rehearsal_8b_route", help="folder of the stand-in and the runs")
    parser.add_argument("--json", default="benchmarks/results/rehearsal_8b_route.json", help="where to write the results")
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    total = time.perf_counter()

    from mdlm.testing.standins import make_folder

    start = time.perf_counter()
    standin = make_folder("llada", out / "llada_standin", weights=True, max_shard_size="2MB", **STANDIN)
    shards = sorted(p.name for p in standin.glob("*.safetensors"))
    write_s = time.perf_counter() - start

    common = [arg for config in CONFIGS for arg in ("--config", config)]
    overrides = [
        f"--model.init_args.backbone.init_args.pretrained={standin}",
        f"--trainer.logger.init_args.save_dir={out.parent}",
        f"--trainer.logger.init_args.name={out.name}",
    ]
    fit_s = _run([mdlm_executable(), "fit", *common, *overrides], env, out / "fit.log")
    run_dir = _latest_version(out)
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise SystemExit(f"fit wrote no checkpoint under {run_dir / 'checkpoints'}")
    history = json.loads((run_dir / "metrics.json").read_text())
    test_s = _run(
        [mdlm_executable(), "test", *common, *overrides, f"--ckpt_path={checkpoints[-1]}",
         f"--trainer.logger.init_args.version={run_dir.name}_test"],
        env, out / "test.log",
    )
    test_log = (out / "test.log").read_text()
    results = {
        "command": f"python benchmarks/rehearse_8b_route.py --out {args.out}",
        "configs": CONFIGS,
        "standin": {"kind": "llada", **STANDIN, "shards": shards},
        "wall_s": {"write_standin": round(write_s, 1), "fit": round(fit_s, 1), "test": round(test_s, 1),
                   "total": round(time.perf_counter() - total, 1)},
        "fit": {
            "checkpoint": str(checkpoints[-1].relative_to(REPO) if checkpoints[-1].is_relative_to(REPO) else checkpoints[-1]),
            "sharded_checkpoint": checkpoints[-1].is_dir(),
            "evaluations": [{k: v for k, v in row.items() if k in EVAL_KEYS} for row in history["history"]],
        },
        "test": _test_metrics(test_log),
        "load_average": os.getloadavg(),
    }
    path = REPO / args.json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps({"wall_s": results["wall_s"], "test": results["test"]}, indent=1))
    return results


def _test_metrics(log: str) -> dict[str, float]:
    """The ``test/...`` values of Lightning's result table in ``mdlm test``'s output."""
    metrics = {}
    for line in log.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        if len(cells) == 2 and cells[0].startswith("test/"):
            try:
                metrics[cells[0]] = float(cells[1])
            except ValueError:
                pass
    return metrics


if __name__ == "__main__":
    main()
