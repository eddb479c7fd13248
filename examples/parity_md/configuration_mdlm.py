"""Configuration of mdlm's bidirectional Transformer (a masked diffusion LM) for ``transformers``.

Standalone: imports only ``transformers`` (written by ``mdlm export``; mdlm need not be installed).
"""

from transformers import PretrainedConfig


class MDLMTransformerConfig(PretrainedConfig):
    """Hyper-parameters of ``MDLMTransformerForMaskedLM`` (mdlm's ``mdlm.models.transformer.Transformer``).

    Args:
        vocab_size: token ids, the [MASK] token included.
        n_layer, n_head, d_model: depth, attention heads, width.
        mlp_hidden: width of the GELU MLP (``mlp_ratio * d_model`` in mdlm).
        max_seq_len: longest sequence (size of the learned position table; rotary has no table).
        positional: ``rotary`` or ``learned`` absolute positions.
        norm: ``layernorm`` (no bias) or ``rmsnorm``.
        rope_base: rotary base (10000 in mdlm).
        dropout: dropout of embeddings, attention and MLP (training only).
        tie_word_embeddings: the output layer shares the token embedding.
        mask_token_id: the absorbing [MASK] id the model was trained with: start generation from it.
        weights: ``ema`` or ``raw``: which weights of the training run ``model.safetensors`` holds.
    """

    model_type = "mdlm_transformer"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "mlp_hidden",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(
        self,
        vocab_size: int = 3,
        n_layer: int = 2,
        n_head: int = 4,
        d_model: int = 128,
        mlp_hidden: int = 512,
        max_seq_len: int = 1024,
        positional: str = "rotary",
        norm: str = "layernorm",
        rope_base: float = 10000.0,
        dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        mask_token_id: int | None = None,
        weights: str | None = None,
        **kwargs,
    ) -> None:
        if positional not in ("rotary", "learned"):
            raise ValueError(f"positional={positional!r} must be 'rotary' or 'learned'")
        if norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm={norm!r} must be 'layernorm' or 'rmsnorm'")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        # set after the base class, which (transformers 4) may reset tie_word_embeddings to its default
        self.vocab_size = vocab_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.d_model = d_model
        self.mlp_hidden = mlp_hidden
        self.max_seq_len = max_seq_len
        self.positional = positional
        self.norm = norm
        self.rope_base = rope_base
        self.dropout = dropout
        self.tie_word_embeddings = tie_word_embeddings
        self.mask_token_id = mask_token_id
        self.weights = weights
