"""litdata storage and streaming of token chunks, for :class:`~mdlm.data.text.TextDataModule` and
:mod:`mdlm.data.prepare`.

* Writing: :func:`optimize` (litdata ``optimize`` behind a module-level indirection, so tests can
  observe or forbid rebuilds), :class:`_StreamSlicer` (cuts a raw token file into chunks) and
  :func:`_environ` (litdata's scratch folders for one build). Tokens are stored as ``uint16`` when
  ``len(tokenizer) <= 65536`` (else ``int32``, :func:`token_dtype_for`) and cast to ``torch.long``
  by :func:`collate_blocks`.
* Reading: :class:`BlockDataset` (a litdata ``StreamingDataset`` whose items carry their global
  block index) and :class:`BlockLoader`. Batches: ``{"input_ids": LongTensor[B, L], "index":
  LongTensor[B]}``, where ``index`` is the global block index (stable across ranks and workers;
  evaluation randomness can be keyed on it). The train loader's state (saved by Lightning in
  checkpoints) resumes the exact sample sequence; a resume with another world size, worker count or
  batch size is refused (``resume_topology="strict"``, default) or restriped by litdata without
  duplicates (``"elastic"``; the order then differs from an uninterrupted run).
* Locations: local folders or object-store URLs (:func:`is_remote`; ``storage_options`` such as
  ``endpoint_url`` reach litdata, :func:`enable_http_endpoint`), small files fetched whole
  (:func:`fetch_small_file`), a prepared dataset's ``mdlm_prepared.json`` manifest
  (:func:`read_prepared_manifest`) and the default cache root (:func:`default_cache_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex

from mdlm.data.sources import DataError, _one_line

__all__ = [
    "PREPARED_FILE",
    "BlockDataset",
    "BlockLoader",
    "collate_blocks",
    "default_cache_dir",
    "enable_http_endpoint",
    "fetch_small_file",
    "is_remote",
    "optimize",
    "read_prepared_manifest",
    "token_dtype_for",
]

#: manifest of a prepared dataset (beside litdata's index.json), see mdlm.data.prepare
PREPARED_FILE = "mdlm_prepared.json"
PREPARED_FORMAT = 1
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "r2://", "azure://", "az://", "abfs://", "hf://")


def token_dtype_for(vocab_size: int) -> str:
    """``uint16`` when every id fits (ids up to 65,535), else ``int32`` (torch has few uint32 ops)."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def enable_http_endpoint(storage_options: dict[str, Any] | None) -> None:
    """Let litdata's obstore client talk to a plain-``http://`` S3 endpoint (MinIO, moto, ...).

    litdata 0.2.7x builds obstore ``S3Store`` clients without ``allow_http``, so uploads and chunk
    downloads to an ``http://`` ``endpoint_url`` fail with "HTTP error: builder error"; boto3 (index
    files) works. Called before any obstore client exists (forked workers inherit it).
    """
    endpoint = str((storage_options or {}).get("endpoint_url") or "")
    if not endpoint.startswith("http://"):
        return
    try:
        from litdata.streaming import downloader
    except ImportError:  # pragma: no cover
        return
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = "true"


