r"""Issue 17, step 1: can a cheap per-t-bin signal *anticipate* learning on the k-parity plateau?

An adaptive mask-ratio sampler that is not told k needs a per-bin signal that, while validation
accuracy is still at 50 %, already peaks at the signal-optimal t = 1/(k+1). This script measures
candidate signals offline, on checkpoints of parity runs that *were* told k
(:class:`~mdlm.samplers.parity.ParitySignalOptimal`, ``mode="window"``: t ~ U[eps, t1*]), taken
before their validation accuracy rises.

Three phases (each a sub-command; ``all`` runs them in order)::

    OMP_NUM_THREADS=1 python -m experiments.adaptive_signal_probe train --k 2 3 4 --seed 0 --cap-s 600
    OMP_NUM_THREADS=1 python -m experiments.adaptive_signal_probe train --k 3 --sampler uniform --every 100 --max-steps 600 --cap-s 150
    OMP_NUM_THREADS=1 python -m experiments.adaptive_signal_probe probe --repeats 30 --count 3
    OMP_NUM_THREADS=1 python -m experiments.adaptive_signal_probe rule --repeats 20 --count 3
    OMP_NUM_THREADS=1 python -m experiments.adaptive_signal_probe report

``train`` runs the shipped ``configs/parity_md.yaml`` setting ((n = 14) k-parity, N = 1,000, tiny
transformer with learned positions, AdamW lr 1e-3, weight decay 0.1, 100 warm-up steps, constant
lr, batch 256, unweighted mean masked cross-entropy) through the project's own
:class:`~mdlm.module.MaskedDiffusionLM`, data module and sampler under a Lightning ``Trainer``,
validates every ``--every`` steps and saves the backbone and AdamW's second moments there; it stops
at validation accuracy >= ``--stop-acc`` or after ``--cap-s`` seconds of wall time.

``probe`` computes, for every plateau checkpoint and each of 10 equal t-bins B_j of [0, 1]
(bin 0 starts at eps = 1e-3), ``--repeats`` independent draws of (all scale-free):

- ``coherence_full``: cos(g_A, g_B) of the full-model gradients of two *disjoint* half-batches
  (128 training sequences each, t ~ U[B_j], fresh masks) of the training loss;
- ``coherence_lastblock``: the same cosine restricted to the output head, final norm and last
  transformer block (what a cheap online version would back-propagate through);
- ``coherence_adam``: the same cosine after AdamW's preconditioning, g / (sqrt(v_hat) + eps) with
  the checkpoint's second moments (the direction the optimiser actually moves);
- ``snr_head``: per-sample gradient signal-to-noise of the output head,
  :math:`(|\bar g|^2 - \mathrm{tr}\hat\Sigma / n) / \mathrm{tr}\hat\Sigma` over the n = 256
  sequences of both halves (per-sample gradients in closed form, :func:`head_per_sample_grads`);
  the numerator is the unbiased estimate of :math:`|\mu|^2`, so this is :math:`|\mu|^2/\mathrm{tr}\Sigma`
  = 1 / (the gradient noise scale B_simple), and equals :math:`(|\bar g|^2 / (\mathrm{tr}\hat\Sigma/n) - 1)/n`;
- ``align_val``: cos(g_A + g_B, g_val), with g_val the gradient of the *full-range* validation
  NELBO (1/t weight, t ~ U[eps, 1] stratified, 512 fresh validation sequences per draw);
- ``align_val_lastblock``: the same restricted to head + final norm + last block;
- ``loss``: the bin's mean masked cross-entropy (context only);
- ``p_signal`` (reference, needs k, does not count): the analytic fraction of bin-j masks in the
  signal regime, (k+1)·E_{t∈B_j}[t(1−t)^k].

Added after the first look at the data (reported separately, not part of the pre-declared set):

- ``snr_head_per_token`` (k-free, computed in ``report``): ``snr_head`` divided by the expected number of
  masked tokens per sequence, (mean t of the bin)·(n+1). If the masked tokens of a sequence contributed
  i.i.d. per-token gradients, ``snr_head`` would grow linearly in that count; this removes the
  "more masked tokens, more coherent" effect that makes every raw signal rise with t;
- ``align_rule_oracle`` (needs S and k; a diagnostic only, ``rule`` sub-command): cos of the bin's
  gradient with g_signal − g_noise, the gradient of one S ∪ {label} token's cross-entropy when it is
  the only masked one of S ∪ {label} minus when one more of them is masked (:func:`rule_direction`).

``report`` applies the decision rule of the issue to each signal and k (:func:`decide`) and writes
``benchmarks/results/adaptive_signal_probe.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "adaptive_signal_probe"
RESULTS = REPO / "benchmarks" / "results" / "adaptive_signal_probe.json"

NUM_BINS = 10
EPS = 1e-3
MASK_ID = 2
VOCAB = 3
#: the shipped configs/parity_md.yaml settings (n, data, model, optimiser)
CONFIG = {
    "n": 14, "num_train": 1000, "num_val": 2000, "batch_size": 256, "preset": "tiny", "positional": "learned",
    "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 100, "lr_schedule": "constant", "loss_weight": "none",
    "normalization": "masked_tokens", "betas": (0.9, 0.95), "adam_eps": 1e-8,
}
#: computed in summarise from snr_head (post hoc, see the docs): per masked token, snr_head / (mean t · L)
DERIVED = ("snr_head_per_token",)
#: needs k and S: a diagnostic, never a candidate
ORACLE = ("align_rule_oracle",)
SIGNALS = ("coherence_full", "coherence_lastblock", "coherence_adam", "snr_head", "align_val", "align_val_lastblock")
CONTEXT = ("loss",)
TOL = 0.1  # the "within ±0.1 of 1/(k+1)", applied to the top bin's centre


def set_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def bin_bounds(j: int, num_bins: int = NUM_BINS, eps: float = EPS) -> tuple[float, float]:
    """[lo, hi] of bin j of ``num_bins`` equal bins of [0, 1], bin 0 floored at eps."""
    return max(eps, j / num_bins), (j + 1) / num_bins


def bin_centres(num_bins: int = NUM_BINS) -> list[float]:
    return [(j + 0.5) / num_bins for j in range(num_bins)]


def p_signal_bins(k: int, num_bins: int = NUM_BINS) -> list[float]:
    """(k+1)·E_{t ~ U[B_j]}[t(1-t)^k] per bin: the analytic signal-regime fraction (needs k)."""
    from mdlm.samplers.parity import signal_probability

    return [signal_probability(k, *bin_bounds(j, num_bins, 0.0)) for j in range(num_bins)]


# ------------------------------------------------------------------------------------ model and data
def backbone_factory():
    from mdlm.models.transformer import Transformer

    return functools.partial(Transformer, preset=CONFIG["preset"], positional=CONFIG["positional"])


def make_module():
    from mdlm.module import MaskedDiffusionLM

    c = CONFIG
    return MaskedDiffusionLM(
        backbone=backbone_factory(), vocab_size=VOCAB, mask_token_id=MASK_ID, loss_weight=c["loss_weight"],
        normalization=c["normalization"], lr=c["lr"], weight_decay=c["weight_decay"], betas=c["betas"],
        adam_eps=c["adam_eps"], warmup_steps=c["warmup_steps"], lr_schedule=c["lr_schedule"],
    )


def make_data(k: int, seed: int):
    from mdlm.data.parity import ParityDataModule

    c = CONFIG
    dm = ParityDataModule(n=c["n"], k=k, num_train=c["num_train"], num_val=c["num_val"], seed=seed,
                          batch_size=c["batch_size"])
    dm.setup("fit")
    return dm


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(backbone in eval mode, AdamW bias-corrected second moments by parameter name or None, metadata)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = backbone_factory()(VOCAB)
    backbone.load_state_dict(state["backbone"])
    backbone.eval()  # dropout is 0 anyway
    return backbone, state.get("v_hat"), state["meta"]


# ------------------------------------------------------------------------------------ training
def train(k: int, seed: int, sampler: str, every: int, max_steps: int, cap_s: float, stop_acc: float,
          out: Path) -> dict[str, Any]:
    """One parity run with checkpoints every ``every`` steps (backbone + AdamW v_hat + val metrics)."""
    import lightning.pytorch as pl
    from lightning.pytorch import Callback, Trainer

    from mdlm.samplers import Uniform
    from mdlm.samplers.parity import ParitySignalOptimal

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("step*.pt"):
        old.unlink()
    pl.seed_everything(seed, verbose=False)
    dm = make_data(k, seed)
    module = make_module()
    samp = ParitySignalOptimal(k=k, mode="window", seed=seed) if sampler == "window" else Uniform(seed=seed)
    history: list[dict[str, Any]] = []
    t_wall, t_cpu = time.perf_counter(), time.process_time()

    class Saver(Callback):
        def _save(self, trainer, pl_module, metrics: dict[str, float]) -> None:
            step = int(trainer.global_step)
            v_hat = None
            if trainer.optimizers and trainer.optimizers[0].state:
                opt = trainer.optimizers[0]
                beta2 = opt.param_groups[0]["betas"][1]
                v_hat = {}
                for name, p in pl_module.backbone.named_parameters():
                    st = opt.state.get(p)
                    if st and "exp_avg_sq" in st:
                        v_hat[name] = st["exp_avg_sq"].detach().clone() / (1 - beta2 ** float(st["step"]))
            meta = {"k": k, "seed": seed, "sampler": sampler, "step": step, **metrics,
                    "wall_s": round(time.perf_counter() - t_wall, 1)}
            path = out / f"step{step:05d}.pt"
            torch.save({"backbone": pl_module.backbone.state_dict(), "v_hat": v_hat, "meta": meta}, path)
            history.append({**meta, "path": str(path.relative_to(REPO))})
            print(f"  k={k} {sampler} step {step}: {metrics} ({meta['wall_s']} s)", flush=True)

        def on_train_start(self, trainer, pl_module) -> None:
            self._save(trainer, pl_module, {})

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            metrics = {key.replace("/", "_"): round(float(m[key]), 4)
                       for key in ("val/label_acc", "train/label_acc", "val/nelbo") if key in m}
            self._save(trainer, pl_module, metrics)
            if metrics.get("val_label_acc", 0.0) >= stop_acc:
                trainer.should_stop = True

        def on_train_batch_end(self, trainer, *args) -> None:
            if time.perf_counter() - t_wall > cap_s:
                trainer.should_stop = True

    trainer = Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=max_steps, val_check_interval=every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[samp, Saver()],
    )
    load0 = os.getloadavg()
    trainer.fit(module, datamodule=dm)
    record = {
        "k": k, "seed": seed, "sampler": sampler, "secret": dm.secret,
        "t_max": getattr(samp, "t_max", 1.0), "every": every, "max_steps": max_steps, "cap_s": cap_s,
        "stop_acc": stop_acc, "last_step": int(trainer.global_step),
        "wall_s": round(time.perf_counter() - t_wall, 1), "cpu_s": round(time.process_time() - t_cpu, 1),
        "loadavg_start": load0, "loadavg_end": os.getloadavg(), "checkpoints": history,
    }
    (out / "train.json").write_text(json.dumps(record, indent=1))
    return record


# ------------------------------------------------------------------------------------ signal primitives
def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else 0.0


def head_per_sample_grads(hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                          masked: torch.Tensor, suppressed: list[int]) -> torch.Tensor:
    r"""Per-sequence gradients of :math:`S_b = \sum_i m_{bi}\,\ell_{bi}` w.r.t. a bias-free linear head
    ``W`` ([V, D]) with ``logits = hidden @ W.T``: :math:`G_b = \sum_i m_{bi} (p_{bi} - e_{x_{0,bi}}) h_{bi}^T`,
    ``p`` the softmax with the ``suppressed`` ids at -inf. Returns [B, V·D] (float64)."""
    z = logits.detach().double().clone()
    if suppressed:
        z[..., suppressed] = float("-inf")
    err = torch.softmax(z, -1) - torch.nn.functional.one_hot(targets, z.shape[-1]).double()
    err = err * masked.unsqueeze(-1).double()
    return torch.einsum("biv,bid->bvd", err, hidden.detach().double()).reshape(hidden.shape[0], -1)


def snr_from_samples(g: torch.Tensor) -> float:
    r""":math:`(|\bar g|^2 - \mathrm{tr}\hat\Sigma/n) / \mathrm{tr}\hat\Sigma` for per-sample gradients g [n, P]:
    an estimate of :math:`|\mu|^2 / \mathrm{tr}\Sigma` with an unbiased numerator (may be < 0)."""
    g = g.double()
    n = g.shape[0]
    mean = g.mean(0)
    tr = float(((g - mean) ** 2).sum() / (n - 1))
    return (float(mean @ mean) - tr / n) / tr if tr > 0 else 0.0


class HeadTap:
    """Keeps the input of ``backbone.lm_head`` (the final hidden states) of the latest forward."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.hidden = None
        self.handle = backbone.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.hidden = inputs[0]

    def close(self) -> None:
        self.handle.remove()


