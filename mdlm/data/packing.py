"""Documents -> one token stream -> fixed-length blocks (pure functions, no I/O).

What a *document* is
--------------------
A document is one unit of text that is tokenized on its own and followed by EOS in the stream:

* ``"file"``: a whole plain-text file, or one record (row) of a JSONL / parquet / Hugging Face
  dataset;
* ``"line"``: every non-blank line;
* ``"paragraph"``: every block of lines separated by blank lines;
* ``"wikitext"``: a WikiText article: it starts at a title line `` = Title = `` (exactly one ``=``
  on each side) and runs up to the next title line; `` = = Section = = `` lines (two or more
  ``=``) are headings *inside* the article. A title line stands between blank lines (formula
  remnants like `` = 1 henry and capacitance C = `` inside a paragraph are not titles). Text before
  the first title forms a document only if it is not blank.

Every document is stripped of leading/trailing whitespace; blank documents are skipped.

Packing
-------
Documents are tokenized without special tokens (no BOS) and each is followed by one EOS:
``doc_0 EOS doc_1 EOS ... doc_n EOS``. The stream is cut into consecutive blocks of ``L`` tokens
regardless of document borders (a document may span blocks; a block may hold several documents);
the last ``len(stream) % L`` tokens do not fill a block and are not part of any block.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "DOCUMENT_MODES",
    "count_blocks",
    "is_wikitext_title",
    "pack_documents",
    "split_blocks",
    "split_documents",
    "iter_line_documents",
    "iter_wikitext_articles",
    "split_wikitext_articles",
    "text_lines",
]

DOCUMENT_MODES = ("file", "line", "paragraph", "wikitext")


def is_wikitext_title(line: str) -> bool:
    """True for an article title line `` = Title = `` (one ``=`` each side), False for sections."""
    s = line.strip()
    if len(s) < 5 or not (s.startswith("= ") and s.endswith(" =")):
        return False
    inner = s[2:-2]
    return bool(inner.strip()) and not inner.startswith("=") and not inner.endswith("=")


def iter_wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """Articles (stripped, non-blank) from an iterable of raw WikiText lines, streaming.

    A title line must also stand between blank lines (as every WikiText heading does): this keeps
    formula remnants such as `` = 1 henry and capacitance C = `` inside their article.
    """
    current: list[str] = []
    prev_blank = True  # the start of the text counts as a blank line
    it = iter(lines)
    line = next(it, None)
    while line is not None:
        nxt = next(it, None)
        is_title = is_wikitext_title(line) and prev_blank and (nxt is None or not nxt.strip())
        if is_title and current:
            article = "".join(current).strip()
            if article:
                yield article
            current = []
        current.append(line)
        prev_blank = not line.strip()
        line = nxt
    article = "".join(current).strip()
    if article:
        yield article


def text_lines(text: str) -> Iterator[str]:
    """Lines of ``text`` with their ends, split exactly as iterating over a text file does."""
    return iter(io.StringIO(text, newline=""))


def split_wikitext_articles(text: str) -> list[str]:
    """Split raw WikiText into articles (see the module docstring); each article is stripped."""
    return list(iter_wikitext_articles(text_lines(text)))


def iter_line_documents(lines: Iterable[str], mode: str) -> Iterator[str]:
    """Documents from raw lines (with or without line ends) for ``mode`` line/paragraph/wikitext."""
    if mode == "wikitext":
        yield from iter_wikitext_articles(lines)
    elif mode == "line":
        for line in lines:
            if line.strip():
                yield line.strip()
    elif mode == "paragraph":
        para: list[str] = []
        for line in lines:
            if line.strip():
                para.append(line if line.endswith("\n") else line + "\n")
            elif para:
                yield "".join(para).strip()
                para = []
        if para:
            yield "".join(para).strip()
    else:
        raise ValueError(f"unknown line-based document mode {mode!r}; expected line, paragraph or wikitext")


def split_documents(text: str, mode: str) -> list[str]:
    """Documents of ``text`` under ``mode`` (one of :data:`DOCUMENT_MODES`), stripped, non-blank."""
    if mode == "file":
        return [text.strip()] if text.strip() else []
    if mode not in DOCUMENT_MODES:
        raise ValueError(f"unknown document mode {mode!r}; expected one of {', '.join(DOCUMENT_MODES)}")
    return list(iter_line_documents(text_lines(text), mode))


def pack_documents(documents: Iterable[Sequence[int]], eos_token_id: int, dtype: np.dtype | type = np.int64) -> np.ndarray:
    """Concatenate tokenized documents, each followed by ``eos_token_id``, into one 1-D array."""
    parts: list[np.ndarray] = []
    eos = np.array([eos_token_id], dtype=dtype)
    for doc in documents:
        parts.append(np.asarray(doc, dtype=dtype).reshape(-1))
        parts.append(eos)
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts)


def count_blocks(num_tokens: int, block_length: int) -> int:
    """Number of full blocks of ``block_length`` tokens in a stream of ``num_tokens``."""
    if block_length < 1:
        raise ValueError(f"block_length={block_length} must be >= 1")
    return num_tokens // block_length


def split_blocks(stream: np.ndarray, block_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks[n, block_length], tail)``: consecutive full blocks and the leftover tail.

    ``np.concatenate([blocks.reshape(-1), tail])`` is the stream again (nothing lost or repeated).
    """
    n = count_blocks(len(stream), block_length)
    cut = n * block_length
    return stream[:cut].reshape(n, block_length), stream[cut:]


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to ``size`` consecutive items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
