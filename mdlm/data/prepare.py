"""Prepare once, train many: tokenize a configured corpus with litdata ``optimize`` over N workers
(and nodes) into a local folder or an object store, for :class:`~mdlm.data.text.TextDataModule`'s
``prepared`` argument.

    python -m mdlm.data.prepare --config configs/wikitext_uniform.yaml --output_dir DIR --num_workers 8
    # multi-node: the same command on every node, with a remote output and
    DATA_OPTIMIZER_NUM_NODES=4 DATA_OPTIMIZER_NODE_RANK=$RANK python -m mdlm.data.prepare ... --output_dir s3://bucket/owt

The data section of the YAML (``data: {class_path, init_args}``, the same one ``mdlm fit`` reads;
several ``--config`` compose, later ones win) builds the data module, so the sources, document
mode, tokenizer and chunk size are exactly the training run's. Each split is written to
``<output_dir>/<split>/``: litdata's ``index.json`` + ``chunk-*.bin`` and ``mdlm_prepared.json``
(the manifest). The ``output_dir`` (local or remote) also gets ``tokenizer/`` (the tokenizer used)
and ``data_prepared.yaml``, a config overlay that points a run at the prepared splits::

    mdlm fit --config configs/wikitext_uniform.yaml --config DIR/data_prepared.yaml

Work split: the documents of a split are cut into shards of about ``shard_chars`` characters, in
document order (one sequential pass in the main process writes the shards to a scratch folder; a
Hugging Face source in ``documents="file"`` mode is sharded by row ranges instead, no pass). litdata
hands every worker (``node_rank * num_workers + worker``) a contiguous run of shards
(``keep_data_ordered=True``) and orders the chunks by worker, so the concatenated token stream is
the documents in source order whatever N is; only the chunk borders depend on N.

Packing: every document's tokens are followed by EOS; documents are concatenated (blocks cross
document boundaries, as in MDLM's wrapped OpenWebText/WikiText). A chunk holds at most
``chunk_tokens`` tokens; blocks are cut inside a chunk when reading, so the last
``dim % block_length`` tokens of each chunk are not read (with the default 6.45M-token chunks and
N workers about N * block_length tokens per shard boundary at most — negligible; counted in the log).

Token dtype: ``uint16`` when the vocabulary (``len(tokenizer)``) is at most 65,536 ids, ``int32``
beyond (e.g. LLaDA's 126,464); batches are cast to ``int64``.

The manifest records the fingerprint of the inputs (source identity: content hashes or the HF
dataset fingerprint), the tokenizer fingerprint, EOS id, dtype, chunk size and packing; training
refuses a dataset whose tokenizer/EOS/vocabulary differ from the run's with one line.

Multi-node (``DATA_OPTIMIZER_NUM_NODES`` / ``DATA_OPTIMIZER_NODE_RANK``): needs an object-store
``output_dir`` (litdata's merging node waits for the other nodes' indexes only there). Every node
runs the same command; each writes its chunks and ``<node>-index.json``; litdata's merging node
(in litdata 0.2.76 the LAST node rank) merges them into ``index.json`` and then writes the manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.data.packing import batched, pack_documents
from mdlm.data.sources import DataError
from mdlm.data.streaming import (
    PREPARED_FILE,
    PREPARED_FORMAT,
    _environ,
    enable_http_endpoint,
    fetch_small_file,
    is_remote,
    read_prepared_manifest,
)
from mdlm.data.text import TextDataModule

log = logging.getLogger(__name__)

__all__ = ["PACKING", "data_module_from_config", "main", "prepare", "prepare_split"]

#: how documents become the token stream (recorded in every manifest)
PACKING = {
    "separator": "eos_after_each_document",
    "blocks_cross_documents": True,
    "blocks_cross_chunks": False,
    "special_tokens_in_text": "split (kept as text)",
}
_TOKENIZE_BATCH = 256


def _num_nodes() -> int:
    return int(os.environ.get("DATA_OPTIMIZER_NUM_NODES", "1") or 1)


def _node_rank() -> int:
    return int(os.environ.get("DATA_OPTIMIZER_NODE_RANK", "0") or 0)


# ----------------------------------------------------------------------------- workers
class _ShardTokenizer:
    """optimize() fn: shard id -> token pieces (each document + EOS, in order, <= piece tokens)."""

    def __init__(self, tokenizer: Any, eos: int, dtype: str, piece: int, shard_dir: str | None, hf: Any = None,
                 hf_ranges: Sequence[tuple[int, int]] = (), text_column: str = "text") -> None:
        self.tokenizer, self.eos, self.dtype, self.piece = tokenizer, eos, dtype, piece
        self.shard_dir, self.hf, self.hf_ranges, self.text_column = shard_dir, hf, list(hf_ranges), text_column

    def documents(self, shard: int) -> list[str]:
        if self.hf is not None:
            start, stop = self.hf_ranges[shard]
            texts = self.hf.select_columns([self.text_column])[start:stop][self.text_column]
            return [t.strip() for t in texts if t and t.strip()]
        with open(os.path.join(self.shard_dir, f"{shard:07d}.pkl"), "rb") as f:
            return pickle.load(f)

    def __call__(self, shard: int) -> Iterator[np.ndarray]:
        limit = np.iinfo(self.dtype).max
        for docs in batched(self.documents(shard), _TOKENIZE_BATCH):
            ids = self.tokenizer(
                list(docs), add_special_tokens=False, split_special_tokens=True, return_attention_mask=False, verbose=False
            )["input_ids"]
            stream = pack_documents(ids, self.eos, dtype=np.int64)
            if stream.size and (stream.min() < 0 or stream.max() > limit):
                raise DataError(f"token id {int(stream.max())} does not fit {self.dtype}")
            stream = stream.astype(self.dtype)
            for start in range(0, stream.size, self.piece):
                yield stream[start : start + self.piece]


def _write_shards(documents: Iterator[str], folder: Path, shard_chars: int) -> tuple[int, int, int]:
    """Cut ``documents`` into pickled lists of about ``shard_chars`` characters: (shards, docs, chars)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = docs = chars = 0
    buf: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal shards, buf, size
        with open(folder / f"{shards:07d}.pkl", "wb") as f:
            pickle.dump(buf, f, protocol=pickle.HIGHEST_PROTOCOL)
        shards, buf, size = shards + 1, [], 0

    for doc in documents:
        buf.append(doc)
        size += len(doc)
        docs += 1
        chars += len(doc)
        if size >= shard_chars:
            flush()
    if buf:
        flush()
    return shards, docs, chars


