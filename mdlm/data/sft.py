r"""Supervised fine-tuning (SFT) data for the masked-diffusion objective, LLaDA-style.

A sample is a *prompt* and a *response*. The model sees ``prompt + response + EOS (+ EOS padding)``;
only the response, its EOS and (optionally) the EOS padding are *maskable*, so the forward process
never masks a prompt token and the loss is computed on the response only (LLaDA, Nie et al. 2025,
§2.3 / App. B.1).

Sources (``dataset=``), each a small adapter from a raw record to (prompt turns, response,
reference answer, group):

* ``gsm8k``: ``question`` / ``answer`` (``... #### 72``); reference = the number after ``####``;
  group ``"all"``. Local JSONL or Hugging Face ``openai/gsm8k`` (config ``main``).
* ``math``: ``problem`` / ``solution`` / ``level`` / ``type`` (MATH, ``EleutherAI/hendrycks_math``);
  reference = the ``answer`` field if any, else the last ``\boxed{}`` of the solution.
* ``math500``: ``problem`` / ``solution`` / ``answer`` / ``subject`` / ``level`` (MATH-500,
  ``HuggingFaceH4/MATH-500``); reference = ``answer``. For both MATH kinds the group is the level
  (``"Level 3"``; ``group_by="subject"`` uses ``type``/``subject``) and ``dataset`` is ``"math"``.
* ``chat``: ``messages = [{role, content}, ...]`` (e.g. allenai/tulu-3-sft-personas-math-filtered):
  prompt = every turn before the last assistant turn, response = the last assistant turn (turns
  after it are ignored and counted). An optional ``answer``/``reference`` field is the reference.

Records without a reference answer (2 MATH train records end in an empty ``\boxed{}``) follow
``on_missing_answer``: ``error`` (default; names them) or ``drop`` (counted, logged and listed in
``stats[split].missing_answer``). A malformed JSONL line is an error naming ``file:line``.

Templates (``template=``): ``chat`` renders the prompt turns with the tokenizer's chat template
(``add_generation_prompt=True``) and the response as the rest of the templated conversation
(``apply_chat_template(prompt + [assistant])`` minus the prompt text, so the template's
end-of-turn markup is part of the response); ``plain`` renders ``Question: {q}\nAnswer:`` and the
response as ``" {response}"`` (a system turn is a first paragraph; few-shot exemplars are
``Question: …\nAnswer: …`` paragraphs), with the tokenizer's BOS prepended when it has one that
differs from EOS; ``auto`` (default) = ``chat`` when the tokenizer has a chat template.

Tokenisation: prompt ids = ``tokenize(prompt_text)``, exactly the ids a generation prompt gets;
response ids = ``tokenize(prompt_text + response_text)`` after those prompt ids (the response is
tokenised in context, which matters for SentencePiece-style tokenizers; if the prompt ids are not a
prefix of the joint ids the response is tokenised on its own), then one EOS is appended unless the
template already ends the response with EOS.

Training-format batches (train and val loaders; :class:`SFTCollator`)::

    input_ids       LongTensor [B, L]   prompt + response + EOS, padded with EOS
    maskable        BoolTensor [B, L]   True exactly on response tokens, the final EOS and supervised padding
    attention_mask  BoolTensor [B, L]   True on prompt, response, EOS and supervised padding
    prompt_length   LongTensor [B]      number of prompt tokens (positions [0, prompt_length))
    index           LongTensor [B]      global sample index: 0-based record number in its split's source

Padding uses the EOS id (LLaDA pads responses with EOS and trains on them, so the model learns to
end an answer and fill the rest with EOS). Since padding and the real EOS share an id, the
explicit ``maskable``/``attention_mask`` tensors are the only way to tell them apart. With
``supervise_padding=True`` (LLaDA) padding is maskable and attended; with False it is neither.
``pad_to="max_length"`` pads every row to ``max_length``; ``pad_to="batch"`` to the longest row of
the batch — then the number of supervised EOS tokens of a sample (and so its
``per_sequence`` normalisation ``|maskable_b|``) depends on which samples share its batch.

Samples longer than ``max_length`` follow ``on_overflow``: ``error`` (default), ``drop`` or
``truncate_response`` (the sequence is cut at ``max_length``, so it loses its final EOS: the
answer does not end there). A prompt of ``max_length`` tokens or more is always an error naming
the record. Counts are logged and kept in :attr:`SFTDataModule.stats`.

Generation batches (test and predict loaders; :class:`PromptCollator`)::

    prompt_input_ids       LongTensor [B, P]  LEFT-padded with EOS (the optional few-shot prefix included)
    prompt_attention_mask  BoolTensor [B, P]  True on real prompt tokens
    index                  LongTensor [B]     record number in the test source
    reference              list[str | None]   reference answers (GSM8K number, MATH answer string)
    group                  list[str]          e.g. "Level 3" (MATH), "all" (GSM8K)
    prompt_text            list[str]          the templated prompt text (without a plain-template BOS)
    dataset                list[str]          "gsm8k" | "math" | "chat" (the answer checker of mdlm.answers)

``num_shots > 0`` prefixes every evaluation prompt with the first ``num_shots`` usable records of
the train split (deterministic), as earlier user/assistant turns of the conversation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from mdlm.answers import gsm8k_reference_answer, math_reference_answer
from mdlm.data.shuffle import EpochShuffleSampler
from mdlm.data.tokenizer import TokenizerError, load_tokenizer

__all__ = [
    "DATASETS",
    "GSM8KDataModule",
    "MATHDataModule",
    "PromptCollator",
    "PromptDataset",
    "SFTCollator",
    "SFTDataError",
    "SFTDataModule",
    "SFTDataset",
    "SFTRecord",
    "SplitStats",
    "Tokenized",
    "iter_raw_records",
    "load_hf_rows",
    "read_records",
    "render_prompt",
    "tokenize_records",
]

log = logging.getLogger(__name__)

DatasetName = Literal["gsm8k", "math", "math500", "chat"]
DATASETS: tuple[str, ...] = ("gsm8k", "math", "math500", "chat")
TEMPLATES: tuple[str, ...] = ("auto", "chat", "plain")
PAD_TO: tuple[str, ...] = ("max_length", "batch")
ON_OVERFLOW: tuple[str, ...] = ("error", "drop", "truncate_response")
ON_MISSING_ANSWER: tuple[str, ...] = ("error", "drop")
GROUP_BY: tuple[str, ...] = ("level", "subject")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_HF_SPLITS = {"train": "train", "test": "test"}
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class SFTDataError(ValueError):
    """Bad SFT data or configuration (a one-line message naming the file/record and the fix)."""


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SFTDataError(f"{name}={value!r} is not one of {', '.join(choices)}")


# --------------------------------------------------------------------------- #
# Reading raw records
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Records: adapters from raw records to (prompt turns, response, reference, group)
# --------------------------------------------------------------------------- #


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


def _adapt_gsm8k(rec: Mapping[str, Any], index: int, where: str, group_by: str) -> tuple[SFTRecord, int]:
    question = _text_field(rec, "question", where)
    answer = _text_field(rec, "answer", where)
    try:
        reference = gsm8k_reference_answer(answer)
    except ValueError:
        reference = None
    return SFTRecord(({"role": "user", "content": question},), answer, reference, "all", "gsm8k", index, where), 0


def _adapt_math(rec: Mapping[str, Any], index: int, where: str, group_by: str) -> tuple[SFTRecord, int]:
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


def _adapt_chat(rec: Mapping[str, Any], index: int, where: str, group_by: str) -> tuple[SFTRecord, int]:
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


_ADAPTERS = {"gsm8k": _adapt_gsm8k, "math": _adapt_math, "math500": _adapt_math, "chat": _adapt_chat}


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
    adapt = _ADAPTERS[dataset]
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


# --------------------------------------------------------------------------- #
# Templates and tokenisation
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Datasets and collators
# --------------------------------------------------------------------------- #


class SFTDataset(Dataset):
    """Training-format samples: ``{"input_ids": LongTensor[n], "prompt_length": int, "index": int}``."""

    def __init__(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], indices: Sequence[int]) -> None:
        self.sequences = [torch.tensor(s, dtype=torch.long) for s in sequences]
        self.prompt_lengths = list(prompt_lengths)
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.sequences[i], "prompt_length": self.prompt_lengths[i], "index": self.indices[i]}


class SFTCollator:
    """Pad training samples with ``pad_token_id`` (EOS) into the training batch format.

    ``pad_to="max_length"``: every row has ``max_length`` tokens; ``"batch"``: the longest row of
    the batch. ``supervise_padding``: padding is maskable and attended (LLaDA), else neither. With
    ``"batch"`` padding and ``supervise_padding=True`` the number of supervised EOS tokens of a
    sample depends on the other samples of its batch.
    """

    def __init__(
        self, pad_token_id: int, max_length: int, pad_to: str = "max_length", supervise_padding: bool = True
    ) -> None:
        _check_choice("pad_to", pad_to, PAD_TO)
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.pad_to = pad_to
        self.supervise_padding = bool(supervise_padding)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(it["input_ids"]) for it in items]
        if max(lengths) > self.max_length:
            raise SFTDataError(f"a sample of {max(lengths)} tokens exceeds max_length={self.max_length}")
        width = self.max_length if self.pad_to == "max_length" else max(lengths)
        B = len(items)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.long)
        real = torch.zeros((B, width), dtype=torch.bool)
        prompt = torch.zeros((B, width), dtype=torch.bool)
        for b, it in enumerate(items):
            n = lengths[b]
            input_ids[b, :n] = it["input_ids"]
            real[b, :n] = True
            prompt[b, : int(it["prompt_length"])] = True
        pad = ~real
        maskable = (real & ~prompt) | (pad if self.supervise_padding else torch.zeros_like(pad))
        attention_mask = real | (pad if self.supervise_padding else torch.zeros_like(pad))
        return {
            "input_ids": input_ids,
            "maskable": maskable,
            "attention_mask": attention_mask,
            "prompt_length": torch.tensor([int(it["prompt_length"]) for it in items], dtype=torch.long),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        }


class PromptDataset(Dataset):
    """Generation prompts with their reference answers (see the module docstring)."""

    def __init__(self, items: Sequence[Tokenized]) -> None:
        self.items = [
            {
                "prompt_input_ids": torch.tensor(t.prompt_ids, dtype=torch.long),
                "reference": t.record.reference,
                "group": t.record.group,
                "prompt_text": t.prompt_text,
                "dataset": t.record.dataset,
                "index": t.record.index,
            }
            for t in items
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class PromptCollator:
    """LEFT-pad prompts with ``pad_token_id``; keep the string fields as python lists."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        width = max(len(it["prompt_input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.bool)
        for b, it in enumerate(items):
            n = len(it["prompt_input_ids"])
            ids[b, width - n :] = it["prompt_input_ids"]
            mask[b, width - n :] = True
        return {
            "prompt_input_ids": ids,
            "prompt_attention_mask": mask,
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
            "reference": [it["reference"] for it in items],
            "group": [it["group"] for it in items],
            "prompt_text": [it["prompt_text"] for it in items],
            "dataset": [it["dataset"] for it in items],
        }


