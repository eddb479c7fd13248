"""Packing, the litdata token cache, DDP sharding and the real WikiText files (all offline).

Expected values come from independent computations: hand-written corpora and literal results,
the tokenizer applied directly to each document, and simple re-derivations in the tests.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import GPT2, SCRIPTS, WIKI, make_lines, needs_wiki, needs_wiki_gpt2, token_stream
from conftest import REPO_ROOT as ROOT

from mdlm.data import packing, streaming
from mdlm.data.packing import count_blocks, pack_documents, split_blocks, split_documents, split_wikitext_articles
from mdlm.data.text import DataError, TextDataModule
from mdlm.data.tokenizer import TokenizerError, load_tokenizer, train_bpe_tokenizer
from mdlm.data.wikitext import WikiTextDataModule


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def corpus(tmp_path):
    """train/val text files, one document per line."""
    train, val = make_lines(80, 0, "document"), make_lines(30, 1, "valdoc")
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "val.txt").write_text("\n\n".join(val) + "\n")  # blank lines are not documents
    # the BPE that tokenizer="bpe:300" trains on the train split, as a folder for val-only modules
    train_bpe_tokenizer(None, 300, texts=train, save_dir=tmp_path / "bpe300")
    return {"dir": tmp_path, "train": train, "val": val, "tok": str(tmp_path / "bpe300")}


def module(corpus, **kw):
    args = dict(
        train_files=str(corpus["dir"] / "train.txt"),
        val_files=str(corpus["dir"] / "val.txt"),
        documents="line",
        tokenizer="bpe:300",
        block_length=16,
        batch_size=4,
        cache_dir=str(corpus["dir"] / "cache"),
    )
    args.update(kw)
    return TextDataModule(**args)



def read_split(dm, split):
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader() if split == "test" else dm.train_dataloader()
    batches = list(loader)
    ids = torch.cat([b["input_ids"] for b in batches]) if batches else torch.zeros(0, dm.block_length, dtype=torch.long)
    index = torch.cat([b["index"] for b in batches]) if batches else torch.zeros(0, dtype=torch.long)
    return ids, index, batches


REAL_OPTIMIZE = streaming.optimize


class OptimizeSpy:
    """Wraps litdata optimize: counts calls and records the scratch folders it was given."""

    def __init__(self, monkeypatch, fail: BaseException | None = None):
        self.calls, self.env, self.fail = 0, [], fail
        self.real = REAL_OPTIMIZE
        monkeypatch.setattr(streaming, "optimize", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.env.append({k: os.environ.get(k) for k in ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")})
        if self.fail is not None:
            self.real(*args, **kwargs)  # the half-written output exists, then the run "dies"
            raise self.fail
        return self.real(*args, **kwargs)


def forbid_optimize(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the token cache was rebuilt")

    monkeypatch.setattr(streaming, "optimize", boom)


# --------------------------------------------------------------------------- packing
def test_pack_hand_made_corpus():
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    stream = pack_documents(docs, eos_token_id=0)
    assert stream.tolist() == [5, 6, 7, 0, 8, 0, 9, 10, 11, 12, 13, 0]
    blocks, tail = split_blocks(stream, 5)
    assert blocks.tolist() == [[5, 6, 7, 0, 8], [0, 9, 10, 11, 12]]
    assert tail.tolist() == [13, 0]
    assert count_blocks(12, 5) == 2 and count_blocks(12, 12) == 1 and count_blocks(11, 12) == 0
    assert pack_documents([], 0).tolist() == []


@pytest.mark.parametrize("block_length", [1, 3, 7, 16, 1000])
def test_pack_no_token_lost_or_duplicated(block_length):
    rng = random.Random(block_length)
    docs = [[rng.randint(1, 50) for _ in range(rng.randint(1, 40))] for _ in range(60)]
    stream = pack_documents(docs, eos_token_id=0)
    # EOS right after every document: positions from the cumulative lengths
    ends = np.cumsum([len(d) + 1 for d in docs]) - 1
    assert (stream[ends] == 0).all() and (stream == 0).sum() == len(docs)
    assert stream[stream != 0].tolist() == [t for d in docs for t in d]
    blocks, tail = split_blocks(stream, block_length)
    assert blocks.shape == (len(stream) // block_length, block_length)
    assert len(tail) == len(stream) % block_length
    assert np.concatenate([blocks.reshape(-1), tail]).tolist() == stream.tolist()


WIKI_SAMPLE = """ 
 = Alpha Beta = 
 
 Alpha is the first letter . 
 
 = = History = = 
 
 Alpha came first , then x 
 = 1 henry and capacitance C = 
 1 farad follows . 
 
 = = = Notes = = = 
 
 A note . 
 
 = Gamma = 
 
 Gamma is third . 
 """


def test_wikitext_splitter_hand_written():
    articles = split_wikitext_articles(WIKI_SAMPLE)
    assert articles == [
        "= Alpha Beta = \n \n Alpha is the first letter . \n \n = = History = = \n \n Alpha came first , then x \n"
        " = 1 henry and capacitance C = \n 1 farad follows . \n \n = = = Notes = = = \n \n A note .",
        "= Gamma = \n \n Gamma is third .",
    ]
    assert split_documents(WIKI_SAMPLE, "wikitext") == articles
    # text before the first title is its own document only when it is not blank
    assert split_wikitext_articles("intro line\n \n = T = \n \n body\n") == ["intro line", "= T = \n \n body"]
    assert packing.is_wikitext_title(" = Title = \n") and not packing.is_wikitext_title(" = = Section = = \n")


def test_document_modes():
    text = "  one\ntwo  \n\n\nthree\n \nfour\n"
    assert split_documents(text, "line") == ["one", "two", "three", "four"]
    assert split_documents(text, "paragraph") == ["one\ntwo", "three", "four"]
    assert split_documents(text, "file") == ["one\ntwo  \n\n\nthree\n \nfour"]
    assert split_documents(" \n\n", "file") == []
    with pytest.raises(ValueError, match="unknown document mode 'words'"):
        split_documents(text, "words")


# --------------------------------------------------------------------------- the litdata cache
def test_tokens_read_back_equal_tokenizer_output(corpus, monkeypatch):
    spy = OptimizeSpy(monkeypatch)
    dm = module(corpus)
    tok = dm.tokenizer
    assert dm.vocab_size == len(tok) == 300 and dm.mask_token_id == 1 and dm.eos_token_id == 0 and dm.pad_token_id == 2
    dm.prepare_data()
    assert spy.calls == 2  # train and val
    dm.setup("fit")
    for split, docs in (("val", corpus["val"]), ("train", corpus["train"])):
        stream = token_stream(tok, docs, dm.eos_token_id)
        assert dm.num_tokens(split) == len(stream)
        n = len(stream) // 16
        ids, index, batches = read_split(dm, split)
        assert ids.dtype == torch.long and all(b["input_ids"].shape[1] == 16 for b in batches)
        assert len(ids) == n == dm.num_blocks(split)
        if split == "val":  # in order, nothing dropped but the last partial block
            assert index.tolist() == list(range(n))
            assert ids.reshape(-1).tolist() == stream[: n * 16]
        else:  # shuffled, but every block exactly once (single process: nothing dropped)
            assert sorted(index.tolist()) == list(range(n)) and index.tolist() != list(range(n))
            expected_blocks = np.asarray(stream[: n * 16]).reshape(n, 16)
            assert (ids.numpy() == expected_blocks[index.numpy()]).all()
    # stored as uint16, scratch folders inside the cache, no build leftovers
    path = dm.cache_path("val")
    meta = json.loads((path / "mdlm_meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["num_documents"] == len(corpus["val"])
    index_json = json.loads((path / "index.json").read_text())
    [chunk] = index_json["chunks"]
    header = 3 * 4  # litdata chunk header for one item: count + 2 offsets, uint32 each
    on_disk = np.fromfile(path / chunk["filename"], dtype=np.uint16, offset=header)
    assert on_disk.tolist() == token_stream(tok, corpus["val"], dm.eos_token_id)  # 2 bytes per token
    cache = str(corpus["dir"] / "cache")
    for env in spy.env:
        assert env["DATA_OPTIMIZER_CACHE_FOLDER"].startswith(cache)
        assert env["DATA_OPTIMIZER_DATA_CACHE_FOLDER"].startswith(cache)
    assert "DATA_OPTIMIZER_CACHE_FOLDER" not in os.environ
    assert not list((corpus["dir"] / "cache" / "tokens").glob(".build-*"))


def test_cache_reused_and_new_block_length_reads_it(corpus, monkeypatch):
    dm = module(corpus)
    dm.prepare_data()
    path = dm.cache_path("val")
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    forbid_optimize(monkeypatch)
    again = module(corpus)
    again.prepare_data()
    again.setup("fit")
    assert again.cache_path("val") == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    # another block length: same cache, blocks re-cut when reading
    longer = module(corpus, block_length=40)
    longer.prepare_data()
    longer.setup("validate")
    assert longer.cache_path("val") == path
    stream = token_stream(longer.tokenizer, corpus["val"], longer.eos_token_id)
    ids, index, _ = read_split(longer, "val")
    n = len(stream) // 40
    assert ids.shape == (n, 40) and ids.reshape(-1).tolist() == stream[: n * 40]


@pytest.mark.slow
def test_cache_rebuilt_when_source_or_tokenizer_changes(corpus, monkeypatch):
    dm = module(corpus)
    dm.prepare_data()
    old = dm.cache_path("val")
    spy = OptimizeSpy(monkeypatch)
    # the val file changes -> new val cache (the train cache is reused)
    changed = corpus["val"][:-1] + ["a brand new last document"]
    (corpus["dir"] / "val.txt").write_text("\n".join(changed) + "\n")
    dm2 = module(corpus)
    assert dm2.cache_path("val") != old and dm2.cache_path("train") == dm.cache_path("train")
    dm2.prepare_data()
    assert spy.calls == 1 and old.is_dir() and dm2.cache_path("val").is_dir()
    dm2.setup("validate")
    stream = token_stream(dm2.tokenizer, changed, dm2.eos_token_id)
    assert read_split(dm2, "val")[0].reshape(-1).tolist() == stream[: len(stream) // 16 * 16]
    # another tokenizer (different BPE size) -> both caches rebuilt
    dm3 = module(corpus, tokenizer="bpe:320")
    assert dm3.vocab_size == 320
    dm3.prepare_data()
    assert spy.calls == 3
    # the trained folder given by path is the same tokenizer: same fingerprint, same key
    folder = next((corpus["dir"] / "cache" / "tokenizers").glob("bpe-300-*"))
    assert module(corpus, tokenizer=str(folder)).cache_path("train") == dm2.cache_path("train")
    # the same tokenizer files with or without an added [PAD]: different fingerprints and keys
    eos_only = corpus["dir"] / "eos_only"
    train_bpe_tokenizer(None, 300, {"eos_token": "<|endoftext|>"}, texts=corpus["train"], save_dir=eos_only)
    with_pad = module(corpus, tokenizer=str(eos_only))
    without_pad = module(corpus, tokenizer=str(eos_only), add_pad_token=False)
    assert with_pad.vocab_size == without_pad.vocab_size + 1
    assert with_pad.cache_path("val") != without_pad.cache_path("val")


@pytest.mark.slow
def test_interrupted_build_leaves_no_half_cache(corpus, monkeypatch):
    OptimizeSpy(monkeypatch, fail=KeyboardInterrupt())
    dm = module(corpus, train_files=None, tokenizer=corpus["tok"])
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    tokens = corpus["dir"] / "cache" / "tokens"
    assert not dm.cache_path("val").exists()
    assert [p.name for p in tokens.iterdir()] == []  # the .build-* folder was removed too
    spy = OptimizeSpy(monkeypatch)
    dm.prepare_data()
    assert spy.calls == 1 and (dm.cache_path("val") / "mdlm_meta.json").is_file()


def test_multi_chunk_cache_and_chunk_border_accounting(corpus, caplog):
    dm = module(corpus, chunk_tokens=96, block_length=16, train_files=None, tokenizer=corpus["tok"])  # 96 = 6 blocks of 16
    dm.prepare_data()
    dm.setup("validate")
    stream = token_stream(dm.tokenizer, corpus["val"], dm.eos_token_id)
    index_json = json.loads((dm.cache_path("val") / "index.json").read_text())
    dims = [c["dim"] for c in index_json["chunks"]]
    assert len(dims) == -(-len(stream) // 96) and dims[:-1] == [96] * (len(dims) - 1) and sum(dims) == len(stream)
    ids, index, _ = read_split(dm, "val")
    assert ids.reshape(-1).tolist() == stream[: len(stream) // 16 * 16]
    # 20 does not divide 96: each chunk's last 16 tokens are unreadable -> counted and warned about
    odd = module(corpus, chunk_tokens=96, block_length=20, train_files=None, tokenizer=corpus["tok"])
    with caplog.at_level(logging.WARNING, logger="mdlm.data.text"):
        odd.setup("validate")
    lost = (len(dims) - 1) * (96 % 20)
    assert f"{lost} tokens at chunk borders are not read" in caplog.text
    ids, _, _ = read_split(odd, "val")
    assert len(ids) == odd.num_blocks("val") == sum(d // 20 for d in dims)


@pytest.mark.slow
def test_eval_with_two_workers_reads_every_block_once(corpus):
    dm = module(corpus, train_files=None, num_workers=2, eval_batch_size=3, tokenizer=corpus["tok"])
    dm.prepare_data()
    dm.setup("validate")
    ids, index, _ = read_split(dm, "val")
    stream = np.asarray(token_stream(dm.tokenizer, corpus["val"], dm.eos_token_id))
    n = len(stream) // 16
    assert sorted(index.tolist()) == list(range(n))
    assert (ids.numpy() == stream[: n * 16].reshape(n, 16)[index.numpy()]).all()


def test_train_shuffle_is_seeded(corpus):
    orders = []
    for seed in (1, 1, 2):
        dm = module(corpus, seed=seed, val_files=None)
        dm.setup("fit")
        orders.append(read_split(dm, "train")[1].tolist())
    assert orders[0] == orders[1] and orders[0] != orders[2] and sorted(orders[0]) == sorted(orders[2])


def test_train_loader_resumes_from_its_state_dict(corpus):
    dm = module(corpus, val_files=None)
    dm.setup("fit")
    epoch = [b["index"].tolist() for b in dm.train_dataloader()]
    loader = dm.train_dataloader()
    it = iter(loader)
    assert [next(it)["index"].tolist() for _ in range(3)] == epoch[:3]
    state = loader.state_dict()  # what Lightning stores in a checkpoint
    resumed = module(corpus, val_files=None)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    assert [b["index"].tolist() for b in loader] == epoch[3:]
    # the next epoch is shuffled differently but still holds every block once
    second = [i for b in loader for i in b["index"].tolist()]
    assert second != [i for b in epoch for i in b] and sorted(second) == sorted(i for b in epoch for i in b)


def test_special_token_strings_in_text_stay_text(tmp_path):
    (tmp_path / "t.txt").write_text("plain words [MASK] and <|endoftext|> here\n" * 30)
    dm = TextDataModule(train_files=str(tmp_path / "t.txt"), tokenizer="bpe:280", documents="line", block_length=8, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    ids, _, _ = read_split(dm, "train")
    assert dm.mask_token_id not in ids.tolist()
    assert (ids == dm.eos_token_id).sum() <= 30  # only the document separators


@pytest.mark.slow
def test_jsonl_and_parquet_sources(tmp_path, monkeypatch):
    records = [{"id": i, "text": t} for i, t in enumerate(make_lines(40, 3, "record"))]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records[:25]) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [r["text"] for r in records[25:]], "n": list(range(15))}), tmp_path / "b.parquet")
    (tmp_path / "c.json").write_text(json.dumps([{"body": r["text"]} for r in records[25:]]))
    dm = TextDataModule(train_files=str(tmp_path / "a.jsonl"), tokenizer="bpe:300", block_length=8, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    stream = token_stream(dm.tokenizer, [r["text"] for r in records[:25]], dm.eos_token_id)
    assert dm.num_tokens("train") == len(stream)
    tok_dir = str(next((tmp_path / "c" / "tokenizers").glob("bpe-300-*")))
    dm2 = TextDataModule(val_files=str(tmp_path / "b.parquet"), test_files=str(tmp_path / "c.json"), text_column="body", tokenizer=tok_dir, block_length=8, cache_dir=str(tmp_path / "c"))
    dm2.setup("test")
    dm2.setup("validate")
    stream = token_stream(dm2.tokenizer, [r["text"] for r in records[25:]], dm2.eos_token_id)
    for split in ("val", "test"):
        ids, _, _ = read_split(dm2, split)
        assert ids.reshape(-1).tolist() == stream[: len(stream) // 8 * 8]
    with pytest.raises(DataError, match=r"b.parquet has no column 'text' \(columns: body, n\)"):
        TextDataModule(val_files=str(tmp_path / "b.parquet"), tokenizer=tok_dir, cache_dir=str(tmp_path / "c")).prepare_data()
    with pytest.raises(DataError, match=r"a.jsonl:1 has no 'body' field"):
        TextDataModule(val_files=str(tmp_path / "a.jsonl"), text_column="body", tokenizer=tok_dir, cache_dir=str(tmp_path / "c")).prepare_data()


def fake_wikitext(split):
    import datasets

    rows = {"train": WIKI_SAMPLE * 6, "validation": WIKI_SAMPLE * 2, "test": WIKI_SAMPLE}[split]
    # like Hugging Face wikitext: one row per line, blank lines as empty rows
    return datasets.Dataset.from_dict({"text": [ln if ln.strip() else "" for ln in rows.splitlines(keepends=True)]})


@pytest.mark.slow
def test_hugging_face_source(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return fake_wikitext(split)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dm = WikiTextDataModule(tokenizer="bpe:280", block_length=8, cache_dir=str(tmp_path), hf_name="wikitext-103-raw-v1")
    assert ("wikitext", "wikitext-103-raw-v1", "train") in calls  # the BPE is trained on the train split
    dm.prepare_data()
    dm.setup("validate")
    articles = split_wikitext_articles(WIKI_SAMPLE)  # rows joined back into raw text, then articles
    assert len(articles) == 2
    # HF stores blank lines as empty rows: the raw text it represents has empty blank lines
    raw = re.sub(r"(?m)^[ \t]+$", "", WIKI_SAMPLE * 2)
    stream = token_stream(dm.tokenizer, split_wikitext_articles(raw), dm.eos_token_id)
    assert dm.num_tokens("val") == len(stream)
    ids, _, _ = read_split(dm, "val")
    assert ids.reshape(-1).tolist() == stream[: len(stream) // 8 * 8]


@pytest.mark.slow
def test_hugging_face_unavailable_errors(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset 'wikitext' \(config 'wikitext-2-raw-v1'\) split 'train'.*offline"):
        WikiTextDataModule(tokenizer="bpe:280", cache_dir=str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match=r"needs the `datasets` package"):
        TextDataModule(hf_path="some/corpus", tokenizer="bpe:280", cache_dir=str(tmp_path))


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_give_one_line_errors(corpus, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    with pytest.raises(FileNotFoundError, match=r"WikiText folder '.*nowhere' does not exist"):
        WikiTextDataModule(data_dir=str(tmp_path / "nowhere"), tokenizer="bpe:300")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / "wiki.valid.raw").write_text(WIKI_SAMPLE)
    with pytest.raises(FileNotFoundError, match=r"WikiText train file '.*wiki.train.raw' is missing; .* has: wiki.valid.raw.*train_file="):
        WikiTextDataModule(data_dir=str(tmp_path / "wt"), tokenizer="bpe:300")
    with pytest.raises(FileNotFoundError, match=r"val file '.*missing.txt' does not exist"):
        module(corpus, val_files=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"val file '.*empty.txt' is empty"):
        module(corpus, val_files=str(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text(" \n \n")
    with pytest.raises(DataError, match=r"val data \(.*blank.txt\) contains no text"):
        module(corpus, val_files=str(tmp_path / "blank.txt")).prepare_data()
    (tmp_path / "short.txt").write_text("just a few words\n")
    dm = module(corpus, val_files=str(tmp_path / "short.txt"), block_length=64)
    dm.prepare_data()
    with pytest.raises(DataError, match=r"block_length=64 is larger than the val split \(\d+ tokens from .*short.txt\)"):
        dm.setup("validate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TokenizerError, match=r"could not load tokenizer 'not-a-real/tokenizer-name'"):
        module(corpus, tokenizer="not-a-real/tokenizer-name")
    with pytest.raises(TokenizerError, match=r"'bpe:300' is trained on the train split, but no train split"):
        module(corpus, train_files=None)
    with pytest.raises(DataError, match=r"no data: give train_files"):
        TextDataModule(tokenizer="bpe:300")
    with pytest.raises(DataError, match=r"documents='sentences' is not one of"):
        module(corpus, documents="sentences")
    with pytest.raises(DataError, match=r"no test data was configured"):
        module(corpus).test_dataloader()


def test_tokenizer_without_mask_and_adding_disabled(corpus):
    folder = corpus["dir"] / "nomask"
    train_bpe_tokenizer(None, 300, {"eos_token": "<|endoftext|>"}, texts=corpus["train"], save_dir=folder)
    with pytest.raises(TokenizerError, match=r"has no mask token and add_mask_token=False"):
        module(corpus, tokenizer=str(folder), add_mask_token=False)
    dm = module(corpus, tokenizer=str(folder))
    assert dm.mask_token_id == 300 and dm.vocab_size == 302


# --------------------------------------------------------------------------- DDP
@pytest.mark.distributed
def test_ddp_ranks_receive_different_blocks(corpus):
    out = corpus["dir"] / "out"
    out.mkdir()
    cmd = [
        sys.executable, str(SCRIPTS / "ddp_text_shards.py"),
        "--train", str(corpus["dir"] / "train.txt"), "--val", str(corpus["dir"] / "val.txt"),
        "--cache", str(corpus["dir"] / "cache"), "--out", str(out),
        "--block-length", "16", "--batch-size", "4", "--chunk-tokens", "96",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["pid"] != ranks[1]["pid"]

    # the single-process reference, from the cache the ranks used (the BPE is cached too)
    dm = TextDataModule(
        train_files=str(corpus["dir"] / "train.txt"), val_files=str(corpus["dir"] / "val.txt"), documents="line",
        tokenizer="bpe:300", block_length=16, cache_dir=str(corpus["dir"] / "cache"), chunk_tokens=96,
    )
    reference = {}
    for split, docs in (("train", corpus["train"]), ("val", corpus["val"])):
        stream = np.asarray(token_stream(dm.tokenizer, docs, dm.eos_token_id))
        n = len(stream) // 16
        reference[split] = stream[: n * 16].reshape(n, 16)
        seen = [{i for i, _ in r[split]} for r in ranks]
        assert seen[0] and seen[1] and not seen[0] & seen[1], f"{split}: ranks overlap"
        for r in ranks:  # each block's tokens are the reference block with that index
            for i, row in r[split]:
                assert row == reference[split][i].tolist()
        if split == "val":  # evaluation: every block exactly once over both ranks
            assert sorted(seen[0] | seen[1]) == list(range(n))
            assert sum(len(r[split]) for r in ranks) == n
        else:  # training: equal shares, at most world_size * batch_size - 1 blocks left out
            assert len(ranks[0][split]) == len(ranks[1][split])
            assert n - 2 * 4 < len(seen[0] | seen[1]) <= n


# --------------------------------------------------------------------------- the real files
def independent_articles(text: str) -> list[str]:
    """A separate re-derivation: an article starts at ' = Title = ' between blank lines."""
    lines = text.split("\n")
    starts = [
        i for i, ln in enumerate(lines)
        if ln.startswith(" = ") and ln.endswith(" = ") and not ln.startswith(" = = ")
        and (i == 0 or lines[i - 1].strip() == "") and (i + 1 == len(lines) or lines[i + 1].strip() == "")
    ]
    bounds = starts + [len(lines)]
    return ["\n".join(lines[a:b]).strip() for a, b in zip(bounds, bounds[1:])]


@needs_wiki_gpt2
@pytest.mark.slow
def test_wikitext2_valid_with_gpt2(tmp_path):
    dm = WikiTextDataModule(
        data_dir=str(WIKI), train_file=None, test_file=None, tokenizer=str(GPT2), cache_dir=str(tmp_path), eval_batch_size=256,
    )
    assert dm.vocab_size == 50259 and dm.mask_token_id == 50257 and dm.eos_token_id == 50256
    text = (WIKI / "wiki.valid.raw").read_text(encoding="utf-8")
    articles = independent_articles(text)
    assert len(articles) == 60 and articles[0].startswith("= Homarus gammarus =")
    tok = load_tokenizer(GPT2)
    lengths = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in articles]
    num_tokens = sum(lengths) + len(articles)
    dm.prepare_data()
    dm.setup("validate")
    assert dm.num_tokens("val") == num_tokens
    ids, index, _ = read_split(dm, "val")
    assert len(ids) == num_tokens // 150 == dm.num_blocks("val")
    assert index.tolist() == list(range(len(ids)))
    first = tok(articles[0], add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == first[:150]
    assert int((ids == 50256).sum()) == sum(1 for c in np.cumsum(np.add(lengths, 1)) if c <= len(ids) * 150)
    assert int(ids.max()) < 50257  # no [MASK]/[PAD] in the data


@needs_wiki
@pytest.mark.slow
def test_tiny_bpe_wikitext_from_train_head(tmp_path):
    dm = WikiTextDataModule(
        data_dir=str(WIKI), train_file="wiki.train.head.raw", test_file=None, tokenizer="bpe:4096",
        cache_dir=str(tmp_path), batch_size=8,
    )
    assert dm.vocab_size == 4096 and (dm.eos_token_id, dm.mask_token_id, dm.pad_token_id) == (0, 1, 2)
    assert len(list((tmp_path / "tokenizers").glob("bpe-4096-*"))) == 1
    dm.prepare_data()
    dm.setup("fit")
    raw = (WIKI / "wiki.train.head.raw").read_text(encoding="utf-8")
    articles = independent_articles(raw)
    assert len(articles) == 19
    assert dm.num_tokens("train") == sum(len(dm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in articles) + 19
    assert dm.num_tokens("train") < len(raw) / 3  # the tiny vocabulary still compresses
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 150) and batch["input_ids"].dtype == torch.long
    # a second module reuses the trained tokenizer and both caches
    again = WikiTextDataModule(data_dir=str(WIKI), train_file="wiki.train.head.raw", test_file=None, tokenizer="bpe:4096", cache_dir=str(tmp_path))
    assert again.cache_path("train") == dm.cache_path("train") and again.cache_path("val") == dm.cache_path("val")
