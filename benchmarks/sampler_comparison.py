"""Mask-ratio schedules at equal compute: adaptive vs U[0, 1] vs the paper's window vs a curriculum.

Two tasks, several seeds, every run a plain ``mdlm fit`` of a shipped config plus sampler overrides:

- ``wikitext``: ``configs/wikitext_ablation.yaml`` (tiny preset, BPE-4096, 300 steps); score = the
  final NELBO per token over t ∈ [0, 1] on the WikiText-2 test split (lower is better).
- ``parity``: ``configs/parity_md.yaml``; score = the first step at which validation label
  accuracy reaches 99 % (and the final accuracy). ``--k`` changes (n, k) consistently.

Samplers (``SAMPLERS``): ``uniform`` = U[eps, 1]; ``window`` = the paper's fixed window ([0.45, 0.55]
on text; U[0, t1*] with t1* maximising P_S on parity, which is *told* k); ``curriculum`` = a cosine
curriculum from U[0, 1] into that window over the first 60 % of training; ``adaptive`` =
:class:`mdlm.samplers.AdaptiveBins` in distribution mode with a held-out probe (not told k).

**Equal compute.** A training step costs about 3 forward passes over B·L tokens (forward + backward
≈ 1 + 2); the adaptive sampler adds ``num_bins`` forward passes over P·L probe tokens every
``update_every`` steps. Its overhead fraction is therefore f = num_bins·P / (3·B·update_every), and
it trains ``floor(S / (1 + f))`` steps where the others train S. The JSON records f and the probe
tokens each run actually spent.

    python benchmarks/sampler_comparison.py --task wikitext --seeds 0 1 2 --workers 2 \
        --out benchmarks/results/sampler_comparison_wikitext.json
    python benchmarks/sampler_comparison.py --task parity --seeds 0 1 2 --workers 2 \
        --out benchmarks/results/sampler_comparison_parity.json
    python benchmarks/sampler_comparison.py --report benchmarks/results/sampler_comparison_*.json \
        --png benchmarks/results/sampler_comparison.png --readme docs/samplers.md

``--reuse FILE`` copies a run from another results file instead of re-running it when that file
holds a run with the identical command (e.g. the U[0, 1] runs of the WikiText ablation).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import REPO, fit_subprocess, markdown_table, mean_se, write_json  # noqa: E402
from mdlm.results import replace_readme_section  # noqa: E402
from mdlm.samplers.parity import signal_optimal_window_max  # noqa: E402

START, END = "<!-- sampler-comparison:start -->", "<!-- sampler-comparison:end -->"
SAMPLERS = ("uniform", "window", "curriculum", "adaptive")
TARGET = 0.99

#: per task: the config, the batch size B the config trains with, the adaptive probe settings
TASKS = {
    "wikitext": {"config": "configs/wikitext_ablation.yaml", "batch_size": 32, "probe_size": 16, "update_every": 25},
    "parity": {"config": "configs/parity_md.yaml", "batch_size": 256, "probe_size": 128, "update_every": 25},
}
NUM_BINS = 10
#: flags of every run besides logging (no checkpoint files)
QUIET = ("--trainer.enable_checkpointing=false",)
#: flag prefixes that do not change a run's numbers (ignored when matching runs to reuse)
NO_EFFECT = ("--trainer.logger.init_args.", "--trainer.enable_progress_bar", "--trainer.enable_checkpointing")


def adaptive_overhead(num_bins: int, probe_size: int, batch_size: int, update_every: int) -> float:
    """f = num_bins·P / (3·B·update_every): probe forward tokens per training-step token-pass."""
    return num_bins * probe_size / (3.0 * batch_size * update_every)


def task_overhead(task: str) -> float:
    """The adaptive probe's overhead fraction with the settings of ``TASKS[task]``."""
    spec = TASKS[task]
    return adaptive_overhead(NUM_BINS, spec["probe_size"], spec["batch_size"], spec["update_every"])


def equal_compute_steps(steps: int, overhead: float) -> int:
    """Optimizer steps that cost what ``steps`` plain steps cost, with a fractional overhead."""
    return int(math.floor(steps / (1.0 + overhead)))


def target_window(task: str, k: int) -> tuple[float, float]:
    """The paper's fixed window: [0.45, 0.55] on text; U[0, t1*] (P_S-optimal) on k-parity."""
    return (0.45, 0.55) if task == "wikitext" else (0.0, round(signal_optimal_window_max(k), 4))


