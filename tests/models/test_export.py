"""``mdlm export``: checkpoints as Hugging Face folders that transformers loads (without mdlm, for mdlm's own
Transformer) with identical logits, and that mdlm's HFBackbone, ``generate``, the lm-eval adapter and
``mdlm validate`` accept; EMA or raw weights by choice; a sharded FSDP2 (DCP) checkpoint of a fine-tuned
LLaDA-like backbone back to that model's own format; the shipped ``examples/parity_md`` model."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT as REPO

from mdlm.export import ExportError, export_checkpoint, load_checkpoint_weights, load_exported

SHIPPED = REPO / "examples" / "parity_md"


def cli_like(cls, class_path: str, init: dict):
    """``cls`` built as the ``mdlm`` CLI builds it: saved hyper-parameters are ``_class_path`` + every init
    argument (defaults included) + ``_instantiator``, so checkpoints can rebuild the model and data module."""
    from lightning.pytorch.cli import instantiate_module
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    hp = {"_class_path": class_path, **defaults, **init}
    with _given_hyperparameters_context(hp, "lightning.pytorch.cli.instantiate_module"):
        return instantiate_module(cls, hp)


def _parity_data(**init):
    from mdlm.data.parity import ParityDataModule

    return cli_like(ParityDataModule, "mdlm.data.parity.ParityDataModule",
                    {"n": 8, "k": 3, "num_train": 64, "num_val": 32, "batch_size": 16, **init})


@pytest.fixture(scope="module")
def ema_ckpt(tmp_path_factory) -> Path:
    """A parity run of 3 steps with mdlm.ema.EMA (decay 0.5), checkpointed at step 3 (before training ends,
    so the checkpoint's training weights differ from its EMA weights)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mdlm.ema import EMA
    from mdlm.module import MaskedDiffusionLM
    from mdlm.samplers import Uniform

    root = tmp_path_factory.mktemp("export_ckpt")
    torch.manual_seed(0)
    model = cli_like(MaskedDiffusionLM, "mdlm.module.MaskedDiffusionLM", {
        "backbone": {"class_path": "mdlm.models.transformer.Transformer",
                     "init_args": {"n_layer": 2, "n_head": 2, "d_model": 32, "positional": "learned", "max_seq_len": 16}},
        "vocab_size": 3, "mask_token_id": 2, "lr": 1e-2, "warmup_steps": 0, "loss_weight": "none",
        "normalization": "masked_tokens",
    })
    trainer = Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
        callbacks=[Uniform(seed=1), EMA(decay=0.5),
                   ModelCheckpoint(dirpath=root, filename="step3", every_n_train_steps=3, save_top_k=-1)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=_parity_data())
    return root / "step3.ckpt"


def _mdlm_model(ckpt: Path):
    """The checkpoint as mdlm loads it (``validate/test --ckpt_path``, the lm-eval adapter): its EMA weights."""
    from mdlm.module import MaskedDiffusionLM

    return MaskedDiffusionLM.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False).eval()


