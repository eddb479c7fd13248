"""``mdlm export``: a trained checkpoint as a Hugging Face folder that other tools load.

::

    mdlm export --ckpt_path runs/parity_md/version_0/checkpoints/last.ckpt --out exported/parity_md
    mdlm export --ckpt_path CKPT --out DIR --weights raw --config configs/parity_md.yaml

The folder holds ``model.safetensors`` (or shards), ``config.json`` and the tokenizer files:

* **mdlm's own** :class:`~mdlm.models.transformer.Transformer`: ``config.json`` has ``model_type:
  mdlm_transformer`` and an ``auto_map`` to the modeling code copied beside it
  (:mod:`mdlm.export_code`: ``configuration_mdlm.py``, ``modeling_mdlm.py``; torch + transformers only),
  so ``transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)`` (or
  ``AutoModel``) gives the same logits as mdlm, without mdlm installed. Parameter names are the
  Transformer's.
* **A Hugging Face backbone** (:class:`~mdlm.models.hf.HFBackbone`: Llama/Qwen/BERT..., or remote code
  such as LLaDA and Dream): the wrapped model's own ``save_pretrained`` — its own format, its own
  ``model_type`` and (remote code) its own ``modeling_*.py``; ``"is_causal": false`` is kept.

``config.json`` also records ``mask_token_id`` (the absorbing [MASK] id the model was trained with),
``weights`` (``"ema"`` or ``"raw"``), ``mdlm_vocab_size`` (the vocabulary the model was trained on:
logits beyond it were never trained, e.g. LLaDA's padded rows), ``mdlm_suppress_token_ids`` and
``mdlm_export`` (checkpoint name, step, mdlm version).

Checkpoints: a Lightning ``.ckpt`` file, or a sharded FSDP2 checkpoint directory (torch.distributed
checkpoint, DCP: ``.metadata`` + ``*.distcp`` + Lightning's ``meta.pt``), consolidated here offline in one
process (only the tensors of the chosen weights are read). Weights (``--weights``): a run trained with
:class:`mdlm.ema.EMA` keeps the EMA weights as the checkpoint's ``state_dict`` and the training weights
under ``current_model_state`` (``current_model.`` keys in a sharded one); ``ema`` exports the former,
``raw`` the latter, ``auto`` (default) EMA when the checkpoint has it, else the (raw) weights it holds.

Tokenizer: the one the checkpoint carries (saved by mdlm since the tokenizer travels with the
checkpoint, with every token it was trained with: [MASK]/[PAD] added by mdlm included;
:func:`mdlm.data.tokenizer.tokenizer_from_checkpoint`). ``--config`` files (their ``data:`` sections,
merged in order) rebuild the run's data module for its tokenizer instead; a checkpoint without a
tokenizer (older mdlm) falls back to the data module rebuilt from its saved hyper-parameters. The
parity task has no tokenizer: a character tokenizer ``"0"`` -> 0, ``"1"`` -> 1, ``"[MASK]"`` -> 2 is
written (:func:`parity_tokenizer`). ``--tokenizer DIR`` overrides all of them.

Loading an exported folder back into mdlm: :func:`load_exported` (a :class:`~mdlm.module.MaskedDiffusionLM`
around ``HFBackbone(pretrained=folder, trust_remote_code=True)``), or in YAML ``backbone: {class_path:
mdlm.models.hf.HFBackbone, init_args: {pretrained: DIR, trust_remote_code: true}}`` for ``mdlm
validate/test/predict``, or ``mdlm-lm-eval --model mdlm --model_args pretrained=DIR,trust_remote_code=True``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from mdlm.data.tokenizer import CHECKPOINT_KEY as TOKENIZER_CHECKPOINT_KEY

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointWeights",
    "export_checkpoint",
    "export_model",
    "load_checkpoint_weights",
    "load_exported",
    "main",
    "parity_tokenizer",
]

Weights = Literal["auto", "ema", "raw"]
#: prefix of the training weights in a sharded checkpoint written with mdlm.ema.EMA (mdlm.ema.CURRENT_PREFIX)
CURRENT_PREFIX = "current_model."
#: Lightning's file of the non-tensor checkpoint entries inside a sharded checkpoint directory
LIGHTNING_META = "meta.pt"
EXPORT_CODE = Path(__file__).resolve().parent / "export_code"
AUTO_MAP = {
    "AutoConfig": "configuration_mdlm.MDLMTransformerConfig",
    "AutoModel": "modeling_mdlm.MDLMTransformerForMaskedLM",
    "AutoModelForMaskedLM": "modeling_mdlm.MDLMTransformerForMaskedLM",
}


class ExportError(ValueError):
    """A checkpoint or an option that cannot be exported (one-line message)."""


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class CheckpointWeights:
    """The chosen weights of a checkpoint, keyed like the LightningModule (``backbone.…``), and its metadata."""

    state_dict: dict[str, torch.Tensor]
    weights: str  # "ema" | "raw"
    has_ema: bool
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    datamodule_hyper_parameters: dict[str, Any] | None = None
    global_step: int | None = None
    sharded: bool = False
    #: the run's tokenizer as saved in the checkpoint (:func:`mdlm.data.tokenizer.tokenizer_to_state`), if any
    tokenizer_state: dict[str, Any] | None = None


def _choose(weights: str, has_ema: bool, path: Path) -> str:
    if weights not in ("auto", "ema", "raw"):
        raise ExportError(f"--weights {weights!r} must be 'auto', 'ema' or 'raw'")
    if weights == "ema" and not has_ema:
        raise ExportError(
            f"{path} holds no EMA weights (trained without the mdlm.ema.EMA callback, e.g. configs/trainer/ema.yaml): "
            "use --weights raw (or auto)"
        )
    if weights == "auto":
        return "ema" if has_ema else "raw"
    return weights


def _load_sharded(path: Path, weights: str) -> CheckpointWeights:
    """The chosen weights of a DCP directory, read in this process (no process group) as full tensors."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    reader = FileSystemReader(str(path))
    names = list(reader.read_metadata().state_dict_metadata)
    model_keys = [k for k in names if k.startswith("state_dict.")]
    if not model_keys:
        raise ExportError(f"{path}: the sharded checkpoint has no 'state_dict' entries (keys start with {names[:3]})")
    current = [k for k in model_keys if k.startswith("state_dict." + CURRENT_PREFIX)]
    has_ema = bool(current)
    chosen = _choose(weights, has_ema, path)
    current_set = set(current)
    keys = current if (has_ema and chosen == "raw") else [k for k in model_keys if k not in current_set]
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys=set(keys)), no_dist=True)
    sd = state["state_dict"]
    if has_ema and chosen == "raw":
        sd = {k[len(CURRENT_PREFIX):]: v for k, v in sd.items()}
    meta: dict[str, Any] = {}
    if (path / LIGHTNING_META).is_file():
        meta = torch.load(path / LIGHTNING_META, map_location="cpu", weights_only=False)
    return CheckpointWeights(
        state_dict=sd, weights=chosen, has_ema=has_ema, hyper_parameters=dict(meta.get("hyper_parameters") or {}),
        datamodule_hyper_parameters=meta.get("datamodule_hyper_parameters"), global_step=meta.get("global_step"),
        sharded=True, tokenizer_state=meta.get(TOKENIZER_CHECKPOINT_KEY),
    )


