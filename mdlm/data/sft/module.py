"""The SFT data module (:class:`SFTDataModule`) and its GSM8K / MATH shorthands."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from mdlm.data.contract import MDLMDataModule
from mdlm.data.sft.adapters import read_records
from mdlm.data.sft.collate import PromptCollator, PromptDataset, SFTCollator, SFTDataset
from mdlm.data.sft.records import (
    DATASETS,
    DEFAULT_HF_SPLITS,
    GROUP_BY,
    ON_MISSING_ANSWER,
    ON_OVERFLOW,
    PAD_TO,
    SPLITS,
    TEMPLATES,
    DatasetName,
    SFTDataError,
    SFTRecord,
    SplitStats,
    _check_choice,
    iter_raw_records,
    load_hf_rows,
)
from mdlm.data.sft.rendering import tokenize_records
from mdlm.data.shuffle import EpochShuffleSampler
from mdlm.data.tokenizer import TokenizerError, resolve_tokenizer

__all__ = ["GSM8KDataModule", "MATHDataModule", "SFTDataModule"]

log = logging.getLogger(__name__)

_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class SFTDataModule(MDLMDataModule):
    r"""SFT data (GSM8K, MATH, MATH-500 or chat messages) for masked diffusion; see :mod:`mdlm.data.sft`.

    The arguments are flat on purpose (one ``--data.init_args.<name>`` each, as Lightning's and litgpt's
    data modules; the subclasses forward ``**kwargs``); docs/sft.md lists them in four groups: source,
    tokenizer, format, loading.

    Args:
        tokenizer: a local tokenizer folder or a Hugging Face Hub name; it and its mask id are
            settled by :func:`mdlm.data.tokenizer.resolve_tokenizer` (no ``[PAD]``: padding is EOS).
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

    After ``__init__`` (the data contract, :mod:`mdlm.data.contract`; ``vocab_size`` and
    ``mask_token_id`` are linked into the model by the CLI): ``tokenizer``, ``vocab_size``
    (``len(tokenizer)``), ``mask_token_id``, ``pad_token_id`` (= ``eos_token_id``: padding is EOS),
    ``eos_token_id``. After ``setup``: ``stats[split]`` (:class:`SplitStats`), ``train_set``,
    ``val_set`` (training format), ``test_set`` (generation prompts).
    """

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

        self.tokenizer, self.mask_token_id = resolve_tokenizer(
            tokenizer, mask_token_id=mask_token_id, add_mask_token=add_mask_token, add_pad_token=False
        )
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

