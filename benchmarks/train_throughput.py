r"""Training throughput of mdlm through the Lightning Trainer against a raw PyTorch loop, with MFU.

For every model preset × precision, in one process, after warm-up, alternately (a, b, b, a, ...):

(a) **trainer**: ``configs/wikitext_ablation.yaml`` built by the ``mdlm`` CLI
    (:func:`mdlm.cli.build_cli` with ``run=False``) with only the preset, precision, run length,
    ``limit_val_batches=0`` and the log folder overridden: ``MaskedDiffusionLM`` with its sampler
    callback (t histograms), ``MetricsHistory``, the default throughput monitor, TensorBoard logging,
    the progress bar, the model summary and checkpointing all on, exactly as ``mdlm fit`` runs it.
(b) **raw**: a hand-written loop on a copy of the same initial backbone, the same litdata loader
    (same batch size, block length and workers), the same autocast / bf16 weights, the same
    ``torch.optim.AdamW`` parameter groups and warm-up + cosine ``LambdaLR``, the same threads,
    computing the same masked-diffusion loss (t ~ U[eps, 1], mask ~ Bernoulli(t), [MASK] logit
    suppressed, fp32 log-softmax, 1/t weight, ÷ tokens) with ``torch.rand``.

Each run trains ``warmup + steps`` batches; the clock runs from the end of batch ``warmup`` to the
end of the last one (device-synchronised), so it covers exactly ``steps`` whole iterations:
data loading, forward, loss, backward, optimiser and scheduler steps and, for (a), every hook.

Reported per preset × precision (medians over ``repeats``): tokens/s of (a) and (b), the ratio
(a)/(b) (also the median of the per-repeat ratios), achieved FLOP/s and MFU, peak memory.

FLOPs (:mod:`mdlm.throughput`):  F = B·L · (6N + 12·n_layer·L·d) per training batch, N = all
parameters except the embedding tables (output projection included), d = d_model; MFU = F/s ÷
peak, the peak being the best FLOP/s of a 4096² matmul at the run's compute dtype measured by this
script (fp32 for ``32-true``, bf16 for ``bf16-*``), and on CUDA also the device's nominal peak.

    python benchmarks/train_throughput.py                                  # all presets × precisions
    python benchmarks/train_throughput.py --presets 10m --precisions bf16-mixed --profile
    python benchmarks/train_throughput.py --smoke                          # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning.pytorch import Callback  # noqa: E402

from benchmarks._common import (  # noqa: E402
    REPO,
    RESULTS,
    PeakMemory,
    fmt,
    machine_line,
    machine_record,
    markdown_table,
    median,
    release_memory,
    sync,
    write_results,
)
from mdlm.optim import lr_factor, parameter_groups  # noqa: E402
from mdlm.throughput import (  # noqa: E402
    attention_shape,
    compute_dtype,
    flops_per_token,
    matmul_parameters,
    measure_peak_flops,
    nominal_peak_flops,
)

CONFIG = "configs/wikitext_ablation.yaml"
PRESETS = ("tiny", "10m", "50m")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
#: timed steps per run and warm-up steps per run (sized for ~10 min on a 2-core CPU)
DEFAULT_STEPS = {"tiny": 4, "small": 4, "10m": 3, "50m": 2}
DEFAULT_WARMUP = {"tiny": 1, "small": 1, "10m": 1, "50m": 1}
PEAK_MATMUL_SIZE = 4096


# ---------------------------------------------------------------------------------------------
# (a) the Trainer, built from the shipped config
# ---------------------------------------------------------------------------------------------
class StepClock(Callback):
    """Times training batches ``warmup+1 .. warmup+steps`` (end of batch ``warmup`` to end of the last)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.seen = 0
        self.tokens = 0
        self.t_start: float | None = None
        self.cpu_start = 0.0
        self.seconds: float | None = None
        self.cpu_seconds: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.tokens += batch["input_ids"].numel()
        if self.seen == self.warmup:
            sync(trainer.strategy.root_device)
            self.t_start, self.cpu_start = time.perf_counter(), time.process_time()
        elif self.seen == self.warmup + self.steps:
            sync(trainer.strategy.root_device)
            self.seconds = time.perf_counter() - self.t_start
            self.cpu_seconds = time.process_time() - self.cpu_start


