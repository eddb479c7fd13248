"""WikiText (2 or 103, raw) as packed article documents.

Local: a folder with ``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw`` (the files of
``wikitext-2-raw-v1.zip`` / ``wikitext-103-raw-v1.zip``). The repository's offline sample
``shared/data/wikitext-2-raw/`` ships only a prefix of the train split, ``wiki.train.head.raw``:
pass ``train_file="wiki.train.head.raw"``. Without ``data_dir`` the Hugging Face dataset
``wikitext`` / ``hf_name`` (``wikitext-2-raw-v1`` or ``wikitext-103-raw-v1``) is loaded (needs
``datasets`` and the hub); its rows are the file's lines and are joined back before splitting.

A document is an article: from a `` = Title = `` line to the next one (see
:mod:`mdlm.data.packing`); articles are joined with EOS and read as blocks of ``block_length``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdlm.data.text import DataError, TextDataModule

__all__ = ["WIKITEXT_HF_CONFIGS", "WikiTextDataModule"]

WIKITEXT_HF_CONFIGS = ("wikitext-2-raw-v1", "wikitext-103-raw-v1", "wikitext-2-v1", "wikitext-103-v1")
#: our split -> the Hugging Face ``wikitext`` split
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class WikiTextDataModule(TextDataModule):
    """WikiText articles, packed with EOS, cut into blocks of ``block_length`` (default 150).

    Args:
        data_dir: folder with the raw split files; None loads ``wikitext``/``hf_name`` from the hub.
        hf_name: Hugging Face config when ``data_dir`` is None.
        train_file / val_file / test_file: file names inside ``data_dir`` (None skips the split);
            e.g. ``train_file="wiki.train.head.raw"`` for the shipped partial train split.
        prepared: split -> a dataset from ``python -m mdlm.data.prepare`` (with ``data_dir=None``
            prepared splits are not loaded from the hub).
        **kwargs: the other arguments of :class:`~mdlm.data.text.TextDataModule`, with its defaults
            (``tokenizer``, ``add_mask_token``, ``add_pad_token``, ``block_length``, ``batch_size``,
            ``eval_batch_size``, ``num_workers``, ``cache_dir``, ``seed``, ``chunk_tokens``,
            ``storage_options``, ``resume_topology``); the CLI (jsonargparse) lists them as this
            class's own. Its sources, ``documents`` and ``text_column`` are set here.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        hf_name: str = "wikitext-2-raw-v1",
        train_file: str | None = "wiki.train.raw",
        val_file: str | None = "wiki.valid.raw",
        test_file: str | None = "wiki.test.raw",
        prepared: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        names = {"train": train_file, "val": val_file, "test": test_file}
        files: dict[str, str | None] = {"train": None, "val": None, "test": None}
        hf_path, hf_config, hf_splits = None, None, None
        if data_dir is None:
            if hf_name not in WIKITEXT_HF_CONFIGS:
                raise DataError(f"hf_name={hf_name!r} is not a WikiText config ({', '.join(WIKITEXT_HF_CONFIGS)})")
            done = {k for k, v in (prepared or {}).items() if v}
            splits = {k: v for k, v in HF_SPLITS.items() if names[k] and k not in done}
            if splits:  # else every split is prepared: nothing to load from the hub
                hf_path, hf_config, hf_splits = "wikitext", hf_name, splits
        else:
            files = _split_files(Path(data_dir).expanduser(), names)
        super().__init__(
            train_files=files["train"],
            val_files=files["val"],
            test_files=files["test"],
            hf_path=hf_path,
            hf_name=hf_config,
            hf_splits=hf_splits,
            text_column="text",
            documents="wikitext",
            prepared=prepared,
            **kwargs,
        )


def _split_files(folder: Path, names: dict[str, str | None]) -> dict[str, str | None]:
    """The path of every named split file inside ``folder`` (None for a skipped split); one-line errors."""
    if not folder.is_dir():
        raise FileNotFoundError(f"WikiText folder {str(folder)!r} does not exist")
    files: dict[str, str | None] = {}
    for split, name in names.items():
        if not name:
            files[split] = None
            continue
        path = folder / name
        if not path.is_file():
            present = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file())) or "no files"
            hint = " (the shipped sample has wiki.train.head.raw: pass train_file='wiki.train.head.raw')" if split == "train" else ""
            raise FileNotFoundError(f"WikiText {split} file {str(path)!r} is missing; {folder} has: {present}{hint}")
        files[split] = str(path)
    return files
