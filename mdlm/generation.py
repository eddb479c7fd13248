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
below.

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

Deviations from LLaDA's reference code (none changes LLaDA's output, up to floating-point
rounding of exact near-ties, for LLaDA's inputs: one prompt or equal-length prompts, no mask
tokens in the prompt, a model that never puts its highest logit on the mask token):

* The mask token (and ``suppress_token_ids``) get logit ``-inf`` before any softmax/argmax
  (MDLM's SUBS parameterisation). LLaDA does not suppress the mask id.
* Only masked positions *inside the current block* can be committed; mask tokens inside the
  prompt are never filled by :func:`generate` (use :func:`infill`). LLaDA would also let
  masks in the prompt compete for the current block's quota.
* Sampling, softmax and confidences are computed for the current block's positions only
  (the model still sees the whole sequence), which saves memory for long answers.
* Temperature 0 is a plain argmax of the logits (no noise is drawn); LLaDA draws noise and
  raises it to the power 0. For temperature > 0 the Gumbel-max score is LLaDA's
  ``exp(logits) / (-log u) ** temperature`` in float64, with the row maximum subtracted from
  the logits first (same argmax, but no overflow of ``exp`` for logits > 709).
* Classifier-free guidance is combined in at least float32 (LLaDA combines in the model's
  dtype, e.g. bfloat16).
* Ties in confidence are broken towards the leftmost position (stable sort); LLaDA's
  ``torch.topk`` breaks them in an unspecified way.
* Steps in which no sample has anything to commit (possible when a block has fewer masked
  tokens than steps per block) skip the model call.
* Batched prompts of different lengths are left-padded and the padding is hidden with the
  attention mask, or, for a padding-blind model, run as separate batches of equal length.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from mdlm.models.kv_cache import KVCache

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

#: Valid values of ``remasking``.
REMASKING_STRATEGIES = ("low_confidence", "random")
#: Valid answer-extraction rules of a :class:`GenerationConfig`.
EXTRACTION_RULES = ("gsm8k", "math")
#: Valid values of ``cache`` (``None`` = no cache, the exact loop).
CACHE_MODES = ("prefix", "dual")

PromptsLike = Tensor | Sequence[Tensor | Sequence[int]]


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


# --------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------
def num_transfer_tokens(num_masked: Tensor, steps: int) -> Tensor:
    """Tokens to commit at each of ``steps`` steps, per sample.

    ``num_masked`` is ``LongTensor[B]`` (masked tokens in the block at its start). Each step
    commits ``num_masked // steps`` tokens, and the first ``num_masked % steps`` steps one
    more (LLaDA's ``get_num_transfer_tokens``: a linear schedule, discretised uniformly).
    Returns ``LongTensor[B, steps]`` whose rows sum to ``num_masked``.
    """
    _check_positive_int("steps", steps)
    num_masked = num_masked.long().reshape(-1)
    base = num_masked // steps
    remainder = num_masked % steps
    extra = torch.arange(steps, device=num_masked.device)[None, :] < remainder[:, None]
    return base[:, None] + extra.long()


# --------------------------------------------------------------------------------------
# Noise seam
# --------------------------------------------------------------------------------------
def _draw_uniform(
    shape: tuple,
    *,
    start: int,
    step: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """Uniform [0, 1) noise for one step.

    ``shape`` is ``(B, n, V)`` for the Gumbel-max noise of the ``n`` positions of the current
    block, which start at canvas index ``start``, or ``(B, n)`` for the random confidences
    of ``remasking="random"``. ``step`` is the global step index. Tests replace this function
    with a fixed noise table to compare against LLaDA's loop, which draws noise for the
    whole sequence.
    """
    return torch.rand(shape, dtype=dtype, device=device, generator=generator)


# --------------------------------------------------------------------------------------
# Core loop
# --------------------------------------------------------------------------------------
def _call_model(model: Callable, x: Tensor, attention_mask: Tensor | None, **extra: Any) -> Tensor:
    if attention_mask is None:
        out = model(x, **extra)
    else:
        out = model(x, attention_mask=attention_mask, **extra)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model must return logits of shape [B, L, V] = [{x.shape[0]}, {x.shape[1]}, V] "
            f"for input_ids of shape {tuple(x.shape)}; got {got}"
        )
    return logits


def _work_dtype(device: torch.device) -> torch.dtype:
    # LLaDA uses float64 for the Gumbel noise and the softmax; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def _denoise(
    model: Callable,
    x: Tensor,
    attention_mask: Tensor | None,
    *,
    blocks: Sequence[tuple],
    steps_per_block: int,
    cond_positions: Tensor,
    fillable: Tensor | None,
    mask_token_id: int,
    temperature: float,
    remasking: str,
    cfg_scale: float,
    generator: torch.Generator | None,
    suppress_token_ids: Sequence[int],
    threshold: float | None = None,
    max_tokens_per_step: int | None = None,
    eos_token_id: int | None = None,
    answer_start: int = 0,
    lockstep: bool = False,
    cache: str | None = None,
    cache_refresh: int | None = None,
    cache_model: Callable | None = None,
) -> tuple:
    """Run the reverse process in place on ``x``.

    Returns ``(committed_per_step [B, steps], stats)`` with ``stats`` a dict of
    ``forward_passes``, ``row_forward_passes [B]`` and ``row_query_positions [B]``. Without
    ``threshold`` and ``eos_token_id`` (early stop) this is LLaDA's loop with its precomputed
    schedule; otherwise the quota is recomputed each step (see :func:`generate`).
    """
    batch, length = x.shape
    device = x.device
    work = _work_dtype(device)
    spb = steps_per_block
    total_steps = len(blocks) * spb
    committed = torch.zeros(batch, total_steps, dtype=torch.long, device=device)
    row_calls = torch.zeros(batch, dtype=torch.long, device=device)
    row_positions = torch.zeros(batch, dtype=torch.long, device=device)
    calls = 0
    suppress = sorted({int(mask_token_id), *(int(t) for t in suppress_token_ids)})
    suppress_idx = torch.tensor(suppress, dtype=torch.long, device=device)
    vocab_checked = False
    exact = threshold is None and eos_token_id is None  # LLaDA's precomputed schedule
    guided = cfg_scale > 0

    # Live rows: rows finished by the EOS rule leave the batch (unless lockstep). `rows` None means
    # every row, with `xl` being `x` itself; otherwise `xl` is a compact copy written back to `x`.
    rows: Tensor | None = None
    xl, attn_l, cond_l, fill_l = x, attention_mask, cond_positions, fillable
    kv: KVCache | None = None
    all_done = False

    def block_masked(start: int, end: int) -> Tensor:
        m = xl[:, start:end] == mask_token_id
        return m if fill_l is None else m & fill_l[:, start:end]

    def write_back() -> None:
        if rows is not None:
            x.index_copy_(0, rows, xl)

    def block_logits(start: int, end: int, i: int) -> Tensor:
        """Logits of the live rows at the current block's positions (CFG combined)."""
        nonlocal kv, calls
        b = xl.shape[0]
        inp, am = xl, attn_l
        if guided:
            inp = torch.cat([xl, xl.masked_fill(cond_l, mask_token_id)], dim=0)
            am = None if attn_l is None else torch.cat([attn_l, attn_l], dim=0)
        if cache is None:
            out, width = _call_model(model, inp, am)[:, start:end], length
        elif kv is None or i == 0 or (cache_refresh is not None and i % cache_refresh == 0):
            kv = KVCache()  # (re)built by a full forward
            out, width = _call_model(cache_model, inp, am, kv_cache=kv)[:, start:end], length
            if cache == "prefix":
                kv.crop(start)
        else:
            hi = length if cache == "prefix" else end
            out = _call_model(cache_model, inp[:, start:hi], am, kv_cache=kv, kv_start=start)
            out, width = out[:, : end - start], hi - start
        calls += 1
        live = slice(None) if rows is None else rows
        row_calls[live] += 1
        row_positions[live] += width * (2 if guided else 1)
        if not guided:
            return out
        combine = torch.promote_types(out.dtype, torch.float32)
        cond, un = out[:b].to(combine), out[b:].to(combine)
        return un + (cfg_scale + 1.0) * (cond - un)

    step = 0
    for start, end in blocks:
        if all_done and not lockstep:
            break
        n = end - start
        kv = None
        if exact:
            schedule = num_transfer_tokens(block_masked(start, end).sum(dim=1), spb)  # [B, S]
            active = schedule.any(dim=0).tolist()  # one host sync per block
        if lockstep:  # the exact loop's calls for a fully masked block of n tokens
            active = [i < n for i in range(spb)]
        for i in range(spb):
            if exact or lockstep:
                call = active[i]
            else:  # one host sync per step: stop the block once it is complete
                call = not all_done and bool(block_masked(start, end).any())
                if not call:
                    step += spb - i
                    break
            if not call:  # nothing to commit anywhere in the batch at this step
                step += 1
                continue

            logits = block_logits(start, end, i)
            b, vocab = logits.shape[0], logits.shape[-1]
            if not vocab_checked:
                _check_ids_against_vocab(mask_token_id, suppress_token_ids, vocab)
                vocab_checked = True
            logits = logits.to(work).index_fill(-1, suppress_idx, float("-inf"))

            # ---- candidate tokens: greedy or float64 Gumbel-max ----
            if temperature > 0:
                u = _draw_uniform(
                    (b, n, vocab), start=start, step=step, dtype=work, device=device,
                    generator=generator,
                )
                shifted = logits - logits.amax(dim=-1, keepdim=True)
                scores = shifted.exp() / (-torch.log(u)) ** temperature
                x0 = scores.argmax(dim=-1)
            else:
                x0 = logits.argmax(dim=-1)

            # ---- confidences and the vectorised per-sample top-k commit ----
            if remasking == "low_confidence":
                probs = torch.softmax(logits, dim=-1)
                confidence = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:  # "random"
                confidence = _draw_uniform(
                    (b, n), start=start, step=step, dtype=work, device=device,
                    generator=generator,
                )
            masked = block_masked(start, end)
            confidence = torch.where(masked, confidence.to(work), float("-inf"))
            if exact:
                quota = schedule[:, i]
            else:  # ceil(masked left / steps left): LLaDA's schedule when no step exceeds it
                quota = (masked.sum(dim=-1) + (spb - i - 1)) // (spb - i)
                if threshold is not None:
                    quota = torch.maximum(quota, (confidence >= threshold).sum(dim=-1))
                    if max_tokens_per_step is not None:
                        quota = quota.clamp(max=max_tokens_per_step)
            order = confidence.argsort(dim=-1, descending=True, stable=True)
            ranks_base = torch.arange(n, device=device).expand(b, n)
            ranks = torch.empty_like(order).scatter_(-1, order, ranks_base)
            transfer = masked & (ranks < quota[:, None])
            xl[:, start:end] = torch.where(transfer, x0, xl[:, start:end])
            committed[slice(None) if rows is None else rows, step] = transfer.sum(dim=-1)
            step += 1

            # ---- early stop: an EOS committed with nothing masked before it ends the row ----
            if eos_token_id is not None and not all_done:
                answer = xl[:, answer_start:]
                width = answer.shape[1]
                is_mask, is_eos = answer == mask_token_id, answer == eos_token_id
                first_mask = torch.where(is_mask.any(1), is_mask.long().argmax(1), width)
                first_eos = torch.where(is_eos.any(1), is_eos.long().argmax(1), width)
                done = first_eos < first_mask
                finished = done | (first_mask == width)
                any_done, all_finished, any_finished = torch.stack(
                    [done.any(), finished.all(), finished.any()]
                ).tolist()  # one host sync
                if any_done:
                    after = torch.arange(width, device=device)[None, :] > first_eos[:, None]
                    xl[:, answer_start:] = answer.masked_fill(after & done[:, None], eos_token_id)
                if all_finished:
                    all_done = True
                elif not lockstep and any_finished:
                    keep = (~finished).nonzero().squeeze(1)
                    write_back()
                    rows = keep if rows is None else rows[keep]
                    xl = xl[keep]
                    attn_l = None if attn_l is None else attn_l[keep]
                    cond_l = cond_l[keep]
                    fill_l = None if fill_l is None else fill_l[keep]
                    if kv is not None:
                        kv.select(torch.cat([keep, keep + b]) if guided else keep)
                if all_done and not lockstep:
                    step += spb - i - 1
                    break
    write_back()
    stats = {
        "forward_passes": calls,
        "row_forward_passes": row_calls,
        "row_query_positions": row_positions,
    }
    return committed, stats


