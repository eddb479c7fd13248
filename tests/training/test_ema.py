"""EMA of the weights (unsharded; the FSDP2 case is in tests/scripts/distributed_checks.py):
hand-computed average, fp32 shadows under bf16-true, validation swap, checkpoint format, resume, export."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_trainer
from lightning.pytorch import Callback

from mdlm.data.parity import ParityDataModule
from mdlm.ema import EMA
from mdlm.models.transformer import Transformer
from mdlm.module import MaskedDiffusionLM
from mdlm.samplers import Uniform

DECAY = 0.7


def _model() -> MaskedDiffusionLM:
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, lr=1e-2, lr_schedule="constant")
    torch.manual_seed(0)
    model.backbone = Transformer(3, n_layer=1, n_head=2, d_model=32, positional="learned")
    return model


def _data() -> ParityDataModule:
    return ParityDataModule(n=8, k=3, num_train=64, num_val=16, batch_size=16, eval_batch_size=16)


class Snapshots(Callback):
    """The weights after every optimizer step, and the weights seen by every validation batch."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.steps.append({n: p.detach().double().clone() for n, p in pl_module.named_parameters()})

    def on_validation_batch_start(self, trainer, pl_module, *args) -> None:
        if not trainer.sanity_checking:
            self.validated.append({n: p.detach().double().clone() for n, p in pl_module.named_parameters()})


def _hand_ema(steps: list[dict[str, torch.Tensor]], start: int = 0) -> dict[str, torch.Tensor]:
    """theta_bar = theta_s at the first update, then d * theta_bar + (1 - d) * theta_k."""
    ema = dict(steps[start])
    for snap in steps[start + 1:]:
        ema = {n: DECAY * ema[n] + (1 - DECAY) * snap[n] for n in ema}
    return ema


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n].double(), b[n].double(), rtol=0, atol=atol, msg=n)


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_ema_equals_hand_computed_average(tmp_path, precision):
    snaps, ema = Snapshots(), EMA(decay=DECAY, update_starting_at_step=1, export_path=str(tmp_path / "ema.pt"))
    trainer = tiny_trainer(tmp_path, max_steps=5, precision=precision, limit_val_batches=0,
                           callbacks=[Uniform(seed=1), ema, snaps])
    model = _model()
    trainer.fit(model, datamodule=_data())
    got = ema.ema_state_dict()
    assert {t.dtype for t in got.values()} == {torch.float32}  # fp32 shadows even for bf16 weights
    _close(got, _hand_ema(snaps.steps, start=1), atol=1e-6)  # steps 2..5 (0-based 1..4) are averaged
    # training ends with the EMA in the model (rounded to its dtype) and in the export file
    _close({n: p for n, p in model.named_parameters()}, got, atol=0 if precision == "32-true" else 1e-2)
    _close(torch.load(tmp_path / "ema.pt", weights_only=True), got, atol=0)


def test_validation_uses_the_ema_and_restores_the_training_weights(tmp_path):
    snaps, ema = Snapshots(), EMA(decay=DECAY)
    trainer = tiny_trainer(tmp_path, max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
                           limit_val_batches=1, num_sanity_val_steps=0, callbacks=[Uniform(seed=1), ema, snaps])
    trainer.fit(_model(), datamodule=_data())
    assert len(snaps.validated) == 2 * 2  # 2 validations x 2 loaders (val, train) x 1 batch
    _close(snaps.validated[0], _hand_ema(snaps.steps[:2]), atol=1e-6)
    _close(snaps.validated[2], _hand_ema(snaps.steps[:4]), atol=1e-6)
    # training after the first validation continued from the training weights, not the EMA
    assert not torch.equal(snaps.steps[1]["backbone.lm_head.weight"], snaps.validated[0]["backbone.lm_head.weight"])


def test_checkpoint_holds_ema_and_resume_continues_it(tmp_path):
    full_ema = EMA(decay=DECAY)
    tiny_trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[Uniform(seed=1), full_ema]).fit(
        _model(), datamodule=_data())

    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if trainer.global_step == 3:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                trainer.should_stop = True

    snaps, first = Snapshots(), EMA(decay=DECAY)
    tiny_trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[Uniform(seed=1), first, snaps, SaveAt()]).fit(
        _model(), datamodule=_data())
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    _close(ckpt["state_dict"], {k: v for k, v in _hand_ema(snaps.steps).items()}, atol=1e-6)  # state_dict = EMA
    _close(ckpt["current_model_state"], snaps.steps[-1], atol=0)  # the training weights beside it
    assert int(ckpt["averaging_state"]["n_averaged"]) == 3

    resumed = EMA(decay=DECAY)
    tiny_trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[Uniform(seed=1), resumed]).fit(
        _model(), datamodule=_data(), ckpt_path=str(tmp_path / "mid.ckpt"))
    _close(resumed.ema_state_dict(), full_ema.ema_state_dict(), atol=0)

    # a checkpoint loads into a plain model for evaluation/generation: it gets the EMA weights
    plain = _model()
    plain.load_state_dict(ckpt["state_dict"])
    _close(dict(plain.named_parameters()), ckpt["state_dict"], atol=0)


def test_bad_ema_arguments():
    with pytest.raises(ValueError, match=r"decay=1.5 must lie in \[0, 1\]"):
        EMA(decay=1.5)
    with pytest.raises(ValueError, match="update_every_n_steps=0 must be >= 1"):
        EMA(update_every_n_steps=0)
