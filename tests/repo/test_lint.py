"""The repository passes ``ruff check`` with the configuration in pyproject.toml (``[tool.ruff]``)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from conftest import REPO_ROOT as REPO


def _pinned_ruff() -> str:
    """The ruff version pinned in pyproject.toml's ``test`` extra (``ruff==X.Y.Z``)."""
    match = re.search(r'"ruff==([0-9][0-9.]*)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no ruff version (ruff==X.Y.Z in the test extra)"
    return match.group(1)


def test_ruff_check_finds_nothing():
    ruff = pytest.importorskip("ruff", reason="ruff is not installed: pip install -e '.[test]' installs it")
    from ruff.__main__ import find_ruff_bin

    binary = find_ruff_bin()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.run(
        [binary, "check", ".", "--output-format", "concise", "--no-cache"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (
        f"{version} (pinned: {_pinned_ruff()}; module {ruff.__file__}) reports findings; "
        f"`ruff check --fix .` fixes the ones marked [*]:\n{proc.stdout}{proc.stderr}"
    )


def test_pre_commit_runs_the_pinned_ruff():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    revs = [repo["rev"] for repo in config["repos"] if repo["repo"].endswith("/ruff-pre-commit")]
    assert revs == [f"v{_pinned_ruff()}"], "the pre-commit hook and the test extra must run the same ruff"
