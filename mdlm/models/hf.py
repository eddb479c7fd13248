"""Hugging Face ``transformers`` models as fully bidirectional mdlm backbones.

:class:`HFBackbone` wraps an ``AutoModelForCausalLM`` (Llama, Qwen2/3, Mistral, GPT-2, ...) or an
``AutoModelForMaskedLM`` (BERT, RoBERTa, ModernBERT, ...) — built from a config dict or loaded with
``from_pretrained`` — behind mdlm's backbone contract ``forward(input_ids [B, L], attention_mask
[B, L] | None) -> logits [B, L, V]``. The wrapped model never gets a time input; the [MASK] logit is
handled by :class:`mdlm.module.MaskedDiffusionLM`, not here.

How a causal LM is made bidirectional (transformers >= 5.2)
-----------------------------------------------------------
Transformers 5 builds every attention mask in ``transformers.masking_utils``. Its
``create_causal_mask`` / ``create_sliding_window_causal_mask`` return the *bidirectional*
(padding-only) mask when ``config.is_causal`` is ``False``, and the ``merge_with_config_defaults``
decorator on the base models forwards ``is_causal=False`` to the attention functions, so the SDPA
and flash paths do not fall back to ``is_causal=True`` when the mask is skipped (no padding).
:func:`make_bidirectional` sets ``config.is_causal = False`` and, as a second line of defence for
models whose forward does not go through that decorator, ``is_causal = False`` on every submodule
that has the attribute. Sliding-window layers become symmetric windows (|i - j| < window).
``config.json`` of a saved model keeps ``"is_causal": false``, so a plain
``AutoModelForCausalLM.from_pretrained(path)`` of an exported model is bidirectional too.

Because a silently causal model would train without complaint, the backbone checks itself when it
is built (``verify=True``): changing tokens 1..L-1 must change the logits at position 0 (else a
``RuntimeError``), and changing the content of padded positions must not change the logits at real
positions (else a warning: some models, LLaDA among them, attend to padding by design).

``tests/models/test_hf_backbone.py`` checks this for Llama, Qwen2, Qwen3, Mistral (also with a sliding
window), GPT-2 and BERT against an unmodified copy of the model given an explicit 4D mask; which
attention implementations and versions were verified is recorded in ``docs/models.md``.

Remote code (LLaDA, Dream)
--------------------------
``trust_remote_code=True`` loads a checkpoint's own ``modeling_*.py`` (``auto_map`` in its config),
with a random init from ``config=<folder>`` or weights from ``pretrained=``. Code written for
transformers 4.x is loaded through a same-named subclass that adds what 5.x needs (``post_init``,
the new ``tie_weights`` keywords, a dict of tied keys), RoPE's ``'default'`` initialiser and a
generation config whose ``validate()`` takes 5.x's keywords (:mod:`mdlm.models.hf_compat`); nothing
else of the remote code changes. What differs between families (logit shift, mask form, positions,
padding, [MASK] id) is :mod:`mdlm.models.families`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from mdlm.models.families import detect_family, get_family
from mdlm.models.hf_compat import (
    _ensure_rope_default,
    _legacy_compatible,
    _shim_generation_config,
    _transformers_version,
)
from mdlm.models.meta_init import force_device, is_meta_context

log = logging.getLogger(__name__)

AutoClass = Literal["masked_lm", "causal_lm"]
_AUTO_CLASS_NAMES = {"masked_lm": "AutoModelForMaskedLM", "causal_lm": "AutoModelForCausalLM"}
MIN_TRANSFORMERS_FOR_CAUSAL = (5, 2)

__all__ = ["HFBackbone", "make_bidirectional", "export_pretrained"]


def _auto_cls(auto_class: str):
    if auto_class not in _AUTO_CLASS_NAMES:
        raise ValueError(f"auto_class={auto_class!r} must be one of {sorted(_AUTO_CLASS_NAMES)}")
    import transformers

    return getattr(transformers, _AUTO_CLASS_NAMES[auto_class])


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (e.g. 'bfloat16', 'float32', 'auto')")
    return resolved


def make_bidirectional(model: nn.Module) -> nn.Module:
    """Make a transformers (>= 5.2) model attend in both directions; returns ``model``.

    Sets ``config.is_causal = False`` (honoured by ``transformers.masking_utils`` and forwarded as the
    ``is_causal`` argument of the attention functions) on the model's config and every sub-config
    reachable through submodules, and ``is_causal = False`` on every submodule that has a boolean
    ``is_causal`` attribute (the attention layers). Use it after a plain ``from_pretrained`` of a
    causal LM whose ``config.json`` lacks ``"is_causal": false``.
    """
    configs = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and all(config is not c for c in configs) and hasattr(config, "to_dict"):
            configs.append(config)
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = False
    for config in configs:
        config.is_causal = False
    return model


def _remote_code_error(source: str, err: Exception) -> ValueError:
    return ValueError(
        f"{source} ships its own modeling code (auto_map in its config) and loading it needs "
        f"`trust_remote_code: true` (HFBackbone(..., trust_remote_code=True)); only set it for code you trust. "
        f"transformers said: {err}"
    )


def _request_attention(kwargs: dict[str, Any], attn_implementation: str | None, remote: bool) -> None:
    """``sdpa`` for transformers' own classes; remote code gets only what the user asked for (LLaDA refuses sdpa)."""
    if attn_implementation is not None:
        kwargs.setdefault("attn_implementation", attn_implementation)
    elif not remote:
        kwargs.setdefault("attn_implementation", "sdpa")


