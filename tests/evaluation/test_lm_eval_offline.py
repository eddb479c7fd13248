"""The offline lm-eval tasks of ``examples/lm_eval_tasks`` (README.md there): the shipped JSONL is what
its generator writes (the first test problems of ``configs/sft_arithmetic.yaml``), every item's correct
choice is right by independent arithmetic, the WikiText excerpt loads as paragraphs, and
``mdlm-lm-eval --include_path examples/lm_eval_tasks`` runs the three tasks on a few-step checkpoint
with the network blocked and an empty Hugging Face cache."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

TASKS = REPO_ROOT / "examples" / "lm_eval_tasks"
SHIPPED = TASKS / "arithmetic_mc.jsonl"
BIN = Path(sys.executable).parent

# the question template of mdlm.data.arithmetic, parsed here without its code: "Ann has 47 coins, then finds 38."
QUESTION = re.compile(r"^[A-Z][a-z]{2} has (\d+) [a-z]{5}((?:, then [a-z]{5} \d+)+)\. How many now\?$")
CLAUSE = re.compile(r", then ([a-z]{5}) (\d+)")
SIGN = {"finds": 1, "gains": 1, "earns": 1, "makes": 1, "loses": -1, "sells": -1, "gives": -1, "drops": -1}

# no network for the child processes: any non-local socket connection raises
NO_NETWORK = """
import socket
_connect = socket.socket.connect
def _guard(self, address, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError(f"network blocked by tests/test_lm_eval_offline.py: connect to {address}")
    return _connect(self, address, *args)
socket.socket.connect = _guard
"""


def _generator():
    spec = importlib.util.spec_from_file_location("make_arithmetic_mc", TASKS / "make_arithmetic_mc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _items() -> list[dict]:
    return [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]


def test_shipped_jsonl_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "arithmetic_mc.jsonl"
    _generator().main(["--out", str(out)])
    assert out.read_bytes() == SHIPPED.read_bytes(), (
        "examples/lm_eval_tasks/arithmetic_mc.jsonl is stale: run python examples/lm_eval_tasks/make_arithmetic_mc.py"
    )
    # the items are held out of configs/sft_arithmetic.yaml's training set: its first 100 test problems
    import yaml

    from mdlm.data.arithmetic import generate_splits

    data = yaml.safe_load((REPO_ROOT / "configs" / "sft_arithmetic.yaml").read_text())["data"]["init_args"]
    splits = generate_splits(data["levels"], data["num_train"], data["num_val"], data["num_test"], data["seed"])
    assert [item["question"] for item in _items()] == [p.question for p in splits["test"][:100]]
    train = {p.key for p in splits["train"]}
    assert not train & {(tuple(item["operands"]), tuple(item["operators"])) for item in _items()}


def test_wikitext_excerpt_loads_as_paragraphs():
    spec = importlib.util.spec_from_file_location("lm_eval_task_utils", TASKS / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = utils.wikitext_excerpt()["test"]["text"]
    assert len(docs) == 24 and docs[0].startswith("Homarus gammarus , known as the European lobster")
    assert all(text and not text.startswith("=") and text == text.strip() for text in docs)
    assert len(utils.arithmetic()["test"]) == 100


def test_every_item_has_exactly_one_right_choice_by_independent_arithmetic():
    items = _items()
    assert len(items) == 100 and SHIPPED.stat().st_size < 50_000
    assert [item["id"] for item in items] == list(range(100))
    assert len({item["question"] for item in items}) == 100
    for item in items:
        match = QUESTION.match(item["question"])
        assert match, item["question"]
        value = first = int(match.group(1))
        steps = [(SIGN[verb], int(x)) for verb, x in CLAUSE.findall(match.group(2))]
        for sign, x in steps:
            value += sign * x
        assert item["answer"] == str(value)
        assert 10 <= value <= 99  # level 1: every number has two digits
        choices, label = item["choices"], item["label"]
        assert len(choices) == 4 and len(set(choices)) == 4 and 0 <= label < 4
        right = []
        for choice in choices:
            *lines, final = choice.split("\n")
            claimed = int(final.removeprefix("#### "))
            assert final == f"#### {claimed}" and len(lines) == len(steps) == 1
            a, op, b, result = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", lines[0]).groups()
            assert (int(a), int(b), int(result)) == (first, steps[0][1], claimed)
            assert op == ("+" if steps[0][0] > 0 else "-")
            if claimed == value:
                right.append(choice)
            else:  # a near miss, still two digits
                assert abs(claimed - value) in (1, 2, 9, 10, 11) and 10 <= claimed <= 99
        assert right == [choices[label]]


def _run(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # an empty Hub cache: nothing downloaded before can help
        "PYTHONPATH": os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.slow
def test_offline_tasks_run_on_a_few_step_checkpoint(tmp_path):
    pytest.importorskip("lm_eval")
    runs = tmp_path / "runs"
    _run([str(BIN / "mdlm"), "fit", "--config", "configs/sft_arithmetic.yaml",
          "--config", "configs/presets/arithmetic_smoke.yaml",
          f"--trainer.logger.init_args.save_dir={runs}"], tmp_path, timeout=600)
    ckpt = runs / "sft_arithmetic" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "lm_eval_out"
    proc = _run([str(BIN / "mdlm-lm-eval"), "--model", "mdlm",
                 "--model_args", f"checkpoint={ckpt},mc_num=4,gen_length=32,steps=32,check_greedy=False",
                 "--include_path", "examples/lm_eval_tasks", "--tasks", "mdlm_arithmetic,mdlm_wikitext_excerpt",
                 "--limit", "4", "--output_path", str(out)], tmp_path, timeout=600)
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1, proc.stdout
    results = json.loads(files[0].read_text())
    assert set(results["results"]) >= {"mdlm_arithmetic_mc", "mdlm_arithmetic_gen", "mdlm_wikitext_excerpt"}
    accuracy = results["results"]["mdlm_arithmetic_mc"]["acc,none"]
    exact = results["results"]["mdlm_arithmetic_gen"]["exact_match,final_answer"]
    for value in (accuracy, exact):
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    bits = results["results"]["mdlm_wikitext_excerpt"]["bits_per_byte,none"]
    assert math.isfinite(bits) and bits > 0
    for task in ("mdlm_arithmetic_mc", "mdlm_arithmetic_gen", "mdlm_wikitext_excerpt"):
        assert results["n-samples"][task]["effective"] == 4
    assert "mdlm_arithmetic_mc" in proc.stdout and "exact_match" in proc.stdout  # the printed table
