"""mdlm.init_weights.InitWeights: a run starts from another run's backbone weights (fine-tuning), with a
fresh optimizer and step; resuming such a run restores its own weights; misfits fail naming the tensor."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_trainer
from lightning.pytorch import Callback

from mdlm.data.parity import ParityDataModule
from mdlm.init_weights import InitWeights, InitWeightsError
from mdlm.models.transformer import Transformer
from mdlm.module import MaskedDiffusionLM
from mdlm.samplers import Window


def _model(seed: int, d_model: int = 32) -> MaskedDiffusionLM:
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, lr=3e-3)
    torch.manual_seed(seed)
    model.backbone = Transformer(3, n_layer=1, n_head=2, d_model=d_model, positional="learned")
    return model


class FirstStepWeights(Callback):
    """The backbone's weights when training starts (after setup and any restore) and the start step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}
        self.step = trainer.global_step


def _fit(tmp_path, name, model, max_steps, callbacks=(), ckpt=None):
    rec = FirstStepWeights()
    dm = ParityDataModule(n=8, k=3, num_train=64, num_val=16, batch_size=16)
    trainer = tiny_trainer(tmp_path / name, max_steps=max_steps, limit_val_batches=0,
                           callbacks=[Window(0.1, 0.9, seed=1), rec, *callbacks])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return rec, path


def _saved_backbone(path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_starts_from_the_base_weights_with_a_fresh_step_and_resume_wins(tmp_path):
    _, base = _fit(tmp_path, "base", _model(0), max_steps=3)
    base_weights = _saved_backbone(base)
    fresh = _model(1)
    assert not _equal(fresh.backbone.state_dict(), base_weights)  # a different init: the load must do the work
    init = InitWeights(str(base))
    rec, tuned = _fit(tmp_path, "tuned", fresh, max_steps=2, callbacks=[init])
    assert _equal(rec.weights, base_weights) and rec.step == 0  # base weights, step counted from 0
    assert init.loaded == {"path": str(base), "weights": "raw", "global_step": 3, "tensors": len(base_weights)}
    assert not _equal(_saved_backbone(tuned), base_weights)  # and it trained from there
    rec, _ = _fit(tmp_path, "resumed", _model(2), max_steps=3, callbacks=[InitWeights(str(base))], ckpt=str(tuned))
    assert _equal(rec.weights, _saved_backbone(tuned)) and rec.step == 2  # the run's own checkpoint wins


def test_ema_weights_are_chosen_when_present(tmp_path):
    model = _model(0)
    sd = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    ema = {k: v + 1.0 for k, v in sd.items()}  # the checkpoint's state_dict holds the EMA weights
    torch.save({"state_dict": ema, "current_model_state": sd, "global_step": 7}, tmp_path / "ema.ckpt")
    for weights, expect in (("auto", ema), ("ema", ema), ("raw", sd)):
        target = _model(5)
        InitWeights(str(tmp_path / "ema.ckpt"), weights).setup(None, target, "fit")
        assert _equal({f"backbone.{k}": v for k, v in target.backbone.state_dict().items()}, expect), weights


def test_misfits_fail_naming_the_tensor(tmp_path):
    _, base = _fit(tmp_path, "base", _model(0), max_steps=1)
    with pytest.raises(InitWeightsError, match=r"backbone\.\S+ has shape \(\d+, 32\).*\(\d+, 48\)"):
        InitWeights(str(base)).setup(None, _model(0, d_model=48), "fit")
    deeper = _model(0)
    deeper.backbone = Transformer(3, n_layer=2, n_head=2, d_model=32, positional="learned")
    with pytest.raises(InitWeightsError, match="tensors missing from it"):
        InitWeights(str(base)).setup(None, deeper, "fit")
    with pytest.raises(InitWeightsError, match="does not exist"):
        InitWeights(str(tmp_path / "nope.ckpt")).setup(None, _model(0), "fit")
    with pytest.raises(InitWeightsError, match="'auto', 'ema' or 'raw'"):
        InitWeights(str(base), weights="best")
    InitWeights(str(tmp_path / "nope.ckpt")).setup(None, _model(0), "validate")  # only fit loads


def test_cli_appends_it_to_a_configs_callbacks(capsys):
    import yaml
    from conftest import REPO_ROOT

    from mdlm.cli import build_cli

    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(REPO_ROOT / "configs/parity_md.yaml"),
                   "--trainer.callbacks+=mdlm.init_weights.InitWeights", "--trainer.callbacks.path=runs/base/last.ckpt",
                   "--print_config"])
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert callbacks[-1] == {"class_path": "mdlm.init_weights.InitWeights",
                             "init_args": {"path": "runs/base/last.ckpt", "weights": "auto"}}
    assert len(callbacks) == 3  # the config's MetricsHistory and EarlyStopping kept


def test_an_ema_set_up_first_averages_the_loaded_weights(tmp_path):
    """EMA listed before InitWeights builds its shadow from the old weights in its setup; the shadow must
    restart from the loaded ones (validations before the first EMA update use it)."""
    from mdlm.ema import EMA

    _, base = _fit(tmp_path, "base", _model(0), max_steps=1)
    model, ema, init = _model(1), EMA(decay=0.9, update_starting_at_step=100), InitWeights(str(base))
    trainer = tiny_trainer(tmp_path / "t", max_steps=1, callbacks=[ema, init])

    def shadow():
        sd = ema._average_model.module.state_dict()
        return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}

    ema.setup(trainer, model, "fit")  # Lightning calls the callbacks' setup in list order
    assert not _equal(shadow(), _saved_backbone(base))
    init.setup(trainer, model, "fit")
    assert _equal(shadow(), _saved_backbone(base))
