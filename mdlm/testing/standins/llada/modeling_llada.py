"""Stand-in for LLaDA's published ``modeling_llada.py`` (written for mdlm's tests, not copied).

Traits reproduced (from the files as published on the Hub before October 2025):

- ``LLaDAModelLM.__init__(config, model=None, init_params=False)`` rebuilds a ``ModelConfig`` and
  forces ``init_device = "cpu"``; every layer is built with ``device=config.init_device``, so a
  ``torch.device("meta")`` context does not keep it unallocated;
- no ``post_init()``, a transformers-4 ``tie_weights(self)``, no ``supports_gradient_checkpointing``
  (its own ``set_activation_checkpointing`` instead), no sdpa/flash support flags (transformers
  refuses ``attn_implementation="sdpa"``);
- rotary tables kept in a plain dict cache, not in buffers (nothing of RoPE in the state dict);
  positions are always 0..L-1 (no ``position_ids`` argument);
- ``attention_mask`` is accepted and ignored: attention is bidirectional over every position,
  padding included;
- ``forward`` falls back to ``self.config.use_cache`` when ``use_cache`` is None (an AttributeError
  under transformers 5, which drops that attribute) and refuses ``use_cache=True``;
- logits as wide as ``embedding_size`` (padded beyond ``vocab_size``);
- parameter names ``model.transformer.{wte, ln_f, ff_out}``, ``model.transformer.blocks.{i}.{q_proj,
  k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out, attn_norm, ff_norm}``.
"""

import math
from dataclasses import fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig, ModelConfig


def create_model_config_from_pretrained_config(config):
    return ModelConfig(**{f.name: getattr(config, f.name) for f in fields(ModelConfig) if hasattr(config, f.name)})


class RMSLayerNorm(nn.Module):
    def __init__(self, config, size):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.weight = nn.Parameter(torch.ones(size, device=config.init_device))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


_ROPE_CACHE = {}


def _rope_tables(seq_len, dim, theta, device):
    key = (seq_len, dim, theta, str(device))
    if key not in _ROPE_CACHE:
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float) / dim))
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        _ROPE_CACHE[key] = (emb.sin()[None, None], emb.cos()[None, None])
    return _ROPE_CACHE[key]


def _rotate(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class LLaDALlamaBlock(nn.Module):
    def __init__(self, layer_id, config):
        super().__init__()
        d, dev = config.d_model, config.init_device
        self.config = config
        self.layer_id = layer_id
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        head = d // config.n_heads
        self.attn_norm = RMSLayerNorm(config, d)
        self.ff_norm = RMSLayerNorm(config, d)
        self.q_proj = nn.Linear(d, d, bias=False, device=dev)
        self.k_proj = nn.Linear(d, self.n_kv_heads * head, bias=False, device=dev)
        self.v_proj = nn.Linear(d, self.n_kv_heads * head, bias=False, device=dev)
        self.attn_out = nn.Linear(d, d, bias=False, device=dev)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False, device=dev)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False, device=dev)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False, device=dev)
        self.activation_checkpointing = False

    def _attention(self, x):
        B, L, d = x.shape
        head = d // self.n_heads
        q = self.q_proj(x).view(B, L, self.n_heads, head).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, head).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, head).transpose(1, 2)
        sin, cos = _rope_tables(L, head, self.config.rope_theta, x.device)
        q = (q.float() * cos + _rotate(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + _rotate(k.float()) * sin).to(v.dtype)
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        # the published code: "MDM set causal to False, and with no attn_mask"
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)
        return self.attn_out(y.transpose(1, 2).reshape(B, L, d))

    def _block(self, x):
        x = x + self._attention(self.attn_norm(x))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))

    def forward(self, x, attention_bias=None):
        if self.activation_checkpointing and self.training:
            return checkpoint(self._block, x, use_reentrant=False)
        return self._block(x)

    def reset_parameters(self):
        for module in (self.q_proj, self.k_proj, self.v_proj, self.ff_proj, self.up_proj):
            nn.init.trunc_normal_(module.weight, std=self.config.init_std, a=-3 * self.config.init_std, b=3 * self.config.init_std)
        std = self.config.init_std / math.sqrt(2 * (self.layer_id + 1))
        for module in (self.attn_out, self.ff_out):
            nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
        self.attn_norm.weight.data.fill_(1.0)
        self.ff_norm.weight.data.fill_(1.0)


class LLaDAModel(nn.Module):
    def __init__(self, config, init_params=False):
        super().__init__()
        self.config = config
        rows = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(rows, config.d_model, device=config.init_device),
                ln_f=RMSLayerNorm(config, config.d_model),
                blocks=nn.ModuleList([LLaDALlamaBlock(i, config) for i in range(config.n_layers)]),
            )
        )
        if not config.weight_tying:
            self.transformer.update({"ff_out": nn.Linear(config.d_model, rows, bias=False, device=config.init_device)})
        if init_params and config.init_device != "meta":
            self.reset_parameters()

    def set_activation_checkpointing(self, strategy):
        for block in self.transformer.blocks:
            block.activation_checkpointing = strategy is not None

    def reset_parameters(self):
        nn.init.normal_(self.transformer.wte.weight, std=self.config.init_std)
        for block in self.transformer.blocks:
            block.reset_parameters()
        if hasattr(self.transformer, "ff_out"):
            nn.init.normal_(self.transformer.ff_out.weight, std=self.config.init_std)
        self.transformer.ln_f.weight.data.fill_(1.0)

    def forward(self, input_ids, input_embeddings=None, attention_mask=None, attention_bias=None,
                past_key_values=None, use_cache=False, output_hidden_states=None):
        assert past_key_values is None and not use_cache, "The kvcache is not supported for MDM."
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        if attention_mask is not None and 0.0 in attention_mask:  # built, then never used (as published)
            mask = attention_mask.to(dtype=torch.float)
            attention_bias = (1.0 - mask)[:, None, None, :] * torch.finfo(mask.dtype).min
        for block in self.transformer.blocks:
            x = block(x, attention_bias=attention_bias)
        x = self.transformer.ln_f(x)
        if self.config.weight_tying:
            return F.linear(x, self.transformer.wte.weight)
        return self.transformer.ff_out(x)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDALlamaBlock"]

    def __init__(self, config, model=None, init_params=False):
        super().__init__(config)
        if not model:
            model_config = create_model_config_from_pretrained_config(config)
            # "always on CPU to start with so we don't run out of GPU memory"
            model_config.init_device = "cpu"
            self.model = LLaDAModel(model_config, init_params=init_params)
        else:
            self.model = model

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache_position=None):
        if use_cache is None:
            use_cache = self.config.use_cache
        if output_attentions:
            raise ValueError("output_attentions is not yet supported in LLaDA")
        logits = self.model(input_ids, input_embeddings=inputs_embeds, attention_mask=attention_mask,
                            attention_bias=attention_bias, past_key_values=past_key_values, use_cache=use_cache)
        return CausalLMOutputWithPast(logits=logits)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        if self.config.weight_tying:
            return self.model.transformer.wte
        return self.model.transformer.ff_out

    def set_output_embeddings(self, value):
        if self.config.weight_tying:
            self.model.transformer.wte = value
        else:
            self.model.transformer.ff_out = value

    def tie_weights(self):
        if self.config.weight_tying:
            self.model.transformer.ff_out = self.model.transformer.wte


AutoModel.register(LLaDAConfig, LLaDAModelLM)
