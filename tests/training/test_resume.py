"""Exact resume from a mid-epoch checkpoint (one process): the losses after resuming equal the
uninterrupted run's bitwise — loader position, sampler, dropout RNG, AdamW and schedule restored."""

from __future__ import annotations

import torch
from conftest import tiny_trainer
from lightning.pytorch import Callback

from mdlm.data.parity import ParityDataModule
from mdlm.data.shuffle import ResumableDataLoader
from mdlm.models.transformer import Transformer
from mdlm.module import MaskedDiffusionLM
from mdlm.samplers import Window


def _model() -> MaskedDiffusionLM:
    model = MaskedDiffusionLM(vocab_size=3, mask_token_id=2, lr=3e-3, warmup_steps=3, lr_schedule="cosine")
    torch.manual_seed(0)
    # dropout draws from the global RNG: only exact if its state is checkpointed too
    model.backbone = Transformer(3, n_layer=1, n_head=2, d_model=32, positional="learned", dropout=0.2)
    return model


class Record(Callback):
    def __init__(self, save_at: int | None = None, path=None) -> None:
        self.losses: list[float] = []
        self.indices: list[list[int]] = []
        self.save_at, self.path = save_at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())
        self.indices.append(batch["index"].tolist())
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _run(tmp_path, save_at=None, ckpt=None):
    rec = Record(save_at, tmp_path / "mid.ckpt")
    dm = ParityDataModule(n=8, k=3, num_train=80, num_val=16, batch_size=16)  # 5 batches per epoch
    trainer = tiny_trainer(tmp_path, max_steps=12, limit_val_batches=0, callbacks=[Window(0.1, 0.9, seed=4), rec])
    trainer.fit(_model(), datamodule=dm, ckpt_path=ckpt)
    return rec, trainer


def test_mid_epoch_resume_is_bitwise_exact(tmp_path):
    full, _ = _run(tmp_path)
    first, _ = _run(tmp_path, save_at=7)  # step 7 = batch 2 of epoch 1: mid-epoch
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=True)  # plain types only
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    assert len(ckpt["mdlm_rng_states"]) == 1
    rest, trainer = _run(tmp_path, ckpt=str(tmp_path / "mid.ckpt"))
    assert isinstance(trainer.train_dataloader, ResumableDataLoader)
    assert first.losses == full.losses[:7]
    assert rest.indices == full.indices[7:]  # the loader continues with batch 3 of epoch 1, then epoch 2
    assert rest.losses == full.losses[7:]  # bitwise
    assert len(rest.losses) == 5


def test_resume_without_rng_state_differs_under_dropout(tmp_path):
    """The RNG state matters: dropping it from the checkpoint breaks equality (so the test above
    really checks that it is restored)."""
    full, _ = _run(tmp_path)
    _run(tmp_path, save_at=7)
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    del ckpt["mdlm_rng_states"]
    torch.manual_seed(123)
    torch.save(ckpt, tmp_path / "no_rng.ckpt")
    rest, _ = _run(tmp_path, ckpt=str(tmp_path / "no_rng.ckpt"))
    assert rest.indices == full.indices[7:]
    assert rest.losses != full.losses[7:]


def _history_run(tmp_path, max_steps, ckpt=None, every_n_train_steps=None, checkpointing=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mdlm.results import MetricsHistory

    history = MetricsHistory(path=str(tmp_path / "metrics.json"))
    callbacks = [Window(0.1, 0.9, seed=4), history]
    if every_n_train_steps:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=every_n_train_steps,
                                         save_top_k=-1, filename="{step}"))
    dm = ParityDataModule(n=8, k=3, num_train=80, num_val=16, batch_size=16)  # 5 batches per epoch
    trainer = tiny_trainer(tmp_path, max_steps=max_steps, val_check_interval=3, check_val_every_n_epoch=None,
                           enable_checkpointing=bool(every_n_train_steps) if checkpointing is None else checkpointing,
                           callbacks=callbacks)
    trainer.fit(_model(), datamodule=dm, ckpt_path=ckpt)
    return [(row["step"], row["val/nelbo"]) for row in history.history]


def test_resume_from_a_checkpoint_written_before_its_steps_validation_keeps_that_row(tmp_path):
    """ModelCheckpoint(every_n_train_steps=6) saves in on_train_batch_end, before step 6's validation, and
    Lightning skips that validation on resume: the resumed run must run it, so its history equals the
    uninterrupted run's (same rows, same values: the validation does not disturb the training RNG)."""
    full = _history_run(tmp_path / "full", max_steps=12, every_n_train_steps=6)
    assert [s for s, _ in full] == [3, 6, 9, 12]
    ckpt = torch.load(tmp_path / "full" / "ckpts" / "step=6.ckpt", weights_only=False)
    saved = next(v for k, v in ckpt["callbacks"].items() if k.startswith("MetricsHistory"))
    assert [row["step"] for row in saved["history"]] == [3]  # written before step 6's validation
    assert saved["validation_due_at_step"] == 6
    resumed = _history_run(tmp_path / "resumed", max_steps=12, ckpt=tmp_path / "full" / "ckpts" / "step=6.ckpt")
    assert resumed == full


def test_resume_from_a_checkpoint_written_after_validation_does_not_validate_again(tmp_path):
    """The default ModelCheckpoint saves after validation: the row is in the checkpoint, nothing is rerun."""
    first = _history_run(tmp_path / "first", max_steps=6, checkpointing=True)
    assert [s for s, _ in first] == [3, 6]
    (ckpt,) = (tmp_path / "first" / "checkpoints").glob("*.ckpt")
    saved = next(v for k, v in torch.load(ckpt, weights_only=False)["callbacks"].items() if k.startswith("MetricsHistory"))
    assert "validation_due_at_step" not in saved
    resumed = _history_run(tmp_path / "resumed", max_steps=9, ckpt=ckpt)
    assert [s for s, _ in resumed] == [3, 6, 9] and resumed[:2] == first
