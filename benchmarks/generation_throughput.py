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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
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
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/generation_throughput.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.presets, args.precisions, args.batch, args.repeats = ["tiny"], ["32-true"], 2, 1
        args.prompt_length, args.gen_length, args.steps, args.block_length = 8, 8, 8, 4
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "generation_throughput_smoke.json" if args.smoke else RESULTS / "generation_throughput.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_record()
    t0 = time.perf_counter()
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
