"""Run the k-parity experiment: MD vs label-only supervision (and other windows), several seeds.

Each run is a plain ``mdlm fit`` of a shipped config (plus overrides) in a subprocess; its
``metrics.json`` (written by ``mdlm.results.MetricsHistory``) is collected into one results file::

    python benchmarks/parity_grokking.py --out benchmarks/results/parity.json \
        --run md=configs/parity_md.yaml --run ce=configs/parity_ce.yaml --seeds 0 1 2

``--run NAME=CONFIG[;OVERRIDE;OVERRIDE...]`` may repeat. Then ``benchmarks/parity_report.py``
turns the results into the README table and plot.
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

REPO = Path(__file__).resolve().parents[1]


def run_one(name: str, config: str, overrides: list[str], seed: int, workdir: Path, threads: int | None = None) -> dict:
    """``mdlm fit`` one config with one seed; return its metrics.json content plus the command."""
    save_dir = workdir / "runs"
    run_name = f"{name}_seed{seed}"
    shutil.rmtree(save_dir / run_name, ignore_errors=True)
    exe = shutil.which("mdlm") or str(Path(sys.executable).parent / "mdlm")
    cmd = [
        exe, "fit", "--config", str(REPO / config), f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--trainer.logger.init_args.save_dir={save_dir}", f"--trainer.logger.init_args.name={run_name}",
        "--trainer.enable_progress_bar=false", *overrides,
    ]
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    metrics_file = save_dir / run_name / "version_0" / "metrics.json"
    result = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"run": {}, "history": []}
    result["name"], result["seed"], result["config"], result["overrides"] = name, seed, config, overrides
    result["command"] = " ".join(["mdlm", *cmd[1:]])
    result["returncode"], result["process_wall_time_s"] = proc.returncode, round(wall, 1)
    result["threads"] = threads
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="NAME=CONFIG[;OVERRIDE...]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("experiments"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    for spec in args.run:
        name, _, rest = spec.partition("=")
        config, *overrides = rest.split(";")
        for seed in args.seeds:
            results = [r for r in results if not (r["name"] == name and r["seed"] == seed)]
            results.append(run_one(name, config, [o for o in overrides if o], seed, args.workdir.resolve(), args.threads))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"runs": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
