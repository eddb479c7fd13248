"""The ``mdlm`` console script's entry point: ``mdlm``/``mdlm --help`` answer at once (no Lightning import).

``mdlm export ...`` goes to :func:`mdlm.export.main`; everything else to :func:`mdlm.cli.main` (the
LightningCLI); ``mdlm fit --help`` is its full help.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """\
usage: mdlm {fit,validate,test,predict} --config CONFIG.yaml [--config OVERRIDES.yaml ...] [--key.sub=value ...]
       mdlm export --ckpt_path CKPT --out DIR [--weights auto|ema|raw] [--config CONFIG.yaml]
       mdlm prepare --config CONFIG.yaml --output_dir DIR|s3://... [--num_workers N]

Masked diffusion language models on PyTorch Lightning (Huang & Mirzasoleiman, ICML 2026).

subcommands:
  fit        train (resume: --ckpt_path=last or a checkpoint path)
  validate   the full-range NELBO bound of a checkpoint (--ckpt_path ...)
  test       NELBO, or generated answers scored (SFT configs) (--ckpt_path ...)
  predict    generations to <run folder>/predictions.jsonl (--ckpt_path ...)
  prepare    tokenize a corpus once with litdata (N workers, several nodes, local or s3://); train from it
             with --data.init_args.prepared (docs/data_at_scale.md)
  export     a checkpoint as a Hugging Face folder (safetensors, config, tokenizer, modeling code;
             docs/export.md); mdlm export --help

  mdlm fit --help                  every option (model, data, trainer, sampler)
  mdlm fit --config C --print_config   the resolved config
"""


def _configs(root: Path) -> list[str]:
    lines = []
    for path in sorted(root.glob("*.yaml")):
        first = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        lines.append(f"  {path.relative_to(root.parent)}  {first[:90]}")
    return lines


def help_text(cwd: Path | None = None) -> str:
    """The short help: usage, subcommands, the configs of ``./configs`` (when run from a checkout), docs."""
    text = USAGE
    configs = (cwd or Path.cwd()) / "configs"
    if configs.is_dir():
        text += "\nconfigs (./configs; compose override sets from configs/presets, configs/data, configs/trainer):\n"
        text += "\n".join(_configs(configs)) + "\n"
    text += "\ndocs: README.md (quick start, your own sampler, code map) and docs/ (samplers, scaling, results, ...) in the repository\n"
    return text


def main() -> None:
    args = sys.argv[1:]
    if args in ([], ["-h"], ["--help"]):
        print(help_text(), end="")
        raise SystemExit(0)
    if args[0] == "prepare":
        from mdlm.data.prepare import main as prepare_main

        raise SystemExit(prepare_main(args[1:]))
    if args[0] == "export":
        from mdlm.export import main as export_main

        export_main(args[1:])
        return
    from mdlm.cli import main as cli_main

    cli_main()


if __name__ == "__main__":  # pragma: no cover
    main()
