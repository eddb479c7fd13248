"""The ``mdlm`` command: a LightningCLI with a top-level ``sampler`` key.

``mdlm fit --config configs/parity_md.yaml``; ``mdlm validate|test|predict --config … --ckpt_path …``;
``--print_config``; dotted overrides such as ``--sampler.init_args.t_max=0.1``.

Every run also gets a :class:`mdlm.throughput.TokenThroughputMonitor` (tokens/s, FLOP/s, MFU) from
the top-level ``throughput`` key; ``--throughput.init_args.log_every_n_steps=100`` configures it and
``--throughput=null`` (or ``throughput: null`` in a config) removes it.

The vocabulary size and the [MASK] id are known only once the data module has loaded its
tokenizer, so they are linked from ``data`` into ``model`` when the classes are instantiated.
"""

from __future__ import annotations

import sys

from mdlm._env import check_torchvision

check_torchvision()

from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from mdlm.module import MaskedDiffusionLM  # noqa: E402
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
        """Instantiate the Trainer; ``sampler: null`` / ``throughput: null`` add no callback."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [cb for cb in trainer.callbacks if cb is not None]
        return trainer


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


def main() -> None:
    """Entry point of the ``mdlm`` console script."""
    build_cli()


if __name__ == "__main__":  # pragma: no cover
    main()
