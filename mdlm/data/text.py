"""Generic packed-text data module: documents -> tokens (cached once with litdata) -> blocks.

The pieces: :mod:`mdlm.data.sources` (where a split's text comes from: files or a Hugging Face
split, read as documents), :mod:`mdlm.data.streaming` (litdata chunk writing, block reading,
remote locations) and :mod:`mdlm.data.packing` (documents -> token stream); this module ties them
into :class:`TextDataModule`.

Pipeline
--------
``__init__`` checks the sources and loads the tokenizer (the CLI links ``vocab_size`` and
``mask_token_id`` into the model before ``setup()`` runs). ``prepare_data()`` (Lightning runs it on
local rank 0) tokenizes every split once and writes it with litdata ``optimize`` into
``<cache_dir>/tokens/<split>-<key>/``. ``setup()`` locates the caches and the dataloaders build a
litdata ``StreamingDataset`` + ``TokensLoader(block_size=block_length)`` per call, i.e. after the
process group exists, so every DDP rank / dataloader worker reads its own share of the blocks.

Cache
-----
``key`` is a sha256 of the source files' contents (or the Hugging Face dataset fingerprint), the
document mode / text column, the tokenizer fingerprint, the token dtype and the chunk size. The
block length is NOT part of it: blocks are cut when reading, so any ``block_length`` reuses the
cache. Layout::

    <cache_dir>/
      tokenizers/bpe-<V>-<key16>/        trained BPE (``tokenizer: "bpe:<V>"``)
      tokens/<split>-<key16>/            litdata output: index.json, chunk-0-*.bin, mdlm_meta.json
      tokens/.build-<split>-<key16>-*/   a build in progress: stream.bin, litdata/, scratch/

A build writes into ``.build-*`` (litdata's scratch folders ``DATA_OPTIMIZER_CACHE_FOLDER`` /
``DATA_OPTIMIZER_DATA_CACHE_FOLDER`` point into it, not to the system temp folder) and is renamed
to ``<split>-<key16>`` only when complete, so an interrupted run never leaves a half cache (a killed
run leaves a ``.build-*`` folder that is never read and may be deleted).

Tokens are stored as ``uint16`` or ``int32`` (:mod:`mdlm.data.streaming`). Every chunk holds
exactly ``chunk_tokens`` tokens (the last one fewer); ``TokensLoader`` cuts blocks inside a chunk,
so nothing is lost at chunk borders when ``block_length`` divides ``chunk_tokens`` (the default
6,451,200 = 2^12·3^2·5^2·7 is divisible by 150, 128, 256, 512, 1024, 2048, 4096, ...); otherwise
the tokens lost at chunk borders are counted and reported with a warning.

Reading
-------
* train: shuffled (chunks and blocks inside a chunk, full permutation, seeded with ``seed`` and
  the epoch). Under DDP litdata gives every rank the same number of blocks (``drop_last``: at most
  ``world_size * num_workers * batch_size - 1`` blocks per epoch are left out).
* val/test: in stream order, no shuffle, nothing dropped: every full block is read exactly once
  over all ranks and workers (under DDP the last rank may get one batch more). The last
  ``num_tokens % block_length`` tokens of a split (fewer than one block) are not read; their count
  is logged.

Batches and resuming the train stream: :mod:`mdlm.data.streaming`.

Prepared datasets
-----------------
``prepared={"train": DIR_OR_URL, ...}`` reads a split from a dataset written once by
:mod:`mdlm.data.prepare` (``python -m mdlm.data.prepare``; many workers and nodes, local folder or
``s3://``/``gs://`` URL; ``storage_options`` such as ``endpoint_url`` reach litdata). Such a split
is never tokenized nor cached per node: its ``mdlm_prepared.json`` manifest is checked against this
run's tokenizer (fingerprint), EOS id and, when the split's source is configured too, the source
identity, and a mismatch is refused with one line. Streaming is rank-aware (the dataset is built in
the dataloader hooks) and the train loader's state resumes the exact sample sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import TokensLoader

from mdlm.data import streaming
from mdlm.data.contract import MDLMDataModule
from mdlm.data.packing import DOCUMENT_MODES, batched, count_blocks, pack_documents
from mdlm.data.sources import DataError, SplitSource
from mdlm.data.streaming import (
    PREPARED_FILE,
    BlockDataset,
    BlockLoader,
    _environ,
    _StreamSlicer,
    collate_blocks,
    default_cache_dir,
    enable_http_endpoint,
    fetch_small_file,
    is_remote,
    read_prepared_manifest,
    token_dtype_for,
)
from mdlm.data.tokenizer import (
    TokenizerError,
    load_tokenizer,
    parse_bpe_spec,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_TOKENS",
    "PREPARED_FILE",
    "BlockDataset",
    "DataError",
    "SplitSource",
    "TextDataModule",
    "collate_blocks",
    "default_cache_dir",
    "read_prepared_manifest",
    "token_dtype_for",
]

SPLITS = ("train", "val", "test")
#: tokens per litdata chunk: 2^12 * 3^2 * 5^2 * 7, divisible by the usual block lengths.
CHUNK_TOKENS = 6_451_200
CACHE_FORMAT = 1
META_FILE = "mdlm_meta.json"
_TOKENIZE_BATCH = 256
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class TextDataModule(MDLMDataModule):
    """Packed text for masked diffusion: documents joined with EOS, read as blocks of ``block_length``.

    Sources (per split; give files, or a Hugging Face dataset):

    * ``train_files`` / ``val_files`` / ``test_files``: a path or list of paths. ``.txt``/``.raw``
      (any other suffix) is UTF-8 plain text; ``.jsonl``/``.json`` (JSON lines or a JSON array) and
      ``.parquet`` hold records whose ``text_column`` is the text.
    * ``hf_path`` (+ ``hf_name`` config, ``hf_splits`` mapping ``train/val/test`` to dataset split
      names, default ``train/validation/test``): ``datasets.load_dataset(hf_path, hf_name)``,
      imported lazily (needs ``pip install 'mdlm[hf]'`` and the hub or a local HF cache).

    Args:
        documents: what a document is (:mod:`mdlm.data.packing`): ``"file"`` (a whole text file or
            one record), ``"line"``, ``"paragraph"`` or ``"wikitext"`` (articles).
        tokenizer: a local tokenizer folder, a Hub name, or ``"bpe:<V>"`` (a V-token byte-level BPE
            trained on the train split and cached under ``cache_dir/tokenizers``).
        add_mask_token / add_pad_token: add ``[MASK]`` / ``[PAD]`` when the tokenizer lacks them.
        block_length: tokens per training/evaluation sequence (applied when reading; the cache is
            shared by all block lengths). Default 150.
        batch_size: training batch size; eval_batch_size: val/test batch size (default batch_size).
        num_workers: dataloader worker processes.
        cache_dir: token cache root (default ``$MDLM_CACHE_DIR`` or ``~/.cache/mdlm``).
        seed: training shuffle seed.
        chunk_tokens: tokens per litdata chunk (advanced; part of the cache key).
        prepared: split -> a dataset written by ``python -m mdlm.data.prepare`` (local folder or
            ``s3://...`` URL). Those splits are streamed from there (no tokenization, no per-node
            cache); their sources may be omitted.
        storage_options: litdata/boto3 options for remote ``prepared`` URLs (``endpoint_url``, ...).
        resume_topology: ``"strict"`` refuses resuming the train stream with another world size,
            worker count or batch size; ``"elastic"`` lets litdata restripe (no duplicates, other order).

    After ``__init__`` (the data contract, :mod:`mdlm.data.contract`): ``tokenizer``, ``vocab_size``
    (``len(tokenizer)``), ``mask_token_id``, ``pad_token_id``, ``eos_token_id``.
    """

    def __init__(
        self,
        train_files: str | list[str] | None = None,
        val_files: str | list[str] | None = None,
        test_files: str | list[str] | None = None,
        hf_path: str | None = None,
        hf_name: str | None = None,
        hf_splits: dict[str, str] | None = None,
        text_column: str = "text",
        documents: str = "file",
        tokenizer: str = "gpt2",
        add_mask_token: bool = True,
        add_pad_token: bool = True,
        block_length: int = 150,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 42,
        chunk_tokens: int = CHUNK_TOKENS,
        prepared: dict[str, str] | None = None,
        storage_options: dict[str, Any] | None = None,
        resume_topology: str = "strict",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if documents not in DOCUMENT_MODES:
            raise DataError(f"documents={documents!r} is not one of {', '.join(DOCUMENT_MODES)}")
        if block_length < 1:
            raise DataError(f"block_length={block_length} must be >= 1")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise DataError(f"batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1")
        if num_workers < 0:
            raise DataError(f"num_workers={num_workers} must be >= 0")
        if chunk_tokens < 1:
            raise DataError(f"chunk_tokens={chunk_tokens} must be >= 1")
        if resume_topology not in ("strict", "elastic"):
            raise DataError(f"resume_topology={resume_topology!r} must be 'strict' or 'elastic'")
        prepared = {k: str(v) for k, v in (prepared or {}).items() if v}
        unknown = set(prepared) - set(SPLITS)
        if unknown:
            raise DataError(f"prepared keys must be among {', '.join(SPLITS)}; got {', '.join(sorted(unknown))}")
        self.prepared: dict[str, str] = prepared
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.resume_topology = resume_topology
        self.block_length = int(block_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.chunk_tokens = int(chunk_tokens)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.sources: dict[str, SplitSource] = self._make_sources(
            {"train": train_files, "val": val_files, "test": test_files},
            hf_path,
            hf_name,
            hf_splits,
            text_column,
            documents,
        )
        if not self.sources and not self.prepared:
            raise DataError("no data: give train_files/val_files/test_files, hf_path or prepared")

        self.tokenizer = self._resolve_tokenizer(tokenizer, add_mask_token, add_pad_token)
        self.vocab_size: int = len(self.tokenizer)
        self.mask_token_id: int = int(self.tokenizer.mask_token_id)
        self.pad_token_id: int | None = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = getattr(self.tokenizer, "sep_token_id", None)
        if eos is None:
            raise TokenizerError(
                f"tokenizer {tokenizer!r} has neither an eos nor a sep token, needed to join documents; "
                "use a tokenizer that defines eos_token"
            )
        self.eos_token_id: int | None = int(eos)
        self.token_dtype = token_dtype_for(self.vocab_size)
        self._tokenizer_fp = tokenizer_fingerprint(self.tokenizer)
        self._cache_paths: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._dims: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ construction helpers
    def _make_sources(
        self,
        files: dict[str, str | list[str] | None],
        hf_path: str | None,
        hf_name: str | None,
        hf_splits: dict[str, str] | None,
        text_column: str,
        documents: str,
    ) -> dict[str, SplitSource]:
        sources: dict[str, SplitSource] = {}
        if hf_path is not None:
            if any(v for v in files.values()):
                raise DataError("give either local files (train_files/val_files/test_files) or hf_path, not both")
            mapping = {"train": "train", "val": "validation", "test": "test"} if hf_splits is None else dict(hf_splits)
            unknown = set(mapping) - set(SPLITS)
            if unknown:
                raise DataError(f"hf_splits keys must be among {', '.join(SPLITS)}; got {', '.join(sorted(unknown))}")
            for split in SPLITS:
                if mapping.get(split):
                    sources[split] = SplitSource(
                        split, hf_path=hf_path, hf_name=hf_name, hf_split=mapping[split], text_column=text_column, documents=documents
                    )
            return sources
        for split in SPLITS:
            value = files[split]
            if not value:
                continue
            paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            resolved = []
            for p in paths:
                path = Path(p).expanduser()
                if not path.exists():
                    raise FileNotFoundError(f"{split} file {str(path)!r} does not exist")
                if not path.is_file():
                    raise DataError(f"{split} path {str(path)!r} is not a file")
                if path.stat().st_size == 0:
                    raise DataError(f"{split} file {str(path)!r} is empty")
                resolved.append(path)
            sources[split] = SplitSource(split, files=tuple(resolved), text_column=text_column, documents=documents)
        return sources

    def _resolve_tokenizer(self, spec: str, add_mask_token: bool, add_pad_token: bool) -> Any:
        vocab = parse_bpe_spec(str(spec))
        if vocab is None:
            return load_tokenizer(spec, add_mask_token=add_mask_token, add_pad_token=add_pad_token)
        train = self.sources.get("train")
        if train is None:
            hint = (
                "; with a prepared dataset pass the tokenizer folder it was made with (<output_dir>/tokenizer)"
                if self.prepared else ""
            )
            raise TokenizerError(f"tokenizer {spec!r} is trained on the train split, but no train split was given{hint}")
        ident = json.dumps({"bpe": vocab, "source": train.identity(), "min_frequency": 2}, sort_keys=True)
        key = hashlib.sha256(ident.encode()).hexdigest()[:16]
        folder = self.cache_dir / "tokenizers" / f"bpe-{vocab}-{key}"
        if not (folder / "tokenizer.json").is_file():
            log.info("training a %d-token byte-level BPE on %s -> %s", vocab, train.describe(), folder)
            train_bpe_tokenizer(None, vocab, texts=train.iter_documents(), save_dir=folder)
        return load_tokenizer(str(folder), add_mask_token=add_mask_token, add_pad_token=add_pad_token)

    # ------------------------------------------------------------------ cache
    def cache_key(self, split: str) -> str:
        """Hex key of ``split``'s token cache (content of the sources + tokenizer + format)."""
        source = self._source(split)
        ident = {
            "format": CACHE_FORMAT,
            "source": source.identity(),
            "tokenizer": self._tokenizer_fp,
            "eos": self.eos_token_id,
            "dtype": self.token_dtype,
            "chunk_tokens": self.chunk_tokens,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def cache_path(self, split: str) -> Path:
        """Folder of ``split``'s litdata token cache (it may not exist yet)."""
        return self.cache_dir / "tokens" / f"{split}-{self.cache_key(split)[:16]}"

    def splits(self) -> tuple[str, ...]:
        """The configured splits (from sources or prepared datasets), in train/val/test order."""
        return tuple(s for s in SPLITS if s in self.sources or s in self.prepared)

    def _source(self, split: str) -> SplitSource:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split not in self.sources:
            raise DataError(f"no {split} data was configured (give {split}_files or an hf_splits entry)")
        return self.sources[split]

    def prepare_data(self) -> None:
        """Tokenize every configured split into its litdata cache (skipped when cached)."""
        for split in self.sources:
            if split not in self.prepared:  # prepared splits are never tokenized here
                self._ensure_cache(split)

    def _ensure_cache(self, split: str) -> Path:
        final = self.cache_path(split)
        if (final / META_FILE).is_file():
            return final
        source = self._source(split)
        tokens_root = final.parent
        tokens_root.mkdir(parents=True, exist_ok=True)
        build = tokens_root / f".build-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        build.mkdir()
        try:
            log.info("tokenizing %s split (%s) -> %s", split, source.describe(), final)
            stream_path = build / "stream.bin"
            num_docs, num_tokens = self._tokenize(source, stream_path)
            if num_docs == 0:
                raise DataError(f"{split} data ({source.describe()}) contains no text (0 non-blank documents)")
            out = build / "litdata"
            num_chunks = -(-num_tokens // self.chunk_tokens)
            scratch = build / "scratch"
            env = {
                "DATA_OPTIMIZER_CACHE_FOLDER": str(scratch / "chunks"),
                "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(scratch / "data"),
            }
            # the forked writer does not tokenize: keep tokenizers' fork warning quiet
            if "TOKENIZERS_PARALLELISM" not in os.environ:
                env["TOKENIZERS_PARALLELISM"] = "false"
            start_method = "fork" if "fork" in mp.get_all_start_methods() else None
            with _environ(**env):
                streaming.optimize(
                    fn=_StreamSlicer(str(stream_path), self.token_dtype, self.chunk_tokens),
                    inputs=list(range(num_chunks)),
                    output_dir=str(out),
                    chunk_size=self.chunk_tokens,
                    num_workers=1,
                    item_loader=TokensLoader(),
                    reorder_files=False,
                    keep_data_ordered=True,
                    verbose=False,
                    start_method=start_method,
                )
            index = json.loads((out / "index.json").read_text())
            written = sum(int(c["dim"]) for c in index["chunks"])
            if written != num_tokens:  # pragma: no cover - litdata contract check
                raise DataError(f"litdata wrote {written} tokens for the {split} split, expected {num_tokens}")
            meta = {
                "format": CACHE_FORMAT,
                "split": split,
                "source": source.describe(),
                "identity": source.identity(),
                "tokenizer": getattr(self.tokenizer, "name_or_path", ""),
                "tokenizer_fingerprint": self._tokenizer_fp,
                "eos_token_id": self.eos_token_id,
                "vocab_size": self.vocab_size,
                "dtype": self.token_dtype,
                "chunk_tokens": self.chunk_tokens,
                "num_documents": num_docs,
                "num_tokens": num_tokens,
            }
            (out / META_FILE).write_text(json.dumps(meta, indent=1))
            try:
                os.rename(out, final)
            except OSError:  # another process completed the same cache first
                if not (final / META_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(build, ignore_errors=True)
        log.info("%s split: %d documents, %d tokens", split, num_docs, num_tokens)
        return final

    def _tokenize(self, source: SplitSource, out_path: Path) -> tuple[int, int]:
        """Tokenize ``source``'s documents (EOS after each) into a raw ``token_dtype`` file."""
        num_docs = num_tokens = 0
        limit = np.iinfo(self.token_dtype).max
        with open(out_path, "wb") as f:
            for docs in batched(source.iter_documents(), _TOKENIZE_BATCH):
                ids = self.tokenizer(
                    docs,
                    add_special_tokens=False,
                    split_special_tokens=True,
                    return_attention_mask=False,
                    verbose=False,
                )["input_ids"]
                stream = pack_documents(ids, self.eos_token_id, dtype=np.int64)
                if stream.size and (stream.min() < 0 or stream.max() > limit):  # pragma: no cover
                    raise DataError(f"token id {int(stream.max())} does not fit {self.token_dtype}")
                stream.astype(self.token_dtype).tofile(f)
                num_docs += len(docs)
                num_tokens += stream.size
        return num_docs, num_tokens

    # ------------------------------------------------------------------ reading
    def setup(self, stage: str | None = None) -> None:
        """Locate (or, outside a multi-process run, build) the caches needed by ``stage``."""
        splits = _STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS
        for split in splits:
            if split in self.sources or split in self.prepared:
                self._locate(split)

    def _locate(self, split: str) -> Any:
        if split in self._cache_paths:
            return self._cache_paths[split]
        if split in self.prepared:
            return self._locate_prepared(split)
        path = self.cache_path(split)
        if not (path / META_FILE).is_file():
            if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                raise DataError(
                    f"the {split} token cache {path} is missing: prepare_data() must run first "
                    "(Lightning runs it on local rank 0; with several nodes and no shared cache_dir set "
                    "prepare_data_per_node=True, or tokenize once with python -m mdlm.data.prepare and set data.prepared)"
                )
            path = self._ensure_cache(split)
        meta = json.loads((path / META_FILE).read_text())
        num_tokens = int(meta["num_tokens"])
        if self.block_length > num_tokens:
            raise DataError(
                f"block_length={self.block_length} is larger than the {split} split "
                f"({num_tokens} tokens from {self.sources[split].describe()}); use a smaller block_length or more text"
            )
        index = json.loads((path / "index.json").read_text())
        dims = [int(c["dim"]) for c in index["chunks"]]
        self._dims[split] = dims
        border_loss = sum(d % self.block_length for d in dims[:-1])
        tail = dims[-1] % self.block_length
        if border_loss:
            log.warning(
                "%s split: block_length=%d does not divide chunk_tokens=%d: %d tokens at chunk borders are not read",
                split, self.block_length, self.chunk_tokens, border_loss,
            )
        log.info(
            "%s split: %d tokens -> %d blocks of %d; the last %d tokens (a partial block) are not read",
            split, num_tokens, self.num_blocks(split, dims), self.block_length, tail,
        )
        self._cache_paths[split] = path
        self._meta[split] = meta
        return path

    def _locate_prepared(self, split: str) -> str:
        """Check a prepared split's manifest against this run; returns its path or URL."""
        location = self.prepared[split]
        scratch = self.cache_dir / "prepared"
        manifest = read_prepared_manifest(location, self.storage_options, scratch)
        theirs, mine = manifest.get("tokenizer_fingerprint"), self._tokenizer_fp
        if theirs != mine:
            raise DataError(
                f"prepared {split} dataset {location} was tokenized with another tokenizer "
                f"({manifest.get('tokenizer')!r}, fingerprint {str(theirs)[:12]}) than this run's "
                f"({getattr(self.tokenizer, 'name_or_path', '')!r}, fingerprint {mine[:12]}): use that tokenizer or prepare the data again"
            )
        if manifest.get("eos_token_id") != self.eos_token_id or manifest.get("vocab_size") != self.vocab_size:
            raise DataError(
                f"prepared {split} dataset {location} has eos_token_id={manifest.get('eos_token_id')}, "
                f"vocab_size={manifest.get('vocab_size')}; this run has {self.eos_token_id}, {self.vocab_size}: prepare it again"
            )
        if split in self.sources:
            ident = self.sources[split].identity()
            if manifest.get("identity") != ident:
                raise DataError(
                    f"prepared {split} dataset {location} was made from other {split} data than the configured "
                    f"{self.sources[split].describe()}: prepare it again or drop the {split} source"
                )
        key = hashlib.sha256(location.encode()).hexdigest()[:16]
        index_path = fetch_small_file(location.rstrip("/") + "/index.json", scratch / key / "index.json", self.storage_options)
        dims = [int(c["dim"]) for c in json.loads(Path(index_path).read_text())["chunks"]]
        if sum(dims) != int(manifest["num_tokens"]):
            raise DataError(f"prepared {split} dataset {location}: index.json holds {sum(dims)} tokens, the manifest {manifest['num_tokens']}")
        if self.block_length > max(dims):
            raise DataError(
                f"block_length={self.block_length} is larger than every chunk of the prepared {split} dataset "
                f"{location} (largest {max(dims)} tokens): prepare it with a larger chunk_tokens"
            )
        lost = sum(d % self.block_length for d in dims)
        log.info(
            "%s split: prepared %s, %d tokens -> %d blocks of %d (%d tokens at chunk ends not read)",
            split, location, sum(dims), self.num_blocks(split, dims), self.block_length, lost,
        )
        self._cache_paths[split] = location
        self._meta[split] = manifest
        self._dims[split] = dims
        return location

    def num_tokens(self, split: str) -> int:
        """Tokens (EOS included) in ``split``'s cache."""
        self._locate(split)
        return int(self._meta[split]["num_tokens"])

    def num_blocks(self, split: str, dims: list[int] | None = None) -> int:
        """Full blocks of ``block_length`` that the reader yields for ``split`` (all ranks together)."""
        if dims is None:
            self._locate(split)
            dims = self._dims[split]
        return sum(count_blocks(d, self.block_length) for d in dims)

    def _loader(self, split: str, train: bool) -> Any:
        path = self._locate(split)
        remote: dict[str, Any] = {}
        if split in self.prepared and is_remote(str(path)):
            enable_http_endpoint(self.storage_options)
            key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
            # one streaming cache per local rank: ranks that share one litdata cache race on its index.json
            # (a rank read the half-downloaded copy of another and found "no index.json"); each rank streams
            # only its own chunks, so little is downloaded twice
            rank = self.trainer.local_rank if self.trainer is not None else 0
            cache = self.cache_dir / "streaming" / key / f"rank{rank}"
            remote = {"storage_options": self.storage_options, "cache_dir": str(cache)}
        dataset = BlockDataset(
            input_dir=str(path),
            **remote,
            item_loader=TokensLoader(block_size=self.block_length),
            shuffle=train,
            drop_last=None if train else False,
            seed=self.seed,
            item_shuffle_window="full" if train else None,
        )
        return BlockLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_blocks,
            resume_topology=self.resume_topology,
        )

    def train_dataloader(self) -> Any:
        return self._loader("train", train=True)

    def val_dataloader(self) -> Any:
        return self._loader("val", train=False) if "val" in self.sources or "val" in self.prepared else []

    def test_dataloader(self) -> Any:
        return self._loader("test", train=False)

