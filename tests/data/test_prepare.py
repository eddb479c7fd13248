"""Prepare once (litdata optimize over workers/nodes), train many (TextDataModule(prepared=...)).

Expected values are independent: each document through the tokenizer + EOS, and the chunk files
read byte by byte. The object-store tests start a moto S3 server on 127.0.0.1 from a fixture.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT as ROOT
from conftest import SCRIPTS, free_port, token_stream

from mdlm.data import streaming
from mdlm.data.prepare import data_section, main, prepare
from mdlm.data.text import DataError, TextDataModule, read_prepared_manifest
from mdlm.data.tokenizer import train_bpe_tokenizer

SCRIPT = SCRIPTS / "prepared_train.py"
L = 16  # block length


def make_lines(n: int, seed: int, prefix: str) -> list[str]:
    from conftest import make_lines as lines

    return lines(n, seed, prefix, max_words=40)


@pytest.fixture
def corpus(tmp_path):
    train, val = make_lines(300, 0, "document"), make_lines(60, 1, "valdoc")
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(val) + "\n")
    train_bpe_tokenizer(None, 300, texts=train, save_dir=tmp_path / "bpe300")
    return {"dir": tmp_path, "train": train, "val": val, "tok": str(tmp_path / "bpe300")}


def source_module(corpus, **kw):
    args = dict(train_files=str(corpus["dir"] / "train.txt"), val_files=str(corpus["dir"] / "val.txt"), documents="line",
                tokenizer=corpus["tok"], block_length=L, batch_size=4, cache_dir=str(corpus["dir"] / "cache"), chunk_tokens=256)
    args.update(kw)
    return TextDataModule(**args)


def prepared_module(corpus, prepared, **kw):
    args = dict(prepared=prepared, tokenizer=corpus["tok"], block_length=L, batch_size=4, cache_dir=str(corpus["dir"] / "cache2"))
    args.update(kw)
    return TextDataModule(**args)



def read_chunks(folder: Path) -> tuple[np.ndarray, list[int]]:
    """Concatenate a local litdata token dataset's chunks from the files (header skipped by hand)."""
    index = json.loads((folder / "index.json").read_text())
    dtype = {"uint16": np.uint16, "int32": np.int32}[json.loads((folder / "mdlm_prepared.json").read_text())["dtype"]]
    parts, dims = [], []
    for c in index["chunks"]:
        raw = (folder / c["filename"]).read_bytes()
        parts.append(np.frombuffer(raw[(2 + c["chunk_size"]) * 4 :], dtype=dtype))
        assert parts[-1].size == c["dim"]
        dims.append(c["dim"])
    return np.concatenate(parts), dims


def expected_blocks(stream: np.ndarray, dims: list[int]) -> np.ndarray:
    """Blocks of L cut inside each chunk (chunk ends shorter than L are not read)."""
    out, pos = [], 0
    for d in dims:
        n = d // L
        out.append(stream[pos : pos + n * L].reshape(n, L))
        pos += d
    return np.concatenate(out)


