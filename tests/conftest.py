"""Shared test helpers."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

warnings.filterwarnings("ignore", message=".*LeafSpec.*")


@pytest.fixture
def shared_data() -> Path:
    """The staged real data beside the repository (``../shared/data``); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it ships beside the repo on the project's machines)")
    return SHARED_DATA


def tiny_trainer(tmp_path: Path, **kwargs):
    """A quiet CPU Trainer for unit tests."""
    from lightning.pytorch import Trainer

    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


@pytest.fixture(scope="module")
def modules_cache(tmp_path_factory):
    """Keep transformers' copies of remote code out of ~/.cache (one folder for this module, then forgotten)."""
    import sys

    import transformers.dynamic_module_utils as dmu

    folder = tmp_path_factory.mktemp("remote")
    saved = dmu.HF_MODULES_CACHE
    dmu.HF_MODULES_CACHE = str(folder / "hf_modules")
    yield folder
    dmu.HF_MODULES_CACHE = saved
    for name in [n for n in sys.modules if n == "transformers_modules" or n.startswith("transformers_modules.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p != str(folder / "hf_modules")]


def load_script(name: str):
    """``tests/scripts/<name>.py`` as a module (the multi-process scripts' helpers, reused in-process)."""
    import importlib.util

    path = REPO_ROOT / "tests" / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tests_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_lines(n: int, seed: int, prefix: str, max_words: int = 25) -> list[str]:
    """``n`` seeded one-line documents ``"<prefix> <i> <words>"`` (3..max_words words) for text-data tests."""
    import random

    rng = random.Random(seed)
    return [
        f"{prefix} {i} " + " ".join(f"{prefix[0]}{rng.randint(0, 999)}" for _ in range(rng.randint(3, max_words)))
        for i in range(n)
    ]
