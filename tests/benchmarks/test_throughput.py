"""Throughput: FLOP formula, the default throughput callback, the benchmark scripts' references."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import REPO_ROOT, tiny_trainer
from torch.utils.data import DataLoader

from mdlm.models.transformer import Transformer
from mdlm.throughput import (
    TokenThroughputMonitor,
    attention_shape,
    batch_shape,
    compute_dtype,
    flops_per_token,
    matmul_parameters,
    measure_peak_flops,
)


def _bench(name: str):
    """A benchmark script as a module (``benchmarks.<name>``)."""
    return importlib.import_module(f"benchmarks.{name}")


# ------------------------------------------------------------------ FLOP formula
def test_flops_per_token_matches_a_hand_count():
    V, d, n_layer, L = 50, 128, 2, 16
    model = Transformer(V, preset="tiny")  # 2 layers, d_model 128, LayerNorm without bias
    per_block = (3 * d * d + d * d) + (4 * d * d + 4 * d * d) + 2 * d  # qkv, proj, fc, proj, 2 norms
    n = n_layer * per_block + d + d * V  # + final norm + lm_head; the token embedding is excluded
    assert matmul_parameters(model) == n
    assert attention_shape(model) == (n_layer, d)
    attention = 2 * 2 * n_layer * L * d  # QK^T and AV, 2·L·d FLOPs each per token and layer
    assert flops_per_token(model, L, training=False) == 2 * n + attention
    assert flops_per_token(model, L) == 3 * (2 * n + attention) == 6 * n + 12 * n_layer * L * d


def test_flops_count_a_tied_output_projection_once_and_skip_learned_positions():
    untied = Transformer(50, preset="tiny", positional="learned", max_seq_len=32)
    tied = Transformer(50, preset="tiny", positional="learned", max_seq_len=32, tie_embeddings=True)
    assert matmul_parameters(tied) == matmul_parameters(untied)  # lm_head counted once, embeddings never
    wrapper = nn.Module()
    wrapper.backbone = untied  # a LightningModule-style wrapper is unwrapped
    assert matmul_parameters(wrapper) == matmul_parameters(untied)


def test_small_helpers():
    assert compute_dtype("bf16-mixed") == compute_dtype("bf16-true") == torch.bfloat16
    assert compute_dtype("32-true") == torch.float32 and compute_dtype("16-mixed") == torch.float16
    assert batch_shape({"input_ids": torch.zeros(3, 7, dtype=torch.long)}) == (3, 7)
    assert batch_shape({"prompt_input_ids": torch.zeros(3, 7)}) is None
    assert measure_peak_flops(torch.float32, size=64, repeats=1, cache=False) > 0


# ------------------------------------------------------------------ the callback
def _tiny_module(vocab: int = 16):
    from mdlm.module import MaskedDiffusionLM

    return MaskedDiffusionLM(
        backbone=lambda v: Transformer(v, preset="tiny", n_layer=1, n_head=2, d_model=32),
        vocab_size=vocab,
        mask_token_id=vocab - 1,
        lr_schedule="constant",
    )


def test_callback_logs_positive_tokens_per_s_and_mfu_in_a_3_step_fit(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from mdlm.samplers import Uniform

    data = [{"input_ids": torch.randint(0, 15, (12,))} for _ in range(32)]
    monitor = TokenThroughputMonitor(peak_flops=1e12)
    trainer = tiny_trainer(
        tmp_path, max_steps=3, log_every_n_steps=1, logger=CSVLogger(tmp_path, name="run"),
        callbacks=[Uniform(log_every_n_steps=0), monitor],
    )
    trainer.fit(_tiny_module(), DataLoader(data, batch_size=4))
    assert monitor.history, "no throughput was logged"
    last = monitor.history[-1]
    assert last["throughput/device/tokens_per_sec"] > 0
    assert last["throughput/device/samples_per_sec"] * 12 == pytest.approx(last["throughput/device/tokens_per_sec"])
    assert 0 < last["throughput/device/mfu"] < 1
    rows = list(csv.DictReader(open(next(tmp_path.glob("run/version_*/metrics.csv")))))
    assert any(float(r.get("throughput/device/tokens_per_sec") or 0) > 0 for r in rows)


def test_cli_adds_the_monitor_by_default_and_null_removes_it():
    from mdlm.cli import build_cli

    config = str(REPO_ROOT / "configs" / "parity_md.yaml")
    small = ["--data.init_args.num_train=16", "--data.init_args.num_val=8", "--trainer.logger=false"]
    cli = build_cli(["--config", config, *small, "--throughput.init_args.log_every_n_steps=7"], run=False)
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, TokenThroughputMonitor)]
    assert len(monitors) == 1 and monitors[0].log_every_n_steps == 7
    cli = build_cli(["--config", config, *small, "--throughput=null"], run=False)
    assert not any(isinstance(cb, TokenThroughputMonitor) for cb in cli.trainer.callbacks)


# ------------------------------------------------------------------ the benchmarks' references
def test_reference_llada_loop_equals_mdlm_generate_on_a_tiny_random_model():
    gen = _bench("generation_throughput")
    vocab, mask = 40, 38
    model = gen.make_model("tiny", vocab=vocab, seed=3)
    model.blocks = model.blocks[:1]
    prompts = gen.make_prompts(3, 5, vocab=vocab, seed=4)
    kw = dict(steps=6, gen_length=12, block_length=4, mask_id=mask)
    ours = gen.mdlm_generate(model, prompts, **kw)
    ref = gen.llada_reference_generate(model, prompts, **kw)
    assert torch.equal(ours, ref)
    assert not (ours == mask).any()


def test_raw_loop_loss_matches_mdlm_objective():
    from mdlm.objective import md_loss, token_nll

    tt = _bench("train_throughput")
    torch.manual_seed(0)
    model = Transformer(9, preset="tiny", n_layer=1, n_head=2, d_model=16)
    ids = torch.randint(0, 8, (3, 6))
    torch.manual_seed(1)
    raw = tt.md_loss_raw(model, ids, 8, eps=1e-3)
    torch.manual_seed(1)  # the same draws, through mdlm's objective
    t = torch.rand(3).clamp_(min=1e-3)
    masked = torch.rand(3, 6) < t[:, None]
    noisy = torch.where(masked, torch.full_like(ids, 8), ids)
    expected = md_loss(token_nll(model(noisy), ids, [8]), masked, t, None, "elbo", "maskable_tokens")
    torch.testing.assert_close(raw, expected)


# ------------------------------------------------------------------ the scripts run (seconds)
@pytest.mark.parametrize("name", [pytest.param("train_throughput", marks=pytest.mark.slow), "generation_throughput",
                                  "data_throughput"])
def test_benchmark_scripts_smoke(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # restored afterwards (the scripts change to the repository root)
    monkeypatch.setenv("MDLM_CACHE_DIR", str(Path.home() / ".cache" / "mdlm"))
    out = tmp_path / f"{name}.json"
    data = _bench(name).main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] and out.with_suffix(".md").read_text().startswith("###")
    assert "loadavg" in saved["machine"]
    first = data["results"][0]
    if name == "train_throughput":
        assert first["trainer_tokens_per_s"] > 0 and first["raw_tokens_per_s"] > 0 and first["mfu_trainer"] > 0
    elif name == "generation_throughput":
        assert first["outputs_equal"] and first["mdlm_tokens_per_s"] > 0
    else:
        assert first["tokens_per_s"] > 0