# --------------------------------------------------------------------------------------
# Prompt batching
# --------------------------------------------------------------------------------------
def padding_hidden(model: Any) -> bool:
    """Does ``model`` hide padding from its attention (i.e. honour ``attention_mask``)?

    Reads the attribute ``padding_hidden`` of ``model``, else of the objects it wraps
    (``.module``, ``.backbone``, ``._orig_mod``; nearest first). Absent everywhere: ``True``.
    ``False`` marks a padding-blind model (LLaDA: its attention ignores ``attention_mask``), for
    which :func:`generate` and :func:`infill` never batch rows of different real lengths.
    """
    for obj in _wrapped(model):
        value = getattr(obj, "padding_hidden", None)
        if value is not None:
            return bool(value)
    return True


def _wrapped(model: Any) -> Iterator[Any]:
    """``model``, then the objects it wraps (``.module``, ``.backbone``, ``._orig_mod``), nearest first."""
    queue, seen = [model], set()
    while queue:
        obj = queue.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        for name in ("module", "backbone", "_orig_mod"):
            inner = getattr(obj, name, None)
            if inner is not None and not isinstance(inner, ModuleType):
                queue.append(inner)


def _accepts_cache(obj: Any) -> bool:
    """Does ``obj.forward`` (or ``obj``) take ``kv_cache`` and ``kv_start`` (e.g. not replaced)?"""
    try:
        params = inspect.signature(getattr(obj, "forward", obj)).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return "kv_cache" in params and "kv_start" in params


