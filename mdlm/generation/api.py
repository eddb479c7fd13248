"""The public entry points: :func:`generate` (answers after prompts) and :func:`infill` (masks anywhere).

Each validates its arguments, prepares the batch (left-padded prompts, or for a padding-blind
model groups of equal real length run unpadded), runs :func:`~mdlm.generation.denoise._denoise`
and packages a :class:`~mdlm.generation.config.GenerationOutput`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mdlm.generation.config import (
    GenerationOutput,
    _check_ids_against_vocab,
    _check_positive_int,
    _check_remasking,
    _check_sampling,
    _check_token_id,
    _known_vocab_size,
    _validate_decoding,
    _validate_fast,
)
from mdlm.generation.denoise import _denoise
from mdlm.generation.model_calls import block_cache_model, padding_hidden
from mdlm.generation.prompts import PromptsLike, _cut_at_eos, _equal_length_groups, _prepare_prompts


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
        model: ``model(input_ids, attention_mask=None) -> logits [B, L, V]`` (see :mod:`mdlm.generation`).
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
            prompt length run as separate unpadded batches (see :mod:`mdlm.generation`).
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
