"""SFT records: reading raw records (JSONL / JSON arrays, Hugging Face rows), the record type, split stats.

The record adapters (one per dataset) live in :mod:`mdlm.data.sft.gsm8k`, :mod:`~mdlm.data.sft.math_dataset`
and :mod:`~mdlm.data.sft.chat`; :func:`mdlm.data.sft.adapters.read_records` applies them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DATASETS",
    "SFTDataError",
    "SFTRecord",
    "SplitStats",
    "iter_raw_records",
    "load_hf_rows",
]

DatasetName = Literal["gsm8k", "math", "math500", "chat"]
DATASETS: tuple[str, ...] = ("gsm8k", "math", "math500", "chat")
TEMPLATES: tuple[str, ...] = ("auto", "chat", "plain")
PAD_TO: tuple[str, ...] = ("max_length", "batch")
ON_OVERFLOW: tuple[str, ...] = ("error", "drop", "truncate_response")
ON_MISSING_ANSWER: tuple[str, ...] = ("error", "drop")
GROUP_BY: tuple[str, ...] = ("level", "subject")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_HF_SPLITS = {"train": "train", "test": "test"}


class SFTDataError(ValueError):
    """Bad SFT data or configuration (a one-line message naming the file/record and the fix)."""


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SFTDataError(f"{name}={value!r} is not one of {', '.join(choices)}")


def iter_raw_records(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[int, str, dict]]:
    """``(index, where, record)`` of a JSONL file (or a JSON array), ``where = "file:line"``.

    Blank lines are skipped (they do not count as records); a line that is not a JSON object is
    an :class:`SFTDataError` naming ``file:line``.
    """
    path = Path(path)
    index = 0
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 12).lstrip()
        f.seek(0)
        if head.startswith("["):  # a JSON array of records
            try:
                records = json.load(f)
            except json.JSONDecodeError as err:
                raise SFTDataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from err
            for i, rec in enumerate(records):
                if limit is not None and index >= limit:
                    return
                where = f"{path} record {i}"
                if not isinstance(rec, dict):
                    raise SFTDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                yield index, where, rec
                index += 1
            return
        for lineno, line in enumerate(f, 1):
            if limit is not None and index >= limit:
                return
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise SFTDataError(
                    f"{where}: malformed JSON line ({err.msg}, column {err.colno}): {_one_line(line, 80)!r}"
                ) from err
            if not isinstance(rec, dict):
                raise SFTDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield index, where, rec
            index += 1


def load_hf_rows(
    name: str, config: str | Sequence[str] | None, split: str, limit: int | None = None
) -> Iterator[tuple[int, str, dict]]:
    """``(index, where, row)`` of a Hugging Face dataset split (``datasets`` imported lazily).

    ``config`` may be a list (e.g. the seven subject configs of ``EleutherAI/hendrycks_math``);
    their rows are concatenated in the given order.
    """
    try:
        import datasets
    except ImportError as err:
        raise SFTDataError(
            f"loading the Hugging Face dataset {name!r} needs the `datasets` package "
            "(pip install 'mdlm[hf]'); or pass local JSONL files (train_path/val_path/test_path)"
        ) from err
    configs: list[str | None] = [config] if config is None or isinstance(config, str) else list(config)
    index = 0
    for cfg in configs:
        try:
            ds = datasets.load_dataset(name, cfg, split=split)
        except Exception as err:  # noqa: BLE001 - offline, unknown name/config/split: one clear line
            label = f" (config {cfg!r})" if cfg else ""
            raise SFTDataError(
                f"could not load Hugging Face dataset {name!r}{label} split {split!r}: {type(err).__name__}: "
                f"{_one_line(err, 160)}; the hub may be unreachable (offline?): pass local JSONL files instead"
            ) from err
        label = f"{name}{'/' + cfg if cfg else ''} [{split}]"
        for row_number, row in enumerate(ds):
            if limit is not None and index >= limit:
                return
            yield index, f"{label} row {row_number}", dict(row)
            index += 1


@dataclass(frozen=True)
class SFTRecord:
    """One prompt/response pair.

    ``messages`` are the prompt turns (``{"role", "content"}``); ``response`` is None when the
    source has none (an evaluation-only record); ``reference`` is the reference answer (None:
    the record has none); ``dataset`` is the answer checker name (``gsm8k``/``math``/``chat``).
    """

    messages: tuple[dict[str, str], ...]
    response: str | None
    reference: str | None
    group: str
    dataset: str
    index: int
    where: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def _text_field(rec: Mapping[str, Any], key: str, where: str, required: bool = True) -> str | None:
    value = rec.get(key)
    if value is None:
        if required:
            raise SFTDataError(f"{where}: record has no {key!r} field (found: {', '.join(map(str, rec)) or 'nothing'})")
        return None
    if not isinstance(value, str):
        raise SFTDataError(f"{where}: field {key!r} holds {type(value).__name__}, not text")
    return value


def _level_group(level: Any) -> str:
    if isinstance(level, int):
        return f"Level {level}"
    return str(level) if level is not None else "unknown"


@dataclass
class SplitStats:
    """What happened to one split (also logged): every count is of records/samples of that split."""

    source: str = ""
    records: int = 0  #: records read (after ``limit_*``)
    missing_answer: list[str] = field(default_factory=list)  #: where of records without a reference (dropped)
    trailing_turns: int = 0  #: chat records with turns after the last assistant turn (ignored)
    overflow: int = 0  #: samples longer than max_length
    dropped_overflow: int = 0
    truncated: int = 0
    template_fallback: int = 0  #: chat template whose full conversation does not start with the prompt text
    retokenized: int = 0  #: responses tokenised alone (the joint ids did not start with the prompt ids)
    samples: int = 0  #: samples in the split after the policies
    max_tokens: int = 0  #: longest sample (training format) or prompt (generation), in tokens

    @property
    def num_missing_answers(self) -> int:
        return len(self.missing_answer)