def load_checkpoint_weights(path: str | Path, weights: Weights = "auto") -> CheckpointWeights:
    """The EMA or raw weights of a Lightning checkpoint file or sharded (DCP) directory (see the module doc).

    Checkpoints are read with ``weights_only=False`` (they may hold the backbone factory): load only
    checkpoints you trust.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise ExportError(f"--ckpt_path {path}: a directory without .metadata is not a sharded (DCP) checkpoint")
        return _load_sharded(path, weights)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint (runs/<name>/version_<n>/checkpoints/last.ckpt?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, not a checkpoint ...
        raise ExportError(f"--ckpt_path {path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"--ckpt_path {path}: not a Lightning checkpoint (no 'state_dict')")
    has_ema = "current_model_state" in ckpt
    chosen = _choose(weights, has_ema, path)
    sd = ckpt["current_model_state"] if (has_ema and chosen == "raw") else ckpt["state_dict"]
    return CheckpointWeights(
        state_dict=dict(sd), weights=chosen, has_ema=has_ema,
        hyper_parameters=dict(ckpt.get("hyper_parameters") or {}),
        datamodule_hyper_parameters=ckpt.get("datamodule_hyper_parameters"), global_step=ckpt.get("global_step"),
        tokenizer_state=ckpt.get(TOKENIZER_CHECKPOINT_KEY),
    )


def _instantiate(base: type, hparams: dict[str, Any]):
    """An object from saved hyper-parameters: the CLI's (``_class_path``/``_instantiator``) or plain kwargs."""
    hp = dict(hparams)
    if "_class_path" in hp or "_instantiator" in hp:
        from lightning.pytorch.cli import instantiate_module

        hp.pop("_instantiator", None)
        return instantiate_module(base, hp)
    return base(**hp)


