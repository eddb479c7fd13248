"""Where a split's text comes from, read as documents: local files or a Hugging Face dataset split.

A :class:`SplitSource` is one split's sources for :class:`~mdlm.data.text.TextDataModule` (and
:mod:`mdlm.data.prepare`): ``.txt``/``.raw`` (any other suffix) files are UTF-8 plain text;
``.jsonl``/``.json`` (JSON lines or a JSON array) and ``.parquet`` hold records whose ``text_column``
is the text; a Hugging Face split is loaded lazily with ``datasets`` (:func:`load_hf_split`).
``iter_documents()`` streams the split's documents in source order (what a document is:
:mod:`mdlm.data.packing`). ``identity()`` is what the tokens depend on besides the tokenizer: the
files' content hashes (:func:`file_sha256`) or the Hugging Face dataset fingerprint, never paths.

:class:`DataError` is the one-line error of the text data pipeline (sources, streaming, the module).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdlm.data.packing import iter_line_documents, text_lines

__all__ = ["DataError", "SplitSource", "file_sha256", "load_hf_split"]

TEXT_SUFFIXES_JSONL = (".jsonl", ".json")
TEXT_SUFFIXES_PARQUET = (".parquet",)


class DataError(ValueError):
    """Bad data configuration or input (one-line message naming what is wrong)."""


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (memoized per path, size and mtime within the process)."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_MEMO[memo_key] = h.hexdigest()
    return _SHA_MEMO[memo_key]



@dataclass
class SplitSource:
    """Where one split's text comes from: local files or a Hugging Face dataset split."""

    split: str
    files: tuple[Path, ...] = ()
    hf_path: str | None = None
    hf_name: str | None = None
    hf_split: str | None = None
    text_column: str = "text"
    documents: str = "file"
    _hf_dataset: Any = field(default=None, repr=False, compare=False)

    @property
    def is_hf(self) -> bool:
        return self.hf_path is not None

    def describe(self) -> str:
        if self.is_hf:
            cfg = f", {self.hf_name}" if self.hf_name else ""
            return f"Hugging Face {self.hf_path}{cfg} [{self.hf_split}]"
        return ", ".join(str(f) for f in self.files)

    # -- Hugging Face -------------------------------------------------------------------------
    def hf_dataset(self) -> Any:
        if self._hf_dataset is None:
            self._hf_dataset = load_hf_split(self.hf_path, self.hf_name, self.hf_split)
            if self.text_column not in self._hf_dataset.column_names:
                raise DataError(
                    f"Hugging Face dataset {self.hf_path!r} [{self.hf_split}] has no column {self.text_column!r} "
                    f"(columns: {', '.join(self._hf_dataset.column_names)}); set text_column"
                )
        return self._hf_dataset

    # -- identity -----------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What the tokens depend on (besides the tokenizer): content hashes, not paths."""
        ident: dict[str, Any] = {"documents": self.documents, "text_column": self.text_column}
        if self.is_hf:
            ds = self.hf_dataset()
            ident["hf"] = [self.hf_path, self.hf_name, self.hf_split, getattr(ds, "_fingerprint", None)]
        else:
            ident["files"] = [[f.suffix.lower(), file_sha256(f)] for f in self.files]
        return ident

    # -- documents ----------------------------------------------------------------------------
    def iter_records(self) -> Iterator[tuple[str, str]]:
        """(where, text) per record: a whole plain-text file, or one JSONL/parquet/HF row."""
        if self.is_hf:
            ds = self.hf_dataset().select_columns([self.text_column])
            row = 0
            for batch in ds.iter(batch_size=1000):
                for text in batch[self.text_column]:
                    where = f"{self.describe()} row {row}"
                    yield where, _check_text(text, where, self.text_column)
                    row += 1
            return
        for path in self.files:
            suffix = path.suffix.lower()
            if suffix in TEXT_SUFFIXES_JSONL:
                yield from _iter_jsonl(path, self.text_column)
            elif suffix in TEXT_SUFFIXES_PARQUET:
                yield from _iter_parquet(path, self.text_column)
            else:
                try:
                    yield str(path), path.read_text(encoding="utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path} is not UTF-8 text ({_one_line(err)})") from err

    def iter_documents(self) -> Iterator[str]:
        """The split's documents (see :mod:`mdlm.data.packing`), in source order, streaming.

        Plain-text files are read line by line except in ``"file"`` mode. With ``"wikitext"`` the
        records of a JSONL/parquet/HF source are treated as consecutive lines of one raw text
        (Hugging Face ``wikitext`` stores one line per row).
        """
        mode = self.documents
        if self.is_hf or mode == "file":
            sources: list[Any] = [self]
        else:
            sources = [SplitSource(self.split, files=(f,), text_column=self.text_column, documents=mode) for f in self.files]
        for src in sources:
            if mode == "file":
                for _, text in src.iter_records():
                    if text.strip():
                        yield text.strip()
            elif src.is_hf or _is_record_file(src.files[0]):
                if mode == "wikitext":
                    lines = (ln for _, text in src.iter_records() for ln in _record_lines(text))
                    yield from iter_line_documents(lines, mode)
                else:
                    for _, text in src.iter_records():
                        yield from iter_line_documents(text_lines(text), mode)
            else:
                path = src.files[0]
                try:
                    with open(path, encoding="utf-8", newline="") as f:
                        yield from iter_line_documents(f, mode)
                except UnicodeDecodeError as err:
                    raise DataError(f"{path} is not UTF-8 text ({_one_line(err)})") from err


def _record_lines(text: str) -> Iterator[str]:
    """A record as whole lines: ``""`` is a blank line (HF wikitext's empty rows), ends added."""
    if not text:
        yield "\n"
        return
    for line in text_lines(text):
        yield line if line.endswith(("\n", "\r")) else line + "\n"


def _is_record_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES_JSONL + TEXT_SUFFIXES_PARQUET


def _check_text(value: Any, where: str, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} holds {type(value).__name__}, not text")
    return value


def _iter_jsonl(path: Path, column: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
        f.seek(0)
        if head.startswith("["):  # a JSON array of records
            records = json.load(f)
            for i, rec in enumerate(records):
                yield _record_text(rec, f"{path} record {i}", column)
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno} is not valid JSON ({err.msg})") from err
            yield _record_text(rec, f"{path}:{lineno}", column)


def _record_text(rec: Any, where: str, column: str) -> tuple[str, str]:
    if not isinstance(rec, dict) or column not in rec:
        keys = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
        raise DataError(f"{where} has no {column!r} field (found: {keys}); set text_column")
    return where, _check_text(rec[column], where, column)


def _iter_parquet(path: Path, column: str) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow comes with datasets
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from err
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path} has no column {column!r} (columns: {', '.join(names)}); set text_column")
    row = 0
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for text in batch.column(0).to_pylist():
            yield f"{path} row {row}", _check_text(text, f"{path} row {row}", column)
            row += 1


def load_hf_split(path: str, name: str | None, split: str) -> Any:
    """``datasets.load_dataset(path, name, split=split)`` with one-line errors (lazy import)."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            f"loading the Hugging Face dataset {path!r} needs the `datasets` package "
            "(pip install 'mdlm[hf]'), or use local files"
        ) from err
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as err:  # noqa: BLE001 - network, missing config/split, ...: one clear line
        cfg = f" (config {name!r})" if name else ""
        raise DataError(
            f"could not load Hugging Face dataset {path!r}{cfg} split {split!r}: {type(err).__name__}: "
            f"{_one_line(err, 160)}; the hub may be unreachable (offline?) - use local files instead"
        ) from err
