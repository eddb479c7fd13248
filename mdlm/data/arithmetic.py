r"""A checkable SFT task a small model learns on a CPU: templated arithmetic word problems.

Every problem is a seeded tuple of operands and operators, applied left to right to a running
total, and rendered in the GSM8K format — a question, a short worked solution with one line per
operation, and ``#### <answer>``::

    question: Ann has 47 coins, then finds 38, then loses 19. How many now?
    answer:   47+38=85
              85-19=66
              #### 66

Difficulty levels (:data:`LEVELS`) set the number of operations and the digits of every number:
every operand *and every running total* has exactly ``digits`` digits, so an answer has several
dependent tokens (carries and borrows inside a number; each line's result is the next line's first
operand) and a level has one layout. Operators are ``+`` (finds, gains, earns, makes) and ``-``
(loses, sells, gives, drops).

The wording is built for a small model that has to learn it in minutes: every name has three
letters, every object and every verb five, so each level's text has one fixed layout (the wording
varies, the positions do not) — copying a question number into the worked solution is a lookup at
a fixed position, and what is left to learn is the arithmetic (the carries and borrows) and the
chaining of the lines.

Splits are disjoint on the underlying ``(operands, operators)`` tuple (:attr:`Problem.key`), not on
the text: a test problem never occurs in val or train under any name, object or wording. Per
level, the test problems are drawn first, then val (excluding test), then train (excluding both),
each from its own seeded stream, so the test set depends only on ``seed`` and the level — not on
the other sizes or on which other levels are used. A level with few distinct problems (level 1:
12,195) is enumerated and shuffled, so asking for more than exist is an error that names the count.

:class:`ArithmeticDataModule` is an :class:`mdlm.data.sft.SFTDataModule` whose records come from
this generator instead of a file: the records pass through the GSM8K adapter (``dataset="gsm8k"``,
reference = the number after ``####``), the same tokenisation, :class:`~mdlm.data.sft.SFTCollator`
and :class:`~mdlm.data.sft.PromptCollator`, and ``mdlm test`` checks answers with
:func:`mdlm.answers.is_correct` (``"gsm8k"``). The only difference: a record's group is its level
(``"Level 3"``), so ``test/answer_accuracy/Level 3`` is reported per level.

Tokenizer: ``tokenizer="char"`` (default) is a character-level tokenizer over printable ASCII
(:func:`char_tokenizer`; one token per digit, 99 ids with ``<|endoftext|>``, ``[MASK]`` and
``[UNK]``), built once into ``cache_dir``. Any tokenizer spec of :class:`SFTDataModule` works too
(e.g. ``../shared/data/tokenizers/gpt2`` with ``add_mask_token: true``).

:func:`write_jsonl` exports the splits as GSM8K-format JSONL (``question``, ``answer`` plus
``level``, ``operands``, ``operators``) for :class:`mdlm.data.sft.GSM8KDataModule` or other tools;
``python -m mdlm.data.arithmetic OUT_DIR`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import string
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mdlm.data.sft import SFTDataError, SFTDataModule, SFTRecord, SplitStats, read_records

__all__ = [
    "CHAR_TOKENIZER",
    "LEVELS",
    "ArithmeticDataError",
    "ArithmeticDataModule",
    "Level",
    "Problem",
    "generate_level",
    "get_level",
    "char_tokenizer",
    "generate_splits",
    "level_capacity",
    "level_sizes",
    "max_sample_chars",
    "write_jsonl",
]

log = logging.getLogger(__name__)

#: the tokenizer spec that selects :func:`char_tokenizer`
CHAR_TOKENIZER = "char"
OPERATORS: tuple[str, ...] = ("+", "-")
SPLIT_ORDER: tuple[str, ...] = ("test", "val", "train")  # draw order: test never depends on the others
#: levels whose number of raw tuples is at most this are enumerated (exact capacity), else sampled
ENUMERATE_LIMIT = 1_000_000

#: names of three letters and objects of five: one layout per level, whatever the wording
NAMES: tuple[str, ...] = ("Ann", "Ben", "Dan", "Eve", "Gus", "Hal", "Ivy", "Jon", "Kim", "Max")
OBJECTS: tuple[str, ...] = ("coins", "cards", "books", "beads", "pears", "plums", "rocks", "bells", "dolls", "kites")
#: every verb has five letters: the layout after the first number does not depend on the wording
VERBS: dict[str, tuple[str, ...]] = {
    "+": ("finds", "gains", "earns", "makes"),
    "-": ("loses", "sells", "gives", "drops"),
}


class ArithmeticDataError(SFTDataError):
    """Bad arithmetic-task configuration (a one-line message naming the value and what is valid)."""


@dataclass(frozen=True)
class Level:
    """A difficulty level: ``num_ops`` operations; every operand and running total has exactly
    ``digits`` digits."""

    num_ops: int
    digits: int
    operators: tuple[str, ...] = OPERATORS

    def __post_init__(self) -> None:
        if not isinstance(self.num_ops, int) or not 1 <= self.num_ops <= 8:
            raise ArithmeticDataError(f"num_ops={self.num_ops!r} must be an integer in 1..8 (operations per problem)")
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ArithmeticDataError(f"digits={self.digits!r} must be an integer in 1..9 (digits of every operand)")
        bad = [op for op in self.operators if op not in OPERATORS]
        if not self.operators or bad or len(set(self.operators)) != len(self.operators):
            raise ArithmeticDataError(
                f"operators={self.operators!r} must be distinct, non-empty and among {', '.join(OPERATORS)}"
            )

    @property
    def low(self) -> int:
        return 1 if self.digits == 1 else 10 ** (self.digits - 1)

    @property
    def high(self) -> int:
        return 10**self.digits - 1

    @property
    def raw_size(self) -> int:
        """Operand and operator tuples before the running totals' ``digits`` constraint."""
        return (self.high - self.low + 1) ** (self.num_ops + 1) * len(self.operators) ** self.num_ops

    def describe(self) -> str:
        ops = "operation" if self.num_ops == 1 else "operations"
        return f"{self.num_ops} {ops} on {self.digits}-digit numbers ({' '.join(self.operators)})"


