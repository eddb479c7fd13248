"""Dataset loaders of the offline lm-eval tasks in this folder (``custom_dataset: !function utils.<name>``).

lm-eval resolves ``!function utils.<name>`` against the YAML's own folder, so the JSONL is found
from any working directory, and nothing is downloaded (no Hub, no ``datasets`` cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _jsonl(name: str) -> list[dict]:
    with open(HERE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def arithmetic(**kwargs) -> datasets.DatasetDict:
    """``arithmetic_mc.jsonl`` (written by ``make_arithmetic_mc.py``) as the ``test`` split.

    lm-eval passes the task's ``metadata`` and ``dataset_kwargs`` as keyword arguments; none is needed.
    """
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_jsonl("arithmetic_mc.jsonl"))})


def wikitext_excerpt(**kwargs) -> datasets.DatasetDict:
    """The paragraphs of ``wikitext2_valid_excerpt.txt`` as the ``test`` split, one document each.

    The file is the first 47 lines of WikiText-2 (raw) ``wiki.valid.raw`` — the article "Homarus
    gammarus" — verbatim; CC BY-SA 3.0 (README.md here). Headings and blank lines are dropped; a
    paragraph keeps WikiText's tokenized spacing (`` , `` and ``@-@``) and loses its edge spaces.
    """
    lines = (HERE / "wikitext2_valid_excerpt.txt").read_text(encoding="utf-8").splitlines()
    paragraphs = [line.strip() for line in lines if line.strip() and not line.strip().startswith("= ")]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": p} for p in paragraphs])})
