"""Reverse (generation) process for masked diffusion language models, LLaDA-style.

The model contract is the one used everywhere in :mod:`mdlm`: a model is any callable

    model(input_ids: LongTensor[B, L], attention_mask: Optional[BoolTensor[B, L]] = None)
        -> FloatTensor[B, L, V]

returning logits of a bidirectional mask predictor (no time input). ``attention_mask`` is
``True`` on real tokens and ``False`` on padding; it is only passed when some padding exists
(otherwise the model is called as ``model(input_ids)``). An output object with a ``.logits``
attribute (Hugging Face style) is accepted too.

Sampling follows LLaDA's published loop (ML-GSAI/LLaDA, ``generate.py``): start from a fully
masked answer, and at every step predict all masked positions, then *commit* (unmask) the
``k`` most confident predictions of the current block and leave the others masked. The
pinned semantics are documented on :func:`generate`; deviations from LLaDA's code are listed
in :mod:`mdlm.generation.denoise`.

Fast decoding (Fast-dLLM, arXiv 2505.22618; all off by default): a confidence ``threshold``
commits every masked position of the current block whose confidence reaches it (at least the
exact schedule's quota, so ``steps`` becomes an upper bound), ``max_tokens_per_step`` caps it,
``stop_at_eos`` ends a row once an EOS is committed with nothing masked before it, and ``cache``
(``"prefix"``/``"dual"``) reuses keys/values across the steps of a block for models that support
it (mdlm's ``Transformer``; others take the exact path). ``lockstep`` keeps the exact loop's
number of model calls. The rules are stated on :func:`generate`; :data:`PRESETS` has ``*_fast``
variants.

Left padding: batched prompts of different lengths are left-padded. For a model that hides
padding (:func:`padding_hidden` is ``True``, the default) they run as one batch with the padding
hidden by ``attention_mask``; the result equals one-by-one generation only if the model's logits
at real positions do not depend on the padding, e.g. rotary (relative) positions, or absolute
position ids counted from the first real token (``attention_mask.cumsum(-1) - 1``). A
padding-blind model (``padding_hidden = False``, e.g. LLaDA, whose attention ignores
``attention_mask``) never sees padding: the rows are split into groups of equal real prompt
length, each group runs as its own batch with the padding stripped, and the outputs are put
back in the common left-padded layout. With greedy decoding (temperature 0, low-confidence
remasking) a prompt's output is then bit-identical whether it runs alone or among prompts of
other lengths (prompts of its own length share its forward passes). Sampled noise
(``temperature > 0`` or ``remasking="random"``) is drawn from one generator stream over the
whole batch, group after group, so a sampled row can depend on the other rows of the call (as
in any batch; reproducible for the same call and generator state).

Modules (one job each):

* :mod:`mdlm.generation.config`: validation of the settings, :class:`GenerationOutput`,
  :class:`GenerationConfig` and the named :data:`PRESETS`;
* :mod:`mdlm.generation.denoise`: the reverse-process loop (schedule, sampling, remasking,
  threshold, EOS stop, block cache, lockstep) and its deviations from LLaDA's reference code;
* :mod:`mdlm.generation.model_calls`: calling the model, :func:`padding_hidden`,
  :func:`block_cache_model`;
* :mod:`mdlm.generation.prompts`: left-padding prompts, groups of equal length, cutting at EOS;
* :mod:`mdlm.generation.api`: :func:`generate` and :func:`infill`.
"""

from __future__ import annotations

from mdlm.generation.api import generate, infill
from mdlm.generation.config import (
    CACHE_MODES,
    EXTRACTION_RULES,
    PRESETS,
    REMASKING_STRATEGIES,
    GenerationConfig,
    GenerationOutput,
    get_preset,
)
from mdlm.generation.denoise import num_transfer_tokens
from mdlm.generation.model_calls import block_cache_model, padding_hidden

__all__ = [
    "REMASKING_STRATEGIES",
    "EXTRACTION_RULES",
    "CACHE_MODES",
    "GenerationOutput",
    "GenerationConfig",
    "PRESETS",
    "get_preset",
    "num_transfer_tokens",
    "padding_hidden",
    "block_cache_model",
    "generate",
    "infill",
]