def block_cache_model(model: Any) -> Callable | None:
    """The object to call for block-cached decoding, or ``None`` (exact path).

    ``model`` itself if its attribute ``supports_block_cache`` is ``True`` (and its ``forward``
    takes ``kv_cache`` and ``kv_start``), else the nearest of the objects it wraps (``.module``, ``.backbone``, ``._orig_mod``) that has it; such an object
    is called as ``obj(ids, attention_mask=..., kv_cache=..., kv_start=...)`` (see
    :mod:`mdlm.models.kv_cache`) instead of ``model``, so a wrapper found this way must not change
    the logits. mdlm's :class:`~mdlm.models.transformer.Transformer` has it; Hugging Face
    backbones, LLaDA/Dream and plain callables do not.
    """
    for obj in _wrapped(model):
        if getattr(obj, "supports_block_cache", False) is True and _accepts_cache(obj):
            return obj
    return None


def _equal_length_groups(lengths: Tensor) -> list:
    """``[(length, row indices)]`` of the rows of equal ``lengths``, by first appearance."""
    values = lengths.tolist()
    order = list(dict.fromkeys(values))
    return [(n, torch.tensor([b for b, v in enumerate(values) if v == n], device=lengths.device))
            for n in order]


def _prepare_prompts(
    prompts: PromptsLike, attention_mask: Tensor | None, pad_token_id: int | None
) -> tuple:
    """Return ``(ids [B, P], prompt_mask [B, P] or None)``; left padding."""
    if isinstance(prompts, Tensor):
        ids = prompts
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
            if attention_mask is not None and attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
        if ids.dim() != 2:
            raise ValueError(
                f"a prompt tensor must be 1-D [P] or 2-D [B, P], got shape {tuple(prompts.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise ValueError(f"prompt ids must be an integer tensor, got dtype {ids.dtype}")
        ids = ids.long()
        if attention_mask is None:
            return ids, None
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the prompts have "
                f"shape {tuple(ids.shape)}; they must match"
            )
        pmask = attention_mask.to(device=ids.device).bool()
        if ids.shape[1] > 1 and bool((pmask[:, 1:].long() < pmask[:, :-1].long()).any()):
            raise ValueError(
                "attention_mask must describe LEFT padding (False…False True…True on each row): "
                "the generated tokens follow the last prompt token"
            )
        return ids, (None if bool(pmask.all()) else pmask)

    if attention_mask is not None:
        raise ValueError(
            "attention_mask is only accepted with an already padded prompt tensor [B, P]; "
            "a list of prompts is padded here"
        )
    seqs = [p if isinstance(p, Tensor) else torch.as_tensor(p, dtype=torch.long) for p in prompts]
    if len(seqs) == 0:
        raise ValueError("prompts is empty; pass at least one prompt")
    for j, p in enumerate(seqs):
        if p.dim() != 1:
            raise ValueError(f"prompt {j} must be a 1-D tensor of ids, got shape {tuple(p.shape)}")
        if p.dtype.is_floating_point or p.dtype == torch.bool or p.is_complex():
            raise ValueError(f"prompt {j} must hold integer ids, got dtype {p.dtype}")
    device = seqs[0].device
    lengths = [int(p.numel()) for p in seqs]
    width = max(lengths)
    if all(n == width for n in lengths):
        return torch.stack([p.to(device).long() for p in seqs]), None
    if pad_token_id is None:
        raise ValueError(
            f"prompts have different lengths {lengths}; pass pad_token_id to left-pad them"
        )
    _check_token_id("pad_token_id", pad_token_id)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long, device=device)
    pmask = torch.zeros((len(seqs), width), dtype=torch.bool, device=device)
    for j, p in enumerate(seqs):  # once per call, not per step
        if lengths[j]:
            ids[j, width - lengths[j] :] = p.to(device).long()
            pmask[j, width - lengths[j] :] = True
    return ids, pmask