def cli_args(preset: str, precision: str, total_steps: int, workdir: Path, extra: list[str]) -> list[str]:
    """Overrides of the shipped config: preset, precision, run length, no validation, log folder."""
    return [
        "--config", str(REPO / CONFIG),
        f"--model.init_args.backbone.init_args.preset={preset}",
        f"--trainer.precision={precision}",
        f"--trainer.max_steps={total_steps}",
        "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.default_root_dir={workdir}",
        *extra,
    ]


def build(preset: str, precision: str, total_steps: int, workdir: Path, extra: list[str]) -> Any:
    """The CLI object (model, data module, trainer) exactly as ``mdlm fit`` would build it."""
    from mdlm.cli import build_cli

    return build_cli(cli_args(preset, precision, total_steps, workdir, extra), run=False)


def run_trainer(spec: RunSpec, workdir: Path) -> dict[str, Any]:
    """One (a) run: build from the config, fit ``warmup + steps`` batches, time the last ``steps``."""
    clock = StepClock(spec.warmup, spec.steps)
    with PeakMemory() as mem:
        cli = build(spec.preset, spec.precision, spec.warmup + spec.steps, workdir, spec.extra)
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    del cli
    return rate_record(clock.tokens, clock.seconds, clock.cpu_seconds, mem)


def rate_record(tokens: int, seconds: float, cpu_seconds: float, mem: PeakMemory) -> dict[str, Any]:
    """tokens/s on the wall clock and per CPU-second of this process (less sensitive to other jobs), memory."""
    return {
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": tokens,
        **mem.record(),
    }


# ---------------------------------------------------------------------------------------------
# (b) the raw loop
# ---------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """What both sides train: preset, precision, run length, extra CLI overrides."""

    preset: str
    precision: str
    steps: int
    warmup: int
    extra: list[str] = field(default_factory=list)


@dataclass
class Template:
    """What the raw loop copies from a config build: the initial backbone, the data module, hparams."""

    backbone: nn.Module
    datamodule: Any
    hparams: dict[str, Any]
    mask_token_id: int
    device: torch.device
    total_steps: int