# --------------------------------------------------------------------------- #
# The data module
# --------------------------------------------------------------------------- #


def _resolve_tokenizer(spec: str, mask_token_id: int | None, add_mask_token: bool) -> tuple[Any, int]:
    """Load ``spec`` with :func:`load_tokenizer` (no ``[PAD]``: padding is EOS) and settle the mask id."""
    if mask_token_id is not None and add_mask_token:
        raise TokenizerError(
            f"give either mask_token_id={mask_token_id} (a pretrained model's mask id) or add_mask_token=True "
            "(add [MASK] when training from scratch), not both"
        )
    if add_mask_token:
        tok = load_tokenizer(spec, add_mask_token=True, add_pad_token=False)
        return tok, int(tok.mask_token_id)
    try:
        tok = load_tokenizer(spec, add_mask_token=False, add_pad_token=False)
    except TokenizerError as err:
        if "no mask token" not in str(err):
            raise
        if mask_token_id is None:
            raise TokenizerError(
                f"tokenizer {str(spec)!r} has no mask token: for a pretrained model pass its mask id explicitly, "
                "mask_token_id=<id> (e.g. 126336 for LLaDA), or set add_mask_token=True to add '[MASK]' "
                "when training from scratch (the vocabulary grows by one)"
            ) from err
        # the tokenizer loads (only its mask token is missing): load it as is, without adding tokens
        from transformers import AutoTokenizer

        path = Path(str(spec)).expanduser()
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else str(spec))
    if mask_token_id is None:
        return tok, int(tok.mask_token_id)
    mask_token_id = int(mask_token_id)
    if not 0 <= mask_token_id < len(tok):
        raise TokenizerError(f"mask_token_id={mask_token_id} is outside the tokenizer's vocabulary [0, {len(tok)})")
    if tok.mask_token_id is not None and tok.mask_token_id != mask_token_id:
        raise TokenizerError(
            f"mask_token_id={mask_token_id} conflicts with the tokenizer's own mask token "
            f"{tok.mask_token!r} (id {tok.mask_token_id}); drop mask_token_id to use the tokenizer's"
        )
    if tok.mask_token_id is None:
        tok.mask_token = tok.convert_ids_to_tokens(mask_token_id)
    return tok, mask_token_id