def _cut_at_eos(tokens: Tensor, eos_token_id: int | None) -> list:
    if eos_token_id is None:
        return list(tokens.unbind(0))
    is_eos = tokens == eos_token_id
    first = torch.where(is_eos.any(dim=1), is_eos.long().argmax(dim=1), tokens.shape[1])
    return [row[:cut] for row, cut in zip(tokens.unbind(0), first.tolist())]


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model: Callable,
    prompts: PromptsLike,
    *,
    mask_token_id: int,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    suppress_token_ids: Sequence[int] = (),
    threshold: float | None = None,
    max_tokens_per_step: int | None = None,
    stop_at_eos: bool = False,
    cache: str | None = None,
    cache_refresh: int | None = None,
    lockstep: bool = False,
) -> GenerationOutput:
    """Generate ``gen_length`` tokens after each prompt with the LLaDA reverse process.

    Args:
        model: ``model(input_ids, attention_mask=None) -> logits [B, L, V]`` (see module doc).
            Put it in eval mode yourself; runs under ``torch.no_grad()``.
        prompts: a list of 1-D ``LongTensor`` (or int lists) of possibly different lengths,
            which are LEFT-padded with ``pad_token_id`` to a common length ``P`` and hidden by
            an attention mask; or an already padded ``LongTensor[B, P]`` (or ``[P]``) with an
            optional left-padding ``attention_mask [B, P]`` (True = real token). When no row
            has padding the model is called without an attention mask.
        mask_token_id: the absorbing mask token. The answer starts as ``gen_length`` masks;
            the model's logit for this id is set to ``-inf`` before any softmax/argmax, so it
            is never produced. Mask tokens inside the prompt are left as they are.
        gen_length: number of tokens to generate (>= 1).
        steps: total number of denoising steps (>= 1), a multiple of the number of blocks
            ``gen_length // block_length``; each block gets ``steps // num_blocks`` steps
            (an upper bound with ``threshold`` or ``stop_at_eos``).
        block_length: semi-autoregressive block size; ``gen_length`` must be a multiple of it.
            Blocks are decoded left to right, and a position beyond the current block is
            never committed before its block starts. ``None`` = one block (``gen_length``).
        temperature: 0 = greedy (argmax of the logits). > 0: Gumbel-max in float64 as LLaDA
            does, ``argmax(exp(logits) / (-log u) ** temperature)`` with ``u ~ U[0, 1)``,
            which samples from ``softmax(logits / temperature)``.
        remasking: which predictions to commit at each step. ``"low_confidence"``: the
            masked positions of the current block whose chosen token has the highest softmax
            probability (float64; ties go to the leftmost position); ``"random"``: uniformly
            random positions among the masked ones of the current block.
        cfg_scale: classifier-free guidance scale ``s`` (0 disables). The unconditional pass
            replaces the real prompt tokens with the mask token, and the guided logits are
            ``un + (s + 1) * (cond - un)`` (LLaDA's form); both passes run as one batch.
        eos_token_id: when given, ``output.sequences`` are cut at the first EOS (excluded).
        pad_token_id: id used for left padding (required only when the prompts of a list
            have different lengths). Padded positions are never attended to; a padding-blind
            model (:func:`padding_hidden` ``False``) never receives them: rows of equal real
            prompt length run as separate unpadded batches (see the module doc).
        attention_mask: only with a padded prompt tensor, see ``prompts``.
        generator: ``torch.Generator`` (on the prompts' device) for reproducible sampling
            (Gumbel noise and random remasking); ``None`` uses the global RNG.
        suppress_token_ids: further ids whose logits are set to ``-inf`` (never produced).
        threshold: confidence threshold ``tau`` in [0, 1] of parallel decoding (Fast-dLLM);
            needs ``remasking="low_confidence"``. ``None``: the exact schedule.
        max_tokens_per_step: cap on the tokens one step commits with ``threshold`` (must be
            ``>= ceil(block_length / steps_per_block)`` so that every block can finish).
        stop_at_eos: early stop at EOS (needs ``eos_token_id``; without it nothing changes).
        cache: ``"prefix"`` or ``"dual"`` block KV cache (approximate), for models with
            ``supports_block_cache`` (:func:`block_cache_model`; mdlm's ``Transformer``). Other
            models (Hugging Face backbones, LLaDA, Dream, any plain callable) take the exact
            path: a full forward per step; ``output.cache`` tells which was used.
        cache_refresh: with ``cache``, rebuild it every ``k`` steps of a block as well.
        lockstep: call the model exactly as often as the exact loop does (for callers whose
            forwards are collective, e.g. sharded FSDP ranks generating one prompt each).

    Schedule (exact loop): in each block, with ``m`` masked tokens at the block's start and
    ``S`` steps per block, step ``i`` commits ``m // S`` tokens plus one for the first
    ``m % S`` steps (LLaDA's ``get_num_transfer_tokens``); a committed token is never remasked.

    Parallel decoding (``threshold`` = tau): at step ``i`` of a block, a row with ``r`` masked
    positions left in the block commits its ``k`` most confident ones, where
    ``k = max(ceil(r / (S - i)), #{masked positions of the block with confidence >= tau})``,
    capped at ``max_tokens_per_step``. ``ceil(r / (S - i))`` (at least one while ``r > 0``) is
    the exact schedule when no step commits more than its quota, so the block always finishes
    within ``S`` steps, and ``tau`` above every confidence reproduces the exact loop token for
    token. A block ends (no further model calls) as soon as no row has a masked position in it.

    Early stop (``stop_at_eos``): after each step, a row whose answer holds a committed EOS
    with no masked position before it is finished: every position after its first EOS is set
    to EOS (masked or not; not counted in ``committed_per_step``), and it leaves the batch (no
    further calls for it). The call ends when every row is finished. Greedy ``sequences`` are
    those without early stop (cut at that EOS, whose prefix is final); with sampling, the rows
    left draw other noise once a row has left.

    Block cache (``cache``): at a block's first step (and every ``cache_refresh`` steps) one
    full forward gives the step's logits and every layer's keys/values. The other steps run a
    span forward whose queries are ``"prefix"``: the current block and everything after it,
    attending to the cached keys/values of the positions before the block; ``"dual"``: the
    current block only, attending to the cached keys/values of the prefix and of the suffix
    (still masked, or the stale state of the block start). No extra model calls.

    Lockstep: the model is called at exactly the steps where the exact loop calls it for a
    fully masked answer (``min(S, block_length)`` calls per block, in every block), finished
    rows and blocks included; outputs are those of ``lockstep=False``.

    Returns:
        :class:`GenerationOutput` with ``tokens [B, gen_length]``, ``sequences`` (cut at
        EOS), ``committed_per_step [B, steps]``, the full ``canvas`` and its attention mask,
        and the counts ``forward_passes``, ``row_forward_passes``, ``row_query_positions``.

    Raises:
        ValueError: naming the bad value and what would be valid, for: ``gen_length``,
            ``steps`` or ``block_length`` < 1; ``gen_length`` not a multiple of
            ``block_length``; ``steps`` not a multiple of the number of blocks; an unknown
            ``remasking`` or ``cache``; a negative ``temperature`` or ``cfg_scale``;
            ``threshold`` outside [0, 1] or with random remasking; a too small
            ``max_tokens_per_step``; ``mask_token_id`` (or a suppressed id) outside the
            model's vocabulary; badly shaped prompts; prompts of different lengths without
            ``pad_token_id``.
    """
    block_length = _validate_decoding(
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        cfg_scale=cfg_scale,
        remasking=remasking,
    )
    _validate_fast(
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        remasking=remasking,
        threshold=threshold,
        max_tokens_per_step=max_tokens_per_step,
        stop_at_eos=stop_at_eos,
        cache=cache,
        cache_refresh=cache_refresh,
        lockstep=lockstep,
    )
    _check_ids_against_vocab(mask_token_id, suppress_token_ids, _known_vocab_size(model))
    if eos_token_id is not None:
        _check_token_id("eos_token_id", eos_token_id)

    ids, pmask = _prepare_prompts(prompts, attention_mask, pad_token_id)
    cache_model = block_cache_model(model) if cache is not None else None
    used_cache = cache if cache_model is not None else None
    decode = dict(
        mask_token_id=mask_token_id,
        gen_length=gen_length,
        block_length=block_length,
        steps=steps,
        temperature=float(temperature),
        remasking=remasking,
        cfg_scale=float(cfg_scale),
        generator=generator,
        suppress_token_ids=suppress_token_ids,
        threshold=None if threshold is None else float(threshold),
        max_tokens_per_step=max_tokens_per_step,
        eos_token_id=eos_token_id if stop_at_eos else None,
        lockstep=lockstep,
        cache=used_cache,
        cache_refresh=cache_refresh,
        cache_model=cache_model,
    )
    if pmask is None or padding_hidden(model):
        x, attn, committed, stats = _generate_batch(model, ids, pmask, **decode)
        passes, row_passes, row_positions = (
            stats["forward_passes"], stats["row_forward_passes"], stats["row_query_positions"]
        )
    else:  # padding-blind model: each group of equal real length runs unpadded
        batch, plen = ids.shape
        tokens = torch.empty((batch, gen_length), dtype=torch.long, device=ids.device)
        committed = torch.empty((batch, steps), dtype=torch.long, device=ids.device)
        row_passes = torch.zeros(batch, dtype=torch.long, device=ids.device)
        row_positions = torch.zeros(batch, dtype=torch.long, device=ids.device)
        passes = 0
        for n, rows in _equal_length_groups(pmask.sum(dim=1)):
            sub, _, sub_committed, stats = _generate_batch(
                model, ids[rows, plen - n :], None, **decode
            )
            tokens[rows] = sub[:, n:]
            committed[rows] = sub_committed
            passes += stats["forward_passes"]
            row_passes[rows] = stats["row_forward_passes"]
            row_positions[rows] = stats["row_query_positions"]
        x = torch.cat([ids, tokens], dim=1)
        attn = torch.cat([pmask, torch.ones_like(tokens, dtype=torch.bool)], dim=1)
    tokens = x[:, ids.shape[1] :]
    return GenerationOutput(
        tokens=tokens,
        sequences=_cut_at_eos(tokens, eos_token_id),
        committed_per_step=committed,
        canvas=x,
        attention_mask=attn,
        forward_passes=passes,
        row_forward_passes=row_passes,
        row_query_positions=row_positions,
        cache=used_cache,
    )


