"""What differs between diffusion-LM backbones loaded through transformers: one row per family.

:class:`mdlm.models.hf.HFBackbone` adapts every model to mdlm's contract ``forward(input_ids [B, L],
attention_mask [B, L] | None) -> logits [B, L, V]`` where *position i scores token i*. The families
differ in exactly the fields of :class:`Family`:

==============  =========================================================================================
field           meaning
==============  =========================================================================================
logit_shift     ``1``: row i of the raw logits predicts token i + 1 (an AR-initialised model such as Dream);
                the adapter returns ``cat([raw[:, :1], raw[:, :-1]])`` so position i scores token i (Dream's
                own sampler does the same; position 0 keeps row 0 and is a prompt token in practice).
mask_form       how padding reaches the attention: ``2d`` (``[B, L]`` long, transformers' convention),
                ``4d_bool`` (``[B, 1, L, L]`` bool, True = may attend; Dream's layers take the mask as is
                and crash on a 2D one). Built as a key mask broadcast over queries, so a padded query
                still attends to the real keys (no all-masked row, no NaN).
position_ids    ``True``: pass ``cumsum(mask) - 1`` so a left-padded row keeps its unpadded positions
                (Dream). ``False``: the forward has no ``position_ids`` (LLaDA: positions 0..L-1, so only
                batches of equal real length are exact).
padding_hidden  prior for whether the attention honours the mask, used when the backbone cannot be probed
                (built on the meta device); a probe (``HFBackbone.verify_attention``) overrides it.
                LLaDA's files published before October 2025 ignore the mask; padding-blind models are
                fed batches of equal real length only (:func:`mdlm.generation.generate`).
mask_token_id   the absorbing [MASK] id the family was trained with (``None``: take ``config.mask_token_id``).
hf_checkpointing  whether transformers' ``gradient_checkpointing_enable`` works; LLaDA has its own switch
                and refuses the HF one, so mdlm checkpoints each block itself.
==============  =========================================================================================

The rows describe LLaDA's and Dream's published remote code; the tests run local stand-ins written
to reproduce those traits (:mod:`mdlm.testing.standins`), not the files themselves. What was read
and run, under which transformers version: ``docs/models.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MaskForm = Literal["2d", "4d_bool"]

__all__ = ["FAMILIES", "Family", "detect_family", "get_family"]


@dataclass(frozen=True)
class Family:
    """The traits of one backbone family (see the module docstring for each field)."""

    name: str
    model_types: tuple[str, ...] = ()
    logit_shift: int = 0
    mask_form: MaskForm = "2d"
    position_ids: bool | None = None
    padding_hidden: bool = True
    mask_token_id: int | None = None
    hf_checkpointing: bool = True
    notes: str = ""

    def __post_init__(self) -> None:
        if self.logit_shift not in (0, 1):
            raise ValueError(f"logit_shift={self.logit_shift} must be 0 or 1")
        if self.mask_form not in ("2d", "4d_bool"):
            raise ValueError(f"mask_form={self.mask_form!r} must be '2d' or '4d_bool'")


FAMILIES: dict[str, Family] = {
    "transformers": Family(
        "transformers",
        notes="transformers' own causal/masked LMs made bidirectional (Llama, Qwen2/3, Mistral, GPT-2, BERT...)",
    ),
    "llada": Family(
        "llada",
        model_types=("llada",),
        position_ids=False,
        padding_hidden=False,
        mask_token_id=126336,
        hf_checkpointing=False,
        notes="GSAI-ML/LLaDA-8B-*: remote code, forced init_device='cpu', mask ignored (pre-Oct-2025 files)",
    ),
    "dream": Family(
        "dream",
        model_types=("dream",),
        logit_shift=1,
        mask_form="4d_bool",
        position_ids=True,
        mask_token_id=151666,
        notes="Dream-org/Dream-v0-*: AR-initialised (shifted logits), 4D bool mask, transformers-4 code",
    ),
}


def get_family(name: str) -> Family:
    """The family called ``name`` (``transformers``, ``llada``, ``dream``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"model_family={name!r} is not one of {sorted(FAMILIES)} (or 'auto')") from None


def detect_family(config: Any) -> Family:
    """The family of a transformers config, from its ``model_type`` (case-insensitive); default ``transformers``."""
    model_type = str(getattr(config, "model_type", "") or "").lower()
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    return FAMILIES["transformers"]