def lastblock_names(backbone: torch.nn.Module) -> list[str]:
    last = f"blocks.{len(backbone.blocks) - 1}."
    return [n for n, _ in backbone.named_parameters() if n.startswith((last, "norm_f.", "lm_head."))]


def loss_terms(backbone, ids, t, uniforms, loss_weight: str, normalization: str):
    """(loss, logits, hidden, masked) of one batch masked with ``uniforms < t`` (:mod:`mdlm.objective`)."""
    from mdlm.objective import mask_tokens, md_loss, token_nll

    noisy, masked = mask_tokens(ids, t, MASK_ID, uniforms)
    tap = HeadTap(backbone)
    try:
        logits = backbone(noisy)
    finally:
        tap.close()
    nll = token_nll(logits, ids, [MASK_ID])
    return md_loss(nll, masked, t, None, loss_weight, normalization), logits, tap.hidden, masked


def bin_signals(backbone, halves, g_val: torch.Tensor, sub_idx: torch.Tensor,
                precond: torch.Tensor | None) -> dict[str, float]:
    """Every signal of one bin from two disjoint half-batches ``halves = [(ids, t, uniforms)] * 2``."""
    params = list(backbone.parameters())
    grads, per_sample, losses = [], [], []
    for ids, t, u in halves:
        loss, logits, hidden, masked = loss_terms(backbone, ids, t, u, CONFIG["loss_weight"], CONFIG["normalization"])
        grads.append(flat(torch.autograd.grad(loss, params)))
        per_sample.append(head_per_sample_grads(hidden, logits, ids, masked, [MASK_ID]))
        losses.append(float(loss.detach()))
    ga, gb = grads
    out = {
        "coherence_full": cosine(ga, gb),
        "coherence_lastblock": cosine(ga[sub_idx], gb[sub_idx]),
        "snr_head": snr_from_samples(torch.cat(per_sample)),
        "align_val": cosine(ga + gb, g_val),
        "align_val_lastblock": cosine((ga + gb)[sub_idx], g_val[sub_idx]),
        "loss": sum(losses) / 2,
    }
    if precond is not None:
        out["coherence_adam"] = cosine(ga * precond, gb * precond)
    return out


