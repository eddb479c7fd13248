"""Sharding and data parallelism: wrap/AC policy, FSDP2 with meta init, global-batch data split,
accumulation with all-reduced normalisers, and the 2-rank DDP/FSDP2 subprocess checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT as ROOT
from conftest import SCRIPTS, free_port, tiny_trainer

from mdlm.data.shuffle import GlobalBatchShuffleSampler
from mdlm.models.transformer import Transformer, TransformerBlock
from mdlm.parallel import FSDP2Plan, block_classes, checkpoint_check_fn, parallelize, wrap_policy
from mdlm.samplers import Uniform
from mdlm.samplers.base import global_batch_rows

SCRIPT = SCRIPTS / "distributed_checks.py"


def _script_module():
    from conftest import load_script

    return load_script("distributed_checks")


def test_wrap_and_checkpoint_policy_on_a_meta_model():
    """The FSDP wrap policy and the AC predicate select exactly the transformer blocks, on a model
    that allocates no memory."""
    with torch.device("meta"):
        model = Transformer(50, n_layer=3, n_head=2, d_model=16)
    assert all(p.is_meta for p in model.parameters())
    assert block_classes(model) == {TransformerBlock}
    wrapped = wrap_policy(model)._run_policy(model, ignored_modules=set(), root_kwargs={})
    assert set(wrapped) == set(model.blocks)  # every block is its own FSDP unit (the root one is FSDP's own)
    check = checkpoint_check_fn(model)
    assert [m for m in model.modules() if check(m)] == list(model.blocks)
    with pytest.raises(ValueError, match="found no transformer block in Linear"):
        block_classes(torch.nn.Linear(2, 2))


def test_wrap_policy_finds_hugging_face_decoder_layers():
    pytest.importorskip("transformers")
    from mdlm.models.hf import HFBackbone

    cfg = dict(model_type="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=32, vocab_size=40)
    backbone = HFBackbone(40, config=cfg)
    (cls,) = block_classes(backbone)
    assert cls.__name__ == "LlamaDecoderLayer"
    assert sum(checkpoint_check_fn(backbone)(m) for m in backbone.modules()) == 2



def test_fsdp2_meta_init_loads_full_weights_into_shards(one_rank_group, tmp_path):
    """A backbone built on the meta device is sharded block by block (with activation checkpointing),
    materialised, and receives full pretrained weights by broadcast from rank 0: its logits and
    gradients equal those of the unsharded reference."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    reference = Transformer(7, n_layer=2, n_head=2, d_model=16, positional="learned")
    torch.save(reference.state_dict(), tmp_path / "full.pt")
    with torch.device("meta"):
        model = Transformer(7, n_layer=2, n_head=2, d_model=16, positional="learned")
    plan = FSDP2Plan(checkpoint_blocks=True, init_weights=str(tmp_path / "full.pt"))
    assert parallelize(model, one_rank_group, plan) is True
    assert parallelize(model, one_rank_group, plan) is False  # idempotent
    assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in model.blocks)
    assert all(isinstance(p, DTensor) and not p.is_meta for p in model.parameters())
    assert all(checkpoint.state(b) is not None for b in model.blocks)  # activation checkpointing
    x = torch.randint(0, 7, (3, 5))
    out, ref = model(x), reference(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out.square().mean().backward()
    ref.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fsdp2_plan_rejects_unknown_dtypes():
    with pytest.raises(ValueError, match=r"param_dtype='bf16' is not one of \['bfloat16', 'float16', 'float32'\]"):
        FSDP2Plan(param_dtype="bf16")


def test_global_batch_sampler_splits_one_process_batches_across_ranks():
    """Rank r's micro-batch k is slice r of the one-process batch k (batch size W*B), also past the
    padded tail; start_at skips whole local batches."""
    n, B, W = 23, 3, 2
    one = GlobalBatchShuffleSampler(n, batch_size=B * W, seed=4, drop_last=False)
    ranks = [GlobalBatchShuffleSampler(n, batch_size=B, seed=4, num_replicas=W, rank=r, drop_last=False) for r in range(W)]
    for s in (one, *ranks):
        s.set_epoch(2)
    full = one.local_indices()
    local = [s.local_indices() for s in ranks]
    assert len(local[0]) == len(local[1]) == len(ranks[0])
    for k in range(n // (B * W)):
        assert local[0][k * B:(k + 1) * B] + local[1][k * B:(k + 1) * B] == full[k * B * W:(k + 1) * B * W]
    assert set(local[0]) | set(local[1]) == set(range(n))  # the padded tail covers every sample
    ranks[1].start_at(2)
    assert list(ranks[1]) == local[1][2 * B:]
    assert list(ranks[1]) == local[1]  # the offset applies to one iteration only
    with pytest.raises(ValueError, match="rank=2 must lie in"):
        GlobalBatchShuffleSampler(n, batch_size=B, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="leaves no batch"):
        GlobalBatchShuffleSampler(5, batch_size=3, num_replicas=2)
    assert global_batch_rows(4, micro_step=1, rank=1, world_size=2, accumulate=2) == (12, 16)
    with pytest.raises(ValueError, match="micro_step=2 must lie in"):
        global_batch_rows(4, micro_step=2, rank=0, world_size=2, accumulate=2)


def test_accumulation_equals_one_big_batch(tmp_path, monkeypatch):
    """2 accumulation steps of 8 sequences = 1 step of 16: same t and masks, and the random
    masked-token normaliser summed over the window, so the gradient of the optimizer step is the
    same (compared before AdamW, whose first step ~ sign(g) amplifies rounding of tiny gradients)."""
    dc = _script_module()

    def grads(batch_size, accumulate):
        model = dc.make_model()
        trainer = tiny_trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate, limit_val_batches=0,
                               callbacks=[Uniform(seed=5)])
        trainer.fit(model, datamodule=dc.make_data(batch_size))
        return {n: p.grad.clone() for n, p in model.named_parameters()}  # the last step's gradients stay

    big, small = grads(16, 1), grads(8, 2)
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-5, atol=1e-8, msg=name)
    # without the rescaling they differ: the two halves' normalisers are unequal
    from mdlm.module import MaskedDiffusionLM

    monkeypatch.setattr(MaskedDiffusionLM, "on_before_optimizer_step", lambda self, optimizer: None)
    plain = grads(8, 2)
    assert max(((plain[n] - big[n]).abs().max() / big[n].abs().max()).item() for n in big) > 1e-3


