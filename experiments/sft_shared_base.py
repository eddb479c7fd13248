r"""The paper's SFT protocol on the arithmetic task: one shared base, fine-tuned with each window at equal steps.

The paper fine-tunes one pretrained model (LLaDA-8B-Base, trained with t ~ U[0, 1]) with different
mask-ratio windows and compares generative accuracy (Table 3). Here the base is
``configs/sft_arithmetic.yaml`` trained ``--base-steps`` steps with t ~ U[0, 1] (seed 0), and every
fine-tune starts from its weights (:class:`mdlm.init_weights.InitWeights`: fresh AdamW, warm-up and
cosine schedule) and trains ``--finetune-steps`` more with one window and one seed
(``seed_everything``: batch order, t and masks). All are tested with the exact decoding loop on the
same 1,000 held-out problems; the base is tested too (the paper's "Base" column).

    python experiments/sft_shared_base.py --seeds 0 1 2 --parallel 2          # base, then 3 windows x 3 seeds
    python experiments/sft_shared_base.py --seeds 0 1 2 --report-only

Report: accuracy per window and seed, mean ± s.e., each window minus U[0, 1] paired by seed with a
95 % Student-t interval, and the seeds a 2-point paired effect would need at the measured spread
(:func:`seeds_for_effect`). Results: ``benchmarks/results/sft_shared_base/<run>.json`` (runs with a
file are skipped) and ``benchmarks/results/sft_shared_base.{json,md}``. The base checkpoint lives in
``runs/sft_shared_base/base/`` (not versioned): a fresh checkout retrains it before new fine-tunes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, RESULTS, markdown_table, mean_se, paired_differences, write_results
from experiments.arithmetic_window import PAPER, SAMPLERS
from mdlm.results import replace_readme_section

OUT_DIR = RESULTS / "sft_shared_base"
START, END = "<!-- sft-shared-base:start -->", "<!-- sft-shared-base:end -->"
BASE_RUN = "sft_shared_base/base"
BASE_SEED = 0
WINDOWS = ["window_0.5_1", "window_0.45_0.55", "uniform_0_1"]
BASELINE = "uniform_0_1"


def run_file(name: str) -> Path:
    return OUT_DIR / f"{name}.json"


def base_checkpoint() -> Path:
    return REPO / "runs" / BASE_RUN / "version_0" / "checkpoints" / "last.ckpt"


def _fit_and_test(name: str, extra: list[str]) -> Path:
    out = run_file(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.arithmetic_sft", "--name", f"sft_shared_base/{name}",
           "--out", str(out), "--extra", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return out


def train_base(steps: int) -> Path:
    """The shared base: U[0, 1], ``steps`` steps, seed 0 (retrained when its checkpoint is gone)."""
    if run_file("base").is_file() and base_checkpoint().is_file():
        return run_file("base")
    return _fit_and_test("base", ["--sampler=mdlm.samplers.Uniform", f"--trainer.max_steps={steps}",
                                  f"--seed_everything={BASE_SEED}"])


def finetune(window: str, seed: int, steps: int) -> Path:
    name = f"{window}_seed{seed}"
    if run_file(name).is_file():
        return run_file(name)
    return _fit_and_test(name, [f"--seed_everything={seed}", *SAMPLERS[window], f"--trainer.max_steps={steps}",
                                "--trainer.callbacks+=mdlm.init_weights.InitWeights",
                                f"--trainer.callbacks.path={base_checkpoint().relative_to(REPO)}"])


def seeds_for_effect(sd: float, effect: float = 0.02, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds n for a paired two-sided test of size ``alpha`` to detect ``effect`` with ``power``:
    n = ((z_{1-α/2} + z_{power}) · sd / effect)², sd = the s.d. of the per-seed differences."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * sd / effect) ** 2))


def report(seeds: list[int]) -> dict[str, Any]:
    acc: dict[str, dict[int, float]] = {}
    for window in WINDOWS:
        for seed in seeds:
            if run_file(f"{window}_seed{seed}").is_file():
                acc.setdefault(window, {})[seed] = json.loads(run_file(f"{window}_seed{seed}").read_text())["test"]["accuracy"]
    base = json.loads(run_file("base").read_text()) if run_file("base").is_file() else None
    rows = {w: {"seeds": sorted(a), "accuracy": [a[s] for s in sorted(a)], "paper": PAPER.get(w),
                **dict(zip(("mean", "se"), mean_se([a[s] for s in sorted(a)])))} for w, a in acc.items()}
    paired = {}
    for window in (w for w in WINDOWS if w != BASELINE and w in acc and BASELINE in acc):
        d = paired_differences(acc[window], acc[BASELINE])
        if d is not None:
            paired[window] = {**d, "seeds_for_2_points": None if math.isnan(d["sd"]) else seeds_for_effect(d["sd"])}
    return {"experiment": "sft_shared_base", "config": "configs/sft_arithmetic.yaml",
            "base": None if base is None else {"accuracy": base["test"]["accuracy"], "steps": base["train"]["optimizer_steps"],
                                               "command": base["commands"]["fit"]},
            "rows": rows, "paired": paired}


def markdown(data: dict[str, Any]) -> str:
    body = [[w, ", ".join(map(str, r["seeds"])), ", ".join(f"{a:.3f}" for a in r["accuracy"]),
             f"{r['mean']:.3f} ± {r['se']:.3f}" if len(r["accuracy"]) > 1 else f"{r['mean']:.3f}",
             (r["paper"] or {}).get("GSM8K", "—"), (r["paper"] or {}).get("MATH", "—")] for w, r in data["rows"].items()]
    pair = [[w, ", ".join(f"{d:+.3f}" for d in p["differences"]), f"{p['mean']:+.3f}",
             f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]", f"{p['sign_test_p']:.3g}", p["seeds_for_2_points"] or "—"]
            for w, p in data["paired"].items()]
    base = data["base"]
    return "\n".join([
        "### SFT from one shared base (U[0, 1]) on the arithmetic task: 1,000 held-out problems, exact decoding", "",
        f"Base: {base['steps']} steps with U[0, 1], accuracy {base['accuracy']:.3f} (paper's LLaDA-8B-Base: GSM8K 0.703, "
        "MATH 0.314)." if base else "Base: not trained yet.", "",
        markdown_table(["window", "seeds", "accuracy per seed", "mean ± s.e.", "paper GSM8K", "paper MATH"], body), "",
        markdown_table(["window − U[0, 1]", "per seed", "mean", "95 % interval", "sign test p",
                        "seeds for a 2-point effect"], pair), "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--base-steps", type=int, default=1500)
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=1, help="fine-tunes at once (one thread each)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "sft_shared_base.json"))
    p.add_argument("--docs", default=None, help="rewrite the generated table in this page (docs/arithmetic.md)")
    args = p.parse_args(argv)
    if not args.report_only:
        train_base(args.base_steps)
        jobs = [(w, s) for s in args.seeds for w in WINDOWS]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda job: finetune(*job, args.finetune_steps), jobs))
    data = report(args.seeds)
    write_results(Path(args.out), data, markdown)
    if args.docs:
        replace_readme_section(args.docs, START, END, markdown(data).strip())
    return data


if __name__ == "__main__":
    main()
