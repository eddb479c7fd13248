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

from mdlm.data.text import CHUNK_TOKENS, DataError, TextDataModule

__all__ = ["WIKITEXT_HF_CONFIGS", "WikiTextDataModule"]

WIKITEXT_HF_CONFIGS = ("wikitext-2-raw-v1", "wikitext-103-raw-v1", "wikitext-2-v1", "wikitext-103-v1")


class WikiTextDataModule(TextDataModule):
    """WikiText articles, packed with EOS, cut into blocks of ``block_length`` (default 150).

    Args:
        data_dir: folder with the raw split files; None loads ``wikitext``/``hf_name`` from the hub.
        hf_name: Hugging Face config when ``data_dir`` is None.
        train_file / val_file / test_file: file names inside ``data_dir`` (None skips the split);
            e.g. ``train_file="wiki.train.head.raw"`` for the shipped partial train split.
        The other arguments are :class:`~mdlm.data.text.TextDataModule`'s (``prepared``: split ->
        a dataset from ``python -m mdlm.data.prepare``; with ``data_dir=None`` prepared splits are not
        loaded from the hub).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        hf_name: str = "wikitext-2-raw-v1",
        train_file: str | None = "wiki.train.raw",
        val_file: str | None = "wiki.valid.raw",
        test_file: str | None = "wiki.test.raw",
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
        storage_options: dict | None = None,
        resume_topology: str = "strict",
    ) -> None:
        common = dict(
            documents="wikitext",
            tokenizer=tokenizer,
            add_mask_token=add_mask_token,
            add_pad_token=add_pad_token,
            block_length=block_length,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            cache_dir=cache_dir,
            seed=seed,
            chunk_tokens=chunk_tokens,
            prepared=prepared,
            storage_options=storage_options,
            resume_topology=resume_topology,
        )
        done = {k for k, v in (prepared or {}).items() if v}
        if data_dir is None:
            if hf_name not in WIKITEXT_HF_CONFIGS:
                raise DataError(f"hf_name={hf_name!r} is not a WikiText config ({', '.join(WIKITEXT_HF_CONFIGS)})")
            splits = {k: v for k, v in (("train", "train"), ("val", "validation"), ("test", "test")) if {"train": train_file, "val": val_file, "test": test_file}[k] and k not in done}
            if not splits:  # every split is prepared: nothing to load from the hub
                super().__init__(**common)
                return
            super().__init__(hf_path="wikitext", hf_name=hf_name, hf_splits=splits, **common)
            return
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"WikiText folder {str(folder)!r} does not exist")
        files: dict[str, str | None] = {}
        for split, name in (("train", train_file), ("val", val_file), ("test", test_file)):
            if not name:
                files[split] = None
                continue
            path = folder / name
            if not path.is_file():
                present = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file())) or "no files"
                hint = " (the shipped sample has wiki.train.head.raw: pass train_file='wiki.train.head.raw')" if split == "train" else ""
                raise FileNotFoundError(f"WikiText {split} file {str(path)!r} is missing; {folder} has: {present}{hint}")
            files[split] = str(path)
        super().__init__(train_files=files["train"], val_files=files["val"], test_files=files["test"], **common)
