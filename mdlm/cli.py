"""The ``mdlm`` command: a LightningCLI with a top-level ``sampler`` key.

``mdlm fit --config configs/parity_md.yaml``; ``mdlm validate|test|predict --config … --ckpt_path …``;
``--print_config``; dotted overrides such as ``--sampler.init_args.t_max=0.1``.

Every run also gets a :class:`mdlm.throughput.TokenThroughputMonitor` (tokens/s, FLOP/s, MFU) from
the top-level ``throughput`` key; ``--throughput.init_args.log_every_n_steps=100`` configures it and
``--throughput=null`` (or ``throughput: null`` in a config) removes it.

The vocabulary size and the [MASK] id are known only once the data module has loaded its
tokenizer, so they are linked from ``data`` into ``model`` when the classes are instantiated (the
data contract, :mod:`mdlm.data.contract`; a plain ``LightningDataModule`` without them leaves the
model's own ``vocab_size``/``mask_token_id``).

Console (:mod:`mdlm.console`): step-based runs show ``Step n/max_steps``; each command ends with one
line naming the run folder and what is in it; a bad value, a missing file or an offline Hub name
ends with mdlm's one-line message (``MDLM_TRACEBACK=1`` shows the full traceback). On a CPU each
process uses :func:`mdlm.console.default_num_threads` threads unless ``MDLM_NUM_THREADS`` or
``OMP_NUM_THREADS`` is set. ``--ckpt_path=last`` (fit) resumes the newest ``last.ckpt`` of the
run's name.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from mdlm._env import check_torchvision

check_torchvision()

from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.callbacks import BasePredictionWriter, RichProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from mdlm.console import StepProgressBar, default_num_threads, quiet_lightning, run_summary  # noqa: E402

quiet_lightning()

from mdlm.data.contract import check_data_contract  # noqa: E402
from mdlm.data.parity import ParityDataModule  # noqa: E402
from mdlm.module import MaskedDiffusionLM  # noqa: E402
from mdlm.results import EvaluateAtEnd, JsonlPredictionWriter  # noqa: E402
from mdlm.samplers.base import MaskRatioSampler  # noqa: E402
from mdlm.throughput import TokenThroughputMonitor  # noqa: E402

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "mdlm"},
    },
}


class MDLMCLI(LightningCLI):
    """LightningCLI plus the mask-ratio sampler and the throughput monitor as top-level, overridable keys."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(MaskRatioSampler, "sampler", subclass_mode=True, required=False)
        parser.add_lightning_class_args(TokenThroughputMonitor, "throughput", subclass_mode=True, required=False)
        parser.set_defaults({"throughput": {"class_path": "mdlm.throughput.TokenThroughputMonitor"}})
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.mask_token_id", "model.init_args.mask_token_id", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        """Instantiate the Trainer; ``sampler: null`` / ``throughput: null`` add no callback; the default
        progress bar counts steps; CPU threads per process set (:func:`mdlm.console.default_num_threads`)."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [
            StepProgressBar() if type(cb) is RichProgressBar else cb for cb in trainer.callbacks if cb is not None
        ]
        _set_cpu_threads(trainer)
        if self.subcommand == "fit" and not any(isinstance(cb, EvaluateAtEnd) for cb in trainer.callbacks):
            trainer.callbacks.append(EvaluateAtEnd())  # the last step is always evaluated and checkpointed
        if self.subcommand == "predict" and not any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks):
            trainer.callbacks.append(JsonlPredictionWriter())  # predictions.jsonl in the run folder
        for cb in trainer.checkpoint_callbacks:
            if cb.save_last is None:  # a literal checkpoints/last.ckpt for documented commands and --ckpt_path=last
                cb.save_last = True
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the checkpoint's hyperparameters while parsing: check the file first."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            check_checkpoint(Path(ckpt))
        super()._parse_ckpt_path()

    def _check_run(self) -> None:
        """Before any subcommand: a readable ``--ckpt_path``, an mdlm data module that sets what the data
        contract requires (:func:`mdlm.data.contract.check_data_contract`), a parity sampler that knows the
        data's k."""
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            check_checkpoint(Path(ckpt))
        check_data_contract(self.datamodule)
        sampler = self.config_init.get(self.subcommand, {}).get("sampler")
        data_k = self.datamodule.k if isinstance(self.datamodule, ParityDataModule) else None
        sampler_k = getattr(sampler, "k", None)
        if data_k is not None and sampler_k is not None and int(data_k) != int(sampler_k):
            raise ValueError(
                f"sampler.init_args.k={sampler_k} but data.init_args.k={data_k}: the parity sampler's window "
                f"t1*(k) would be the wrong one; set --sampler.init_args.k={data_k}"
            )

    def before_validate(self) -> None:
        self._check_run()

    def before_test(self) -> None:
        self._check_run()

    def before_predict(self) -> None:
        self._check_run()

    def before_fit(self) -> None:
        if self.config_init[self.subcommand].get("ckpt_path") == "last":
            self.config_init[self.subcommand]["ckpt_path"] = str(latest_last_checkpoint(self.trainer))
        self._check_run()
        trainer = self.trainer
        interval = trainer.val_check_interval
        if isinstance(interval, int) and trainer.max_steps > 0 and trainer.max_steps < interval:
            if trainer.is_global_zero:
                print(
                    f"mdlm: warning: trainer.max_steps={trainer.max_steps} < trainer.val_check_interval={interval}: "
                    "this run ends before its first validation and checkpoint; lower --trainer.val_check_interval",
                    file=sys.stderr, flush=True,
                )

    def _summary(self, stage: str, extra: list[str] | None = None) -> None:
        log_dir = self.trainer.log_dir  # a broadcast from rank 0: every rank must take part
        if self.trainer.is_global_zero:
            line = run_summary(log_dir, stage, extra)
            if line:
                print(line, flush=True)

    def after_fit(self) -> None:
        self._summary("fit")

    def after_validate(self) -> None:
        self._summary("validate")

    def after_test(self) -> None:
        self._summary("test")

    def after_predict(self) -> None:
        self._summary("predict")