#: The difficulty levels, by number: operations x operand digits.
LEVELS: dict[int, Level] = {
    1: Level(1, 2),
    2: Level(2, 2),
    3: Level(2, 3),
    4: Level(3, 3),
    5: Level(3, 4),
    6: Level(4, 4),
}


def _levels_help() -> str:
    return "; ".join(f"{n} = {lv.describe()}" for n, lv in LEVELS.items())


def get_level(level: int) -> Level:
    """The :class:`Level` numbered ``level`` in :data:`LEVELS` (an error names the valid ones)."""
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ArithmeticDataError(f"level {level!r} is not defined; valid levels: {_levels_help()}")
    return LEVELS[level]


# --------------------------------------------------------------------------- #
# Problems
# --------------------------------------------------------------------------- #


def _running(operands: Sequence[int], operators: Sequence[str]) -> list[int]:
    """Running totals after each operation (left to right)."""
    value, out = operands[0], []
    for op, x in zip(operators, operands[1:]):
        value = value + x if op == "+" else value - x
        out.append(value)
    return out


@dataclass(frozen=True)
class Problem:
    """One problem: the tuple that defines it plus its wording (which does not)."""

    level: int
    operands: tuple[int, ...]
    operators: tuple[str, ...]
    name: int = 0  #: index into NAMES
    obj: int = 0  #: index into OBJECTS
    verbs: tuple[int, ...] = ()  #: per operation, index into VERBS[op]

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The identity of the problem, on which the splits are disjoint."""
        return self.operands, self.operators

    @property
    def answer(self) -> int:
        return _running(self.operands, self.operators)[-1]

    @property
    def question(self) -> str:
        name, obj = NAMES[self.name], OBJECTS[self.obj]
        verbs = self.verbs or (0,) * len(self.operators)
        clauses = "".join(f", then {VERBS[op][v]} {x}" for op, v, x in zip(self.operators, verbs, self.operands[1:]))
        return f"{name} has {self.operands[0]} {obj}{clauses}. How many now?"

    @property
    def solution(self) -> str:
        """One line per operation, ``a+b=c``, then ``#### <answer>`` (GSM8K's final line)."""
        lines, value = [], self.operands[0]
        for op, x, result in zip(self.operators, self.operands[1:], _running(self.operands, self.operators)):
            lines.append(f"{value}{op}{x}={result}")
            value = result
        return "\n".join(lines) + f"\n#### {self.answer}"

    def record(self) -> dict[str, Any]:
        """The GSM8K-format record (``question``/``answer``) with the tuple and level alongside."""
        return {
            "question": self.question,
            "answer": self.solution,
            "level": self.level,
            "operands": list(self.operands),
            "operators": list(self.operators),
        }


