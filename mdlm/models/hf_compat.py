"""Compatibility shims between mdlm's Hugging Face backbone and the installed ``transformers``.

:class:`mdlm.models.hf.HFBackbone` targets transformers 5 (bidirectional causal LMs need >= 5.2). Remote
code (a checkpoint's own ``modeling_*.py``) written for transformers 4.x does not load under 5.x as is;
these shims patch the gaps without changing the remote code itself:

* :func:`_transformers_version`: ``(major, minor)`` of the installed transformers, for the >= 5.2 check
  of bidirectional causal LMs (:data:`mdlm.models.hf.MIN_TRANSFORMERS_FOR_CAUSAL`).
* :func:`_legacy_compatible` (with :func:`_init_lacks_post_init` and :func:`_tie_weights_is_legacy`): a
  same-named subclass of a 4.x remote model class that calls ``post_init()`` when ``__init__`` does not
  (LLaDA), accepts 5.x's ``tie_weights(missing_keys=..., recompute_mapping=...)`` keywords (LLaDA's
  ``tie_weights(self)``), and turns a 4.x list ``_tied_weights_keys`` into 5.x's ``{target: source}``
  dict (Dream).
* :func:`_ensure_rope_default` (with :func:`_default_rope_parameters`): transformers 5 dropped
  ``ROPE_INIT_FUNCTIONS['default']``, which 4.x remote code (Dream) looks up; it is put back.
* :func:`_shim_generation_config`: a 4.x generation config's ``validate(self, is_init=False)`` (Dream's)
  accepts and drops the ``strict=`` / ``user_set_attributes=`` keywords transformers 5 passes.

Each shim is a no-op for code that already fits transformers 5. They are exercised by the LLaDA and
Dream stand-ins of :mod:`mdlm.testing.standins` (``tests/models/test_families.py``); the real remote
code was run under transformers 5.24 (``docs/models.md``).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn as nn

# the shims' log lines keep the logger of the module they were written in
log = logging.getLogger("mdlm.models.hf")


def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _tie_weights_is_legacy(cls: type) -> bool:
    """True when ``cls`` overrides ``tie_weights`` with a 4.x signature (no ``missing_keys`` / ``**kwargs``)."""
    from transformers import PreTrainedModel

    tie = getattr(cls, "tie_weights", None)
    if tie is None or tie is PreTrainedModel.tie_weights:
        return False
    try:
        params = inspect.signature(tie).parameters
    except (TypeError, ValueError):
        return False
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return not has_var_kw and "missing_keys" not in params


def _init_lacks_post_init(cls: type) -> bool:
    """True when no ``__init__`` in the remote part of ``cls``'s MRO mentions ``post_init``."""
    from transformers import PreTrainedModel

    for klass in cls.__mro__:
        if klass is PreTrainedModel or klass.__module__.startswith("transformers."):
            break
        if "__init__" in vars(klass):
            try:
                if "post_init" in inspect.getsource(klass.__init__):
                    return False
            except (OSError, TypeError):
                return True
    return True


def _legacy_compatible(cls: type) -> type:
    """Return ``cls`` or, for transformers-4.x remote code, a same-named subclass that loads under 5.x.

    The subclass (same ``__name__``/``__module__``, so ``save_pretrained`` writes the original class into
    ``auto_map`` and copies the original code)

    - calls ``post_init()`` after ``__init__`` when the remote code did not (LLaDA);
    - accepts (and drops) the ``missing_keys``/``recompute_mapping`` arguments that transformers 5 passes to
      ``tie_weights`` (LLaDA's ``tie_weights(self)``);
    - turns a list-typed ``_tied_weights_keys`` (4.x: ``["lm_head.weight"]``, Dream) into 5.x's
      ``{target: source}`` mapping onto the input embedding (5.x calls ``.keys()``/``.items()`` on it).
    """
    fix_init, fix_tie = _init_lacks_post_init(cls), _tie_weights_is_legacy(cls)
    tied_list = getattr(cls, "_tied_weights_keys", None)
    fix_tied = isinstance(tied_list, (list, tuple))
    if not (fix_init or fix_tie or fix_tied):
        return cls
    namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    if fix_tied:
        namespace["_tied_weights_keys"] = None  # resolved per instance below, once the embedding exists
    if fix_init or fix_tied:

        def __init__(self, config, *args, **kwargs):
            cls.__init__(self, config, *args, **kwargs)
            if fix_tied:
                embedding = self.get_input_embeddings().weight
                source = next(name for name, p in self.named_parameters(remove_duplicate=False) if p is embedding)
                self._tied_weights_keys = {key: source for key in tied_list}
                if hasattr(self, "all_tied_weights_keys"):
                    self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)
                    if getattr(config, "tie_word_embeddings", False):
                        self.tie_weights()
            if not hasattr(self, "all_tied_weights_keys"):
                self.post_init()

        namespace["__init__"] = __init__
    if fix_tie:

        def tie_weights(self, *args, **kwargs):
            return cls.tie_weights(self)

        namespace["tie_weights"] = tie_weights
    fixes = [name for name, on in (("post_init", fix_init), ("tie_weights", fix_tie), ("_tied_weights_keys", fix_tied)) if on]
    log.info(
        "remote code %s.%s predates transformers 5: loading it with a shim for %s",
        cls.__module__, cls.__name__, ", ".join(fixes),
    )
    return type(cls.__name__, (cls,), namespace)

def _default_rope_parameters(config, device=None, seq_len=None, **_: Any) -> tuple[torch.Tensor, float]:
    r"""transformers-4's ``'default'`` RoPE: :math:`\theta_j = b^{-2j/d}`, ``d = head_dim * partial_rotary_factor``."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    base = getattr(config, "rope_theta", None) or params.get("rope_theta", 10000.0)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (float(base) ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


def _ensure_rope_default() -> None:
    """transformers 5 dropped ``ROPE_INIT_FUNCTIONS['default']``, which 4.x remote code (Dream) looks up when
    building its rotary embedding (and again when mdlm rebuilds ``inv_freq`` after meta init). Put it back.

    Harmless to transformers' own models: they compute the default RoPE themselves and look the table up
    only for other rope types."""
    from transformers import modeling_rope_utils

    if "default" not in modeling_rope_utils.ROPE_INIT_FUNCTIONS:
        modeling_rope_utils.ROPE_INIT_FUNCTIONS["default"] = _default_rope_parameters
        log.info("transformers %s has no ROPE_INIT_FUNCTIONS['default'] (4.x remote code needs it): added", _transformers_version())


def _shim_generation_config(model: nn.Module) -> None:
    """4.x generation configs (Dream's) define ``validate(self, is_init=False)``; transformers 5 calls it with
    ``strict=`` / ``user_set_attributes=`` (``save_pretrained``, ``update``). Accept and drop those keywords."""
    config = getattr(model, "generation_config", None)
    validate = getattr(type(config), "validate", None) if config is not None else None
    if validate is None:
        return
    params = inspect.signature(validate).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or "strict" in params:
        return
    known = set(params)

    def compatible(self, *args, **kwargs):
        return validate(self, *args, **{k: v for k, v in kwargs.items() if k in known})

    log.info("generation config %s predates transformers 5: validate() accepts the new keywords", type(config).__name__)
    config.__class__ = type(type(config).__name__, (type(config),), {"validate": compatible})