def _build_model(ckpt: CheckpointWeights):
    """The checkpoint's MaskedDiffusionLM built unallocated (meta), its backbone then given the chosen weights.

    The checkpoint's tensors become the parameters (``load_state_dict(assign=True)``: no second copy of the
    model in memory, dtypes as stored, e.g. float32 EMA weights of a bf16 model); tied parameters are tied
    again; non-persistent buffers (rotary tables) are allocated and recomputed.
    """
    from mdlm.module import MaskedDiffusionLM

    if not ckpt.hyper_parameters:
        raise ExportError("the checkpoint has no hyper_parameters: it was not written by mdlm's MaskedDiffusionLM")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _instantiate(MaskedDiffusionLM, ckpt.hyper_parameters)
    backbone_sd = {k[len("backbone."):]: v for k, v in ckpt.state_dict.items() if k.startswith("backbone.")}
    if not backbone_sd:
        raise ExportError("the checkpoint's state_dict holds no 'backbone.' weights")
    _assign_weights(model.backbone, backbone_sd)
    return model.eval()


def _assign_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into a meta-device ``module`` by assignment, keeping its tied parameters tied."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    tied = [names for names in groups.values() if len(names) > 1]
    aliases = {name for names in tied for name in names[1:]}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in aliases]
    if missing or unexpected:
        raise ExportError(
            f"the checkpoint's weights do not fit {type(module).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for names in tied:
        first = module.get_parameter(names[0])
        for other in names[1:]:
            owner, _, leaf = other.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, leaf, first)
    still_meta = [n for n, p in module.named_parameters() if p.is_meta]
    if still_meta:
        raise ExportError(f"the checkpoint has no weights for {still_meta[:5]}")
    meta_buffers = []
    for owner_name, owner in module.named_modules():
        for leaf, buf in owner._buffers.items():
            if buf is not None and buf.is_meta:
                owner._buffers[leaf] = torch.empty_like(buf, device="cpu")
                meta_buffers.append(f"{owner_name}.{leaf}" if owner_name else leaf)
    if meta_buffers:
        from mdlm.models.loading import rebuild_non_persistent_buffers

        try:
            rebuild_non_persistent_buffers(module, names=meta_buffers)
        except RuntimeError as err:  # never saved; only a forward pass of this object would read them
            log.warning("export: %s", err)


