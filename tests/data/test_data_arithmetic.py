"""The arithmetic word-problem task (mdlm.data.arithmetic), checked against independent computations.

Every answer is re-derived twice without the generator's code path: from the structured tuple with
an ``ast``/``Fraction`` evaluator of the fully parenthesised expression, and from the question text
alone (numbers and verbs parsed with this file's own word lists). Split disjointness is checked on
the tuples parsed back from the question text.
"""

from __future__ import annotations

import ast
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from conftest import GPT2, needs_gpt2
from conftest import REPO_ROOT as REPO

from mdlm.answers import gsm8k_reference_answer, is_correct
from mdlm.data.arithmetic import (
    LEVELS,
    ArithmeticDataError,
    ArithmeticDataModule,
    Level,
    char_tokenizer,
    generate_level,
    generate_splits,
    level_capacity,
    max_sample_chars,
    write_jsonl,
)
from mdlm.data.sft import GSM8KDataModule

#: the test's own reading of the question verbs (not the generator's table)
PLUS_WORDS = {"finds", "gains", "earns", "makes"}
MINUS_WORDS = {"loses", "sells", "gives", "drops"}
QUESTION = re.compile(r"^[A-Z][a-z]+ has (?P<start>\d+) [a-z]+(?P<clauses>(?:, then [a-z]+ \d+)+)\. How many now\?$")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MDLM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mdlm-cache"))


def evaluate(expression: str) -> Fraction:
    """Exact value of an expression of integers, + and - (anything else is refused)."""

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left - right
        raise ValueError(f"unexpected syntax {ast.dump(node)}")

    return ev(ast.parse(expression, mode="eval"))


def tuple_expression(operands, operators) -> str:
    """((a0 op1 a1) op2 a2) ... : the running total, left to right."""
    expr = str(operands[0])
    for op, x in zip(operators, operands[1:]):
        expr = f"({expr} {op} {x})"
    return expr


def parse_question(question: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The (operands, operators) tuple read back from the question text."""
    m = QUESTION.match(question)
    assert m, question
    operands, operators = [int(m["start"])], []
    for clause in m["clauses"].split(", then ")[1:]:
        words, number = clause.rsplit(" ", 1)
        assert (words in PLUS_WORDS) != (words in MINUS_WORDS), clause
        operators.append("+" if words in PLUS_WORDS else "-")
        operands.append(int(number))
    return tuple(operands), tuple(operators)


def check_solution(solution: str, operands, operators) -> int:
    """Every line ``a op b=c`` is true and starts from the previous line's result; returns the answer."""
    *lines, final = solution.split("\n")
    assert final.startswith("#### ")
    assert len(lines) == len(operators)
    previous = operands[0]
    for line, op, x in zip(lines, operators, operands[1:]):
        lhs, rhs = line.split("=")
        assert lhs == f"{previous}{op}{x}", line
        assert evaluate(lhs) == int(rhs), line
        previous = int(rhs)
    assert int(final[5:]) == previous
    return previous


# --------------------------------------------------------------------------- #
# Problems and answers
# --------------------------------------------------------------------------- #


def test_level_table():
    assert {n: (lv.num_ops, lv.digits) for n, lv in LEVELS.items()} == {
        1: (1, 2), 2: (2, 2), 3: (2, 3), 4: (3, 3), 5: (3, 4), 6: (4, 4)}


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_answer_is_rechecked_by_an_independent_solver(level):
    lv = LEVELS[level]
    splits = generate_splits([level], num_train=300, num_val=50, num_test=300, seed=3)
    for split, problems in splits.items():
        assert len(problems) == {"train": 300, "val": 50, "test": 300}[split]
        for p in problems:
            rec = p.record()
            reference = gsm8k_reference_answer(rec["answer"])
            # 1. from the structured tuple: an exact evaluation of the parenthesised expression
            exact = evaluate(tuple_expression(rec["operands"], rec["operators"]))
            assert exact.denominator == 1 and Fraction(int(reference)) == exact
            # 2. from the question text alone
            operands, operators = parse_question(rec["question"])
            assert (list(operands), list(operators)) == (rec["operands"], rec["operators"])
            flat = str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(operators, operands[1:]))
            assert evaluate(flat) == exact  # Python's own left-to-right precedence
            # 3. the worked solution: every line true and chained, the running total never negative
            assert check_solution(rec["answer"], operands, operators) == int(reference)
            totals = [evaluate(tuple_expression(operands[: i + 2], operators[: i + 1])) for i in range(len(operators))]
            # 4. the level: number of operations, exact digits of every operand and every running total
            assert len(operators) == lv.num_ops
            assert all(len(str(x)) == lv.digits for x in (*operands, *totals)), rec
            # 5. the GSM8K checker (the one `mdlm test` uses) accepts the solution, and refuses an off-by-one
            assert is_correct(rec["answer"], reference, "gsm8k")
            assert not is_correct(rec["answer"].rsplit("####", 1)[0] + f"#### {int(reference) + 1}", reference, "gsm8k")
            assert (len(rec["question"]), len(rec["answer"])) == max_sample_chars(level)  # one layout per level