def subset_index(backbone: torch.nn.Module) -> torch.Tensor:
    """Boolean mask over the flat parameter vector: head + final norm + last block."""
    sub = set(lastblock_names(backbone))
    return torch.cat([torch.full((p.numel(),), n in sub, dtype=torch.bool) for n, p in backbone.named_parameters()])


def probe_checkpoint(path: Path, k: int, seed: int, repeats: int, half: int = 128, val_size: int = 512,
                     probe_seed: int = 1234) -> dict[str, Any]:
    """All signals for one checkpoint: ``{signal: [repeats][NUM_BINS]}`` plus metadata."""
    backbone, v_hat, meta = load_checkpoint(path)
    dm = make_data(k, seed)
    train_ids = dm.train_set.tokens
    val_ids = dm.val_set.tokens
    names = [n for n, _ in backbone.named_parameters()]
    params = list(backbone.parameters())
    sub_idx = subset_index(backbone)
    precond = None
    if v_hat is not None:
        precond = 1.0 / (flat([v_hat[n] for n in names]).sqrt() + CONFIG["adam_eps"])
    gen = torch.Generator().manual_seed(probe_seed + 7919 * meta["step"] + 104729 * k + 1299709 * seed)
    out: dict[str, list[list[float]]] = {s: [] for s in (*SIGNALS, *CONTEXT)}
    if precond is None:
        out.pop("coherence_adam")
    L = train_ids.shape[1]
    for _ in range(repeats):
        # the full-range validation NELBO gradient of this draw (stratified t over [eps, 1])
        vi = val_ids[torch.randperm(len(val_ids), generator=gen)[:val_size]]
        tv = EPS + (1 - EPS) * (torch.randperm(val_size, generator=gen) + torch.rand(val_size, generator=gen)) / val_size
        uv = torch.rand((val_size, L), generator=gen)
        loss_v, *_ = loss_terms(backbone, vi, tv.float(), uv, "elbo", "maskable_tokens")
        g_val = flat(torch.autograd.grad(loss_v, params))
        row = {s: [] for s in out}
        for j in range(NUM_BINS):
            lo, hi = bin_bounds(j)
            idx = torch.randperm(len(train_ids), generator=gen)[: 2 * half]
            halves = [
                (train_ids[idx[h * half:(h + 1) * half]], (lo + (hi - lo) * torch.rand(half, generator=gen)).float(),
                 torch.rand((half, L), generator=gen))
                for h in range(2)
            ]
            for s, v in bin_signals(backbone, halves, g_val, sub_idx, precond).items():
                row[s].append(v)
        for s in out:
            out[s].append(row[s])
    return {"meta": meta, "path": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
            "repeats": repeats, "half_batch": half, "val_size": val_size, "values": out}


