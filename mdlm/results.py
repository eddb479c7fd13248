"""Results are data: a callback that writes a run's evaluation history and provenance as JSON.

The file (default ``<log_dir>/metrics.json``) holds::

    {"run": {git commit, config, seed, machine, start time, wall time},
     "history": [{"step", "epoch", "wall_time_s", <every scalar metric>}, ...]}

and is rewritten after every validation, so an interrupted run keeps what it measured.
The tables and plots in docs/ are generated from these files (see ``benchmarks/``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), or None outside a repo."""
    try:
        root = Path(cwd) if cwd else Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    """What ran the job: platform, CPU count, torch version and threads, accelerator name."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def replace_readme_section(readme: str | os.PathLike, start: str, end: str, text: str) -> None:
    """Rewrite the text between the ``start`` and ``end`` marker lines of a README (generated tables)."""
    path = Path(readme)
    content = path.read_text()
    if start not in content or end not in content:
        raise ValueError(f"{path} has no {start} ... {end} section")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def _validation_due(trainer: Trainer) -> bool:
    """Whether the fit loop will validate at the end of the current training batch (asked from a hook that
    runs before it does, e.g. a checkpoint saved in ``on_train_batch_end``)."""
    if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.validating:
        return False
    loop = trainer.fit_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    if fetcher is None:
        return False
    try:
        return bool(loop.epoch_loop._should_check_val_fx(fetcher))
    except Exception:  # pragma: no cover - a Lightning internals change: no re-validation, as before
        return False


class MetricsHistory(Callback):
    """Record every validation's scalar metrics with step and wall time; write JSON on rank 0.

    The history travels in checkpoints, so a resumed run's ``metrics.json`` holds the rows before the
    checkpoint. A checkpoint written during a training step *before* that step's validation (e.g. by
    ``ModelCheckpoint(every_n_train_steps=...)``) records that the validation was due; Lightning skips it
    on resume, so the resumed run runs it before its first step (and so its row, early stopping and the
    after-validation checkpoint are not lost).

    Args:
        path: output file; default ``<trainer.log_dir>/metrics.json``.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.history: list[dict[str, Any]] = []
        self._t0: float | None = None
        self._started: str | None = None
        self._trainer: Trainer | None = None
        self._pending_step: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run the validation a checkpoint was written before, when resuming from it (see the class doc)."""
        pending, self._pending_step = self._pending_step, None
        if pending is None or pending != trainer.global_step or any(r["step"] == pending for r in self.history):
            return
        loop = trainer.fit_loop.epoch_loop
        first_loop_iter = trainer._logger_connector._first_loop_iter
        trainer.validating = True
        loop.val_loop.run()
        trainer.training = True
        trainer._logger_connector._first_loop_iter = first_loop_iter

    def _out_path(self, log_dir: str | None) -> Path:
        if self.path:
            return Path(self.path)
        return Path(log_dir or ".") / "metrics.json"

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        record: dict[str, Any] = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "wall_time_s": round(time.perf_counter() - (self._t0 or time.perf_counter()), 3),
        }
        for key, value in sorted(trainer.callback_metrics.items()):
            scalar = _scalar(value)
            if scalar is not None:
                record[key] = scalar
        self.history.append(record)
        self.write(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    def write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0: every rank must read it, or rank 0 waits forever
        log_dir = trainer.log_dir
        if not trainer.is_global_zero:
            return
        out = self._out_path(log_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        config_file = Path(log_dir or ".") / "config.yaml"
        run = {
            "git_commit": git_commit(),
            "seed": int(os.environ["PL_GLOBAL_SEED"]) if "PL_GLOBAL_SEED" in os.environ else None,
            "started_at": self._started,
            "wall_time_s": round(time.perf_counter() - (self._t0 or time.perf_counter()), 3),
            "global_step": trainer.global_step,
            "machine": machine_info(),
            "config": config_file.read_text() if config_file.is_file() else None,
            "hparams": {k: v for k, v in dict(pl_module.hparams).items() if isinstance(v, (int, float, str, bool, type(None)))},
        }
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"run": run, "history": self.history}, indent=1))
        tmp.replace(out)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"history": self.history}
        trainer = self._trainer
        if trainer is not None and _validation_due(trainer):
            state["validation_due_at_step"] = trainer.global_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._pending_step = state_dict.get("validation_due_at_step")


class EvaluateAtEnd(Callback):
    """Validate (and so checkpoint) after the last optimizer step when ``val_check_interval`` missed it.

    At the end of the micro-batch that completes step ``max_steps`` it sets ``trainer.should_stop``;
    Lightning then runs the validation it runs for any requested stop (early stopping), once — also
    when that step was a validation step anyway — and the checkpoint callbacks save after it. A run
    of ``--trainer.max_steps=20`` with ``val_check_interval: 200`` thus still ends with its metrics
    and a checkpoint. The ``mdlm`` CLI adds it to every ``fit``.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class JsonlPredictionWriter(BasePredictionWriter):
    """Write ``mdlm predict`` answer records as JSON lines (one file per rank).

    Each line: index, dataset, group, prompt, generation, extracted answer, reference, correct.
    Non-record predictions (tensors) are written as lists. At the end it prints where the file is,
    how many generations were empty (nothing before the first EOS) and the answer accuracy.

    Args:
        output_path: the JSONL file; default ``<run folder>/predictions.jsonl`` (``trainer.log_dir``,
            else the working directory); rank r > 0 writes ``<stem>.rank<r>.jsonl`` beside it.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self._file = None
        self._resolved: Path | None = None

    def _path(self, trainer: Trainer) -> Path:
        if self._resolved is None:
            log_dir = trainer.log_dir  # every rank reads it (it broadcasts from rank 0)
            path = Path(self.output_path) if self.output_path else Path(log_dir or ".") / "predictions.jsonl"
            if trainer.global_rank > 0:
                path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
            self._resolved = path
        return self._resolved

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resolved = None
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        records = prediction if isinstance(prediction, list) else [prediction]
        for record in records:
            if isinstance(record, dict):
                record = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        path = self._path(trainer)
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        answers = [r for r in lines if isinstance(r, dict) and "generation" in r]
        summary = f"wrote {len(lines)} predictions to {path}"
        if answers:
            empty = sum(1 for r in answers if not str(r["generation"]).strip())
            summary += f"; {empty} of {len(answers)} generations are empty"
        scored = [r for r in lines if isinstance(r, dict) and r.get("correct") is not None]
        if scored:
            accuracy = sum(r["correct"] for r in scored) / len(scored)
            summary += f"; answer accuracy {accuracy:.4f} on {len(scored)} scored"
        print(summary, flush=True)