class SFTDataModule(LightningDataModule):
    r"""SFT data (GSM8K, MATH, MATH-500 or chat messages) for masked diffusion; see :mod:`mdlm.data.sft`.

    Args:
        tokenizer: a local tokenizer folder or a Hugging Face Hub name (:func:`load_tokenizer`).
        dataset: ``gsm8k`` | ``math`` | ``math500`` | ``chat`` (the record adapter of train and val).
        test_dataset: the adapter of the test split when it differs (default: ``dataset``); the paper
            fine-tunes on chat records (``allenai/tulu-3-sft-personas-math-filtered``) and tests on
            GSM8K (``gsm8k``) or MATH-500 (``math500``).
        train_path, val_path, test_path: local JSONL files (or JSON arrays), per split.
        hf_name, hf_config, hf_splits: a Hugging Face dataset (``openai/gsm8k`` + ``main``,
            ``HuggingFaceH4/MATH-500``, ``EleutherAI/hendrycks_math`` + a subject config or a list of
            them, ...), used for splits without a local path; ``hf_splits`` maps ``train``/``val``/
            ``test`` to the dataset's split names (default ``{"train": "train", "test": "test"}``).
            ``openai/gsm8k`` without ``hf_config`` uses its ``main`` config.
            ``datasets`` is imported lazily and only for the splits a stage needs.
        mask_token_id: the [MASK] id of a pretrained model whose tokenizer has no mask token
            (e.g. 126336 for LLaDA). It must lie in the tokenizer's vocabulary and never occur in
            the data (checked).
        add_mask_token: add ``[MASK]`` to a tokenizer without one (training from scratch).
        template: ``auto`` | ``chat`` | ``plain`` (module docstring).
        max_length: longest training sample (prompt + response + EOS), in tokens.
        pad_to: ``max_length`` | ``batch``; supervise_padding: EOS padding is maskable and attended
            (with ``batch`` padding the number of supervised EOS tokens of a sample depends on the
            other samples of its batch).
        on_overflow: ``error`` | ``drop`` | ``truncate_response`` for samples longer than max_length.
        on_missing_answer: ``error`` | ``drop`` for GSM8K/MATH records without a reference answer.
        group_by: MATH group, ``level`` (``"Level 3"``) or ``subject``.
        num_shots: few-shot exemplars (the first usable train records) before every evaluation prompt.
        val_size: when no val source is given, hold out this many train records (a seeded random
            subset) as the val split.
        limit_train, limit_eval: read only the first N records of train / of val and test.
        batch_size, eval_batch_size (default batch_size), num_workers, seed (train shuffle, val_size).

    After ``__init__`` (linked into the model by the CLI): ``tokenizer``, ``vocab_size``
    (``len(tokenizer)``), ``mask_token_id``, ``pad_token_id`` (= ``eos_token_id``: padding is EOS),
    ``eos_token_id``. After ``setup``: ``stats[split]`` (:class:`SplitStats`), ``train_set``,
    ``val_set`` (training format), ``test_set`` (generation prompts).
    """

    val_dataloader_names = ["val"]
    test_dataloader_names = ["test"]

    def __init__(
        self,
        tokenizer: str,
        dataset: DatasetName = "gsm8k",
        test_dataset: DatasetName | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        hf_name: str | None = None,
        hf_config: str | list[str] | None = None,
        hf_splits: dict[str, str] | None = None,
        mask_token_id: int | None = None,
        add_mask_token: bool = False,
        template: Literal["auto", "chat", "plain"] = "auto",
        max_length: int = 1024,
        pad_to: Literal["max_length", "batch"] = "max_length",
        supervise_padding: bool = True,
        on_overflow: Literal["error", "drop", "truncate_response"] = "error",
        on_missing_answer: Literal["error", "drop"] = "error",
        group_by: Literal["level", "subject"] = "level",
        num_shots: int = 0,
        val_size: int = 0,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["mask_token_id"])  # the model logs the resolved id
        _check_choice("dataset", dataset, DATASETS)
        if test_dataset is not None:
            _check_choice("test_dataset", test_dataset, DATASETS)
        _check_choice("template", template, TEMPLATES)
        _check_choice("pad_to", pad_to, PAD_TO)
        _check_choice("on_overflow", on_overflow, ON_OVERFLOW)
        _check_choice("on_missing_answer", on_missing_answer, ON_MISSING_ANSWER)
        _check_choice("group_by", group_by, GROUP_BY)
        if max_length < 2:
            raise SFTDataError(f"max_length={max_length} must be >= 2 (a prompt token and an EOS)")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise SFTDataError(f"batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1")
        for name, value in (("num_shots", num_shots), ("val_size", val_size), ("num_workers", num_workers)):
            if value < 0:
                raise SFTDataError(f"{name}={value} must be >= 0")
        for name, value in (("limit_train", limit_train), ("limit_eval", limit_eval)):
            if value is not None and value < 1:
                raise SFTDataError(f"{name}={value} must be >= 1 (or None for all records)")
        self.dataset_name = dataset
        self.test_dataset_name = test_dataset or dataset
        self.max_length = int(max_length)
        self.pad_to = pad_to
        self.supervise_padding = bool(supervise_padding)
        self.on_overflow = on_overflow
        self.on_missing_answer = on_missing_answer
        self.group_by = group_by
        self.num_shots = int(num_shots)
        self.val_size = int(val_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.limits = {"train": limit_train, "val": limit_eval, "test": limit_eval}

        paths = {"train": train_path, "val": val_path, "test": test_path}
        if hf_name in ("openai/gsm8k", "gsm8k") and hf_config is None:
            hf_config = "main"
        self.sources = self._make_sources(paths, hf_name, hf_config, hf_splits)
        if not self.sources:
            raise SFTDataError(
                "no data: give train_path/val_path/test_path (local JSONL) or hf_name (a Hugging Face dataset)"
            )

        self.tokenizer, self.mask_token_id = _resolve_tokenizer(tokenizer, mask_token_id, add_mask_token)
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise TokenizerError(
                f"tokenizer {tokenizer!r} has no EOS token, needed to end responses and pad; "
                "use one that defines eos_token"
            )
        self.eos_token_id: int = int(eos)
        self.pad_token_id: int = self.eos_token_id
        if self.mask_token_id == self.eos_token_id:
            raise TokenizerError(
                f"mask_token_id={self.mask_token_id} is the EOS id: the mask id must never occur in the data"
            )
        self.vocab_size: int = len(self.tokenizer)
        has_chat = bool(getattr(self.tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise SFTDataError(
                f"template='chat' but tokenizer {tokenizer!r} has no chat template; use template='plain' or 'auto'"
            )
        self.template = ("chat" if has_chat else "plain") if template == "auto" else template
        self.stats: dict[str, SplitStats] = {}
        self._records: dict[str, list[SFTRecord]] = {}
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ sources
    def _make_sources(self, paths, hf_name, hf_config, hf_splits) -> dict[str, tuple[str, Any]]:
        sources: dict[str, tuple[str, Any]] = {}
        for split in SPLITS:
            value = paths[split]
            if not value:
                continue
            path = Path(value).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{split}_path {str(path)!r} does not exist (or is not a file)")
            sources[split] = ("file", path)
        if hf_name is not None:
            mapping = dict(DEFAULT_HF_SPLITS if hf_splits is None else hf_splits)
            unknown = set(mapping) - set(SPLITS)
            if unknown:
                raise SFTDataError(f"hf_splits keys must be among {', '.join(SPLITS)}; got {', '.join(sorted(unknown))}")
            for split, hf_split in mapping.items():
                if hf_split and split not in sources:
                    sources[split] = ("hf", (hf_name, hf_config, hf_split))
        elif hf_splits is not None or hf_config is not None:
            raise SFTDataError("hf_config/hf_splits are given without hf_name")
        return sources

    def _describe(self, split: str) -> str:
        kind, value = self.sources[split]
        if kind == "file":
            return str(value)
        name, config, hf_split = value
        return f"{name}{'/' + str(config) if config else ''} [{hf_split}]"

    def _rows(self, split: str) -> Iterator[tuple[int, str, dict]]:
        kind, value = self.sources[split]
        if kind == "file":
            return iter_raw_records(value, self.limits[split])
        name, config, hf_split = value
        return load_hf_rows(name, config, hf_split, self.limits[split])

    def records(self, split: str) -> list[SFTRecord]:
        """The adapted records of ``split`` (memoized); fills ``stats[split]``'s record counts."""
        if split in self._records:
            return self._records[split]
        held_out_val = self.val_size > 0 and "val" not in self.sources
        if split == "val" and held_out_val:
            self.records("train")  # holds the val records out
            return self._records["val"]
        if split not in self.sources:
            raise SFTDataError(f"no {split} data: give {split}_path, or hf_name with hf_splits[{split!r}]")
        stats = self.stats.setdefault(split, SplitStats(source=self._describe(split)))
        adapter = self.test_dataset_name if split == "test" else self.dataset_name
        records = read_records(adapter, self._rows(split), self.on_missing_answer, self.group_by, stats)
        if split == "train" and held_out_val:
            if self.val_size >= len(records):
                raise SFTDataError(
                    f"val_size={self.val_size} leaves no training records (the train split has {len(records)})"
                )
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 17)
            held = set(torch.randperm(len(records), generator=g)[: self.val_size].tolist())
            self._records["val"] = [r for i, r in enumerate(records) if i in held]
            records = [r for i, r in enumerate(records) if i not in held]
            source = f"{self.val_size} records held out of {stats.source}"
            self.stats["val"] = SplitStats(source=source, records=self.val_size)
        self._records[split] = records
        return records

    def has_split(self, split: str) -> bool:
        return split in self.sources or (split == "val" and self.val_size > 0 and "train" in self.sources)

    # ------------------------------------------------------------------ building
    def _check_mask_absent(self, split: str, ids_of: Sequence[tuple[SFTRecord, Sequence[int]]]) -> None:
        for rec, ids in ids_of:
            if self.mask_token_id in ids:
                raise SFTDataError(
                    f"{rec.where}: the mask token id {self.mask_token_id} "
                    f"({self.tokenizer.convert_ids_to_tokens(self.mask_token_id)!r}) occurs in the tokenised {split} "
                    "data; the mask id must never occur in text (choose another mask_token_id)"
                )

    def _build_train_format(self, split: str) -> SFTDataset:
        records = self.records(split)
        stats = self.stats[split]
        items = tokenize_records(self.tokenizer, records, self.template, self.eos_token_id, True, (), stats)
        sequences, prompt_lengths, indices, overflow = [], [], [], []
        L = self.max_length
        for it in items:
            P = len(it.prompt_ids)
            if P >= L:
                if self.on_overflow == "drop":  # counted with the other overflows
                    overflow.append((it.record.where, P + len(it.response_ids)))
                    continue
                raise SFTDataError(
                    f"{it.record.where}: the prompt has {P} tokens, at least max_length={L}, which leaves no room "
                    "for a response; raise max_length, shorten the prompt / use fewer shots, or set "
                    "on_overflow='drop' to drop (and count) such records"
                )
            seq = it.prompt_ids + it.response_ids
            if len(seq) > L:
                overflow.append((it.record.where, len(seq)))
                if self.on_overflow == "drop":
                    continue
                if self.on_overflow == "truncate_response":
                    seq = seq[:L]
            sequences.append(seq)
            prompt_lengths.append(P)
            indices.append(it.record.index)
        stats.overflow = len(overflow)
        if overflow and self.on_overflow == "error":
            longest = max(overflow, key=lambda o: o[1])
            raise SFTDataError(
                f"{len(overflow)} {split} sample(s) exceed max_length={L} (prompt + response + EOS), e.g. "
                f"{overflow[0][0]} ({overflow[0][1]} tokens; longest {longest[1]} at {longest[0]}); raise max_length "
                "or set on_overflow='drop' or 'truncate_response'"
            )
        if self.on_overflow == "drop":
            stats.dropped_overflow = len(overflow)
        elif self.on_overflow == "truncate_response":
            stats.truncated = len(overflow)
        self._check_mask_absent(split, [(it.record, it.prompt_ids + it.response_ids) for it in items])
        stats.samples = len(sequences)
        stats.max_tokens = max(map(len, sequences), default=0)
        if not sequences:
            raise SFTDataError(f"the {split} split has no samples left ({stats.records} records read)")
        self._log(split, stats)
        return SFTDataset(sequences, prompt_lengths, indices)

    def few_shot_prefix(self) -> list[dict[str, str]]:
        """The few-shot turns: the first ``num_shots`` train records as user/assistant turns."""
        if self.num_shots == 0:
            return []
        if "train" not in self.sources:
            raise SFTDataError(
                f"num_shots={self.num_shots} takes exemplars from the train split: give train_path or hf_name "
                "with a train split"
            )
        shots = [r for r in self.records("train") if r.response is not None][: self.num_shots]
        if len(shots) < self.num_shots:
            raise SFTDataError(f"num_shots={self.num_shots} but the train split has only {len(shots)} usable records")
        turns: list[dict[str, str]] = []
        for r in shots:
            turns.extend(r.messages)
            turns.append({"role": "assistant", "content": r.response})
        return turns

    def _build_prompts(self, split: str) -> PromptDataset:
        records = self.records(split)
        stats = self.stats[split]
        prefix = self.few_shot_prefix()
        items = tokenize_records(self.tokenizer, records, self.template, self.eos_token_id, False, prefix, stats)
        self._check_mask_absent(split, [(it.record, it.prompt_ids) for it in items])
        stats.samples = len(items)
        stats.max_tokens = max((len(it.prompt_ids) for it in items), default=0)
        if not items:
            raise SFTDataError(f"the {split} split has no records left ({stats.records} read)")
        self._log(split, stats)
        return PromptDataset(items)

    def _log(self, split: str, s: SplitStats) -> None:
        log.info(
            "SFT %s %s (%s): %d records, %d without a reference answer (%s), %d longer than max_length=%d "
            "(%d dropped, %d truncated), %d samples, longest %d tokens, template %s",
            self.dataset_name, split, s.source, s.records, s.num_missing_answers,
            "dropped" if s.missing_answer else "none", s.overflow, self.max_length, s.dropped_overflow,
            s.truncated, s.samples, s.max_tokens, self.template,
        )
        if s.trailing_turns:
            log.info(
                "SFT %s %s: %d chat records had turns after their last assistant turn (ignored)",
                self.dataset_name, split, s.trailing_turns,
            )
        if s.retokenized:
            log.info(
                "SFT %s %s: %d responses merged with their prompt at the token boundary; they were tokenised alone",
                self.dataset_name, split, s.retokenized,
            )
        if s.template_fallback:
            log.info("SFT %s %s: %d records: the chat template's conversation does not start with its prompt text; "
                     "their response was templated alone", self.dataset_name, split, s.template_fallback)

    def split_dataset(self, split: str) -> Dataset:
        """Build (memoized) the dataset of ``split``: training format for train/val, prompts for test."""
        if split not in self._datasets:
            self._datasets[split] = self._build_prompts(split) if split == "test" else self._build_train_format(split)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the splits of ``stage`` (``fit`` needs train; other splits only when given)."""
        splits = _STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS
        for split in splits:
            if self.has_split(split) or (split == "train" and stage == "fit"):
                self.split_dataset(split)

    @property
    def answer_groups(self) -> list[str]:
        """The group labels of the test prompts (e.g. MATH levels), for per-group answer accuracy."""
        if not self.has_split("test"):
            return []
        return sorted({item["group"] for item in self.test_set.items})

    @property
    def train_set(self) -> SFTDataset:
        return self.split_dataset("train")

    @property
    def val_set(self) -> SFTDataset:
        return self.split_dataset("val")

    @property
    def test_set(self) -> PromptDataset:
        return self.split_dataset("test")

    # ------------------------------------------------------------------ loaders
    def _collator(self) -> SFTCollator:
        return SFTCollator(self.pad_token_id, self.max_length, self.pad_to, self.supervise_padding)

    def train_dataloader(self) -> DataLoader:
        ds = self.train_set
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(ds), seed=self.seed),
            drop_last=len(ds) >= self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collator(),
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _eval_loader(self, ds: Dataset, collate: Any) -> DataLoader:
        # an explicit generator: iterating the loader leaves the global RNG alone
        return DataLoader(
            ds,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_split("val"):
            return []
        return self._eval_loader(self.val_set, self._collator())

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set, PromptCollator(self.pad_token_id))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class GSM8KDataModule(SFTDataModule):
    """:class:`SFTDataModule` with ``dataset="gsm8k"``."""

    def __init__(self, tokenizer: str, **kwargs: Any) -> None:
        super().__init__(tokenizer, dataset="gsm8k", **kwargs)


class MATHDataModule(SFTDataModule):
    """:class:`SFTDataModule` with ``dataset="math"`` (MATH; MATH-500 records load the same way)."""

    def __init__(self, tokenizer: str, **kwargs: Any) -> None:
        super().__init__(tokenizer, dataset="math", **kwargs)
