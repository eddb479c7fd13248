"""SFT data for masked diffusion (mdlm.data.sft), checked against independent computations.

Uses the staged tokenizers and GSM8K / MATH / MATH-500 files beside the repository
(``../shared/data``); tests that need them are skipped with a reason when they are absent.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import GPT2, GSM8K, MATH, MISTRAL, needs_gpt2, needs_gsm8k, needs_math, needs_mistral

from mdlm.data.sft import (
    GSM8KDataModule,
    MATHDataModule,
    SFTCollator,
    SFTDataError,
    SFTDataModule,
    iter_raw_records,
    read_records,
)
from mdlm.data.shuffle import EpochShuffleSampler
from mdlm.data.tokenizer import TokenizerError
from mdlm.objective import mask_tokens, md_loss

#: a Mistral-style chat template (the staged Mistral tokenizer ships none)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

RECORDS = [
    {"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
    {"question": "Tom has 7 apples and eats 2. How many are left?", "answer": "He has 7-2=<<7-2=5>>5 left.\n#### 5"},
    {"question": "A box holds 12 eggs. How many eggs are in 3 boxes?", "answer": "3*12=<<3*12=36>>36 eggs.\n#### 36"},
    {"question": "Sum 1 and 1.", "answer": "It is 2.\n#### 2"},
    {"question": "Ann reads 10 pages a day for a week. How many pages?", "answer": "10*7=70 pages.\n#### 70"},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt2():
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer not staged at {GPT2}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2))


@pytest.fixture(scope="module")
def mistral_chat(tmp_path_factory) -> Path:
    """A copy of the staged Mistral tokenizer with a chat template."""
    if not (MISTRAL / "tokenizer.json").is_file():
        pytest.skip(f"Mistral tokenizer not staged at {MISTRAL}")
    folder = tmp_path_factory.mktemp("tok") / "mistral_chat"
    shutil.copytree(MISTRAL, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = MISTRAL_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def gsm_files(tmp_path) -> tuple[Path, Path]:
    return write_jsonl(tmp_path / "train.jsonl", RECORDS), write_jsonl(tmp_path / "test.jsonl", RECORDS[::-1])


def make_dm(train=None, test=None, tokenizer=GPT2, **kw) -> SFTDataModule:
    kw.setdefault("add_mask_token", "mask_token_id" not in kw)
    kw.setdefault("max_length", 64)
    return SFTDataModule(
        str(tokenizer), train_path=str(train) if train else None, test_path=str(test) if test else None, **kw
    )


def all_batches(loader) -> list[dict]:
    return list(loader)


# --------------------------------------------------------------------------- training format


@needs_gpt2
@pytest.mark.parametrize("supervise_padding", [True, False])
def test_train_batch_layout_against_separate_tokenisation(gsm_files, gpt2, supervise_padding):
    train, _ = gsm_files
    dm = make_dm(train, batch_size=2, pad_to="max_length", supervise_padding=supervise_padding)
    assert dm.template == "plain" and dm.pad_token_id == dm.eos_token_id == gpt2.eos_token_id
    dm.setup("fit")
    eos = gpt2.eos_token_id
    seen = set()
    for batch in all_batches(dm.train_dataloader()) + all_batches(dm._eval_loader(dm.train_set, dm._collator())):
        B, L = batch["input_ids"].shape
        assert L == 64 and batch["maskable"].dtype == torch.bool and batch["attention_mask"].dtype == torch.bool
        for b in range(B):
            idx = int(batch["index"][b])
            seen.add(idx)
            rec = RECORDS[idx]
            prompt_text = f"Question: {rec['question']}\nAnswer:"
            p_ids = gpt2(prompt_text)["input_ids"]
            r_ids = gpt2(" " + rec["answer"])["input_ids"] + [eos]
            P, R = len(p_ids), len(r_ids)
            pad = L - P - R
            row = batch["input_ids"][b].tolist()
            assert int(batch["prompt_length"][b]) == P
            assert row == p_ids + r_ids + [eos] * pad
            assert batch["maskable"][b].tolist() == [False] * P + [True] * R + [supervise_padding] * pad
            assert batch["attention_mask"][b].tolist() == [True] * (P + R) + [supervise_padding] * pad
            # decoding: the templated prompt, then the response and its EOS
            assert gpt2.decode(row[:P]) == prompt_text
            assert gpt2.decode(row[P : P + R]) == " " + rec["answer"] + "<|endoftext|>"
    assert seen == set(range(len(RECORDS)))


@needs_gpt2
def test_prompt_tokens_are_never_masked(gsm_files):
    train, _ = gsm_files
    dm = make_dm(train, batch_size=5, pad_to="batch")
    dm.setup("fit")
    batch = next(iter(dm._eval_loader(dm.train_set, dm._collator())))
    ids, maskable = batch["input_ids"], batch["maskable"]
    B, L = ids.shape
    prompt = torch.arange(L)[None, :] < batch["prompt_length"][:, None]
    assert not (maskable & prompt).any()
    assert (maskable | prompt).all()  # pad_to=batch + supervised padding: everything else is maskable
    g = torch.Generator().manual_seed(0)
    t = torch.full((B,), 0.99)
    ever_masked = torch.zeros_like(maskable)
    for _ in range(300):
        noisy, masked = mask_tokens(ids, t, dm.mask_token_id, torch.rand(B, L, generator=g), maskable)
        assert torch.equal(noisy[prompt], ids[prompt])
        assert not (masked & ~maskable).any()
        assert torch.equal(noisy == dm.mask_token_id, masked)
        ever_masked |= masked
    assert torch.equal(ever_masked, maskable)


def test_collator_and_md_loss_match_a_hand_computation():
    # two hand-built samples: 3 prompt + 3 response tokens (EOS = 9 last), and 1 prompt + 5 response
    items = [
        {"input_ids": torch.tensor([4, 5, 6, 7, 8, 9]), "prompt_length": 3, "index": 11},
        {"input_ids": torch.tensor([4, 7, 7, 7, 7, 9]), "prompt_length": 1, "index": 12},
    ]
    batch = SFTCollator(pad_token_id=9, max_length=8, pad_to="max_length", supervise_padding=True)(items)
    F_, T_ = False, True
    assert batch["input_ids"].tolist() == [[4, 5, 6, 7, 8, 9, 9, 9], [4, 7, 7, 7, 7, 9, 9, 9]]
    assert batch["maskable"].tolist() == [[F_, F_, F_, T_, T_, T_, T_, T_], [F_, T_, T_, T_, T_, T_, T_, T_]]
    assert batch["attention_mask"].all()
    assert batch["prompt_length"].tolist() == [3, 1] and batch["index"].tolist() == [11, 12]
    maskable_counts = [5, 7]

    g = torch.Generator().manual_seed(1)
    nll = torch.rand(2, 8, generator=g, dtype=torch.float64) * 5
    masked = torch.tensor([[F_, F_, F_, T_, F_, T_, F_, T_], [F_, T_, T_, F_, F_, F_, T_, F_]])
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    for loss_weight in ("elbo", "none"):
        w = [1 / 0.3, 1 / 0.8] if loss_weight == "elbo" else [1.0, 1.0]
        sums = [sum(float(nll[b, i]) for i in range(8) if masked[b, i]) for b in range(2)]
        expected = {
            "per_sequence": (w[0] * sums[0] / maskable_counts[0] + w[1] * sums[1] / maskable_counts[1]) / 2,
            "maskable_tokens": (w[0] * sums[0] + w[1] * sums[1]) / (maskable_counts[0] + maskable_counts[1]),
            "batch_tokens": (w[0] * sums[0] + w[1] * sums[1]) / 16,
            "masked_tokens": (w[0] * sums[0] + w[1] * sums[1]) / 6,
        }
        for normalization, value in expected.items():
            got = md_loss(nll, masked & batch["maskable"], t, batch["maskable"], loss_weight, normalization)
            assert float(got) == pytest.approx(value, rel=1e-12), (loss_weight, normalization)


@needs_gpt2
def test_pad_to_batch_supervised_eos_depends_on_batch(gsm_files):
    train, _ = gsm_files
    dm = make_dm(train, pad_to="batch", supervise_padding=True)
    dm.setup("fit")
    ds, collate = dm.train_set, dm._collator()
    lengths = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    short, long_ = lengths.index(min(lengths)), lengths.index(max(lengths))
    alone = collate([ds[short]])
    together = collate([ds[short], ds[long_]])
    assert alone["input_ids"].shape[1] == min(lengths) and together["input_ids"].shape[1] == max(lengths)
    resp = min(lengths) - int(alone["prompt_length"][0])
    assert int(alone["maskable"][0].sum()) == resp
    assert int(together["maskable"][0].sum()) == resp + max(lengths) - min(lengths)  # more supervised EOS
    no_sup = SFTCollator(dm.pad_token_id, dm.max_length, "batch", supervise_padding=False)([ds[short], ds[long_]])
    assert int(no_sup["maskable"][0].sum()) == resp
    assert int(no_sup["attention_mask"][0].sum()) == min(lengths)
    fixed = SFTCollator(dm.pad_token_id, dm.max_length, "max_length", True)([ds[short]])
    assert fixed["input_ids"].shape == (1, 64) and int(fixed["maskable"][0].sum()) == 64 - int(fixed["prompt_length"][0])


@needs_gpt2
def test_on_overflow_error_drop_truncate(tmp_path, gpt2, caplog):
    long_answer = "one two three " * 20 + "\n#### 3"
    recs = RECORDS[:3] + [{"question": "Count.", "answer": long_answer}, {"question": "Again.", "answer": long_answer}]
    train = write_jsonl(tmp_path / "train.jsonl", recs)
    max_length = 40
    with pytest.raises(SFTDataError, match=r"2 train sample\(s\) exceed max_length=40.*train.jsonl:4.*on_overflow"):
        make_dm(train, max_length=max_length).setup("fit")

    dm = make_dm(train, max_length=max_length, on_overflow="drop")
    with caplog.at_level(logging.INFO, logger="mdlm.data.sft"):
        dm.setup("fit")
    s = dm.stats["train"]
    assert (s.records, s.overflow, s.dropped_overflow, s.truncated, s.samples) == (5, 2, 2, 0, 3)
    assert len(dm.train_set) == 3 and sorted(dm.train_set.indices) == [0, 1, 2]
    assert "2 longer than max_length=40 (2 dropped, 0 truncated)" in caplog.text

    dm = make_dm(train, max_length=max_length, on_overflow="truncate_response", pad_to="batch")
    dm.setup("fit")
    s = dm.stats["train"]
    assert (s.overflow, s.dropped_overflow, s.truncated, s.samples) == (2, 0, 2, 5)
    item = dm.train_set[3]
    full = gpt2("Question: Count.\nAnswer:")["input_ids"] + gpt2(" " + long_answer)["input_ids"]
    assert item["input_ids"].tolist() == full[:max_length]  # cut at max_length: no final EOS
    batch = SFTCollator(dm.pad_token_id, max_length, "batch", True)([dm.train_set[0], item])
    assert batch["maskable"][1].sum() == max_length - item["prompt_length"]


@needs_gpt2
@pytest.mark.parametrize("on_overflow", ["error", "truncate_response"])
def test_prompt_longer_than_max_length_is_an_error(tmp_path, on_overflow):
    recs = RECORDS[:2] + [{"question": "word " * 100, "answer": "x\n#### 1"}]
    train = write_jsonl(tmp_path / "train.jsonl", recs)
    with pytest.raises(SFTDataError, match=r"train.jsonl:3: the prompt has \d+ tokens, at least max_length=32"):
        make_dm(train, max_length=32, on_overflow=on_overflow).setup("fit")


@needs_gpt2
def test_prompt_longer_than_max_length_is_dropped_and_counted_with_drop(tmp_path):
    recs = RECORDS[:2] + [{"question": "word " * 100, "answer": "x\n#### 1"}]
    train = write_jsonl(tmp_path / "train.jsonl", recs)
    dm = make_dm(train, max_length=32, on_overflow="drop")
    dm.setup("fit")
    kept = [dm.train_set[i]["index"] for i in range(len(dm.train_set))]
    assert 2 not in kept  # the record with the long prompt (0-based index 2) is gone ...
    assert dm.stats["train"].dropped_overflow == 3 - len(kept) >= 1  # ... and counted


# --------------------------------------------------------------------------- generation batches


@needs_gpt2
def test_generation_batches_are_left_padded_prompts(gsm_files, gpt2):
    train, test = gsm_files
    dm = make_dm(train, test, eval_batch_size=3)
    dm.setup("test")
    test_records = RECORDS[::-1]
    n = 0
    for batch in dm.test_dataloader():
        ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        assert mask.dtype == torch.bool and ids.shape == mask.shape
        for b in range(ids.shape[0]):
            i = int(batch["index"][b])
            rec = test_records[i]
            text = f"Question: {rec['question']}\nAnswer:"
            real = mask[b].tolist()
            k = real.index(True)
            assert real == [False] * k + [True] * (len(real) - k)  # left padding
            assert (ids[b, :k] == gpt2.eos_token_id).all()
            assert ids[b, k:].tolist() == gpt2(text)["input_ids"]
            assert gpt2.decode(ids[b, k:]) == text == batch["prompt_text"][b]
            assert batch["reference"][b] == rec["answer"].split("####")[-1].strip()
            assert batch["group"][b] == "all" and batch["dataset"][b] == "gsm8k"
            n += 1
    assert n == len(RECORDS)
    assert dm.predict_dataloader().dataset is dm.test_set


@needs_gpt2
def test_few_shot_prefix_from_the_train_split(gsm_files):
    train, test = gsm_files
    dm = make_dm(train, test, num_shots=2)
    dm.setup("test")
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in RECORDS[:2])
    for i, rec in enumerate(RECORDS[::-1]):
        assert dm.test_set[i]["prompt_text"] == shots + f"Question: {rec['question']}\nAnswer:"
    with pytest.raises(SFTDataError, match="num_shots=2 takes exemplars from the train split"):
        make_dm(None, test, num_shots=2).setup("test")


# --------------------------------------------------------------------------- templates


@needs_mistral
def test_chat_template_prompt_and_response(tmp_path, mistral_chat):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mistral_chat))
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:2])
    dm = make_dm(train, train, tokenizer=mistral_chat, pad_to="batch")
    assert dm.template == "chat"
    dm.setup("fit")
    dm.setup("test")
    eos = tok.eos_token_id
    for i, rec in enumerate(RECORDS[:2]):
        prompt_text = f"<s>[INST] {rec['question']} [/INST]"
        full_text = prompt_text + f" {rec['answer']}</s>"
        p_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        f_ids = tok(full_text, add_special_tokens=False)["input_ids"]
        item = dm.train_set[i]
        assert item["prompt_length"] == len(p_ids) and f_ids[: len(p_ids)] == p_ids
        assert item["input_ids"].tolist() == f_ids  # the template's own EOS ends the response: no second EOS
        assert f_ids[-1] == eos and f_ids[-2] != eos
        assert dm.test_set[i]["prompt_text"] == prompt_text
        assert dm.test_set[i]["prompt_input_ids"].tolist() == p_ids  # generation prompt == training prompt

    plain = make_dm(train, tokenizer=mistral_chat, template="plain")
    plain.setup("fit")
    prompt_text = f"Question: {RECORDS[0]['question']}\nAnswer:"
    p_ids = [tok.bos_token_id] + tok(prompt_text, add_special_tokens=False)["input_ids"]
    joint = [tok.bos_token_id] + tok(prompt_text + " " + RECORDS[0]["answer"], add_special_tokens=False)["input_ids"]
    item = plain.train_set[0]
    assert item["prompt_length"] == len(p_ids)
    assert item["input_ids"].tolist() == joint + [eos]  # response tokenised in context (no stray '▁')
    alone = tok(" " + RECORDS[0]["answer"], add_special_tokens=False)["input_ids"]
    assert alone != joint[len(p_ids) :]  # ... which differs from tokenising " {response}" alone here


@needs_gpt2
def test_template_chat_without_chat_template_is_an_error(gsm_files):
    with pytest.raises(SFTDataError, match="has no chat template"):
        make_dm(gsm_files[0], template="chat")


@needs_gpt2
def test_chat_format_records(tmp_path, gpt2, caplog):
    conv = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "content": "42"},
            {"role": "user", "content": "And 6*8?"},
            {"role": "assistant", "content": "48"},
        ]
    }
    trailing = {"messages": conv["messages"][:3] + [{"role": "user", "content": "thanks"}]}
    train = write_jsonl(tmp_path / "chat.jsonl", [conv, trailing])
    dm = make_dm(train, dataset="chat", pad_to="batch")
    with caplog.at_level(logging.INFO, logger="mdlm.data.sft"):
        dm.setup("fit")
    recs = dm.records("train")
    assert [m["content"] for m in recs[0].messages] == ["Be brief.", "What is 6*7?", "42", "And 6*8?"]
    assert recs[0].response == "48" and recs[1].response == "42" and recs[1].reference is None
    assert dm.stats["train"].trailing_turns == 1 and "turns after their last assistant turn" in caplog.text
    prompt = "Be brief.\n\nQuestion: What is 6*7?\nAnswer: 42\n\nQuestion: And 6*8?\nAnswer:"
    item = dm.train_set[0]
    assert item["input_ids"].tolist() == gpt2(prompt)["input_ids"] + gpt2(" 48")["input_ids"] + [gpt2.eos_token_id]
    assert item["prompt_length"] == len(gpt2(prompt)["input_ids"])

    bad = write_jsonl(tmp_path / "bad.jsonl", [conv, {"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(SFTDataError, match=r"bad.jsonl:2: chat record has no assistant turn"):
        make_dm(bad, dataset="chat").setup("fit")


@needs_mistral
def test_chat_format_with_a_chat_template(tmp_path, mistral_chat):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mistral_chat))
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}]
    train = write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs + [{"role": "assistant", "content": "4"}]}])
    dm = make_dm(train, tokenizer=mistral_chat, dataset="chat")
    dm.setup("fit")
    text = "<s>[INST] Hi [/INST] Hello</s>[INST] 2+2? [/INST]"
    item = dm.train_set[0]
    assert item["input_ids"].tolist() == tok(text + " 4</s>", add_special_tokens=False)["input_ids"]
    assert item["prompt_length"] == len(tok(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- real data


@needs_gpt2
@needs_gsm8k
@pytest.mark.slow
def test_real_gsm8k_all_records_load():
    dm = GSM8KDataModule(
        str(GPT2), train_path=str(GSM8K / "train.jsonl"), test_path=str(GSM8K / "test.jsonl"),
        add_mask_token=True, max_length=512, pad_to="batch",
    )
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 7473 and dm.stats["train"].overflow == 0
    assert sorted(dm.train_set.indices) == list(range(7473))
    assert len(dm.test_set) == 1319
    answers = [json.loads(line)["answer"] for line in (GSM8K / "test.jsonl").read_text().splitlines()]
    refs = [dm.test_set[i]["reference"] for i in range(1319)]
    assert refs == [a.split("\n#### ")[1].strip() for a in answers]
    assert not dm.has_split("val") and dm.val_dataloader() == []


@needs_math
def test_real_math_records_and_the_two_without_answers():
    expected_missing = [f"{MATH / 'train.jsonl'}:5530", f"{MATH / 'train.jsonl'}:5532"]
    with pytest.raises(SFTDataError, match=r"2 math record\(s\) have no reference answer .*train.jsonl:5530"):
        read_records("math", iter_raw_records(MATH / "train.jsonl"))
    from mdlm.data.sft import SplitStats

    stats = SplitStats()
    train = read_records("math", iter_raw_records(MATH / "train.jsonl"), on_missing_answer="drop", stats=stats)
    assert stats.records == 7500 and len(train) == 7498 and stats.missing_answer == expected_missing
    lines = (MATH / "train.jsonl").read_text(encoding="utf-8").splitlines()
    for w in expected_missing:
        assert "\\boxed{}" in json.loads(lines[int(w.rsplit(":", 1)[1]) - 1])["solution"]
    stats = SplitStats()
    test = read_records("math", iter_raw_records(MATH / "test.jsonl"), stats=stats)
    assert len(test) == 5000 and stats.missing_answer == []
    levels = {r.group for r in test}
    assert levels == {f"Level {i}" for i in range(1, 6)}
    assert {r.meta["subject"] for r in test} >= {"Algebra", "Geometry", "Precalculus"}
    assert all(r.dataset == "math" and r.response for r in test)


@needs_gpt2
@needs_math
@pytest.mark.slow
def test_real_math_train_through_the_data_module(caplog):
    dm = MATHDataModule(str(GPT2), train_path=str(MATH / "train.jsonl"), add_mask_token=True, on_missing_answer="drop")
    with caplog.at_level(logging.INFO, logger="mdlm.data.sft"):
        records = dm.records("train")
        dm._log("train", dm.stats["train"])
    assert len(records) == 7498 and dm.stats["train"].num_missing_answers == 2
    assert "7500 records, 2 without a reference answer (dropped)" in caplog.text
    with pytest.raises(SFTDataError, match="on_missing_answer='drop'"):
        MATHDataModule(str(GPT2), train_path=str(MATH / "train.jsonl"), add_mask_token=True).setup("fit")


@needs_gpt2
@needs_math
def test_real_math500_references_are_its_answer_field():
    dm = SFTDataModule(str(GPT2), dataset="math500", test_path=str(MATH / "math500_test.jsonl"), add_mask_token=True,
                       eval_batch_size=128)
    dm.setup("test")
    raw = [json.loads(line) for line in (MATH / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()]
    batches = list(dm.test_dataloader())
    refs = [r for b in batches for r in b["reference"]]
    groups = [g for b in batches for g in b["group"]]
    assert len(refs) == 500 and refs == [r["answer"].strip() for r in raw]
    assert groups == [f"Level {r['level']}" for r in raw]
    assert all(d == "math" for b in batches for d in b["dataset"])
    by_subject = SFTDataModule(str(GPT2), dataset="math500", test_path=str(MATH / "math500_test.jsonl"),
                               add_mask_token=True, group_by="subject", limit_eval=20)
    assert [r.group for r in by_subject.records("test")] == [r["subject"] for r in raw[:20]]


# --------------------------------------------------------------------------- bad inputs and tokenizers


@needs_gpt2
def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n\n" + '{"question": "x", "answer": \n', encoding="utf-8")
    with pytest.raises(SFTDataError, match=r"broken.jsonl:3: malformed JSON line"):
        make_dm(path).setup("fit")
    path.write_text(json.dumps(RECORDS[0]) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(SFTDataError, match=r"broken.jsonl:2: expected a JSON object"):
        make_dm(path).setup("fit")
    path.write_text(json.dumps({"question": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(SFTDataError, match=r"broken.jsonl:1: record has no 'answer' field"):
        make_dm(path).setup("fit")


@needs_gpt2
def test_gsm8k_record_without_answer(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", RECORDS[:2] + [{"question": "q", "answer": "no final line"}])
    with pytest.raises(SFTDataError, match=r"1 gsm8k record\(s\) have no reference answer \(.*t.jsonl:3\)"):
        make_dm(path).setup("fit")
    dm = make_dm(path, on_missing_answer="drop")
    dm.setup("fit")
    assert len(dm.train_set) == 2 and dm.stats["train"].missing_answer == [f"{path}:3"]


@needs_gpt2
@pytest.mark.slow
def test_mask_token_rules(gsm_files, gpt2):
    train, _ = gsm_files
    with pytest.raises(TokenizerError, match=r"has no mask token.*mask_token_id=<id> \(e\.g\. 126336 for LLaDA\).*add_mask_token=True"):
        SFTDataModule(str(GPT2), train_path=str(train))
    with pytest.raises(TokenizerError, match="either mask_token_id"):
        SFTDataModule(str(GPT2), train_path=str(train), mask_token_id=50000, add_mask_token=True)
    with pytest.raises(TokenizerError, match="is the EOS id"):
        SFTDataModule(str(GPT2), train_path=str(train), mask_token_id=gpt2.eos_token_id)
    with pytest.raises(TokenizerError, match="outside the tokenizer's vocabulary"):
        SFTDataModule(str(GPT2), train_path=str(train), mask_token_id=60000)
    # a pretrained model's mask id: the vocabulary is not extended, nothing is read before setup
    dm = SFTDataModule(str(GPT2), train_path=str(train), mask_token_id=50000, max_length=64)
    assert (dm.vocab_size, dm.mask_token_id, dm.tokenizer.mask_token_id) == (50257, 50000, 50000)
    assert dm.pad_token_id == dm.eos_token_id == 50256 and dm._records == {}
    dm.setup("fit")
    # an id that occurs in the text is refused
    apples = gpt2(" apples")["input_ids"]
    assert len(apples) == 1
    with pytest.raises(SFTDataError, match=r"train.jsonl:2: the mask token id .* occurs in the tokenised train data"):
        SFTDataModule(str(GPT2), train_path=str(train), mask_token_id=apples[0], max_length=64).setup("fit")
    # training from scratch: [MASK] is added
    dm = make_dm(train)
    assert dm.vocab_size == len(gpt2) + 1 == len(dm.tokenizer) and dm.mask_token_id == len(gpt2)


@needs_gpt2
def test_configuration_errors(tmp_path, gsm_files):
    with pytest.raises(SFTDataError, match="no data"):
        SFTDataModule(str(GPT2), add_mask_token=True)
    with pytest.raises(FileNotFoundError, match="train_path"):
        make_dm(tmp_path / "absent.jsonl")
    with pytest.raises(SFTDataError, match="on_overflow='truncate' is not one of"):
        make_dm(gsm_files[0], on_overflow="truncate")
    with pytest.raises(SFTDataError, match="no test data"):
        make_dm(gsm_files[0]).test_dataloader()


# --------------------------------------------------------------------------- Hugging Face sources (no network)


@needs_gpt2
def test_hugging_face_source_errors_and_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # "not installed"
    dm = SFTDataModule(str(GPT2), hf_name="openai/gsm8k", hf_config="main", add_mask_token=True, max_length=128)
    with pytest.raises(SFTDataError, match=r"needs the `datasets` package"):
        dm.setup("test")

    calls = []

    def unreachable(name, config, split):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    dm = SFTDataModule(str(GPT2), hf_name="openai/gsm8k", hf_config="main", add_mask_token=True, max_length=128)
    with pytest.raises(SFTDataError, match=r"could not load Hugging Face dataset 'openai/gsm8k' \(config 'main'\) split 'test'.*offline"):
        dm.setup("test")

    def fake(name, config, split):
        calls.append((name, config, split))
        return RECORDS if split == "train" else RECORDS[:2]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake))
    dm = SFTDataModule(str(GPT2), hf_name="openai/gsm8k", add_mask_token=True, max_length=128, limit_train=4)
    dm.setup("fit")
    dm.setup("test")
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert len(dm.train_set) == 4 and len(dm.test_set) == 2
    assert dm.records("test")[1].where == "openai/gsm8k/main [test] row 1"


# --------------------------------------------------------------------------- loaders and Lightning


@needs_gpt2
def test_train_loader_shuffle_and_val_holdout(gsm_files):
    train, _ = gsm_files
    dm = make_dm(train, val_size=2, batch_size=1, seed=3)
    dm.setup("fit")
    train_idx = sorted(dm.train_set.indices)
    val_idx = sorted(dm.val_set.indices)
    assert len(val_idx) == 2 and sorted(train_idx + val_idx) == list(range(5))
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)
    order = [int(b["index"]) for b in loader]
    assert sorted(order) == train_idx
    assert order == [int(b["index"]) for b in dm.train_dataloader()]  # a pure function of (seed, epoch)
    val = list(dm.val_dataloader())
    assert [int(b["index"]) for b in val] == val_idx and "maskable" in val[0]
    assert dm.val_dataloader_names == ["val"]


@needs_gpt2
def test_lightning_fit_and_validate_consume_sft_batches(gsm_files, tmp_path):
    from functools import partial

    from lightning.pytorch import Trainer

    from mdlm.models.transformer import Transformer
    from mdlm.module import MaskedDiffusionLM
    from mdlm.samplers import Uniform

    train, _ = gsm_files
    dm = make_dm(train, val_size=2, batch_size=2, pad_to="batch", max_length=48)
    model = MaskedDiffusionLM(
        backbone=partial(Transformer, preset="tiny"), vocab_size=dm.vocab_size, mask_token_id=dm.mask_token_id,
        normalization="per_sequence", lr_schedule="constant",
    )
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=1, num_sanity_val_steps=0, callbacks=[Uniform()],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert torch.isfinite(torch.tensor(metrics["val/nelbo"]))


@needs_gpt2
@needs_math
def test_chat_train_with_a_math500_test_split_the_papers_layout(tmp_path):
    """The paper fine-tunes on chat records (tulu-3-sft-personas-math-filtered) and tests on MATH-500:
    train/val use the chat adapter, test the MATH-500 one (references from its answer field)."""
    conv = [{"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(6)]
    train = write_jsonl(tmp_path / "tulu_like.jsonl", conv)
    dm = make_dm(train, MATH / "math500_test.jsonl", dataset="chat", test_dataset="math500", val_size=2, limit_eval=3)
    dm.setup("fit")
    dm.setup("test")
    assert {r.dataset for r in dm.records("train") + dm.records("val")} == {"chat"}
    raw = [json.loads(line) for line in (MATH / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()[:3]]
    test = dm.records("test")
    assert [r.reference for r in test] == [r["answer"].strip() for r in raw] and {r.dataset for r in test} == {"math"}
    with pytest.raises(SFTDataError, match="test_dataset"):
        make_dm(train, dataset="chat", test_dataset="mmlu")