def _valid(level: Level, operands: Sequence[int], operators: Sequence[str]) -> bool:
    totals = _running(operands, operators)
    return level.low <= min(totals) and max(totals) <= level.high


def _enumerate(level: Level) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    rng = range(level.low, level.high + 1)
    out = []
    for ops in itertools.product(level.operators, repeat=level.num_ops):
        for operands in itertools.product(rng, repeat=level.num_ops + 1):
            if _valid(level, operands, ops):
                out.append((operands, ops))
    return out


def _draw(level: Level, rng: random.Random) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """One valid tuple of a sampled level: a uniform start, then per step a uniform operator among
    those that can keep the total in range and a uniform operand among those that do."""
    value = rng.randint(level.low, level.high)
    operands, ops = [value], []
    for _ in range(level.num_ops):
        room = {"+": level.high - value, "-": value - level.low}  # the largest operand each operator allows
        usable = [op for op in level.operators if min(room[op], level.high) >= level.low]
        if not usable:  # only with a single operator: start again
            return _draw(level, rng)
        op = rng.choice(usable)
        x = rng.randint(level.low, min(room[op], level.high))
        value = value + x if op == "+" else value - x
        operands.append(x)
        ops.append(op)
    return tuple(operands), tuple(ops)


_CAPACITY: dict[Level, int] = {}


def level_capacity(level: int | Level) -> int | None:
    """Distinct problems of a level (exact when it is enumerated), None when the level is sampled
    (its space is larger than :data:`ENUMERATE_LIMIT` raw tuples; a sampled level holds at least
    tens of thousands of problems)."""
    lv = get_level(level) if isinstance(level, int) else level
    if lv.raw_size > ENUMERATE_LIMIT:
        return None
    if lv not in _CAPACITY:
        _CAPACITY[lv] = len(_enumerate(lv))
    return _CAPACITY[lv]


def _stream(seed: int, level: int, what: str) -> random.Random:
    # str seeds are hashed with sha512 by random.seed: the same stream on every platform and run
    return random.Random(f"mdlm-arithmetic/{seed}/{level}/{what}")


def _wording(rng: random.Random, operators: Sequence[str]) -> dict[str, Any]:
    return {
        "name": rng.randrange(len(NAMES)),
        "obj": rng.randrange(len(OBJECTS)),
        "verbs": tuple(rng.randrange(len(VERBS[op])) for op in operators),
    }


def _check_sizes(sizes: dict[str, int]) -> None:
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ArithmeticDataError(f"num_{split}={n!r} must be an integer >= 0 (problems per level)")


def _check_capacity(level: int, sizes: dict[str, int]) -> int | None:
    """The level's capacity (:func:`level_capacity`); an error when ``sizes`` ask for more."""
    capacity = level_capacity(level)
    total = sum(sizes.values())
    if capacity is not None and total > capacity:
        asked = " + ".join(f"{sizes[s]:,} {s}" for s in SPLIT_ORDER if s in sizes)
        raise ArithmeticDataError(
            f"level {level} ({get_level(level).describe()}) has {capacity:,} distinct problems, fewer than the "
            f"{asked} = {total:,} asked for; lower num_train/num_val/num_test or use a level with more digits "
            "or operations"
        )
    return capacity