def _generate_batch(
    model: Callable,
    ids: Tensor,
    pmask: Tensor | None,
    *,
    mask_token_id: int,
    gen_length: int,
    block_length: int,
    steps: int,
    **sampling: Any,
) -> tuple:
    """One batch of :func:`generate`: ``(canvas [B, P + gen_length], attn mask, committed, stats)``."""
    batch, plen = ids.shape
    device = ids.device
    x = torch.cat(
        [ids, torch.full((batch, gen_length), mask_token_id, dtype=torch.long, device=device)],
        dim=1,
    )
    gen_ones = torch.ones((batch, gen_length), dtype=torch.bool, device=device)
    attn = None if pmask is None else torch.cat([pmask, gen_ones], dim=1)
    # CFG: the real prompt tokens are the condition.
    real_prompt = torch.ones_like(ids, dtype=torch.bool) if pmask is None else pmask
    cond_positions = torch.cat([real_prompt, torch.zeros_like(gen_ones)], dim=1)

    num_blocks = gen_length // block_length
    blocks = [
        (plen + j * block_length, plen + (j + 1) * block_length) for j in range(num_blocks)
    ]
    committed, stats = _denoise(
        model,
        x,
        attn,
        blocks=blocks,
        steps_per_block=steps // num_blocks,
        cond_positions=cond_positions,
        fillable=None,
        mask_token_id=mask_token_id,
        answer_start=plen,
        **sampling,
    )
    return x, attn, committed, stats


