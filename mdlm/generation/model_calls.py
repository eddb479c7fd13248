"""How the decoding loop calls a model, and what it reads off the model and its wrappers.

:func:`_call_model` calls a model under the contract of :mod:`mdlm.generation` and checks the
shape of the logits. :func:`padding_hidden` and :func:`block_cache_model` read the model, or the
nearest object it wraps (``.module``, ``.backbone``, ``._orig_mod``; :func:`_wrapped`): whether it
hides padding, and which object (if any) takes a block KV cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from torch import Tensor


def _call_model(model: Callable, x: Tensor, attention_mask: Tensor | None, **extra: Any) -> Tensor:
    if attention_mask is None:
        out = model(x, **extra)
    else:
        out = model(x, attention_mask=attention_mask, **extra)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model must return logits of shape [B, L, V] = [{x.shape[0]}, {x.shape[1]}, V] "
            f"for input_ids of shape {tuple(x.shape)}; got {got}"
        )
    return logits


def padding_hidden(model: Any) -> bool:
    """Does ``model`` hide padding from its attention (i.e. honour ``attention_mask``)?

    Reads the attribute ``padding_hidden`` of ``model``, else of the objects it wraps
    (``.module``, ``.backbone``, ``._orig_mod``; nearest first). Absent everywhere: ``True``.
    ``False`` marks a padding-blind model (LLaDA: its attention ignores ``attention_mask``), for
    which :func:`generate` and :func:`infill` never batch rows of different real lengths.
    """
    for obj in _wrapped(model):
        value = getattr(obj, "padding_hidden", None)
        if value is not None:
            return bool(value)
    return True


def _wrapped(model: Any) -> Iterator[Any]:
    """``model``, then the objects it wraps (``.module``, ``.backbone``, ``._orig_mod``), nearest first."""
    queue, seen = [model], set()
    while queue:
        obj = queue.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        for name in ("module", "backbone", "_orig_mod"):
            inner = getattr(obj, name, None)
            if inner is not None and not isinstance(inner, ModuleType):
                queue.append(inner)


def _accepts_cache(obj: Any) -> bool:
    """Does ``obj.forward`` (or ``obj``) take ``kv_cache`` and ``kv_start`` (e.g. not replaced)?"""
    try:
        params = inspect.signature(getattr(obj, "forward", obj)).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return "kv_cache" in params and "kv_start" in params


def block_cache_model(model: Any) -> Callable | None:
    """The object to call for block-cached decoding, or ``None`` (exact path).

    ``model`` itself if its attribute ``supports_block_cache`` is ``True`` (and its ``forward``
    takes ``kv_cache`` and ``kv_start``), else the nearest of the objects it wraps (``.module``, ``.backbone``, ``._orig_mod``) that has it; such an object
    is called as ``obj(ids, attention_mask=..., kv_cache=..., kv_start=...)`` (see
    :mod:`mdlm.models.kv_cache`) instead of ``model``, so a wrapper found this way must not change
    the logits. mdlm's :class:`~mdlm.models.transformer.Transformer` has it; Hugging Face
    backbones, LLaDA/Dream and plain callables do not.
    """
    for obj in _wrapped(model):
        if getattr(obj, "supports_block_cache", False) is True and _accepts_cache(obj):
            return obj
    return None