def _inputs(length: int = 9):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 3, (4, length), generator=g)
    mask = torch.ones(4, length, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    mask[2, :1] = False
    return ids, mask


# ---------------------------------------------------------------------------- transformers, without mdlm
NO_MDLM = r'''
import importlib.abc, json, sys
from pathlib import Path

# no sys.path entry holds an mdlm package, and the editable install's finder is shadowed
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "mdlm" / "__init__.py").exists()]

class NoMdlm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mdlm" or name.startswith("mdlm."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: this process runs without mdlm)")
        return None

sys.meta_path.insert(0, NoMdlm())
try:
    import mdlm  # noqa: F401
    blocked = False
except ModuleNotFoundError:
    blocked = True

import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

result = {"blocked": blocked}
for folder in sys.argv[2:]:
    io = torch.load(Path(folder).parent / (Path(folder).name + ".io.pt"))
    out = {}
    for auto in (AutoModelForMaskedLM, AutoModel):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            plain = model(io["ids"]).logits
            padded = model(io["ids"], attention_mask=io["mask"]).logits
        out[auto.__name__] = {
            "class": type(model).__name__, "module": type(model).__module__,
            "max_abs_diff": float((plain - io["logits"]).abs().max()),
            "max_abs_diff_padded": float(((padded - io["logits_padded"]).abs() * io["mask"][..., None]).max()),
        }
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads config.json (auto_map) too
    out["tokenizer"] = {"ids": tok("0110", add_special_tokens=False)["input_ids"], "mask_token_id": tok.mask_token_id,
                        "decoded": tok.decode([0, 1, 1, 0])}
    out["config_mask_token_id"] = model.config.mask_token_id
    out["config_weights"] = model.config.weights
    result[folder] = out
result["mdlm_modules"] = sorted(m for m in sys.modules if m == "mdlm" or m.startswith("mdlm."))
Path(sys.argv[1]).write_text(json.dumps(result))
'''


def _reference_io(folder: Path, backbone) -> None:
    """Save inputs and mdlm's logits beside ``folder`` for the process without mdlm."""
    ids, mask = _inputs()
    with torch.no_grad():
        io = {"ids": ids, "mask": mask, "logits": backbone(ids), "logits_padded": backbone(ids, attention_mask=mask)}
    torch.save(io, folder.parent / (folder.name + ".io.pt"))


@pytest.mark.slow
def test_transformer_export_loads_in_transformers_without_mdlm_with_identical_logits(ema_ckpt, tmp_path):
    """AutoModelForMaskedLM / AutoModel (trust_remote_code) in a process where ``import mdlm`` fails and no
    sys.path entry holds mdlm: the logits of the exported checkpoint and of the shipped model equal mdlm's
    exactly (with and without left padding); the tokenizer loads with its [MASK]."""
    from safetensors.torch import load_file

    from mdlm.models.transformer import Transformer

    folder = tmp_path / "exported"
    summary = export_checkpoint(ema_ckpt, folder)
    assert summary["weights"] == "ema" and summary["backbone"] == "Transformer" and summary["tokenizer"]
    assert {"config.json", "model.safetensors", "modeling_mdlm.py", "configuration_mdlm.py", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mdlm_transformer" and config["mask_token_id"] == 2 and config["weights"] == "ema"
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_mdlm.MDLMTransformerForMaskedLM"
    assert config["positional"] == "learned" and config["n_layer"] == 2 and config["d_model"] == 32
    _reference_io(folder, _mdlm_model(ema_ckpt).backbone)

    folders = [folder]
    if SHIPPED.is_dir():  # the shipped model, against mdlm's Transformer holding its safetensors
        shipped_cfg = json.loads((SHIPPED / "config.json").read_text())
        shipped = Transformer(shipped_cfg["vocab_size"], n_layer=shipped_cfg["n_layer"], n_head=shipped_cfg["n_head"],
                              d_model=shipped_cfg["d_model"], max_seq_len=shipped_cfg["max_seq_len"],
                              positional=shipped_cfg["positional"], norm=shipped_cfg["norm"]).eval()
        shipped.load_state_dict(load_file(str(SHIPPED / "model.safetensors")))
        copy = tmp_path / "shipped"
        copy.mkdir()
        for p in SHIPPED.iterdir():
            if p.is_file():
                (copy / p.name).write_bytes(p.read_bytes())
        _reference_io(copy, shipped)
        folders.append(copy)

    script = tmp_path / "no_mdlm.py"
    script.write_text(NO_MDLM)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONWARNINGS="ignore", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    report = tmp_path / "no_mdlm.json"
    proc = subprocess.run([sys.executable, "-I", str(script), str(report), *map(str, folders)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["blocked"] is True and result["mdlm_modules"] == []
    for f in folders:
        out = result[str(f)]
        for auto in ("AutoModelForMaskedLM", "AutoModel"):
            assert out[auto]["class"] == "MDLMTransformerForMaskedLM"
            assert out[auto]["module"].startswith("transformers_modules.")  # the folder's own copy of the code
            assert out[auto]["max_abs_diff"] == 0.0, (f, auto, out[auto])
            assert out[auto]["max_abs_diff_padded"] == 0.0, (f, auto, out[auto])
        assert out["tokenizer"] == {"ids": [0, 1, 1, 0], "mask_token_id": 2, "decoded": "0110"}
        assert out["config_mask_token_id"] == 2


def test_rotary_tied_rmsnorm_transformer_round_trips(tmp_path, modules_cache):
    """The other architecture switches (rotary positions, tied embeddings, RMSNorm, a non-default MLP width):
    transformers' copy gives mdlm's logits exactly and keeps the output layer tied to the embedding."""
    from lightning.pytorch import Trainer
    from transformers import AutoModelForMaskedLM

    from mdlm.module import MaskedDiffusionLM

    torch.manual_seed(0)
    model = cli_like(MaskedDiffusionLM, "mdlm.module.MaskedDiffusionLM", {
        "backbone": {"class_path": "mdlm.models.transformer.Transformer",
                     "init_args": {"n_layer": 2, "n_head": 2, "d_model": 16, "mlp_ratio": 3.0, "positional": "rotary",
                                   "norm": "rmsnorm", "tie_embeddings": True, "max_seq_len": 32}},
        "vocab_size": 5, "mask_token_id": 4})
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "tied.ckpt")
    summary = export_checkpoint(tmp_path / "tied.ckpt", tmp_path / "out")
    assert summary["weights"] == "raw" and not summary["tokenizer"]  # no data module saved: no tokenizer
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["positional"], config["norm"], config["tie_word_embeddings"], config["mlp_hidden"]) == (
        "rotary", "rmsnorm", True, 48)
    loaded = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out"), trust_remote_code=True).eval()
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    ids = torch.randint(0, 5, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, :4] = False
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids))
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask))