def fetch_small_file(url: str, dest: Path, storage_options: dict[str, Any] | None) -> Path:
    """Copy ``url`` (a local path or an object-store URL) to ``dest``; one-line error when absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(url):
        src = Path(url).expanduser()
        if not src.is_file():
            raise DataError(f"{src} does not exist")
        return src
    from litdata.streaming.fs_provider import _get_fs_provider

    enable_http_endpoint(storage_options)
    provider = _get_fs_provider(url, dict(storage_options or {}))
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        provider.download_file(url, str(tmp))
    except Exception as err:  # noqa: BLE001 - missing object, no credentials, unreachable endpoint
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not read {url}: {type(err).__name__}: {_one_line(err, 160)}") from err
    os.replace(tmp, dest)
    return dest


def read_prepared_manifest(location: str, storage_options: dict[str, Any] | None = None, scratch: Path | None = None) -> dict[str, Any]:
    """The ``mdlm_prepared.json`` of a prepared split (local folder or URL)."""
    scratch = scratch or default_cache_dir() / "prepared"
    key = hashlib.sha256(str(location).encode()).hexdigest()[:16]
    url = str(location).rstrip("/") + "/" + PREPARED_FILE
    try:
        path = fetch_small_file(url, scratch / key / PREPARED_FILE, storage_options)
    except DataError as err:
        raise DataError(
            f"{location} is not a prepared mdlm dataset (no {PREPARED_FILE}: {err}); "
            "write one with: python -m mdlm.data.prepare --config CONFIG --output_dir DIR"
        ) from err
    manifest = json.loads(Path(path).read_text())
    if manifest.get("format") != PREPARED_FORMAT:
        raise DataError(f"{location}: prepared format {manifest.get('format')!r} is not {PREPARED_FORMAT}; prepare it again")
    return manifest


def default_cache_dir() -> Path:
    """``$MDLM_CACHE_DIR`` or ``~/.cache/mdlm``."""
    return Path(os.environ.get("MDLM_CACHE_DIR") or Path.home() / ".cache" / "mdlm").expanduser()


def collate_blocks(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack blocks into ``{"input_ids": LongTensor[B, L], "index": LongTensor[B]}``."""
    ids = np.stack([np.asarray(it["input_ids"]) for it in items]).astype(np.int64)
    index = torch.tensor([int(it["index"]) for it in items], dtype=torch.long)
    return {"input_ids": torch.from_numpy(ids), "index": index}


class BlockDataset(StreamingDataset):
    """A litdata StreamingDataset whose items carry their global block index."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        if isinstance(index, ChunkedIndex):
            return {"input_ids": item, "index": index.index}
        if isinstance(index, int):
            return {"input_ids": item, "index": index}
        return item  # slices / keys: plain items


class BlockLoader(StreamingDataLoader):
    """StreamingDataLoader that refuses a resume litdata cannot continue exactly (one line).

    litdata replays the exact sample sequence when world size, workers and batch size are unchanged;
    otherwise it restripes the rest of the epoch ("elastic" resume: no duplicates, another order).
    With ``resume_topology="strict"`` that change is an error instead.
    """

    def __init__(self, *args: Any, resume_topology: str = "strict", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_topology = resume_topology

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        state = obj.get("dataset", {}) if isinstance(obj, dict) else {}
        if self.resume_topology == "strict" and state:
            env = self.dataset.distributed_env
            now = {"world_size": int(env.world_size), "num_workers": max(self.num_workers, 1), "batch_size": int(self.batch_size or 0)}
            then = {k: int(state.get(k, now[k]) or 1) for k in now}
            if then != now:
                diff = ", ".join(f"{k} {then[k]} -> {now[k]}" for k in now if then[k] != now[k])
                raise DataError(
                    f"cannot resume the train stream exactly: the checkpoint was written with "
                    f"world_size={then['world_size']}, num_workers={then['num_workers']}, batch_size={then['batch_size']} "
                    f"({diff}); resume with the same devices x nodes, data.num_workers and batch_size, "
                    "or set data.resume_topology=elastic (litdata restripes the rest of the epoch: no duplicates, another order)"
                )
        for key, mine in (("seed", getattr(self.dataset, "seed", None)), ("shuffle", getattr(self.dataset, "shuffle", None))):
            if state and key in state and mine is not None and state[key] != mine:
                raise DataError(f"cannot resume the train stream: the checkpoint's {key}={state[key]!r} differs from this run's {mine!r}")
        super().load_state_dict(obj)


class _StreamSlicer:
    """optimize() fn: chunk ``i`` of the token stream file (exactly ``chunk_tokens`` tokens)."""

    def __init__(self, path: str, dtype: str, chunk_tokens: int) -> None:
        self.path, self.dtype, self.chunk_tokens = path, dtype, chunk_tokens

    def __call__(self, chunk: int) -> np.ndarray:
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        start = chunk * self.chunk_tokens
        return np.array(data[start : start + self.chunk_tokens])


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def optimize(*args: Any, **kwargs: Any) -> None:
    """litdata.optimize (module-level indirection: tests can observe or forbid rebuilds)."""
    from litdata import optimize as _optimize

    _optimize(*args, **kwargs)
