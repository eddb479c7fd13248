"""The chat adapter: ``messages = [{role, content}, ...]``; the response is the last assistant turn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mdlm.data.sft.records import SFTDataError, SFTRecord, _one_line

__all__ = ["adapt_chat"]


def adapt_chat(rec: Mapping[str, Any], index: int, where: str, group_by: str) -> tuple[SFTRecord, int]:
    """The prompt turns before the last assistant turn, that turn as the response, and the number of
    turns after it (ignored)."""
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SFTDataError(f"{where}: chat record needs a non-empty 'messages' list of {{role, content}} turns")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise SFTDataError(f"{where}: messages[{i}] is not a {{'role': str, 'content': str}} turn: {_one_line(m, 80)}")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise SFTDataError(f"{where}: chat record has no assistant turn (roles: {[m['role'] for m in messages]})")
    if last == 0:
        raise SFTDataError(f"{where}: chat record has no turn before its last assistant turn (nothing to prompt with)")
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:last])
    reference = rec.get("answer", rec.get("reference"))
    reference = None if reference is None else str(reference)
    group = str(rec.get("group", "all"))
    trailing = len(messages) - 1 - last
    return SFTRecord(prompt, messages[last]["content"], reference, group, "chat", index, where), trailing