def _build_from_config(cls, hf_config, kwargs: dict[str, Any], attn_implementation: str | None, remote: bool, meta: bool):
    """Random init of ``cls`` (an Auto class or a remote model class) from ``hf_config``.

    ``meta``: built inside :func:`mdlm.models.meta_init.force_device`, so nothing is allocated even where
    the constructor pins a device (LLaDA builds every layer with ``device="cpu"``).
    """
    kwargs = dict(kwargs)
    _request_attention(kwargs, attn_implementation, remote)
    with force_device("meta") if meta else contextlib.nullcontext():
        try:
            if remote:
                return cls._from_config(hf_config, **kwargs)
            return cls.from_config(hf_config, **kwargs)
        except ValueError as err:
            if "Unrecognized configuration class" in str(err):
                raise ValueError(
                    f"model_type={hf_config.model_type!r} has no {cls.__name__} model; try the other auto_class ({err})"
                ) from None
            raise


def _local_folder(source: str, revision: str | None) -> str:
    """The local folder of a pretrained model (a hub name is downloaded, weights included, once)."""
    if Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download

    return snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.py"])


def _config_dtype(hf_config) -> torch.dtype | None:
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    return _resolve_dtype(dtype) if isinstance(dtype, str) else dtype


def _config_mask_id(hf_config, family) -> int | None:
    """The [MASK] id the checkpoint was trained with: ``config.mask_token_id``, else the family's."""
    value = getattr(hf_config, "mask_token_id", None)
    return int(value) if value is not None else family.mask_token_id


