"""Every command in a ```bash block of README.md and docs/*.md is copy-pasteable from the repository root.

A command line (continuation lines joined, ``a && b`` split, ``VAR=value`` prefixes and trailing
``# comments`` dropped) must start with one of :data:`PROGRAMS`: the virtual environment's tools
(``.venv/bin/mdlm``, ``.venv/bin/python``, ...), not a bare ``mdlm``/``python`` that depends on the
reader's PATH. Then, fast (no torch import, a few seconds):

- every argument that names a file of the repository (``configs/...``, ``benchmarks/...``,
  ``examples/...``, ...) exists, a glob matches something; outputs of a command (``--out``, ``--png``,
  ``--output_dir``, ...) and of earlier commands (``runs/``, ``exported/``, ``prepared/``) are not
  checked;
- ``.venv/bin/mdlm`` has a known subcommand; ``.venv/bin/python X.py`` names a script that exists,
  ``-m pkg.mod`` a module file that exists;
- every relative link of those pages resolves, and the README stays a front door (≤ 250 lines).

Slow (``@pytest.mark.slow``): ``mdlm fit|validate|test|predict`` lines are parsed by mdlm's CLI with
``--print_config`` (nothing is instantiated or run; ``--ckpt_path`` is left out because the run
that writes it is an earlier command), ``mdlm export`` lines by its argument parser, and every
script and module answers ``--help``. GPU, multi-node and network commands (srun, s3://, Hub
datasets) are parsed but never run.

Lines that cannot pass are listed in :data:`ALLOWED_MISSING` with the reason.
"""

from __future__ import annotations

import glob
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: programs a documented command may start with
PROGRAMS = {
    ".venv/bin/mdlm", ".venv/bin/python", ".venv/bin/pip", ".venv/bin/pytest", ".venv/bin/tensorboard",
    ".venv/bin/mdlm-lm-eval",
    "python3",  # only `python3 -m venv .venv`, the quick start's first step (checked below)
    "srun",  # SLURM: `srun .venv/bin/mdlm ...` (checked as the command it runs)
    "export",  # `export OMP_NUM_THREADS=1`
}
MDLM_SUBCOMMANDS = {"fit", "validate", "test", "predict", "export", "prepare"}
#: arguments that name repository files: these must exist
LOCAL_PREFIXES = ("configs/", "benchmarks/", "experiments/", "examples/", "docs/", "tests/", "mdlm/", "README.md")
#: folders written by earlier documented commands (runs, exports, prepared datasets)
GENERATED_PREFIXES = ("runs/", "exported/", "prepared/")
#: options whose value is written by the command
OUTPUT_OPTIONS = {"--out", "--png", "--output_dir", "--op-profile", "--ckpt"}
#: repository paths a documented command names although they are not shipped, with the reason
ALLOWED_MISSING = {
    # docs/data_at_scale.md shows this file's YAML and tells the reader to save it (Recipe 2, OpenWebText)
    "configs/data/openwebtext.yaml": "written by the reader from docs/data_at_scale.md",
    # benchmarks/arithmetic_sft.py writes it; docs/arithmetic.md documents the command that does
    "benchmarks/results/arithmetic_sft.json": "an output (--out) not yet produced",
}

#: pages whose commands may still start with a bare program (their other checks still apply), with the reason
PENDING_PAGES: dict[str, str] = {}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    def argv(self) -> list[str]:
        """The command's words without leading ``VAR=value`` assignments."""
        words = shlex.split(self.text, comments=True)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        if words and words[0] == "srun":  # srun [options] PROGRAM ...
            words.pop(0)
            while words and words[0].startswith("-"):
                words.pop(0)
        return words


def _commands(page: Path) -> list[Command]:
    lines = page.read_text().splitlines()
    commands, in_block, pending, start = [], False, "", 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block = stripped == "```bash" if not in_block else False
            continue
        if not in_block or (not pending and (not stripped or stripped.startswith("#"))):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text, pending = pending + stripped, ""
        for part in re.split(r"\s&&\s", text):
            commands.append(Command(str(page.relative_to(REPO)), start, part.strip()))
    return commands


COMMANDS = [command for page in PAGES for command in _commands(page)]


def _by_program(*programs: str) -> list[Command]:
    return [c for c in COMMANDS if c.argv() and c.argv()[0] in programs]


def _local_paths(argv: list[str]) -> list[str]:
    """Repository paths named by the arguments (``--key=value`` values included), outputs excluded."""
    paths, skip_next = [], False
    for word in argv[1:]:
        if skip_next:
            skip_next = False
            continue
        if word in OUTPUT_OPTIONS:
            skip_next = True
            continue
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if value.startswith(LOCAL_PREFIXES) and not value.startswith(GENERATED_PREFIXES):
            paths.append(value.rstrip("/"))
    return paths


