"""Tokenizer loading, mask/pad tokens, fingerprints and the trained byte-level BPE (offline)."""

from __future__ import annotations

import json

import pytest
from conftest import GPT2, MISTRAL, WIKI, needs_gpt2, needs_mistral, needs_wiki

from mdlm.data.tokenizer import (
    TokenizerError,
    load_tokenizer,
    parse_bpe_spec,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

CORPUS = [
    "the cat sat on the mat and the cat ate the rat",
    "a dog and a cat met on the mat near the hat",
    "masked diffusion models denoise masked tokens in parallel",
] * 20


@pytest.fixture
def offline(monkeypatch):
    """Hub look-ups fail at once instead of retrying for ~45 s without a network."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@needs_gpt2
def test_gpt2_gets_mask_and_pad_tokens():
    tok = load_tokenizer(GPT2)
    # values from shared/data/README.md: 50,257 tokens, eos 50256, "Hello world" -> [15496, 995]
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256
    assert len(tok) == 50257 + 2
    assert (tok.mask_token, tok.mask_token_id) == ("[MASK]", 50257)
    assert (tok.pad_token, tok.pad_token_id) == ("[PAD]", 50258)
    bare = load_tokenizer(GPT2, add_pad_token=False)
    assert len(bare) == 50258 and bare.pad_token_id is None


@needs_mistral
def test_mistral_gets_mask_token():
    tok = load_tokenizer(MISTRAL)
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [22557, 1526]  # README
    assert len(tok) == 32000 + 2 and tok.mask_token_id == 32000 and tok.eos_token_id == 2


@needs_gpt2
def test_no_mask_token_and_adding_disabled_is_an_error():
    with pytest.raises(TokenizerError, match=r"has no mask token and add_mask_token=False.*add_mask_token=True"):
        load_tokenizer(GPT2, add_mask_token=False)


def test_bpe_without_mask_token_and_adding_disabled_is_an_error(tmp_path):
    train_bpe_tokenizer(None, 300, {"eos_token": "<|endoftext|>"}, texts=CORPUS, save_dir=tmp_path / "nomask")
    with pytest.raises(TokenizerError, match=r"nomask' has no mask token"):
        load_tokenizer(tmp_path / "nomask", add_mask_token=False)
    tok = load_tokenizer(tmp_path / "nomask")
    assert tok.mask_token_id == 300 and tok.pad_token_id == 301 and len(tok) == 302


def test_unknown_name_offline_is_a_one_line_error(offline):
    with pytest.raises(TokenizerError, match=r"could not load tokenizer 'no-such-org/no-such-tokenizer'") as info:
        load_tokenizer("no-such-org/no-such-tokenizer")
    assert "\n" not in str(info.value)


def test_missing_local_folder_is_an_error(tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer folder .*does-not-exist' does not exist"):
        load_tokenizer(str(tmp_path / "does-not-exist"))


def test_bpe_spec_parsing():
    assert parse_bpe_spec("bpe:4096") == 4096
    assert parse_bpe_spec("gpt2") is None
    with pytest.raises(TokenizerError, match=r"'bpe:big' is malformed"):
        parse_bpe_spec("bpe:big")
    with pytest.raises(TokenizerError, match=r"'bpe:512' is trained from the training split"):
        load_tokenizer("bpe:512")
    with pytest.raises(TokenizerError, match=r"vocab_size=100 is too small.*259"):
        train_bpe_tokenizer(None, 100, texts=CORPUS)


def test_bpe_is_deterministic_saved_and_reloaded(tmp_path):
    a = train_bpe_tokenizer(None, 320, texts=CORPUS, save_dir=tmp_path / "a")
    b = train_bpe_tokenizer(None, 320, texts=CORPUS, save_dir=tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    # special tokens first, in the given order
    assert (a.eos_token_id, a.mask_token_id, a.pad_token_id) == (0, 1, 2)
    assert (a.eos_token, a.mask_token, a.pad_token) == ("<|endoftext|>", "[MASK]", "[PAD]")
    # reload through AutoTokenizer (what the data modules do) and the in-memory object agree
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    text = "the cat met a dog on the mat"
    ids = again(text, add_special_tokens=False)["input_ids"]
    assert ids == a(text, add_special_tokens=False)["input_ids"]
    assert again.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    saved = json.loads((tmp_path / "a" / "tokenizer.json").read_text())
    assert saved["model"]["type"] == "BPE" and saved["pre_tokenizer"]["type"] == "ByteLevel"
    # the file-based entry point trains the same tokenizer as the iterator one on the same lines
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(CORPUS) + "\n")
    from_files = train_bpe_tokenizer([corpus_file], 320)
    assert from_files(text, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.slow
@needs_gpt2
@needs_mistral
def test_fingerprint_tracks_vocab_added_tokens_and_class(tmp_path):
    fp = tokenizer_fingerprint
    assert fp(load_tokenizer(GPT2)) == fp(load_tokenizer(GPT2))
    assert fp(load_tokenizer(GPT2)) != fp(load_tokenizer(GPT2, add_pad_token=False))
    assert fp(load_tokenizer(GPT2)) != fp(load_tokenizer(MISTRAL))
    small = train_bpe_tokenizer(None, 300, texts=CORPUS)
    other = train_bpe_tokenizer(None, 300, texts=CORPUS[:1] * 5)
    assert fp(small) != fp(other)


@needs_wiki
def test_tiny_bpe_on_wikitext_train_head(tmp_path):
    raw = WIKI / "wiki.train.head.raw"
    tok = train_bpe_tokenizer([raw], 4096, save_dir=tmp_path / "bpe4096")
    tok = load_tokenizer(tmp_path / "bpe4096")  # already has mask and pad: nothing added
    assert len(tok) == 4096
    assert (tok.eos_token_id, tok.mask_token_id, tok.pad_token_id) == (0, 1, 2)
    valid = (WIKI / "wiki.valid.raw").read_text(encoding="utf-8")[:20_000]
    ids = tok(valid, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == valid  # byte-level: lossless on unseen text
    assert max(ids) < 4096 and 1 not in ids  # no [MASK] produced from text
    assert len(ids) < len(valid) / 2.5  # a real compression on held-out text
