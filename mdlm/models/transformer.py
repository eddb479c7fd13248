"""mdlm's own bidirectional transformer backbone (nanoGPT-like, no causal mask, no time input).

Pre-norm blocks ``x + Attn(Norm(x))``, ``x + MLP(Norm(x))``; attention through
``F.scaled_dot_product_attention`` with ``is_causal=False`` and an optional key-padding mask;
rotary (default) or learned absolute positions; GELU MLP; a final norm and a linear head.

Size presets (non-embedding parameters ≈ 12 · n_layer · d_model²):

=========  =======  ======  =======  ============================
preset     n_layer  n_head  d_model  non-embedding parameters
=========  =======  ======  =======  ============================
``tiny``   2        4       128      0.4M
``small``  4        4       256      3.1M
``10m``    6        6       384      10.6M
``50m``    10       10      640      49.2M (the paper's 50M scale)
=========  =======  ======  =======  ============================
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdlm.models.kv_cache import KVCache

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "d_model": 128},
    "small": {"n_layer": 4, "n_head": 4, "d_model": 256},
    "10m": {"n_layer": 6, "n_head": 6, "d_model": 384},
    "50m": {"n_layer": 10, "n_head": 10, "d_model": 640},
}


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq_len, head_dim/2] with frequencies base^(-2j/head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_{2j}, x_{2j+1}) of x [B, H, L, D] by the angles of each position."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, rotary: bool) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.head_dim = d_model // n_head
        if rotary and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head dimension, got {self.head_dim}")
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        self.rotary = rotary

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        kv_start: int | None = None,
    ) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            if kv_start is None:  # full forward: record this layer's keys/values
                kv_cache.store(layer, k, v)
            else:  # span forward: the other positions' keys/values come from the cache
                k, v = kv_cache.span(layer, kv_start, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model, bias=False)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    raise ValueError(f"norm={kind!r} must be 'layernorm' or 'rmsnorm'")


class TransformerBlock(nn.Module):
    """One pre-norm block; the unit FSDP wraps and activation checkpointing recomputes."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float, dropout: float, rotary: bool, norm: str) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, d_model)
        self.attn = SelfAttention(d_model, n_head, dropout, rotary)
        self.norm2 = make_norm(norm, d_model)
        self.mlp = MLP(d_model, int(mlp_ratio * d_model), dropout)

    def forward(self, x: torch.Tensor, rope=None, attn_mask=None, kv_cache=None, layer: int = 0, kv_start=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask, kv_cache, layer, kv_start)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Bidirectional transformer: ``forward(input_ids [B, L], attention_mask [B, L] | None) -> logits [B, L, V]``.

    Args:
        vocab_size: number of token ids (the [MASK] token included); linked from the data module.
        preset: one of ``tiny``, ``small``, ``10m``, ``50m``; explicit ``n_layer``/``n_head``/``d_model`` override it.
        positional: ``rotary`` or ``learned`` absolute position embeddings.
        max_seq_len: longest sequence (size of the position tables).
        attention_mask: True marks real tokens; padded keys are hidden from every query.

    ``supports_block_cache = True``: :func:`mdlm.generation.generate` can decode with a block KV cache
    (``kv_cache``/``kv_start`` of :meth:`forward`, see :mod:`mdlm.models.kv_cache`).
    """

    supports_block_cache = True

    def __init__(
        self,
        vocab_size: int,
        preset: str = "tiny",
        n_layer: int | None = None,
        n_head: int | None = None,
        d_model: int | None = None,
        mlp_ratio: float = 4.0,
        max_seq_len: int = 1024,
        positional: Literal["rotary", "learned"] = "rotary",
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        dropout: float = 0.0,
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {sorted(PRESETS)}")
        if positional not in ("rotary", "learned"):
            raise ValueError(f"positional={positional!r} must be 'rotary' or 'learned'")
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size} must be >= 2")
        cfg = dict(PRESETS[preset])
        for key, value in (("n_layer", n_layer), ("n_head", n_head), ("d_model", d_model)):
            if value is not None:
                cfg[key] = value
        self.vocab_size = vocab_size
        self.n_layer, self.n_head, self.d_model = cfg["n_layer"], cfg["n_head"], cfg["d_model"]
        self.max_seq_len = max_seq_len
        self.positional = positional
        self.tok_emb = nn.Embedding(vocab_size, self.d_model)
        self.pos_emb = nn.Embedding(max_seq_len, self.d_model) if positional == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(self.d_model, self.n_head, mlp_ratio, dropout, positional == "rotary", norm)
            for _ in range(self.n_layer)
        )
        self.norm_f = make_norm(norm, self.d_model)
        self.lm_head = nn.Linear(self.d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.head_dim = self.d_model // self.n_head
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        kv_start: int | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, L, V]``; with ``kv_cache``, block-cached decoding (:mod:`mdlm.models.kv_cache`).

        ``kv_cache`` given, ``kv_start`` None: a full forward that also (re)fills ``kv_cache`` with
        every layer's keys/values. ``kv_start=s``: ``input_ids [B, n]`` are the tokens at canvas
        positions ``[s, s+n)``; keys/values of positions ``[0, s)`` and ``[s+n, kv_cache.length)``
        come from the cache, those of the span are computed; returns logits ``[B, n, V]``.
        ``attention_mask`` always covers the whole canvas ``[B, max(kv_cache.length, s+n)]``.
        """
        B, L = input_ids.shape
        start = 0
        total = L
        if kv_start is not None:
            if kv_cache is None:
                raise ValueError("kv_start needs a kv_cache filled by a full forward")
            start = int(kv_start)
            if not 0 <= start <= kv_cache.length:
                raise ValueError(f"kv_start={start} must lie in [0, {kv_cache.length}] (the cached positions)")
            if kv_cache.batch_size != B:
                raise ValueError(f"the KV cache has batch size {kv_cache.batch_size} but input_ids have {B} rows")
            total = max(kv_cache.length, start + L)
        elif kv_cache is not None:
            kv_cache.clear()
        if total > self.max_seq_len:
            raise ValueError(f"sequence length {total} exceeds max_seq_len={self.max_seq_len}")
        if attention_mask is not None and attention_mask.shape != (B, total):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; it must cover the whole canvas [{B}, {total}]"
            )
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            if attention_mask is not None:
                # left padding: real tokens count positions from 0 (pads take position 0, hidden anyway)
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start : start + L]
            else:
                positions = torch.arange(start, start + L, device=input_ids.device)
            x = x + self.pos_emb(positions)
        else:
            cos, sin = rotary_tables(total, self.head_dim, device=input_ids.device)
            rope = (cos[start : start + L], sin[start : start + L])
        x = self.drop(x)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, total]: keys
        if kv_cache is None:
            for block in self.blocks:
                x = block(x, rope, mask)
        else:
            for layer, block in enumerate(self.blocks):
                x = block(x, rope, mask, kv_cache=kv_cache, layer=layer, kv_start=kv_start)
        return self.lm_head(self.norm_f(x))