@torch.no_grad()
def infill(
    model: Callable,
    input_ids: Tensor,
    *,
    mask_token_id: int,
    steps: int,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
    suppress_token_ids: Sequence[int] = (),
) -> GenerationOutput:
    """Fill every mask token of ``input_ids`` (anywhere), leaving the other tokens untouched.

    The whole sequence is one block: with ``m`` masks in a row and ``steps`` steps, step
    ``i`` commits ``m // steps`` tokens plus one for the first ``m % steps`` steps (so every
    mask is filled after ``steps`` steps; steps beyond ``m`` commit nothing). Candidate
    tokens, confidences, ``remasking``, ``temperature``, ``generator`` and
    ``suppress_token_ids`` behave as in :func:`generate`; for ``cfg_scale > 0`` the
    unconditional pass masks every token that was not masked at the start.

    Args:
        input_ids: ``LongTensor[L]`` or ``[B, L]`` containing ``mask_token_id`` where tokens
            are to be filled.
        attention_mask: optional ``[B, L]`` (True = real token) passed to the model; masks on
            padded positions are not filled. For a padding-blind model (:func:`padding_hidden`
            ``False``) each row's real tokens run without padding instead, in batches of rows
            with equally many real tokens (greedy: bit-identical to the row alone).

    Returns:
        :class:`GenerationOutput` with ``tokens`` = the filled ``[B, L]`` sequence,
        ``sequences`` = each row without its padding, ``committed_per_step [B, steps]``.
    """
    _check_positive_int("steps", steps)
    _check_sampling(temperature, cfg_scale)
    _check_remasking(remasking)
    _check_ids_against_vocab(mask_token_id, suppress_token_ids, _known_vocab_size(model))
    if not isinstance(input_ids, Tensor) or input_ids.dim() not in (1, 2):
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids)
        raise ValueError(f"input_ids must be a 1-D [L] or 2-D [B, L] tensor, got {shape}")
    x = input_ids.long().clone()
    if x.dim() == 1:
        x = x.unsqueeze(0)
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
    attn = None
    if attention_mask is not None:
        if attention_mask.shape != x.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                f"shape {tuple(x.shape)}; they must match"
            )
        attn = attention_mask.to(device=x.device).bool()
        if bool(attn.all()):
            attn = None
    decode = dict(
        steps_per_block=steps,
        mask_token_id=mask_token_id,
        temperature=float(temperature),
        remasking=remasking,
        cfg_scale=float(cfg_scale),
        generator=generator,
        suppress_token_ids=suppress_token_ids,
    )
    if attn is None or padding_hidden(model):
        real = torch.ones_like(x, dtype=torch.bool) if attn is None else attn
        committed, _ = _denoise(
            model, x, attn, blocks=[(0, x.shape[1])], cond_positions=(x != mask_token_id) & real,
            fillable=attn, **decode,
        )
    else:  # padding-blind model: the real tokens of each group of equal count run unpadded
        committed = torch.zeros((x.shape[0], steps), dtype=torch.long, device=x.device)
        for n, rows in _equal_length_groups(attn.sum(dim=1)):
            if n == 0:
                continue
            real = attn[rows]
            sub = x[rows][real].view(len(rows), n)
            committed[rows], _ = _denoise(
                model, sub, None, blocks=[(0, n)], cond_positions=sub != mask_token_id,
                fillable=None, **decode,
            )
            filled = x[rows]
            filled[real] = sub.reshape(-1)
            x[rows] = filled
    sequences = list(x.unbind(0)) if attn is None else [r[m] for r, m in zip(x, attn)]
    return GenerationOutput(
        tokens=x, sequences=sequences, committed_per_step=committed, canvas=x, attention_mask=attn
    )