@pytest.mark.distributed
def test_two_rank_ddp_and_fsdp2(tmp_path):
    """2 CPU ranks over gloo (tests/scripts/distributed_checks.py) against one process on the same
    global batch: losses and clipped grad norms of DDP and FSDP2, t (disjoint across ranks, equal to
    one process), FSDP2 sharded checkpoint -> resume equality, EMA of the shards against a
    hand-computed average, consolidated checkpoint loading in one process, bf16-true, and the
    per-rank bytes of parameters + gradients + optimizer state (FSDP2 about half of DDP)."""
    dc = _script_module()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "NODE_RANK": "0"}
    env.pop("PYTEST_CURRENT_TEST", None)
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT,
                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # the one-process reference: micro-batch 8 = 2 ranks x 4, same accumulation, clipping and EMA
    from lightning.pytorch import Trainer

    from mdlm.ema import EMA

    rec, ema = dc.make_recorder(), EMA(decay=dc.EMA_DECAY)
    trainer = Trainer(**dc.trainer_kwargs(devices=1, callbacks=[Uniform(seed=5), rec, ema]))
    trainer.fit(dc.make_model(), datamodule=dc.make_data(2 * dc.MICRO_BATCH))
    assert len(rec.losses) == dc.STEPS * dc.ACCUMULATE

    for name in ("ddp", "fsdp2"):
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0["world_size"] == 2
        assert r0["losses"] == pytest.approx(rec.losses, abs=1e-6), name  # the logged global loss
        assert r0["losses"] == r1["losses"]
        # float32 all-reduce vs one-process sums: the order of additions differs and compounds over the steps
        # (1.2e-5 relative measured on an AMD EPYC); a wrong normalisation is off by a factor, not by 1e-4
        assert r0["grad_norms"] == pytest.approx(rec.grad_norms, rel=1e-4), name
        assert all(n > dc.CLIP for n in rec.grad_norms)  # clipping was active at every step
        for t0, t1, t in zip(r0["t"], r1["t"], rec.t):
            assert not set(t0) & set(t1)  # t never repeats across ranks ...
            assert t0 + t1 == t  # ... and the ranks together draw exactly the one-process t
    fsdp2, resumed = ranks[0]["fsdp2"], ranks[0]["fsdp2_resumed"]
    assert fsdp2["sharded_blocks"] and fsdp2["dtensor_params"]
    assert fsdp2["ema_updates"] == dc.STEPS and fsdp2["ema_max_abs_error"] < 1e-6
    resume_at = dc.SAVE_AT * dc.ACCUMULATE
    assert resumed["losses"] == pytest.approx(fsdp2["losses"][resume_at:], abs=1e-6)
    assert resumed["ema_vs_uninterrupted"] < 1e-6

    # memory: FSDP2 holds about half of DDP's parameters + gradients + AdamW state per rank
    ddp_bytes, fsdp2_bytes = ranks[0]["ddp"]["bytes"], [ranks[r]["fsdp2"]["bytes"] for r in (0, 1)]
    for key in ("parameters", "gradients", "optimizer", "total"):
        assert sum(b[key] for b in fsdp2_bytes) == pytest.approx(ddp_bytes[key], rel=0.01), key
        assert fsdp2_bytes[0][key] / ddp_bytes[key] == pytest.approx(0.5, abs=0.01), key

    # consolidated checkpoint: loads into a one-process model; its state_dict is the EMA
    ckpt = torch.load(tmp_path / "fsdp2_final.ckpt", weights_only=True)
    single = dc.make_model()
    single.load_state_dict(ckpt["state_dict"])
    reference_ema = ema.ema_state_dict()
    for name, p in single.named_parameters():
        torch.testing.assert_close(p, reference_ema[name], rtol=0, atol=1e-5, msg=name)
    assert ckpt["averaging_state"]["n_averaged"] == dc.STEPS

    bf16 = ranks[0]["fsdp2_bf16"]
    assert bf16["param_dtypes"] == ["torch.bfloat16"] and bf16["ema_dtypes"] == ["torch.float32"]
    assert len(bf16["losses"]) == 4 and all(0.0 < x < 5.0 for x in bf16["losses"])