# ---------------------------------------------------------------------------- tokenizers
def parity_tokenizer():
    """The character tokenizer of the parity task: ``"0"`` -> 0, ``"1"`` -> 1, ``"[MASK]"`` -> 2 (decoding concatenates)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"0": 0, "1": 1, "[MASK]": 2}
    backend = Tokenizer(models.BPE(vocab, []))  # no merges, no pre-tokenizer: one token per character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, mask_token="[MASK]", clean_up_tokenization_spaces=False)


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if "class_path" not in value or value.get("class_path") == out[key].get("class_path"):
                out[key] = _deep_merge(out[key], value)
                continue
        out[key] = value
    return out


def _data_from_configs(paths: list[str]) -> dict[str, Any] | None:
    """The ``data:`` section of YAML configs merged in order, as saved hyper-parameters (``_class_path`` + kwargs)."""
    import yaml

    merged: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"--config {p}: no such file")
        doc = yaml.safe_load(path.read_text()) or {}
        if isinstance(doc.get("data"), dict):
            merged = _deep_merge(merged, {"data": doc["data"]})
    data = merged.get("data")
    if not data:
        return None
    if "class_path" not in data:
        raise ExportError(f"the data section of {paths} has no class_path")
    return {"_class_path": data["class_path"], **(data.get("init_args") or {})}


def run_tokenizer(ckpt: CheckpointWeights, configs: list[str] | None = None):
    """The tokenizer of the run (see the module doc); None when its data module has none.

    In order: the data module of ``configs`` (their ``data:`` sections), the tokenizer saved in the
    checkpoint, the data module rebuilt from the checkpoint's hyper-parameters (older checkpoints).
    """
    from lightning.pytorch import LightningDataModule

    hparams = _data_from_configs(configs) if configs else None
    where = "the --config data section"
    if hparams is None and ckpt.tokenizer_state is not None:
        from mdlm.data.tokenizer import tokenizer_from_state

        return tokenizer_from_state(ckpt.tokenizer_state)
    if hparams is None:
        hparams, where = ckpt.datamodule_hyper_parameters, "the checkpoint's data module hyper-parameters"
    if not hparams or "_class_path" not in hparams:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm = _instantiate(LightningDataModule, hparams)
    except Exception as err:
        raise ExportError(
            f"could not rebuild the run's data module from {where} for its tokenizer ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}); pass --tokenizer DIR (or --config with a loadable data section)"
        ) from None
    tokenizer = getattr(dm, "tokenizer", None)
    if tokenizer is None:
        from mdlm.data.parity import ParityDataModule

        if isinstance(dm, ParityDataModule):
            return parity_tokenizer()
    return tokenizer


def _check_tokenizer(tokenizer, vocab_size: int, mask_token_id: int) -> None:
    if len(tokenizer) > vocab_size:
        raise ExportError(
            f"the tokenizer has {len(tokenizer)} tokens but the model was trained on {vocab_size}: not the run's tokenizer"
        )
    tok_mask = getattr(tokenizer, "mask_token_id", None)
    if tok_mask is not None and tok_mask != mask_token_id:
        raise ExportError(f"the tokenizer's mask token id {tok_mask} differs from the model's mask_token_id={mask_token_id}")


# ---------------------------------------------------------------------------- writing
def _transformer_config(backbone, extra: dict[str, Any]):
    """The :class:`MDLMTransformerConfig` of an mdlm Transformer instance (read off the module itself)."""
    from mdlm.export_code.configuration_mdlm import MDLMTransformerConfig

    norm = "rmsnorm" if isinstance(backbone.norm_f, nn.RMSNorm) else "layernorm"
    dropout = float(backbone.drop.p)
    return MDLMTransformerConfig(
        vocab_size=backbone.vocab_size, n_layer=backbone.n_layer, n_head=backbone.n_head, d_model=backbone.d_model,
        mlp_hidden=int(backbone.blocks[0].mlp.fc.weight.shape[0]) if len(backbone.blocks) else 4 * backbone.d_model,
        max_seq_len=backbone.max_seq_len, positional=backbone.positional, norm=norm, dropout=dropout,
        tie_word_embeddings=backbone.lm_head.weight is backbone.tok_emb.weight, **extra,
    )


def _copy_code(out: Path) -> None:
    from mdlm.export_code import FILES

    for name in FILES:
        shutil.copy(EXPORT_CODE / name, out / name)


def export_model(
    model: nn.Module,
    out: str | Path,
    *,
    tokenizer: Any = None,
    weights: str | None = None,
    mask_token_id: int | None = None,
    dtype: str | torch.dtype | None = None,
    info: dict[str, Any] | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """Write ``model`` (a MaskedDiffusionLM, an mdlm Transformer or an HFBackbone) as a Hugging Face folder.

    ``weights``: what the weights are (``ema``/``raw``), recorded in ``config.json``; ``mask_token_id``:
    default the MaskedDiffusionLM's (or the backbone's); ``dtype``: cast before saving (default: as they
    are); ``info``: recorded as ``mdlm_export``. Returns ``out``. An HFBackbone's model is saved as it is
    (cast in place with ``dtype``); its config gets the keys above only while saving.
    """
    backbone = getattr(model, "backbone", model)
    mask = mask_token_id if mask_token_id is not None else getattr(model, "mask_token_id", None)
    if mask is None:
        raise ExportError("mask_token_id is unknown: pass mask_token_id=... (the [MASK] id the model was trained with)")
    vocab = int(getattr(model, "vocab_size", None) or backbone.vocab_size)
    suppressed = [int(t) for t in (getattr(model, "suppressed", None) or []) if int(t) != int(mask)]
    extra = {
        "mask_token_id": int(mask), "weights": weights, "mdlm_vocab_size": vocab,
        "mdlm_suppress_token_ids": suppressed, "mdlm_export": dict(info or {}),
    }
    if tokenizer is not None:
        _check_tokenizer(tokenizer, vocab, int(mask))
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                extra[name] = int(value)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, str(dtype).removeprefix("torch.")) if isinstance(dtype, str) else dtype
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    with _quiet_transformers():
        _write_weights(backbone, out, extra, torch_dtype, kwargs)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, out, max_length=getattr(backbone, "max_seq_len", None))
    return out


class _quiet_transformers:
    """No "Writing model shards" progress bar while saving."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self._was:
            hf_logging.enable_progress_bar()


