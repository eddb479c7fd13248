"""What the ``mdlm`` command prints: a step-counting progress bar, quiet start-up, a closing line, CPU threads.

- :class:`StepProgressBar`: when training is step-based (``trainer.max_steps > 0``) the training bar
  counts optimizer steps against ``max_steps`` ("Step 120/1500") instead of batches of an epoch
  against ``max_epochs - 1`` (Lightning prints ``Epoch 0/-2`` for ``max_epochs=-1``); no ``v_num``.
- :func:`quiet_lightning`: Lightning's advertising tips and warnings known to be harmless here
  (torch 2.13's ``LeafSpec`` deprecation inside Lightning, jsonargparse's own deprecations of
  LightningCLI internals) are filtered at the source, once.
- :func:`run_summary`: one line naming the run folder and what is in it.
- :func:`default_num_threads`: CPU threads per process = usable (not busy) cores ÷ processes on this node.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar

__all__ = ["StepProgressBar", "busy_cores_now", "default_num_threads", "quiet_lightning", "run_summary"]


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in str(record.getMessage())


def quiet_lightning() -> None:
    """Drop Lightning's litlogger/litmodels tips and the harmless deprecation warnings (idempotent)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in logger.filters):
        logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)`? is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")  # small data sets
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps against ``max_steps`` when that is set."""

    def _step_based(self) -> bool:
        return self._trainer is not None and self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._step_based() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._step_based():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"

    def _train_position(self, batch_idx: int) -> int:
        return self.trainer.global_step if self._step_based() else batch_idx + 1

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._step_based():
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, self._train_position(batch_idx))
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def run_summary(log_dir: str | None, stage: str, extra: list[str] | None = None) -> str | None:
    """``"mdlm fit: results in runs/x/version_3 — metrics.json, checkpoints/last.ckpt"`` (None without a folder).

    ``log_dir`` is ``trainer.log_dir``, read on every rank (it broadcasts from rank 0)."""
    if not log_dir or not Path(log_dir).is_dir():
        return None
    folder = Path(log_dir)
    found = [name for name in ("metrics.json", "config.yaml", "predictions.jsonl") if (folder / name).exists()]
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir():
        names = sorted(p.name for p in checkpoints.iterdir())
        shown = ["last.ckpt"] if "last.ckpt" in names else names[-1:]
        found += [f"checkpoints/{n}" for n in shown] + ([f"(+{len(names) - len(shown)} more)"] if len(names) > len(shown) else [])
    found += extra or []
    try:
        shown_dir = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown_dir = folder
    return f"mdlm {stage}: results in {shown_dir}/ — {', '.join(found) if found else 'TensorBoard events'}"


def busy_cores_now(interval_s: float = 0.1) -> float | None:
    """Cores busy right now: ``cpu_count × (1 − idle share)`` of the machine's CPU time over ``interval_s``.

    Read from ``/proc/stat`` (idle = ``idle + iowait`` jiffies); ``None`` where it cannot be read. This
    process sleeps while it measures, so it does not count itself.
    """
    import time

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)

    try:
        total0, idle0 = sample()
        time.sleep(interval_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / (total1 - total0))


def default_num_threads(processes_on_node: int) -> int:
    """CPU threads for one process: available cores ÷ the processes of this node (≥ 1).

    Available cores = the cores this process may use (its affinity) minus the busy cores, rounded (at
    least 1): on a shared machine a thread per busy core only adds contention (measured in
    docs/performance.md). Busy cores = min(1-minute load average, cores busy over the last 0.1 s): the
    load average alone still counts a job that has just ended (the quick start's own ``pip install``
    leaves it near 1 for a minute, which halved the quick start's speed on 2 cores), the instant
    sample alone is fooled by a short burst. ``MDLM_NUM_THREADS`` or ``OMP_NUM_THREADS`` overrides it (see
    the CLI).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        busy = 0.0
    now = busy_cores_now()
    if now is not None:
        busy = min(busy, now)
    available = min(cores, max(1, round(cores - busy)))
    return max(1, available // max(1, processes_on_node))
