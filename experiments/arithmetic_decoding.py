r"""Fast decoding on the arithmetic task: accuracy and speed of every (threshold, cache) setting against the exact loop.

A trained arithmetic checkpoint (``configs/sft_arithmetic.yaml``) answers the same test problems with
each decoding setting of :data:`SETTINGS`; per problem the answer is checked (``mdlm.answers``, GSM8K
rule), so every setting is compared with the exact loop *of the same block length* on the same items:
accuracy per level with 95 % Wilson intervals, the paired difference and an exact McNemar test
(two-sided binomial test on the discordant pairs), agreement of the extracted answers, model calls and
query positions per answer, and answers per second. Settings alternate batch by batch (rotated order),
so a load change of the machine touches them all alike.

    python experiments/arithmetic_decoding.py --ckpt runs/sft_arithmetic/version_0/checkpoints/last.ckpt \
        --png benchmarks/results/arithmetic_decoding.png
    python experiments/arithmetic_decoding.py --ckpt ... --limit 64      # a quick look

Results: ``benchmarks/results/arithmetic_decoding.json`` and ``.md``; ``--png`` plots accuracy against
answers/s (``--replot --png F`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from benchmarks._common import (
    RESULTS,
    LoadSampler,
    machine_record,
    markdown_table,
    sign_test_p,
    wilson_interval,
    write_results,
)
from mdlm.answers import extract_answer, is_correct
from mdlm.generation import generate

# name -> (block_length, generate kwargs); "exact" rows are the references of their block length
SETTINGS: dict[str, tuple[int, dict[str, Any]]] = {
    "exact b32": (32, {}),
    "tau0.9 b32": (32, {"threshold": 0.9, "stop_at_eos": True}),
    "tau0.7 b32": (32, {"threshold": 0.7, "stop_at_eos": True}),
    "tau0.5 b32": (32, {"threshold": 0.5, "stop_at_eos": True}),
    "tau0.3 b32": (32, {"threshold": 0.3, "stop_at_eos": True}),
    "tau0.9+prefix b32": (32, {"threshold": 0.9, "stop_at_eos": True, "cache": "prefix"}),
    "exact b8": (8, {}),
    "tau0.9 b8": (8, {"threshold": 0.9, "stop_at_eos": True}),
    "tau0.9+prefix b8": (8, {"threshold": 0.9, "stop_at_eos": True, "cache": "prefix"}),
    "tau0.9+dual b8": (8, {"threshold": 0.9, "stop_at_eos": True, "cache": "dual"}),
    "tau0.7+dual b8": (8, {"threshold": 0.7, "stop_at_eos": True, "cache": "dual"}),
    "tau0.5+dual b8": (8, {"threshold": 0.5, "stop_at_eos": True, "cache": "dual"}),
}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the sign test (:func:`benchmarks._common.sign_test_p`) on the
    discordant pairs, ``b`` = pairs the reference answers correctly and the setting not, ``c`` = the reverse."""
    return sign_test_p(b, c)


def has_carry(prompt: str) -> bool:
    """True when an operation of the problem carries (``+``) or borrows (``-``) in its units digit.

    The question lists the start value and then one ``<verb> <number>`` per operation; the verbs are
    those of :mod:`mdlm.data.arithmetic` (gain words add, loss words subtract). A carry makes the tens
    digit of the result depend on the units digits: the dependent tokens parallel decoding can break.
    """
    import re

    from mdlm.data.arithmetic import VERBS

    question = prompt.rsplit("Question:", 1)[-1]
    start = re.search(r"has (\d+)", question)
    if start is None:
        raise ValueError(f"not an arithmetic question: {question!r}")
    total, carry = int(start.group(1)), False
    for verb, number in re.findall(r"then (\w+) (\d+)", question):
        value = int(number)
        if verb in VERBS["+"]:
            carry |= total % 10 + value % 10 >= 10
            total += value
        elif verb in VERBS["-"]:
            carry |= total % 10 < value % 10
            total -= value
        else:
            raise ValueError(f"unknown verb {verb!r} in {question!r}")
    return carry


def load_model(ckpt: str) -> Any:
    from mdlm.export import _build_model, load_checkpoint_weights

    model = _build_model(load_checkpoint_weights(ckpt))
    return model.eval()