class HFBackbone(nn.Module):
    """A bidirectional Hugging Face model as an mdlm backbone: ``forward(input_ids, attention_mask) -> logits``.

    In YAML::

        backbone:
          class_path: mdlm.models.hf.HFBackbone
          init_args: {config: {model_type: llama, hidden_size: 256, num_hidden_layers: 4, ...}}

    Args:
        vocab_size: vocabulary size of the data (``len(tokenizer)``, added tokens included); supplied by
            :class:`~mdlm.module.MaskedDiffusionLM`. A larger value than the model's embedding matrix resizes
            the embeddings (``resize_token_embeddings``, logged); a smaller one is an error unless
            ``truncate_vocab`` is set.
        pretrained: hub name or local folder loaded with ``from_pretrained`` (exclusive with ``config``).
        config: build from scratch (random init): a dict ``{"model_type": "llama", "hidden_size": 64, ...}``
            passed to ``AutoConfig.for_model`` (``vocab_size`` defaults to the data's), or the folder / hub name
            of a ``config.json`` — with ``trust_remote_code`` a folder holding only the model's code and
            ``config.json`` (LLaDA, Dream) builds that architecture.
        config_overrides: keys set on a loaded ``config.json`` before building (e.g. ``{n_layers: 2}``).
        auto_class: ``causal_lm`` (``AutoModelForCausalLM``; made bidirectional, needs transformers >= 5.2)
            or ``masked_lm`` (``AutoModelForMaskedLM``; BERT-like models, already bidirectional).
        trust_remote_code: allow a checkpoint's own modeling code (``auto_map``), e.g. LLaDA. Always passed
            explicitly, so transformers never prompts.
        dtype: parameter dtype, e.g. ``"bfloat16"`` (``"auto"`` with ``pretrained``: the checkpoint's);
            ``None`` keeps transformers' default (float32).
        attn_implementation: ``sdpa`` | ``eager`` | ``flash_attention_2`` | ``flex_attention`` ...;
            ``None``: ``sdpa`` for transformers' own models, the model's default for remote code.
        gradient_checkpointing: activation checkpointing of the transformer layers (non-reentrant).
        truncate_vocab: when the model has more embedding rows than ``vocab_size`` (matrices padded to a
            multiple of 64/128, e.g. Qwen2 or LLaDA), return only the first ``vocab_size`` logits.
        position_ids_from_mask: with an attention mask, number real tokens from 0 (``cumsum - 1``) so a
            left-padded sequence gets the positions it has unpadded; ``None``: on for ``causal_lm`` models
            whose ``forward`` takes ``position_ids``, off for ``masked_lm`` (RoBERTa-style models offset
            their positions themselves).
        revision: hub revision of ``pretrained``.
        verify: probe the model once after building it: bidirectional (else ``RuntimeError``) and padding
            hidden by the attention mask (else a warning, and :attr:`padding_hidden` is False). Skipped for
            parameters on the meta device (the family's prior is kept).
        model_family: ``auto`` (from ``config.model_type``) | ``transformers`` | ``llada`` | ``dream``: the
            adapter of :mod:`mdlm.models.families` (logit shift, mask form, position ids, padding, [MASK] id).

    Built inside ``torch.device("meta")`` (``MaskedDiffusionLM(init_device="meta")``) with ``pretrained``, the
    model is built from its config without allocating anything (even where the remote constructor pins a
    device) and :attr:`pretrained_folder` is set: FSDP2 then reads each rank's slices of the safetensors
    shards into its shards (:func:`mdlm.parallel.parallelize`).
        model_kwargs: further keyword arguments for ``from_pretrained`` / ``from_config``.
    """

    def __init__(
        self,
        vocab_size: int,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        auto_class: AutoClass = "causal_lm",
        trust_remote_code: bool = False,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        truncate_vocab: bool = False,
        position_ids_from_mask: bool | None = None,
        revision: str | None = None,
        verify: bool = True,
        model_family: str = "auto",
        config_overrides: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError(
                "HFBackbone needs exactly one of `pretrained` (a hub name or local folder) and `config` "
                "(a dict with model_type, or the folder/hub name of a config.json, built from scratch); "
                f"got pretrained={pretrained!r}, config={config!r}"
            )
        if config_overrides and not isinstance(config, str) and pretrained is None:
            raise ValueError("config_overrides applies to a config folder (config: <path>); put the keys in the config dict")
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size} must be >= 2")
        auto_cls = _auto_cls(auto_class)
        self.vocab_size = int(vocab_size)
        self.auto_class = auto_class
        self.truncate_vocab = truncate_vocab
        kwargs: dict[str, Any] = dict(model_kwargs or {})
        torch_dtype = _resolve_dtype(dtype)
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        #: set when the model was built unallocated from ``pretrained``: the weights are read later, into
        #: each rank's shards (:func:`mdlm.parallel.parallelize`); checkpoint keys are parameter names
        #: without ``checkpoint_prefix``
        self.pretrained_folder: str | None = None
        self.checkpoint_prefix = "model."
        meta = is_meta_context()
        if isinstance(config, dict):
            config = dict(config)
            config.setdefault("vocab_size", self.vocab_size)
            if kwargs.get("dtype") == "auto":  # nothing to take the dtype from
                del kwargs["dtype"]
            self.source = f"config(model_type={config.get('model_type')!r})"
            self.model, remote = self._from_config(auto_cls, config, kwargs, attn_implementation, meta)
        else:
            source = str(config if config is not None else pretrained)
            hf_config, cls = self._load_config(auto_cls, source, trust_remote_code, revision, config_overrides)
            if kwargs.get("dtype") == "auto" and (config is not None or meta):
                kwargs["dtype"] = _config_dtype(hf_config)
            if config is not None or meta:
                self.model = _build_from_config(cls or auto_cls, hf_config, kwargs, attn_implementation, cls is not None, meta)
                if pretrained is not None:
                    self.pretrained_folder = _local_folder(source, revision)
            else:
                self.model = self._from_pretrained(cls or auto_cls, source, hf_config, kwargs, attn_implementation, revision, cls is not None)
            remote = cls is not None
            self.source = source if config is None else f"config({source})"
        self.remote_code = remote
        self.family = get_family(model_family) if model_family != "auto" else detect_family(self.model.config)
        _shim_generation_config(self.model)
        if auto_class == "causal_lm" and not remote and _transformers_version() < MIN_TRANSFORMERS_FOR_CAUSAL:
            import transformers

            raise RuntimeError(
                "bidirectional causal LMs need transformers >= 5.2 (config.is_causal=False), "
                f"found {transformers.__version__}"
            )
        make_bidirectional(self.model)
        if getattr(self.model.config, "use_cache", None):
            self.model.config.use_cache = False
        if self.pretrained_folder is not None and self.vocab_size > self._model_vocab():
            raise ValueError(
                f"vocab_size={self.vocab_size} exceeds the {self._model_vocab()} embedding rows of {self.source}: a model "
                "built on the meta device cannot be resized before its weights are loaded; use the model's tokenizer "
                "(with its own mask token) or init_device: null"
            )
        self._match_vocab()
        #: True when the attention honours ``attention_mask`` (measured by :meth:`verify_attention`; the family's
        #: prior when the model is not allocated). False: batch only rows of equal real length.
        self.padding_hidden = self.family.padding_hidden
        #: the [MASK] id a pretrained checkpoint was trained with (None when built from a config: any id works)
        self.mask_token_id = _config_mask_id(self.model.config, self.family) if pretrained is not None else None
        if gradient_checkpointing:
            self._enable_gradient_checkpointing()
        self._inspect_forward(position_ids_from_mask)
        if verify and not any(p.is_meta for p in self.model.parameters()):
            self.verify_attention()

    # ------------------------------------------------------------------ building
    @staticmethod
    def _from_config(auto_cls, config: dict[str, Any], kwargs: dict[str, Any], attn_implementation: str | None, meta: bool):
        from transformers import AutoConfig

        model_type = config.pop("model_type", None)
        if not model_type:
            raise ValueError(
                f"config needs a `model_type` (e.g. 'llama', 'qwen2', 'gpt2', 'bert'), got keys {sorted(config)}"
            )
        try:
            hf_config = AutoConfig.for_model(model_type, **config)
        except ValueError as err:
            raise ValueError(
                f"config: model_type={model_type!r} is not a model type known to transformers ({err})"
            ) from None
        return _build_from_config(auto_cls, hf_config, kwargs, attn_implementation, False, meta), False

    @staticmethod
    def _load_config(auto_cls, source: str, trust_remote_code: bool, revision: str | None, overrides: dict | None):
        """(transformers config of ``source``, the remote model class or None for transformers' own classes)."""
        from transformers import AutoConfig

        hub = {"revision": revision} if revision is not None else {}
        try:
            hf_config = AutoConfig.from_pretrained(source, trust_remote_code=bool(trust_remote_code), **hub)
        except ValueError as err:
            if "trust_remote_code" in str(err):
                raise _remote_code_error(source, err) from None
            raise
        for key, value in (overrides or {}).items():
            setattr(hf_config, key, value)
        auto_map = getattr(hf_config, "auto_map", None) or {}
        class_ref = auto_map.get(auto_cls.__name__) or auto_map.get("AutoModel")
        if not (trust_remote_code and class_ref is not None):
            return hf_config, None
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        repo = source
        if "--" in class_ref:
            repo, class_ref = class_ref.split("--")
        _ensure_rope_default()
        cls = get_class_from_dynamic_module(class_ref, repo, **hub)
        cls.register_for_auto_class(auto_cls.__name__ if auto_cls.__name__ in auto_map else "AutoModel")
        return hf_config, _legacy_compatible(cls)

    @staticmethod
    def _from_pretrained(cls, source: str, hf_config, kwargs, attn_implementation, revision: str | None, remote: bool):
        hub = {"revision": revision} if revision is not None else {}
        _request_attention(kwargs, attn_implementation, remote)
        model = cls.from_pretrained(source, config=hf_config, trust_remote_code=remote, **hub, **kwargs)
        if remote:  # transformers 5 initialises its own models' non-persistent buffers, not remote code's
            from mdlm.models.loading import rebuild_non_persistent_buffers

            rebuild_non_persistent_buffers(model)
        return model

    def _model_vocab(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    def _match_vocab(self) -> None:
        model_vocab = self._model_vocab()
        if self.vocab_size > model_vocab:
            log.info(
                "HFBackbone(%s): resizing the token embeddings from %d to %d rows (vocab_size of the data)",
                self.source, model_vocab, self.vocab_size,
            )
            self.model.resize_token_embeddings(self.vocab_size)
            out = self.model.get_output_embeddings()
            if out is not None and getattr(out, "weight", None) is not None and out.weight.shape[0] != self.vocab_size:
                raise RuntimeError(
                    f"resize_token_embeddings({self.vocab_size}) left the output layer with {out.weight.shape[0]} rows"
                )
        elif self.vocab_size < model_vocab and not self.truncate_vocab:
            raise ValueError(
                f"vocab_size={self.vocab_size} (the data's) is smaller than the model's vocabulary of {model_vocab} "
                f"embedding rows ({self.source}); use the model's tokenizer, or set truncate_vocab=True if the "
                f"matrix is only padded (the logits are then cut to the first {self.vocab_size} ids)"
            )

    def _enable_gradient_checkpointing(self) -> None:
        """transformers' switch where the model supports it; else mdlm's own per-block checkpointing.

        LLaDA has no ``supports_gradient_checkpointing`` (its own ``set_activation_checkpointing`` takes a
        strategy enum): each block of :meth:`block_classes` is then wrapped with the composable
        ``torch.distributed._composable.checkpoint`` (non-reentrant; parameter names unchanged, FSDP2
        compatible, and :func:`mdlm.parallel.parallelize` does not wrap a block twice).
        """
        if getattr(self.model, "supports_gradient_checkpointing", False) and self.family.hf_checkpointing:
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers < 5.x name
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
        from torch.distributed._composable import checkpoint

        classes = tuple(self.block_classes())
        blocks = [m for m in self.model.modules() if isinstance(m, classes)]
        for block in blocks:
            checkpoint(block)
        log.info(
            "HFBackbone(%s): %s has no transformers gradient checkpointing; checkpointing its %d %s blocks with mdlm's own",
            self.source, type(self.model).__name__, len(blocks), "/".join(c.__name__ for c in classes),
        )

    def _inspect_forward(self, position_ids_from_mask: bool | None) -> None:
        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._named_args = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if position_ids_from_mask is None:
            position_ids_from_mask = self.family.position_ids
        if position_ids_from_mask is None:
            position_ids_from_mask = self.auto_class == "causal_lm"
        if position_ids_from_mask and "position_ids" not in self._named_args:
            position_ids_from_mask = False
        self.position_ids_from_mask = position_ids_from_mask

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, vocab_size] of ``input_ids`` [B, L], position i scoring token i; ``attention_mask`` [B, L]
        marks real tokens (passed in the family's form, and only when some position is padding)."""
        kwargs: dict[str, Any] = {}
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
            if self.family.mask_form == "4d_bool":  # [B, 1, L, L]: every query sees the real keys
                kwargs["attention_mask"] = mask[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
            else:
                kwargs["attention_mask"] = mask.long()
            if self.position_ids_from_mask:
                kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if "use_cache" in self._named_args:
            kwargs["use_cache"] = False
        if "return_dict" in self._named_args:
            kwargs["return_dict"] = True
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if self.family.logit_shift:  # row i predicts token i + 1: score token i with row i - 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if logits.shape[-1] != self.vocab_size:
            if logits.shape[-1] > self.vocab_size and self.truncate_vocab:
                logits = logits[..., : self.vocab_size]
            else:
                raise RuntimeError(
                    f"{self.source} returned {logits.shape[-1]} logits per token, expected {self.vocab_size}"
                )
        return logits

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def verify_attention(self, seq_len: int = 8, raise_if_causal: bool = True) -> dict[str, float]:
        """Probe the wrapped model; returns the measured changes (relative to the largest logit).

        ``bidirectional``: change of the logits at position 0 when tokens 1..L-1 change (0 for a causal
        model: ``RuntimeError`` when ``raise_if_causal``). ``padding_leak``: change of the logits at the
        real positions when only the content of padded (masked) positions changes (a warning when > 0).
        """
        was_training = self.training
        self.eval()
        try:
            param = next(self.model.parameters())
            device = param.device
            vocab = min(self.vocab_size, self._model_vocab())
            g = torch.Generator().manual_seed(1234)
            base = torch.randint(0, vocab, (1, seq_len), generator=g)
            other = torch.randint(0, vocab, (1, seq_len), generator=g)
            other = torch.where(other == base, (other + 1) % vocab, other)
            changed = torch.cat([base[:, :1], other[:, 1:]], dim=1)
            logits = self(torch.cat([base, changed]).to(device)).float()
            scale = logits.abs().max().clamp_min(1e-6)
            bidir = ((logits[0, 0] - logits[1, 0]).abs().max() / scale).item()
            n_real = seq_len - seq_len // 2 + 1
            mask = torch.zeros(2, seq_len, dtype=torch.bool)
            mask[:, :n_real] = True
            padded = torch.cat([base, torch.cat([base[:, :n_real], other[:, n_real:]], dim=1)])
            logits = self(padded.to(device), attention_mask=mask.to(device)).float()
            leak = ((logits[0, :n_real] - logits[1, :n_real]).abs().max() / scale).item()
        finally:
            self.train(was_training)
        tol = 1e-6 if param.dtype in (torch.float32, torch.float64) else 1e-3
        self.padding_hidden = leak <= tol
        if bidir <= tol and raise_if_causal:
            raise RuntimeError(
                f"{self.source} ({type(self.model).__name__}) is still causal after make_bidirectional: the logits at "
                f"position 0 do not depend on later tokens (relative change {bidir:.2e}). Its attention does not "
                f"honour config.is_causal; use a model whose forward uses transformers.masking_utils, or pass "
                f"verify=False if you know better"
            )
        if leak > tol:
            warnings.warn(
                f"{self.source} ({type(self.model).__name__}) lets padded positions influence real ones (relative "
                f"change {leak:.2e} when only padded content changes): its attention ignores attention_mask. mdlm then "
                f"batches generation by equal prompt length and refuses hidden padding in training batches; train on "
                f"unpadded (packed) sequences or mark padding as real tokens (LLaDA's convention: pad with EOS and "
                f"train on it)",
                stacklevel=2,
            )
        return {"bidirectional": bidir, "padding_leak": leak}

    # ------------------------------------------------------------------ FSDP / export
    def block_classes(self) -> set[type[nn.Module]]:
        """Classes of the transformer blocks (decoder layers) of the wrapped model, e.g. for FSDP auto-wrap.

        From the model's ``_no_split_modules`` (class names) matched against its submodules; without it,
        the class of the children of the largest ``nn.ModuleList`` of identical modules.
        """
        names = set(getattr(self.model, "_no_split_modules", None) or [])
        found = {type(m) for m in self.model.modules() if type(m).__name__ in names}
        if found:
            return found
        best: list[nn.Module] = []
        for m in self.model.modules():
            if isinstance(m, nn.ModuleList) and len(m) > len(best) and len({type(c) for c in m}) == 1:
                best = list(m)
        if not best:
            raise RuntimeError(f"could not find the transformer blocks of {type(self.model).__name__}")
        return {type(best[0])}

    def save_pretrained(self, path: str | Path, tokenizer: Any | None = None, **kwargs: Any) -> Path:
        """Write the wrapped model (and optionally a tokenizer) as a transformers folder; returns the path.

        ``config.json`` keeps ``"is_causal": false``: in transformers >= 5.2 a plain
        ``AutoModelForCausalLM.from_pretrained(path)`` (or ``AutoModelForMaskedLM``) is bidirectional and gives
        the same logits; ``HFBackbone(vocab_size, pretrained=path)`` wraps it again. Remote-code models also
        need ``trust_remote_code=True`` to load back.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path), **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path

    def extra_repr(self) -> str:
        return f"source={self.source}, auto_class={self.auto_class}, vocab_size={self.vocab_size}"


def export_pretrained(model: nn.Module, path: str | Path, tokenizer: Any | None = None, **kwargs: Any) -> Path:
    """Save the :class:`HFBackbone` of ``model`` (a MaskedDiffusionLM or the backbone) as a transformers folder."""
    backbone = model if isinstance(model, HFBackbone) else getattr(model, "backbone", None)
    if not isinstance(backbone, HFBackbone):
        raise TypeError(
            f"export_pretrained needs an HFBackbone or a module whose .backbone is one, got {type(model).__name__}"
        )
    return backbone.save_pretrained(path, tokenizer=tokenizer, **kwargs)