def test_init_device_meta_builds_nothing_and_a_plain_strategy_refuses_it(tmp_path):
    from mdlm.module import MaskedDiffusionLM
    from mdlm.parallel import has_meta_tensors

    model = MaskedDiffusionLM(vocab_size=5, mask_token_id=4, init_device="meta")
    assert has_meta_tensors(model.backbone) and all(p.is_meta for p in model.backbone.parameters())
    assert not has_meta_tensors(MaskedDiffusionLM(vocab_size=5, mask_token_id=4).backbone)
    trainer = tiny_trainer(tmp_path, callbacks=[Uniform()], max_steps=1)
    model.trainer = trainer
    with pytest.raises(RuntimeError, match="meta device.*init_device='meta'.*FSDP2"):
        model.configure_model()


def test_init_device_meta_is_materialised_by_fsdp2(one_rank_group):
    """The module's own backbone built on meta is sharded and initialised by ``parallelize``: finite
    logits, and parameters distributed like a fresh initialisation (mean ≈ 0, std ≈ 0.02)."""
    from mdlm.module import MaskedDiffusionLM
    from mdlm.parallel import has_meta_tensors

    torch.manual_seed(0)
    model = MaskedDiffusionLM(vocab_size=7, mask_token_id=6, init_device="meta")
    assert parallelize(model.backbone, one_rank_group, FSDP2Plan()) is True
    assert not has_meta_tensors(model.backbone)
    logits = model(torch.randint(0, 6, (2, 5)))
    assert torch.isfinite(logits).all()
    weights = torch.cat([p.full_tensor().flatten() for n, p in model.backbone.named_parameters() if n.endswith("weight") and p.dim() == 2])
    assert abs(weights.mean().item()) < 0.01 and 0.005 < weights.std().item() < 0.05