def test_answers_have_carries_and_dependent_digits():
    problems = generate_splits([3, 4], num_train=0, num_val=0, num_test=500, seed=0)["test"]

    def carries(p) -> int:  # carries (+) and borrows (-) out of the units digit, over the lines
        total, n = p.operands[0], 0
        for op, x in zip(p.operators, p.operands[1:]):
            n += (total % 10 + x % 10 >= 10) if op == "+" else (total % 10 < x % 10)
            total = total + x if op == "+" else total - x
        return n

    assert sum(carries(p) > 0 for p in problems) > 0.6 * len(problems)
    assert all(len(str(p.answer)) == 3 for p in problems)


def test_level_capacity_is_exact():
    # level 1: a + b <= 99 and a - b >= 10 with a, b in 10..99: 1 + 2 + ... + 80 each
    assert level_capacity(1) == 2 * (80 * 81 // 2) == 6_480
    assert level_capacity(Level(1, 1, ("-",))) == 8 * 9 // 2  # a - b >= 1 with a, b in 1..9
    assert level_capacity(2) is None  # sampled: 2.9M raw tuples
    everything = generate_level(1, {"test": 6_480}, seed=0)["test"]
    assert len({parse_question(p.question) for p in everything}) == 6_480
    with pytest.raises(ArithmeticDataError, match="has 6,480 distinct problems, fewer than the 6,481 test"):
        generate_level(1, {"test": 6_481})


def test_splits_are_disjoint_on_the_tuples_read_back_from_the_text():
    splits = generate_splits([1, 2, 3, 4], num_train=[5000, 3000, 3000, 3000], num_val=64, num_test=500, seed=0)
    keys = {split: [parse_question(p.question) for p in problems] for split, problems in splits.items()}
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks), f"{split} repeats a problem"
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["val"]) & set(keys["test"])
    # level 1 is enumerated: most of its 6,480 problems are used, none twice across splits
    assert sum(p.level == 1 for ps in splits.values() for p in ps) == 5564