def rule_masks(ids: torch.Tensor, relevant: list[int], signal: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy ids, target mask) with one uniformly chosen position of ``relevant`` (S ∪ {label}) as the
    target, always masked; ``signal``: the other relevant positions visible (the target is determined),
    else exactly one more of them masked (noise regime: the target is independent of the visible
    rest). Irrelevant positions are masked with probability 1/2 either way."""
    B, L = ids.shape
    rel = torch.tensor(relevant)
    masked = torch.rand((B, L), generator=gen) < 0.5
    masked[:, rel] = False
    pick = torch.stack([torch.randperm(len(relevant), generator=gen)[:2] for _ in range(B)])
    rows = torch.arange(B)
    target = torch.zeros((B, L), dtype=torch.bool)
    target[rows, rel[pick[:, 0]]] = True
    masked[rows, rel[pick[:, 0]]] = True
    if not signal:
        masked[rows, rel[pick[:, 1]]] = True
    return torch.where(masked, torch.full_like(ids, MASK_ID), ids), target


def rule_direction(backbone, ids: torch.Tensor, relevant: list[int], gen: torch.Generator) -> torch.Tensor:
    """g_signal − g_noise: the gradient of the target token's cross-entropy in signal-regime masks minus
    that in noise-regime masks (same sequences, same target positions' marginals). What both share —
    predicting the marginal of a bit — cancels; what is left is the direction that learns the rule."""
    from mdlm.objective import token_nll

    params = list(backbone.parameters())
    out = []
    for signal in (True, False):
        noisy, target = rule_masks(ids, relevant, signal, gen)
        nll = token_nll(backbone(noisy), ids, [MASK_ID])
        out.append(flat(torch.autograd.grad(nll[target].mean(), params)))
    return out[0] - out[1]


def probe_rule_alignment(path: Path, k: int, seed: int, repeats: int, half: int = 128,
                         probe_seed: int = 4321) -> dict[str, Any]:
    """Oracle diagnostic (needs S and k; not a candidate): per bin, cos(g_A + g_B, g_rule) with g_rule
    from all training sequences (:func:`rule_direction`), and the self-consistency of g_rule: the
    cosine of two estimates from disjoint halves of the training set (≈ 0: the rule direction itself
    is below the sampling noise of 500 sequences)."""
    from mdlm.objective import mask_tokens, md_loss, token_nll

    backbone, _, meta = load_checkpoint(path)
    dm = make_data(k, seed)
    train_ids = dm.train_set.tokens
    relevant = [*dm.secret, train_ids.shape[1] - 1]
    gen = torch.Generator().manual_seed(probe_seed + 7919 * meta["step"] + 104729 * k + 1299709 * seed)
    perm = torch.randperm(len(train_ids), generator=gen)
    g_a = rule_direction(backbone, train_ids[perm[: len(perm) // 2]], relevant, gen)
    g_b = rule_direction(backbone, train_ids[perm[len(perm) // 2:]], relevant, gen)
    g_rule = g_a + g_b
    params = list(backbone.parameters())
    L = train_ids.shape[1]
    values = []
    for _ in range(repeats):
        row = []
        for j in range(NUM_BINS):
            lo, hi = bin_bounds(j)
            ids = train_ids[torch.randperm(len(train_ids), generator=gen)[: 2 * half]]
            t = (lo + (hi - lo) * torch.rand(2 * half, generator=gen)).float()
            noisy, masked = mask_tokens(ids, t, MASK_ID, torch.rand((2 * half, L), generator=gen))
            loss = md_loss(token_nll(backbone(noisy), ids, [MASK_ID]), masked, t, None,
                           CONFIG["loss_weight"], CONFIG["normalization"])
            row.append(cosine(flat(torch.autograd.grad(loss, params)), g_rule))
        values.append(row)
    return {"meta": meta, "rule_self_cosine": cosine(g_a, g_b), "rule_norm": float(g_rule.norm()),
            "repeats": repeats, "values": {"align_rule_oracle": values}}


# ------------------------------------------------------------------------------------ statistics
def t_interval(x: torch.Tensor, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean of x [R]."""
    from scipy import stats

    x = x.double()
    n = x.numel()
    m = float(x.mean())
    if n < 2:
        return m, float("nan"), float("nan")
    se = float(x.std(unbiased=True)) / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return m, m - q * se, m + q * se


def decide(values: torch.Tensor, k: int, tol: float = TOL, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    r"""The issue's go/no-go rule on a signal's draws ``values`` [R, NUM_BINS] (independent repeats).

    - *top bin*: chosen on the odd-numbered repeats (argmax of their mean);
    - *excluding the uniform answer*: on the even-numbered repeats (held out from the choice, so the
      max over 10 noisy bins cannot inflate it), the top bin's excess over the across-bin mean,
      :math:`d_r = s_{r,top} - \frac{1}{10}\sum_j s_{r,j}`, has a 95 % t-interval whose lower end is > 0
      (a uniform q — equal signal in every bin — is then rejected *in favour of that bin*);
    - *location*: the top bin's centre lies within ``tol`` of 1/(k+1).

    GO iff both hold. Also reported: the argmax of the all-repeat mean, a 95 % t-interval per bin, and
    the bootstrap frequency (over repeats) with which the argmax lands within ``tol`` of 1/(k+1).
    """
    values = values.double()
    R, nb = values.shape
    centres = torch.tensor(bin_centres(nb), dtype=torch.float64)
    target = 1.0 / (k + 1)
    ok_bins = ((centres - target).abs() <= tol + 1e-9)
    select, held = values[1::2], values[0::2]
    top = int(select.mean(0).argmax())
    excess = held[:, top] - held.mean(1)
    ex_mean, ex_lo, ex_hi = t_interval(excess)
    g = torch.Generator().manual_seed(seed)
    boot = values[torch.randint(0, R, (n_boot, R), generator=g)].mean(1).argmax(1)
    per_bin = [t_interval(values[:, j]) for j in range(nb)]
    full_top = int(values.mean(0).argmax())
    in_window = bool(ok_bins[top])
    return {
        "target": target,
        "mean": [round(m, 6) for m, _, _ in per_bin],
        "ci95": [[round(lo, 6), round(hi, 6)] for _, lo, hi in per_bin],
        "top_bin_selection_half": top,
        "top_bin_centre": round(float(centres[top]), 3),
        "top_bin_all_repeats": full_top,
        "top_in_window": in_window,
        "excess_over_mean_heldout": [round(ex_mean, 6), round(ex_lo, 6), round(ex_hi, 6)],
        "excludes_uniform": bool(ex_lo > 0),
        "boot_argmax_in_window": round(float(ok_bins[boot].double().mean()), 3),
        "spearman_vs_p_signal": round(_spearman(values.mean(0), torch.tensor(p_signal_bins(k, nb))), 3),
        "go": bool(in_window and ex_lo > 0),
    }


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy import stats

    return float(stats.spearmanr(a.numpy(), b.numpy()).statistic)


# ------------------------------------------------------------------------------------ commands
def cmd_train(args) -> None:
    for k in args.k:
        name = f"k{k}_{args.sampler}_seed{args.seed}"
        print(f"train {name}", flush=True)
        rec = train(k, args.seed, args.sampler, args.every, args.max_steps, args.cap_s, args.stop_acc, RUNS / name)
        print(f"  done: last step {rec['last_step']}, wall {rec['wall_s']} s, cpu {rec['cpu_s']} s", flush=True)


def plateau_checkpoints(record: dict[str, Any], max_acc: float, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` evenly spaced checkpoints with val accuracy <= max_acc before the first one above
    it (step > 0), always including the last plateau checkpoint."""
    plateau = []
    for c in record["checkpoints"]:
        acc = c.get("val_label_acc")
        if acc is None:
            continue
        if acc > max_acc:
            break
        plateau.append(c)
    if len(plateau) <= count:
        return plateau
    idx = sorted({round(i * (len(plateau) - 1) / (count - 1)) for i in range(count)})
    return [plateau[i] for i in idx]


def probe_key(meta: dict[str, Any]) -> tuple[int, str, int, int]:
    """(k, sampler, seed, step): one probed checkpoint (results of earlier versions lack the seed: 0)."""
    return meta["k"], meta["sampler"], meta.get("seed", 0), meta["step"]


def cmd_probe(args) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() and args.append else {"probes": []}
    done = {probe_key(p["meta"]) for p in results["probes"]}
    t0, c0 = time.perf_counter(), time.process_time()
    for run_dir in sorted(RUNS.glob("k*_seed*")):
        record = json.loads((run_dir / "train.json").read_text())
        if (args.k and record["k"] not in args.k) or (args.seeds is not None and record["seed"] not in args.seeds) \
                or (args.sampler and record["sampler"] != args.sampler):
            continue
        for c in plateau_checkpoints(record, args.max_acc, args.count):
            key = (record["k"], record["sampler"], record["seed"], c["step"])
            if key in done:
                continue
            t1 = time.perf_counter()
            res = probe_checkpoint(REPO / c["path"], record["k"], record["seed"], args.repeats)
            res["wall_s"] = round(time.perf_counter() - t1, 1)
            res["loadavg"] = os.getloadavg()
            results["probes"].append(res)
            print(f"probe k={record['k']} {record['sampler']} step {c['step']} (val acc {c.get('val_label_acc')}): "
                  f"{res['wall_s']} s", flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results))
    results.setdefault("probe_time", []).append(
        {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)})
    RESULTS.write_text(json.dumps(results))


def cmd_rule(args) -> None:
    results = json.loads(RESULTS.read_text())
    results.setdefault("rule_probes", [])
    done = {probe_key(p["meta"]) for p in results["rule_probes"]}
    t0 = time.perf_counter()
    for run_dir in sorted(RUNS.glob("k*_window_seed*")):
        record = json.loads((run_dir / "train.json").read_text())
        for c in plateau_checkpoints(record, args.max_acc, args.count):
            if (record["k"], "window", record["seed"], c["step"]) in done:
                continue
            t1 = time.perf_counter()
            res = probe_rule_alignment(REPO / c["path"], record["k"], record["seed"], args.repeats)
            res["wall_s"] = round(time.perf_counter() - t1, 1)
            results["rule_probes"].append(res)
            print(f"rule k={record['k']} step {c['step']}: self-cosine {res['rule_self_cosine']:.3f} ({res['wall_s']} s)",
                  flush=True)
    results.setdefault("probe_time", []).append({"rule_wall_s": round(time.perf_counter() - t0, 1)})
    RESULTS.write_text(json.dumps(results))


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per (sampler, k): the decision for every signal on the pooled plateau checkpoints (each repeat r
    averaged over checkpoints: "averaged across steps") and per checkpoint."""
    out: dict[str, Any] = {}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    rule = {probe_key(p["meta"]): p for p in results.get("rule_probes", [])}
    for p in results["probes"]:
        extra = rule.get(probe_key(p["meta"])) if p["meta"]["sampler"] == "window" else None
        if extra is not None:
            p = {**p, "values": {**p["values"], **extra["values"]}, "rule_self_cosine": extra["rule_self_cosine"]}
        if "snr_head" in p["values"]:
            seq_len = CONFIG["n"] + 1
            mean_t = [sum(bin_bounds(j)) / 2 for j in range(NUM_BINS)]
            per_token = [[v / (mt * seq_len) for v, mt in zip(row, mean_t)] for row in p["values"]["snr_head"]]
            p = {**p, "values": {**p["values"], "snr_head_per_token": per_token}}
        groups.setdefault((p["meta"]["sampler"], p["meta"]["k"], p["meta"].get("seed", 0)), []).append(p)
    for (sampler, k, seed), probes in sorted(groups.items()):
        probes = sorted(probes, key=lambda p: p["meta"]["step"])
        entry: dict[str, Any] = {
            "sampler": sampler, "k": k, "seed": seed, "repeats": min(len(next(iter(p["values"].values()))) for p in probes),
            "steps": [p["meta"]["step"] for p in probes],
            "val_acc": [p["meta"].get("val_label_acc") for p in probes],
            "p_signal": [round(x, 4) for x in p_signal_bins(k)],
            "rule_self_cosine": [p.get("rule_self_cosine") for p in probes],
            "pooled": {}, "per_checkpoint": {},
        }
        for s in (*SIGNALS, *DERIVED, *CONTEXT, *ORACLE):
            if not all(s in p["values"] for p in probes):
                continue
            r = min(len(p["values"][s]) for p in probes)  # equal repeats per checkpoint for pooling
            stack = torch.stack([torch.tensor(p["values"][s][:r]) for p in probes])  # [C, R, bins]
            entry["pooled"][s] = decide(stack.mean(0), k)
            entry["per_checkpoint"][s] = [
                {"step": p["meta"]["step"], **{key: v for key, v in decide(torch.tensor(p["values"][s]), k).items()
                                                if key in ("mean", "ci95", "top_bin_selection_half", "go",
                                                           "excess_over_mean_heldout", "excludes_uniform")}}
                for p in probes
            ]
        out[run_key(sampler, k, seed)] = entry
    return out


#: markers of the generated across-seeds table in docs/adaptive_signal.md
ACROSS_SEEDS_MARKERS = ("<!-- adaptive-across-seeds:start -->", "<!-- adaptive-across-seeds:end -->")


def run_key(sampler: str, k: int, seed: int) -> str:
    """``window_k3`` for seed 0 (the first session's keys), ``window_k3_seed1`` for the others."""
    return f"{sampler}_k{k}" + (f"_seed{seed}" if seed else "")


def across_seeds(summary: dict[str, Any], signals=(*SIGNALS, *DERIVED)) -> list[dict[str, Any]]:
    """Per (sampler, k, signal): each seed's selected top bin, whether it excluded uniform, and GO —
    the replication the single-seed table could not give."""
    rows = []
    for sampler, k in sorted({(e["sampler"], e["k"]) for e in summary.values()}):
        entries = sorted((e for e in summary.values() if (e["sampler"], e["k"]) == (sampler, k)), key=lambda e: e["seed"])
        for sig in signals:
            per = [(e["seed"], e["pooled"][sig]) for e in entries if sig in e["pooled"]]
            if not per:
                continue
            rows.append({"sampler": sampler, "k": k, "signal": sig, "target": round(1 / (k + 1), 3),
                         "seeds": [s for s, _ in per], "repeats": [e["repeats"] for e in entries if sig in e["pooled"]],
                         "top_bin_centre": [d["top_bin_centre"] for _, d in per],
                         "excludes_uniform": [bool(d["excludes_uniform"]) for _, d in per],
                         "go": [bool(d["go"]) for _, d in per]})
    return rows


def across_seeds_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | k (target 1/(k+1)) | signal | seeds | draws per checkpoint | top bin per seed "
             "(* = excludes uniform) | GO |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tops = ", ".join(f"{c:.2f}{'*' if x else ''}" for c, x in zip(r["top_bin_centre"], r["excludes_uniform"]))
        lines.append(f"| {r['sampler']} | {r['k']} ({r['target']:.2f}) | {r['signal']} | "
                     f"{', '.join(map(str, r['seeds']))} | {', '.join(map(str, r['repeats']))} | {tops} | "
                     f"{sum(r['go'])} of {len(r['go'])} |")
    return "\n".join(lines)


def cmd_report(args) -> None:
    results = json.loads(RESULTS.read_text())
    # runs/ is not versioned: a run whose folder is gone keeps the record an earlier report saved
    runs = {(r["k"], r["sampler"], r["seed"]): r for r in results.get("runs", [])}
    for run_dir in sorted(RUNS.glob("k*_seed*")):
        rec = json.loads((run_dir / "train.json").read_text())
        rec["checkpoints"] = [{k: v for k, v in c.items() if k != "path"} for c in rec["checkpoints"]]
        runs[(rec["k"], rec["sampler"], rec["seed"])] = rec
    results["runs"] = [runs[key] for key in sorted(runs)]
    for p in (*results["probes"], *results.get("rule_probes", [])):  # 4 significant digits keep the file small
        p["values"] = {name: [[float(f"{x:.4g}") for x in row] for row in rows] for name, rows in p["values"].items()}
    results["summary"] = summarise(results)
    results["across_seeds"] = across_seeds(results["summary"])
    results["settings"] = {"config": CONFIG, "num_bins": NUM_BINS, "eps": EPS, "tol": TOL,
                           "signals": list(SIGNALS), "decision": decide.__doc__.strip()}
    RESULTS.write_text(json.dumps(results, indent=None, separators=(",", ":")))
    print(markdown(results["summary"]))
    print("\n" + across_seeds_markdown(results["across_seeds"]))
    if args.docs:
        from mdlm.results import replace_readme_section

        replace_readme_section(args.docs, *ACROSS_SEEDS_MARKERS, across_seeds_markdown(results["across_seeds"]))


def markdown(summary: dict[str, Any], signals=(*SIGNALS, *DERIVED, *CONTEXT, *ORACLE)) -> str:
    lines = []
    for key, entry in summary.items():
        lines.append(f"\n**{key}** — pooled plateau checkpoints at steps {entry['steps']} "
                     f"(val acc {entry['val_acc']})\n")
        lines.append("| signal | " + " | ".join(f"{lo:.1f}–{lo + 0.1:.1f}" for lo in [j / 10 for j in range(NUM_BINS)])
                     + " | top | excess (held-out half) | GO |")
        lines.append("|---" * (NUM_BINS + 4) + "|")
        lines.append("| P_S (needs k) | " + " | ".join(f"{x:.3f}" for x in entry["p_signal"]) + " | | | |")
        for s in signals:
            d = entry["pooled"].get(s)
            if d is None:
                continue
            cells = [f"{m:.3g} [{lo:.2g}, {hi:.2g}]" for m, (lo, hi) in zip(d["mean"], d["ci95"])]
            ex = d["excess_over_mean_heldout"]
            lines.append(f"| {s} | " + " | ".join(cells) + f" | {d['top_bin_centre']:.2f} | "
                         f"{ex[0]:.3g} [{ex[1]:.2g}, {ex[2]:.2g}] | {'GO' if d['go'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    set_threads()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--k", type=int, nargs="+", default=[2, 3, 4])
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--sampler", choices=("window", "uniform"), default="window")
    tr.add_argument("--every", type=int, default=50)
    tr.add_argument("--max-steps", type=int, default=4000)
    tr.add_argument("--cap-s", type=float, default=600.0)
    tr.add_argument("--stop-acc", type=float, default=0.9)
    pr = sub.add_parser("probe")
    pr.add_argument("--k", type=int, nargs="*")
    pr.add_argument("--repeats", type=int, default=40)
    pr.add_argument("--max-acc", type=float, default=0.6, help="plateau: val accuracy <= this")
    pr.add_argument("--count", type=int, default=4, help="plateau checkpoints per run")
    pr.add_argument("--append", action="store_true", help="keep probes already in the results file")
    pr.add_argument("--seeds", type=int, nargs="*", default=None, help="only runs with these seeds")
    pr.add_argument("--sampler", choices=("window", "uniform"), default=None, help="only runs with this sampler")
    ru_ = sub.add_parser("rule")
    ru_.add_argument("--repeats", type=int, default=20)
    ru_.add_argument("--max-acc", type=float, default=0.6)
    ru_.add_argument("--count", type=int, default=3)
    rep = sub.add_parser("report")
    rep.add_argument("--docs", default=None, help="rewrite the across-seeds table in this page (docs/adaptive_signal.md)")
    args = parser.parse_args(argv)
    {"train": cmd_train, "probe": cmd_probe, "rule": cmd_rule, "report": cmd_report}[args.cmd](args)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"cpu user+sys {ru.ru_utime + ru.ru_stime:.1f} s; loadavg {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
