r"""The paper's SFT window effect (Table 3: t ~ U[0.5, 1] beats U[0, 1] on generative math), on the arithmetic task.

Each run is ``configs/sft_arithmetic.yaml`` trained and tested as a user would
(:mod:`benchmarks.arithmetic_sft`: ``mdlm fit`` then ``mdlm test``, one thread), with the mask-ratio
sampler and the training seed (``seed_everything``: initialisation, batch order, t and masks) varied;
the data seed is fixed, so every run is tested on the same 1,000 held-out problems. Runs that already
have a result file are not rerun, so the experiment can be extended seed by seed and across sessions.

    python experiments/arithmetic_window.py --seeds 0 1 --parallel 2        # train what is missing, then report
    python experiments/arithmetic_window.py --seeds 0 1 --report-only       # the table from the result files

Per sampler: accuracy per seed, mean ± standard error over seeds, and the paper's GSM8K/MATH numbers
for LLaDA-8B SFT beside it (a different model, data and scale: the comparison is of direction, not
size). Results: ``benchmarks/results/arithmetic_window/<sampler>_seed<s>.json`` (one per run) and
``benchmarks/results/arithmetic_window.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, RESULTS, markdown_table, mean_se, paired_differences, write_results

#: sampler name -> the CLI arguments that select it (the config's own sampler is the [0.5, 1] window)
SAMPLERS: dict[str, list[str]] = {
    "window_0.5_1": [],
    "uniform_0_1": ["--sampler=mdlm.samplers.Uniform"],
    "window_0.45_0.55": ["--sampler=mdlm.samplers.Window", "--sampler.init_args.t_min=0.45",
                         "--sampler.init_args.t_max=0.55"],
}
#: Huang & Mirzasoleiman, Table 3 (LLaDA-8B SFT on tulu-3 personas math, generative accuracy)
PAPER = {
    "window_0.5_1": {"GSM8K": 0.785, "MATH": 0.375},
    "uniform_0_1": {"GSM8K": 0.768, "MATH": 0.341},
    "window_0.45_0.55": {"GSM8K": 0.738, "MATH": 0.342},
}
OUT_DIR = RESULTS / "arithmetic_window"


def run_file(sampler: str, seed: int) -> Path:
    return OUT_DIR / f"{sampler}_seed{seed}.json"


def train_and_test(sampler: str, seed: int) -> Path:
    """One ``benchmarks/arithmetic_sft.py`` run (fit + test) into its result file; skipped if it exists."""
    out = run_file(sampler, seed)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.arithmetic_sft", "--name", f"arithmetic_window/{sampler}_seed{seed}",
           "--out", str(out.relative_to(REPO)), "--extra", f"--seed_everything={seed}", *SAMPLERS[sampler]]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return out


def report(samplers: list[str], seeds: list[int]) -> dict[str, Any]:
    rows = {}
    for sampler in samplers:
        runs = [json.loads(run_file(sampler, s).read_text()) for s in seeds if run_file(sampler, s).is_file()]
        if not runs:
            continue
        acc = [r["test"]["accuracy"] for r in runs]
        mean, se = mean_se(acc)
        rows[sampler] = {
            "seeds": [r["commands"]["fit"].split("--seed_everything=")[1].split()[0] for r in runs],
            "accuracy": acc, "mean": mean, "se": se,
            "items": runs[0]["test"]["items"],
            "train_wall_time_s": [r["train"]["wall_time_s"] for r in runs],
            "load_average": [r["train"]["load_average_1min"]["mean"] for r in runs],
            "paper": PAPER.get(sampler),
        }
    return rows


def paired(a: str, b: str, seeds: list[int]) -> dict[str, Any] | None:
    """Accuracy of sampler ``a`` minus ``b`` on the seeds both have (:func:`benchmarks._common.paired_differences`)."""
    acc = {name: {s: json.loads(run_file(name, s).read_text())["test"]["accuracy"] for s in seeds
                  if run_file(name, s).is_file()} for name in (a, b)}
    d = paired_differences(acc[a], acc[b])
    return None if d is None else {"a": a, "b": b, **d}


def markdown(data: dict[str, Any]) -> str:
    body = []
    for sampler, r in data["rows"].items():
        paper = r["paper"] or {}
        body.append([sampler, len(r["accuracy"]), ", ".join(f"{a:.3f}" for a in r["accuracy"]),
                     f"{r['mean']:.3f} ± {r['se']:.3f}" if len(r["accuracy"]) > 1 else f"{r['mean']:.3f}",
                     paper.get("GSM8K", "—"), paper.get("MATH", "—"),
                     ", ".join(f"{w:.0f}" for w in r["train_wall_time_s"])])
    head = ["sampler", "seeds", "accuracy per seed", "mean ± s.e.", "paper GSM8K", "paper MATH", "train s"]
    return "\n".join([
        "### SFT window effect on the arithmetic task (level 1, 1,000 held-out problems, exact decoding)",
        "",
        markdown_table(head, body),
        "",
        *([_paired_line(data["paired"]), ""] if data.get("paired") else []),
    ])


def _paired_line(d: dict[str, Any]) -> str:
    return (f"Paired by seed ({d['a']} − {d['b']}, seeds {', '.join(map(str, d['seeds']))}): "
            f"{', '.join(f'{x:+.3f}' for x in d['differences'])}; mean {d['mean']:+.3f} ± {d['se']:.3f}; "
            f"{d['a']} higher on {d['wins']}, tied on {d['ties']}, lower on {d['losses']} "
            f"(exact two-sided sign test p = {d['sign_test_p']:.3g}).")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samplers", nargs="+", default=["window_0.5_1", "uniform_0_1"], choices=list(SAMPLERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--parallel", type=int, default=1, help="runs at once (one thread each)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "arithmetic_window.json"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if not args.report_only:
        jobs = [(s, seed) for seed in args.seeds for s in args.samplers]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda job: train_and_test(*job), jobs))
    data = {"experiment": "arithmetic_window", "config": "configs/sft_arithmetic.yaml",
            "rows": report(args.samplers, args.seeds), "wall_time_s": round(time.perf_counter() - t0, 1)}
    if "window_0.5_1" in args.samplers and "uniform_0_1" in args.samplers:
        data["paired"] = paired("window_0.5_1", "uniform_0_1", args.seeds)
    write_results(Path(args.out), data, markdown)
    return data


if __name__ == "__main__":
    main()
