"""The data contract (mdlm.data.contract) and the tokenizer that travels with the checkpoint.

Fit checkpoints of text data (the staged GPT-2 tokenizer + [MASK]/[PAD]) and of SFT data (GPT-2
+ [MASK]; Mistral with a chat template and an explicit mask id) restore a tokenizer that encodes and
decodes identically and has the same mask id; the lm-eval adapter and ``mdlm export`` take it from
the checkpoint alone; checkpoints without one (older mdlm) still work with an explicit tokenizer;
a 1-process FSDP2 sharded checkpoint directory gets ``tokenizer/`` beside its shards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import GPT2, MISTRAL, make_lines, needs_gpt2, needs_mistral, tiny_trainer
from lightning.pytorch import LightningDataModule

from mdlm.data.contract import DataContractError, MDLMDataModule, check_data_contract
from mdlm.data.tokenizer import (
    CHECKPOINT_KEY,
    TokenizerError,
    load_tokenizer,
    tokenizer_fingerprint,
    tokenizer_from_checkpoint,
    tokenizer_from_state,
    tokenizer_to_state,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, ünïcödé, emoji 🙂 and [MASK] written out",
    "Question: What is 2+3?\nAnswer: 5<|endoftext|>",
]
GSM = [
    {"question": "What is 2+3?", "answer": "2+3=5\n#### 5"},
    {"question": "Tom has 7 apples and eats 2. How many are left?", "answer": "7-2=5\n#### 5"},
    {"question": "A box holds 12 eggs. How many eggs are in 3 boxes?", "answer": "3*12=36\n#### 36"},
    {"question": "Sum 1 and 1.", "answer": "1+1=2\n#### 2"},
]


def _same_tokenizer(restored, original) -> None:
    """Encodes and decodes like ``original``, with the same ids for every special token."""
    assert type(restored).__name__ == type(original).__name__
    assert len(restored) == len(original)
    assert restored.mask_token_id == original.mask_token_id is not None
    assert (restored.pad_token_id, restored.eos_token_id, restored.bos_token_id) == (
        original.pad_token_id, original.eos_token_id, original.bos_token_id)
    for text in TEXTS:
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert restored(text, add_special_tokens=False)["input_ids"] == ids
        assert restored.decode(ids) == original.decode(ids)
    assert restored.convert_ids_to_tokens(original.mask_token_id) == original.mask_token
    assert getattr(restored, "chat_template", None) == getattr(original, "chat_template", None)
    assert tokenizer_fingerprint(restored) == tokenizer_fingerprint(original)


def _model(dm, **kw):
    from mdlm.models.transformer import Transformer
    from mdlm.module import MaskedDiffusionLM

    torch.manual_seed(0)
    return MaskedDiffusionLM(backbone=partial(Transformer, preset="tiny", max_seq_len=64),
                             vocab_size=dm.vocab_size, mask_token_id=dm.mask_token_id, lr=1e-3, warmup_steps=0, **kw)


def _fit(dm, tmp_path: Path, name: str) -> Path:
    """Two optimizer steps, then the checkpoint Lightning writes (on_save_checkpoint hooks included)."""
    from mdlm.samplers import Uniform

    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Uniform(seed=0)])
    trainer.fit(_model(dm), datamodule=dm)
    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


def _gsm_dm(tmp_path: Path, tokenizer: Path, **kw):
    from mdlm.data.sft import GSM8KDataModule

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in GSM))
    kw.setdefault("add_mask_token", "mask_token_id" not in kw)
    return GSM8KDataModule(str(tokenizer), train_path=str(train), test_path=str(train), max_length=48, batch_size=2, **kw)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory):
    """A text-data fit checkpoint (GPT-2 + [MASK] + [PAD]) and its data module."""
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer not staged at {GPT2}")
    from mdlm.data.text import TextDataModule

    root = tmp_path_factory.mktemp("text_ckpt")
    (root / "train.txt").write_text("\n".join(make_lines(200, 1, "train")) + "\n")
    dm = TextDataModule(train_files=str(root / "train.txt"), tokenizer=str(GPT2), documents="line",
                        block_length=32, batch_size=4, cache_dir=str(root / "cache"))
    return _fit(dm, root, "text"), dm


@pytest.fixture(scope="module")
def sft_ckpt(tmp_path_factory):
    """An SFT (GSM8K format) fit checkpoint (GPT-2 + [MASK], padding with EOS) and its data module."""
    if not (GPT2 / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer not staged at {GPT2}")
    root = tmp_path_factory.mktemp("sft_ckpt")
    dm = _gsm_dm(root, GPT2)
    return _fit(dm, root, "sft"), dm


# ---------------------------------------------------------------------------- the data contract
def test_every_data_module_follows_the_contract():
    from mdlm.data.arithmetic import ArithmeticDataModule
    from mdlm.data.parity import ParityDataModule
    from mdlm.data.sft import GSM8KDataModule, MATHDataModule, SFTDataModule
    from mdlm.data.text import TextDataModule
    from mdlm.data.wikitext import WikiTextDataModule

    for cls in (ParityDataModule, TextDataModule, WikiTextDataModule, SFTDataModule, GSM8KDataModule,
                MATHDataModule, ArithmeticDataModule):
        assert issubclass(cls, MDLMDataModule), cls
    dm = ParityDataModule(n=6, k=2, num_train=8, num_val=8)
    check_data_contract(dm)
    assert (dm.vocab_size, dm.mask_token_id, dm.tokenizer, dm.eos_token_id, dm.pad_token_id) == (3, 2, None, None, None)
    assert dm.val_dataloader_names == ["val", "train"] and dm.test_dataloader_names == ["test"]
    assert dm.answer_groups == [] and dm.tokenizer_state() is None

    class Incomplete(MDLMDataModule):
        def __init__(self):
            super().__init__()
            self.vocab_size = 5

    with pytest.raises(DataContractError, match="Incomplete sets no `mask_token_id`"):
        check_data_contract(Incomplete())
    check_data_contract(LightningDataModule())  # a plain data module is the user's business
    check_data_contract(None)


def test_a_plain_lightning_data_module_still_trains_and_validates(tmp_path):
    """No contract: the model keeps its own vocab/mask id, loaders are named val/test, nothing decodes."""
    from torch.utils.data import DataLoader

    from mdlm.samplers import Uniform

    class Plain(LightningDataModule):
        def _loader(self):
            ids = torch.randint(0, 2, (8, 6), generator=torch.Generator().manual_seed(0))
            return DataLoader([{"input_ids": row, "index": torch.tensor(i)} for i, row in enumerate(ids)], batch_size=4)

        def train_dataloader(self):
            return self._loader()

        def val_dataloader(self):
            return self._loader()

    class FakeDM:  # what _model reads
        vocab_size, mask_token_id = 3, 2

    model = _model(FakeDM)
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[Uniform(seed=0)])  # 2 batches: one epoch, validated
    trainer.fit(model, datamodule=Plain())
    assert model._eval_names == {"validate": ["val"], "test": ["test"]}
    assert "val/nelbo" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    ckpt = torch.load(tmp_path / "plain.ckpt", weights_only=False)
    assert CHECKPOINT_KEY not in ckpt and tokenizer_from_checkpoint(ckpt) is None
    with pytest.raises(RuntimeError, match=r"need an mdlm.data.contract.MDLMDataModule with a `tokenizer`.*found Plain"):
        model._answer({})


# ---------------------------------------------------------------------------- the tokenizer in checkpoints
@pytest.mark.slow
@needs_gpt2
def test_tokenizer_state_round_trip_and_corruption(tmp_path):
    tok = load_tokenizer(GPT2)
    state = tokenizer_to_state(tok)
    assert state["mask_token_id"] == tok.mask_token_id and state["len"] == len(tok)
    assert "tokenizer_config.json" in state["files"] and all(isinstance(v, str) for v in state["files"].values())
    torch.save({CHECKPOINT_KEY: state}, tmp_path / "only_tokenizer.pt")
    loaded = torch.load(tmp_path / "only_tokenizer.pt", weights_only=True)  # plain strings and ints
    _same_tokenizer(tokenizer_from_state(loaded[CHECKPOINT_KEY]), tok)
    bad = {**state, "files": {**state["files"], "tokenizer_config.json": state["files"]["tokenizer_config.json"] + " "}}
    with pytest.raises(TokenizerError, match="do not match their sha256"):
        tokenizer_from_state(bad)
    with pytest.raises(TokenizerError, match="format 99"):
        tokenizer_from_state({**state, "format": 99})


@needs_gpt2
@pytest.mark.slow
def test_text_fit_checkpoint_restores_its_tokenizer(text_ckpt):
    path, dm = text_ckpt
    ckpt = torch.load(path, weights_only=False)
    assert ckpt[CHECKPOINT_KEY]["fingerprint"] == tokenizer_fingerprint(dm.tokenizer)
    restored = tokenizer_from_checkpoint(path)
    _same_tokenizer(restored, dm.tokenizer)
    assert restored.mask_token == "[MASK]" and restored.pad_token == "[PAD]"
    assert restored.name_or_path == dm.tokenizer.name_or_path
    _same_tokenizer(tokenizer_from_checkpoint(ckpt), dm.tokenizer)  # a loaded dict works too


@needs_gpt2
@pytest.mark.slow
def test_sft_fit_checkpoint_restores_its_tokenizer(sft_ckpt):
    path, dm = sft_ckpt
    restored = tokenizer_from_checkpoint(path)
    _same_tokenizer(restored, dm.tokenizer)
    assert restored.mask_token_id == dm.mask_token_id and restored.pad_token is None  # SFT pads with EOS


@needs_mistral
def test_sft_chat_template_and_explicit_mask_id_travel_with_the_checkpoint(tmp_path):
    """A pretrained-style tokenizer without [MASK] and an explicit mask id (LLaDA-style), plus a chat template."""
    import shutil

    folder = tmp_path / "mistral_chat"
    shutil.copytree(MISTRAL, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    dm = _gsm_dm(tmp_path, folder, mask_token_id=31999, add_mask_token=False)
    assert dm.template == "chat" and dm.vocab_size == len(dm.tokenizer)
    restored = tokenizer_from_state(dm.tokenizer_state())
    _same_tokenizer(restored, dm.tokenizer)
    assert restored.mask_token_id == 31999
    messages = [{"role": "user", "content": "What is 2+3?"}]
    assert restored.apply_chat_template(messages, tokenize=False) == dm.tokenizer.apply_chat_template(messages, tokenize=False)


@needs_gpt2
@pytest.mark.slow
def test_lm_eval_adapter_takes_the_tokenizer_from_the_checkpoint(sft_ckpt, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from mdlm.lm_eval_adapter import MDLMEvalHarness

    path, dm = sft_ckpt
    common = dict(mc_num=4, batch_size=4, gen_length=4, steps=4, check_greedy=False)
    alone = MDLMEvalHarness(checkpoint=str(path), **common)
    explicit = MDLMEvalHarness(checkpoint=str(path), tokenizer=dm.tokenizer, **common)
    _same_tokenizer(alone.tokenizer, dm.tokenizer)
    assert alone.mask_token_id == explicit.mask_token_id == dm.mask_token_id
    requests = [Instance("loglikelihood", {}, ("What is 2+3?", " 5"), 0)]
    assert alone.loglikelihood(requests, disable_tqdm=True) == explicit.loglikelihood(requests, disable_tqdm=True)

    # an older checkpoint (no tokenizer key) works with an explicit tokenizer and asks for one without it
    old = torch.load(path, weights_only=False)
    del old[CHECKPOINT_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    assert tokenizer_from_checkpoint(tmp_path / "old.ckpt") is None
    folder = tmp_path / "tok"
    dm.tokenizer.save_pretrained(str(folder))
    from_folder = MDLMEvalHarness(checkpoint=str(tmp_path / "old.ckpt"), tokenizer=str(folder), **common)
    assert from_folder.mask_token_id == dm.mask_token_id
    assert from_folder.loglikelihood(requests, disable_tqdm=True) == explicit.loglikelihood(requests, disable_tqdm=True)
    with pytest.raises(ValueError, match=r"tokenizer=<tokenizer folder> is required \(the checkpoint holds no tokenizer\)"):
        MDLMEvalHarness(checkpoint=str(tmp_path / "old.ckpt"), **common)


@needs_gpt2
@pytest.mark.slow
def test_export_prefers_the_checkpoint_tokenizer(text_ckpt, tmp_path, modules_cache):
    """The data module's hyper-parameters name a tokenizer folder that no longer exists: the saved tokenizer is
    exported; without it (an older checkpoint) export rebuilds the data module, as before."""
    from transformers import AutoTokenizer

    from mdlm.export import ExportError, export_checkpoint

    def exported(folder: Path):
        # the folder ships modeling code (loaded into modules_cache, not ~/.cache)
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)

    path, dm = text_ckpt
    ckpt = torch.load(path, weights_only=False)
    hparams = {"_class_path": "mdlm.data.text.TextDataModule", **ckpt["datamodule_hyper_parameters"]}  # as the CLI saves
    ckpt["datamodule_hyper_parameters"] = {**hparams, "tokenizer": str(tmp_path / "moved_away")}
    torch.save(ckpt, tmp_path / "moved.ckpt")
    assert export_checkpoint(tmp_path / "moved.ckpt", tmp_path / "out")["tokenizer"]
    _same_tokenizer(exported(tmp_path / "out"), dm.tokenizer)

    del ckpt[CHECKPOINT_KEY]
    torch.save(ckpt, tmp_path / "old_moved.ckpt")
    with pytest.raises(ExportError, match="could not rebuild the run's data module"):
        export_checkpoint(tmp_path / "old_moved.ckpt", tmp_path / "out_old")
    ckpt["datamodule_hyper_parameters"] = hparams
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert export_checkpoint(tmp_path / "old.ckpt", tmp_path / "out_old")["tokenizer"]
    _same_tokenizer(exported(tmp_path / "out_old"), dm.tokenizer)


# ---------------------------------------------------------------------------- sharded checkpoints
FSDP2_RUN = r'''
"""1-process FSDP2 fit on arithmetic SFT data (character tokenizer); a sharded (DCP) checkpoint at step 2."""
import sys, warnings
from functools import partial
from pathlib import Path
warnings.filterwarnings("ignore")
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from mdlm.data.arithmetic import ArithmeticDataModule
from mdlm.models.transformer import Transformer
from mdlm.module import MaskedDiffusionLM
from mdlm.parallel import FSDP2Strategy
from mdlm.samplers import Uniform

out = Path(sys.argv[1])
torch.set_num_threads(1)
dm = ArithmeticDataModule(levels=[1], num_train=16, num_val=0, num_test=4, batch_size=4, cache_dir=str(out / "cache"))
model = MaskedDiffusionLM(backbone=partial(Transformer, preset="tiny", max_seq_len=dm.max_length), vocab_size=dm.vocab_size,
                          mask_token_id=dm.mask_token_id, lr=1e-3, warmup_steps=0)
trainer = Trainer(
    accelerator="cpu", devices=1, strategy=FSDP2Strategy(), max_steps=2, limit_val_batches=0, num_sanity_val_steps=0,
    logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
    callbacks=[Uniform(seed=1), ModelCheckpoint(dirpath=out, filename="sharded", every_n_train_steps=2, save_top_k=-1)],
)
trainer.fit(model, datamodule=dm)
dm.tokenizer.save_pretrained(str(out / "original_tokenizer"))
'''


@pytest.mark.slow
def test_sharded_checkpoint_directory_holds_the_tokenizer(tmp_path, modules_cache):
    from transformers import AutoTokenizer

    from mdlm.export import export_checkpoint

    script = tmp_path / "fsdp2_run.py"
    script.write_text(FSDP2_RUN)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt_dir = tmp_path / "run" / "sharded.ckpt"
    assert (ckpt_dir / ".metadata").is_file() and (ckpt_dir / "meta.pt").is_file()
    assert (ckpt_dir / "tokenizer" / "tokenizer_config.json").is_file()  # beside the shards, written by rank 0
    original = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "original_tokenizer"))
    _same_tokenizer(tokenizer_from_checkpoint(ckpt_dir), original)
    _same_tokenizer(AutoTokenizer.from_pretrained(str(ckpt_dir / "tokenizer")), original)
    meta = torch.load(ckpt_dir / "meta.pt", weights_only=False)
    assert meta[CHECKPOINT_KEY]["sha256"]  # the metadata rank 0 saves holds it too
    summary = export_checkpoint(ckpt_dir, tmp_path / "out")
    assert summary["tokenizer"]
    _same_tokenizer(AutoTokenizer.from_pretrained(str(tmp_path / "out"), trust_remote_code=True), original)