def test_transformers_native_backbone_exports_without_remote_code(tmp_path):
    """An HFBackbone built from a config dict (Llama): saved in transformers' own format (no auto_map, no code),
    ``is_causal: false`` kept, so a plain AutoModelForCausalLM is bidirectional and gives mdlm's logits."""
    from lightning.pytorch import Trainer
    from transformers import AutoModelForCausalLM

    from mdlm.module import MaskedDiffusionLM

    torch.manual_seed(0)
    llama = dict(model_type="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=32)
    model = cli_like(MaskedDiffusionLM, "mdlm.module.MaskedDiffusionLM", {
        "backbone": {"class_path": "mdlm.models.hf.HFBackbone", "init_args": {"config": llama}},
        "vocab_size": 7, "mask_token_id": 6})
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "llama.ckpt")
    summary = export_checkpoint(tmp_path / "llama.ckpt", tmp_path / "out")
    assert summary["backbone"] == "HFBackbone" and not summary["remote_code"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["is_causal"] is False and config["mask_token_id"] == 6
    assert not list((tmp_path / "out").glob("*.py"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.randint(0, 6, (2, 9))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(ids))


# ---------------------------------------------------------------------------- EMA or raw
def test_ema_or_raw_weights_are_a_choice_recorded_in_the_config(ema_ckpt, tmp_path):
    from safetensors.torch import load_file

    ckpt = torch.load(ema_ckpt, map_location="cpu", weights_only=False)
    assert "current_model_state" in ckpt  # written with the EMA callback
    expected = {"ema": ckpt["state_dict"], "raw": ckpt["current_model_state"]}
    saved = {}
    for weights in ("ema", "raw"):
        out = tmp_path / weights
        export_checkpoint(ema_ckpt, out, weights=weights)
        assert json.loads((out / "config.json").read_text())["weights"] == weights
        saved[weights] = load_file(str(out / "model.safetensors"))
        for name, tensor in saved[weights].items():
            assert torch.equal(tensor, expected[weights]["backbone." + name]), (weights, name)
    assert saved["ema"].keys() == saved["raw"].keys()
    differ = [n for n in saved["ema"] if not torch.equal(saved["ema"][n], saved["raw"][n])]
    assert len(differ) == len(saved["ema"])  # every tensor moved during the 3 steps; the EMA lags behind

    # a checkpoint without EMA: auto -> raw, and --weights ema is a clear error
    plain = {k: v for k, v in ckpt.items() if k not in ("current_model_state", "averaging_state")}
    torch.save(plain, tmp_path / "plain.ckpt")
    assert load_checkpoint_weights(tmp_path / "plain.ckpt").weights == "raw"
    with pytest.raises(ExportError, match="holds no EMA weights.*--weights raw"):
        export_checkpoint(tmp_path / "plain.ckpt", tmp_path / "nope", weights="ema")
    with pytest.raises(ExportError, match="exists and is not empty.*--overwrite"):
        export_checkpoint(ema_ckpt, tmp_path / "raw")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "nope")


# ---------------------------------------------------------------------------- mdlm accepts the folder
def test_hfbackbone_generate_and_load_exported_accept_the_folder(ema_ckpt, tmp_path, modules_cache):
    """``HFBackbone(pretrained=folder, trust_remote_code=True)`` (what ``mdlm test`` builds from YAML) gives
    mdlm's logits exactly, ``generate`` through it gives the same sequences, and :func:`load_exported` wraps
    it with the config's [MASK] id."""
    from mdlm.generation import generate
    from mdlm.models.hf import HFBackbone

    folder = tmp_path / "exported"
    export_checkpoint(ema_ckpt, folder)
    reference = _mdlm_model(ema_ckpt)
    backbone = HFBackbone(3, pretrained=str(folder), trust_remote_code=True).eval()
    assert backbone.mask_token_id == 2 and backbone.padding_hidden
    ids, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(backbone(ids), reference(ids))
        got, want = backbone(ids, attention_mask=mask), reference(ids, attention_mask=mask)
        assert torch.equal(got[mask], want[mask])
    prompts = ids[:, :8]
    kwargs = dict(mask_token_id=2, gen_length=4, steps=4)
    got = [s.tolist() for s in generate(backbone, prompts, **kwargs).sequences]
    assert got == [s.tolist() for s in generate(reference, prompts, **kwargs).sequences] and len(got[0]) == 4

    loaded = load_exported(folder, trust_remote_code=True)
    assert loaded.mask_token_id == 2 and loaded.vocab_size == 3
    with torch.no_grad():
        assert torch.equal(loaded(ids), reference(ids))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_exported(folder)


def test_lm_eval_adapter_takes_the_exported_folder(ema_ckpt, tmp_path, modules_cache):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install 'mdlm[lm_eval]'")
    from lm_eval.api.instance import Instance

    from mdlm.lm_eval_adapter import MDLMEvalHarness

    folder = tmp_path / "exported"
    export_checkpoint(ema_ckpt, folder)
    common = dict(mc_num=8, batch_size=8, check_greedy=True, max_length=16, gen_length=2)
    from_folder = MDLMEvalHarness(pretrained=str(folder), trust_remote_code="True", **common)
    from_ckpt = MDLMEvalHarness(checkpoint=str(ema_ckpt), tokenizer=str(folder), **common)
    assert from_folder.mask_token_id == from_ckpt.mask_token_id == 2
    requests = [Instance("loglikelihood", {}, ("0110101", "1"), 0), Instance("loglikelihood", {}, ("01", "10"), 1)]
    assert from_folder.loglikelihood(requests, disable_tqdm=True) == from_ckpt.loglikelihood(requests, disable_tqdm=True)
    gen = [Instance("generate_until", {}, ("0110", {"until": []}), 0)]
    assert from_folder.generate_until(gen, disable_tqdm=True) == from_ckpt.generate_until(gen, disable_tqdm=True)
    with pytest.raises(ValueError, match="exactly one of"):
        MDLMEvalHarness(pretrained=str(folder), checkpoint=str(ema_ckpt))


# ---------------------------------------------------------------------------- FSDP2 sharded LLaDA-like backbone
FSDP2_RUN = r'''
"""1-process FSDP2 fine-tune of the LLaDA stand-in (built on meta, weights read into the shards), with EMA;
a sharded (DCP) checkpoint at step 2; the gathered training and EMA weights at that moment to weights.pt."""
import sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
sys.path[:0] = [sys.argv[3], str(Path(sys.argv[3]).parent)]  # this test's folder, and tests/ (conftest)
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_export import cli_like, _parity_data
from mdlm.ema import EMA
from mdlm.module import MaskedDiffusionLM
from mdlm.parallel import FSDP2Strategy
from mdlm.samplers import Uniform

folder, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)

class Record(Callback):
    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
        raw = {n: p.full_tensor().detach().clone() for n, p in pl_module.named_parameters()}
        torch.save({"raw": raw, "ema": ema.ema_state_dict(), "sharded": type(next(pl_module.parameters())).__name__},
                   out / "weights.pt")

torch.set_num_threads(1)
model = cli_like(MaskedDiffusionLM, "mdlm.module.MaskedDiffusionLM", {
    "backbone": {"class_path": "mdlm.models.hf.HFBackbone",
                 "init_args": {"pretrained": folder, "trust_remote_code": True, "truncate_vocab": True}},
    "vocab_size": 3, "mask_token_id": 2, "lr": 1e-2, "warmup_steps": 0, "init_device": "meta"})
trainer = Trainer(
    accelerator="cpu", devices=1, strategy=FSDP2Strategy(), max_steps=2, limit_val_batches=0, num_sanity_val_steps=0,
    logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
    callbacks=[Uniform(seed=1), EMA(decay=0.5), Record(),
               ModelCheckpoint(dirpath=out, filename="sharded", every_n_train_steps=2, save_top_k=-1)],
)
trainer.fit(model, datamodule=_parity_data(num_train=32, num_val=16, batch_size=8))
'''


@pytest.mark.slow
def test_sharded_fsdp2_checkpoint_of_a_llada_like_backbone_exports_to_its_own_format(tmp_path, modules_cache):
    """A sharded FSDP2 checkpoint directory (DCP, written by Lightning in a 1-process run) of the LLaDA stand-in:
    consolidated offline, ``backbone.model.`` stripped, saved with LLaDA's own ``save_pretrained`` and modeling
    code; reloaded through HFBackbone, the EMA and the raw export each give the logits of those weights exactly."""
    from mdlm.models.hf import HFBackbone
    from mdlm.testing.standins import make_folder

    standin = make_folder("llada", tmp_path / "llada", weights=True, mask_token_id=2)
    script = tmp_path / "fsdp2_run.py"
    script.write_text(FSDP2_RUN)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               HF_MODULES_CACHE=str(modules_cache / "hf_modules_fsdp2"))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(script), str(standin), str(tmp_path / "run"), str(Path(__file__).resolve().parent)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ckpt_dir = tmp_path / "run" / "sharded.ckpt"
    assert ckpt_dir.is_dir() and (ckpt_dir / ".metadata").is_file() and list(ckpt_dir.glob("*.distcp"))
    recorded = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert recorded["sharded"] == "DTensor"

    ids = torch.randint(0, 3, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = {}
    for weights in ("ema", "raw"):
        out = tmp_path / f"llada_{weights}"
        summary = export_checkpoint(ckpt_dir, out, weights=weights)
        assert summary["backbone"] == "HFBackbone" and summary["global_step"] == 2
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
        assert config["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
        assert config["is_causal"] is False and config["mask_token_id"] == 2 and config["weights"] == weights
        assert config["mdlm_export"]["sharded_checkpoint"] is True and config["mdlm_vocab_size"] == 3
        assert (out / "modeling_llada.py").is_file() and (out / "configuration_llada.py").is_file()
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert keys and all(k.startswith("model.transformer.") for k in keys)  # LLaDA's own names, no mdlm prefix

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stand-in's padding warning
            exported = HFBackbone(3, pretrained=str(out), trust_remote_code=True, truncate_vocab=True).eval()
            reference = HFBackbone(3, pretrained=str(standin), trust_remote_code=True, truncate_vocab=True).eval()
        state = {k[len("backbone."):]: v for k, v in recorded[weights].items()}
        reference.load_state_dict(state, strict=True)
        with torch.no_grad():
            logits[weights] = exported(ids)
            assert torch.equal(logits[weights], reference(ids)), weights
    assert not torch.equal(logits["ema"], logits["raw"])


# ---------------------------------------------------------------------------- the command line
def _mdlm(args, cwd, timeout=600):
    exe = Path(sys.executable).parent / "mdlm"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_mdlm_export_command(ema_ckpt, tmp_path):
    proc = _mdlm(["export", "--ckpt_path", str(ema_ckpt), "--out", "out", "--weights", "raw",
                  "--config", str(REPO / "configs" / "parity_md.yaml")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("mdlm export: wrote out: Transformer with the raw weights of step 3") and "trust_remote_code=True" in line
    assert json.loads((tmp_path / "out" / "config.json").read_text())["weights"] == "raw"
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    bad = _mdlm(["export", "--ckpt_path", str(ema_ckpt), "--out", "out"], cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-2].startswith("mdlm export: error: ExportError: --out out exists")


# ---------------------------------------------------------------------------- the shipped model
@pytest.mark.slow
def test_shipped_parity_model_is_small_recorded_and_solves_parity(modules_cache):
    """examples/parity_md: ≤ 5 MB of safetensors, its weights and training recorded, and it predicts the
    parity label of the 2,000 validation sequences of configs/parity_md.yaml (n=14, k=3, seed 0) at ≥ 0.99."""
    if not SHIPPED.is_dir():
        pytest.skip("examples/parity_md is not in this checkout")
    from mdlm.data.parity import ParityDataModule
    from mdlm.generation import generate

    assert sum(p.stat().st_size for p in SHIPPED.glob("*.safetensors")) <= 5 * 2**20
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["weights"] in ("ema", "raw") and config["mask_token_id"] == 2
    assert (SHIPPED / "README.md").is_file()
    for name in ("configuration_mdlm.py", "modeling_mdlm.py"):  # the shipped code is mdlm's current export code
        assert (SHIPPED / name).read_text() == (REPO / "mdlm" / "export_code" / name).read_text(), name
    model = load_exported(SHIPPED, trust_remote_code=True)
    dm = ParityDataModule(n=14, k=3, num_train=1000, num_val=2000, seed=0)
    dm.setup("validate")
    tokens = dm.val_set.tokens
    prompts, labels = tokens[:, :-1], tokens[:, -1]
    with torch.no_grad():
        answer = generate(model, prompts, mask_token_id=2, gen_length=1, steps=1).sequences
    accuracy = float((torch.stack([a[0] for a in answer]) == labels).float().mean())
    assert accuracy >= 0.99, accuracy


@pytest.mark.slow
def test_mdlm_validate_accepts_the_shipped_model(tmp_path):
    """``mdlm validate`` with ``backbone: HFBackbone(pretrained=examples/parity_md, trust_remote_code=true)``."""
    if not SHIPPED.is_dir():
        pytest.skip("examples/parity_md is not in this checkout")
    proc = _mdlm(["validate", "--config", str(REPO / "configs" / "parity_md.yaml"),
                  "--config", str(SHIPPED / "validate.yaml"),
                  f"--model.init_args.backbone.init_args.pretrained={SHIPPED}",
                  f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
                  "--data.init_args.num_val=500", "--data.init_args.num_train_eval=200"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import re

    accuracy = re.search(r"val/label_acc\W+([0-9.]+)", proc.stdout)
    assert accuracy is not None, proc.stdout[-3000:]
    assert float(accuracy.group(1)) >= 0.99, proc.stdout[-3000:]
    assert "mdlm validate: results in" in proc.stdout