def _write_weights(backbone, out: Path, extra: dict[str, Any], torch_dtype, kwargs: dict[str, Any]) -> None:
    from mdlm.models.hf import HFBackbone
    from mdlm.models.transformer import Transformer

    if isinstance(backbone, Transformer):
        from mdlm.export_code.modeling_mdlm import MDLMTransformerForMaskedLM

        config = _transformer_config(backbone, extra)
        config.auto_map = dict(AUTO_MAP)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = MDLMTransformerForMaskedLM(config)
        hf.load_state_dict(backbone.state_dict(), strict=True)
        if torch_dtype is not None:
            hf.to(torch_dtype)
        hf.save_pretrained(str(out), **kwargs)
        _copy_code(out)
    elif isinstance(backbone, HFBackbone):
        hf = backbone.model
        missing = object()
        saved = {k: hf.config.__dict__.get(k, missing) for k in extra}
        for key, value in extra.items():
            setattr(hf.config, key, value)
        try:
            if torch_dtype is not None:
                hf.to(torch_dtype)
            hf.save_pretrained(str(out), **kwargs)
        finally:
            for key, value in saved.items():
                if value is missing:
                    delattr(hf.config, key)
                else:
                    setattr(hf.config, key, value)
    else:
        raise ExportError(
            f"cannot export a {type(backbone).__name__} backbone: mdlm exports its Transformer and HFBackbone models"
        )


def _save_tokenizer(tokenizer, out: Path, max_length: int | None) -> None:
    """``save_pretrained`` with ``model_max_length`` set to the model's when the tokenizer does not know it."""
    saved = getattr(tokenizer, "model_max_length", None)
    if max_length and (saved is None or saved > 10**12):
        tokenizer.model_max_length = int(max_length)
    try:
        tokenizer.save_pretrained(str(out))
    finally:
        if saved is not None:
            tokenizer.model_max_length = saved


