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

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "REMASKING_STRATEGIES",
    "EXTRACTION_RULES",
    "GenerationOutput",
    "GenerationConfig",
    "PRESETS",
    "get_preset",
    "num_transfer_tokens",
    "padding_hidden",
    "generate",
    "infill",
]

#: Valid values of ``remasking``.
REMASKING_STRATEGIES = ("low_confidence", "random")
#: Valid answer-extraction rules of a :class:`GenerationConfig`.
EXTRACTION_RULES = ("gsm8k", "math")

PromptsLike = Union[Tensor, Sequence[Union[Tensor, Sequence[int]]]]


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


def _check_token_id(name: str, value: Any, vocab_size: Optional[int] = None) -> None:
    if not _is_int(value) or value < 0 or (vocab_size is not None and value >= vocab_size):
        valid = f"0..{vocab_size - 1}" if vocab_size is not None else "an integer >= 0"
        where = f" of the model's vocabulary of size {vocab_size}" if vocab_size else ""
        raise ValueError(f"{name}={value!r} is out of range{where}; valid: {valid}")


def _known_vocab_size(model: Any) -> Optional[int]:
    """Vocabulary size advertised by the model (``.vocab_size`` or ``.config.vocab_size``)."""
    for obj in (model, getattr(model, "config", None)):
        size = getattr(obj, "vocab_size", None) if obj is not None else None
        if _is_int(size) and size > 0:
            return size
    return None


