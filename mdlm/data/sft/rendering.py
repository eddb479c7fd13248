"""Templates and tokenisation of SFT records (the rules are in :mod:`mdlm.data.sft`'s docstring)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mdlm.data.sft.records import SFTDataError, SFTRecord, SplitStats

__all__ = ["Tokenized", "render_prompt", "tokenize_records"]


def _plain_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{m['content']}\n\n")
        elif m["role"] == "assistant":
            parts.append(f"Answer: {m['content']}\n\n")
        else:
            parts.append(f"Question: {m['content']}\n")
    return "".join(parts) + "Answer:"


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]], template: str) -> str:
    """The prompt text of ``messages`` (``template`` = ``chat`` or ``plain``, already resolved)."""
    if template == "chat":
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return _plain_prompt(messages)


def _render_response(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], prompt_text: str, response: str, template: str
) -> tuple[str, bool]:
    """``(response_text, template_fallback)``: the text that follows ``prompt_text`` in training."""
    if template == "plain":
        return " " + response, False
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    if full.startswith(prompt_text):
        return full[len(prompt_text) :], False
    return response, True


def _encode(tokenizer: Any, texts: list[str], chunk: int = 1024) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        out.extend(tokenizer(texts[i : i + chunk], add_special_tokens=False)["input_ids"])
    return out


@dataclass
class Tokenized:
    """Token ids of one record: ``prompt_ids`` and ``response_ids`` (EOS included; None for prompts only)."""

    record: SFTRecord
    prompt_text: str
    prompt_ids: list[int]
    response_ids: list[int] | None = None


def tokenize_records(
    tokenizer: Any,
    records: Sequence[SFTRecord],
    template: str,
    eos_token_id: int,
    with_response: bool = True,
    prefix: Sequence[Mapping[str, str]] = (),
    stats: SplitStats | None = None,
) -> list[Tokenized]:
    """Template and tokenise records (see the module docstring for the rules).

    ``prefix``: turns put before every record's prompt turns (the few-shot exemplars).
    """
    stats = SplitStats() if stats is None else stats
    bos = getattr(tokenizer, "bos_token_id", None)
    bos_ids = [bos] if template == "plain" and bos is not None and bos != eos_token_id else []
    messages = [[*prefix, *r.messages] for r in records]
    prompt_texts = [render_prompt(tokenizer, m, template) for m in messages]
    prompt_ids = [bos_ids + ids for ids in _encode(tokenizer, prompt_texts)]
    out = [Tokenized(r, t, p) for r, t, p in zip(records, prompt_texts, prompt_ids)]
    if not with_response:
        return out
    for r in records:
        if r.response is None:
            raise SFTDataError(f"{r.where}: record has no response to train on (e.g. a MATH record without 'solution')")
    response_texts = []
    for r, m, t in zip(records, messages, prompt_texts):
        text, fallback = _render_response(tokenizer, m, t, r.response, template)
        stats.template_fallback += fallback
        response_texts.append(text)
    joint = [bos_ids + ids for ids in _encode(tokenizer, [t + r for t, r in zip(prompt_texts, response_texts)])]
    alone_needed = [i for i, (j, p) in enumerate(zip(joint, prompt_ids)) if j[: len(p)] != p]
    alone = dict(zip(alone_needed, _encode(tokenizer, [response_texts[i] for i in alone_needed])))
    stats.retokenized += len(alone_needed)
    for i, item in enumerate(out):
        ids = alone[i] if i in alone else joint[i][len(item.prompt_ids) :]
        if not ids or ids[-1] != eos_token_id:
            ids = ids + [eos_token_id]
        item.response_ids = ids
    return out
