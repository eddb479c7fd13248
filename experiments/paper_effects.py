r"""The paper's three effects as this framework measured them, beside the paper's numbers, one verdict each.

Reads result files only (nothing is trained here) and writes ``benchmarks/results/paper_effects.{json,md}``
and, with ``--readme``, the table between the README's ``<!-- paper-effects:start/end -->`` markers::

    python experiments/paper_effects.py --readme README.md

Sources: ``benchmarks/results/parity_contrast/*_seed*.json`` ((20, 6), ``experiments/parity_contrast.py``),
``benchmarks/results/parity.json`` ((14, 3), the CPU default, ``benchmarks/parity_grokking.py``),
``benchmarks/results/arithmetic_window.json`` (SFT window, ``experiments/arithmetic_window.py``),
``benchmarks/results/wikitext_ablation.json`` (U-curve, ``benchmarks/wikitext_ablation.py``).

Below the table, the compute of each part of issue 14 (:func:`compute_spent`): core-hours planned where a plan
was written before the runs, and spent (wall time × threads, summed from the same result files).

Verdicts follow fixed rules (:func:`verdict_parity`, :func:`verdict_paired`), never edited by hand:

- **reproduced**: the paper's effect and its size at the paper's setting;
- **direction only**: the paper's direction, beyond seed noise (a paired 95 % interval excluding 0, or
  every MD seed learning while the baseline memorises), at a smaller setting or different size;
- **not reproduced at this scale**: no such evidence (the interval includes 0, or MD did not learn).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import wikitext_ablation
from benchmarks._common import RESULTS, markdown_table, write_results
from benchmarks.parity_report import summarize
from mdlm.results import replace_readme_section

START, END = "<!-- paper-effects:start -->", "<!-- paper-effects:end -->"


def verdict_paired(lo: float, hi: float, better_is_positive: bool = True) -> str:
    """``direction only`` when the interval of (paper's favoured − baseline) excludes 0 on the paper's side."""
    if math.isnan(lo):
        return "not reproduced at this scale"
    favoured = lo > 0 if better_is_positive else hi < 0
    return "direction only" if favoured else "not reproduced at this scale"


def verdict_parity(md_steps: list[int | None], ce_memorised: bool, paper_steps: int, paper_scale: bool) -> str:
    """MD learns (every seed reaches 99 %) while label-only memorises: reproduced at the paper's (n, k)
    when the median hitting time is within 2x of the paper's; direction only at a smaller (n, k)."""
    if not md_steps or any(s is None for s in md_steps) or not ce_memorised:
        return "not reproduced at this scale"
    median = sorted(md_steps)[len(md_steps) // 2]
    return "reproduced" if paper_scale and median <= 2 * paper_steps else "direction only"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def label_only(r: dict[str, Any]) -> str:
    """The baseline's line: when it generalised, or how long it sat memorised."""
    if r["steps_to_99"] is not None:
        return f"label-only: 99 % val at {r['steps_to_99']:,} steps (seed {r['seed']}; no memorisation phase)"
    return (f"label-only: train {r['final_train']:.3f} / val {r['final_val']:.3f} at {r['last_step']:,} steps, "
            f"memorised for {r['memorised_steps']:,} of them (seed {r['seed']})")


def parity_20_6(folder: Path) -> dict[str, Any]:
    runs = [summarize(_load(p)) for p in sorted(folder.glob("*_seed*.json"))]
    base = [r for r in runs if r["name"] == "md_opt"]
    others = [r for r in runs if r["name"].startswith("md") and r["name"] != "md_opt"]
    ce = [r for r in runs if r["name"] == "ce"]
    memorised = any(r["memorised_steps"] > 0 for r in ce)

    def steps(r):
        return f"{r['steps_to_99']:,}" if r["steps_to_99"] is not None else f"> {r['last_step']:,}"

    here = [f"MD U[ε, 0.246]: 99 % val at {', '.join(steps(r) for r in base) or '—'} steps "
            f"(seed{'s' if len(base) > 1 else ''} {', '.join(str(r['seed']) for r in base)}; final val "
            f"{', '.join(format(r['final_val'], '.3f') for r in base)})"]
    if others:
        here.append("other MD runs: " + "; ".join(f"{r['name']} {steps(r)}" for r in others))
    here += [label_only(r) for r in ce]
    return {"effect": "Parity (20, 6): MD in U[0, 0.246] learns without grokking; label-only memorises",
            "paper": "MD ≈ 99 % val by ≈ 6.4k steps, train ≈ val; label-only 100 % train by ≈ 0.8k, val 50 % "
                     "until ≈ 237k",
            "here": "; ".join(here), "seeds": sorted({r["seed"] for r in base}),
            "verdict": verdict_parity([r["steps_to_99"] for r in base], memorised, 6400, paper_scale=True),
            "details": "docs/parity.md"}


def parity_14_3(path: Path) -> dict[str, Any]:
    runs = [summarize(r) for r in _load(path)["runs"]]
    md = sorted((r for r in runs if r["name"] == "md"), key=lambda r: r["seed"])
    ce = [r for r in runs if r["name"] == "ce"]
    memorised = any(r["memorised_steps"] > 0 and r["final_val"] < 0.6 for r in ce)
    learnt = [r["steps_to_99"] for r in md]
    here = (f"MD U[ε, 0.416]: 99 % val at {', '.join('—' if s is None else f'{s:,}' for s in learnt)} steps "
            f"(seeds {', '.join(str(r['seed']) for r in md)}); "
            + "; ".join(label_only(r) for r in ce))
    return {"effect": "Parity (14, 3), the CPU default: the same contrast at a smaller (n, k)",
            "paper": "(20, 6) only (above)", "here": here, "seeds": [r["seed"] for r in md],
            "verdict": verdict_parity(learnt, memorised, 6400, paper_scale=False), "details": "docs/parity.md"}


def sft_window(path: Path) -> dict[str, Any]:
    data = _load(path)
    paired = data["paired"]  # benchmarks._common.paired_differences, written by experiments/arithmetic_window.py
    diffs = paired["differences"]
    mean, (lo, hi) = paired["mean"], paired["ci95"]
    rows = data["rows"]
    win, uni = rows["window_0.5_1"], rows["uniform_0_1"]
    here = (f"accuracy U[0.5, 1] {win['mean']:.3f} ± {win['se']:.3f} vs U[0, 1] {uni['mean']:.3f} ± {uni['se']:.3f} "
            f"(n = {len(diffs)} seeds); paired difference {mean:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}], "
            f"sign test p = {paired['sign_test_p']:.3f}")
    return {"effect": "SFT: the high-mask window [0.5, 1] beats U[0, 1] on generative math",
            "paper": "LLaDA-8B SFT: GSM8K 0.785 vs 0.768, MATH 0.375 vs 0.341",
            "here": here + " — arithmetic word problems, a 0.5M model trained from scratch",
            "seeds": paired["seeds"], "paired": {"mean": mean, "ci95": [lo, hi]},
            "verdict": verdict_paired(lo, hi), "details": "docs/arithmetic.md"}


def sft_shared_base(path: Path) -> dict[str, Any]:
    """The paper's protocol (one U[0, 1] base, each window fine-tuned from it): ``experiments/sft_shared_base.py``."""
    data = _load(path)
    p = data["paired"]["window_0.5_1"]
    lo, hi = p["ci95"]
    rows = data["rows"]
    here = (", ".join(f"{w} {r['mean']:.3f}" for w, r in rows.items()) + f" (base {data['base']['accuracy']:.3f}); "
            f"[0.5, 1] − U[0, 1] paired {p['mean']:+.3f}, 95 % interval [{lo:+.3f}, {hi:+.3f}] "
            f"(n = {len(p['seeds'])} seeds)")
    return {"effect": "SFT from one shared base: [0.5, 1] vs [0.45, 0.55] vs U[0, 1] at equal steps",
            "paper": "LLaDA-8B: Base 0.703 / 0.314; GSM8K 0.785 / 0.738 / 0.768, MATH 0.375 / 0.342 / 0.341",
            "here": here, "seeds": p["seeds"], "paired": {"mean": p["mean"], "ci95": [lo, hi]},
            "verdict": verdict_paired(lo, hi), "details": "docs/arithmetic.md"}


def u_curve(path: Path, setting: str = "tiny model, 300 steps",
            effect: str = "U-curve: mid-t windows beat U[0, 1] and the extremes on text") -> dict[str, Any]:
    """The ten bins paired with U[0, 1] of the same seed (:func:`benchmarks.wikitext_ablation.paired`)."""
    results = _load(path)
    pairs = wikitext_ablation.paired(results)
    per_bin = {b: [p["mean"], *p["ci95"]] for b, p in pairs.items()}
    best = min(per_bin, key=lambda b: per_bin[b][0])
    better = [b for b, p in pairs.items() if p["vs_uniform"] == "better"]  # interval entirely below U[0, 1]
    worse = [b for b, p in pairs.items() if p["vs_uniform"] == "worse"]
    j = int(best[3:])
    paper_best = min(range(10), key=lambda i: wikitext_ablation.PAPER[i])
    mean, lo, hi = per_bin[best]
    here = (f"best bin [{j / 10:.1f}, {(j + 1) / 10:.1f}]: {mean:+.3f} nats vs U[0, 1], 95 % interval "
            f"[{lo:+.3f}, {hi:+.3f}] (n = {pairs[best]['n']} seeds, paired); bins resolved better than U[0, 1]: "
            f"{len(better)}, worse: {len(worse)} of 10")
    return {"effect": effect,
            "paper": (f"50M, WikiText: best bin [{paper_best / 10:.1f}, {(paper_best + 1) / 10:.1f}] "
                      f"{wikitext_ablation.PAPER[paper_best]:.3f} vs U[0, 1] {wikitext_ablation.PAPER_UNIFORM:.3f}"),
            "here": f"{here} — {setting}", "seeds": sorted({r["seed"] for r in results["runs"]}),
            "per_bin": per_bin,
            "verdict": verdict_paired(lo, hi, better_is_positive=False), "details": "docs/data.md"}


# Plans written before the runs (core-hours), with where they were written; a part without one shows "—".
PLANNED_CORE_HOURS: dict[str, tuple[float, str]] = {
    "ucurve_small": (4.0, "docs/data.md: 55 runs × 3–6 min ≈ 3–4 core-hours; the issue's cap ≤ 4"),
}


def _core_hours(seconds: float, threads: int | None) -> float:
    return seconds * (threads or 1) / 3600


def compute_spent(results: Path = RESULTS) -> list[dict[str, Any]]:
    """Core-hours per part of the issue: planned (where a plan was written before running) vs spent, the
    sum over the part's runs of wall time × threads (training and, where recorded, testing)."""
    from experiments import parity_contrast

    rows = []
    if (results / "parity_contrast").resolve() == parity_contrast.OUT_DIR.resolve():  # its report reads OUT_DIR
        b = parity_contrast.report()["budget"]
        rows.append({"part": "parity (20, 6): contrast + model-change probe", "planned": b["total_core_hours"],
                     "plan_source": "experiments/parity_contrast.py --budget",
                     "runs": sum(r["seeds_run"] for r in b["rows"]), "spent": b["total_spent_core_hours"]})
    if (results / "arithmetic_window.json").is_file():
        data = _load(results / "arithmetic_window.json")["rows"]
        secs = [s for r in data.values() for s in r.get("train_wall_time_s", [])]
        rows.append({"part": "SFT window from scratch (training only)", "planned": None, "plan_source": None,
                     "runs": len(secs), "spent": sum(_core_hours(s, 1) for s in secs)})
    shared = sorted((results / "sft_shared_base").glob("*.json"))
    if shared:
        runs = [_load(f) for f in shared]
        rows.append({"part": "SFT from one shared base (base + fine-tunes, with tests)", "planned": None,
                     "plan_source": None, "runs": len(runs),
                     "spent": sum(_core_hours(r["train"]["wall_time_s"] + r["test"]["wall_time_s"], r.get("threads"))
                                  for r in runs)})
    if (results / "ucurve_small.json").is_file():
        runs = _load(results / "ucurve_small.json")["runs"]
        planned, source = PLANNED_CORE_HOURS["ucurve_small"]
        rows.append({"part": "U-curve, ten bins + U[0, 1] (ucurve_small)", "planned": planned, "plan_source": source,
                     "runs": len(runs), "spent": sum(_core_hours(r["wall_time_s"], r.get("threads")) for r in runs)})
    for r in rows:
        r["spent"] = round(r["spent"], 2)
    return rows


def compute_markdown(rows: list[dict[str, Any]]) -> str:
    body = [[r["part"], r["runs"], "—" if r["planned"] is None else f"{r['planned']:.1f} ({r['plan_source']})",
             f"{r['spent']:.1f}"] for r in rows]
    total = sum(r["spent"] for r in rows)
    return "\n".join([
        f"Compute of these measurements (issue 14's estimate: ≥ 12 core-hours): {total:.1f} core-hours spent "
        "(wall time × threads of every run; machines and loads in each part's page).", "",
        markdown_table(["part", "runs", "core-hours planned (where)", "core-hours spent"], body)])


def collect(results: Path = RESULTS) -> dict[str, Any]:
    """Every effect whose result file exists (the shared-base SFT and the small U-curve join when run)."""
    effects = [parity_20_6(results / "parity_contrast"), parity_14_3(results / "parity.json"),
               sft_window(results / "arithmetic_window.json")]
    if (results / "sft_shared_base.json").is_file():
        effects.append(sft_shared_base(results / "sft_shared_base.json"))
    effects.append(u_curve(results / "wikitext_ablation.json"))
    if (results / "ucurve_small.json").is_file():
        effects.append(u_curve(results / "ucurve_small.json", setting="512-token BPE, 64-token blocks, 1,000 steps",
                               effect="U-curve at a scale that learns past unigram statistics "
                                      "(configs/presets/ucurve_small.yaml)"))
    return {"effects": effects, "compute": compute_spent(results)}


def markdown(data: dict[str, Any]) -> str:
    rows = [[e["effect"], e["paper"], e["here"], f"**{e['verdict']}**", f"[{e['details']}]({e['details']})"]
            for e in data["effects"]]
    table = markdown_table(["effect", "paper (≈)", "this framework", "verdict", "details"], rows)
    return table + ("\n\n" + compute_markdown(data["compute"]) if data.get("compute") else "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=None, help="rewrite the generated table in this markdown file (README.md)")
    p.add_argument("--out", default=str(RESULTS / "paper_effects.json"))
    args = p.parse_args(argv)
    data = collect()
    out = Path(args.out)
    write_results(out, data, markdown, out.with_suffix(".md"))
    if args.readme:
        replace_readme_section(args.readme, START, END, markdown(data))
    return data


if __name__ == "__main__":
    main()
