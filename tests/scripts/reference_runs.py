"""Reference runs for refactors that must not change behaviour: record, then compare bit for bit.

Each case trains a tiny model with fixed seeds on this CPU and records what a behaviour change would
move: the per-micro-batch loss that is back-propagated and the logged ``train/loss``, the logged
validation metrics (NELBO and its bins, label accuracy), a hash of the gradients after every
micro-batch, the raw final weights and last gradients, and the sampler's state (t of the last draw, AdaptiveBins'
q, signal, probe losses and history, importance weights). Cases:

- ``parity_md`` / ``parity_md_acc2`` / ``parity_md_elbo_strat_acc2``: ``configs/parity_md.yaml``,
  20 steps with validation at 10 and 20 (accumulation 1 and 2 + norm clipping; 1/t with
  ``maskable_tokens`` and a stratified Uniform sampler);
- ``parity_ce``: ``configs/parity_ce.yaml`` (output supervision);
- ``adaptive_distribution`` / ``adaptive_importance``: AdaptiveBins on parity_md (importance mode:
  validation probe, 1/t, accumulation 2);
- ``wikitext`` / ``wikitext_adaptive``: ``configs/wikitext_uniform.yaml`` (bf16-mixed), 2-3 steps;
- ``fsdp2``: ``configs/parity_md.yaml`` + ``configs/trainer/fsdp2_cpu.yaml`` on 2 CPU processes
  (gloo), accumulation 2, 6 steps;
- ``likelihood``: :func:`mdlm.likelihood.estimate_log_likelihoods` on a seeded tiny Transformer.

Usage (from the repository root)::

    python tests/scripts/reference_runs.py record /tmp/ref_before      # -> .json + .pt
    python tests/scripts/reference_runs.py record /tmp/ref_after
    python tests/scripts/reference_runs.py compare /tmp/ref_before /tmp/ref_after

``compare`` requires exact equality: ``torch.equal`` on every tensor and ``==`` on every float.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

QUIET = [
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.check_val_every_n_epoch=null",
    "--throughput=null",
]
PARITY_SMALL = [
    "--data.init_args.num_train=256",
    "--data.init_args.num_val=128",
    "--data.init_args.batch_size=32",
    "--trainer.max_steps=20",
    "--trainer.val_check_interval=10",
    "--trainer.limit_val_batches=2",
]
PARITY_MD = ["--config", str(CONFIGS / "parity_md.yaml"), *PARITY_SMALL]
ADAPTIVE = ["--sampler=mdlm.samplers.AdaptiveBins", "--sampler.init_args.update_every=5", "--sampler.init_args.num_bins=5"]
WIKITEXT = [
    "--config", str(CONFIGS / "wikitext_uniform.yaml"),
    "--data.init_args.batch_size=8",
    "--data.init_args.eval_batch_size=8",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=2",
]

CASES: dict[str, list[str]] = {
    "parity_md": PARITY_MD,
    "parity_md_acc2": [*PARITY_MD, "--trainer.accumulate_grad_batches=2", "--trainer.gradient_clip_val=1.0"],
    "parity_md_elbo_strat_acc2": [
        *PARITY_MD, "--trainer.accumulate_grad_batches=2", "--model.init_args.loss_weight=elbo",
        "--model.init_args.normalization=maskable_tokens", "--sampler=mdlm.samplers.Uniform",
        "--sampler.init_args.stratified=true",
    ],
    "parity_ce": ["--config", str(CONFIGS / "parity_ce.yaml"), *PARITY_SMALL],
    "adaptive_distribution": [*PARITY_MD, *ADAPTIVE, "--sampler.init_args.mode=distribution"],
    "adaptive_importance": [
        *PARITY_MD, *ADAPTIVE, "--sampler.init_args.mode=importance", "--sampler.init_args.probe_source=val",
        "--model.init_args.loss_weight=elbo", "--model.init_args.normalization=maskable_tokens",
        "--trainer.accumulate_grad_batches=2",
    ],
    "wikitext": [*WIKITEXT, "--trainer.max_steps=2"],
    "wikitext_adaptive": [
        *WIKITEXT, "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--sampler=mdlm.samplers.AdaptiveBins",
        "--sampler.init_args.update_every=1", "--sampler.init_args.num_bins=4", "--sampler.init_args.mode=importance",
        "--sampler.init_args.probe_size=4",
    ],
    "fsdp2": [
        "--config", str(CONFIGS / "parity_md.yaml"), "--config", str(CONFIGS / "trainer" / "fsdp2_cpu.yaml"),
        *PARITY_SMALL, "--trainer.max_steps=6", "--trainer.val_check_interval=6", "--trainer.limit_val_batches=1",
        "--trainer.accumulate_grad_batches=2", "--data.init_args.batch_size=16",
    ],
    "likelihood": [],
}

#: files whose change by someone else would also move the results (hashed into the record)
WATCHED = ["mdlm", "configs"]


def _digest(tensor) -> str:
    import torch

    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def make_recorder():
    import torch
    from lightning.pytorch import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.loss: list[float] = []  # back-propagated loss per micro-batch
            self.logged: list[dict[str, float]] = []  # train/* logged per micro-batch
            self.val: list[dict[str, float]] = []
            self.grad_hashes: list[str] = []
            self.tensors: dict[str, torch.Tensor] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.loss.append(float(loss.detach()))
            self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
            # gradients after the micro-batch (after the optimizer step, its rescale and clipping, at a window's end)
            grads = {n: _full(p.grad.detach()).cpu() for n, p in pl_module.named_parameters() if p.grad is not None}
            self.grad_hashes.append(hashlib.sha256("".join(n + _digest(g) for n, g in grads.items()).encode()).hexdigest())
            self.tensors.update({f"grad/{n}": g.clone() for n, g in grads.items()})

        def on_validation_end(self, trainer, pl_module) -> None:
            self.val.append({k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if not k.startswith("train/")})

        def on_train_end(self, trainer, pl_module) -> None:
            for n, p in pl_module.named_parameters():  # full_tensor() is collective: every rank runs it
                self.tensors[f"weight/{n}"] = _full(p.detach()).clone().cpu()
            sampler = next((cb for cb in trainer.callbacks if hasattr(cb, "last_t")), None)
            if sampler is not None and sampler.last_t is not None:
                self.tensors["sampler/last_t"] = sampler.last_t.cpu().clone()
            for name in ("probs", "signal", "probe_losses", "importance_weights"):
                value = getattr(sampler, name, None)
                if value is not None:
                    self.tensors[f"sampler/{name}"] = value.cpu().clone()

        def record(self, trainer) -> tuple[dict, dict]:
            sampler = next((cb for cb in trainer.callbacks if hasattr(cb, "last_t")), None)
            history = getattr(sampler, "history", None)
            record = {
                "loss": self.loss,
                "logged": self.logged,
                "val": self.val,
                "global_step": int(trainer.global_step),
                "grad_hashes": self.grad_hashes,
                "hashes": {k: _digest(v) for k, v in self.tensors.items()},
                "weights_hash": hashlib.sha256(
                    "".join(_digest(v) for k, v in self.tensors.items() if k.startswith("weight/")).encode()
                ).hexdigest(),
                "adaptive_history": history,
                "extra_forward_tokens": getattr(sampler, "extra_forward_tokens", None),
            }
            return record, dict(self.tensors)

    return Recorder()


def run_cli(args: list[str]) -> tuple[dict, dict]:
    """Build the CLI with ``args``, add the recorder, fit."""
    from mdlm.cli import build_cli

    root = tempfile.mkdtemp(prefix="mdlm_ref_")
    cli = build_cli([*args, *QUIET, f"--trainer.default_root_dir={root}"], run=False)
    recorder = make_recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return recorder.record(cli.trainer)


def run_likelihood() -> tuple[dict, dict]:
    import torch

    from mdlm.likelihood import estimate_log_likelihoods
    from mdlm.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(12, n_layer=1, n_head=2, d_model=32).eval()
    g = torch.Generator().manual_seed(1)
    requests = [
        (torch.randint(0, 10, (p,), generator=g), torch.randint(0, 10, (c,), generator=g))
        for p, c in [(3, 4), (0, 5), (3, 4), (2, 1), (5, 7)]
    ]
    out = estimate_log_likelihoods(model, requests, mask_token_id=11, suppress_token_ids=[10], mc_num=16,
                                   batch_size=5, seed=3, stratified=True)
    tensors = {f"samples/{i}": e.samples for i, e in enumerate(out)}
    record = {"mean": [e.mean for e in out], "stderr": [e.stderr for e in out],
              "hashes": {k: _digest(v) for k, v in tensors.items()}}
    return record, tensors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fsdp2(args: list[str]) -> tuple[dict, dict]:
    """Two processes of this script (``worker``), launched as test_parallel.py launches its script."""
    import torch

    out = Path(tempfile.mkdtemp(prefix="mdlm_ref_fsdp2_"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "NODE_RANK": "0"}
    procs = [
        subprocess.Popen([sys.executable, __file__, "worker", str(out)], cwd=ROOT,
                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("fsdp2 worker failed:\n" + "\n".join(log[-4000:] for log in logs))
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    tensors = torch.load(out / "rank0.pt", weights_only=True)
    return {"rank0": records[0], "rank1": records[1]}, tensors


def worker(out: str) -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    record, tensors = run_cli(CASES["fsdp2"])
    rank = int(os.environ["RANK"])
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        torch.save(tensors, Path(out, "rank0.pt"))


def watched_hashes() -> dict[str, str]:
    hashes = {}
    for folder in WATCHED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml"):
                hashes[str(path.relative_to(ROOT))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def record(prefix: str, cases: list[str]) -> None:
    import time

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.chdir(ROOT)  # configs name data paths relative to the repository root
    os.environ.setdefault("MDLM_CACHE_DIR", "/tmp/mdlm_ref_cache")  # one token cache for every recording
    results: dict = {"files": watched_hashes(), "cases": {}, "seconds": {}}
    all_tensors: dict = {}
    for name in cases:
        start = time.perf_counter()
        if name == "likelihood":
            rec, tensors = run_likelihood()
        elif name == "fsdp2":
            rec, tensors = run_fsdp2(CASES[name])
        else:
            rec, tensors = run_cli(CASES[name])
        results["cases"][name] = rec
        results["seconds"][name] = round(time.perf_counter() - start, 1)
        all_tensors.update({f"{name}/{k}": v for k, v in tensors.items()})
        print(f"{name}: {results['seconds'][name]} s", flush=True)
    Path(prefix + ".json").write_text(json.dumps(results, indent=1))
    torch.save(all_tensors, prefix + ".pt")


def _diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        out.append(f"{path}: {a!r} != {b!r}")


def compare(before: str, after: str) -> int:
    import torch

    a, b = json.loads(Path(before + ".json").read_text()), json.loads(Path(after + ".json").read_text())
    changed_files = [f for f in sorted(set(a["files"]) | set(b["files"])) if a["files"].get(f) != b["files"].get(f)]
    print("files changed between the recordings:", ", ".join(changed_files) or "none")
    diffs: list[str] = []
    _diff(a["cases"], b["cases"], "", diffs)
    ta, tb = torch.load(before + ".pt", weights_only=True), torch.load(after + ".pt", weights_only=True)
    for k in sorted(set(ta) | set(tb)):
        if k not in ta or k not in tb:
            diffs.append(f"tensor {k}: missing on one side")
        elif not torch.equal(ta[k], tb[k]):
            diffs.append(f"tensor {k}: not torch.equal (max |diff| {float((ta[k].double() - tb[k].double()).abs().max()):.3g})")
    for name in sorted(a["cases"]):
        n_tensors = sum(1 for k in ta if k.startswith(name + "/"))
        bad = [d for d in diffs if d.lstrip("/").startswith(name + "/") or d.startswith(f"tensor {name}/")]
        print(f"{name:28s} {'EQUAL' if not bad else 'DIFFERENT'}  ({n_tensors} tensors; "
              f"{a['seconds'][name]} s before, {b['seconds'].get(name)} s after)")
    for d in diffs[:50]:
        print("  ", d)
    print("bitwise equal" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("prefix", help="writes PREFIX.json and PREFIX.pt")
    rec.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    cmp = sub.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    wrk = sub.add_parser("worker")
    wrk.add_argument("out")
    args = parser.parse_args()
    if args.command == "record":
        record(args.prefix, [c for c in args.cases.split(",") if c])
    elif args.command == "compare":
        sys.exit(compare(args.before, args.after))
    else:
        worker(args.out)


if __name__ == "__main__":
    main()