def generate_level(level: int, sizes: dict[str, int], seed: int = 0) -> dict[str, list[Problem]]:
    """Problems of one level per split (``sizes``: split -> count, splits among test/val/train),
    disjoint on :attr:`Problem.key`; test is drawn first, then val, then train."""
    lv = get_level(level)
    _check_sizes(sizes)
    unknown = set(sizes) - set(SPLIT_ORDER)
    if unknown:
        raise ArithmeticDataError(f"unknown split(s) {sorted(unknown)}; valid: {', '.join(SPLIT_ORDER)}")
    order = [s for s in SPLIT_ORDER if s in sizes]
    capacity = _check_capacity(level, sizes)
    keys: dict[str, list[tuple[tuple[int, ...], tuple[str, ...]]]] = {}
    if capacity is not None:  # enumerate, shuffle once, take consecutive slices: test first
        pool = _enumerate(lv)
        _stream(seed, level, "order").shuffle(pool)
        start = 0
        for split in order:
            keys[split] = pool[start : start + sizes[split]]
            start += sizes[split]
    else:
        taken: set = set()
        for split in order:
            rng, drawn, tries = _stream(seed, level, split), [], 0
            while len(drawn) < sizes[split]:
                tries += 1
                if tries > 100 * sizes[split] + 10_000:  # pragma: no cover - spaces this large never saturate
                    raise ArithmeticDataError(f"level {level}: could not draw {sizes[split]:,} distinct {split} problems")
                key = _draw(lv, rng)
                if key in taken:
                    continue
                taken.add(key)
                drawn.append(key)
            keys[split] = drawn
    out = {}
    for split in order:
        words = _stream(seed, level, f"{split}/wording")
        out[split] = [Problem(level, operands, ops, **_wording(words, ops)) for operands, ops in keys[split]]
    return out