def _default_shard_chars(total_chars: int, workers: int) -> int:
    """~8 shards per worker (over all nodes), between 4 KB and 16 MB of text."""
    return int(min(16 << 20, max(4096, total_chars // max(1, 8 * workers))))


# ----------------------------------------------------------------------------- output helpers
def _join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts]) if is_remote(root) else str(Path(root, *parts))


def _put_file(local: Path, dest: str, storage_options: dict[str, Any]) -> None:
    if is_remote(dest):
        from litdata.streaming.fs_provider import _get_fs_provider

        _get_fs_provider(dest, dict(storage_options)).upload_file(str(local), dest)
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(dest).with_name(f".{Path(dest).name}.{uuid.uuid4().hex[:6]}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)


def _exists(path: str, storage_options: dict[str, Any]) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    from litdata.streaming.fs_provider import _get_fs_provider

    try:
        return bool(_get_fs_provider(path, dict(storage_options)).exists(path))
    except Exception:  # noqa: BLE001 - a missing prefix may raise on some providers
        return False


def split_fingerprint(dm: TextDataModule, split: str, identity: dict[str, Any]) -> str:
    ident = {
        "format": PREPARED_FORMAT,
        "source": identity,
        "tokenizer": dm._tokenizer_fp,
        "eos": dm.eos_token_id,
        "dtype": dm.token_dtype,
        "chunk_tokens": dm.chunk_tokens,
        "packing": PACKING,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- prepare
def prepare_split(
    dm: TextDataModule,
    split: str,
    output_dir: str,
    *,
    num_workers: int = 1,
    storage_options: dict[str, Any] | None = None,
    shard_chars: int | None = None,
    scratch_dir: str | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """Tokenize ``dm``'s ``split`` into ``output_dir`` (a litdata dataset + ``mdlm_prepared.json``).

    Returns the manifest; None on a node that does not merge (multi-node, not the last rank).
    An ``output_dir`` that already holds this split with the same fingerprint is left as it is.
    """
    from mdlm.data import streaming  # optimize indirection (tests observe it)

    storage_options = dict(storage_options or {})
    enable_http_endpoint(storage_options)
    source = dm._source(split)
    identity = source.identity()
    fingerprint = split_fingerprint(dm, split, identity)
    num_nodes, node_rank = _num_nodes(), _node_rank()
    if num_nodes > 1 and not is_remote(output_dir):
        raise DataError(
            f"multi-node preparation (DATA_OPTIMIZER_NUM_NODES={num_nodes}) needs an object-store output_dir "
            f"(s3://..., gs://...), got {output_dir!r}: litdata merges the node indexes only through remote storage"
        )
    if num_nodes > 1 and overwrite:
        raise DataError(
            "--overwrite is not supported with several nodes (each node would delete the others' chunks): "
            f"delete {output_dir} first or use a new output_dir"
        )
    if _exists(_join(output_dir, PREPARED_FILE), storage_options):
        old = read_prepared_manifest(output_dir, storage_options, dm.cache_dir / "prepared")
        if old.get("fingerprint") == fingerprint and not overwrite:
            log.info("%s: already prepared (fingerprint %s): nothing to do", output_dir, fingerprint[:12])
            return old
        if not overwrite:
            raise DataError(
                f"{output_dir} holds a prepared {old.get('split')} dataset with another fingerprint "
                f"({str(old.get('fingerprint'))[:12]} != {fingerprint[:12]}): choose another output_dir or pass --overwrite"
            )
    elif _exists(_join(output_dir, "index.json"), storage_options) and not overwrite:
        raise DataError(f"{output_dir} already holds a litdata dataset without {PREPARED_FILE}: choose another output_dir or pass --overwrite")

    scratch = Path(scratch_dir or tempfile.gettempdir()) / f"mdlm-prepare-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    workers = max(1, int(num_workers))
    t0 = time.perf_counter()
    try:
        num_documents: int | None
        if source.is_hf and source.documents == "file":
            ds = source.hf_dataset()
            rows = len(ds)
            per = max(1, -(-rows // (8 * workers * num_nodes)))
            if shard_chars is not None:  # rows are documents: a rough rows-per-shard from the size
                per = max(1, min(per, shard_chars // 2000))
            ranges = [(a, min(a + per, rows)) for a in range(0, rows, per)]
            fn = _ShardTokenizer(dm.tokenizer, dm.eos_token_id, dm.token_dtype, 0, None, hf=ds, hf_ranges=ranges,
                                 text_column=source.text_column)
            num_shards, num_documents, num_chars = len(ranges), None, None
        else:
            total = sum(f.stat().st_size for f in source.files) if not source.is_hf else 1 << 30
            size = shard_chars or _default_shard_chars(total, workers * num_nodes)
            num_shards, num_documents, num_chars = _write_shards(source.iter_documents(), scratch / "shards", size)
            if num_documents == 0:
                raise DataError(f"{split} data ({source.describe()}) contains no text (0 non-blank documents)")
            fn = _ShardTokenizer(dm.tokenizer, dm.eos_token_id, dm.token_dtype, 0, str(scratch / "shards"))
        fn.piece = max(1, dm.chunk_tokens // 8)
        t_shard = time.perf_counter() - t0
        env = {
            "DATA_OPTIMIZER_CACHE_FOLDER": str(scratch / "chunks"),
            "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(scratch / "data"),
        }
        if "TOKENIZERS_PARALLELISM" not in os.environ:
            env["TOKENIZERS_PARALLELISM"] = "false"  # one core per litdata worker
        start_method = "fork" if "fork" in mp.get_all_start_methods() else None
        log.info("tokenizing %s (%s): %d shards over %d workers x %d nodes -> %s", split, source.describe(), num_shards,
                 workers, num_nodes, output_dir)
        from litdata import TokensLoader

        with _environ(**env), (contextlib.redirect_stdout(sys.stderr) if not verbose else contextlib.nullcontext()):
            streaming.optimize(
                fn=fn,
                inputs=list(range(num_shards)),
                output_dir=output_dir,
                chunk_size=dm.chunk_tokens,
                num_workers=workers,
                item_loader=TokensLoader(),
                reorder_files=False,
                keep_data_ordered=True,
                # litdata's output check (mode=None) raises when the prefix is not empty and then deletes it:
                # with several nodes a late node would refuse, or erase, the chunks an early node uploaded.
                # "append" skips both (there is no index.json before the merge, so chunk numbers start at 0).
                mode="overwrite" if overwrite else ("append" if num_nodes > 1 else None),
                storage_options=storage_options,
                verbose=verbose,
                start_method=start_method,
            )
        t_opt = time.perf_counter() - t0 - t_shard
        if num_nodes > 1 and node_rank != num_nodes - 1:
            log.info("node %d/%d: chunks written; the last node merges the index and writes %s", node_rank, num_nodes, PREPARED_FILE)
            return None
        index_path = fetch_small_file(_join(output_dir, "index.json"), scratch / "index.json", storage_options)
        index = json.loads(Path(index_path).read_text())
        dims = [int(c["dim"]) for c in index["chunks"]]
        from litdata import __version__ as litdata_version

        manifest = {
            "format": PREPARED_FORMAT,
            "split": split,
            "fingerprint": fingerprint,
            "source": source.describe(),
            "identity": identity,
            "documents": source.documents,
            "tokenizer": str(getattr(dm.tokenizer, "name_or_path", "")),
            "tokenizer_fingerprint": dm._tokenizer_fp,
            "vocab_size": dm.vocab_size,
            "eos_token_id": dm.eos_token_id,
            "mask_token_id": dm.mask_token_id,
            "dtype": dm.token_dtype,
            "chunk_tokens": dm.chunk_tokens,
            "packing": PACKING,
            "num_documents": num_documents,
            "num_characters": num_chars,
            "num_tokens": int(sum(dims)),
            "num_chunks": len(dims),
            "num_shards": num_shards,
            "num_workers": workers,
            "num_nodes": num_nodes,
            "seconds": {"shard": round(t_shard, 3), "tokenize_write": round(t_opt, 3)},
            "litdata": litdata_version,
        }
        (scratch / PREPARED_FILE).write_text(json.dumps(manifest, indent=1))
        _put_file(scratch / PREPARED_FILE, _join(output_dir, PREPARED_FILE), storage_options)
        log.info("%s split: %s tokens in %d chunks -> %s", split, manifest["num_tokens"], len(dims), output_dir)
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare(
    dm: TextDataModule,
    output_dir: str,
    *,
    splits: Sequence[str] | None = None,
    num_workers: int = 1,
    storage_options: dict[str, Any] | None = None,
    shard_chars: int | None = None,
    scratch_dir: str | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> dict[str, str]:
    """Prepare every configured split (or ``splits``) into ``<output_dir>/<split>``: split -> location."""
    storage_options = dict(storage_options or dm.storage_options or {})
    chosen = list(splits or [s for s in dm.sources])
    missing = [s for s in chosen if s not in dm.sources]
    if missing:
        raise DataError(f"no source configured for split(s) {', '.join(missing)} (configured: {', '.join(dm.sources) or 'none'})")
    out: dict[str, str] = {}
    for split in chosen:
        location = _join(output_dir, split)
        prepare_split(dm, split, location, num_workers=num_workers, storage_options=storage_options, shard_chars=shard_chars,
                      scratch_dir=scratch_dir, overwrite=overwrite, verbose=verbose)
        out[split] = location
    if _num_nodes() == 1 or _node_rank() == _num_nodes() - 1:
        _write_extras(dm, output_dir, out, storage_options, scratch_dir)
    return out


def _write_extras(dm: TextDataModule, output_dir: str, splits: dict[str, str], storage_options: dict[str, Any],
                  scratch_dir: str | None = None) -> None:
    """``<output_dir>/tokenizer/`` (the tokenizer used, with the [MASK]/[PAD] mdlm added) and
    ``<output_dir>/data_prepared.yaml`` (a config overlay pointing at the splits), locally or uploaded
    to the object store."""
    lines = ["# written by python -m mdlm.data.prepare: compose after the training config", "data:", "  init_args:", "    prepared:"]
    remote = is_remote(output_dir)
    lines += [f"      {k}: {v if remote else str(Path(v).resolve())}" for k, v in splits.items()]
    if storage_options:
        lines.append(f"    storage_options: {json.dumps(storage_options)}")
    overlay = "\n".join(lines) + "\n"
    if not remote:
        root = Path(output_dir)
        tok_dir = root / "tokenizer"
        if not (tok_dir / "tokenizer_config.json").is_file():
            dm.tokenizer.save_pretrained(str(tok_dir))
        (root / "data_prepared.yaml").write_text(overlay)
        return
    with tempfile.TemporaryDirectory(dir=scratch_dir) as tmp:
        local = Path(tmp)
        dm.tokenizer.save_pretrained(str(local / "tokenizer"))
        (local / "data_prepared.yaml").write_text(overlay)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            _put_file(path, _join(output_dir, path.relative_to(local).as_posix()), storage_options)


# ----------------------------------------------------------------------------- config / CLI
def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def data_section(configs: Sequence[str], overrides: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """(class_path, init_args) of the ``data`` section of the composed YAML configs + ``KEY=VALUE`` overrides."""
    import yaml

    data: dict[str, Any] = {}
    for path in configs:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
        section = cfg.get("data")
        if section is None:
            continue
        if isinstance(section, str):
            raise DataError(f"{path}: the data section must be a mapping with class_path/init_args, got {section!r}")
        if "class_path" in section and data.get("class_path") not in (None, section["class_path"]):
            data = {}  # another class: its init_args start over (as jsonargparse does)
        data = _merge(data, section)
    if "class_path" not in data:
        raise DataError(f"no data.class_path in {', '.join(configs)}")
    init_args = dict(data.get("init_args") or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"--set expects KEY=VALUE, got {item!r}")
        init_args[key] = yaml.safe_load(value)
    return data["class_path"], init_args


def data_module_from_config(configs: Sequence[str], overrides: Sequence[str] = ()) -> TextDataModule:
    class_path, init_args = data_section(configs, overrides)
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, TextDataModule)):
        raise DataError(f"{class_path} is not a TextDataModule: only packed-text data can be prepared")
    init_args.pop("prepared", None)  # preparing reads the sources
    return cls(**init_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mdlm prepare",
        description="Tokenize the data section of a training config once (litdata optimize, N workers, "
        "local folder or object store) for data.init_args.prepared.",
    )
    parser.add_argument("--config", action="append", required=True, help="YAML config(s); later ones override")
    parser.add_argument("--output_dir", required=True, help="local folder or s3://bucket/prefix; <split>/ per split")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes per node")
    parser.add_argument("--splits", default=None, help="comma-separated subset of train,val,test (default: all configured)")
    parser.add_argument("--storage_options", default=None, help='JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    parser.add_argument("--shard_chars", type=int, default=None, help="characters per work shard (default: ~8 per worker)")
    parser.add_argument("--scratch_dir", default=None, help="local scratch (default: the system temp folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a data init arg")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with another fingerprint")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else None
        dm = data_module_from_config(args.config, args.set)
        splits = args.splits.split(",") if args.splits else None
        out = prepare(dm, args.output_dir, splits=splits, num_workers=args.num_workers, storage_options=storage_options,
                      shard_chars=args.shard_chars, scratch_dir=args.scratch_dir, overwrite=args.overwrite, verbose=args.verbose)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"mdlm prepare: error: {err}", file=sys.stderr)
        return 2
    print("prepared: " + json.dumps(out))
    if not is_remote(args.output_dir):
        print(f"train from it: mdlm fit --config {' --config '.join(args.config)} --config {Path(args.output_dir) / 'data_prepared.yaml'}")
    else:
        print("train from it: set data.init_args.prepared to " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
