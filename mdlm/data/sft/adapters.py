"""The record adapters by dataset name, and :func:`read_records` which applies them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from mdlm.data.sft.chat import adapt_chat
from mdlm.data.sft.gsm8k import adapt_gsm8k
from mdlm.data.sft.math_dataset import adapt_math
from mdlm.data.sft.records import (
    DATASETS,
    GROUP_BY,
    ON_MISSING_ANSWER,
    SFTDataError,
    SFTRecord,
    SplitStats,
    _check_choice,
)

__all__ = ["ADAPTERS", "read_records"]

#: dataset name -> ``adapt(raw, index, where, group_by) -> (SFTRecord, ignored trailing turns)``
ADAPTERS: dict[str, Callable[[Mapping[str, Any], int, str, str], tuple[SFTRecord, int]]] = {
    "gsm8k": adapt_gsm8k,
    "math": adapt_math,
    "math500": adapt_math,
    "chat": adapt_chat,
}


def read_records(
    dataset: str,
    rows: Iterator[tuple[int, str, dict]],
    on_missing_answer: str = "error",
    group_by: str = "level",
    stats: SplitStats | None = None,
) -> list[SFTRecord]:
    """Adapt raw rows (:func:`iter_raw_records` / :func:`load_hf_rows`) to :class:`SFTRecord` s.

    GSM8K/MATH records without a reference answer are an error naming them
    (``on_missing_answer="error"``) or are dropped and listed in ``stats.missing_answer``
    (``"drop"``). Chat records may lack a reference.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("on_missing_answer", on_missing_answer, ON_MISSING_ANSWER)
    _check_choice("group_by", group_by, GROUP_BY)
    stats = SplitStats() if stats is None else stats
    adapt = ADAPTERS[dataset]
    records: list[SFTRecord] = []
    for index, where, raw in rows:
        stats.records += 1
        rec, trailing = adapt(raw, index, where, group_by)
        stats.trailing_turns += trailing > 0
        if rec.reference is None and dataset != "chat":
            stats.missing_answer.append(where)
            continue
        records.append(rec)
    if stats.missing_answer and on_missing_answer == "error":
        n = len(stats.missing_answer)
        shown = ", ".join(stats.missing_answer[:5]) + (" ..." if n > 5 else "")
        raise SFTDataError(
            f"{n} {dataset} record(s) have no reference answer ({shown}); set on_missing_answer='drop' to "
            "drop them (they are counted and logged)"
        )
    return records
