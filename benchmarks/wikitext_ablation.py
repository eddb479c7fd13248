"""The ten-bin mask-window ablation on WikiText at CPU scale, plus U[0, 1], several seeds.

Every run is ``mdlm fit --config configs/wikitext_ablation.yaml`` with one override (the bin, or
``--sampler=mdlm.samplers.Uniform``) at equal steps; its final evaluation is the NELBO per token
over t ∈ [0, 1] on the WikiText-2 test split. ``--workers`` runs that many fits at once (each with
``--threads`` threads). Results go to one JSON; ``--png`` plots test loss per training bin with
U[0, 1] as a line, and ``--readme`` rewrites the table between the markers of the page it names (docs/data.md).

    python benchmarks/wikitext_ablation.py --seeds 0 1 --workers 1 --threads 1 \
        --out benchmarks/results/wikitext_ablation.json --png benchmarks/results/wikitext_ablation.png

``--preset configs/presets/ucurve_small.yaml`` adds a config after the ablation's (the U-curve at a scale
the CPU resolves over seeds: 512-token BPE, 64-token blocks, 1,000 steps) and ``--marker ucurve-small``
names the docs section it rewrites; the table pairs every bin with U[0, 1] of the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import fit_subprocess, markdown_table, mean_se, t_interval, write_json  # noqa: E402
from mdlm.results import replace_readme_section  # noqa: E402

CONFIG = "configs/wikitext_ablation.yaml"
START, END = "<!-- wikitext-ablation:start -->", "<!-- wikitext-ablation:end -->"
#: the paper's test loss after 6,000 steps (50M model, batch 1024, context 150), read off its figure
PAPER = [4.756, 3.984, 3.792, 3.678, 3.615, 3.617, 3.793, 4.005, 4.065, 4.812]
PAPER_UNIFORM = 3.880


def run_names(num_bins: int = 10) -> list[tuple[str, list[str]]]:
    runs = [(f"bin{i}", [f"--sampler.init_args.index={i}"]) for i in range(num_bins)]
    return runs + [("uniform", ["--sampler=mdlm.samplers.Uniform"])]


def run_one(name: str, overrides: list[str], seed: int, workdir: Path, threads: int, extra: list[str],
            preset: str | None = None) -> dict:
    run_name = f"{name}_seed{seed}"
    flags = [*(["--config", str(preset)] if preset else []), f"--seed_everything={seed}", *overrides, *extra,
             "--trainer.enable_checkpointing=false"]
    out = fit_subprocess(CONFIG, flags, workdir, run_name, threads)
    data = out["metrics"]
    final = data["history"][-1] if data["history"] else {}
    print(f"{run_name}: test nelbo {final.get('val/nelbo')} in {out['wall_time_s']:.0f} s", flush=True)
    return {
        "name": name, "seed": seed, "command": " ".join(["mdlm", *out["cmd"][1:]]), "returncode": out["returncode"],
        "wall_time_s": out["wall_time_s"], "threads": threads, "final": final, "run": data.get("run", {}),
    }


def summarize(results: dict) -> list[dict]:
    """Mean and standard error of the final test NELBO per run name, in run order."""
    rows = []
    for name, _ in run_names():
        values = [r["final"]["val/nelbo"] for r in results["runs"] if r["name"] == name and "val/nelbo" in r["final"]]
        if not values:
            continue
        mean, se = mean_se(values)
        rows.append({"name": name, "n": len(values), "mean": mean, "se": se})
    return rows


def paired(results: dict) -> dict[str, dict]:
    """Per bin: test NELBO minus U[0, 1]'s of the same seed (same initialisation, batch order and evaluation
    t and masks), the mean with its 95 % Student-t interval, and whether the interval excludes 0."""
    nelbo = {(r["name"], r["seed"]): r["final"]["val/nelbo"] for r in results["runs"] if "val/nelbo" in r["final"]}
    out = {}
    for name, _ in run_names():
        if name == "uniform":
            continue
        diffs = [v - nelbo[("uniform", seed)] for (n, seed), v in sorted(nelbo.items())
                 if n == name and ("uniform", seed) in nelbo]
        if not diffs:
            continue
        mean, lo, hi = t_interval(diffs)
        resolved = "better" if hi < 0 else "worse" if lo > 0 else "not resolved"
        out[name] = {"n": len(diffs), "mean": mean, "ci95": [lo, hi], "vs_uniform": resolved}
    return out


def _paired_cell(p: dict | None) -> str:
    if p is None:
        return "—"
    if p["n"] < 2:
        return f"{p['mean']:+.3f} (n=1)"
    return f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] (n={p['n']}): {p['vs_uniform']}"


def table(results: dict) -> str:
    rows = summarize(results)
    pairs = paired(results)
    by_name = {r["name"]: r for r in rows}
    ranked = sorted((r for r in rows if r["name"] != "uniform"), key=lambda r: r["mean"])
    rank = {r["name"]: i + 1 for i, r in enumerate(ranked)}
    paper_rank = {f"bin{i}": j + 1 for j, i in enumerate(sorted(range(10), key=lambda i: PAPER[i]))}
    cells = []
    for i in range(10):
        r = by_name.get(f"bin{i}")
        if r is not None:
            cells.append([f"[{i / 10:.1f}, {(i + 1) / 10:.1f}]", f"{r['mean']:.3f} ± {r['se']:.3f} (n={r['n']})",
                          _paired_cell(pairs.get(r["name"])), rank[r["name"]], f"{PAPER[i]:.3f}",
                          f"{PAPER[i] - PAPER_UNIFORM:+.3f}", paper_rank[f"bin{i}"]])
    if "uniform" in by_name:
        u = by_name["uniform"]
        cells.append(["U[0, 1]", f"{u['mean']:.3f} ± {u['se']:.3f} (n={u['n']})", "—", "—", f"{PAPER_UNIFORM:.3f}",
                      "—", "—"])
    headers = ["training t", "test NELBO/token (mean ± s.e.)", "paired − U[0, 1], 95 % interval", "rank here",
               "paper test loss", "paper − U[0, 1]", "paper rank"]
    return markdown_table(headers, cells)


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["name"]: r for r in summarize(results)}
    centers = [(i + 0.5) / 10 for i in range(10) if f"bin{i}" in rows]
    means = [rows[f"bin{i}"]["mean"] for i in range(10) if f"bin{i}" in rows]
    ses = [rows[f"bin{i}"]["se"] for i in range(10) if f"bin{i}" in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.errorbar(centers, means, yerr=ses, marker="o", capsize=3, label="training bin (this CPU)")
    if "uniform" in rows:
        ax.axhline(rows["uniform"]["mean"], color="C1", ls="--", label="U[0, 1] (this CPU)")
    ax.set_xlabel("training mask-ratio bin (center)")
    ax.set_ylabel("test NELBO / token, t ∈ [0, 1]")
    steps = {r["final"].get("step") for r in results["runs"] if r["final"]}
    ax.set_title(f"WikiText-2, tiny preset, {', '.join(map(str, sorted(s for s in steps if s)))} steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="run names to (re)run, e.g. bin0 uniform")
    parser.add_argument("--extra", action="append", default=[], help="an extra CLI override for every run (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path("experiments/wikitext_ablation"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--readme", type=Path)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--preset", default=None, help="a config added after the ablation's (configs/presets/ucurve_small.yaml)")
    parser.add_argument("--marker", default="wikitext-ablation",
                        help="the docs section to rewrite: <!-- MARKER:start --> ... <!-- MARKER:end -->")
    args = parser.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    if not args.report_only:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        runs = dict(run_names())
        order = args.only or list(runs)  # --only also sets the order
        for name in order:
            if name not in runs:
                raise SystemExit(f"unknown run {name!r}; known: {', '.join(runs)}")
        jobs = [(n, runs[n], s) for s in args.seeds for n in order]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run_one, n, o, s, workdir, args.threads, args.extra, args.preset) for n, o, s in jobs]
            for future in futures:
                r = future.result()
                results["runs"] = [x for x in results["runs"] if not (x["name"] == r["name"] and x["seed"] == r["seed"])]
                results["runs"].append(r)
                results["total_wall_time_s"] = round(time.perf_counter() - t0, 1)
                write_json(args.out, results)
    text = table(results)
    print(text)
    if args.png:
        plot(results, args.png)
    if args.readme:
        replace_readme_section(args.readme, f"<!-- {args.marker}:start -->", f"<!-- {args.marker}:end -->", text)


if __name__ == "__main__":
    main()