def make_template(spec: RunSpec, workdir: Path) -> Template:
    """Build the config once; keep a copy of the initial backbone and the data module for (b)."""
    cli = build(spec.preset, spec.precision, spec.warmup + spec.steps, workdir, spec.extra)
    device = cli.trainer.strategy.root_device
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    return Template(
        backbone=copy.deepcopy(cli.model.backbone),
        datamodule=dm,
        hparams=dict(cli.model.hparams),
        mask_token_id=cli.model.mask_token_id,
        device=device,
        total_steps=spec.warmup + spec.steps,
    )


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for ``*-mixed``; nothing for ``*-true`` (there the weights carry the dtype)."""
    if precision.endswith("-mixed"):
        return torch.autocast(device.type, dtype=compute_dtype(precision))
    return contextlib.nullcontext()


def md_loss_raw(model: nn.Module, ids: torch.Tensor, mask_id: int, eps: float) -> torch.Tensor:
    r"""The MD loss written out: :math:`\frac{1}{BL}\sum_b \frac{1}{t_b}\sum_i m_{bi}\,(-\log p_\theta(x_{0,bi}\mid x_t))`."""
    B, L = ids.shape
    t = torch.rand(B, device=ids.device).clamp_(min=eps)
    masked = torch.rand(B, L, device=ids.device) < t[:, None]
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy).float()
    logits[..., mask_id] = float("-inf")  # SUBS: [MASK] is never predicted
    nll = -F.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return ((nll * masked).sum(-1) / t).sum() / (B * L)


def run_raw(spec: RunSpec, template: Template) -> dict[str, Any]:
    """One (b) run: fresh copy of the initial backbone, AdamW + LambdaLR, the same loader."""
    hp, device = template.hparams, template.device
    with PeakMemory() as mem:
        model = copy.deepcopy(template.backbone).to(device)
        if spec.precision.endswith("-true") and compute_dtype(spec.precision) != torch.float32:
            model = model.to(compute_dtype(spec.precision))
        model.train()
        groups = parameter_groups(model, hp["weight_decay"], hp["exclude_norms_biases_embeddings"])
        opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["adam_eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, hp["warmup_steps"], template.total_steps, hp["lr_schedule"], hp["min_lr_ratio"])
        )
        eps = 1e-3  # the sampler's default floor on t
        tokens, t_start, cpu_start, seconds, cpu_seconds = 0, 0.0, 0.0, 0.0, 0.0
        for step, batch in enumerate(template.datamodule.train_dataloader(), start=1):
            ids = batch["input_ids"].to(device, non_blocking=True)
            with precision_context(spec.precision, device):
                loss = md_loss_raw(model, ids, template.mask_token_id, eps)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step > spec.warmup:
                tokens += ids.numel()
            if step == spec.warmup:
                sync(device)
                t_start, cpu_start = time.perf_counter(), time.process_time()
            if step == spec.warmup + spec.steps:
                sync(device)
                seconds, cpu_seconds = time.perf_counter() - t_start, time.process_time() - cpu_start
                break
        del model, opt, sched
    return rate_record(tokens, seconds, cpu_seconds, mem)


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def measure_peaks(precisions: list[str], device: torch.device, size: int) -> dict[str, float]:
    """Best matmul FLOP/s per compute dtype of ``precisions`` (not cached: measured now)."""
    dtypes = sorted({str(compute_dtype(p)).replace("torch.", "") for p in precisions})
    return {name: measure_peak_flops(getattr(torch, name), device, size=size, repeats=5, cache=False) for name in dtypes}


def measure_pair(spec: RunSpec, repeats: int, workdir: Path, warmup_runs: int = 0) -> dict[str, Any]:
    """Alternate the arms ``repeats`` times each (a, b then reversed: ABBA) after ``warmup_runs`` of each.

    Every run has its own ``spec.warmup`` untimed steps, which absorb first-step costs (kernel
    selection, loader start); ``warmup_runs`` whole runs per arm can be added before the repeats.
    """
    template = make_template(spec, workdir)
    runners: dict[str, Callable[[RunSpec], dict[str, Any]]] = {
        "a": functools.partial(run_trainer, workdir=workdir),
        "b": functools.partial(run_raw, template=template),
    }
    for _ in range(warmup_runs):
        for run in runners.values():
            run(spec)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in runners}
    arms = list(runners)
    for r in range(repeats):
        for side in (arms if r % 2 == 0 else arms[::-1]):
            runs[side].append(runners[side](spec))
            rec = runs[side][-1]
            print(f"  {spec.preset} {spec.precision} repeat {r} {side}: {rec['tokens_per_s']:,.0f} tok/s, "
                  f"{rec['tokens_per_cpu_s']:,.0f} tok/CPU-s", flush=True)
    model_info = {
        "matmul_params": matmul_parameters(template.backbone),
        "attention_shape": attention_shape(template.backbone),
        "flops_per_token": flops_per_token(template.backbone, template.datamodule.block_length),
        "batch_size": template.datamodule.batch_size,
        "block_length": template.datamodule.block_length,
        "vocab_size": template.hparams["vocab_size"],
        "total_params": sum(p.numel() for p in template.backbone.parameters()),
    }
    del runners, template  # the raw loop's backbone copy and data module: free them before the next pair
    release_memory()
    return {"runs": runs, **model_info}


def summarize(preset: str, precision: str, measured: dict[str, Any], peaks: dict[str, float], device: torch.device) -> dict[str, Any]:
    """Medians, ratio, FLOP/s and MFU of one preset × precision."""
    a = [r["tokens_per_s"] for r in measured["runs"]["a"]]
    b = [r["tokens_per_s"] for r in measured["runs"]["b"]]
    a_cpu = [r["tokens_per_cpu_s"] for r in measured["runs"]["a"]]
    b_cpu = [r["tokens_per_cpu_s"] for r in measured["runs"]["b"]]
    dtype = compute_dtype(precision)
    peak = peaks[str(dtype).replace("torch.", "")]
    nominal = nominal_peak_flops(device, dtype)
    fpt = measured["flops_per_token"]
    out = {
        "preset": preset,
        "precision": precision,
        **{k: v for k, v in measured.items() if k != "runs"},
        "trainer_tokens_per_s": median(a),
        "raw_tokens_per_s": median(b),
        "ratio": median(a) / median(b),
        "ratio_of_pairs_median": median([x / y for x, y in zip(a, b)]),
        "trainer_tokens_per_cpu_s": median(a_cpu),
        "raw_tokens_per_cpu_s": median(b_cpu),
        "cpu_time_ratio": median(a_cpu) / median(b_cpu),
        "trainer_flops_per_s": fpt * median(a),
        "raw_flops_per_s": fpt * median(b),
        "peak_flops_measured": peak,
        "mfu_trainer": fpt * median(a) / peak,
        "mfu_raw": fpt * median(b) / peak,
        "peak_flops_nominal": nominal,
        "mfu_trainer_nominal": None if not nominal else fpt * median(a) / nominal,
        "trainer_peak_rss_mib": max(r["peak_rss_mib"] for r in measured["runs"]["a"]),
        "raw_peak_rss_mib": max(r["peak_rss_mib"] for r in measured["runs"]["b"]),
        "trainer_peak_rss_increase_mib": median([r["peak_rss_increase_mib"] for r in measured["runs"]["a"]]),
        "raw_peak_rss_increase_mib": median([r["peak_rss_increase_mib"] for r in measured["runs"]["b"]]),
        "trainer_cuda_max_allocated_mib": _max_or_none(measured["runs"]["a"], "cuda_max_allocated_mib"),
        "raw_cuda_max_allocated_mib": _max_or_none(measured["runs"]["b"], "cuda_max_allocated_mib"),
        "runs": measured["runs"],
    }
    if measured["runs"].get("c"):
        c = [r["tokens_per_s"] for r in measured["runs"]["c"]]
        c_cpu = [r["tokens_per_cpu_s"] for r in measured["runs"]["c"]]
        out.update({
            "fixed_trainer_tokens_per_s": median(c),
            "fixed_ratio": median(c) / median(b),
            "fixed_trainer_tokens_per_cpu_s": median(c_cpu),
            "fixed_cpu_time_ratio": median(c_cpu) / median(b_cpu),
        })
    return out


def _max_or_none(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return max(values) if values else None


# ---------------------------------------------------------------------------------------------
# profile: where does the Trainer's extra time go?
# ---------------------------------------------------------------------------------------------
def profile_trainer(spec: RunSpec, workdir: Path, out_path: Path) -> dict[str, Any]:
    """Per-hook wall time of one (a) run with Lightning's ``SimpleProfiler``; the summary goes to a file."""
    from lightning.pytorch.profilers import SimpleProfiler

    extra = [*spec.extra, "--trainer.profiler=SimpleProfiler"]
    cli = build(spec.preset, spec.precision, spec.warmup + spec.steps, workdir, extra)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    profiler = cli.trainer.profiler
    assert isinstance(profiler, SimpleProfiler)
    report = {k: {"calls": len(v), "total_s": float(sum(v))} for k, v in profiler.recorded_durations.items()}
    ordered = dict(sorted(report.items(), key=lambda kv: -kv[1]["total_s"]))
    out_path.write_text(profiler.summary())
    return ordered


