"""Run one ``mdlm fit`` in a subprocess and read back its ``metrics.json`` (experiment scripts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def fit_subprocess(
    config: str, overrides: list[str], save_dir: Path, run_name: str, threads: int | None = None, quiet: bool = True
) -> dict[str, Any]:
    """``mdlm fit --config CONFIG OVERRIDES`` logging to ``save_dir/run_name``, with ``threads`` OpenMP threads.

    Returns ``{"cmd", "returncode", "wall_time_s", "metrics"}`` where ``metrics`` is the run's
    ``metrics.json`` (``{"run": {}, "history": []}`` if the run wrote none; its stderr tail is
    printed then). ``quiet`` captures the child's output.
    """
    shutil.rmtree(save_dir / run_name, ignore_errors=True)
    exe = shutil.which("mdlm") or str(Path(sys.executable).parent / "mdlm")
    cmd = [
        exe, "fit", "--config", str(REPO / config), *overrides,
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