def _check_ids_against_vocab(
    mask_token_id: int, suppress: Sequence[int], vocab_size: Optional[int]
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
    """

    tokens: Tensor
    sequences: list
    committed_per_step: Tensor
    canvas: Tensor
    attention_mask: Optional[Tensor] = None


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

    ``generate(model, prompts, mask_token_id=..., **config.generate_kwargs())`` decodes with
    the preset; use ``dataclasses.replace(config, steps=...)`` to derive variants.
    """

    gen_length: int
    steps: int
    block_length: Optional[int] = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    shots: int = 0
    prompt_template: str = "gsm8k"
    extraction: str = "gsm8k"
    description: str = ""

    def __post_init__(self) -> None:
        _validate_decoding(
            gen_length=self.gen_length,
            steps=self.steps,
            block_length=self.block_length,
            temperature=self.temperature,
            cfg_scale=self.cfg_scale,
            remasking=self.remasking,
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
        }

    def replace(self, **changes: Any) -> "GenerationConfig":
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
    generator: Optional[torch.Generator],
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
def _call_model(model: Callable, x: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    out = model(x) if attention_mask is None else model(x, attention_mask=attention_mask)
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
    attention_mask: Optional[Tensor],
    *,
    blocks: Sequence[tuple],
    steps_per_block: int,
    cond_positions: Tensor,
    fillable: Optional[Tensor],
    mask_token_id: int,
    temperature: float,
    remasking: str,
    cfg_scale: float,
    generator: Optional[torch.Generator],
    suppress_token_ids: Sequence[int],
) -> Tensor:
    """Run the reverse process in place on ``x``; return ``committed_per_step [B, steps]``."""
    batch = x.shape[0]
    device = x.device
    work = _work_dtype(device)
    total_steps = len(blocks) * steps_per_block
    committed = torch.zeros(batch, total_steps, dtype=torch.long, device=device)
    suppress = sorted({int(mask_token_id), *(int(t) for t in suppress_token_ids)})
    suppress_idx = torch.tensor(suppress, dtype=torch.long, device=device)
    vocab_checked = False

    step = 0
    for start, end in blocks:
        n = end - start
        region_ok = None if fillable is None else fillable[:, start:end]
        masked = x[:, start:end] == mask_token_id
        if region_ok is not None:
            masked &= region_ok
        schedule = num_transfer_tokens(masked.sum(dim=1), steps_per_block)  # [B, S]
        active = schedule.any(dim=0).tolist()  # one host sync per block
        ranks_base = torch.arange(n, device=device).expand(batch, n)
        for i in range(steps_per_block):
            if not active[i]:  # nothing to commit anywhere in the batch at this step
                step += 1
                continue

            # ---- logits of the current block (with classifier-free guidance) ----
            if cfg_scale > 0:
                un_x = x.masked_fill(cond_positions, mask_token_id)
                both = torch.cat([x, un_x], dim=0)
                both_mask = (
                    None if attention_mask is None else torch.cat([attention_mask] * 2, dim=0)
                )
                out = _call_model(model, both, both_mask)
                vocab = out.shape[-1]
                combine = torch.promote_types(out.dtype, torch.float32)
                cond = out[:batch, start:end].to(combine)
                un = out[batch:, start:end].to(combine)
                logits = un + (cfg_scale + 1.0) * (cond - un)
            else:
                out = _call_model(model, x, attention_mask)
                vocab = out.shape[-1]
                logits = out[:, start:end]
            if not vocab_checked:
                _check_ids_against_vocab(mask_token_id, suppress_token_ids, vocab)
                vocab_checked = True
            logits = logits.to(work).index_fill(-1, suppress_idx, float("-inf"))

            # ---- candidate tokens: greedy or float64 Gumbel-max ----
            if temperature > 0:
                u = _draw_uniform(
                    (batch, n, vocab), start=start, step=step, dtype=work, device=device,
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
                    (batch, n), start=start, step=step, dtype=work, device=device,
                    generator=generator,
                )
            masked = x[:, start:end] == mask_token_id
            if region_ok is not None:
                masked &= region_ok
            confidence = torch.where(masked, confidence.to(work), float("-inf"))
            order = confidence.argsort(dim=-1, descending=True, stable=True)
            ranks = torch.empty_like(order).scatter_(-1, order, ranks_base)
            transfer = masked & (ranks < schedule[:, i : i + 1])
            x[:, start:end] = torch.where(transfer, x0, x[:, start:end])
            committed[:, step] = transfer.sum(dim=-1)
            step += 1
    return committed


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
    queue, seen = [model], set()
    while queue:
        obj = queue.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        value = getattr(obj, "padding_hidden", None)
        if value is not None:
            return bool(value)
        for name in ("module", "backbone", "_orig_mod"):
            inner = getattr(obj, name, None)
            if inner is not None and not isinstance(inner, ModuleType):
                queue.append(inner)
    return True


def _equal_length_groups(lengths: Tensor) -> list:
    """``[(length, row indices)]`` of the rows of equal ``lengths``, by first appearance."""
    values = lengths.tolist()
    order = list(dict.fromkeys(values))
    return [(n, torch.tensor([b for b, v in enumerate(values) if v == n], device=lengths.device))
            for n in order]


def _prepare_prompts(
    prompts: PromptsLike, attention_mask: Optional[Tensor], pad_token_id: Optional[int]
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


def _cut_at_eos(tokens: Tensor, eos_token_id: Optional[int]) -> list:
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
    block_length: Optional[int] = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    eos_token_id: Optional[int] = None,
    pad_token_id: Optional[int] = None,
    attention_mask: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    suppress_token_ids: Sequence[int] = (),
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
            ``gen_length // block_length``; each block gets ``steps // num_blocks`` steps.
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

    Schedule: in each block, with ``m`` masked tokens at the block's start and ``S`` steps
    per block, step ``i`` commits ``m // S`` tokens plus one for the first ``m % S`` steps
    (LLaDA's ``get_num_transfer_tokens``); a committed token is never remasked.

    Returns:
        :class:`GenerationOutput` with ``tokens [B, gen_length]``, ``sequences`` (cut at
        EOS), ``committed_per_step [B, steps]``, the full ``canvas`` and its attention mask.

    Raises:
        ValueError: naming the bad value and what would be valid, for: ``gen_length``,
            ``steps`` or ``block_length`` < 1; ``gen_length`` not a multiple of
            ``block_length``; ``steps`` not a multiple of the number of blocks; an unknown
            ``remasking``; a negative ``temperature`` or ``cfg_scale``; ``mask_token_id`` (or
            a suppressed id) outside the model's vocabulary; badly shaped prompts; prompts of
            different lengths without ``pad_token_id``.
    """
    block_length = _validate_decoding(
        gen_length=gen_length,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        cfg_scale=cfg_scale,
        remasking=remasking,
    )
    _check_ids_against_vocab(mask_token_id, suppress_token_ids, _known_vocab_size(model))
    if eos_token_id is not None:
        _check_token_id("eos_token_id", eos_token_id)

    ids, pmask = _prepare_prompts(prompts, attention_mask, pad_token_id)
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
    )
    if pmask is None or padding_hidden(model):
        x, attn, committed = _generate_batch(model, ids, pmask, **decode)
    else:  # padding-blind model: each group of equal real length runs unpadded
        batch, plen = ids.shape
        tokens = torch.empty((batch, gen_length), dtype=torch.long, device=ids.device)
        committed = torch.empty((batch, steps), dtype=torch.long, device=ids.device)
        for n, rows in _equal_length_groups(pmask.sum(dim=1)):
            sub, _, sub_committed = _generate_batch(model, ids[rows, plen - n :], None, **decode)
            tokens[rows] = sub[:, n:]
            committed[rows] = sub_committed
        x = torch.cat([ids, tokens], dim=1)
        attn = torch.cat([pmask, torch.ones_like(tokens, dtype=torch.bool)], dim=1)
    tokens = x[:, ids.shape[1] :]
    return GenerationOutput(
        tokens=tokens,
        sequences=_cut_at_eos(tokens, eos_token_id),
        committed_per_step=committed,
        canvas=x,
        attention_mask=attn,
    )


def _generate_batch(
    model: Callable,
    ids: Tensor,
    pmask: Optional[Tensor],
    *,
    mask_token_id: int,
    gen_length: int,
    block_length: int,
    steps: int,
    **sampling: Any,
) -> tuple:
    """One batch of :func:`generate`: ``(canvas [B, P + gen_length], attn mask, committed)``."""
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
    committed = _denoise(
        model,
        x,
        attn,
        blocks=blocks,
        steps_per_block=steps // num_blocks,
        cond_positions=cond_positions,
        fillable=None,
        mask_token_id=mask_token_id,
        **sampling,
    )
    return x, attn, committed


@torch.no_grad()
def infill(
    model: Callable,
    input_ids: Tensor,
    *,
    mask_token_id: int,
    steps: int,
    attention_mask: Optional[Tensor] = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    generator: Optional[torch.Generator] = None,
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
        committed = _denoise(
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
            committed[rows] = _denoise(
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
