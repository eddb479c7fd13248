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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
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

    def forward(self, x: torch.Tensor, rope=None, attn_mask=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Bidirectional transformer: ``forward(input_ids [B, L], attention_mask [B, L] | None) -> logits [B, L, V]``.

    Args:
        vocab_size: number of token ids (the [MASK] token included); linked from the data module.
        preset: one of ``tiny``, ``small``, ``10m``, ``50m``; explicit ``n_layer``/``n_head``/``d_model`` override it.
        positional: ``rotary`` or ``learned`` absolute position embeddings.
        max_seq_len: longest sequence (size of the position tables).
        attention_mask: True marks real tokens; padded keys are hidden from every query.
    """

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L = input_ids.shape
        if L > self.max_seq_len:
            raise ValueError(f"sequence length {L} exceeds max_seq_len={self.max_seq_len}")
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            if attention_mask is not None:
                # left padding: real tokens count positions from 0 (pads take position 0, hidden anyway)
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                positions = torch.arange(L, device=input_ids.device)
            x = x + self.pos_emb(positions)
        else:
            rope = rotary_tables(L, self.head_dim, device=input_ids.device)
        x = self.drop(x)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: keys
        for block in self.blocks:
            x = block(x, rope, mask)
        return self.lm_head(self.norm_f(x))
