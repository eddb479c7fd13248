"""Stand-in for LLaDA's published ``configuration_llada.py`` (written for mdlm's tests, not copied).

Traits reproduced: a transformers-4 ``PretrainedConfig`` (``model_type = "llada"``) whose values live
in a separate dataclass (``ModelConfig``) that the modeling file rebuilds; ``use_cache`` is an
``__init__`` argument (transformers 5 drops it from the attributes, so ``config.use_cache`` is
missing); ``hidden_size``/``num_attention_heads``/``num_hidden_layers`` are read-only properties;
``embedding_size`` pads the vocabulary; ``init_device`` is stored but the model ignores it.
"""

from dataclasses import asdict, dataclass
from typing import Optional

from transformers import AutoConfig, PretrainedConfig


@dataclass
class ModelConfig:
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: Optional[int] = None
    n_layers: int = 2
    mlp_hidden_size: int = 128
    vocab_size: int = 100
    embedding_size: Optional[int] = 128
    max_sequence_length: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    mask_token_id: int = 99
    eos_token_id: int = 98
    pad_token_id: int = 98
    init_device: Optional[str] = None
    init_std: float = 0.02


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, use_cache: bool = False, **kwargs):
        values = asdict(ModelConfig())
        values.update({k: v for k, v in kwargs.items() if k in values})
        for key, value in values.items():
            setattr(self, key, value)
        extra = {k: v for k, v in kwargs.items() if k not in values}
        super().__init__(use_cache=use_cache, **extra)

    @property
    def hidden_size(self):
        return self.d_model

    @property
    def num_attention_heads(self):
        return self.n_heads

    @property
    def num_hidden_layers(self):
        return self.n_layers


AutoConfig.register("llada", LLaDAConfig)
