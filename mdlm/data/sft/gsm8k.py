"""The GSM8K adapter: ``question`` / ``answer`` (``... #### 72``); reference = the number after ``####``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mdlm.answers import gsm8k_reference_answer
from mdlm.data.sft.records import SFTRecord, _text_field

__all__ = ["adapt_gsm8k"]


def adapt_gsm8k(rec: Mapping[str, Any], index: int, where: str, group_by: str) -> tuple[SFTRecord, int]:
    """A GSM8K record (group ``"all"``) and 0 ignored turns."""
    question = _text_field(rec, "question", where)
    answer = _text_field(rec, "answer", where)
    try:
        reference = gsm8k_reference_answer(answer)
    except ValueError:
        reference = None
    return SFTRecord(({"role": "user", "content": question},), answer, reference, "all", "gsm8k", index, where), 0

