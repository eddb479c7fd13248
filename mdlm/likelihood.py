r"""Monte Carlo conditional log-likelihood of a masked diffusion model (LLaDA's ELBO estimate).

A masked diffusion model has no closed-form likelihood. For a prompt :math:`p` and a continuation
:math:`x` of :math:`L` tokens, the bound scored here is the one LLaDA uses for multiple-choice
tasks (its Eq. 14 / ``get_log_likelihood.py``; ML-GSAI/LLaDA):

.. math::

    \log p_\theta(x \mid p) \;\ge\; \mathrm{ELBO} \;=\;
    \mathbb{E}_{l \sim U\{1..L\}}\; \mathbb{E}_{S \subseteq \{1..L\},\,|S| = l}\;
    \frac{L}{l} \sum_{i \in S} \log p_\theta(x_i \mid p,\, x \text{ with } S \text{ masked})

The prompt is never masked; ``l`` continuation positions are chosen uniformly without
replacement. The ELBO equals the expected log-likelihood of the any-order autoregressive model
defined by the denoiser (a uniformly random unmasking order), so it is a lower bound on the
log-likelihood of that order mixture, and it *equals* :math:`\log p(x \mid p)` when the
denoiser's conditionals are those of one joint distribution.

Each Monte Carlo draw ``d`` evaluates the bracket for one ``(l, S)``; the estimate is the float64
mean of ``mc_num`` draws, with its standard error. As in training, the model's logit for
``[MASK]`` (and any ``suppress_token_ids``) is ``-inf`` before the log-softmax
(:func:`mdlm.objective.denoiser_nll`, the scoring function of training too).

Randomness: ``l`` and ``S`` of draw ``d`` are a pure function of ``(seed, item, d)`` through
:func:`mdlm.rng.keyed_uniform` (:func:`draw_masks`), so the result does not depend on
``batch_size``, on the other requests scored in the same call or on their order, and the global
RNG is left alone. ``stratified=True`` spreads ``l`` evenly over ``1..L`` across the draws (a
randomly shifted grid, so each draw's ``l`` is still marginally uniform and the estimate stays
unbiased); it removes the part of the variance that comes from ``l`` (the spread of the
per-``l`` means), leaving only the variance over subsets of a given size. Draws with the same
mask are evaluated once (for a one-token continuation all ``mc_num`` draws share one forward pass,
which is exact), and draws of requests with equal prompt and continuation lengths share forward
passes; values then agree across batch sizes up to the float32 rounding of batched matmuls.

Padding: none, ever. A forward pass holds only sequences of one request shape (prompt length,
continuation length) and the model is called without an attention mask, so a padding-blind model
(LLaDA, whose attention ignores ``attention_mask``) is scored exactly as in a call with no
requests of other shapes: a request's draws and estimate are bit-identical with or without them.
:func:`greedy_matches` batches the same way.

Deviations from LLaDA's reference code: its ``l`` grid is stratified within each mini-batch (so
results depend on ``batch_size``) and drawn with the global RNG; its mask logit is not suppressed;
it has classifier-free guidance (not implemented here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mdlm.generation import generate
from mdlm.objective import denoiser_nll
from mdlm.rng import keyed_uniform

__all__ = [
    "LikelihoodEstimate",
    "draw_masks",
    "estimate_log_likelihood",
    "estimate_log_likelihoods",
    "greedy_matches",
    "model_max_length",
]

#: stream ids of :func:`mdlm.rng.keyed_uniform` (distinct from training and evaluation streams)
STREAM_LL_COUNT = 0x11C0
STREAM_LL_POSITION = 0x11B0

TokensLike = Tensor | Sequence[int]
ItemKey = int | Sequence[int]


@dataclass(frozen=True)
class LikelihoodEstimate:
    """A Monte Carlo ELBO estimate of ``log p(continuation | prompt)`` in nats.

    Attributes:
        mean: the estimate (mean of the draws); a lower bound on the log-likelihood in expectation.
        stderr: its Monte Carlo standard error. Independent draws: ``std(ddof=1) / sqrt(mc_num)``.
            Stratified draws: the stratified formula ``sqrt(sum_l n_l s_l^2) / mc_num`` over the
            groups of equal ``l`` (``s_l``: within-group std; a group with one draw uses the pooled
            within-group variance), which treats the allocation of draws to ``l`` as fixed (exact
            when ``L`` divides ``mc_num``). ``0.0`` when every draw has the same value (e.g. a
            one-token continuation); ``nan`` for a single draw of a longer continuation.
        mc_num: number of draws.
        num_tokens: continuation length ``L``.
        samples: float64 ``[mc_num]`` per-draw values ``(L/l) * sum_{i in S} log p(x_i | ...)``.
        num_masked: int64 ``[mc_num]`` the ``l`` of each draw.
    """

    mean: float
    stderr: float
    mc_num: int
    num_tokens: int
    samples: Tensor
    num_masked: Tensor


# --------------------------------------------------------------------------------------
# Validation and model helpers
# --------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 1")


def _as_ids(name: str, tokens: TokensLike) -> Tensor:
    ids = tokens if isinstance(tokens, Tensor) else torch.as_tensor(list(tokens), dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}")
    if ids.numel() and (ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex()):
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    return ids.long().cpu()


def _item_keys(item: ItemKey) -> tuple[int, ...]:
    keys = (item,) if _is_int(item) else tuple(item)
    for k in keys:
        if not _is_int(k) or not 0 <= k < 2**63:
            raise ValueError(f"item key {item!r} must be an integer (or integers) in [0, 2^63)")
    return keys


def model_max_length(model: Any) -> int | None:
    """The longest sequence the model accepts, when it says so.

    Looks at ``max_seq_len`` (mdlm's :class:`~mdlm.models.transformer.Transformer`) and
    ``config.max_position_embeddings`` / ``config.max_sequence_length`` (Hugging Face, LLaDA) on
    the model, its ``backbone`` and the backbone's wrapped ``model``.
    """
    candidates = [model]
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        candidates += [backbone, getattr(backbone, "model", None)]
    candidates.append(getattr(model, "model", None))
    for obj in candidates:
        if obj is None:
            continue
        for holder, attr in ((obj, "max_seq_len"), (getattr(obj, "config", None), "max_position_embeddings"),
                             (getattr(obj, "config", None), "max_sequence_length")):
            value = getattr(holder, attr, None) if holder is not None else None
            if _is_int(value) and value > 0:
                return value
    return None


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


# --------------------------------------------------------------------------------------
# The draws
# --------------------------------------------------------------------------------------
def draw_masks(
    length: int,
    mc_num: int,
    *,
    seed: int = 0,
    item: ItemKey = 0,
    stratified: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """The masked continuation positions of every draw: ``BoolTensor[mc_num, length]``.

    Row ``d`` masks exactly ``l_d`` positions, ``l_d`` uniform on ``1..length`` and the positions
    a uniformly random ``l_d``-subset (the first ``l_d`` of a random permutation given by sorting
    keyed uniforms). Independent draws: ``l_d`` comes from ``keyed_uniform((seed, stream, *item,
    d))``, so row ``d`` does not depend on ``mc_num``. Stratified: ``l_d = floor(L * frac(u0 +
    d / mc_num)) + 1`` with one keyed ``u0`` per item, which gives every ``l`` either
    ``floor(mc_num / L)`` or ``ceil(mc_num / L)`` draws.
    """
    _check_count("length", length)
    _check_count("mc_num", mc_num)
    keys = _item_keys(item)
    d = torch.arange(mc_num, device=device)
    if stratified:
        u0 = keyed_uniform((seed, STREAM_LL_COUNT, *keys), device=device, dtype=torch.float64)
        u = torch.frac(u0 + d.to(torch.float64) / mc_num)
    else:
        u = keyed_uniform((seed, STREAM_LL_COUNT, *keys, d), device=device, dtype=torch.float64)
    num_masked = (u * length).floor().long().clamp(0, length - 1) + 1
    pos = torch.arange(length, device=device)
    order = keyed_uniform((seed, STREAM_LL_POSITION, *keys, d[:, None], pos[None, :]), device=device)
    rank = order.argsort(dim=1, stable=True).argsort(dim=1)
    return rank < num_masked[:, None]


def _stderr(samples: Tensor, num_masked: Tensor, length: int, stratified: bool) -> float:
    n = samples.numel()
    if length == 1:  # a single possible mask: the estimate is exact
        return 0.0
    if n < 2:
        return float("nan")
    if bool((samples == samples[0]).all()):
        return 0.0
    if stratified:
        groups = [samples[num_masked == ell] for ell in torch.unique(num_masked).tolist()]
        big = [g for g in groups if g.numel() >= 2]
        if big:
            # Var(mean) = sum_l (n_l / n)^2 s_l^2 / n_l = sum_l n_l s_l^2 / n^2
            dof = sum(g.numel() - 1 for g in big)
            pooled = sum(float(((g - g.mean()) ** 2).sum()) for g in big) / dof
            total = sum(g.numel() * (float(g.var(unbiased=True)) if g.numel() >= 2 else pooled) for g in groups)
            return math.sqrt(total) / n
    return float(samples.std(unbiased=True)) / math.sqrt(n)


# --------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------
@torch.no_grad()
def estimate_log_likelihoods(
    model: Callable,
    requests: Sequence[tuple[TokensLike, TokensLike]],
    *,
    mask_token_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    items: Sequence[ItemKey] | None = None,
    stratified: bool = False,
    suppress_token_ids: Sequence[int] = (),
    max_length: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int], Any] | None = None,
) -> list[LikelihoodEstimate]:
    """Estimate ``log p(continuation | prompt)`` for every ``(prompt, continuation)`` request.

    Args:
        model: ``model(input_ids [B, T]) -> logits [B, T, V]`` (or an output with ``.logits``);
            put it in eval mode yourself (dropout would make repeated masks disagree).
        requests: ``(prompt, continuation)`` pairs of 1-D token-id sequences (lists or tensors);
            the prompt may be empty, the continuation may not.
        mask_token_id: the absorbing ``[MASK]`` id; its logit is ``-inf`` before the log-softmax.
        mc_num: Monte Carlo draws per request (LLaDA: 128; 1 suffices for one-token answers).
        batch_size: sequences per forward pass. Draws of requests with equal prompt and
            continuation lengths share forward passes (never padded); the result does not depend
            on it (beyond floating-point rounding of the model's batched matmuls).
        seed: seed of the draws.
        items: one key per request (an int or a tuple of ints in ``[0, 2^63)``) for the draws;
            default: the request's index. Requests with the same key and continuation length get
            the same masks (common random numbers, e.g. for the choices of one question).
        stratified: spread ``l`` evenly over ``1..L`` across the draws (lower variance).
        suppress_token_ids: further ids whose logits are ``-inf`` (the model never predicts them).
        max_length: the longest sequence the model accepts; default :func:`model_max_length`.
            ``len(prompt) + len(continuation)`` must not exceed it.
        device: where the forward passes run; default the device of the model's parameters.
        progress: called with the number of sequences of each forward pass (e.g. ``tqdm.update``).

    Returns:
        one :class:`LikelihoodEstimate` per request, in order.

    Raises:
        ValueError: naming the value, for ``mc_num`` or ``batch_size`` < 1, an empty
            continuation, a continuation containing ``mask_token_id``, a prompt plus
            continuation longer than ``max_length``, or ``items`` of the wrong length.
    """
    _check_count("mc_num", mc_num)
    _check_count("batch_size", batch_size)
    if not _is_int(mask_token_id) or mask_token_id < 0:
        raise ValueError(f"mask_token_id={mask_token_id!r} must be an integer >= 0")
    if items is not None and len(items) != len(requests):
        raise ValueError(f"items has {len(items)} keys for {len(requests)} requests; give one per request")
    if max_length is None:
        max_length = model_max_length(model)
    if device is None:
        device = _model_device(model)
    suppress = sorted({mask_token_id, *suppress_token_ids})

    prepared = []
    for j, (prompt, continuation) in enumerate(requests):
        p = _as_ids(f"request {j}: prompt", prompt)
        c = _as_ids(f"request {j}: continuation", continuation)
        if c.numel() == 0:
            raise ValueError(
                f"request {j}: the continuation is empty (0 tokens); its log-likelihood is not "
                "estimated (score at least one token)"
            )
        if bool((c == mask_token_id).any()):
            raise ValueError(
                f"request {j}: the continuation contains mask_token_id={mask_token_id}, which the "
                "model can never predict (log-likelihood -inf)"
            )
        total = p.numel() + c.numel()
        if max_length is not None and total > max_length:
            raise ValueError(
                f"request {j}: prompt ({p.numel()} tokens) + continuation ({c.numel()} tokens) = "
                f"{total} tokens exceeds the model's max_length={max_length}; shorten the prompt"
            )
        key = j if items is None else items[j]
        masks = draw_masks(c.numel(), mc_num, seed=seed, item=key, stratified=stratified)
        unique, inverse = torch.unique(masks, dim=0, return_inverse=True)
        prepared.append({"prompt": p, "cont": c, "masks": masks, "unique": unique, "inverse": inverse,
                         "sums": torch.empty(unique.shape[0], dtype=torch.float64)})

    # one row per distinct mask of each request; rows of equal (P, L) share forward passes
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for j, r in enumerate(prepared):
        shape = (r["prompt"].numel(), r["cont"].numel())
        groups.setdefault(shape, []).extend((j, u) for u in range(r["unique"].shape[0]))
    for (plen, _), rows in groups.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            seqs = torch.stack([torch.cat([prepared[j]["prompt"], prepared[j]["cont"]]) for j, _ in chunk])
            masked = torch.stack([prepared[j]["unique"][u] for j, u in chunk])
            seqs, masked = seqs.to(device), masked.to(device)
            cont = seqs[:, plen:]
            noisy = seqs.clone()
            noisy[:, plen:] = torch.where(masked, torch.full_like(cont, mask_token_id), cont)
            logp = -denoiser_nll(model, noisy, seqs, suppress, start=plen).to(torch.float64)
            sums = torch.where(masked, logp, torch.zeros_like(logp)).sum(-1).cpu()
            for (j, u), value in zip(chunk, sums):
                prepared[j]["sums"][u] = value
            if progress is not None:
                progress(len(chunk))

    results = []
    for r in prepared:
        length = r["cont"].numel()
        num_masked = r["masks"].sum(-1)
        samples = r["sums"][r["inverse"]] * (length / num_masked.to(torch.float64))
        results.append(
            LikelihoodEstimate(
                mean=float(samples.mean()),
                stderr=_stderr(samples, num_masked, length, stratified),
                mc_num=mc_num,
                num_tokens=length,
                samples=samples,
                num_masked=num_masked,
            )
        )
    return results


def estimate_log_likelihood(
    model: Callable,
    prompt: TokensLike,
    continuation: TokensLike,
    *,
    mask_token_id: int,
    mc_num: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    item: ItemKey = 0,
    stratified: bool = False,
    suppress_token_ids: Sequence[int] = (),
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> LikelihoodEstimate:
    """:func:`estimate_log_likelihoods` for one ``(prompt, continuation)``, draws keyed by ``item``."""
    return estimate_log_likelihoods(
        model,
        [(prompt, continuation)],
        mask_token_id=mask_token_id,
        mc_num=mc_num,
        batch_size=batch_size,
        seed=seed,
        items=[item],
        stratified=stratified,
        suppress_token_ids=suppress_token_ids,
        max_length=max_length,
        device=device,
    )[0]


# --------------------------------------------------------------------------------------
# Greedy check
# --------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_matches(
    model: Callable,
    requests: Sequence[tuple[TokensLike, TokensLike]],
    *,
    mask_token_id: int,
    suppress_token_ids: Sequence[int] = (),
    batch_size: int = 32,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> list[bool]:
    """Does greedy unmasking reproduce each continuation exactly? (LLaDA's ``is_greedy``.)

    The continuation's ``L`` positions start masked after the (never masked) prompt, and at each of
    ``L`` steps the single most confident prediction is committed (argmax, low-confidence
    remasking, one block): :func:`mdlm.generation.generate` with ``gen_length = steps =
    block_length = L`` and temperature 0, as LLaDA's ``suffix_greedy_prediction``. Requests with
    equal prompt and continuation lengths are decoded together, ``batch_size`` at a time, without
    padding: a request's result does not depend on requests of other lengths.
    """
    _check_count("batch_size", batch_size)
    if max_length is None:
        max_length = model_max_length(model)
    if device is None:
        device = _model_device(model)
    others = [t for t in suppress_token_ids if t != mask_token_id]
    pairs = []
    for j, (prompt, continuation) in enumerate(requests):
        p = _as_ids(f"request {j}: prompt", prompt)
        c = _as_ids(f"request {j}: continuation", continuation)
        if c.numel() == 0:
            raise ValueError(f"request {j}: the continuation is empty (0 tokens); nothing to check")
        if max_length is not None and p.numel() + c.numel() > max_length:
            raise ValueError(
                f"request {j}: prompt ({p.numel()} tokens) + continuation ({c.numel()} tokens) = "
                f"{p.numel() + c.numel()} tokens exceeds the model's max_length={max_length}"
            )
        pairs.append((p, c))
    groups: dict[tuple[int, int], list[int]] = {}
    for j, (p, c) in enumerate(pairs):
        groups.setdefault((p.numel(), c.numel()), []).append(j)
    out = [False] * len(pairs)
    for (_, length), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            prompts = torch.stack([pairs[j][0] for j in chunk]).to(device)
            result = generate(
                model,
                prompts,
                mask_token_id=mask_token_id,
                gen_length=length,
                steps=length,
                block_length=length,
                temperature=0.0,
                suppress_token_ids=others,
            )
            for j, row in zip(chunk, result.tokens.cpu()):
                out[j] = bool(torch.equal(row, pairs[j][1]))
    return out