def sampler_overrides(task: str, name: str, k: int, steps: int) -> list[str]:
    """CLI overrides that select sampler ``name`` (and, for adaptive, its equal-compute step count)."""
    lo, hi = target_window(task, k)
    spec = TASKS[task]
    if name == "uniform":
        return ["--sampler=mdlm.samplers.Uniform"]
    if name == "window":
        return ["--sampler=mdlm.samplers.Window", f"--sampler.init_args.t_min={lo}", f"--sampler.init_args.t_max={hi}"]
    if name == "curriculum":
        return [
            "--sampler=mdlm.samplers.CosineCurriculum",
            "--sampler.init_args.start=[0.0, 1.0]",
            f"--sampler.init_args.end=[{lo}, {hi}]",
            "--sampler.init_args.end_progress=0.6",
        ]
    if name == "adaptive":
        adaptive_steps = equal_compute_steps(steps, task_overhead(task))
        return [
            "--sampler=mdlm.samplers.AdaptiveBins",
            f"--sampler.init_args.num_bins={NUM_BINS}",
            f"--sampler.init_args.update_every={spec['update_every']}",
            f"--sampler.init_args.probe_size={spec['probe_size']}",
            "--sampler.init_args.probe_source=val",
            f"--sampler.init_args.log_every_n_steps={spec['update_every']}",
            f"--trainer.max_steps={adaptive_steps}",
            *([f"--trainer.val_check_interval={adaptive_steps}"] if task == "wikitext" else []),
        ]
    raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


def task_overrides(task: str, seed: int, k: int | None, n: int | None) -> list[str]:
    """Seed (and, for parity, the data seed and (n, k)) of one run."""
    out = [f"--seed_everything={seed}"]
    if task == "parity":
        out.append(f"--data.init_args.seed={seed}")
        if n is not None:
            out.append(f"--data.init_args.n={n}")
        if k is not None:
            out.append(f"--data.init_args.k={k}")
    return out


def run_one(task: str, name: str, overrides: list[str], seed: int, workdir: Path, threads: int) -> dict:
    """One ``mdlm fit`` in a subprocess; returns its metrics history plus command and wall time."""
    run_name = f"{task}_{name}_seed{seed}"
    out = fit_subprocess(TASKS[task]["config"], [*overrides, *QUIET], workdir, run_name, threads)
    result = {
        "task": task, "name": name, "seed": seed, "command": _portable(out["cmd"], workdir),
        "returncode": out["returncode"], "wall_time_s": out["wall_time_s"], "threads": threads,
        "history": out["metrics"]["history"], "run": out["metrics"].get("run", {}),
    }
    print(f"{run_name}: {headline(result)} in {out['wall_time_s']:.0f} s", flush=True)
    return result


def _portable(cmd: list[str], workdir: Path) -> str:
    """The command with the repository and work folder abstracted (comparable across machines)."""
    text = " ".join(["mdlm", *cmd[1:]])
    return text.replace(str(workdir), "<workdir>").replace(str(REPO) + "/", "")


def _reusable(run: dict) -> str:
    """A run's command without the flags that do not change its numbers (logging destination,
    progress bar, checkpoint files), which differ between scripts."""
    parts = run["command"].replace(str(REPO) + "/", "").split()
    return " ".join(p for p in parts if not p.startswith(NO_EFFECT))


# ---------------------------------------------------------------------------------------- summaries
def steps_to_target(history: list[dict]) -> int | None:
    """First evaluated step with validation label accuracy >= 99 %, or None."""
    return next((h["step"] for h in history if h.get("val/label_acc", 0.0) >= TARGET), None)


