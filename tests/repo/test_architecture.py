"""Package structure: no import cycles, every module imports on its own, no module grows unnoticed.

* Static: the graph of module-level ``import``/``from ... import`` statements between mdlm modules
  (imports inside functions are deferred on purpose and are not edges) has no cycle.
* Runtime: each module, imported first into an interpreter that holds no mdlm module yet, imports
  without error (an order-dependent cycle shows up as "partially initialized module"). One
  subprocess does them all: it imports the heavy third-party packages once and drops every
  ``mdlm*`` entry of ``sys.modules`` before each module.
* Size: no module over ``MAX_LINES`` except the listed ones, each with its reason.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT as REPO

PACKAGE = REPO / "mdlm"
#: remote-code stand-ins (package data copied into model folders; they register with transformers' Auto
#: classes on import and are loaded by transformers, not imported as mdlm modules)
NOT_MODULES = ("mdlm/testing/standins/",)
MAX_LINES = 500
#: modules allowed above MAX_LINES (lines counted with docstrings, about a fifth of each), and why
LARGE_MODULES = {
    "mdlm/module.py": "one class, the LightningModule (527 lines): training/validation/test/predict steps, "
    "optimizer and schedule, metrics; the loss itself is in objective.py",
    "mdlm/data/text.py": "one class, TextDataModule (443 lines): local/hub/prepared sources per split, cache "
    "keys and fingerprints, rank-aware loaders; sources.py and streaming.py hold everything else",
    "mdlm/data/arithmetic.py": "the task's generator, its independent solver and its data module belong together: "
    "the disjointness of train and test rests on the enumeration in this file",
    "mdlm/export.py": "one command, mdlm export: checkpoint weights (full, sharded, EMA/raw) -> one of two "
    "Hugging Face formats with tokenizer; each step is a small function",
    "mdlm/models/hf.py": "one class, HFBackbone (380 lines): loading, meta init, bidirectional attention, "
    "padding and per-family traits; version shims are in hf_compat.py",
    "mdlm/models/loading.py": "checkpoint-to-model key mapping with its report; a third of the file is the "
    "docstrings that state each family's key rules",
    "mdlm/lm_eval_adapter.py": "one class, lm-eval's LM interface (391 lines: loglikelihood, rolling, "
    "generate_until) over one checkpoint",
}


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(NOT_MODULES):
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _module_level_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The mdlm modules ``name`` imports at module level (``if TYPE_CHECKING:`` blocks excluded)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(module: str | None, level: int) -> str | None:
        if level == 0:
            return module
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node.module, node.level)
                if target is None:
                    continue
                for alias in node.names:  # `from mdlm.pkg import submodule` depends on the submodule
                    child = f"{target}.{alias.name}"
                    found.add(child if child in modules else target)
            elif isinstance(node, ast.If):
                test = node.test
                guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
                )
                if not guarded:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles_between_mdlm_modules():
    files = _module_files()
    graph = {name: _module_level_imports(path, name, set(files)) for name, path in files.items()}
    assert "mdlm.generation" in graph and graph["mdlm.likelihood"] >= {"mdlm.generation"}  # the walk sees imports
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles (defer one import into the function that needs it):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


IMPORT_EACH = r"""
import importlib, json, sys, traceback, warnings
warnings.simplefilter("ignore")
import torch, lightning, transformers  # the heavy third-party imports, once
results = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "mdlm" or m.startswith("mdlm.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        results[name] = None
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "mdlm":
            results[name] = traceback.format_exc(limit=3)
        else:
            results[name] = "optional:" + str(e.name)
    except Exception:
        results[name] = traceback.format_exc(limit=3)
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_mdlm_module_imports_first_on_its_own():
    names = sorted(_module_files())
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, *names], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home()), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(results) == names
    failed = {n: err for n, err in results.items() if err and not err.startswith("optional:")}
    assert not failed, "\n\n".join(f"{n}:\n{err}" for n, err in failed.items())


def test_no_module_grows_past_the_limit_unless_listed():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in _module_files().values()}
    over = {rel: n for rel, n in sizes.items() if n > MAX_LINES and rel not in LARGE_MODULES}
    assert not over, (
        f"modules over {MAX_LINES} lines: {over}; split them, or list them in LARGE_MODULES with the reason"
    )
    assert set(LARGE_MODULES) <= set(sizes), "LARGE_MODULES names a module that no longer exists"
