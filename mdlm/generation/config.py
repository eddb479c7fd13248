"""Settings of the reverse process: validation, the result type and the named protocols.

The ``_check_*``/``_validate_*`` helpers check every decoding and fast-decoding setting with an
error naming the bad value and what would be valid (shared by :func:`~mdlm.generation.generate`,
:func:`~mdlm.generation.infill` and :class:`GenerationConfig`). :class:`GenerationOutput` is what
both return; :class:`GenerationConfig` is a validated evaluation protocol and :data:`PRESETS` the
named ones (:func:`get_preset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

#: Valid values of ``remasking``.
REMASKING_STRATEGIES = ("low_confidence", "random")
#: Valid answer-extraction rules of a :class:`GenerationConfig`.
EXTRACTION_RULES = ("gsm8k", "math")
#: Valid values of ``cache`` (``None`` = no cache, the exact loop).
CACHE_MODES = ("prefix", "dual")


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")


def _check_remasking(remasking: Any) -> None:
    if remasking not in REMASKING_STRATEGIES:
        raise ValueError(
            f"remasking={remasking!r} is not a known remasking strategy; "
            f"valid: {', '.join(repr(r) for r in REMASKING_STRATEGIES)}"
        )


def _check_sampling(temperature: Any, cfg_scale: Any) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not (
        temperature >= 0.0
    ):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(cfg_scale, (int, float)) or isinstance(cfg_scale, bool) or not (
        cfg_scale >= 0.0
    ):
        raise ValueError(f"cfg_scale must be a number >= 0 (0 = no guidance), got {cfg_scale!r}")


def _validate_decoding(
    *,
    gen_length: Any,
    steps: Any,
    block_length: Any,
    temperature: Any,
    cfg_scale: Any,
    remasking: Any,
) -> int:
    """Check the decoding hyper-parameters; return the block length in use."""
    _check_positive_int("gen_length", gen_length)
    _check_positive_int("steps", steps)
    if block_length is None:
        block_length = gen_length
    _check_positive_int("block_length", block_length)
    if gen_length % block_length != 0:
        raise ValueError(
            f"gen_length={gen_length} is not a multiple of block_length={block_length}; "
            f"choose a block_length that divides gen_length (e.g. {gen_length})"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(
            f"steps={steps} is not a multiple of the number of blocks {num_blocks} "
            f"(gen_length={gen_length} // block_length={block_length}); "
            f"use steps = {num_blocks} * steps_per_block"
        )
    _check_sampling(temperature, cfg_scale)
    _check_remasking(remasking)
    return block_length


def _validate_fast(
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    remasking: str,
    threshold: Any,
    max_tokens_per_step: Any,
    stop_at_eos: Any,
    cache: Any,
    cache_refresh: Any,
    lockstep: Any,
) -> None:
    """Check the parallel-decoding and caching settings (after :func:`_validate_decoding`)."""
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not (
            0.0 <= threshold <= 1.0
        ):
            raise ValueError(f"threshold must be None or a number in [0, 1], got {threshold!r}")
        if remasking != "low_confidence":
            raise ValueError(
                f"threshold needs remasking='low_confidence' (it compares the model's confidence); "
                f"got remasking={remasking!r}"
            )
    if max_tokens_per_step is not None:
        _check_positive_int("max_tokens_per_step", max_tokens_per_step)
        steps_per_block = steps // (gen_length // block_length)
        needed = -(-block_length // steps_per_block)
        if max_tokens_per_step < needed:
            raise ValueError(
                f"max_tokens_per_step={max_tokens_per_step} cannot finish a block of {block_length} tokens "
                f"in {steps_per_block} steps; use max_tokens_per_step >= {needed} or more steps"
            )
    for name, value in (("stop_at_eos", stop_at_eos), ("lockstep", lockstep)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if cache is not None and cache not in CACHE_MODES:
        raise ValueError(
            f"cache={cache!r} is not a known cache mode; valid: None, "
            f"{', '.join(repr(c) for c in CACHE_MODES)}"
        )
    if cache_refresh is not None:
        _check_positive_int("cache_refresh", cache_refresh)
        if cache is None:
            raise ValueError("cache_refresh is set but cache is None; set cache='prefix' or 'dual'")


def _check_token_id(name: str, value: Any, vocab_size: int | None = None) -> None:
    if not _is_int(value) or value < 0 or (vocab_size is not None and value >= vocab_size):
        valid = f"0..{vocab_size - 1}" if vocab_size is not None else "an integer >= 0"
        where = f" of the model's vocabulary of size {vocab_size}" if vocab_size else ""
        raise ValueError(f"{name}={value!r} is out of range{where}; valid: {valid}")


def _known_vocab_size(model: Any) -> int | None:
    """Vocabulary size advertised by the model (``.vocab_size`` or ``.config.vocab_size``)."""
    for obj in (model, getattr(model, "config", None)):
        size = getattr(obj, "vocab_size", None) if obj is not None else None
        if _is_int(size) and size > 0:
            return size
    return None


def _check_ids_against_vocab(
    mask_token_id: int, suppress: Sequence[int], vocab_size: int | None
) -> None:
    _check_token_id("mask_token_id", mask_token_id, vocab_size)
    for t in suppress:
        _check_token_id("suppress_token_ids entry", t, vocab_size)


# --------------------------------------------------------------------------------------
# Output and configuration
# --------------------------------------------------------------------------------------
@dataclass
class GenerationOutput:
    """Result of :func:`generate` / :func:`infill`.

    Attributes:
        tokens: ``LongTensor[B, gen_length]`` generated ids (for :func:`infill`: the whole
            filled ``[B, L]`` sequence).
        sequences: one 1-D ``LongTensor`` per sample. For :func:`generate`: the generated
            tokens cut at the first ``eos_token_id`` (EOS excluded), or the full row when no
            ``eos_token_id`` was given or the row has no EOS. For :func:`infill`: the filled
            row without its padding.
        committed_per_step: ``LongTensor[B, steps]`` number of tokens committed (unmasked)
            for each sample at each step, over all blocks in order.
        canvas: ``LongTensor[B, P + gen_length]`` the final full sequence: the (left-padded)
            prompt followed by the generated tokens (for :func:`infill`: same as ``tokens``).
        attention_mask: ``BoolTensor`` like ``canvas`` (``True`` on real tokens), or ``None``
            when there was no padding.
        forward_passes: number of model calls (a classifier-free-guidance call, which runs the
            conditional and unconditional rows as one batch, counts once).
        row_forward_passes: ``LongTensor[B]``, the model calls each row took part in.
        row_query_positions: ``LongTensor[B]``, the positions whose logits were computed for each
            row, summed over its calls (a full forward counts the whole canvas, a cached forward
            its span; the unconditional CFG row counts too).
        cache: the block cache actually used (``"prefix"``, ``"dual"``), or ``None`` (exact path).
    """

    tokens: Tensor
    sequences: list
    committed_per_step: Tensor
    canvas: Tensor
    attention_mask: Tensor | None = None
    forward_passes: int = 0
    row_forward_passes: Tensor | None = None
    row_query_positions: Tensor | None = None
    cache: str | None = None


@dataclass(frozen=True)
class GenerationConfig:
    """A named evaluation protocol: decoding hyper-parameters plus prompting/extraction.

    Attributes:
        gen_length: number of generated tokens (the answer is that many masks at start).
        steps: total number of denoising steps over all blocks (a multiple of the number of
            blocks ``gen_length // block_length``).
        block_length: semi-autoregressive block size; ``None`` means one block
            (``gen_length``), i.e. pure diffusion sampling.
        temperature: 0 is greedy (argmax); > 0 samples with float64 Gumbel-max.
        cfg_scale: classifier-free guidance scale ``s`` (0 disables it).
        remasking: ``"low_confidence"`` or ``"random"``.
        shots: number of few-shot examples in the prompt.
        prompt_template: name of the prompt template the evaluation code should use.
        extraction: answer-extraction rule, ``"gsm8k"`` (final number after ``####`` /
            last number) or ``"math"`` (``\\boxed{}`` / Minerva final answer).
        description: one line saying where the numbers come from.
        threshold, max_tokens_per_step, stop_at_eos, cache, cache_refresh, lockstep: parallel
            decoding and block caching, see :func:`generate` (defaults: the exact loop).

    ``generate(model, prompts, mask_token_id=..., **config.generate_kwargs())`` decodes with
    the preset; use ``dataclasses.replace(config, steps=...)`` to derive variants.
    """

    gen_length: int
    steps: int
    block_length: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    shots: int = 0
    prompt_template: str = "gsm8k"
    extraction: str = "gsm8k"
    description: str = ""
    threshold: float | None = None
    max_tokens_per_step: int | None = None
    stop_at_eos: bool = False
    cache: str | None = None
    cache_refresh: int | None = None
    lockstep: bool = False

    def __post_init__(self) -> None:
        block_length = _validate_decoding(
            gen_length=self.gen_length,
            steps=self.steps,
            block_length=self.block_length,
            temperature=self.temperature,
            cfg_scale=self.cfg_scale,
            remasking=self.remasking,
        )
        _validate_fast(
            gen_length=self.gen_length,
            steps=self.steps,
            block_length=block_length,
            remasking=self.remasking,
            threshold=self.threshold,
            max_tokens_per_step=self.max_tokens_per_step,
            stop_at_eos=self.stop_at_eos,
            cache=self.cache,
            cache_refresh=self.cache_refresh,
            lockstep=self.lockstep,
        )
        if not _is_int(self.shots) or self.shots < 0:
            raise ValueError(f"shots must be an integer >= 0, got {self.shots!r}")
        if self.extraction not in EXTRACTION_RULES:
            raise ValueError(
                f"extraction={self.extraction!r} is not a known extraction rule; "
                f"valid: {', '.join(repr(r) for r in EXTRACTION_RULES)}"
            )

    @property
    def num_blocks(self) -> int:
        return self.gen_length // (self.block_length or self.gen_length)

    def generate_kwargs(self) -> dict:
        """Keyword arguments of :func:`generate` set by this preset."""
        return {
            "gen_length": self.gen_length,
            "steps": self.steps,
            "block_length": self.block_length,
            "temperature": self.temperature,
            "cfg_scale": self.cfg_scale,
            "remasking": self.remasking,
            "threshold": self.threshold,
            "max_tokens_per_step": self.max_tokens_per_step,
            "stop_at_eos": self.stop_at_eos,
            "cache": self.cache,
            "cache_refresh": self.cache_refresh,
            "lockstep": self.lockstep,
        }

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


#: Named evaluation presets. The LLaDA entries follow LLaDA's EVAL.md (ML-GSAI/LLaDA):
#: lm-eval conditional generation for LLaDA-8B-Base with gen_length = steps = block_length
#: = 512 (GSM8K 70.8, Math 30.9; 1024 and 256 give the same accuracy within ~1 point), which
#: is also the pure-diffusion setting of LLaDA-8B-Instruct for GSM8K/Math. 4 shots as in
#: the paper's base-model table. Greedy, no CFG, low-confidence remasking, one token per
#: step.
PRESETS: dict = {
    "llada_gsm8k": GenerationConfig(
        gen_length=512,
        steps=512,
        block_length=512,
        shots=4,
        prompt_template="gsm8k",
        extraction="gsm8k",
        description="LLaDA GSM8K protocol: 4-shot, 512 tokens, 512 steps, one block, greedy",
    ),
    "llada_math": GenerationConfig(
        gen_length=512,
        steps=512,
        block_length=512,
        shots=4,
        prompt_template="minerva_math",
        extraction="math",
        description="LLaDA Math (Minerva) protocol: 4-shot, 512 tokens, 512 steps, greedy",
    ),
    "cpu_tiny": GenerationConfig(
        gen_length=64,
        steps=64,
        block_length=32,
        shots=0,
        prompt_template="gsm8k",
        extraction="gsm8k",
        description="smoke-test size for CPU: 0-shot, 64 tokens, 64 steps, 2 blocks of 32",
    ),
}

#: Fast variants (Fast-dLLM's settings: blocks of 32, confidence threshold 0.9, dual cache)
#: with early stop at EOS. ``steps`` is an upper bound (one token per step at worst). Approximate:
#: the threshold and the cache change the output; measure before trusting.
_FAST = dict(threshold=0.9, cache="dual", stop_at_eos=True)
PRESETS.update(
    {
        "llada_gsm8k_fast": PRESETS["llada_gsm8k"].replace(
            block_length=32,
            description="llada_gsm8k with Fast-dLLM decoding: blocks of 32, threshold 0.9, dual "
            "cache, stop at EOS; <= 512 steps",
            **_FAST,
        ),
        "llada_math_fast": PRESETS["llada_math"].replace(
            block_length=32,
            description="llada_math with Fast-dLLM decoding: blocks of 32, threshold 0.9, dual "
            "cache, stop at EOS; <= 512 steps",
            **_FAST,
        ),
        "cpu_tiny_fast": PRESETS["cpu_tiny"].replace(
            description="cpu_tiny with threshold 0.9, dual cache, stop at EOS; <= 64 steps",
            **_FAST,
        ),
    }
)


def get_preset(name: str) -> GenerationConfig:
    """The :class:`GenerationConfig` registered in :data:`PRESETS` under ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown generation preset {name!r}; valid: {', '.join(sorted(PRESETS))}"
        ) from None
