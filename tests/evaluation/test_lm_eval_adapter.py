"""The lm-evaluation-harness adapter, end to end and offline: a tiny MaskedDiffusionLM checkpoint
and a BPE tokenizer written here, local JSON tasks (multiple choice, loglikelihood, rolling
perplexity, generation) run through ``lm_eval.simple_evaluate``. Skipped without ``lm-eval``."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install 'mdlm[lm_eval]'")

from lm_eval.api.instance import Instance  # noqa: E402

from mdlm.likelihood import estimate_log_likelihoods, greedy_matches  # noqa: E402
from mdlm.lm_eval_adapter import MDLMEvalHarness, _key  # noqa: E402

MAX_LEN = 48
CHOICES = [" deep blue", " fresh green grass", " loud noise"]
QUESTIONS = [
    {"question": "Q: the sky is A:", "choices": CHOICES, "answer": 0},
    {"question": "Q: a meadow is A:", "choices": CHOICES, "answer": 1},
    {"question": "Q: thunder is A:", "choices": CHOICES, "answer": 2},
    {"question": "Q: the sea is A:", "choices": CHOICES, "answer": 0},
]
TEXTS = [q["question"] + q["choices"][q["answer"]] for q in QUESTIONS]


def _train(model, tokenizer, steps: int = 200) -> None:
    """Fit the tiny model to answer the questions (LLaDA-SFT style: the question is never masked,
    answer and EOS are masked with ratio t ~ U[0.05, 1]); about a second."""
    from mdlm.objective import md_loss, token_nll

    eos = tokenizer.eos_token_id
    rows, answers = [], []
    for q in QUESTIONS:
        ctx = tokenizer(q["question"], add_special_tokens=False)["input_ids"]
        whole = tokenizer(q["question"] + q["choices"][q["answer"]], add_special_tokens=False)["input_ids"] + [eos]
        rows.append(whole)
        answers.append(len(ctx))
    width = max(map(len, rows))
    x = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    maskable = torch.arange(width)[None, :] >= torch.tensor(answers)[:, None]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch, ok = x.repeat(4, 1), maskable.repeat(4, 1)
        t = torch.rand(batch.shape[0], generator=gen).clamp(min=0.05)
        masked = (torch.rand(batch.shape, generator=gen) < t[:, None]) & ok
        noisy = torch.where(masked, torch.full_like(batch, model.mask_token_id), batch)
        nll = token_nll(model(noisy), batch, model.suppressed)
        loss = md_loss(nll, masked, t, ok, "elbo", "maskable_tokens")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """(checkpoint path, tokenizer folder, task folder, data folder)."""
    from lightning.pytorch import Trainer

    from mdlm.data.tokenizer import train_bpe_tokenizer
    from mdlm.models.transformer import Transformer
    from mdlm.module import MaskedDiffusionLM

    root = tmp_path_factory.mktemp("lm_eval")
    corpus = TEXTS * 20 + ["deep blue fresh green grass loud noise sky meadow thunder sea the is a Q: A:"] * 20
    tok = train_bpe_tokenizer(None, 400, texts=corpus, save_dir=root / "tokenizer")
    torch.manual_seed(0)
    model = MaskedDiffusionLM(
        backbone=functools.partial(Transformer, preset="tiny", max_seq_len=MAX_LEN),
        vocab_size=len(tok),
        mask_token_id=tok.mask_token_id,
        suppress_token_ids=[tok.pad_token_id],
    )
    _train(model, tok)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root))
    trainer.strategy.connect(model)
    trainer.save_checkpoint(root / "tiny.ckpt")

    data = root / "data"
    data.mkdir()
    (data / "mc.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (data / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    gen_rows = [{"question": q["question"], "target": q["choices"][q["answer"]]} for q in QUESTIONS]
    (data / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen_rows))
    tasks = root / "tasks"
    tasks.mkdir()
    common = (
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: {path}\n  cache_dir: {cache}\n"
        "test_split: test\ntarget_delimiter: \"\"\n"
    )
    cache = root / "hf_cache"
    (tasks / "mc.yaml").write_text(
        "task: mdlm_tiny_mc\n" + common.format(path=data / "mc.jsonl", cache=cache)
        + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (tasks / "ll.yaml").write_text(
        "task: mdlm_tiny_ll\n" + common.format(path=data / "gen.jsonl", cache=cache)
        + "output_type: loglikelihood\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{target}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: perplexity\n"
    )
    (tasks / "ppl.yaml").write_text(
        "task: mdlm_tiny_ppl\n" + common.format(path=data / "text.jsonl", cache=cache)
        + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (tasks / "gen.yaml").write_text(
        "task: mdlm_tiny_gen\n" + common.format(path=data / "gen.jsonl", cache=cache)
        + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{target}}"\n'
        "generation_kwargs:\n  until: [\"Q:\"]\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return root / "tiny.ckpt", root / "tokenizer", tasks


@pytest.fixture
def offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def lm(assets):
    ckpt, tok, _ = assets
    return MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=32, batch_size=16, gen_length=8, steps=8)


def _req(kind, args, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_simple_evaluate_end_to_end_offline(assets, offline):
    from lm_eval.tasks import TaskManager

    ckpt, tok, tasks = assets
    out = lm_eval.simple_evaluate(
        model="mdlm",
        model_args={"checkpoint": str(ckpt), "tokenizer": str(tok), "mc_num": 32, "gen_length": 8, "steps": 8},
        tasks=["mdlm_tiny_mc", "mdlm_tiny_ll", "mdlm_tiny_ppl", "mdlm_tiny_gen"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        batch_size=16,
        log_samples=True,
        bootstrap_iters=0,
    )
    res = out["results"]
    lm = MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=32, batch_size=16, gen_length=8, steps=8)

    # multiple choice: the harness' numbers are the estimator's, and the trained model is right
    samples = out["samples"]["mdlm_tiny_mc"]
    assert len(samples) == len(QUESTIONS)
    correct = 0
    for s in samples:
        q = s["doc"]
        ctx = lm.tok_encode(q["question"])
        pairs = [(ctx, lm.tok_encode(q["question"] + c)[len(ctx):]) for c in q["choices"]]
        est = estimate_log_likelihoods(lm.model, pairs, mask_token_id=lm.mask_token_id, mc_num=32, batch_size=7,
                                       items=[_key(ctx)] * 3, stratified=True, suppress_token_ids=lm.suppress_token_ids)
        harness = [r[0] for r in s["filtered_resps"]]
        assert harness == pytest.approx([e.mean for e in est], rel=1e-6)
        correct += int(max(range(3), key=lambda i: est[i].mean) == q["answer"])
    assert res["mdlm_tiny_mc"]["acc,none"] == pytest.approx(correct / len(QUESTIONS))
    assert res["mdlm_tiny_mc"]["acc,none"] == 1.0

    # loglikelihood task: acc is the greedy check, perplexity exp(-mean ll)
    ll = out["samples"]["mdlm_tiny_ll"]
    pairs = []
    for s in ll:
        ctx = lm.tok_encode(s["doc"]["question"])
        pairs.append((ctx, lm.tok_encode(s["doc"]["question"] + s["doc"]["target"])[len(ctx):]))
    greedy = greedy_matches(lm.model, pairs, mask_token_id=lm.mask_token_id, suppress_token_ids=lm.suppress_token_ids)
    assert [bool(s["filtered_resps"][0][1]) for s in ll] == greedy
    assert res["mdlm_tiny_ll"]["acc,none"] == pytest.approx(sum(greedy) / len(greedy))
    lls = [s["filtered_resps"][0][0] for s in ll]
    assert res["mdlm_tiny_ll"]["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-6)

    # rolling: the ELBO of each whole text after EOS (one window: the texts are short)
    ppl = out["samples"]["mdlm_tiny_ppl"]
    for s in ppl:
        toks = lm.tok_encode(s["doc"]["text"])
        (est,) = estimate_log_likelihoods(lm.model, [([lm.eos_token_id], toks)], mask_token_id=lm.mask_token_id,
                                          mc_num=32, items=[(_key(toks), 0)], stratified=True,
                                          suppress_token_ids=lm.suppress_token_ids)
        assert s["filtered_resps"][0] == pytest.approx(est.mean, rel=1e-6)
        assert est.mean < 0
    assert math.isfinite(res["mdlm_tiny_ppl"]["word_perplexity,none"])

    # generation: the harness returns generate()'s text cut at "Q:"
    gen = out["samples"]["mdlm_tiny_gen"]
    assert len(gen) == len(QUESTIONS) and all(isinstance(s["filtered_resps"][0], str) for s in gen)
    texts = [s["filtered_resps"][0] for s in gen]
    direct = lm.generate_until([_req("generate_until", (s["doc"]["question"], {"until": ["Q:"]})) for s in gen])
    assert texts == direct and all("Q:" not in t for t in texts)
    hits = [t == s["doc"]["target"] for t, s in zip(texts, gen)]
    assert res["mdlm_tiny_gen"]["exact_match,none"] == pytest.approx(sum(hits) / len(hits)) and sum(hits) >= 2


def test_registered_and_cli_string_arguments(assets):
    from lm_eval.api.registry import get_model

    ckpt, tok, _ = assets
    assert get_model("mdlm") is MDLMEvalHarness
    lm = MDLMEvalHarness.create_from_arg_string(
        f"checkpoint={ckpt},tokenizer={tok},mc_num=8,stratified=False,check_greedy=False",
        {"batch_size": 4, "max_batch_size": None, "device": "cpu"},
    )
    assert (lm.mc_num, lm.batch_size, lm.stratified, lm.check_greedy) == (8, 4, False, False)
    assert lm.mask_token_id == lm.model.mask_token_id and lm.max_length == MAX_LEN
    assert lm.mask_token_id in lm.suppress_token_ids and lm.tokenizer.pad_token_id in lm.suppress_token_ids
    (ll, greedy), = lm.loglikelihood([_req("loglikelihood", ("Q: grass is A:", " green"))])
    assert greedy is False and ll < 0


# ------------------------------------------------------------------ requests
def test_loglikelihood_matches_estimator_and_is_order_independent(lm):
    reqs = [_req("loglikelihood", ("Q: the sky is A:", c), i) for i, c in enumerate([" blue", " green", " loud"])]
    reqs.append(_req("loglikelihood", ("", "Q: grass is")))  # empty context: conditioned on EOS
    out = lm.loglikelihood(reqs)
    assert [o[0] for o in lm.loglikelihood(reqs[::-1])][::-1] == pytest.approx([o[0] for o in out], rel=1e-6)
    assert lm.loglikelihood(reqs[2:3])[0][0] == pytest.approx(out[2][0], rel=1e-6)
    ctx = lm.tok_encode("Q: the sky is A:")
    assert lm._encode_pair("Q: the sky is A: ", "blue") == (ctx, lm.tok_encode("Q: the sky is A: blue")[len(ctx):])
    assert lm._encode_pair("", "Q: grass is") == ([lm.eos_token_id], lm.tok_encode("Q: grass is"))
    assert all(isinstance(o[1], bool) for o in out)


def test_rolling_windows_cover_every_token_once(lm):
    tokens = list(range(10, 10 + 3 * MAX_LEN + 5))
    windows = lm._windows(tokens)
    assert [t for _, cont in windows for t in cont] == tokens
    assert windows[0][0] == [lm.eos_token_id]
    for prompt, cont in windows:
        assert len(prompt) + len(cont) <= MAX_LEN
    for prompt, cont in windows[1:]:  # maximal context: the window is full
        assert len(prompt) + len(cont) == MAX_LEN and len(cont) <= lm.rolling_chunk
    text = " ".join(["deep blue loud noise"] * 30)
    (value,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])
    assert len(lm.tok_encode(text)) > MAX_LEN and value < 0 and math.isfinite(value)


def test_generate_until_cuts_at_stop_strings(lm):
    out = lm.generate_until([_req("generate_until", ("Q: grass is A:", {"until": ["Q:"]})),
                             _req("generate_until", ("Q: the sky is A:", {"until": "e"}))])
    assert len(out) == 2 and "Q:" not in out[0] and "e" not in out[1]
    assert "[MASK]" not in out[0] + out[1]


# ------------------------------------------------------------------ bad input
def test_bad_input_errors(assets, lm):
    ckpt, tok, _ = assets
    with pytest.raises(ValueError, match=r"mc_num=0 must be an integer >= 1"):
        MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=0)
    with pytest.raises(ValueError, match=r"batch_size='auto'"):
        MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), batch_size="auto")
    with pytest.raises(ValueError, match="tokenizer=<tokenizer folder> is required"):
        MDLMEvalHarness(checkpoint=str(ckpt))
    with pytest.raises(ValueError, match=r"truncation='middle'"):
        MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), truncation="middle")
    from mdlm.data.tokenizer import load_tokenizer

    other = load_tokenizer(str(tok))
    other.mask_token = other.pad_token  # a tokenizer whose [MASK] is not the model's
    with pytest.raises(ValueError, match=r"mask token id \d+ differs from the model's mask_token_id=\d+"):
        MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=other)
    long_context = " ".join(["blue"] * (2 * MAX_LEN))
    with pytest.raises(ValueError, match=rf"the context has \d+ tokens but only \d+ fit in max_length={MAX_LEN}"):
        lm.loglikelihood([_req("loglikelihood", (long_context, " green"))])
    with pytest.raises(ValueError, match=r"continuation '' is empty after tokenisation"):
        lm.loglikelihood([_req("loglikelihood", ("Q: the sky is A:", ""))])
    left = MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=8, truncation="left", gen_length=8)
    ((value, _),) = left.loglikelihood([_req("loglikelihood", (long_context, " green"))])
    assert math.isfinite(value)
    assert isinstance(left.generate_until([_req("generate_until", (long_context, {"until": []}))])[0], str)
    too_long = MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), gen_length=64)
    with pytest.raises(ValueError, match=rf"gen_length=64 leaves no room for a prompt in max_length={MAX_LEN}"):
        too_long.generate_until([_req("generate_until", ("Q:", {"until": []}))])


def test_model_object_with_explicit_mask_id(assets):
    """``model=`` (any ``model(ids) -> logits``) with an explicit ``mask_token_id``: the tokenizer is
    loaded as it is, and [MASK] (the only suppressed id) is never generated."""
    from mdlm.models.transformer import Transformer

    _, tok, _ = assets
    ref = MDLMEvalHarness(checkpoint=str(assets[0]), tokenizer=str(tok), mc_num=8)
    torch.manual_seed(0)
    net = Transformer(ref.model.vocab_size, preset="tiny", max_seq_len=32)
    lm = MDLMEvalHarness(model=net, tokenizer=str(tok), mask_token_id=ref.mask_token_id, mc_num=8,
                         gen_length=4, steps=4, check_greedy=False)
    assert lm.suppress_token_ids == [ref.mask_token_id] and lm.max_length == 32
    ((value, greedy),) = lm.loglikelihood([_req("loglikelihood", ("Q: thunder is A:", " loud noise"))])
    assert value < 0 and greedy is False
    assert "[MASK]" not in lm.generate_until([_req("generate_until", ("Q:", {"until": []}))])[0]
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        MDLMEvalHarness(checkpoint=str(assets[0]), model=net, tokenizer=str(tok))


def test_padding_blind_model_results_do_not_depend_on_other_lengths(lm):
    """A model whose attention ignores ``attention_mask`` (``padding_hidden = False``, like LLaDA):
    the adapter batches only equal lengths and never passes a mask, so each request's ELBO,
    ``is_greedy`` and greedy generation are the same alone and among requests of other lengths."""
    from mdlm.models.transformer import Transformer

    class Blind(torch.nn.Module):
        padding_hidden = False

        def __init__(self, net):
            super().__init__()
            self.net, self.masks = net, []

        def forward(self, input_ids, attention_mask=None):
            self.masks.append(attention_mask is not None)
            return self.net(input_ids)  # attends to every position, padding included

    torch.manual_seed(0)
    blind = Blind(Transformer(lm.model.vocab_size, preset="tiny", max_seq_len=32))
    harness = MDLMEvalHarness(model=blind, tokenizer=lm.tokenizer, mask_token_id=lm.mask_token_id, mc_num=8,
                              batch_size=4, gen_length=4, steps=4, max_length=32)
    contexts = ["Q: grass is A:", "Q: the sky is A:", "Q:"]
    assert len({len(harness.tok_encode(c)) for c in contexts}) == 3
    gens = [_req("generate_until", (c, {"until": []}), i) for i, c in enumerate(contexts)]
    assert harness.generate_until(gens) == [harness.generate_until([g])[0] for g in gens]
    lls = [_req("loglikelihood", (c, " blue"), i) for i, c in enumerate(contexts)]
    assert harness.loglikelihood(lls) == [harness.loglikelihood([r])[0] for r in lls]
    assert blind.masks and not any(blind.masks)


def test_generate_until_with_fast_decoding(assets, lm):
    """Threshold 1, early stop at EOS and a cache rebuilt every step are exact for this model:
    the same texts as the exact loop; Fast-dLLM's settings (strings as from the command line) run."""
    ckpt, tok, _ = assets
    requests = [_req("generate_until", (q["question"], {"until": ["Q:"]})) for q in QUESTIONS]
    reference = lm.generate_until(requests)
    exactish = MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=8, batch_size=16, gen_length=8,
                               steps=8, block_length=4, threshold=1.0, stop_at_eos=True, cache="dual", cache_refresh=1)
    blocks = MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=8, batch_size=16, gen_length=8,
                             steps=8, block_length=4)
    assert exactish.generate_until(requests) == blocks.generate_until(requests)
    fast = MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), mc_num=8, gen_length=8, steps=8,
                           block_length=4, threshold="0.9", stop_at_eos="true", cache="dual", max_tokens_per_step="4")
    assert fast.fast_decoding == {"threshold": 0.9, "max_tokens_per_step": 4, "stop_at_eos": True, "cache": "dual",
                                  "cache_refresh": None}
    out = fast.generate_until(requests)
    assert len(out) == len(reference) and all(isinstance(t, str) and "[MASK]" not in t for t in out)
    with pytest.raises(ValueError, match=r"cache='full' is not a known cache mode"):
        MDLMEvalHarness(checkpoint=str(ckpt), tokenizer=str(tok), gen_length=8, cache="full")
