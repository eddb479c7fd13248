"""Evaluation metrics keep float64 states under every ``trainer.precision``.

``bf16-true``/``16-true`` cast the whole LightningModule with ``.to(dtype)``; torchmetrics would
cast the metric states with it (bf16 sums are inexact, and float64 updates then fail in
``index_add_``). :class:`mdlm.metrics.FixedDtypeMetric` keeps them float64 while device moves
still apply; these tests check the states, the values, and a short fit + validation per precision.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import tiny_trainer
from torch import nn
from torchmetrics import Metric

from mdlm.answers import AnswerAccuracy
from mdlm.data.parity import ParityDataModule
from mdlm.metrics import NELBO, TokenAccuracy
from mdlm.module import MaskedDiffusionLM, _metric_key
from mdlm.samplers import Uniform

CASTS = {
    "to(bfloat16)": lambda m: m.to(torch.bfloat16),
    "to(dtype=float16)": lambda m: m.to(dtype=torch.float16),
    "to(cpu, bfloat16)": lambda m: m.to(torch.device("cpu"), torch.bfloat16),
    "to(bf16 tensor)": lambda m: m.to(torch.zeros((), dtype=torch.bfloat16)),
    "half()": lambda m: m.half(),
    "bfloat16()": lambda m: m.bfloat16(),
    "float()": lambda m: m.float(),
    "double()": lambda m: m.double(),
    "type(float16)": lambda m: m.type(torch.float16),
}


def _metrics(module: nn.Module) -> list[Metric]:
    return [m for m in module.modules() if isinstance(m, Metric)]


def _states(metric: Metric) -> dict[str, torch.Tensor]:
    return {key: getattr(metric, key) for key in metric._defaults}


def _module_with_all_metrics() -> MaskedDiffusionLM:
    """The LightningModule after its setup hooks: NELBO + label accuracy per loader, answer accuracy."""
    model = MaskedDiffusionLM(backbone=lambda v: nn.Linear(4, v), vocab_size=3, mask_token_id=2)
    model.setup("validate")
    model.setup("test")
    return model


def _declared_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    return {
        f"{i}.{key}": value.dtype for i, metric in enumerate(_metrics(model)) for key, value in _states(metric).items()
    }


def test_the_module_holds_every_evaluation_metric():
    model = _module_with_all_metrics()
    kinds = {type(m) for m in _metrics(model)}
    assert kinds == {NELBO, TokenAccuracy, AnswerAccuracy}
    dtypes = _declared_dtypes(model)
    floating = {k: d for k, d in dtypes.items() if d.is_floating_point}
    assert floating and set(floating.values()) == {torch.float64}
    assert set(dtypes.values()) <= {torch.float64, torch.long}  # answer accuracy counts are exact integers


@pytest.mark.parametrize("cast", list(CASTS.values()), ids=list(CASTS))
def test_casting_the_module_keeps_metric_states_and_defaults(cast):
    model = _module_with_all_metrics()
    before = _declared_dtypes(model)
    cast(model)
    assert _declared_dtypes(model) == before
    for metric in _metrics(model):
        for key, default in metric._defaults.items():
            assert default.dtype == getattr(metric, key).dtype, key
        metric.reset()  # reset restores the defaults: still the declared dtypes
    assert _declared_dtypes(model) == before
    if cast is not CASTS["float()"]:  # the cast did reach the rest of the module
        assert model.backbone.weight.dtype != torch.float32


def _independent_nelbo(seq: torch.Tensor, count: torch.Tensor, t: torch.Tensor, num_bins: int) -> dict[str, float]:
    seq, count, t = seq.double().tolist(), count.double().tolist(), t.double().tolist()
    tokens = math.fsum(count)
    bins = [0.0] * num_bins
    for value, time in zip(seq, t):
        bins[min(int(time * num_bins), num_bins - 1)] += value
    nelbo = math.fsum(seq) / tokens
    return {"nelbo": nelbo, "ppl": math.exp(nelbo), "tokens": tokens,
            **{f"bin{j}": b / tokens * num_bins for j, b in enumerate(bins)}}


@pytest.mark.parametrize("cast", [CASTS["to(bfloat16)"], CASTS["half()"], CASTS["to(dtype=float16)"]],
                         ids=["to(bfloat16)", "half()", "to(dtype=float16)"])
def test_nelbo_after_a_low_precision_cast_equals_a_float64_computation(cast):
    """Values that bf16/fp16 cannot hold (counts past 2**11, sums with 1e-7 detail) stay exact."""
    num_bins = 10
    holder = nn.ModuleDict({"nelbo": NELBO(num_bins), "acc": TokenAccuracy(), "weights": nn.Linear(2, 2)})
    cast(holder)
    assert holder["weights"].weight.dtype in (torch.bfloat16, torch.float16)
    gen = torch.Generator().manual_seed(0)
    seqs, counts, ts, correct = [], [], [], 0
    for _ in range(5):
        seq = torch.rand(64, generator=gen, dtype=torch.float64) * 300 + 1e-7
        count = torch.randint(2000, 3000, (64,), generator=gen)
        t = torch.rand(64, generator=gen, dtype=torch.float64)
        holder["nelbo"].update(seq, count, t)
        seqs.append(seq)
        counts.append(count)
        ts.append(t)
        predictions = torch.randint(0, 2, (64, 8), generator=gen)
        holder["acc"].update(predictions, torch.zeros_like(predictions), torch.ones_like(predictions, dtype=torch.bool))
        correct += int((predictions == 0).sum())
    out = holder["nelbo"].compute()
    expected = _independent_nelbo(torch.cat(seqs), torch.cat(counts), torch.cat(ts), num_bins)
    assert all(v.dtype == torch.float64 for v in out.values())
    assert out["tokens"].item() == expected["tokens"]  # an exact integer count, beyond bf16's 256
    assert out["nelbo"].item() == pytest.approx(expected["nelbo"], rel=1e-12)
    assert out["ppl"].item() == pytest.approx(expected["ppl"], rel=1e-12)
    bins = [v.item() for k, v in out.items() if k.startswith("nelbo_bin/")]
    assert bins == pytest.approx([expected[f"bin{j}"] for j in range(num_bins)], rel=1e-12)
    accuracy = holder["acc"].compute()
    assert accuracy.dtype == torch.float64 and holder["acc"].total.item() == 5 * 64 * 8
    assert accuracy.item() == correct / (5 * 64 * 8)
    # a cast after compute() does not round the cached result either
    cast(holder)
    assert holder["nelbo"].compute()["nelbo"].item() == out["nelbo"].item()


def test_device_moves_and_set_dtype():
    metric = NELBO(4)
    metric.update(torch.tensor([1.5, 2.5], dtype=torch.float64), torch.tensor([3, 4]), torch.tensor([0.1, 0.9]))
    metric.set_dtype(torch.bfloat16)  # explicit requests are ignored too: the sums are float64 by design
    assert all(v.dtype == torch.float64 for v in _states(metric).values())
    assert metric.nelbo_sum.item() == 4.0
    metric.to("meta", torch.bfloat16)  # a device move (with a dtype) moves the states, keeps their dtype
    assert metric.device.type == "meta"
    assert all(v.is_meta and v.dtype == torch.float64 for v in _states(metric).values())
    assert all(v.is_meta for v in metric._defaults.values())
    if torch.cuda.is_available():
        cuda = NELBO(4).to("cuda", torch.bfloat16)
        assert all(v.is_cuda and v.dtype == torch.float64 for v in _states(cuda).values())
        cuda.update(torch.ones(2, device="cuda"), torch.ones(2, device="cuda"), torch.rand(2, device="cuda"))
        assert cuda.compute()["nelbo"].item() == 1.0


# --------------------------------------------------------------------------- fit + validate

#: every precision Lightning accepts on a CPU (16-mixed: it warns and falls back to bf16-mixed)
CPU_PRECISIONS = ["32-true", "64-true", "bf16-true", "bf16-mixed", "16-true", "16-mixed"]
PARAM_DTYPE = {"64-true": torch.float64, "bf16-true": torch.bfloat16, "16-true": torch.float16}


@pytest.mark.parametrize("precision", [pytest.param(p, marks=pytest.mark.slow) if p in ("64-true", "16-true") else p
                                       for p in CPU_PRECISIONS])  # 64-true and 16-true: ~1-2 s each on a CPU
def test_fit_and_validate_under_every_cpu_precision(precision, tmp_path):
    torch.manual_seed(0)
    # fp16 weights: AdamW's default eps=1e-8 underflows to 0 in fp16 (refused, see the next test)
    adam_eps = 1e-6 if precision == "16-true" else 1e-8
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, lr=1e-3, adam_eps=adam_eps)  # default tiny transformer
    dm = ParityDataModule(n=14, k=3, num_train=64, num_val=64, batch_size=16, eval_batch_size=32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*AMP with fp16 is not supported on CPU.*")
        trainer = tiny_trainer(
            tmp_path, precision=precision, max_steps=3, val_check_interval=3, check_val_every_n_epoch=None,
            num_sanity_val_steps=1, limit_val_batches=2, callbacks=[Uniform()],
        )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    assert next(model.backbone.parameters()).dtype == PARAM_DTYPE.get(precision, torch.float32)
    logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    assert {"val/nelbo", "val/ppl", "val/label_acc", "val/nelbo_bin/0.0-0.1"} <= logged.keys()
    assert all(torch.isfinite(v).all() for v in logged.values()), logged
    assert logged["val/nelbo"] > 0
    for metric in model.eval_metrics[_metric_key("val")].values():
        assert all(v.dtype == torch.float64 for v in _states(metric).values())
    validated = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert math.isfinite(validated["val/nelbo"]) and 0.0 <= validated["val/label_acc"] <= 1.0


def test_an_adam_eps_that_rounds_to_zero_in_the_weights_dtype_is_refused(tmp_path):
    """16-true with eps=1e-8: AdamW would divide 0 by 0 and write NaN into every weight at step 1."""
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, adam_eps=1e-8)
    dm = ParityDataModule(n=14, k=3, num_train=32, num_val=32, batch_size=16)
    trainer = tiny_trainer(tmp_path, precision="16-true", max_steps=1, limit_val_batches=0, callbacks=[Uniform()])
    with pytest.raises(ValueError, match=r"adam_eps=1e-08 rounds to 0 in torch.float16"):
        trainer.fit(model, datamodule=dm)