def load_data(config: str, overrides: dict[str, Any]) -> Any:
    from mdlm.data.arithmetic import ArithmeticDataModule

    init = dict(yaml.safe_load(Path(config).read_text())["data"]["init_args"])
    init.update(overrides)
    dm = ArithmeticDataModule(**init)
    dm.setup("test")
    return dm


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = load_model(args.ckpt)
    overrides: dict[str, Any] = {"eval_batch_size": args.batch_size}
    if args.levels:  # the test problems of a level depend only on the data seed and the level
        overrides.update(levels=args.levels, num_train=1, num_val=1)
    dm = load_data(args.config, overrides)
    gen_length = args.gen_length
    names = [n for n in SETTINGS if n in args.settings]
    per: dict[str, dict[str, Any]] = {n: {"correct": [], "answers": [], "groups": [], "carry": [], "calls": 0, "queries": 0,
                                          "seconds": 0.0} for n in names}
    seen = 0
    suppress = [t for t in model.suppressed if t != model.mask_token_id]
    def decode(name: str, ids: torch.Tensor, mask: torch.Tensor) -> Any:
        block, extra = SETTINGS[name]
        return generate(model, ids, attention_mask=mask, mask_token_id=model.mask_token_id,
                        eos_token_id=dm.eos_token_id, pad_token_id=dm.pad_token_id, gen_length=gen_length,
                        steps=gen_length, block_length=block, suppress_token_ids=suppress, **extra)

    first = next(iter(dm.test_dataloader()))
    with torch.no_grad():  # warm-up, untimed: every setting once on a few prompts
        for name in names:
            decode(name, first["prompt_input_ids"][:8], first["prompt_attention_mask"][:8])
    with LoadSampler() as load, torch.no_grad():
        for b, batch in enumerate(dm.test_dataloader()):
            if args.limit and seen >= args.limit:
                break
            ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
            if args.limit:
                keep = min(ids.shape[0], args.limit - seen)
                ids, mask = ids[:keep], mask[:keep]
                batch = {k: (v[:keep] if isinstance(v, (list, torch.Tensor)) else v) for k, v in batch.items()}
            seen += ids.shape[0]
            order = names[b % len(names):] + names[: b % len(names)]
            for name in order:
                t0 = time.perf_counter()
                out = decode(name, ids, mask)
                per[name]["seconds"] += time.perf_counter() - t0
                per[name]["calls"] += int(out.row_forward_passes.sum())
                per[name]["queries"] += int(out.row_query_positions.sum())
                for i, seq in enumerate(out.sequences):
                    text = dm.tokenizer.decode(seq, skip_special_tokens=True)
                    per[name]["correct"].append(bool(is_correct(text, batch["reference"][i], "gsm8k")))
                    per[name]["answers"].append(extract_answer(text, "gsm8k"))
                    per[name]["groups"].append(batch["group"][i])
                    per[name]["carry"].append(has_carry(batch["prompt_text"][i]))
            print(f"batch {b}: {seen} problems", flush=True)
    rows = {}
    for name in names:
        block = SETTINGS[name][0]
        ref = per[f"exact b{block}"]
        p = per[name]
        n = len(p["correct"])
        b_ = sum(r and not s for r, s in zip(ref["correct"], p["correct"]))
        c_ = sum(s and not r for r, s in zip(ref["correct"], p["correct"]))
        k = sum(p["correct"])
        levels = {}
        for g in sorted(set(p["groups"])):
            idx = [i for i, x in enumerate(p["groups"]) if x == g]
            kg = sum(p["correct"][i] for i in idx)
            levels[g] = {"accuracy": kg / len(idx), "correct": kg, "n": len(idx),
                         "wilson95": wilson_interval(kg, len(idx))}
        by_carry = {}
        for flag, label in ((True, "carry"), (False, "no_carry")):
            idx = [i for i, x in enumerate(p["carry"]) if x == flag]
            kc = sum(p["correct"][i] for i in idx)
            by_carry[label] = {"accuracy": kc / len(idx) if idx else float("nan"), "correct": kc, "n": len(idx)}
        rows[name] = {
            "block_length": block, "kwargs": SETTINGS[name][1], "n": n, "accuracy": k / n,
            "wilson95": wilson_interval(k, n), "levels": levels, "by_carry": by_carry,
            "vs_exact": {"reference": f"exact b{block}", "diff": (k - sum(ref["correct"])) / n,
                         "ref_only_correct": b_, "setting_only_correct": c_, "mcnemar_p": mcnemar_exact(b_, c_),
                         "answer_agreement": sum(a == r for a, r in zip(p["answers"], ref["answers"])) / n},
            "calls_per_answer": p["calls"] / n, "query_positions_per_answer": p["queries"] / n,
            "answers_per_s": n / p["seconds"], "seconds": p["seconds"],
        }
    exact = rows.get("exact b32") or next(iter(rows.values()))
    for r in rows.values():
        r["speedup_vs_exact_b32"] = r["answers_per_s"] / exact["answers_per_s"]
    return {"rows": rows, "load_average": load.summary(), "problems": seen}


