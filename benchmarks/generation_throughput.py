r"""Generation throughput: :func:`mdlm.generation.generate` against a reference LLaDA loop.

The reference, :func:`llada_reference_generate`, is LLaDA's published ``generate.py`` loop
(ML-GSAI/LLaDA) written out plainly: at every step one forward pass over the whole canvas, a
greedy argmax, float64 softmax confidences for *every* position, positions outside the masked
current block set to -inf, and a per-sample ``torch.topk`` of the step's quota. The only change:
the [MASK] logit is set to -inf before the argmax (MDLM's SUBS parameterisation, which mdlm always
applies; LLaDA's model is trained never to predict it, a random model is not).

Both run the same model (a randomly initialised :class:`mdlm.models.transformer.Transformer`
preset, eval mode), the same prompts, ``gen_length``, ``steps`` and ``block_length``, greedily
(temperature 0, low-confidence remasking), alternately (a, b, b, a, ...) in one process after a
warm-up; the outputs must be token-for-token equal. Reported (medians): generated tokens/s
(``B · gen_length / s``), denoising steps/s (``steps / s``), and the speed-up of mdlm.

    python benchmarks/generation_throughput.py                  # 10m and 50m, fp32 and bf16 autocast
    python benchmarks/generation_throughput.py --smoke          # seconds

``--fast`` instead compares the fast-decoding settings of :func:`~mdlm.generation.generate`
(confidence threshold, early stop at EOS, prefix/dual block cache; :data:`FAST_SETTINGS`) with the
exact loop, on a tiny model trained here in seconds on a copy task whose answers end in EOS
(``--fast-model trained``; ``random`` for a random-init one): every setting decodes the same
answers, the settings alternated (rotated order each repeat) in one process. Reported per setting:
answers/s and tokens/s counting each answer only up to its first EOS (trailing EOS never inflate
speed), model calls and query positions per answer, agreement with the exact loop's answers, and
copy accuracy. Written to ``benchmarks/results/generation_fast.json`` (and ``.md``).

    python benchmarks/generation_throughput.py --fast           # ~4 min on 2 shared cores (2 min training)
    python benchmarks/generation_throughput.py --fast --smoke   # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import (  # noqa: E402
    RESULTS,
    alternate,
    fmt,
    machine_line,
    machine_record,
    markdown_table,
    median,
    stopwatch,
    write_results,
)
from mdlm.generation import generate, get_preset  # noqa: E402
from mdlm.models.transformer import Transformer  # noqa: E402

VOCAB = 4098  # the WikiText configs' bpe:4096 + [MASK] + [PAD]
MASK_ID = VOCAB - 2


# ---------------------------------------------------------------------------------------------
# the reference loop (LLaDA generate.py, greedy)
# ---------------------------------------------------------------------------------------------
def llada_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's ``get_num_transfer_tokens``: ``m // steps`` per step, +1 on the first ``m % steps`` steps."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num = torch.zeros(mask_num.size(0), steps, device=mask_index.device, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num[i, : remainder[i]] += 1
    return num


@torch.no_grad()
def llada_reference_generate(
    model: Any, prompt: torch.Tensor, *, steps: int, gen_length: int, block_length: int, mask_id: int
) -> torch.Tensor:
    """LLaDA's low-confidence-remasking loop at temperature 0; returns the canvas ``[B, P + gen_length]``."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, : prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        end = start + block_length
        block_mask_index = x[:, start:end] == mask_id
        num_transfer_tokens = llada_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x)
            logits = getattr(logits, "logits", logits).clone()
            logits[..., mask_id] = float("-inf")  # SUBS (see the module docstring)
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x0_p[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf"), dtype=x0_p.dtype))
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


def mdlm_generate(model: Any, prompt: torch.Tensor, *, steps: int, gen_length: int, block_length: int, mask_id: int) -> torch.Tensor:
    """mdlm's :func:`~mdlm.generation.generate`, greedy low-confidence remasking; returns the canvas."""
    out = generate(
        model, prompt, mask_token_id=mask_id, gen_length=gen_length, steps=steps, block_length=block_length,
        temperature=0.0, remasking="low_confidence",
    )
    return out.canvas


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def make_model(preset: str, vocab: int = VOCAB, seed: int = 0, device: torch.device | str = "cpu") -> Transformer:
    """A randomly initialised backbone (seeded), in eval mode."""
    torch.manual_seed(seed)
    return Transformer(vocab, preset=preset).to(device).eval()


def make_prompts(batch: int, length: int, vocab: int = VOCAB, seed: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[batch, length]`` random token ids below the special tokens."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 2, (batch, length), generator=gen).to(device)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``bf16-mixed``, nothing for ``32-true``."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure(preset: str, precision: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Alternate mdlm (a) and the reference (b) ``args.repeats`` times after one warm-up call each."""
    model = make_model(preset, device=device)
    prompts = make_prompts(args.batch, args.prompt_length, device=device)
    kw = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length, mask_id=MASK_ID)
    impls = {"a": mdlm_generate, "b": llada_reference_generate}
    outputs: dict[str, torch.Tensor] = {}
    with autocast_for(precision, device):
        for side, fn in impls.items():  # warm-up, and the outputs compared below
            outputs[side] = fn(model, prompts, **kw)
        times: dict[str, list[float]] = {"a": [], "b": []}
        equal_runs = []
        for r in range(args.repeats):
            for side in alternate(r):
                with stopwatch(device) as t:
                    out = impls[side](model, prompts, **kw)
                times[side].append(t["s"])
                equal_runs.append(bool(torch.equal(out, outputs[side])))
    gen_tokens = args.batch * args.gen_length
    ta, tb = median(times["a"]), median(times["b"])
    equal = bool(torch.equal(outputs["a"], outputs["b"]))
    mismatches = int((outputs["a"] != outputs["b"]).sum())
    print(f"  {preset} {precision}: mdlm {gen_tokens / ta:,.1f} tok/s, reference {gen_tokens / tb:,.1f} tok/s, equal={equal}", flush=True)
    return {
        "preset": preset,
        "precision": precision,
        "params": sum(p.numel() for p in model.parameters()),
        "mdlm_seconds": times["a"],
        "reference_seconds": times["b"],
        "mdlm_tokens_per_s": gen_tokens / ta,
        "reference_tokens_per_s": gen_tokens / tb,
        "mdlm_steps_per_s": args.steps / ta,
        "reference_steps_per_s": args.steps / tb,
        "speedup": tb / ta,
        "outputs_equal": equal,
        "mismatched_tokens": mismatches,
        "deterministic": all(equal_runs),
    }


# ---------------------------------------------------------------------------------------------
# fast decoding settings against the exact loop (--fast)
# ---------------------------------------------------------------------------------------------
#: name -> extra keyword arguments of ``generate`` (on top of gen_length/steps/block_length, greedy).
FAST_SETTINGS: dict[str, dict[str, Any]] = {
    "exact": {},
    "eos": {"stop_at_eos": True},
    "tau0.9": {"threshold": 0.9, "stop_at_eos": True},
    "tau0.7": {"threshold": 0.7, "stop_at_eos": True},
    "tau0.5": {"threshold": 0.5, "stop_at_eos": True},
    "prefix": {"cache": "prefix", "stop_at_eos": True},
    "dual": {"cache": "dual", "stop_at_eos": True},
    "tau0.9+prefix": {"threshold": 0.9, "cache": "prefix", "stop_at_eos": True},
    "tau0.9+dual": {"threshold": 0.9, "cache": "dual", "stop_at_eos": True},
    "tau0.7+dual": {"threshold": 0.7, "cache": "dual", "stop_at_eos": True},
}

# copy task: prompt = n content tokens then FILL up to COPY_PROMPT; answer = the content, then EOS
COPY_VOCAB, COPY_CONTENT, COPY_FILL, COPY_EOS, COPY_MASK = 64, 60, 60, 61, 62
COPY_PROMPT = 16


def copy_task(n: int, gen_length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompts [n, COPY_PROMPT], answers [n, gen_length])``: 3..15 content tokens to copy, then EOS."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, COPY_PROMPT, (n, 1), generator=gen)
    content = torch.randint(0, COPY_CONTENT, (n, COPY_PROMPT), generator=gen)
    real = torch.arange(COPY_PROMPT)[None, :] < lengths
    prompts = torch.where(real, content, COPY_FILL)
    answers = torch.full((n, gen_length), COPY_EOS)
    width = min(COPY_PROMPT, gen_length)
    answers[:, :width] = torch.where(real, content, COPY_EOS)[:, :width]
    return prompts, answers


def train_copy_model(steps: int, gen_length: int, seed: int = 0, batch: int = 64) -> Transformer:
    """A ``tiny`` Transformer fitted to :func:`copy_task` with the masked-diffusion objective
    (answer tokens masked with ratio ``t ~ U[0.05, 1]``, 1/t-weighted cross-entropy); eval mode."""
    torch.manual_seed(seed)
    model = Transformer(COPY_VOCAB, preset="tiny", max_seq_len=COPY_PROMPT + gen_length)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for step in range(steps):
        prompts, answers = copy_task(batch, gen_length, seed=10_000 + step)
        t = torch.rand(batch, 1, generator=gen).clamp(min=0.05)
        masked = torch.rand(answers.shape, generator=gen) < t
        noisy = torch.cat([prompts, answers.masked_fill(masked, COPY_MASK)], dim=1)
        logits = model(noisy)[:, COPY_PROMPT:]
        nll = F.cross_entropy(logits.reshape(-1, COPY_VOCAB), answers.reshape(-1), reduction="none").view_as(answers)
        loss = ((nll * masked) / t).sum() / masked.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def measure_fast(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every setting of ``args.settings`` decodes the same ``args.answers`` prompts in batches of
    ``args.batch``; ``args.repeats`` rounds, the settings' order rotated each round."""
    t0 = time.perf_counter()
    if args.fast_model == "trained":
        model = train_copy_model(args.train_steps, args.gen_length).to(device)
    else:
        model = make_model("tiny", vocab=COPY_VOCAB, device=device)
    train_s = time.perf_counter() - t0
    prompts, answers = copy_task(args.answers, args.gen_length, seed=1)
    prompts, answers = prompts.to(device), answers.to(device)
    base = dict(mask_token_id=COPY_MASK, eos_token_id=COPY_EOS, gen_length=args.gen_length, steps=args.steps,
                block_length=args.block_length, suppress_token_ids=[COPY_FILL])
    names = list(args.settings)

    def run(name: str) -> dict[str, Any]:
        seqs, passes, calls, positions = [], [], 0, []
        for lo in range(0, args.answers, args.batch):
            out = generate(model, prompts[lo : lo + args.batch], **base, **FAST_SETTINGS[name])
            seqs += [s.tolist() for s in out.sequences]
            passes += out.row_forward_passes.tolist()
            positions += out.row_query_positions.tolist()
            calls += out.forward_passes
        return {"sequences": seqs, "row_forward_passes": passes, "row_query_positions": positions, "calls": calls}

    results = {name: run(name) for name in names}  # warm-up; the outputs compared below
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            with stopwatch(device) as t:
                run(name)
            times[name].append(t["s"])
    truth = [[t for t in row.tolist() if t != COPY_EOS] for row in answers.cpu()]
    exact_seqs = results["exact"]["sequences"] if "exact" in results else None
    rows = []
    for name in names:
        res, sec = results[name], median(times[name])
        tokens = sum(len(s) for s in res["sequences"])
        rows.append({
            "setting": name,
            "kwargs": FAST_SETTINGS[name],
            "seconds": times[name],
            "answers_per_s": args.answers / sec,
            "tokens_per_s": tokens / sec,
            "tokens_per_answer": tokens / args.answers,
            "forward_passes_per_answer": sum(res["row_forward_passes"]) / args.answers,
            "model_calls": res["calls"],
            "query_positions_per_answer": sum(res["row_query_positions"]) / args.answers,
            "accuracy": sum(s == t for s, t in zip(res["sequences"], truth)) / args.answers,
            "agreement_with_exact": None if exact_seqs is None else
            sum(a == b for a, b in zip(res["sequences"], exact_seqs)) / args.answers,
        })
    if exact_seqs is not None:
        ref = next(r for r in rows if r["setting"] == "exact")
        for row in rows:
            row["speedup"] = row["answers_per_s"] / ref["answers_per_s"]
            row["forward_pass_ratio"] = ref["forward_passes_per_answer"] / row["forward_passes_per_answer"]
    for row in rows:
        print(f"  {row['setting']:>14}: {row['answers_per_s']:8.2f} answers/s, {row['tokens_per_s']:8.1f} tok/s, "
              f"{row['forward_passes_per_answer']:5.1f} passes/answer, acc {row['accuracy']:.3f}, "
              f"agree {row['agreement_with_exact']}", flush=True)
    return {"model": args.fast_model, "train_steps": args.train_steps if args.fast_model == "trained" else 0,
            "train_seconds": train_s, "rows": rows}


def markdown_fast(data: dict[str, Any]) -> str:
    s, res = data["settings"], data["results"]
    model = (f"tiny model trained here on a copy task ({res['train_steps']} steps, {res['train_seconds']:.0f} s)"
             if res["model"] == "trained" else "random-init tiny model")
    rows = [
        [r["setting"], fmt(r["answers_per_s"], 2), fmt(r["tokens_per_s"], 1), f"{r.get('speedup', 0):.2f}×",
         fmt(r["forward_passes_per_answer"], 1), f"{r.get('forward_pass_ratio', 0):.2f}×",
         fmt(r["query_positions_per_answer"], 0), fmt(r["tokens_per_answer"], 1), f"{r['accuracy']:.3f}",
         "-" if r["agreement_with_exact"] is None else f"{r['agreement_with_exact']:.3f}"]
        for r in res["rows"]
    ]
    return "\n".join([
        "### Fast decoding: threshold, early stop at EOS, block cache vs the exact loop",
        "",
        machine_line(data["machine"]),
        f"{model}; {s['answers']} answers in batches of {s['batch']}, gen_length {s['gen_length']}, steps <= {s['steps']}, "
        f"block_length {s['block_length']}, greedy; settings alternated in one process, {s['repeats']} rounds, medians. "
        "Tokens counted up to the first EOS; passes = model calls each answer took part in.",
        "",
        markdown_table(
            ["setting", "answers/s", "tok/s", "speed-up", "passes/answer", "fewer passes", "query positions/answer",
             "tokens/answer", "accuracy", "= exact"],
            rows,
        ),
    ]) + "\n"


def markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    rows = [
        [r["preset"], fmt(r["params"], 1, 1e6) + "M", r["precision"], fmt(r["mdlm_tokens_per_s"], 1), fmt(r["reference_tokens_per_s"], 1),
         fmt(r["mdlm_steps_per_s"], 2), fmt(r["reference_steps_per_s"], 2), f"{r['speedup']:.2f}×",
         "yes" if r["outputs_equal"] else f"no ({r['mismatched_tokens']} tokens differ)"]
        for r in data["results"]
    ]
    return "\n".join([
        "### Generation throughput: mdlm `generate` (a) vs reference LLaDA loop (b)",
        "",
        machine_line(data["machine"]),
        f"{s['batch']} prompts × {s['prompt_length']} tokens, gen_length {s['gen_length']}, steps {s['steps']}, "
        f"block_length {s['block_length']}, greedy, low-confidence remasking; random-init model, vocabulary {VOCAB}; "
        f"{s['repeats']} alternated repeats, medians.",
        "",
        markdown_table(
            ["preset", "params", "precision", "(a) tok/s", "(b) tok/s", "(a) steps/s", "(b) steps/s", "speed-up", "outputs equal"],
            rows,
        ),
    ]) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cfg = get_preset("cpu_tiny")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["10m", "50m"])
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--batch", type=int, default=4, help="prompts per call")
    p.add_argument("--prompt-length", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=cfg.gen_length)
    p.add_argument("--steps", type=int, default=cfg.steps)
    p.add_argument("--block-length", type=int, default=cfg.block_length)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny preset, fp32, 8 tokens, 1 repeat")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON (default benchmarks/results/generation_throughput.json, with --fast generation_fast.json)")
    fast = p.add_argument_group("--fast: fast-decoding settings against the exact loop")
    fast.add_argument("--fast", action="store_true", help="measure FAST_SETTINGS instead of the reference comparison")
    fast.add_argument("--settings", nargs="+", default=list(FAST_SETTINGS), choices=list(FAST_SETTINGS))
    fast.add_argument("--fast-model", choices=["trained", "random"], default="trained")
    fast.add_argument("--train-steps", type=int, default=400)
    fast.add_argument("--answers", type=int, default=64, help="answers per setting and round")
    args = p.parse_args(argv)
    if args.fast:
        defaults = {"gen_length": 64, "steps": 64, "block_length": 16, "batch": 8}
        for key, value in defaults.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.smoke:
        args.presets, args.precisions, args.batch, args.repeats = ["tiny"], ["32-true"], 2, 1
        args.prompt_length, args.gen_length, args.steps, args.block_length = 8, 8, 8, 4
        if args.fast:
            args.answers, args.train_steps, args.gen_length, args.steps = 4, 5, 16, 16
    if args.out is None:
        name = "generation_fast" if args.fast else "generation_throughput"
        args.out = Path(tempfile.gettempdir()) / f"{name}_smoke.json" if args.smoke else RESULTS / f"{name}.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_record()
    t0 = time.perf_counter()
    if args.fast:
        results = measure_fast(args, device)
        machine["loadavg_end"] = list(os.getloadavg())
        data = {
            "benchmark": "generation_fast",
            "settings": {k: getattr(args, k) for k in ("answers", "batch", "gen_length", "steps", "block_length", "repeats")},
            "answers_per_s": "answers / median seconds to decode all answers",
            "tokens_per_s": "tokens up to each answer's first EOS / median seconds",
            "forward_passes_per_answer": "mean number of model calls an answer took part in",
            "machine": machine,
            "wall_s": time.perf_counter() - t0,
            "results": results,
        }
        write_results(args.out, data, markdown_fast)
        return data
    results = [measure(preset, precision, args, device) for preset in args.presets for precision in args.precisions]
    machine["loadavg_end"] = list(os.getloadavg())
    data = {
        "benchmark": "generation_throughput",
        "settings": {k: getattr(args, k) for k in ("batch", "prompt_length", "gen_length", "steps", "block_length", "repeats")},
        "tokens_per_s": "batch * gen_length / seconds per generate call",
        "steps_per_s": "denoising steps / seconds per generate call",
        "machine": machine,
        "wall_s": time.perf_counter() - t0,
        "results": results,
    }
    write_results(args.out, data, markdown)
    return data


if __name__ == "__main__":
    main()