def _set_cpu_threads(trainer) -> None:
    """``torch.set_num_threads`` for a CPU run: ``MDLM_NUM_THREADS``, else (unless ``OMP_NUM_THREADS`` is set)
    available cores ÷ this node's processes."""
    import torch
    from lightning.pytorch.accelerators import CPUAccelerator

    if not isinstance(trainer.accelerator, CPUAccelerator):
        return
    if os.environ.get("MDLM_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["MDLM_NUM_THREADS"]))
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(default_num_threads(trainer.num_devices))


def check_checkpoint(path: Path) -> None:
    """A clear error for a missing, truncated or corrupt checkpoint (a torch zip file or a DCP directory)."""
    import zipfile

    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise ValueError(f"--ckpt_path {path}: a directory without .metadata is not a sharded (DCP) checkpoint")
        return
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint (runs/<name>/version_<n>/checkpoints/last.ckpt?)")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"--ckpt_path {path}: not a readable PyTorch checkpoint ({path.stat().st_size} bytes: truncated or corrupt, "
            "e.g. written while the run was killed); use another, e.g. the run's checkpoints/last.ckpt"
        )


def latest_last_checkpoint(trainer) -> Path:
    """``<save_dir>/<name>/version_<newest>/checkpoints/last.ckpt`` of the run's logger, other than this run's."""
    logger = trainer.logger
    root = Path(getattr(logger, "root_dir", "") or trainer.default_root_dir)
    current = Path(trainer.log_dir).resolve() if trainer.log_dir else None
    found = []
    for version in root.glob("version_*"):
        last = version / "checkpoints" / "last.ckpt"
        if last.exists() and version.resolve() != current:
            found.append((last.stat().st_mtime, last))
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path=last: no {root}/version_*/checkpoints/last.ckpt to resume from; give a checkpoint path "
            "or train first (the shipped configs save last.ckpt)"
        )
    return max(found)[1]


def build_cli(args: list[str] | None = None, run: bool = True) -> MDLMCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (used by tests)."""
    return MDLMCLI(
        MaskedDiffusionLM,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=True,
        args=args,
        run=run,
    )


#: errors whose message is the whole story (ours name the value and the fix); others keep their traceback
ONE_LINE_ERRORS = (ValueError, FileNotFoundError, KeyError, OSError)

_UNION = re.compile(r"Does not validate against any of the Union subtypes.*?Errors: - (?P<error>.*?) - Expected a <class 'NoneType'>.*?class_path='(?P<cls>[\w.]+)'", re.S)


def error_line(err: BaseException) -> str:
    """mdlm's message of ``err`` in one line: jsonargparse's Union wrapper around a constructor's
    ``ValueError`` is unwrapped to that message and the class it came from."""
    message = " ".join(str(err).split())
    match = _UNION.search(message)
    if match:
        return f"{match['cls']}: {match['error']}"
    return f"{type(err).__name__}: {message}"


def main() -> None:
    """Entry point of the ``mdlm`` console script: mdlm's message last, in one line (``MDLM_TRACEBACK=1``: all)."""
    try:
        build_cli()
    except ONE_LINE_ERRORS as err:
        if os.environ.get("MDLM_TRACEBACK"):
            raise
        print(f"mdlm: error: {error_line(err)}\n(MDLM_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