def final(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def headline(run: dict) -> str:
    if run["task"] == "wikitext":
        return f"test nelbo {final(run['history'], 'val/nelbo')}"
    return f"steps to 99% {steps_to_target(run['history'])}, final val {final(run['history'], 'val/label_acc')}"


def allocation(history: list[dict], upto_step: int | None = None) -> list[float] | None:
    """The adaptive sampler's bin probabilities averaged over evaluations (up to ``upto_step``)."""
    rows = []
    for h in history:
        if upto_step is not None and h["step"] > upto_step:
            break
        probs = [h.get(f"adaptive/prob_bin{j:02d}") for j in range(NUM_BINS)]
        if all(p is not None for p in probs):
            rows.append(probs)
    if not rows:
        return None
    return [sum(col) / len(rows) for col in zip(*rows)]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (task, k, sampler): mean ± s.e. of the score over seeds, steps, wall time."""
    rows = []
    keys = sorted({(r["task"], r.get("k")) for r in runs}, key=lambda x: (x[0], x[1] or 0))
    for task, k in keys:
        for name in SAMPLERS:
            group = [r for r in runs if r["task"] == task and r.get("k") == k and r["name"] == name]
            if not group:
                continue
            steps = sorted({final(r["history"], "step") for r in group} - {None})
            row = {"task": task, "k": k, "name": name, "n": len(group), "steps": steps,
                   "wall_s": mean_se([r["wall_time_s"] for r in group])[0],
                   "seeds": sorted(r["seed"] for r in group)}
            if task == "wikitext":
                values = [final(r["history"], "val/nelbo") for r in group]
                row["per_seed"] = values
                row["mean"], row["se"] = mean_se([v for v in values if v is not None])
            else:
                hits = [steps_to_target(r["history"]) for r in group]
                row["per_seed"] = hits
                row["reached"] = sum(h is not None for h in hits)
                row["final_val"] = mean_se([final(r["history"], "val/label_acc") or 0.0 for r in group])
            rows.append(row)
    return rows


def table(runs: list[dict]) -> str:
    lines = []
    rows = summarize(runs)
    text_rows = [r for r in rows if r["task"] == "wikitext"]
    if text_rows:
        lines.append(markdown_table(
            ["WikiText-2 (tiny, equal compute)", "test NELBO/token, mean ± s.e.", "per seed", "optimizer steps",
             "wall time / run"],
            [[r["name"], f"{r['mean']:.3f} ± {r['se']:.3f} (n={r['n']})",
              ", ".join(f"{v:.3f}" for v in r["per_seed"] if v is not None),
              "/".join(map(str, r["steps"])), f"{r['wall_s']:.0f} s"] for r in text_rows],
        ))
    for k in sorted({r["k"] for r in rows if r["task"] == "parity"}, key=lambda x: x or 0):
        group = [r for r in rows if r["task"] == "parity" and r["k"] == k]
        if lines:
            lines.append("")
        lines.append(markdown_table(
            [f"k-parity, k = {k} (equal compute)", "seeds reaching 99% val", "steps to 99% per seed",
             "final val acc, mean ± s.e.", "optimizer steps", "wall time / run"],
            [[r["name"], f"{r['reached']}/{r['n']}", ", ".join("—" if h is None else str(h) for h in r["per_seed"]),
              f"{r['final_val'][0]:.3f} ± {r['final_val'][1]:.3f}", "/".join(map(str, r["steps"])),
              f"{r['wall_s']:.0f} s"] for r in group],
        ))
    mass = mass_rows(runs)
    if mass:
        lines += ["", markdown_table(
            ["adaptive on k-parity", "mass on t < 0.5", "mean t of q", "argmax bin of q", "signal-optimal 1/(k+1)"],
            [[f"k = {m['k']} (n={m['n']})", f"{m['low_mass']:.2f}", f"{m['mean_t']:.3f}",
              f"[{m['argmax'] / NUM_BINS:.1f}, {(m['argmax'] + 1) / NUM_BINS:.1f}]", f"{1 / (m['k'] + 1):.3f}"]
             for m in mass],
        )]
    return "\n".join(lines)


def mass_rows(runs: list[dict]) -> list[dict]:
    """Where the adaptive sampler put its mass on parity (time-averaged q up to 99 %), per k."""
    out = []
    for k in sorted({r.get("k") for r in runs if r["task"] == "parity" and r["name"] == "adaptive"}, key=lambda x: x or 0):
        qs = []
        for r in runs:
            if r["task"] == "parity" and r["name"] == "adaptive" and r.get("k") == k:
                q = allocation(r["history"], steps_to_target(r["history"]))
                if q is not None:
                    qs.append(q)
        if not qs:
            continue
        q = [sum(col) / len(qs) for col in zip(*qs)]
        centres = [(j + 0.5) / NUM_BINS for j in range(NUM_BINS)]
        out.append({
            "k": k, "n": len(qs), "q": q, "low_mass": sum(q[: NUM_BINS // 2]),
            "mean_t": sum(c * p for c, p in zip(centres, q)) / sum(q),
            "argmax": max(range(NUM_BINS), key=lambda j: q[j]),
        })
    return out


def plot(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(runs)
    mass = mass_rows(runs)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    text_rows = [r for r in rows if r["task"] == "wikitext"]
    ax = axes[0]
    if text_rows:
        ax.bar([r["name"] for r in text_rows], [r["mean"] for r in text_rows],
               yerr=[r["se"] if math.isfinite(r["se"]) else 0 for r in text_rows], capsize=3, color="C0")
        low = min(r["mean"] for r in text_rows)
        ax.set_ylim(low - 0.15, max(r["mean"] for r in text_rows) + 0.1)
    ax.set_title("WikiText-2 test NELBO/token (lower is better)")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    for i, name in enumerate(SAMPLERS):
        for r in runs:
            if r["task"] == "parity" and r["name"] == name and r.get("k") == 3:
                hist = [h for h in r["history"] if "val/label_acc" in h]
                ax.plot([h["step"] for h in hist], [h["val/label_acc"] for h in hist], color=f"C{i}", alpha=0.7,
                        label=name if r["seed"] == min(x["seed"] for x in runs if x["name"] == name and x["task"] == "parity") else None)
    ax.set_title("k-parity (k = 3): validation label accuracy")
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    centres = [(j + 0.5) / NUM_BINS for j in range(NUM_BINS)]
    for i, m in enumerate(mass):
        ax.bar([c + (i - 0.5) * 0.04 for c in centres], m["q"], width=0.04, color=f"C{i}", label=f"adaptive q, k = {m['k']}")
        ax.axvline(1 / (m["k"] + 1), color=f"C{i}", ls="--", label=f"1/(k+1) = {1 / (m['k'] + 1):.2f}")
    ax.axhline(1 / NUM_BINS, color="gray", lw=0.8, label="U[0, 1]")
    ax.set_title("parity: adaptive mass per t bin (mean until 99%)")
    ax.set_xlabel("t")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def load(files: list[Path]) -> list[dict]:
    return [run for f in files for run in json.loads(Path(f).read_text())["runs"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, help="parity: k (the window sampler is told it; default: the config's)")
    parser.add_argument("--n", type=int, help="parity: n (default: the config's)")
    parser.add_argument("--steps", type=int, help="optimizer steps of the plain runs (default: the config's)")
    parser.add_argument("--extra", action="append", default=[],
                        help="an extra CLI override for every run, applied last (e.g. --extra=--sampler.init_args.min_signal=0.001)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("experiments/sampler_comparison"))
    parser.add_argument("--skip-done", action="store_true", help="skip runs that --out already holds (returncode 0)")
    parser.add_argument("--reuse", type=Path, action="append", default=[], help="results file whose identical runs are copied")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, nargs="+", help="results files to tabulate (no runs)")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    if args.report:
        runs = load(args.report)
    else:
        if args.task is None or args.out is None:
            parser.error("--task and --out are needed to run (or use --report FILES)")
        runs = run_all(args)
    text = table(runs)
    print(text)
    if args.png:
        plot(runs, args.png)
    if args.readme:
        replace_readme_section(args.readme, START, END, text)


def config_value(config: str, dotted: str):
    """A value of a shipped YAML config (e.g. ``trainer.max_steps``)."""
    import yaml

    node = yaml.safe_load((REPO / config).read_text())
    for part in dotted.split("."):
        node = node[part]
    return node


def run_all(args) -> list[dict]:
    task = args.task
    config = TASKS[task]["config"]
    k = args.k if args.k is not None else (config_value(config, "data.init_args.k") if task == "parity" else None)
    steps = args.steps or int(config_value(config, "trainer.max_steps"))
    step_override = [f"--trainer.max_steps={steps}"] if args.steps else []
    results = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    reusable = {_reusable(r): r for f in args.reuse for r in json.loads(f.read_text())["runs"] if r.get("returncode") == 0}
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in args.seeds:
        for name in args.samplers:
            overrides = task_overrides(task, seed, args.k, args.n) + step_override
            overrides += sampler_overrides(task, name, k, steps) + args.extra  # extras come last: they win
            jobs.append((name, overrides, seed))
    t0 = time.perf_counter()

    def record(run: dict) -> None:
        nonlocal results
        run["k"] = k if task == "parity" else None
        run["overhead"] = (
            task_overhead(task) if run["name"] == "adaptive" else 0.0
        )
        results = [r for r in results if not (r["task"] == task and r.get("k") == run["k"] and r["name"] == run["name"] and r["seed"] == run["seed"])]
        results.append(run)
        write_json(args.out, {"runs": results, "total_wall_time_s": round(time.perf_counter() - t0, 1)})

    done = {(r["name"], r["seed"]) for r in results if r["task"] == task and r.get("k") == (k if task == "parity" else None)
            and r.get("returncode") == 0}
    pending = []
    for name, overrides, seed in jobs:
        if args.skip_done and (name, seed) in done:
            continue
        probe = {"command": _portable(["mdlm", "fit", "--config", str(REPO / config), *overrides], workdir)}
        match = reusable.get(_reusable(probe))
        if match is not None:
            print(f"reusing {name} seed {seed} from an identical run", flush=True)
            record({"task": task, "name": name, "seed": seed, "command": probe["command"], "returncode": 0,
                    "wall_time_s": match["wall_time_s"], "threads": match.get("threads"),
                    "history": match.get("history") or [match["final"]], "run": match.get("run", {}), "reused": True})
        else:
            pending.append((name, overrides, seed))
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_one, task, n, o, s, workdir, args.threads) for n, o, s in pending]
        for future in futures:
            record(future.result())
    return results


if __name__ == "__main__":
    main()
