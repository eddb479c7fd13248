r"""Long generations from a WikiText-2 MDLM: speed and quality of the fast decoding settings vs the exact loop.

Three phases, one process (the first two are skipped on a rerun when their outputs exist):

1. **MDLM.** ``mdlm fit --config configs/wikitext_uniform.yaml --config
   configs/presets/wikitext_generation_cpu.yaml`` as a subprocess (tiny transformer, fp32, context
   288 = 32-token prompt + 256 generated tokens, about 15 minutes on one core), or ``--ckpt`` an
   existing checkpoint. The preset trains on the shipped WikiText-2 train prefix *and* the test
   split (the prefix alone is 74.5k tokens), and validates on WikiText-2 valid, which is held out
   from both models and is where the prompts come from. ``--train-text prefix`` trains on the
   prefix only.
2. **Judge.** A tiny autoregressive GPT-2 (``transformers.GPT2LMHeadModel`` from a random
   ``GPT2Config``; default 3 layers, width 192) trained with a plain torch loop, written here and
   independent of mdlm's model and training code, on the *same token stream* the MDLM trains on
   (the run's train files, split into WikiText articles, tokenized with the MDLM's tokenizer, EOS
   after each article), for a fixed step budget (default 500 steps of 8 x 288 tokens, about 10
   minutes on one core). Its perplexity on WikiText-2 valid (every full 288-token window; the first
   token of a window is not scored) is reported so that a reader can judge the judge. Saved in
   ``<work>/judge/``.
3. **Generation.** ``--num-samples`` prompts = the first ``--prompt-length`` (32) tokens of
   evenly spaced 288-token windows of WikiText-2 valid; every setting of :data:`SETTINGS` generates
   ``--gen-length`` (256) tokens after each, ``block_length`` 32, ``steps`` = ``gen_length``
   (the exact loop: one token per model call), sampled at ``--temperature`` 1 (0: greedy). Batches
   of ``--batch`` prompts; for each batch every setting runs once, in a rotated order (so load
   drifts hit every setting alike), all in this process after an untimed warm-up. Each invocation
   writes its temperature's block; blocks of other temperatures already in the results file are
   kept when they come from the same MDLM checkpoint and judge.

Reported per setting: tokens/s (each sample counted only up to its first EOS), speed-up in wall
time over the exact loop on the same prompts, model calls and query positions per sample
(``row_forward_passes``, ``row_query_positions``), tokens per sample; the judge's perplexity of the
generated continuation given the prompt (pooled over all continuation tokens, with a 95 % bootstrap
interval over samples), the mean per-sample NLL difference to the exact loop on the same prompts
(paired, ± s.e.), unigram entropy of the generated tokens (per sample, mean ± s.e., and of the
pooled token distribution; bits), the fraction of repeated 4-grams (per sample, mean ± s.e.), and
the fraction of samples token-for-token equal to the exact loop's. The real validation
continuations of the same prompts (cut at their first EOS too) get the same judge metrics as a
reference line. JSON + markdown to ``benchmarks/results/wikitext_generation.{json,md}`` with the
machine, its load average (start, end, and sampled during generation) and the run's CPU time.

    OMP_NUM_THREADS=1 python experiments/wikitext_generation.py                    # ~40 min on one core (trains both models)
    OMP_NUM_THREADS=1 python experiments/wikitext_generation.py --temperature 0    # + the greedy block, ~12 min
    OMP_NUM_THREADS=1 python experiments/wikitext_generation.py --smoke    # about a minute
    OMP_NUM_THREADS=1 python -m experiments.wikitext_generation --ckpt runs/x/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

if not __package__:  # run as a file (`python experiments/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import (  # noqa: E402
    REPO,
    RESULTS,
    LoadSampler,
    fit_subprocess,
    machine_line,
    machine_record,
    markdown_table,
    mean_se,
    write_results,
)

CONFIG = "configs/wikitext_uniform.yaml"
PRESET = "configs/presets/wikitext_generation_cpu.yaml"
DATA = REPO.parent / "shared" / "data" / "wikitext-2-raw"
TRAIN_TEXT = {
    "prefix": [DATA / "wiki.train.head.raw"],
    "prefix+test": [DATA / "wiki.train.head.raw", DATA / "wiki.test.raw"],
}
VALID = DATA / "wiki.valid.raw"
OUT = RESULTS / "wikitext_generation.json"

#: the decoding settings: name -> extra keyword arguments of mdlm.generation.generate ("exact": none)
SETTINGS: dict[str, dict[str, Any]] = {"exact": {}}
for _cache in (None, "prefix", "dual"):
    for _tau in (None, 0.9, 0.7, 0.5):
        if _cache is None and _tau is None:
            continue
        _name = "+".join(p for p in (f"tau{_tau}" if _tau else "", _cache or "") if p)
        SETTINGS[_name] = {"threshold": _tau, "cache": _cache, "stop_at_eos": True}


# ---------------------------------------------------------------------------------------------
# metrics (pure functions; tested against hand computations in tests/benchmarks/test_wikitext_generation.py)
# ---------------------------------------------------------------------------------------------
def unigram_entropy(tokens: Sequence[int], base: float = 2.0) -> float:
    """Entropy of the empirical token distribution of ``tokens`` (bits for base 2); NaN when empty."""
    counts = Counter(int(t) for t in tokens)
    n = sum(counts.values())
    if n == 0:
        return float("nan")
    return sum(c / n * math.log(n / c) for c in counts.values()) / math.log(base)


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    """Fraction of the ``n``-grams of ``tokens`` that repeat an earlier one: 1 - distinct / total; NaN when none."""
    grams = [tuple(int(t) for t in tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return float("nan")
    return 1.0 - len(set(grams)) / len(grams)


def pooled_perplexity(nlls: Sequence[np.ndarray]) -> float:
    """exp(total NLL / total tokens) over all samples' per-token NLLs (nats); NaN when no token."""
    total = sum(float(np.sum(x)) for x in nlls)
    count = sum(len(x) for x in nlls)
    return math.exp(total / count) if count else float("nan")


