"""mdlm's bidirectional Transformer (a masked diffusion LM) as a ``transformers`` model.

Standalone: imports only ``torch`` and ``transformers`` (``mdlm export`` copies this file and
``configuration_mdlm.py`` into the exported folder; mdlm need not be installed)::

    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    logits = model(input_ids).logits          # [B, L, vocab_size], every position sees every other

The computation is mdlm's ``mdlm.models.transformer.Transformer`` operation for operation (same
parameter names, so the logits are identical): pre-norm blocks ``x + Attn(Norm(x))``,
``x + MLP(Norm(x))``, non-causal ``scaled_dot_product_attention`` with a key-padding mask, rotary or
learned absolute positions, a GELU MLP, a final norm and a linear head.

``attention_mask`` ([B, L], 1 = real token) hides padded keys from every query. With learned
positions, real tokens count their positions from the first real token (left padding keeps the
unpadded positions); rotary positions are always 0..L-1 (as in mdlm).

This is a masked diffusion model, not a causal LM: to generate, start from ``config.mask_token_id``
at the positions to fill and unmask them over several steps (e.g. ``mdlm.generation.generate``, or
the loop in the README of the exported folder); never predict ``mask_token_id`` itself.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_mdlm import MDLMTransformerConfig

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def rotary_tables(seq_len, head_dim, base=10000.0, device=None):
    """cos/sin tables [seq_len, head_dim/2] with frequencies base^(-2j/head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs (x_{2j}, x_{2j+1}) of x [B, H, L, D] by the angles of each position."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def make_norm(kind, d_model):
    if kind == "layernorm":
        return nn.LayerNorm(d_model, bias=False)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    raise ValueError(f"norm={kind!r} must be 'layernorm' or 'rmsnorm'")


class MDLMSelfAttention(nn.Module):
    def __init__(self, d_model, n_head, dropout, rotary):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        self.rotary = rotary

    def forward(self, x, rope, attn_mask):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class MDLMMLP(nn.Module):
    def __init__(self, d_model, hidden, dropout):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class MDLMBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm1 = make_norm(config.norm, config.d_model)
        self.attn = MDLMSelfAttention(config.d_model, config.n_head, config.dropout, config.positional == "rotary")
        self.norm2 = make_norm(config.norm, config.d_model)
        self.mlp = MDLMMLP(config.d_model, config.mlp_hidden, config.dropout)

    def forward(self, x, rope=None, attn_mask=None):
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


class MDLMTransformerForMaskedLM(PreTrainedModel):
    """mdlm's bidirectional Transformer: ``forward(input_ids, attention_mask=None).logits`` -> [B, L, V]."""

    config_class = MDLMTransformerConfig
    base_model_prefix = "mdlm"
    main_input_name = "input_ids"
    _no_split_modules = ["MDLMBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        if config.positional not in ("rotary", "learned"):
            raise ValueError(f"positional={config.positional!r} must be 'rotary' or 'learned'")
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_seq_len, d) if config.positional == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(MDLMBlock(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config.norm, d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.head_dim = d // config.n_head
        if getattr(config, "tie_word_embeddings", False):
            self._tied_weights_keys = {"lm_head.weight": "tok_emb.weight"} if _TRANSFORMERS_5 else ["lm_head.weight"]
            self.lm_head.weight = self.tok_emb.weight
        else:
            self._tied_weights_keys = {} if _TRANSFORMERS_5 else []
        self.post_init()

    # ------------------------------------------------------------------ transformers plumbing
    def _init_weights(self, module):
        """mdlm's (GPT-2) initialisation: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer))."""
        std = 0.02
        if isinstance(module, nn.Linear):
            residual = any(module is b.attn.proj or module is b.mlp.proj for b in getattr(self, "blocks", ()))
            nn.init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer) if residual else std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids=None, attention_mask=None, labels=None, return_dict=None, **kwargs):
        """Logits ``[B, L, vocab_size]`` of ``input_ids [B, L]``; ``attention_mask [B, L]`` (1 = real token) hides
        padded keys. ``labels`` (-100 = ignored): mean cross-entropy as ``loss``. Other keywords (``use_cache``,
        ``output_attentions`` ...) are accepted and ignored; ``position_ids``/``inputs_embeds`` are refused."""
        for name in ("position_ids", "inputs_embeds"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{type(self).__name__} does not take {name} (positions follow attention_mask)")
        if input_ids is None:
            raise ValueError("input_ids is required")
        B, L = input_ids.shape
        if L > self.config.max_seq_len:
            raise ValueError(f"sequence length {L} exceeds max_seq_len={self.config.max_seq_len}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, L):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected [{B}, {L}]")
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            if attention_mask is not None:
                # left padding: real tokens count positions from 0 (pads take position 0, hidden anyway)
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                positions = torch.arange(0, L, device=input_ids.device)
            x = x + self.pos_emb(positions)
        else:
            rope = rotary_tables(L, self.head_dim, base=self.config.rope_base, device=input_ids.device)
        x = self.drop(x)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: keys
        for block in self.blocks:
            x = block(x, rope, mask)
        logits = self.lm_head(self.norm_f(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits)

