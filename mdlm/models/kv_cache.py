"""Per-layer keys/values of a canvas, for block-cached diffusion decoding (Fast-dLLM style).

A bidirectional model has no exact KV cache: every key depends on every token. Block caching
approximates one (Fast-dLLM, arXiv 2505.22618): while the current block is decoded, the keys and
values of the other positions are taken from the last full forward pass instead of being
recomputed. :class:`KVCache` holds them; a model that supports it (mdlm's
:class:`~mdlm.models.transformer.Transformer`, flag ``supports_block_cache = True``) is called as

* ``model(x, attention_mask, kv_cache=cache)`` — a full forward over the canvas ``x [B, T]`` that
  also stores every layer's keys (after rotary) and values of positions ``0..T-1`` in ``cache``,
  replacing its content; returns logits ``[B, T, V]``;
* ``model(x[:, s:s+n], attention_mask, kv_cache=cache, kv_start=s)`` — a span forward: queries are
  the ``n`` given tokens at canvas positions ``[s, s+n)``; each layer attends to the cache's keys
  and values at positions ``[0, s)`` and ``[s+n, cache.length)`` and to freshly computed ones at
  ``[s, s+n)``; returns logits ``[B, n, V]``. ``attention_mask`` (if any) covers the whole canvas
  ``[B, max(cache.length, s+n)]``. The cache is not modified.

Given keys/values from the same canvas state, a span forward equals the full forward at the
span's positions (up to floating-point rounding). :func:`mdlm.generation.generate` uses it with
``cache="prefix"`` (span = current block and everything after it; the cache is cropped to the
positions before the block) or ``cache="dual"`` (span = the current block only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """``keys[l]``, ``values[l]``: ``[B, H, T, D]`` of layer ``l`` at canvas positions ``0..T-1``."""

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of cached positions ``T`` (0 when empty)."""
        return int(self.keys[0].shape[2]) if self.keys else 0

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    def clear(self) -> None:
        self.keys.clear()
        self.values.clear()

    def store(self, layer: int, key: Tensor, value: Tensor) -> None:
        """Record layer ``layer``'s keys/values (called in layer order by a full forward)."""
        if layer != len(self.keys):
            raise RuntimeError(f"KVCache.store: layer {layer} stored out of order ({len(self.keys)} stored)")
        self.keys.append(key)
        self.values.append(value)

    def crop(self, length: int) -> None:
        """Keep positions ``[0, length)`` only (prefix caching drops the rest)."""
        self.keys[:] = [k[:, :, :length] for k in self.keys]
        self.values[:] = [v[:, :, :length] for v in self.values]

    def select(self, rows: Tensor) -> None:
        """Keep the batch rows ``rows`` (a LongTensor of indices), in that order."""
        self.keys[:] = [k.index_select(0, rows) for k in self.keys]
        self.values[:] = [v.index_select(0, rows) for v in self.values]

    def span(self, layer: int, start: int, key: Tensor, value: Tensor) -> tuple:
        """Keys/values of layer ``layer`` over the whole canvas with positions ``[start, start+n)``
        taken from the fresh ``key``/``value [B, H, n, D]`` and the rest from the cache."""
        if layer >= len(self.keys):
            raise ValueError(
                f"the KV cache holds {len(self.keys)} layers, layer {layer} was asked for: "
                "fill it with a full forward (kv_start=None) first"
            )
        n = key.shape[2]
        ck, cv = self.keys[layer], self.values[layer]
        if ck.shape[0] != key.shape[0]:
            raise ValueError(f"the KV cache has batch size {ck.shape[0]} but the span has {key.shape[0]}")
        key = key.to(ck.dtype)
        value = value.to(cv.dtype)
        return (
            torch.cat([ck[:, :, :start], key, ck[:, :, start + n :]], dim=2),
            torch.cat([cv[:, :, :start], value, cv[:, :, start + n :]], dim=2),
        )