def _folder_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path,
    *,
    weights: Weights = "auto",
    configs: list[str] | None = None,
    tokenizer: Any = None,
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_size: str | int | None = None,
) -> dict[str, Any]:
    """Export a checkpoint file or sharded directory to ``out`` (see the module doc); returns a summary dict."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"--out {out} exists and is not empty: choose another folder or pass --overwrite")
        if not (out / "config.json").is_file() or not out.is_dir():
            raise ExportError(f"--overwrite replaces an exported folder only; {out} has no config.json")
    ckpt = load_checkpoint_weights(ckpt_path, weights)
    model = _build_model(ckpt)
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    elif tokenizer is None:
        tokenizer = run_tokenizer(ckpt, configs)
        if tokenizer is None:
            log.warning("export: the run's data module has no tokenizer; the folder holds none (pass --tokenizer DIR)")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    from mdlm import __version__

    info = {
        "checkpoint": Path(ckpt_path).name, "global_step": ckpt.global_step, "sharded_checkpoint": ckpt.sharded,
        "mdlm_version": __version__,
    }
    export_model(model, out, tokenizer=tokenizer, weights=ckpt.weights, dtype=dtype, info=info,
                 max_shard_size=max_shard_size)
    return {
        "out": str(out), "weights": ckpt.weights, "has_ema": ckpt.has_ema, "global_step": ckpt.global_step,
        "backbone": type(model.backbone).__name__, "tokenizer": tokenizer is not None, "bytes": _folder_bytes(out),
        "mask_token_id": int(model.mask_token_id),
        "remote_code": "auto_map" in json.loads((out / "config.json").read_text()),
    }


# ---------------------------------------------------------------------------- loading back
def load_exported(
    folder: str | Path,
    *,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    vocab_size: int | None = None,
    mask_token_id: int | None = None,
    **backbone_kwargs: Any,
):
    """An exported folder as a :class:`~mdlm.module.MaskedDiffusionLM` (eval mode) for generation and evaluation.

    The backbone is ``HFBackbone(vocab_size, pretrained=folder, trust_remote_code=..., truncate_vocab=True)``;
    ``vocab_size`` default ``config.mdlm_vocab_size`` (else ``config.vocab_size``), ``mask_token_id`` default
    ``config.mask_token_id``, suppressed ids from ``config.mdlm_suppress_token_ids``. Folders written by
    ``mdlm export`` for mdlm's Transformer ship their own code: ``trust_remote_code=True`` is required.
    """
    from transformers import AutoConfig

    from mdlm.models.hf import HFBackbone
    from mdlm.module import MaskedDiffusionLM

    folder = str(folder)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ValueError(
                f"{folder} ships its own modeling code (auto_map in config.json): load it with trust_remote_code=True "
                "(only for code you trust)"
            ) from None
        raise
    vocab = int(vocab_size or getattr(config, "mdlm_vocab_size", None) or config.vocab_size)
    mask = mask_token_id if mask_token_id is not None else getattr(config, "mask_token_id", None)
    if mask is None:
        raise ValueError(f"{folder}: config.json has no mask_token_id; pass mask_token_id=...")
    suppressed = [int(t) for t in (getattr(config, "mdlm_suppress_token_ids", None) or [])]
    kwargs = {"truncate_vocab": True, **backbone_kwargs}
    model = MaskedDiffusionLM(
        backbone=lambda v: HFBackbone(v, pretrained=folder, trust_remote_code=trust_remote_code, dtype=dtype, **kwargs),
        vocab_size=vocab, mask_token_id=int(mask), suppress_token_ids=suppressed,
    )
    return model.eval()


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdlm export",
        description="Write a checkpoint as a Hugging Face folder (safetensors, config.json with mask_token_id and "
        "weights, tokenizer; mdlm's Transformer with its modeling code: transformers loads it with "
        "trust_remote_code=True, without mdlm). See docs/export.md.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a Lightning .ckpt file or a sharded (FSDP2/DCP) checkpoint directory")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="ema: the EMA weights (checkpoints of runs with mdlm.ema.EMA); raw: the training weights; "
                        "auto (default): ema when the checkpoint has it, else raw")
    parser.add_argument("--config", action="append", default=None,
                        help="the run's config file(s), in order; their data section rebuilds the tokenizer "
                        "(default: the tokenizer saved in the checkpoint, else its data module's hyper-parameters)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder to save instead of the run's")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="cast the weights (default: as stored; EMA weights are float32)")
    parser.add_argument("--max_shard_size", default=None, help="e.g. 5GB: several safetensors shards")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``mdlm export ...``: mdlm's one-line errors (``MDLM_TRACEBACK=1`` shows the traceback)."""
    import os

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mdlm export: %(message)s")
    try:
        summary = export_checkpoint(
            args.ckpt_path, args.out, weights=args.weights, configs=args.config, tokenizer=args.tokenizer,
            dtype=args.dtype, overwrite=args.overwrite, max_shard_size=args.max_shard_size,
        )
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        if os.environ.get("MDLM_TRACEBACK"):
            raise
        print(f"mdlm export: error: {type(err).__name__}: {' '.join(str(err).split())}\n"
              "(MDLM_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    step = f" of step {summary['global_step']}" if summary["global_step"] is not None else ""
    trust = ", trust_remote_code=True" if summary["remote_code"] else ""
    print(
        f"mdlm export: wrote {summary['out']}: {summary['backbone']} with the {summary['weights']} weights{step} "
        f"({summary['bytes'] / 1e6:.2f} MB safetensors), mask_token_id={summary['mask_token_id']}, "
        f"{'tokenizer' if summary['tokenizer'] else 'no tokenizer'}; load it with "
        f"transformers.AutoModel.from_pretrained({summary['out']!r}{trust})",
        flush=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
