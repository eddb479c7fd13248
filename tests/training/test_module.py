"""The LightningModule: evaluation invariances, objectives, sampler wiring, optimiser, resume."""

import copy
import math

import pytest
import torch
import torch.nn as nn
from conftest import tiny_trainer

from mdlm.data.parity import ParityDataModule
from mdlm.models.transformer import Transformer
from mdlm.module import MaskedDiffusionLM, evaluation_t
from mdlm.objective import mask_tokens, md_loss, token_nll
from mdlm.optim import lr_factor, parameter_groups
from mdlm.samplers import Fixed, MaskRatioSampler, Uniform, Window


def _tiny_backbone(vocab_size):
    return Transformer(vocab_size, n_layer=1, n_head=2, d_model=32, positional="learned")


def _model(**kwargs):
    torch.manual_seed(0)
    return MaskedDiffusionLM(backbone=_tiny_backbone, vocab_size=3, mask_token_id=2, **kwargs)


class ConstantLogits(nn.Module):
    """A backbone that predicts the same logits everywhere (and records its inputs)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.inputs = []

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        return self.bias.expand(*input_ids.shape, -1) + 0.0 * input_ids.unsqueeze(-1)


def _validate(tmp_path, model, dm):
    trainer = tiny_trainer(tmp_path)
    return trainer.validate(model, datamodule=dm, verbose=False)[0]


def test_validation_nelbo_does_not_depend_on_batch_size(tmp_path):
    results = []
    for bs in (1, 7):
        dm = ParityDataModule(n=8, k=3, num_train=64, num_val=50, eval_batch_size=bs)
        results.append(_validate(tmp_path, _model(), dm))
    a, b = results
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key


def test_validation_leaves_global_rng_untouched(tmp_path):
    model = _model()
    dm = ParityDataModule(n=8, k=3, num_train=64, num_val=50)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    _validate(tmp_path, model, dm)
    assert torch.equal(state, torch.get_rng_state())


def test_nelbo_of_a_uniform_predictor_is_log2_and_bins_sum_to_it(tmp_path):
    """A model with equal logits for 0 and 1 has CE = log 2 on every masked token, so
    E[(1/t) Σ_i m_i ℓ_i] / L = log 2 (the 1/t weight undoes the masking rate)."""
    model = MaskedDiffusionLM(backbone=ConstantLogits, vocab_size=3, mask_token_id=2)
    dm = ParityDataModule(n=20, k=3, num_train=64, num_val=4000, eval_batch_size=500)
    out = _validate(tmp_path, model, dm)
    assert out["val/nelbo"] == pytest.approx(math.log(2), rel=0.03)
    assert out["val/ppl"] == pytest.approx(math.exp(out["val/nelbo"]), rel=1e-5)
    bins = [out[f"val/nelbo_bin/{j / 10:.1f}-{(j + 1) / 10:.1f}"] for j in range(10)]
    assert 0.1 * sum(bins) == pytest.approx(out["val/nelbo"], rel=1e-5)
    for value in bins[1:]:  # each bin is ~log 2 too (bin 0 has the noisiest 1/t)
        assert value == pytest.approx(math.log(2), rel=0.12)
    assert out["val/label_acc"] in (0.0, 1.0) or 0.3 < out["val/label_acc"] < 0.7


def test_evaluation_t_is_stratified_and_keyed_by_index():
    t = evaluation_t(torch.arange(1000), seed=0, eps=1e-3)
    counts = torch.histc(t, bins=10, min=0, max=1)
    assert counts.min() >= 95 and counts.max() <= 105  # a random U would give +-30
    part = evaluation_t(torch.arange(500, 510), seed=0, eps=1e-3)
    assert torch.equal(part, t[500:510])


def test_output_supervision_masks_only_the_label(tmp_path):
    model = MaskedDiffusionLM(backbone=ConstantLogits, vocab_size=3, mask_token_id=2, objective="output_supervision")
    dm = ParityDataModule(n=6, k=2, num_train=32, num_val=16, batch_size=8)
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    train_inputs = model.backbone.inputs[:3]
    for x in train_inputs:
        assert (x[:, -1] == 2).all() and (x[:, :-1] != 2).all()


def test_training_masks_follow_the_sampler(tmp_path):
    model = MaskedDiffusionLM(backbone=ConstantLogits, vocab_size=3, mask_token_id=2)
    dm = ParityDataModule(n=30, k=2, num_train=256, num_val=16, batch_size=64)
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[Fixed(0.3)])
    trainer.fit(model, datamodule=dm)
    frac = torch.cat([(x == 2).float().mean(1) for x in model.backbone.inputs[:4]])
    assert frac.mean().item() == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("loss_weight, normalization", [("elbo", "maskable_tokens"), ("none", "masked_tokens")])
def test_the_md_loss_is_the_documented_formula_of_the_samplers_draw(tmp_path, loss_weight, normalization):
    """A fit step back-propagates md_loss(token_nll(backbone(x_t)), ...) with x_t from the sampler's
    draw_batch (a user sampler that overrides only ``sample``), recomputed here from the initial weights."""
    from lightning.pytorch import Callback

    class Squared(MaskRatioSampler):
        def sample(self, u, progress):
            return u**2

    class Keep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batch, self.loss = batch, outputs["loss"].detach()

    model, keep = _model(loss_weight=loss_weight, normalization=normalization), Keep()
    backbone = copy.deepcopy(model.backbone)
    dm = ParityDataModule(n=10, k=2, num_train=64, num_val=16, batch_size=16)
    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Squared(seed=7), keep]).fit(model, datamodule=dm)
    ids = keep.batch["input_ids"]
    draw = Squared(seed=7).draw_batch(ids.shape, 0.0, step=0, first_index=0, global_batch_size=ids.shape[0])
    noisy, masked = mask_tokens(ids, draw.t, 2, draw.uniforms)
    want = md_loss(token_nll(backbone(noisy), ids, [2]), masked, draw.t, None, loss_weight, normalization)
    torch.testing.assert_close(keep.loss, want, rtol=1e-6, atol=0)


def test_fit_needs_exactly_one_sampler(tmp_path):
    dm = ParityDataModule(n=6, k=2, num_train=32, num_val=16, batch_size=8)
    with pytest.raises(RuntimeError, match="exactly one mask-ratio sampler callback, found none"):
        tiny_trainer(tmp_path, max_steps=1).fit(_model(), datamodule=dm)
    with pytest.raises(RuntimeError, match="found 2"):
        tiny_trainer(tmp_path, max_steps=1, callbacks=[Uniform(), Window(0.4, 0.6)]).fit(_model(), datamodule=dm)
    # validate needs none
    _validate(tmp_path, _model(), dm)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match=r"mask_token_id=5 is outside the vocabulary \[0, 3\)"):
        MaskedDiffusionLM(backbone=_tiny_backbone, vocab_size=3, mask_token_id=5)
    with pytest.raises(ValueError, match="objective='ar'"):
        MaskedDiffusionLM(backbone=_tiny_backbone, objective="ar")
    with pytest.raises(ValueError, match="normalization='mean'"):
        MaskedDiffusionLM(backbone=_tiny_backbone, normalization="mean")
    with pytest.warns(UserWarning, match="not an unbiased"):
        MaskedDiffusionLM(backbone=_tiny_backbone, loss_weight="elbo", normalization="masked_tokens")


def test_weight_decay_groups_exclude_norms_biases_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3, bias=False))
    decay, no_decay = parameter_groups(model, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    assert decay_ids == {id(model[1].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].weight), id(model[1].bias), id(model[2].weight), id(model[2].bias)
    }
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    (everything,) = parameter_groups(model, 0.1, exclude_norms_biases_embeddings=False)
    assert len(everything["params"]) == 6


def test_lr_schedule_values():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, schedule="constant") == 1.0


def _losses_callback():
    from lightning.pytorch import Callback

    class Record(Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].item())

    return Record()


class _StopAt(__import__("lightning").pytorch.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_restores_weights_optimizer_schedule_and_sampler(tmp_path):
    """The first step after resuming equals the uninterrupted run's step bitwise: weights, AdamW
    state, learning-rate schedule, sampler seed/draw count, t and masks are all restored.
    (Exact mid-epoch data-loader resume is a separate feature.)"""

    def run(ckpt=None, save=None, stop=None):
        torch.manual_seed(0)
        model = _model(lr=3e-3, warmup_steps=2)
        dm = ParityDataModule(n=8, k=3, num_train=64, num_val=16, batch_size=16)
        rec = _losses_callback()
        sampler = Window(0.1, 0.9, seed=4 if ckpt is None else 77)  # the checkpoint's seed must win
        callbacks = [sampler, rec] + ([_StopAt(stop)] if stop else [])
        trainer = tiny_trainer(tmp_path, max_steps=10, limit_val_batches=0, callbacks=callbacks)
        # the hparams hold this test's backbone function: not loadable with weights_only=True
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=False)
        if save:
            trainer.save_checkpoint(save)
        return rec.losses, sampler

    full, _ = run()
    first, _ = run(stop=4, save=tmp_path / "half.ckpt")
    rest, sampler = run(ckpt=str(tmp_path / "half.ckpt"))
    assert first == full[:4]
    assert rest[0] == full[4]
    assert sampler.seed == 4 and sampler.num_draws == 4 + len(rest)
