"""The shared fixtures and helpers of every test tier (the one conftest.py; see tests/README.md).

Test files import the constants, skip markers and helpers by name (``from conftest import GPT2, needs_gpt2``):
pytest puts this folder on ``sys.path`` (pyproject's ``pythonpath``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"
#: the multi-process scripts (run as subprocesses, and loaded in-process with :func:`load_script`)
SCRIPTS = TESTS / "scripts"
#: the staged real data beside the repository (it ships there on the project's machines)
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
GPT2 = SHARED_DATA / "tokenizers" / "gpt2"
MISTRAL = SHARED_DATA / "tokenizers" / "mistral"
WIKI = SHARED_DATA / "wikitext-2-raw"
GSM8K = SHARED_DATA / "gsm8k"
MATH = SHARED_DATA / "math"
MATH500 = MATH / "math500_test.jsonl"

# skip markers for tests that need staged data (``@needs_gpt2`` or ``pytestmark = needs_gpt2``)
needs_gpt2 = pytest.mark.skipif(not (GPT2 / "vocab.json").is_file(), reason=f"GPT-2 tokenizer not staged at {GPT2}")
needs_mistral = pytest.mark.skipif(
    not (MISTRAL / "tokenizer.json").is_file(), reason=f"Mistral tokenizer not staged at {MISTRAL}"
)
needs_wiki = pytest.mark.skipif(
    not (WIKI / "wiki.train.head.raw").is_file(), reason=f"WikiText-2 sample not staged at {WIKI}"
)
needs_wiki_gpt2 = pytest.mark.skipif(
    not ((WIKI / "wiki.valid.raw").is_file() and (GPT2 / "vocab.json").is_file()),
    reason=f"WikiText-2 / GPT-2 tokenizer not staged under {SHARED_DATA}",
)
needs_gsm8k = pytest.mark.skipif(not (GSM8K / "train.jsonl").is_file(), reason=f"GSM8K not staged at {GSM8K}")
needs_math = pytest.mark.skipif(not (MATH / "train.jsonl").is_file(), reason=f"MATH not staged at {MATH}")
needs_math500 = pytest.mark.skipif(not MATH500.is_file(), reason=f"MATH-500 not staged at {MATH500}")

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
    """Keep transformers' copies of remote code out of ~/.cache (one folder for this module, then forgotten).

    Remote code loaded earlier in the session without this fixture (``benchmarks/rehearse_8b_route.py``, run
    in-process by tests/benchmarks/, before tests/models/) leaves ``transformers_modules`` imported from
    ~/.cache and that cache on ``sys.path``; ``transformers_modules`` would then resolve there and the copies
    in this folder would not be found. Both are set aside for the module's tests and restored afterwards."""
    import sys

    import transformers.dynamic_module_utils as dmu

    def forget_remote_modules():
        for name in [n for n in sys.modules if n == "transformers_modules" or n.startswith("transformers_modules.")]:
            del sys.modules[name]

    folder = tmp_path_factory.mktemp("remote")
    saved = dmu.HF_MODULES_CACHE
    dmu.HF_MODULES_CACHE = str(folder / "hf_modules")
    forget_remote_modules()
    other_caches = [p for p in sys.path if p and (Path(p) / "transformers_modules").is_dir()]
    sys.path[:] = [p for p in sys.path if p not in other_caches]
    yield folder
    dmu.HF_MODULES_CACHE = saved
    forget_remote_modules()
    sys.path[:] = [p for p in sys.path if p != str(folder / "hf_modules")] + other_caches


def load_script(name: str):
    """``tests/scripts/<name>.py`` as a module (the multi-process scripts' helpers, reused in-process)."""
    import importlib.util

    path = SCRIPTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tests_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the rendezvous of the multi-process tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lines(n: int, seed: int, prefix: str, max_words: int = 25) -> list[str]:
    """``n`` seeded one-line documents ``"<prefix> <i> <words>"`` (3..max_words words) for text-data tests."""
    import random

    rng = random.Random(seed)
    return [
        f"{prefix} {i} " + " ".join(f"{prefix[0]}{rng.randint(0, 999)}" for _ in range(rng.randint(3, max_words)))
        for i in range(n)
    ]


def pytest_collection_modifyitems(config, items):
    """Every ``distributed`` test (2 processes or more) is also ``slow``: ``-m "not slow"`` leaves them all out."""
    for item in items:
        if item.get_closest_marker("distributed") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_rank_group():
    """A 1-rank gloo process group (real collectives, no subprocess) and its device mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    finally:
        dist.destroy_process_group()


def token_stream(tok, docs, eos) -> list[int]:
    """The expected token stream of a corpus, computed independently: each document through the tokenizer, then EOS."""
    out: list[int] = []
    for d in docs:
        out += tok(d, add_special_tokens=False)["input_ids"] + [eos]
    return out


def marked_section(text: str, start: str, end: str) -> str | None:
    """The stripped text between the markers ``start`` and ``end`` of a generated table, None without them."""
    if start not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip()

