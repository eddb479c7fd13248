"""Run the k-parity experiment: MD vs label-only supervision (and other windows), several seeds.

Each run is a plain ``mdlm fit`` of a shipped config (plus overrides) in a subprocess; its
``metrics.json`` (written by ``mdlm.results.MetricsHistory``) is collected into one results file::

    python benchmarks/parity_grokking.py --out benchmarks/results/parity.json \
        --run md=configs/parity_md.yaml --run ce=configs/parity_ce.yaml --seeds 0 1 2

``--run NAME=CONFIG[;OVERRIDE;OVERRIDE...]`` may repeat. Then ``benchmarks/parity_report.py``
turns the results into the table and plot of docs/parity.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import fit_subprocess, write_json  # noqa: E402


def run_one(name: str, config: str, overrides: list[str], seed: int, workdir: Path, threads: int | None = None) -> dict:
    """``mdlm fit`` one config with one seed; return its metrics.json content plus the command."""
    run_name = f"{name}_seed{seed}"
    flags = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}", *overrides]
    print("+ mdlm fit --config", config, " ".join(flags), flush=True)
    out = fit_subprocess(config, flags, workdir / "runs", run_name, threads, quiet=False)
    result = out["metrics"]
    result["name"], result["seed"], result["config"], result["overrides"] = name, seed, config, overrides
    result["command"] = " ".join(["mdlm", *out["cmd"][1:]])
    result["returncode"], result["process_wall_time_s"] = out["returncode"], out["wall_time_s"]
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
            write_json(args.out, {"runs": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