def markdown(data: dict[str, Any]) -> str:
    rows = data["results"]["rows"]
    levels = sorted({g for r in rows.values() for g in r["levels"]})
    head = ["setting", *levels, "all", "with carry", "no carry", "Δ vs exact (McNemar p)", "answers agree", "calls/answer", "answers/s", "speed-up"]
    body = []
    for name, r in rows.items():
        lv = [f"{r['levels'][g]['accuracy']:.3f}" for g in levels]
        v = r["vs_exact"]
        bc = r["by_carry"]
        body.append([name, *lv, f"{r['accuracy']:.3f}", f"{bc['carry']['accuracy']:.3f}",
                     f"{bc['no_carry']['accuracy']:.3f}", f"{v['diff']:+.3f} (p={v['mcnemar_p']:.2g})",
                     f"{v['answer_agreement']:.3f}", f"{r['calls_per_answer']:.1f}", f"{r['answers_per_s']:.1f}",
                     f"{r['speedup_vs_exact_b32']:.2f}×"])
    la = data["results"]["load_average"]
    return "\n".join([
        "### Fast decoding on the arithmetic task (accuracy per level, vs the exact loop of the same block length)",
        "",
        f"{data['results']['problems']} test problems, checkpoint `{data['ckpt']}`; load average {la['mean']} "
        f"(min {la['min']}, max {la['max']}); {data['machine'].get('cpu_model')} , {data['threads']} thread(s).",
        "",
        markdown_table(head, body),
        "",
    ])


def plot(data: dict[str, Any], path: Path) -> None:
    """Accuracy (95 % Wilson interval) against answers/s, one point per setting, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in data["results"]["rows"].items():
        lo, hi = r["wilson95"]
        color = "tab:blue" if r["block_length"] == 32 else "tab:orange"
        marker = "s" if name.startswith("exact") else "o"
        ax.errorbar(r["answers_per_s"], r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]],
                    fmt=marker, color=color, capsize=2)
        ax.annotate(name, (r["answers_per_s"], r["accuracy"]), fontsize=7, xytext=(4, -3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("answers / s (one thread; same batches, settings alternated)")
    ax.set_ylabel("accuracy (95 % Wilson interval)")
    ax.set_title("Arithmetic task: fast decoding vs the exact loop (blue: one block of 32, orange: blocks of 8)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="a checkpoint of configs/sft_arithmetic.yaml")
    p.add_argument("--config", default="configs/sft_arithmetic.yaml", help="the config the checkpoint was trained with")
    p.add_argument("--levels", nargs="+", type=int, default=None,
                   help="test these levels instead of the config's (for a checkpoint trained on other levels)")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--limit", type=int, default=0, help="at most this many test problems (0 = all)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out", default=str(RESULTS / "arithmetic_decoding.json"))
    p.add_argument("--png", default=None, help="also plot accuracy against answers/s to this file")
    p.add_argument("--replot", action="store_true", help="only redraw --png from the existing --out JSON")
    args = p.parse_args(argv)
    if args.replot:
        if not args.png:
            p.error("--replot needs --png")
        plot(json.loads(Path(args.out).read_text()), Path(args.png))
        return json.loads(Path(args.out).read_text())
    if not args.ckpt:
        p.error("--ckpt is required")
    for block in {SETTINGS[n][0] for n in args.settings}:
        if f"exact b{block}" not in args.settings:
            p.error(f"--settings needs 'exact b{block}', the reference of its block length")
    t0 = time.perf_counter()
    results = run(args)
    data = {"experiment": "arithmetic_decoding", "ckpt": args.ckpt, "config": args.config, "levels": args.levels,
            "gen_length": args.gen_length, "threads": torch.get_num_threads(), "machine": machine_record(),
            "wall_time_s": time.perf_counter() - t0, "results": results}
    write_results(Path(args.out), data, markdown)
    if args.png:
        plot(data, Path(args.png))
    return data


if __name__ == "__main__":
    main()
