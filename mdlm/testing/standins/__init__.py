"""Local remote-code stand-ins for LLaDA and Dream, written for mdlm (see each folder's docstrings for the traits).

:func:`make_folder` writes a model folder exactly as a Hub snapshot is laid out: the modeling and
configuration files, ``config.json`` with ``auto_map``, and optionally weights (one
``model.safetensors`` or several shards + ``model.safetensors.index.json``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

KINDS: dict[str, dict[str, Any]] = {
    "llada": {
        "files": ("configuration_llada.py", "modeling_llada.py"),
        "config": {
            "model_type": "llada",
            "architectures": ["LLaDAModelLM"],
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModel": "modeling_llada.LLaDAModelLM",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            },
            "d_model": 64, "n_heads": 4, "n_layers": 2, "mlp_hidden_size": 128, "vocab_size": 100,
            "embedding_size": 128, "mask_token_id": 99, "eos_token_id": 98, "pad_token_id": 98,
            "init_device": "meta", "use_cache": False,
        },
    },
    "dream": {
        "files": ("configuration_dream.py", "modeling_dream.py"),
        "config": {
            "model_type": "Dream",
            "architectures": ["DreamModel"],
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "mask_token_id": 99, "pad_token_id": 98,
            "use_cache": False,
        },
    },
}


def make_folder(kind: str, dest: str | Path, weights: bool = False, max_shard_size: str | None = None,
                seed: int = 0, **config: Any) -> Path:
    """Write a ``kind`` (``llada`` | ``dream``) model folder to ``dest``; ``config`` overrides config.json keys.

    ``weights``: also save randomly initialised weights (seeded) with ``save_pretrained``, in shards of
    ``max_shard_size`` (e.g. ``"50KB"``) when given. Returns ``dest``.
    """
    spec = KINDS[kind]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in spec["files"]:
        shutil.copy(HERE / kind / name, dest / name)
    (dest / "config.json").write_text(json.dumps({**spec["config"], **config}, indent=1))
    if weights:
        import torch

        from mdlm.models.hf import HFBackbone

        torch.manual_seed(seed)
        vocab = int({**spec["config"], **config}["vocab_size"])
        backbone = HFBackbone(vocab, config=str(dest), trust_remote_code=True, truncate_vocab=True, verify=False)
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        backbone.model.save_pretrained(str(dest), **kwargs)
    return dest