def forbid_optimize(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(streaming, "optimize", boom)


# --------------------------------------------------------------------------- prepare
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker processes
def test_prepare_writes_the_documents_in_order_with_manifest(corpus, workers, monkeypatch):
    dm = source_module(corpus)
    out = prepare(dm, str(corpus["dir"] / f"p{workers}"), num_workers=workers, shard_chars=1500)
    assert set(out) == {"train", "val"}
    for split, docs in (("train", corpus["train"]), ("val", corpus["val"])):
        folder = Path(out[split])
        stream, dims = read_chunks(folder)
        want = np.asarray(token_stream(dm.tokenizer, docs, dm.eos_token_id))
        assert np.array_equal(stream, want)  # document order whatever the worker count
        assert max(dims) <= 256 and len(dims) >= 2
        m = json.loads((folder / "mdlm_prepared.json").read_text())
        assert m["tokenizer_fingerprint"] == dm._tokenizer_fp and m["dtype"] == "uint16" and m["chunk_tokens"] == 256
        assert m["num_tokens"] == len(want) and m["num_documents"] == len(docs) and m["num_workers"] == workers
        assert m["packing"]["blocks_cross_documents"] is True and m["eos_token_id"] == dm.eos_token_id
        assert m["identity"] == dm.sources[split].identity()
        index = json.loads((folder / "index.json").read_text())
        assert {c["filename"].split("-")[1] for c in index["chunks"]} == {str(w) for w in range(workers)}
    # prepare once: a second run finds the same fingerprint and does nothing
    forbid_optimize(monkeypatch)
    assert prepare(dm, str(corpus["dir"] / f"p{workers}"), num_workers=workers) == out
    assert (corpus["dir"] / f"p{workers}" / "data_prepared.yaml").is_file()


def test_cli_from_yaml_data_section(corpus, capsys):
    cfg = corpus["dir"] / "run.yaml"
    cfg.write_text(
        "trainer: {max_steps: 3}\n"
        "data:\n  class_path: mdlm.data.text.TextDataModule\n  init_args:\n"
        f"    train_files: {corpus['dir'] / 'train.txt'}\n    documents: line\n    tokenizer: bpe:300\n"
        f"    cache_dir: {corpus['dir'] / 'cache'}\n    block_length: 16\n"
    )
    over = corpus["dir"] / "over.yaml"
    over.write_text("data:\n  init_args:\n    chunk_tokens: 512\n")
    assert data_section([str(cfg), str(over)])[1]["chunk_tokens"] == 512
    rc = main(["--config", str(cfg), "--config", str(over), "--output_dir", str(corpus["dir"] / "cli"), "--num_workers", "2",
               "--shard_chars", "2000"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "data_prepared.yaml" in printed
    m = read_prepared_manifest(str(corpus["dir"] / "cli" / "train"))
    assert m["chunk_tokens"] == 512 and m["num_workers"] == 2
    # the bpe:300 tokenizer was saved beside the data: a run without the text files can use it
    dm = TextDataModule(prepared={"train": str(corpus["dir"] / "cli" / "train")}, tokenizer=str(corpus["dir"] / "cli" / "tokenizer"),
                        block_length=16, cache_dir=str(corpus["dir"] / "c3"))
    dm.setup("fit")
    assert dm.num_tokens("train") == m["num_tokens"]
    assert main(["--config", str(cfg), "--output_dir", str(corpus["dir"] / "cli"), "--set", "chunk_tokens=128"]) == 2
    assert "another fingerprint" in capsys.readouterr().err


def wordlevel_tokenizer(n: int):
    """A synthetic word-level tokenizer with ``n`` words: ids beyond 65,535 exist."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "[MASK]": 1, "[PAD]": 2, "[UNK]": 3}
    vocab.update({f"w{i}": i + 4 for i in range(n)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]")


@pytest.mark.slow
def test_int32_tokens_above_65535(tmp_path):
    tok = wordlevel_tokenizer(70_000)
    tok.save_pretrained(str(tmp_path / "tok"))
    rng = random.Random(3)
    docs = [" ".join(f"w{rng.choice([rng.randint(0, 99), rng.randint(65_600, 69_999)])}" for _ in range(rng.randint(5, 30))) for _ in range(120)]
    (tmp_path / "t.txt").write_text("\n".join(docs) + "\n")
    dm = TextDataModule(train_files=str(tmp_path / "t.txt"), documents="line", tokenizer=str(tmp_path / "tok"), block_length=L,
                        cache_dir=str(tmp_path / "cache"), chunk_tokens=128)
    assert dm.vocab_size > 1 << 16 and dm.token_dtype == "int32"
    out = prepare(dm, str(tmp_path / "p"), num_workers=2, shard_chars=600)
    stream, dims = read_chunks(Path(out["train"]))
    want = np.asarray(token_stream(dm.tokenizer, docs, dm.eos_token_id))
    assert stream.dtype == np.int32 and want.max() > 65_535 and np.array_equal(stream, want)
    ro = TextDataModule(prepared=out, tokenizer=str(tmp_path / "tok"), block_length=L, batch_size=8, cache_dir=str(tmp_path / "c2"))
    ro.setup("fit")
    batches = list(ro._loader("train", train=False))
    ids = torch.cat([b["input_ids"] for b in batches])
    assert ids.dtype == torch.int64 and int(ids.max()) > 65_535
    assert np.array_equal(ids.numpy(), expected_blocks(stream, dims))


@pytest.mark.slow
def test_hugging_face_rows_sharded_by_range_with_owt_style_validation(tmp_path, monkeypatch, corpus):
    """documents="file" on a HF dataset: row ranges, no shard pass; val = the last rows of train (OWT convention)."""
    datasets = pytest.importorskip("datasets")
    rows = corpus["train"][:250] + ["", "   "] + corpus["train"][250:]  # blank rows are not documents
    full = datasets.Dataset.from_dict({"text": rows})

    def load_dataset(path, name=None, split=None, **kw):  # the slicing syntax of load_dataset, on the fake
        assert path == "fake/owt" and split in ("train[:-20]", "train[-20:]")
        return full.select(range(len(full) - 20)) if split == "train[:-20]" else full.select(range(len(full) - 20, len(full)))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dm = TextDataModule(hf_path="fake/owt", hf_splits={"train": "train[:-20]", "val": "train[-20:]"}, documents="file",
                        tokenizer=corpus["tok"], block_length=L, cache_dir=str(tmp_path / "cache"), chunk_tokens=256)
    out = prepare(dm, str(tmp_path / "p"), num_workers=2)
    docs = [r.strip() for r in rows if r.strip()]
    for split, want_docs in (("train", docs[:-20]), ("val", docs[-20:])):
        stream, _ = read_chunks(Path(out[split]))
        assert np.array_equal(stream, np.asarray(token_stream(dm.tokenizer, want_docs, dm.eos_token_id)))
        m = read_prepared_manifest(out[split])
        assert m["num_shards"] >= 2 and m["identity"]["hf"][2] == dm.sources[split].hf_split


# --------------------------------------------------------------------------- training from it
@pytest.mark.slow
def test_train_from_prepared_reads_blocks_without_tokenizing(corpus, monkeypatch):
    out = prepare(source_module(corpus), str(corpus["dir"] / "p"), num_workers=2, shard_chars=1500)
    forbid_optimize(monkeypatch)
    dm = prepared_module(corpus, out)
    assert dm.sources == {} and dm.splits() == ("train", "val")
    dm.prepare_data()
    dm.setup("fit")
    assert not (corpus["dir"] / "cache2" / "tokens").exists()
    for split in ("train", "val"):
        stream, dims = read_chunks(Path(out[split]))
        want = expected_blocks(stream, dims)
        loader = dm.val_dataloader() if split == "val" else dm.train_dataloader()
        batches = list(loader)
        ids, index = torch.cat([b["input_ids"] for b in batches]), torch.cat([b["index"] for b in batches])
        if split == "val":
            assert index.tolist() == list(range(len(want)))
        assert len(set(index.tolist())) == len(index) and set(index.tolist()) <= set(range(len(want)))
        assert np.array_equal(ids.numpy(), want[index.numpy()])
    assert dm.num_blocks("val") == len(expected_blocks(*read_chunks(Path(out["val"]))))


@pytest.mark.slow
def test_tokenizer_or_source_mismatch_is_one_line(corpus, tmp_path):
    out = prepare(source_module(corpus), str(corpus["dir"] / "p"), num_workers=1)
    other = train_bpe_tokenizer(None, 280, texts=corpus["train"], save_dir=tmp_path / "bpe280")
    assert other is not None
    dm = prepared_module(corpus, out, tokenizer=str(tmp_path / "bpe280"))
    with pytest.raises(DataError, match=r"was tokenized with another tokenizer") as err:
        dm.setup("fit")
    assert "\n" not in str(err.value)
    (corpus["dir"] / "val2.txt").write_text("something else entirely\n")
    dm = source_module(corpus, val_files=str(corpus["dir"] / "val2.txt"), prepared=out)
    with pytest.raises(DataError, match=r"made from other val data") as err:
        dm.setup("validate")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"not a prepared mdlm dataset"):
        prepared_module(corpus, {"train": str(tmp_path)}).setup("fit")


def _load_script():
    spec = importlib.util.spec_from_file_location("prepared_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env():
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_sample_sequence(corpus, tmp_path):
    out = prepare(source_module(corpus), str(corpus["dir"] / "p"), num_workers=2, shard_chars=1500)
    script = _load_script()
    common = ["--train", out["train"], "--tokenizer", corpus["tok"], "--cache", str(tmp_path / "c"), "--batch-size", "4"]
    full = script.run(common + ["--out", str(tmp_path / "full")])
    reference = [[i for i, _ in step] for step in full.seen["train"]]
    assert len(reference) > 10
    # a crash (SIGKILL) after step 7, with checkpoints every 5 steps
    proc = subprocess.run([sys.executable, str(SCRIPT), *common, "--out", str(tmp_path / "kill"), "--ckpt-every", "5",
                           "--kill-after-step", "7"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = [json.loads(x)["ids"] for x in (tmp_path / "kill" / "steps0.jsonl").read_text().splitlines()]
    assert killed == reference[: len(killed)] and len(killed) == 7
    ckpt = tmp_path / "kill" / "ckpt" / "step=5.ckpt"
    assert ckpt.is_file()
    resumed = script.run(common + ["--out", str(tmp_path / "resume"), "--resume", str(ckpt)])
    assert [[i for i, _ in step] for step in resumed.seen["train"]] == reference[5:]
    # another batch size (or world size / workers) cannot continue the sequence: refused in one line
    with pytest.raises(DataError, match=r"cannot resume the train stream exactly: .*batch_size 4 -> 8"):
        script.run(["--train", out["train"], "--tokenizer", corpus["tok"], "--cache", str(tmp_path / "c"), "--batch-size", "8",
                    "--out", str(tmp_path / "bad"), "--resume", str(ckpt)])


def _steps(folder: Path, rank: int) -> list[dict]:
    return [json.loads(x) for x in (folder / f"steps{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_kill_and_resume_with_workers_gives_the_same_sample_sequence(corpus, tmp_path):
    """2 gloo ranks x 2 loader workers: a run SIGKILLed after a mid-epoch checkpoint and resumed from it sees,
    on every rank, the same block ids (and losses: SGD with momentum, so the weights and optimizer state must
    come back too) as an uninterrupted run. Lightning saves rank 0's loader state only: rank 1 resumes from it."""
    out = prepare(source_module(corpus), str(corpus["dir"] / "p"), num_workers=2, shard_chars=1500)
    common = ["--train", out["train"], "--tokenizer", corpus["tok"], "--cache", str(tmp_path / "c"), "--batch-size", "8",
              "--devices", "2", "--num-workers", "2", "--lr", "1e-4"]

    def launch(port: int, extra: tuple[str, ...]) -> subprocess.CompletedProcess:
        # capture_output: returns once rank 1 and the loader workers closed the pipes too (after a SIGKILL of rank 0 as well)
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, str(SCRIPT), *common, *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)

    def side_by_side(*jobs: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
        ports: set[int] = set()
        while len(ports) < len(jobs):
            ports.add(free_port())
        with ThreadPoolExecutor(len(jobs)) as pool:
            return list(pool.map(launch, sorted(ports), jobs))

    # the uninterrupted run and the crashed one run side by side (two 2-rank jobs: the test waits on start-up mostly);
    # the crash: every rank SIGKILLs itself after step 43, with a checkpoint at step 40 (the only one)
    full_run, kill_run = side_by_side(("--out", str(tmp_path / "full")),
                                      ("--out", str(tmp_path / "kill"), "--ckpt-every", "40", "--kill-after-step", "43"))
    assert full_run.returncode == 0, full_run.stderr[-3000:]
    full = [_steps(tmp_path / "full", r) for r in (0, 1)]
    assert [s["step"] for s in full[0]] == [s["step"] for s in full[1]] == list(range(len(full[0])))
    assert len(full[0]) > 60
    assert not {i for s in full[0] for i in s["ids"]} & {i for s in full[1] for i in s["ids"]}  # ranks disjoint
    assert len({s["loss"] for s in full[0]}) > 1  # the loss moves with the weights
    assert kill_run.returncode == -9, kill_run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "kill" / "ckpt").iterdir()) == ["step=40.ckpt"]
    ckpt = tmp_path / "kill" / "ckpt" / "step=40.ckpt"
    for r in (0, 1):
        assert _steps(tmp_path / "kill", r) == full[r][:43]
    # the resume, and (strict) the same checkpoint with another worker count at the same world size: refused in one line
    resume_run, bad_run = side_by_side(("--out", str(tmp_path / "resume"), "--resume", str(ckpt)),
                                       ("--out", str(tmp_path / "bad_workers"), "--resume", str(ckpt), "--num-workers", "1"))
    assert resume_run.returncode == 0, resume_run.stderr[-3000:]
    for r in (0, 1):
        resumed = _steps(tmp_path / "resume", r)
        assert [s["step"] for s in resumed] == list(range(40, len(full[r])))
        assert [s["ids"] for s in resumed] == [s["ids"] for s in full[r][40:]], f"rank {r}: another sample sequence"
        assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in full[r][40:]], rel=1e-6, abs=0)
    assert bad_run.returncode != 0
    assert "cannot resume the train stream exactly: the checkpoint was written with world_size=2, num_workers=2, " \
           "batch_size=8 (num_workers 2 -> 1)" in bad_run.stderr, bad_run.stderr[-3000:]
    assert not (tmp_path / "bad_workers" / "steps0.jsonl").exists()
    script = _load_script()
    with pytest.raises(DataError, match=r"cannot resume the train stream exactly: .*\(world_size 2 -> 1\)") as err:
        script.run(common[:8] + ["--devices", "1", "--num-workers", "2", "--lr", "1e-4", "--out", str(tmp_path / "bad_world"),
                                 "--resume", str(ckpt)])
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_world_size_change_refused_unless_elastic(corpus):
    out = prepare(source_module(corpus), str(corpus["dir"] / "p"), num_workers=1)
    dm = prepared_module(corpus, out)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    state["dataset"]["world_size"] = 2  # as written by a 2-rank run
    with pytest.raises(DataError, match=r"world_size 2 -> 1"):
        dm.train_dataloader().load_state_dict(state)
    elastic = prepared_module(corpus, out, resume_topology="elastic")
    elastic.setup("fit")
    elastic.train_dataloader().load_state_dict(state)  # litdata restripes