def bootstrap_perplexity(nlls: Sequence[np.ndarray], reps: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of :func:`pooled_perplexity`, resampling samples with replacement."""
    sums = np.array([float(np.sum(x)) for x in nlls])
    counts = np.array([len(x) for x in nlls], dtype=float)
    if counts.sum() == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(reps, len(sums)))
    tot, cnt = sums[idx].sum(1), counts[idx].sum(1)
    ppl = np.exp(tot[cnt > 0] / cnt[cnt > 0])
    lo, hi = np.quantile(ppl, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


@torch.no_grad()
def continuation_nll(judge: Any, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[int]], batch: int = 16) -> list[np.ndarray]:
    """Per-token NLL (nats) of each continuation under the causal ``judge``, conditioned on its prompt.

    ``judge(input_ids, attention_mask=...)`` returns logits ``[B, L, V]`` (or an object with
    ``.logits``); rows are ``prompt + continuation``, right-padded. Token ``j`` of a continuation
    is scored by the logits at position ``len(prompt) + j - 1``. Empty continuations give empty arrays.
    """
    out: list[np.ndarray] = [np.zeros(0) for _ in prompts]
    order = [i for i in range(len(prompts)) if len(conts[i]) > 0]
    for lo in range(0, len(order), batch):
        rows = order[lo : lo + batch]
        seqs = [list(map(int, prompts[i])) + list(map(int, conts[i])) for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        attn = torch.zeros(len(rows), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            attn[r, : len(s)] = 1
        res = judge(ids, attention_mask=attn)
        logits = getattr(res, "logits", res).float()
        logp = torch.log_softmax(logits, dim=-1)
        for r, i in enumerate(rows):
            p, c = len(prompts[i]), len(conts[i])
            target = ids[r, p : p + c]
            out[i] = (-logp[r, p - 1 : p + c - 1].gather(-1, target[:, None])[:, 0]).double().numpy()
    return out


def _nan_mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    m, se = mean_se(vals)
    return m, se, len(vals)


def quality(prompts: list[list[int]], conts: list[list[int]], nlls: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Judge and diversity metrics of a set of continuations (see the module doc)."""
    nll_means = [float(np.mean(x)) if len(x) else float("nan") for x in nlls]
    ent = [unigram_entropy(c) for c in conts]
    rep = [repetition_rate(c, 4) for c in conts]
    pooled_tokens = [t for c in conts for t in c]
    m_nll, se_nll, _ = _nan_mean_se(nll_means)
    m_ent, se_ent, _ = _nan_mean_se(ent)
    m_rep, se_rep, n_rep = _nan_mean_se(rep)
    lengths = [len(c) for c in conts]
    return {
        "samples": len(conts),
        "tokens_per_sample": float(np.mean(lengths)),
        "empty_samples": sum(1 for n in lengths if n == 0),
        "judge_ppl": pooled_perplexity(nlls),
        "judge_ppl_ci95": bootstrap_perplexity(nlls, seed=seed),
        "judge_nll_mean": m_nll,
        "judge_nll_se": se_nll,
        "entropy_bits_mean": m_ent,
        "entropy_bits_se": se_ent,
        "entropy_bits_pooled": unigram_entropy(pooled_tokens),
        "distinct_tokens_pooled": len(set(pooled_tokens)),
        "rep4_mean": m_rep,
        "rep4_se": se_rep,
        "rep4_samples": n_rep,
        "per_sample": {"nll_mean": nll_means, "entropy_bits": ent, "rep4": rep, "length": lengths},
    }


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """Mean ± s.e. of ``a[i] - b[i]`` over the pairs where both are numbers."""
    d = [x - y for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    if not d:
        return float("nan"), float("nan"), 0
    m, se = mean_se(d)
    return m, se, len(d)


# ---------------------------------------------------------------------------------------------
# data: the MDLM's token stream, rebuilt from its files and tokenizer
# ---------------------------------------------------------------------------------------------
def token_stream(tokenizer: Any, files: Sequence[Path]) -> np.ndarray:
    """WikiText articles of ``files`` tokenized as mdlm's data module does (no special tokens, EOS after each)."""
    from mdlm.data.packing import split_wikitext_articles

    eos = int(tokenizer.eos_token_id)
    parts: list[np.ndarray] = []
    for path in files:
        with open(path, encoding="utf-8", newline="") as f:
            docs = split_wikitext_articles(f.read())
        for lo in range(0, len(docs), 256):
            ids = tokenizer(docs[lo : lo + 256], add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
            for doc in ids:
                parts.append(np.asarray(doc, dtype=np.int64))
                parts.append(np.array([eos], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def run_train_files(ckpt: Any, fallback: Sequence[Path]) -> list[Path]:
    """The train files of the checkpoint's data module (relative paths from the repository root), else ``fallback``."""
    hp = dict(ckpt.datamodule_hyper_parameters or {})
    hp = dict(hp.get("init_args", hp))
    files: list[str] = []
    if hp.get("train_files"):
        tf = hp["train_files"]
        files = [tf] if isinstance(tf, str) else list(tf)
    elif hp.get("data_dir") and hp.get("train_file"):
        files = [str(Path(hp["data_dir"]) / hp["train_file"])]
    paths = [(REPO / f).resolve() if not Path(f).is_absolute() else Path(f) for f in files]
    if paths and all(p.is_file() for p in paths):
        return paths
    return [Path(p) for p in fallback]


def valid_windows(stream: np.ndarray, window: int, count: int) -> np.ndarray:
    """``count`` evenly spaced, non-overlapping ``window``-token windows of ``stream`` ``[count, window]``."""
    n = len(stream) // window
    if n < count:
        raise ValueError(f"the validation stream has {n} windows of {window} tokens; asked for {count}")
    idx = np.unique(np.linspace(0, n - 1, count).round().astype(int))
    return np.stack([stream[i * window : (i + 1) * window] for i in idx])


def cut_at(tokens: Sequence[int], eos: int) -> list[int]:
    """``tokens`` up to (not including) the first ``eos``."""
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


# ---------------------------------------------------------------------------------------------
# phase 1: the MDLM
# ---------------------------------------------------------------------------------------------
def mdlm_overrides(args: argparse.Namespace) -> list[str]:
    ctx = args.prompt_length + args.gen_length
    out = ["--config", PRESET, f"--data.init_args.block_length={ctx}"]
    if args.train_text != "prefix+test":
        out.append("--data.init_args.train_files=[" + ",".join(os.path.relpath(p, REPO) for p in TRAIN_TEXT[args.train_text]) + "]")
    if args.mdlm_steps:
        out += [f"--trainer.max_steps={args.mdlm_steps}", f"--trainer.val_check_interval={args.mdlm_steps}"]
    if args.smoke:
        out += [
            "--trainer.limit_val_batches=1", "--data.init_args.tokenizer=bpe:512",
            "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
            "--model.init_args.warmup_steps=1",
        ]
    return out


def train_mdlm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run (or reuse) the ``mdlm fit`` subprocess; returns its record with the checkpoint path."""
    name = "mdlm_smoke" if args.smoke else "mdlm"
    overrides = mdlm_overrides(args)
    record_file = work / f"{name}.json"
    ckpt = work / name / "version_0" / "checkpoints" / "last.ckpt"
    if not args.retrain and record_file.is_file() and ckpt.is_file():
        record = json.loads(record_file.read_text())
        if record.get("overrides") == overrides:
            print(f"[mdlm] reusing {ckpt} ({record['wall_time_s']} s when trained)", flush=True)
            record["reused"] = True
            return record
    print(f"[mdlm] training: mdlm fit --config {CONFIG} {' '.join(overrides)}", flush=True)
    res = fit_subprocess(CONFIG, overrides, work, name, threads=int(os.environ.get("OMP_NUM_THREADS") or 1))
    if res["returncode"] != 0 or not ckpt.is_file():
        raise RuntimeError(f"mdlm fit failed (exit {res['returncode']}); command: {' '.join(res['cmd'])}")
    hist = res["metrics"].get("history") or [{}]
    final = {k: v for k, v in hist[-1].items() if "bin" not in k}
    record = {
        "command": " ".join(["mdlm", *res["cmd"][1:]]).replace(str(REPO) + "/", ""),
        "overrides": overrides,
        "wall_time_s": res["wall_time_s"],
        "final": final,
        "val_history": [{k: h[k] for k in ("step", "val/nelbo", "val/ppl") if k in h} for h in hist if "val/nelbo" in h],
        "ckpt": str(ckpt),
    }
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    record["reused"] = False
    return record


# ---------------------------------------------------------------------------------------------
# phase 2: the judge (plain torch loop on a transformers GPT-2; nothing from mdlm)
# ---------------------------------------------------------------------------------------------
def make_judge(vocab: int, ctx: int, layers: int, width: int, heads: int, dropout: float, eos: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab, n_positions=ctx, n_embd=width, n_layer=layers, n_head=heads,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=eos, eos_token_id=eos,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(cfg)


@torch.no_grad()
def judge_window_nll(judge: Any, stream: np.ndarray, ctx: int, limit: int | None = None, batch: int = 16) -> tuple[float, int]:
    """Mean NLL (nats/token) of the judge over non-overlapping ``ctx``-token windows (first token of each unscored)."""
    n = len(stream) // ctx
    if limit:
        n = min(n, limit)
    total, count = 0.0, 0
    was = judge.training
    judge.eval()
    for lo in range(0, n, batch):
        x = torch.from_numpy(np.stack([stream[i * ctx : (i + 1) * ctx] for i in range(lo, min(n, lo + batch))]))
        logits = judge(x).logits.float()
        total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
        count += x[:, 1:].numel()
    judge.train(was)
    return total / max(count, 1), count


def train_judge(args: argparse.Namespace, train: np.ndarray, valid: np.ndarray, vocab: int, eos: int) -> tuple[Any, dict[str, Any]]:
    """A random-init GPT-2 trained on random ``ctx``-token windows of ``train`` (AdamW, warm-up + cosine)."""
    ctx = args.prompt_length + args.gen_length
    torch.manual_seed(args.seed)
    judge = make_judge(vocab, ctx, args.judge_layers, args.judge_width, args.judge_heads, args.judge_dropout, eos)
    decay = [p for p in judge.parameters() if p.dim() >= 2]
    other = [p for p in judge.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=args.judge_lr, betas=(0.9, 0.95))
    steps, warm = args.judge_steps, max(1, min(50, args.judge_steps // 10))

    def lr_at(step: int) -> float:
        if step < warm:
            return args.judge_lr * (step + 1) / warm
        frac = (step - warm) / max(1, steps - warm)
        return args.judge_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    rng = np.random.default_rng(args.seed)
    curve: list[dict[str, float]] = []
    every = max(1, steps // 5)
    t0 = time.perf_counter()
    judge.train()
    losses: list[float] = []
    done = 0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = rng.integers(0, len(train) - ctx, size=args.judge_batch)
        x = torch.from_numpy(np.stack([train[s : s + ctx] for s in starts]))
        logits = judge(x).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(judge.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if done % every == 0 or done == steps:
            val, _ = judge_window_nll(judge, valid, ctx, limit=args.judge_curve_windows)
            curve.append({"step": done, "train_loss": float(np.mean(losses[-every:])), "val_nll_subset": val, "s": round(time.perf_counter() - t0, 1)})
            print(f"[judge] step {done}/{steps}: train loss {curve[-1]['train_loss']:.3f}, valid NLL (first {args.judge_curve_windows} windows) {val:.3f}, {curve[-1]['s']} s", flush=True)
        if args.judge_minutes and time.perf_counter() - t0 > 60 * args.judge_minutes:
            print(f"[judge] time cap of {args.judge_minutes} min reached after {done} steps", flush=True)
            break
    train_s = time.perf_counter() - t0
    judge.eval()
    val_nll, val_tokens = judge_window_nll(judge, valid, ctx, limit=args.judge_val_windows)
    record = {
        "config": {"n_layer": args.judge_layers, "n_embd": args.judge_width, "n_head": args.judge_heads, "n_positions": ctx,
                   "vocab_size": vocab, "dropout": args.judge_dropout, "tied_embeddings": True},
        "params": sum(p.numel() for p in judge.parameters()),
        "steps": done, "steps_planned": steps, "batch": args.judge_batch, "context": ctx, "lr": args.judge_lr,
        "train_tokens_seen": done * args.judge_batch * ctx, "train_stream_tokens": int(len(train)),
        "train_s": round(train_s, 1), "curve": curve,
        "valid_nll": val_nll, "valid_ppl": math.exp(val_nll), "valid_tokens_scored": val_tokens,
    }
    return judge, record


def load_or_train_judge(args: argparse.Namespace, work: Path, key: dict[str, Any], train: np.ndarray, valid: np.ndarray, vocab: int, eos: int) -> tuple[Any, dict[str, Any]]:
    folder = work / ("judge_smoke" if args.smoke else "judge")
    meta = folder / "judge.json"
    if not args.retrain and meta.is_file():
        record = json.loads(meta.read_text())
        if record.get("key") == key:
            from transformers import GPT2LMHeadModel

            print(f"[judge] reusing {folder} (valid ppl {record['valid_ppl']:.1f})", flush=True)
            record["reused"] = True
            return GPT2LMHeadModel.from_pretrained(folder).eval(), record
    judge, record = train_judge(args, train, valid, vocab, eos)
    record["key"] = key
    folder.mkdir(parents=True, exist_ok=True)
    judge.save_pretrained(folder)
    meta.write_text(json.dumps(record, indent=1) + "\n")
    record["reused"] = False
    return judge, record


# ---------------------------------------------------------------------------------------------
# phase 3: generation
# ---------------------------------------------------------------------------------------------
def generate_all(model: Any, prompts: torch.Tensor, settings: list[str], args: argparse.Namespace, eos: int, suppress: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Every setting on every batch of prompts, the settings in a rotated order per batch; times and counts."""
    from mdlm.generation import generate

    base = dict(mask_token_id=int(model.mask_token_id), gen_length=args.gen_length, steps=args.steps or args.gen_length,
                block_length=args.block_length, temperature=args.temperature, eos_token_id=eos, suppress_token_ids=suppress)

    def call(name: str, batch: torch.Tensor, seed: int, **override: Any) -> Any:
        gen = torch.Generator().manual_seed(seed) if args.temperature > 0 else None
        kw = {k: v for k, v in SETTINGS[name].items() if v is not None}
        return generate(model, batch, generator=gen, **{**base, **override}, **kw)

    warm = min(args.gen_length, 2 * args.block_length)
    for name in settings:  # untimed warm-up: allocator, kernels, the cache path
        call(name, prompts[:2], 0, gen_length=warm, steps=warm)
    res = {n: {"seconds": 0.0, "tokens": [], "calls": [], "query_positions": [], "full": []} for n in settings}
    nb = math.ceil(len(prompts) / args.batch)
    for b in range(nb):
        batch = prompts[b * args.batch : (b + 1) * args.batch]
        order = settings[b % len(settings) :] + settings[: b % len(settings)]
        for name in order:
            t0 = time.perf_counter()
            out = call(name, batch, args.seed * 100_003 + b)
            dt = time.perf_counter() - t0
            r = res[name]
            r["seconds"] += dt
            r["tokens"] += [s.tolist() for s in out.sequences]
            r["full"] += out.tokens.tolist()
            r["calls"] += out.row_forward_passes.tolist()
            r["query_positions"] += out.row_query_positions.tolist()
        print(f"[gen] batch {b + 1}/{nb} done; load {os.getloadavg()[0]:.1f}; cumulative s: "
              + ", ".join(f"{n} {res[n]['seconds']:.0f}" for n in settings), flush=True)
    return res


@torch.no_grad()
def confidence_profile(model: Any, windows: np.ndarray, prompt_length: int, block_length: int, suppress: Sequence[int],
                       taus: Sequence[float] = (0.9, 0.7, 0.5), blocks: Sequence[int] = (0, 3, 7), seed: int = 0, batch: int = 8) -> dict[str, Any]:
    """How often the MDLM is confident enough for a threshold to fire, on real validation windows.

    For each window and each block index ``b`` of ``blocks``: the real tokens up to the block's start,
    then masks to the end (the state at the start of block ``b``: "block start"), or the same with a
    random half of the block's positions revealed ("half revealed"). Reported per state: the mean,
    over the masked positions of the block, of the top probability (mask and ``suppress`` ids
    excluded, as :func:`~mdlm.generation.generate` does), and the fraction at or above each tau (an
    upper bound on the positions a threshold commits: a sampled token's probability is at most the top one).
    """
    mask_id = int(model.mask_token_id)
    gen = torch.Generator().manual_seed(seed)
    tops: dict[str, list[torch.Tensor]] = {"block start": [], "half revealed": []}
    for b in blocks:
        start = prompt_length + b * block_length
        if start + block_length > windows.shape[1]:
            continue
        for state in tops:
            for lo in range(0, len(windows), batch):
                x = torch.from_numpy(windows[lo : lo + batch]).long().clone()
                masked = torch.zeros_like(x, dtype=torch.bool)
                masked[:, start:] = True
                if state == "half revealed":
                    reveal = torch.rand(len(x), block_length, generator=gen).argsort(dim=1)[:, : block_length // 2]
                    masked[:, start : start + block_length].scatter_(1, reveal, False)
                x[masked] = mask_id
                logits = model(x).float()
                logits[..., [mask_id, *suppress]] = float("-inf")
                top = torch.softmax(logits[:, start : start + block_length], dim=-1).amax(-1)
                tops[state].append(top[masked[:, start : start + block_length]])
    out: dict[str, Any] = {"blocks": list(blocks), "windows": len(windows)}
    for state, parts in tops.items():
        t = torch.cat(parts) if parts else torch.zeros(0)
        out[state] = {"positions": int(t.numel()), "mean_top_prob": float(t.mean()) if t.numel() else float("nan"),
                      "max_top_prob": float(t.max()) if t.numel() else float("nan"),
                      "frac_at_or_above": {str(tau): float((t >= tau).float().mean()) if t.numel() else float("nan") for tau in taus}}
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _f(x: float | None, d: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{d}f}"


def markdown(data: dict[str, Any]) -> str:
    m, j = data["mdlm"], data["judge"]
    final = m.get("final", {})
    lines = [
        "### Long generations from a WikiText-2 MDLM: fast settings vs the exact loop",
        "",
        f"- **MDLM** (`{m.get('command', m.get('ckpt'))}`): step {final.get('step', '?')}, "
        f"WikiText-2 valid NELBO {_f(final.get('val/nelbo'), 3)} nats/token (perplexity bound {_f(final.get('val/ppl'), 1)}), "
        f"{_f(m.get('wall_time_s'), 0)} s of training; train text: {', '.join(data['data']['train_files'])} "
        f"({data['data']['train_tokens']:,} tokens, {data['data']['tokenizer']}).",
        f"- **Judge**: GPT-2 ({j['config']['n_layer']} layers, width {j['config']['n_embd']}, {j['params'] / 1e6:.2f}M parameters, "
        f"tied embeddings), {j['steps']} steps of {j['batch']} × {j['context']} tokens on the same token stream "
        f"({j['train_tokens_seen'] / j['train_stream_tokens']:.1f} epochs), {j['train_s']:.0f} s; "
        f"**WikiText-2 valid perplexity {j['valid_ppl']:.1f}** ({j['valid_tokens_scored']:,} tokens).",
    ]
    c = data.get("confidence")
    if c:
        parts = []
        for state in ("block start", "half revealed"):
            fr = ", ".join(f"≥ {tau}: {100 * v:.2f} %" for tau, v in c[state]["frac_at_or_above"].items())
            parts.append(f"{state}: mean {c[state]['mean_top_prob']:.3f}, max {c[state]['max_top_prob']:.3f}; {fr}")
        lines.append(
            f"- **MDLM confidence** (top probability at the masked positions of block {', '.join(str(b) for b in c['blocks'])} "
            f"of the {c['windows']} validation windows, real text before the block; {c['block start']['positions']:,} positions per state): "
            + " — ".join(parts) + ".")
    for temp in sorted(data["runs"], key=lambda t: -float(t)):
        lines += ["", *run_markdown(data["runs"][temp])]
    lines += [
        "",
        "speed-up: wall time of the exact loop / of the setting, same prompts. calls/sample: model calls each sample took part in; "
        "query pos./sample: positions whose logits were computed for it. judge ppl: exp(total NLL / total tokens) of the continuations "
        "under the judge, 95 % percentile bootstrap over samples. ΔNLL: mean over samples of (mean NLL per token of the setting − "
        "of the exact loop), paired on prompts. entropy: unigram entropy of a sample's generated tokens (mean ± s.e.), and of all "
        "samples' tokens pooled. rep. 4-grams: fraction of a sample's 4-grams that repeat an earlier one. = exact: fraction of "
        "samples token-for-token equal to the exact loop's.",
        "",
    ]
    return "\n".join(lines)


def run_markdown(run: dict[str, Any]) -> list[str]:
    """The lines of one temperature's block: machine, load, setup, table."""
    g = run["generation"]
    lines = [
        f"#### Temperature {g['temperature']}" + (" (greedy)" if g["temperature"] == 0 else " (sampled)"),
        "",
        machine_line(run["machine"]),
        f"Load (1-min average) sampled during generation: mean {g['load']['mean']}, min {g['load']['min']}, max {g['load']['max']}. "
        f"This invocation: {run['wall_time_s'] / 60:.1f} min wall, {run['cpu_time_s'] / 60:.1f} min CPU (process + children)"
        + (", MDLM and judge reused." if run.get("models_reused") else ", MDLM and judge training included."),
        "",
        f"{g['samples']} prompts = the first {g['prompt_length']} tokens of evenly spaced "
        f"{g['prompt_length'] + g['gen_length']}-token WikiText-2 valid windows; gen_length {g['gen_length']}, "
        f"steps {g['steps']}, block_length {g['block_length']}, temperature {g['temperature']}; batches of {g['batch']}, "
        f"settings in a rotated order per batch, one process, after a warm-up; generation {g['seconds'] / 60:.1f} min. "
        f"Tokens counted up to the first EOS; judge metrics on the continuation up to its first EOS, given the prompt.",
        "",
    ]
    heads = ["setting", "tok/s", "speed-up", "calls/sample", "query pos./sample", "tokens/sample", "judge ppl [95% CI]",
             "ΔNLL vs exact (± s.e.)", "entropy/sample (bits)", "pooled entropy", "rep. 4-grams", "= exact"]
    rows = []
    for name, r in run["settings"].items():
        q = r["quality"]
        d = r.get("dnll_vs_exact") or [float("nan")] * 3
        rows.append([
            name, _f(r["tok_per_s"], 1), f"{r['speedup']:.2f}×", _f(r["calls_per_sample"], 1), _f(r["query_positions_per_sample"], 0),
            _f(q["tokens_per_sample"], 1), f"{q['judge_ppl']:,.0f} [{q['judge_ppl_ci95'][0]:,.0f}, {q['judge_ppl_ci95'][1]:,.0f}]",
            "0" if name == "exact" else f"{d[0]:+.3f} ± {d[1]:.3f}",
            f"{q['entropy_bits_mean']:.2f} ± {q['entropy_bits_se']:.2f}", f"{q['entropy_bits_pooled']:.2f}",
            f"{q['rep4_mean']:.3f} ± {q['rep4_se']:.3f}", f"{r['same_as_exact']:.2f}",
        ])
    q = run["reference"]["quality"]
    d = run["reference"].get("dnll_vs_exact") or [float("nan")] * 3
    rows.append([
        "*real continuation*", "-", "-", "-", "-", _f(q["tokens_per_sample"], 1),
        f"{q['judge_ppl']:,.0f} [{q['judge_ppl_ci95'][0]:,.0f}, {q['judge_ppl_ci95'][1]:,.0f}]", f"{d[0]:+.3f} ± {d[1]:.3f}",
        f"{q['entropy_bits_mean']:.2f} ± {q['entropy_bits_se']:.2f}", f"{q['entropy_bits_pooled']:.2f}",
        f"{q['rep4_mean']:.3f} ± {q['rep4_se']:.3f}", "-",
    ])
    return [*lines, markdown_table(heads, rows)]


def identity(mdlm_rec: dict[str, Any], judge_rec: dict[str, Any]) -> dict[str, Any]:
    """What a temperature block depends on besides its own settings: the MDLM checkpoint and the judge."""
    return {"ckpt": str(mdlm_rec.get("ckpt")), "mdlm_step": (mdlm_rec.get("final") or {}).get("step"),
            "judge_params": judge_rec.get("params"), "judge_valid_nll": judge_rec.get("valid_nll")}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="an existing MDLM checkpoint (skips training)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "wikitext_generation", help="MDLM run, judge and smoke results")
    p.add_argument("--out", type=Path, help=f"results JSON (default {OUT.relative_to(REPO)}; --smoke: <work>/wikitext_generation_smoke.json)")
    p.add_argument("--train-text", choices=list(TRAIN_TEXT), default="prefix+test", help="what the MDLM (and hence the judge) trains on")
    p.add_argument("--mdlm-steps", type=int, help="override the preset's max_steps")
    p.add_argument("--retrain", action="store_true", help="train the MDLM and the judge even when saved ones match")
    p.add_argument("--judge-layers", type=int, default=3)
    p.add_argument("--judge-width", type=int, default=192)
    p.add_argument("--judge-heads", type=int, default=4)
    p.add_argument("--judge-dropout", type=float, default=0.1)
    p.add_argument("--judge-steps", type=int, default=500)
    p.add_argument("--judge-batch", type=int, default=8)
    p.add_argument("--judge-lr", type=float, default=1e-3)
    p.add_argument("--judge-minutes", type=float, default=12.0, help="time cap of the judge's training (0: none)")
    p.add_argument("--judge-curve-windows", type=int, default=64, help="valid windows for the training curve")
    p.add_argument("--judge-val-windows", type=int, default=0, help="valid windows for the reported perplexity (0: all)")
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, help="denoising steps (default: gen_length, the exact loop)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy; a run adds its block to the results file of the same models")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence-only", action="store_true", help="only (re)compute the confidence profile into the results file")
    p.add_argument("--smoke", action="store_true", help="seconds: 2 MDLM steps, a 1-layer judge, 4 short samples")
    args = p.parse_args(argv)
    if "exact" not in args.settings:
        args.settings = ["exact", *args.settings]
    if args.smoke:
        args.train_text = "prefix"
        args.mdlm_steps = args.mdlm_steps or 2
        args.judge_layers, args.judge_width, args.judge_heads, args.judge_steps, args.judge_batch = 1, 32, 2, 3, 2
        args.judge_curve_windows, args.judge_val_windows = 4, 16
        args.num_samples, args.batch, args.prompt_length, args.gen_length, args.block_length = 4, 2, 8, 32, 16
    if args.out is None:
        args.out = args.work / "wikitext_generation_smoke.json" if args.smoke else OUT
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    machine = machine_record()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    from mdlm.data.tokenizer import tokenizer_fingerprint
    from mdlm.export import _build_model, load_checkpoint_weights, run_tokenizer

    with LoadSampler(every=15.0) as load_all:
        # 1. the MDLM
        if args.ckpt:
            mdlm_rec: dict[str, Any] = {"ckpt": args.ckpt, "reused": True}
        else:
            mdlm_rec = train_mdlm(args, work)
        ck = load_checkpoint_weights(mdlm_rec["ckpt"])
        model = _build_model(ck).eval()
        tok = run_tokenizer(ck)
        if args.ckpt:
            mdlm_rec["final"] = {"step": ck.global_step}
        eos = int(tok.eos_token_id)
        pad = tok.pad_token_id
        suppress = (int(pad),) if pad is not None and int(pad) != eos else ()
        vocab = len(tok)

        # 2. the judge, on the same token stream
        train_files = run_train_files(ck, TRAIN_TEXT[args.train_text])
        train = token_stream(tok, train_files)
        valid = token_stream(tok, [VALID])
        ctx = args.prompt_length + args.gen_length
        key = {"tokenizer": tokenizer_fingerprint(tok), "train_files": [p.name for p in train_files], "train_tokens": int(len(train)),
               **{k: getattr(args, k) for k in ("judge_layers", "judge_width", "judge_heads", "judge_dropout", "judge_steps",
                                                "judge_batch", "judge_lr", "judge_minutes", "judge_val_windows", "seed")}, "ctx": ctx}
        judge, judge_rec = load_or_train_judge(args, work, key, train, valid, vocab, eos)

        # 3. generation
        windows = valid_windows(valid, ctx, args.num_samples)
        confidence = confidence_profile(model, windows, args.prompt_length, args.block_length, suppress, seed=args.seed)
        if args.confidence_only:
            return add_confidence(args.out, identity(mdlm_rec, judge_rec), confidence)
        prompts = torch.from_numpy(windows[:, : args.prompt_length]).long()
        refs = [cut_at(w[args.prompt_length :], eos) for w in windows]
        with LoadSampler(every=10.0) as load_gen:
            t_gen = time.perf_counter()
            res = generate_all(model, prompts, args.settings, args, eos, suppress)
            gen_s = time.perf_counter() - t_gen

        # 4. judge + metrics
        plist = prompts.tolist()
        exact_nll = None
        settings_out: dict[str, Any] = {}
        for name in args.settings:
            r = res[name]
            nlls = continuation_nll(judge, plist, r["tokens"])
            q = quality(plist, r["tokens"], nlls, seed=args.seed)
            if name == "exact":
                exact_nll = q["per_sample"]["nll_mean"]
            n = len(r["tokens"])
            ntok = sum(len(t) for t in r["tokens"])
            settings_out[name] = {
                "kwargs": {k: v for k, v in SETTINGS[name].items() if v is not None},
                "seconds": r["seconds"],
                "tok_per_s": ntok / r["seconds"],
                "samples_per_s": n / r["seconds"],
                "calls_per_sample": float(np.mean(r["calls"])),
                "query_positions_per_sample": float(np.mean(r["query_positions"])),
                "eos_fraction": float(np.mean([len(t) < args.gen_length for t in r["tokens"]])),
                "quality": q,
                "dnll_vs_exact": list(paired_difference(q["per_sample"]["nll_mean"], exact_nll)) if name != "exact" else None,
                "same_as_exact": float(np.mean([a == b for a, b in zip(r["tokens"], res["exact"]["tokens"])])),
                "examples": [tok.decode(t) for t in r["tokens"][:2]],
            }
        for name in args.settings:
            settings_out[name]["speedup"] = settings_out["exact"]["seconds"] / settings_out[name]["seconds"]
        ref_nll = continuation_nll(judge, plist, refs)
        ref_q = quality(plist, refs, ref_nll, seed=args.seed)
        reference = {"quality": ref_q, "dnll_vs_exact": list(paired_difference(ref_q["per_sample"]["nll_mean"], exact_nll)),
                     "examples": [tok.decode(t) for t in refs[:2]]}

    machine["loadavg_end"] = list(os.getloadavg())
    ru_self, ru_kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": machine,
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "cpu_time_s": round(ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime + ru_kids.ru_stime, 1),
        "models_reused": bool(mdlm_rec.get("reused") and judge_rec.get("reused")),
        "load_whole_run": load_all.summary(),
        "generation": {"samples": len(prompts), "batch": args.batch, "prompt_length": args.prompt_length, "gen_length": args.gen_length,
                       "steps": args.steps or args.gen_length, "block_length": args.block_length, "temperature": args.temperature,
                       "seconds": round(gen_s, 1), "load": load_gen.summary(), "prompt_examples": [tok.decode(p) for p in plist[:2]]},
        "settings": settings_out,
        "reference": reference,
    }
    ident = identity(mdlm_rec, judge_rec)
    runs: dict[str, Any] = {}
    if args.out.is_file():  # keep the other temperatures' blocks of the same models
        old = json.loads(args.out.read_text())
        if old.get("identity") == ident:
            runs = dict(old.get("runs") or {})
    runs[str(float(args.temperature))] = run
    data = {
        "script": "experiments/wikitext_generation.py",
        "smoke": args.smoke,
        "identity": ident,
        "mdlm": mdlm_rec,
        "judge": {k: v for k, v in judge_rec.items() if k != "key"},
        "data": {"train_files": [str(p.relative_to(REPO.parent)) if REPO.parent in p.parents else str(p) for p in train_files],
                 "train_tokens": int(len(train)), "valid_tokens": int(len(valid)), "tokenizer": f"{type(tok).__name__}, {vocab} ids",
                 "eos_token_id": eos, "mask_token_id": int(model.mask_token_id), "suppressed": list(suppress)},
        "confidence": confidence,
        "runs": runs,
    }
    write_results(args.out, data, markdown)
    return data


def add_confidence(out: Path, ident: dict[str, Any], confidence: dict[str, Any]) -> dict[str, Any]:
    """Put ``confidence`` into the results file of the same models (``--confidence-only``) and rewrite its markdown."""
    if not out.is_file():
        raise SystemExit(f"--confidence-only: {out} does not exist; run the experiment first")
    data = json.loads(out.read_text())
    if data.get("identity") != ident:
        raise SystemExit(f"--confidence-only: {out} comes from another MDLM checkpoint or judge")
    data["confidence"] = confidence
    write_results(out, data, markdown)
    return data


if __name__ == "__main__":
    main()
