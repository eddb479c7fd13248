"""Turn ``parity.json`` (from ``parity_grokking.py``) into the table of docs/parity.md and a PNG.

    python benchmarks/parity_report.py benchmarks/results/parity*.json --png benchmarks/results/parity.png --readme docs/parity.md

The table sits in docs/parity.md between ``<!-- parity-table:start -->`` and ``<!-- parity-table:end -->``;
``tests/benchmarks/test_results_tables.py`` checks that it equals what this script generates from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import markdown_table  # noqa: E402
from mdlm.results import replace_readme_section  # noqa: E402

START, END = "<!-- parity-table:start -->", "<!-- parity-table:end -->"
TARGET = 0.99


def summarize(run: dict) -> dict:
    """Per-run numbers: first step with val >= 99%, its wall time, the largest train - val gap up
    to then (points), the steps spent memorised (train >= 99% while val <= 60%), final accuracies."""
    hist = [h for h in run["history"] if "val/label_acc" in h and "train/label_acc" in h]
    reach = next((h for h in hist if h["val/label_acc"] >= TARGET), None)
    upto = [h for h in hist if reach is None or h["step"] <= reach["step"]]
    memorised = [h["step"] for h in hist if h["train/label_acc"] >= TARGET and h["val/label_acc"] <= 0.60]
    interval = hist[1]["step"] - hist[0]["step"] if len(hist) > 1 else 0
    last = hist[-1] if hist else {}
    return {
        "name": run["name"],
        "seed": run["seed"],
        "steps_to_99": reach["step"] if reach else None,
        "wall_s_to_99": reach["wall_time_s"] if reach else None,
        "max_gap_points": round(100 * max((h["train/label_acc"] - h["val/label_acc"] for h in upto), default=0.0), 1),
        "memorised_steps": len(memorised) * interval,
        "last_step": last.get("step"),
        "final_train": last.get("train/label_acc"),
        "final_val": last.get("val/label_acc"),
        "wall_s": run.get("run", {}).get("wall_time_s"),
    }


def load(files: list[Path]) -> dict:
    """Concatenate the runs of several results files."""
    return {"runs": [run for f in files for run in json.loads(Path(f).read_text())["runs"]]}


def _fmt(x, spec="{:.0f}", none="—"):
    return none if x is None else spec.format(x)


def table(results: dict) -> str:
    """Markdown table, one row per run (name, seed)."""
    headers = ["run", "seed", "steps to 99% val", "wall time to 99%", "max train − val before",
               "steps memorised (train ≥ 99%, val ≤ 60%)", "last step", "final train / val acc", "run wall time"]
    rows = []
    for run in sorted(results["runs"], key=lambda r: (r["name"], r["seed"])):
        s = summarize(run)
        rows.append([
            s["name"], s["seed"], _fmt(s["steps_to_99"], none="not reached"), _fmt(s["wall_s_to_99"], "{:.0f} s"),
            f"{s['max_gap_points']:.1f} pts", s["memorised_steps"], _fmt(s["last_step"]),
            f"{_fmt(s['final_train'], '{:.3f}')} / {_fmt(s['final_val'], '{:.3f}')}", _fmt(s["wall_s"], "{:.0f} s"),
        ])
    return markdown_table(headers, rows)


def plot(results: dict, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover
        raise SystemExit("plots need matplotlib: pip install 'mdlm[plot]'") from err
    names = sorted({r["name"] for r in results["runs"]})
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows), sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(flat, names):
        for run in (r for r in results["runs"] if r["name"] == name):
            hist = [h for h in run["history"] if "val/label_acc" in h]
            steps = [h["step"] for h in hist]
            s = summarize(run)
            reach = f"99 % at {s['steps_to_99']}" if s["steps_to_99"] is not None else f"no 99 % by {s['last_step']}"
            (line,) = ax.plot(steps, [h["val/label_acc"] for h in hist], label=f"val, seed {run['seed']} ({reach})")
            ax.plot(steps, [h["train/label_acc"] for h in hist], "--", color=line.get_color(), label=f"train, seed {run['seed']}")
        wall = [run.get("run", {}).get("wall_time_s") or 0 for run in results["runs"] if run["name"] == name]
        ax.set_title(f"{name} (wall ≤ {max(wall):.0f} s)")
        ax.set_xlabel("optimizer step")
        ax.axhline(TARGET, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
        ax.set_ylabel("label accuracy")
        ax.legend(fontsize=6, loc="center right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="one or more results files (runs are concatenated)")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    results = load(args.results)
    text = table(results)
    print(text)
    if args.png:
        plot(results, args.png)
    if args.readme:
        replace_readme_section(args.readme, START, END, text)


if __name__ == "__main__":
    main()