def _per_level(name: str, value: Any, levels: Sequence[int]) -> list[int]:
    """``value`` (one count, or one per level) as a list of counts, one per level."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * len(levels)
    if len(values) != len(levels):
        raise ArithmeticDataError(
            f"{name}={list(value)} gives {len(values)} counts for {len(levels)} levels {list(levels)}: "
            "give one count (the same for every level) or one per level"
        )
    for n in values:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ArithmeticDataError(f"{name}={value!r} must be an integer >= 0 or a list of them, one per level")
    return values


def level_sizes(
    levels: Sequence[int], num_train: int | Sequence[int], num_val: int | Sequence[int], num_test: int | Sequence[int]
) -> dict[int, dict[str, int]]:
    """``{level: {"test": n, "val": n, "train": n}}`` from per-level counts (one for all, or a list)."""
    levels = _check_levels(levels)
    per = {
        split: _per_level(f"num_{split}", value, levels)
        for split, value in (("test", num_test), ("val", num_val), ("train", num_train))
    }
    return {level: {split: per[split][i] for split in SPLIT_ORDER} for i, level in enumerate(levels)}


def generate_splits(
    levels: Sequence[int],
    num_train: int | Sequence[int],
    num_val: int | Sequence[int],
    num_test: int | Sequence[int],
    seed: int = 0,
) -> dict[str, list[Problem]]:
    """Problems of every split; ``num_*`` per level (one count for all levels, or a list with one
    per level); levels in the given order within a split."""
    out: dict[str, list[Problem]] = {s: [] for s in ("train", "val", "test")}
    for level, sizes in level_sizes(levels, num_train, num_val, num_test).items():
        for split, problems in generate_level(level, sizes, seed).items():
            out[split].extend(problems)
    return out


def _check_levels(levels: Any) -> list[int]:
    if isinstance(levels, int) and not isinstance(levels, bool):
        levels = [levels]
    if not isinstance(levels, Sequence) or isinstance(levels, str) or not levels:
        raise ArithmeticDataError(f"levels={levels!r} must be a non-empty list of level numbers; valid: {_levels_help()}")
    for level in levels:
        get_level(level)
    if len(set(levels)) != len(levels):
        raise ArithmeticDataError(f"levels={list(levels)} repeats a level; give each level once")
    return list(levels)


def max_sample_chars(level: int) -> tuple[int, int]:
    """(question, solution) lengths in characters of every problem of ``level`` (a level has one
    layout: the lengths are exact, computed from the templates and the level alone)."""
    lv = get_level(level)
    n, d = lv.num_ops, lv.digits
    name = max(map(len, NAMES))
    obj = max(map(len, OBJECTS))
    verb = max(len(v) for vs in VERBS.values() for v in vs)
    question = name + len(" has ") + d + 1 + obj + n * (len(", then ") + verb + 1 + d)
    question += len(". How many now?")
    solution = n * (3 * d + 2) + (n - 1) + len("\n#### ") + d
    return question, solution


# --------------------------------------------------------------------------- #
# Character tokenizer
# --------------------------------------------------------------------------- #

CHAR_SPECIALS = {"eos_token": "<|endoftext|>", "mask_token": "[MASK]", "unk_token": "[UNK]"}
CHAR_ALPHABET = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")  # 94 visible + space + \n


def _default_cache_dir() -> Path:
    return Path(os.environ.get("MDLM_CACHE_DIR") or Path.home() / ".cache" / "mdlm").expanduser()


def char_tokenizer(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the character-level tokenizer (built once, keyed by its content).

    Ids: ``<|endoftext|>`` 0, ``[MASK]`` 1, ``[UNK]`` 2, then the printable ASCII characters and
    newline (99 in all); every character is one token, decoding concatenates. Loads with
    ``transformers.AutoTokenizer`` like any tokenizer folder.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    symbols = list(CHAR_SPECIALS.values()) + list(CHAR_ALPHABET)
    key = hashlib.sha256(json.dumps(["bpe-no-merges", *symbols]).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
    folder = folder / "tokenizers" / f"char-{key}"
    if (folder / "tokenizer.json").is_file():
        return folder
    # a BPE without merges and without a pre-tokenizer: every character is its own token (2x faster
    # than a word-level model behind a one-character regex split)
    backend = Tokenizer(models.BPE({s: i for i, s in enumerate(symbols)}, [], unk_token=CHAR_SPECIALS["unk_token"]))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **CHAR_SPECIALS)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tok.save_pretrained(str(tmp))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process built the same tokenizer first
            if not (folder / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- #
# Data module
# --------------------------------------------------------------------------- #


def _group(level: int) -> str:
    return f"Level {level}"


class ArithmeticDataModule(SFTDataModule):
    r"""Arithmetic word problems as GSM8K-format SFT data (see :mod:`mdlm.data.arithmetic`).

    Args:
        levels: level numbers of :data:`LEVELS` (1 = one operation on 2-digit numbers, ..., 6 = four
            operations on 4-digit numbers); each split holds ``num_*`` problems of every level.
        num_train, num_val, num_test: problems per level and split, one count for every level or a
            list with one per level (disjoint on the operand and operator tuple; test drawn first).
        seed: seeds the problems and their wording (and, as in :class:`SFTDataModule`, the training
            shuffle).
        tokenizer: ``"char"`` (the character tokenizer of :func:`char_tokenizer`, built into
            ``cache_dir``) or any tokenizer spec :class:`SFTDataModule` accepts (a pretrained one
            without ``[MASK]`` needs ``add_mask_token: true`` when training from scratch).
        max_length: every training row is padded (with supervised EOS) to this many tokens; None =
            the longest sample of the chosen levels (:func:`max_sample_chars`; a character count,
            which no byte-level tokenizer exceeds on ASCII text). With learned absolute positions
            set it to at least the longest prompt plus the generation budget, so every position a
            generation reaches has been trained (``configs/sft_arithmetic.yaml`` does).
        pad_to, supervise_padding, template, num_shots, batch_size, eval_batch_size, num_workers,
            mask_token_id, add_mask_token: as in :class:`SFTDataModule`.

    Records have ``dataset="gsm8k"`` (answers checked by :func:`mdlm.answers.is_correct` as GSM8K)
    and group ``"Level <n>"``, so ``mdlm test`` logs ``test/answer_accuracy/Level <n>``.
    """

    def __init__(
        self,
        levels: list[int] = [1, 2, 3],  # noqa: B006 - shown by --print_config; never mutated
        num_train: int | list[int] = 5_000,
        num_val: int | list[int] = 64,
        num_test: int | list[int] = 500,
        seed: int = 0,
        tokenizer: str = CHAR_TOKENIZER,
        cache_dir: str | None = None,
        mask_token_id: int | None = None,
        add_mask_token: bool = False,
        template: Literal["auto", "chat", "plain"] = "auto",
        max_length: int | None = None,
        pad_to: Literal["max_length", "batch"] = "max_length",
        supervise_padding: bool = True,
        num_shots: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        self.levels = _check_levels(levels)
        self.level_sizes = level_sizes(self.levels, num_train, num_val, num_test)
        self.sizes = {split: sum(s[split] for s in self.level_sizes.values()) for split in ("train", "val", "test")}
        if self.sizes["train"] < 1:
            raise ArithmeticDataError(f"num_train={num_train!r} gives no training problems: at least one level needs >= 1")
        for level, sizes in self.level_sizes.items():  # fail at construction, not at setup, when a level is too small
            _check_capacity(level, sizes)
        self.problem_seed = int(seed)
        if max_length is None:
            max_length = max(sum(max_sample_chars(level)) for level in self.levels) + len("Question: \nAnswer: ") + 2
        spec = str(char_tokenizer(cache_dir)) if tokenizer == CHAR_TOKENIZER else tokenizer
        super().__init__(
            spec,
            dataset="gsm8k",
            train_path=None,
            mask_token_id=mask_token_id,
            add_mask_token=add_mask_token,
            template=template,
            max_length=max_length,
            pad_to=pad_to,
            supervise_padding=supervise_padding,
            num_shots=num_shots,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        self._problems: dict[str, list[Problem]] | None = None

    # the splits come from the generator, not from files: SFTDataModule's source hooks
    def _make_sources(self, paths, hf_name, hf_config, hf_splits) -> dict[str, tuple[str, Any]]:
        levels = ",".join(map(str, self.levels))
        sources = {}
        for split in ("train", "val", "test"):
            if self.sizes[split] > 0:
                sources[split] = ("arithmetic", f"arithmetic levels {levels} seed {self.problem_seed} [{split}]")
        return sources

    def _describe(self, split: str) -> str:
        return self.sources[split][1]

    def problems(self, split: str) -> list[Problem]:
        """The :class:`Problem` s of ``split`` (all splits generated once, memoized)."""
        if self._problems is None:
            self._problems = {s: [] for s in ("train", "val", "test")}
            for level, sizes in self.level_sizes.items():
                for name, problems in generate_level(level, sizes, self.problem_seed).items():
                    self._problems[name].extend(problems)
        return self._problems[split]

    def _rows(self, split: str) -> Iterator[tuple[int, str, dict]]:
        for i, p in enumerate(self.problems(split)):
            yield i, f"arithmetic {split} problem {i} (level {p.level})", p.record()

    def records(self, split: str) -> list[SFTRecord]:
        """The GSM8K adapter's records of the generated problems, grouped by level."""
        if split in self._records:
            return self._records[split]
        if split not in self.sources:
            raise ArithmeticDataError(f"no {split} data: num_{split}=0")
        stats = self.stats.setdefault(split, SplitStats(source=self._describe(split)))
        adapted = read_records("gsm8k", self._rows(split), "error", "level", stats)
        levels = [p.level for p in self.problems(split)]
        records = [dataclasses.replace(r, group=_group(level)) for r, level in zip(adapted, levels)]
        self._records[split] = records
        return records

    @property
    def answer_groups(self) -> list[str]:
        """``Level <n>`` of every level with test problems (without building the prompts)."""
        return sorted(_group(level) for level, sizes in self.level_sizes.items() if sizes["test"] > 0)


def write_jsonl(
    out_dir: str | os.PathLike,
    levels: Sequence[int],
    num_train: int | Sequence[int],
    num_val: int | Sequence[int],
    num_test: int | Sequence[int],
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``train.jsonl``/``val.jsonl``/``test.jsonl`` (GSM8K format plus level and tuple)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, problems in generate_splits(levels, num_train, num_val, num_test, seed).items():
        if not problems:
            continue
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(p.record()) + "\n" for p in problems), encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the arithmetic task's splits as GSM8K-format JSONL.")
    parser.add_argument("out_dir")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3], help=_levels_help())
    parser.add_argument("--num-train", type=int, nargs="+", default=[5_000], help="per level: one count, or one per level")
    parser.add_argument("--num-val", type=int, nargs="+", default=[64])
    parser.add_argument("--num-test", type=int, nargs="+", default=[500])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = [c[0] if len(c) == 1 else c for c in (args.num_train, args.num_val, args.num_test)]
    for split, path in write_jsonl(args.out_dir, args.levels, *counts, args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
