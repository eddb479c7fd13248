"""Helpers shared by the benchmark and experiment scripts: machine record, load and memory sampling,
timing, statistics, ``mdlm fit`` subprocesses, JSON and markdown output.

Measurements on a shared machine are noisy; every benchmark records ``os.getloadavg()`` before
and after so that readers can judge the contention, and compares its two sides alternately in
one process so that contention affects both alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def machine_record() -> dict[str, Any]:
    """Platform, CPU model and count, torch version/threads, accelerator, load averages, time."""
    from mdlm.results import git_commit, machine_info

    info = machine_info()
    info["cpu_model"] = cpu_model()
    info["loadavg"] = list(os.getloadavg())
    info["time"] = _dt.datetime.now().isoformat(timespec="seconds")
    info["git_commit"] = git_commit(REPO)
    return info


def cpu_model() -> str | None:
    """The ``model name`` line of /proc/cpuinfo (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes (``/proc/self/statm``; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def release_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``), so RSS baselines are clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block: process RSS sampled every ``interval`` s (CPU), and on CUDA
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

    Attributes after the block: ``peak_rss`` and ``baseline_rss`` (bytes), ``cuda_peak`` (bytes or None).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_rss = self.baseline_rss = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, current_rss())

    def __enter__(self) -> PeakMemory:
        release_memory()
        self.baseline_rss = self.peak_rss = current_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, current_rss())
        if torch.cuda.is_available():
            self.cuda_peak = int(torch.cuda.max_memory_allocated())

    def record(self) -> dict[str, float | None]:
        """MiB: process peak RSS, its increase over the block's start, CUDA peak allocated."""
        mib = 1024.0**2
        return {
            "peak_rss_mib": self.peak_rss / mib,
            "peak_rss_increase_mib": (self.peak_rss - self.baseline_rss) / mib,
            "cuda_max_allocated_mib": None if self.cuda_peak is None else self.cuda_peak / mib,
        }


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA) so that wall-clock timings are correct."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[dict[str, float]]:
    """``with stopwatch(dev) as t: ...`` -> ``t["s"]``: seconds, device-synchronised at both ends."""
    out: dict[str, float] = {}
    sync(device)
    t0 = time.perf_counter()
    yield out
    sync(device)
    out["s"] = time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample s.d. / sqrt(n); NaN for fewer than 2 values)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of paired differences: mean ± t_{n-1} · s / sqrt(n) (NaN bounds for n < 2)."""
    from scipy import stats

    mean, se = mean_se(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1)) * se
    return mean, mean - half, mean + half


def paired_differences(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """``a − b`` per seed on the seeds both have (None if none): the differences (rounded to 4 digits),
    mean ± s.e., their s.d., the 95 % Student-t interval, wins/ties/losses and the exact sign test."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, lo, hi = t_interval(diffs)
    se = mean_se(diffs)[1]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {"seeds": seeds, "differences": [round(d, 4) for d in diffs], "mean": mean, "se": se,
            "sd": se * math.sqrt(len(diffs)), "ci95": [lo, hi], "wins": wins, "ties": len(diffs) - wins - losses,
            "losses": losses, "sign_test_p": sign_test_p(wins, losses)}


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: ``min(1, 2 P[X <= min(wins, losses)])`` for ``X ~ Binomial(wins + losses, 1/2)``.

    Ties are left out. On paired right/wrong answers (wins = pairs only the first gets right, losses =
    only the second) it is McNemar's exact test.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of a proportion ``k / n`` (95 % for z = 1.96), rounded to 4 digits; NaNs for n = 0."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def alternate(repeat: int) -> tuple[str, str]:
    """Order of the two sides in repeat ``repeat``: a, b then b, a (ABBA cancels linear drift)."""
    return ("a", "b") if repeat % 2 == 0 else ("b", "a")


def write_json(path: Path, data: dict[str, Any], indent: int | None = 1) -> None:
    """``data`` as JSON (``indent`` spaces) to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n")


def write_results(path: Path, data: dict[str, Any], markdown: Any, md_path: Path | None = None) -> None:
    """Write ``data`` as JSON to ``path`` and ``markdown(data)`` next to it (``.md``), and print the markdown."""
    write_json(path, data)
    text = markdown(data)
    (md_path or path.with_suffix(".md")).write_text(text)
    print(text)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells formatted with ``str``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    """A number for a table (``-`` for None), scaled and rounded."""
    if value is None:
        return "-"
    return f"{value / scale:,.{digits}f}"


def machine_line(machine: dict[str, Any]) -> str:
    """One markdown line describing the machine and its load."""
    acc = machine.get("cuda_device") or f"{machine.get('cpu_model')} ({machine.get('cpu_count')} cores)"
    load = machine.get("loadavg") or []
    load_txt = ", ".join(f"{x:.1f}" for x in load)
    end = machine.get("loadavg_end")
    if end:
        load_txt += " → " + ", ".join(f"{x:.1f}" for x in end)
    return (
        f"Machine: {acc}; torch {machine.get('torch')}, {machine.get('torch_threads')} threads; "
        f"load average (1/5/15 min) {load_txt}; {machine.get('time')}."
    )


class LoadSampler:
    """1-minute load average every ``every`` seconds in a background thread (``with LoadSampler() as load:``)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [float("nan")]
        return {"mean": round(sum(s) / len(s), 2), "min": round(min(s), 2), "max": round(max(s), 2), "samples": len(s)}


def mdlm_executable() -> str:
    """The ``mdlm`` console script of the install this Python runs (beside ``sys.executable``), else the one on PATH."""
    beside = Path(sys.executable).with_name("mdlm")
    if beside.exists():
        return str(beside)
    return shutil.which("mdlm") or "mdlm"


def fit_subprocess(
    config: str, overrides: list[str], save_dir: Path, run_name: str, threads: int | None = None, quiet: bool = True
) -> dict[str, Any]:
    """``mdlm fit --config CONFIG OVERRIDES`` logging to ``save_dir/run_name``, with ``threads`` OpenMP threads.

    Returns ``{"cmd", "returncode", "wall_time_s", "metrics"}`` where ``metrics`` is the run's
    ``metrics.json`` (``{"run": {}, "history": []}`` if the run wrote none; its stderr tail is
    printed then). ``quiet`` captures the child's output.
    """
    shutil.rmtree(save_dir / run_name, ignore_errors=True)
    cmd = [
        mdlm_executable(), "fit", "--config", str(REPO / config), *overrides,
        f"--trainer.logger.init_args.save_dir={save_dir}", f"--trainer.logger.init_args.name={run_name}",
        "--trainer.enable_progress_bar=false",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=quiet, text=True)
    wall = time.perf_counter() - t0
    metrics_file = save_dir / run_name / "version_0" / "metrics.json"
    if (proc.returncode != 0 or not metrics_file.is_file()) and quiet:
        print(proc.stderr[-3000:], file=sys.stderr)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"run": {}, "history": []}
    return {"cmd": cmd, "returncode": proc.returncode, "wall_time_s": round(wall, 1), "metrics": metrics}