def _module_file(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


# ------------------------------------------------------------------------------------------- fast


def test_the_pages_have_commands():
    assert len(COMMANDS) > 40, [c.id for c in COMMANDS]
    assert any(c.page == "README.md" for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_command_is_copy_pasteable(command):
    argv = command.argv()
    assert argv, f"{command.id}: empty command {command.text!r}"
    assert argv[0] in PROGRAMS or command.page in PENDING_PAGES, (
        f"{command.id}: {argv[0]!r} is not run from the repository's virtual environment "
        f"(use .venv/bin/...): {command.text}"
    )
    if argv[0] == "python3":
        assert argv[1:] == ["-m", "venv", ".venv"], f"{command.id}: use .venv/bin/python: {command.text}"
    for word in argv:
        assert not re.search(r"<[A-Za-z][^>]*>", word), f"{command.id}: placeholder {word!r} in {command.text}"
    for path in _local_paths(argv):
        if path in ALLOWED_MISSING:
            continue
        if any(ch in path for ch in "*?["):
            assert glob.glob(str(REPO / path)), f"{command.id}: {path} matches no file"
        else:
            assert (REPO / path).exists(), f"{command.id}: {path} does not exist"


@pytest.mark.parametrize("command", _by_program(".venv/bin/mdlm"), ids=lambda c: c.id)
def test_mdlm_command_has_a_subcommand_and_its_configs(command):
    argv = command.argv()
    assert len(argv) > 1 and argv[1] in MDLM_SUBCOMMANDS, f"{command.id}: unknown subcommand in {command.text}"
    configs = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--config"]
    configs += [word.split("=", 1)[1] for word in argv if word.startswith("--config=")]
    if argv[1] in {"fit", "validate", "test", "predict", "prepare"}:
        assert configs, f"{command.id}: no --config"
    for config in configs:
        if config in ALLOWED_MISSING or config.startswith(GENERATED_PREFIXES):
            continue
        assert (REPO / config).is_file(), f"{command.id}: config {config} does not exist"


@pytest.mark.parametrize("command", _by_program(".venv/bin/python"), ids=lambda c: c.id)
def test_python_command_names_an_existing_script_or_module(command):
    argv = command.argv()
    if argv[1] == "-m":
        assert _module_file(argv[2]).is_file(), f"{command.id}: no module {argv[2]}"
    else:
        assert (REPO / argv[1]).is_file(), f"{command.id}: no script {argv[1]}"


def test_the_lm_eval_console_script_exists():
    assert "mdlm-lm-eval = \"mdlm.lm_eval_adapter:main\"" in (REPO / "pyproject.toml").read_text()
    assert (REPO / "mdlm" / "lm_eval_adapter.py").is_file()


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.relative_to(REPO)}: broken link {target}"


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = set(LINK.findall(readme))
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README's Further reading does not link docs/{page.name}"


# ------------------------------------------------------------------------------------------- slow

CLI_SUBCOMMANDS = {"fit", "validate", "test", "predict"}


def _parseable(args: list[str]) -> list[str]:
    """``args`` without ``--ckpt_path`` and without ``--config`` files that an earlier command writes."""
    out, i = [], 0
    while i < len(args):
        word = args[i]
        if word == "--ckpt_path" or (word == "--config" and args[i + 1].startswith(GENERATED_PREFIXES)):
            i += 2
            continue
        if not word.startswith("--ckpt_path="):
            out.append(word)
        i += 1
    return out


def _readme_sampler_module(directory: Path) -> None:
    """The README's ``my_samplers.py`` example, as the reader saves it."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# my_samplers.py\n.*?)```", readme, flags=re.S).group(1)
    (directory / "my_samplers.py").write_text(code)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [c for c in _by_program(".venv/bin/mdlm") if c.argv()[1] in CLI_SUBCOMMANDS
     and not any(p in ALLOWED_MISSING for p in c.argv())],
    ids=lambda c: c.id,
)
def test_mdlm_cli_parses_the_command(command, capsys, monkeypatch, tmp_path):
    import yaml

    from mdlm.cli import build_cli

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["mdlm"])
    args = _parseable(command.argv()[1:])
    if any("my_samplers." in word for word in args):
        _readme_sampler_module(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
    args = [a for a in args if a != "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        build_cli([*args, "--print_config"])
    assert exit_info.value.code == 0, f"{command.id}: {command.text}"
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in _by_program(".venv/bin/mdlm") if c.argv()[1] == "export"],
                         ids=lambda c: c.id)
def test_mdlm_export_parses_the_command(command):
    from mdlm.export import build_parser

    args = build_parser().parse_args(command.argv()[2:])
    assert args.ckpt_path and args.out


def _scripts() -> list[tuple[str, ...]]:
    found = set()
    for command in _by_program(".venv/bin/python"):
        argv = command.argv()
        found.add(("-m", argv[2]) if argv[1] == "-m" else (argv[1],))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.parametrize("script", _scripts(), ids=" ".join)
def test_script_answers_help(script):
    proc = subprocess.run([sys.executable, *script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