def op_profile(spec: RunSpec, workdir: Path, out_path: Path, top: int = 25) -> list[dict[str, Any]]:
    """torch.profiler op table of the raw loop's timed steps (where a step's time goes); markdown to ``out_path``."""
    from torch.profiler import ProfilerActivity, profile

    template = make_template(spec, workdir)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if template.device.type == "cuda" else [])
    run_raw(RunSpec(spec.preset, spec.precision, steps=1, warmup=1, extra=spec.extra), template)  # warm
    with profile(activities=activities) as prof:
        rec = run_raw(spec, template)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [
        {"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in events[:top]
    ]
    table = markdown_table(
        ["op", "calls", "self CPU ms", "share"],
        [[f"`{r['op']}`", r["calls"], f"{r['self_cpu_ms']:,.0f}", f"{100 * r['share']:.1f}%"] for r in rows],
    )
    out_path.write_text(
        f"### Op profile of the raw loop: {spec.preset} {spec.precision}, {spec.warmup + spec.steps} steps "
        f"(batch {template.datamodule.batch_size} × {template.datamodule.block_length}), "
        f"{rec['tokens_per_s']:,.0f} tok/s under the profiler\n\n{machine_line(machine_record())}\n\n{table}\n"
    )
    return rows


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _ratio_cell(wall: float | None, cpu: float | None) -> str:
    return "-" if wall is None else f"{wall:.3f} / {cpu:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """The markdown report: machine line, formula and the table."""
    rows = []
    for r in results["results"]:
        nominal = r.get("mfu_trainer_nominal")
        rows.append([
            r["preset"],
            fmt(r["matmul_params"], 1, 1e6) + "M",
            r["precision"],
            fmt(r["trainer_tokens_per_s"]),
            fmt(r["raw_tokens_per_s"]),
            _ratio_cell(r["ratio"], r["cpu_time_ratio"]),
            _ratio_cell(r.get("fixed_ratio"), r.get("fixed_cpu_time_ratio")),
            fmt(r["trainer_flops_per_s"], 3, 1e12),
            f"{100 * r['mfu_trainer']:.1f}%" + ("" if not nominal else f" ({100 * nominal:.1f}% nominal)"),
            f"{100 * r['mfu_raw']:.1f}%",
            fmt(r["trainer_cuda_max_allocated_mib"] or r["trainer_peak_rss_increase_mib"]),
            fmt(r["raw_cuda_max_allocated_mib"] or r["raw_peak_rss_increase_mib"]),
        ])
    peaks = ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in results["peak_flops_measured"].items())
    mem = "CUDA max allocated" if results["machine"].get("cuda_device") else "peak RSS increase"
    s = results["settings"]
    lines = [
        "### Training throughput: Trainer (a) vs raw PyTorch loop (b)",
        "",
        machine_line(results["machine"]),
        f"Config `{CONFIG}` (batch {results['results'][0]['batch_size']} × block {results['results'][0]['block_length']}), "
        f"{s['repeats']} alternated repeats (ABBA), medians; timed steps per run {s['steps']} after "
        f"{s['warmup']} warm-up steps. Measured matmul peak ({s['peak_size']}²): {peaks}.",
        "FLOPs per token = 6N + 12·n_layer·L·d (N = non-embedding parameters incl. the output projection); "
        "ratios are tokens/s on the wall clock / tokens per CPU-second of the process; (c) (older results only) = "
        "the Trainer with the copy-free `token_nll` that mdlm.objective now uses.",
        "",
        markdown_table(
            ["preset", "N", "precision", "(a) tok/s", "(b) tok/s", "(a)/(b) wall / CPU", "(c)/(b) wall / CPU",
             "(a) TFLOP/s", "MFU (a)", "MFU (b)", f"(a) {mem} MiB", f"(b) {mem} MiB"],
            rows,
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="model presets (tiny, small, 10m, 50m)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS) + ["16-mixed"])
    p.add_argument("--pairs", nargs="+", default=None, metavar="PRESET/PRECISION",
                   help="explicit preset/precision pairs instead of --presets x --precisions")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default: per preset)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run before the clock starts")
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats per side")
    p.add_argument("--warmup-runs", type=int, default=0, help="whole untimed runs per arm before the repeats")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=None, help="override the config's batch size")
    p.add_argument("--block-length", type=int, default=None, help="override the config's block length")
    p.add_argument("--peak-size", type=int, default=PEAK_MATMUL_SIZE, help="matmul size of the peak measurement")
    p.add_argument("--profile", action="store_true", help="also profile one Trainer run per preset × precision")
    p.add_argument("--op-profile", nargs="*", default=[], metavar="PRESET/PRECISION",
                   help="torch.profiler op tables of the raw loop for these pairs (markdown next to --out)")
    p.add_argument("--ops-only", action="store_true", help="only the --op-profile tables (no Trainer/raw measurement)")
    p.add_argument("--smoke", action="store_true", help="tiny preset, 32-true, 2 steps, 1 repeat: runs in seconds")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: benchmarks/results/train_throughput.json; "
                   "with --smoke a temporary file)")
    p.add_argument("--md", type=Path, default=None, help="markdown output (default: --out with .md)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further mdlm CLI overrides, e.g. --trainer.accelerator=gpu")
    args = p.parse_args(argv)
    if args.smoke:
        args.presets, args.precisions, args.steps, args.warmup, args.repeats = ["tiny"], ["32-true"], 2, 1, 1
        args.peak_size = min(args.peak_size, 512)
        args.batch_size = args.batch_size or 4
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "train_throughput_smoke.json" if args.smoke else RESULTS / "train_throughput.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(REPO)  # the shipped config's data paths are relative to the repository root
    extra = list(args.extra)
    if args.batch_size:
        extra.append(f"--data.init_args.batch_size={args.batch_size}")
    if args.block_length:
        extra.append(f"--data.init_args.block_length={args.block_length}")
    machine = machine_record()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workdir = Path(tempfile.mkdtemp(prefix="mdlm-train-throughput-"))
    if args.pairs:
        args.precisions = sorted({x.split("/", 1)[1] for x in args.pairs})
    peaks_start = measure_peaks(args.precisions, device, args.peak_size)
    results, profiles = [], {}
    t0 = time.perf_counter()
    try:
        pairs = [tuple(x.split("/", 1)) for x in args.pairs] if args.pairs else [
            (preset, precision) for preset in args.presets for precision in args.precisions
        ]
        if args.ops_only:
            pairs = []
        for preset, precision in pairs:
            spec = RunSpec(
                preset, precision,
                steps=args.steps or DEFAULT_STEPS.get(preset, 5),
                warmup=args.warmup if args.warmup is not None else DEFAULT_WARMUP.get(preset, 2),
                extra=extra,
            )
            print(f"{preset} {precision}: {spec.warmup} warm-up + {spec.steps} timed steps x {args.repeats}", flush=True)
            measured = measure_pair(spec, args.repeats, workdir, args.warmup_runs)
            results.append({"steps": spec.steps, "warmup": spec.warmup, **measured})
            results[-1]["preset"], results[-1]["precision"] = preset, precision
            if args.profile:
                prof_path = args.out.with_name(f"{args.out.stem}_profile_{preset}_{precision}.txt")
                profiles[f"{preset}/{precision}"] = profile_trainer(spec, workdir, prof_path)
        for pair in args.op_profile:
            preset, precision = pair.split("/", 1)
            spec = RunSpec(preset, precision, steps=args.steps or DEFAULT_STEPS.get(preset, 5), warmup=1, extra=extra)
            ops_path = args.out.with_name(f"{args.out.stem}_ops_{preset}_{precision}.md")
            profiles[f"ops:{pair}"] = op_profile(spec, workdir, ops_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    peaks_end = measure_peaks(args.precisions, device, args.peak_size)
    peaks = {k: max(peaks_start[k], peaks_end[k]) for k in peaks_start}
    machine["loadavg_end"] = list(os.getloadavg())
    summaries = [summarize(r["preset"], r["precision"], r, peaks, device) for r in results]
    for s, r in zip(summaries, results):
        s["steps"], s["warmup"] = r["steps"], r["warmup"]
    data = {
        "benchmark": "train_throughput",
        "config": CONFIG,
        "flops_formula": "per token: 6*N + 12*n_layer*L*d_model; N = all parameters except embedding tables "
        "(output projection included); per batch x B*L tokens",
        "peak_definition": f"best of 5 timed {args.peak_size}x{args.peak_size} matmuls at the compute dtype, "
        "max of measurements at start and end of the run",
        "settings": {
            "repeats": args.repeats,
            "steps": sorted({r["steps"] for r in results}),
            "warmup": sorted({r["warmup"] for r in results}),
            "extra_overrides": extra,
            "threads": torch.get_num_threads(),
            "peak_size": args.peak_size,
        },
        "machine": machine,
        "peak_flops_measured": peaks,
        "peak_flops_start": peaks_start,
        "peak_flops_end": peaks_end,
        "wall_s": time.perf_counter() - t0,
        "results": summaries,
        "profiles": profiles,
    }
    if summaries:  # (--ops-only writes only the op tables)
        write_results(args.out, data, markdown, args.md)
    return data


if __name__ == "__main__":
    main()
