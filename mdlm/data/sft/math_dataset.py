r"""The MATH / MATH-500 adapter: ``problem`` / ``solution`` (+ ``answer``, ``level``, ``type``/``subject``).

Reference = the ``answer`` field if any, else the last ``\boxed{}`` of the solution; the group is the
level (``"Level 3"``) or, with ``group_by="subject"``, the subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mdlm.answers import math_reference_answer
from mdlm.data.sft.records import SFTDataError, SFTRecord, _level_group, _text_field

__all__ = ["adapt_math"]


def adapt_math(rec: Mapping[str, Any], index: int, where: str, group_by: str) -> tuple[SFTRecord, int]:
    """A MATH record and 0 ignored turns."""
    problem = _text_field(rec, "problem", where)
    solution = _text_field(rec, "solution", where, required=False)
    if solution is None and rec.get("answer") is None:
        raise SFTDataError(f"{where}: MATH record has neither 'solution' nor 'answer' (found: {', '.join(map(str, rec))})")
    try:
        reference = math_reference_answer(rec)
    except ValueError:
        reference = None
    subject = rec.get("type", rec.get("subject"))
    meta = {"level": rec.get("level"), "subject": subject, "unique_id": rec.get("unique_id")}
    group = _level_group(rec.get("level")) if group_by == "level" else str(subject)
    messages = ({"role": "user", "content": problem},)
    return SFTRecord(messages, solution, reference, group, "math", index, where, meta), 0

