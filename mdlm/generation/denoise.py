"""The reverse-process loop: LLaDA's commit schedule, sampling, remasking, and the fast paths.

:func:`_denoise` runs the loop in place on a canvas (exact schedule, confidence threshold, EOS
stop, block KV cache, lockstep); :func:`num_transfer_tokens` is LLaDA's per-step schedule and
:func:`_draw_uniform` the one seam through which all noise is drawn (tests replace it).

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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mdlm.generation.config import _check_ids_against_vocab, _check_positive_int
from mdlm.generation.model_calls import _call_model
from mdlm.models.kv_cache import KVCache


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