def test_test_set_depends_only_on_seed_and_level():
    base = generate_splits([3], num_train=100, num_val=10, num_test=200, seed=0)["test"]
    other = generate_splits([1, 2, 3], num_train=[4000, 50, 2000], num_val=99, num_test=200, seed=0)["test"]
    assert [p.record() for p in other if p.level == 3] == [p.record() for p in base]
    enumerated = generate_splits([1], num_train=10, num_val=0, num_test=100, seed=0)["test"]
    assert [p.record() for p in generate_splits([1], 5000, 500, 100, 0)["test"]] == [p.record() for p in enumerated]
    assert [p.record() for p in generate_splits([3], 100, 10, 200, 1)["test"]] != [p.record() for p in base]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"levels": [7]}, r"level 7 is not defined; valid levels: 1 = 1 operation on 2-digit numbers"),
        ({"levels": []}, r"levels=\[\] must be a non-empty list"),
        ({"levels": [2, 2]}, r"levels=\[2, 2\] repeats a level"),
        ({"levels": "3"}, r"levels='3' must be a non-empty list"),
        ({"num_test": -1}, r"num_test=-1 must be an integer >= 0"),
        ({"num_train": [10, 20]}, r"num_train=\[10, 20\] gives 2 counts for 3 levels \[1, 2, 3\]"),
        ({"num_train": 0}, r"num_train=0 gives no training problems"),
        ({"num_train": 20_000}, r"level 1 \(1 operation on 2-digit numbers \(\+ -\)\) has 6,480 distinct problems, "
                                r"fewer than the 500 test \+ 64 val \+ 20,000 train = 20,564 asked for"),
    ],
)
def test_bad_input_names_the_value_and_what_is_valid(kwargs, message):
    with pytest.raises(ArithmeticDataError, match=message):
        ArithmeticDataModule(**{"levels": [1, 2, 3], **kwargs})


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 2), r"num_ops=0 must be an integer in 1..8"),
        ((2, 0), r"digits=0 must be an integer in 1..9"),
        ((2, 10), r"digits=10 must be an integer in 1..9"),
        ((2, 2, ("*",)), r"operators=\('\*',\) must be distinct, non-empty and among \+, -"),
    ],
)
def test_bad_level_names_the_value_and_the_valid_range(args, message):
    with pytest.raises(ArithmeticDataError, match=message):
        Level(*args)


# --------------------------------------------------------------------------- #
# Tokenizer and data module
# --------------------------------------------------------------------------- #


def test_char_tokenizer_is_one_token_per_character(tmp_path):
    from transformers import AutoTokenizer

    folder = char_tokenizer(tmp_path)
    assert char_tokenizer(tmp_path) == folder  # built once
    tok = AutoTokenizer.from_pretrained(str(folder))
    text = "Question: Ann has 47 pens. She buys 38.\nAnswer: 47+38=85\n#### 85"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert len({tok.convert_tokens_to_ids(d) for d in "0123456789"}) == 10
    assert (tok.eos_token_id, tok.mask_token_id, len(tok)) == (0, 1, 99)
    assert tok.decode(ids + [tok.eos_token_id] * 3, skip_special_tokens=True) == text
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_data_module_uses_the_gsm8k_path_with_levels_as_groups():
    dm = ArithmeticDataModule(levels=[1, 3], num_train=40, num_val=8, num_test=10, batch_size=8, eval_batch_size=7)
    dm.setup("fit")
    dm.setup("test")
    assert (dm.template, dm.vocab_size, dm.mask_token_id, dm.pad_token_id) == ("plain", 99, 1, 0)
    assert dm.answer_groups == ["Level 1", "Level 3"]
    assert {r.dataset for r in dm.records("train")} == {"gsm8k"}
    assert [r.group for r in dm.records("test")] == ["Level 1"] * 10 + ["Level 3"] * 10
    assert dm.stats["train"].samples == 80 and dm.stats["val"].samples == 16
    assert dm.stats["train"].max_tokens <= dm.max_length

    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    for row in range(8):
        p = dm.problems("train")[int(batch["index"][row])]
        P = int(batch["prompt_length"][row])
        text = f"Question: {p.question}\nAnswer: {p.solution}"
        assert dm.tokenizer.decode(batch["input_ids"][row][: len(text)]) == text
        assert dm.tokenizer.decode(batch["input_ids"][row][:P]) == f"Question: {p.question}\nAnswer:"
        assert not batch["maskable"][row, :P].any() and batch["maskable"][row, P:].all()

    test = list(dm.test_dataloader())
    assert sum(len(b["reference"]) for b in test) == 20
    first = test[0]
    assert first["group"][:3] == ["Level 1"] * 3 and set(first["dataset"]) == {"gsm8k"}
    ids, mask = first["prompt_input_ids"], first["prompt_attention_mask"]
    for row, p in enumerate(dm.problems("test")[:7]):
        assert first["reference"][row] == str(p.answer)
        assert dm.tokenizer.decode(ids[row][mask[row]]) == f"Question: {p.question}\nAnswer:"
        assert is_correct(p.solution, first["reference"][row], "gsm8k")


