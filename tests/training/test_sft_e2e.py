"""SFT end to end: tiny fit, then test/predict through generation, decoding and answer checking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import GPT2, needs_gpt2, tiny_trainer

from mdlm.data.sft import GSM8KDataModule
from mdlm.models.transformer import Transformer
from mdlm.module import MaskedDiffusionLM
from mdlm.results import JsonlPredictionWriter
from mdlm.samplers import Window

pytestmark = needs_gpt2

RECORDS = [
    {"question": "What is 3 + 4?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 2 * 4?", "answer": "2 * 4 = 8\n#### 8"},
    {"question": "What is 10 - 1?", "answer": "10 - 1 = 9\n#### 9"},
    {"question": "What is 6 / 2?", "answer": "6 / 2 = 3\n#### 3"},
]


def _files(tmp_path: Path) -> tuple[str, str]:
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl")


def _dm(tmp_path, **kw):
    train, test = _files(tmp_path)
    return GSM8KDataModule(
        str(GPT2), train_path=train, test_path=test, add_mask_token=True, max_length=64, batch_size=2,
        eval_batch_size=4, **kw,
    )


class SaysSeven(nn.Module):
    """Answers "#### 7" then EOS after any prompt: logits one-hot on a fixed continuation."""

    def __init__(self, vocab_size, answer_ids, eos_id, prompt_width):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.vocab_size = vocab_size
        self.answer_ids, self.eos_id, self.prompt_width = answer_ids, eos_id, prompt_width

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.zeros(B, L, self.vocab_size) + 0 * self.dummy
        for p in range(L):
            k = p - self.prompt_width
            target = self.answer_ids[k] if 0 <= k < len(self.answer_ids) else self.eos_id
            logits[:, p, target] = 10.0
        return logits


def test_generation_is_decoded_extracted_and_scored(tmp_path):
    dm = _dm(tmp_path)
    dm.setup("test")
    width = next(iter(dm.test_dataloader()))["prompt_input_ids"].shape[1]
    answer_ids = dm.tokenizer(" #### 7")["input_ids"]
    model = MaskedDiffusionLM(
        backbone=lambda v: SaysSeven(v, answer_ids, dm.eos_token_id, width),
        vocab_size=dm.vocab_size, mask_token_id=dm.mask_token_id,
        generation_preset="cpu_tiny", generation_overrides={"gen_length": 8, "steps": 8, "block_length": 8},
    )
    out = tiny_trainer(tmp_path).test(model, datamodule=dm, verbose=False)[0]
    assert out["test/answer_accuracy"] == pytest.approx(0.25)  # only "What is 3 + 4?" has answer 7

    writer = JsonlPredictionWriter(str(tmp_path / "pred.jsonl"))
    tiny_trainer(tmp_path, callbacks=[writer]).predict(model, datamodule=dm)
    lines = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in lines] == ["7", "8", "9", "3"]
    assert all(r["generation"].strip() == "#### 7" and r["extracted"] == "7" for r in lines)
    assert [r["correct"] for r in lines] == [True, False, False, False]
    assert lines[0]["prompt"].startswith("Question: What is 3 + 4?")


@pytest.mark.slow
def test_tiny_sft_fit_never_masks_the_prompt_and_then_predicts(tmp_path, capsys):
    dm = _dm(tmp_path)
    seen = []

    def backbone(v):
        net = Transformer(v, n_layer=1, n_head=2, d_model=32)
        original = net.forward

        def forward(input_ids, attention_mask=None):
            seen.append(input_ids.clone())
            return original(input_ids, attention_mask)

        net.forward = forward
        return net

    model = MaskedDiffusionLM(
        backbone=backbone, vocab_size=dm.vocab_size, mask_token_id=dm.mask_token_id,
        normalization="per_sequence", generation_overrides={"gen_length": 8, "steps": 8, "block_length": 8},
    )
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[Window(0.9, 1.0)])
    trainer.fit(model, datamodule=dm)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    for x in seen[:3]:
        for b in range(x.shape[0]):
            masked = (x[b] == dm.mask_token_id).nonzero().flatten()
            assert masked.numel() > 0
            assert masked.min() >= batch["prompt_length"].min()  # nothing inside any prompt
    writer = JsonlPredictionWriter(str(tmp_path / "p.jsonl"))
    tiny_trainer(tmp_path, callbacks=[writer]).predict(model, datamodule=dm)
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == len(RECORDS) and all("generation" in json.loads(x) for x in lines)

    # default: the run folder, with empty generations counted in the closing line
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path / "runs"), name="predict")
    tiny_trainer(tmp_path, logger=logger, callbacks=[JsonlPredictionWriter()]).predict(model, datamodule=dm)
    path = Path(logger.log_dir) / "predictions.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines()]
    empty = sum(1 for r in records if not r["generation"].strip())
    assert f"wrote {len(RECORDS)} predictions to {path}; {empty} of {len(RECORDS)} generations are empty" in capsys.readouterr().out