# --------------------------------------------------------------------------- object store
@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (random port) for this module; litdata's S3 path via boto3."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]'): no local S3 endpoint")
    pytest.importorskip("flask", reason="moto[server] needs flask (pip install 'moto[server]')")
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "DISABLE_S5CMD": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bucket")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
@pytest.mark.distributed
def test_s3_round_trip_and_two_rank_training(corpus, s3_endpoint, tmp_path):
    dm = source_module(corpus)
    opts = {"endpoint_url": s3_endpoint}
    out = prepare(dm, "s3://bucket/roundtrip", num_workers=2, storage_options=opts, shard_chars=1500)
    assert out == {"train": "s3://bucket/roundtrip/train", "val": "s3://bucket/roundtrip/val"}
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="bucket", Prefix="roundtrip/")["Contents"]]
    assert "roundtrip/train/index.json" in keys and "roundtrip/train/mdlm_prepared.json" in keys
    assert any(k.startswith("roundtrip/val/chunk-1-") for k in keys)
    # the tokenizer and the config overlay are uploaded beside the splits, as a local output gets them
    assert "roundtrip/tokenizer/tokenizer_config.json" in keys and "roundtrip/data_prepared.yaml" in keys
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in [k for k in keys if k.startswith("roundtrip/tokenizer/")]:
        dest = tmp_path / "fetched" / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("bucket", key, str(dest))
    from transformers import AutoTokenizer

    from mdlm.data.tokenizer import tokenizer_fingerprint

    fetched = AutoTokenizer.from_pretrained(str(tmp_path / "fetched" / "roundtrip" / "tokenizer"))
    assert tokenizer_fingerprint(fetched) == tokenizer_fingerprint(dm.tokenizer)
    import yaml

    overlay = yaml.safe_load(s3.get_object(Bucket="bucket", Key="roundtrip/data_prepared.yaml")["Body"].read())
    assert overlay["data"]["init_args"]["prepared"] == out
    assert overlay["data"]["init_args"]["storage_options"] == opts
    local = prepare(dm, str(tmp_path / "local"), num_workers=2, shard_chars=1500)  # the same bytes, locally
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--train", out["train"], "--val", out["val"], "--tokenizer", corpus["tok"],
         "--cache", str(tmp_path / "stream"), "--out", str(tmp_path / "ranks"), "--devices", "2", "--endpoint-url", s3_endpoint],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for split in ("train", "val"):
        want = expected_blocks(*read_chunks(Path(local[split])))
        seen = [{i for i, _ in r[split]} for r in ranks]
        assert seen[0] and seen[1] and not seen[0] & seen[1], f"{split}: ranks overlap"
        for r in ranks:
            for i, row in r[split]:
                assert row == want[i].tolist()
        if split == "val":
            assert sorted(seen[0] | seen[1]) == list(range(len(want)))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_node_prepare_into_s3(corpus, s3_endpoint, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data:\n  class_path: mdlm.data.text.TextDataModule\n  init_args:\n"
        f"    train_files: {corpus['dir'] / 'train.txt'}\n    documents: line\n    tokenizer: {corpus['tok']}\n"
        f"    cache_dir: {tmp_path / 'cache'}\n    chunk_tokens: 256\n"
    )
    cmd = [sys.executable, "-m", "mdlm.data.prepare", "--config", str(cfg), "--output_dir", "s3://bucket/twonode",
           "--num_workers", "1", "--shard_chars", "1500", "--storage_options", json.dumps({"endpoint_url": s3_endpoint})]
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    def start(rank):
        env = {**_env(), "DATA_OPTIMIZER_NUM_NODES": "2", "DATA_OPTIMIZER_NODE_RANK": str(rank)}
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # node 1 (litdata's merging node) starts only once node 0 has uploaded chunks: a late node must
    # neither refuse the non-empty prefix nor delete the other node's chunks
    procs = [start(0)]
    deadline = time.time() + 120
    while not s3.list_objects_v2(Bucket="bucket", Prefix="twonode/train/chunk-0-").get("KeyCount") and procs[0].poll() is None:
        assert time.time() < deadline, "node 0 uploaded nothing"
        time.sleep(0.2)
    procs.append(start(1))
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    opts = {"endpoint_url": s3_endpoint}
    m = read_prepared_manifest("s3://bucket/twonode/train", opts, tmp_path / "m")
    assert m["num_nodes"] == 2
    dm = TextDataModule(prepared={"train": "s3://bucket/twonode/train"}, storage_options=opts, tokenizer=corpus["tok"],
                        block_length=L, batch_size=8, cache_dir=str(tmp_path / "read"))
    dm.setup("fit")
    index = json.loads(Path(tmp_path / "read" / "prepared").glob("*/index.json").__next__().read_text())
    assert {c["filename"].split("-")[1] for c in index["chunks"]} == {"0", "1"}  # both nodes' chunks, node 0 first
    assert [c["filename"].split("-")[1] for c in index["chunks"]] == sorted(c["filename"].split("-")[1] for c in index["chunks"])
    want_stream = np.asarray(token_stream(dm.tokenizer, corpus["train"], dm.eos_token_id))
    assert m["num_tokens"] == len(want_stream)
    batches = list(dm._loader("train", train=False))
    ids = torch.cat([b["input_ids"] for b in batches]).numpy()
    assert np.array_equal(ids, expected_blocks(want_stream, [int(c["dim"]) for c in index["chunks"]]))