def test_each_split_holds_its_own_problems_whichever_is_read_first():
    expected = generate_splits([1, 3], num_train=40, num_val=8, num_test=10, seed=0)
    for first in ("test", "val", "train"):
        dm = ArithmeticDataModule(levels=[1, 3], num_train=40, num_val=8, num_test=10)
        for split in (first, *[s for s in expected if s != first]):
            assert [r.reference for r in dm.records(split)] == [str(p.answer) for p in expected[split]]
            assert [r.messages[0]["content"] for r in dm.records(split)] == [p.question for p in expected[split]]


def test_per_level_counts_and_no_test_split():
    dm = ArithmeticDataModule(levels=[2, 4], num_train=[30, 50], num_val=0, num_test=[5, 0])
    assert [p.level for p in dm.problems("train")].count(4) == 50
    assert dm.answer_groups == ["Level 2"]
    assert not dm.has_split("val")
    with pytest.raises(ArithmeticDataError, match="no val data: num_val=0"):
        dm.records("val")


@needs_gpt2
def test_a_pretrained_tokenizer_works_too():
    dm = ArithmeticDataModule(levels=[4], num_train=20, num_val=0, num_test=4, tokenizer=str(GPT2), add_mask_token=True)
    dm.setup("fit")
    assert dm.vocab_size == 50258 and dm.stats["train"].max_tokens <= dm.max_length


def test_jsonl_export_reads_back_through_the_gsm8k_module(tmp_path):
    paths = write_jsonl(tmp_path, [1, 2], num_train=20, num_val=0, num_test=6, seed=5)
    assert set(paths) == {"train", "test"}
    records = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    dm = GSM8KDataModule(str(char_tokenizer()), train_path=str(paths["train"]), test_path=str(paths["test"]))
    assert [r.reference for r in dm.records("test")] == [gsm8k_reference_answer(r["answer"]) for r in records]
    expected = generate_splits([1, 2], 20, 0, 6, 5)["test"]
    assert records == [p.record() for p in expected]


# --------------------------------------------------------------------------- #
# The shipped config and its CLI path
# --------------------------------------------------------------------------- #


def _config() -> dict:
    return yaml.safe_load((REPO / "configs" / "sft_arithmetic.yaml").read_text())


def test_config_decodes_with_the_exact_loop_and_an_answer_budget_that_fits():
    cfg = _config()
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    gen = model["generation_overrides"]
    assert model["generation_preset"] == "cpu_tiny" and set(gen) == {"gen_length", "steps", "block_length"}
    assert gen["steps"] == gen["gen_length"] == gen["block_length"]  # one token per step, one block
    longest_solution = max(max_sample_chars(level)[1] for level in data["levels"])
    assert gen["gen_length"] >= longest_solution + 2  # " " + solution + EOS
    longest_prompt = max(max_sample_chars(level)[0] for level in data["levels"]) + len("Question: \nAnswer:")
    assert model["backbone"]["init_args"]["max_seq_len"] >= longest_prompt + gen["gen_length"]
    assert data["num_test"] * len(data["levels"]) >= 1000


@pytest.mark.slow
def test_cli_fit_then_test_reports_accuracy_per_level(tmp_path, monkeypatch):
    from mdlm.cli import build_cli

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["mdlm"])
    configs = ["--config", "configs/sft_arithmetic.yaml", "--config", "configs/presets/arithmetic_smoke.yaml"]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
             f"--trainer.logger.init_args.save_dir={tmp_path}"]
    fit = build_cli(["fit", *configs, *quiet])
    assert fit.trainer.global_step == 4
    ckpt = next(Path(fit.trainer.log_dir, "checkpoints").glob("*.ckpt"))
    test = build_cli(["test", *configs, *quiet, f"--ckpt_path={ckpt}"])
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items()}
    levels = _config()["data"]["init_args"]["levels"]
    for level in levels:
        assert 0.0 <= metrics[f"test/answer_accuracy/Level {level}"] <= 1.0
    assert 0.0 <= metrics["test/answer_accuracy"] <= 1.0
    assert test.model.generation_config.remasking == "low_confidence" and test.model.generation_config.temperature == 0
    assert isinstance(test.datamodule, ArithmeticDataModule) and torch.is_tensor(test.datamodule.test_set[0]["prompt_input_ids"])
