r"""The masked-diffusion (MD) objective as pure tensor functions.

Notation: a batch of B sequences of length L, clean tokens :math:`x_0`, a mask ratio :math:`t_b`
per sequence, a boolean ``maskable`` set (prompt and padding excluded), and the noised sequence
:math:`x_t` in which every maskable token is replaced by the absorbing ``[MASK]`` token
independently with probability :math:`t_b`. With :math:`m_{bi} = 1[x_{t,bi} = \mathrm{MASK}]` and
the per-token cross-entropy :math:`\ell_{bi} = -\log p_\theta(x_{0,bi} \mid x_t)`, the training
loss is

.. math:: \mathcal{L} = \frac{1}{Z} \sum_b w(t_b) \sum_i m_{bi}\, \ell_{bi}

with the weight :math:`w(t) = 1/t` (``loss_weight="elbo"``: the MD evidence lower bound) or
:math:`w(t) = 1` (``"none"``), and the normalisation :math:`Z` named by ``normalization``:

- ``batch_tokens``: :math:`Z = B \cdot L` (SMDM / LLaDA pre-training);
- ``maskable_tokens``: :math:`Z = \sum_b |\mathrm{maskable}_b|` (MDLM; with 1/t this is an
  unbiased estimate of the NELBO per token);
- ``per_sequence``: :math:`\mathcal{L} = \frac{1}{B}\sum_b \frac{w(t_b)}{|\mathrm{maskable}_b|}
  \sum_i m_{bi}\ell_{bi}` (LLaDA SFT's answer-length normalisation);
- ``masked_tokens``: :math:`Z = \sum_{b,i} m_{bi}` (the mean CE over masked tokens; a random
  denominator, so with 1/t it is *not* an unbiased bound — a warning is raised).

Denominators are clamped to at least 1, so a batch with nothing masked gives a loss of 0, not NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

LossWeight = Literal["elbo", "none"]
Normalization = Literal["batch_tokens", "maskable_tokens", "per_sequence", "masked_tokens"]

LOSS_WEIGHTS: tuple[str, ...] = ("elbo", "none")
NORMALIZATIONS: tuple[str, ...] = ("batch_tokens", "maskable_tokens", "per_sequence", "masked_tokens")


def check_loss_options(loss_weight: str, normalization: str) -> None:
    """Validate the named options; warn on the biased ``elbo`` + ``masked_tokens`` combination."""
    if loss_weight not in LOSS_WEIGHTS:
        raise ValueError(f"loss_weight={loss_weight!r} is not one of {LOSS_WEIGHTS}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}")
    if loss_weight == "elbo" and normalization == "masked_tokens":
        warnings.warn(
            "loss_weight='elbo' with normalization='masked_tokens' divides the 1/t-weighted sum by a "
            "random count: the result is not an unbiased NELBO estimate. Use 'maskable_tokens' for the "
            "bound, or loss_weight='none' for the mean masked cross-entropy.",
            UserWarning,
            stacklevel=3,
        )


def mask_tokens(
    input_ids: torch.Tensor,
    t: torch.Tensor,
    mask_token_id: int,
    uniforms: torch.Tensor,
    maskable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (absorbing) process: mask each maskable token of row b iff ``uniforms[b, i] < t[b]``.

    Returns ``(noisy_ids, masked)`` where ``masked`` is the boolean [B, L] set of masked positions.
    """
    if uniforms.shape != input_ids.shape:
        raise ValueError(f"uniforms shape {tuple(uniforms.shape)} != input_ids shape {tuple(input_ids.shape)}")
    masked = uniforms < t.to(uniforms.dtype).unsqueeze(-1)
    if maskable is not None:
        masked = masked & maskable
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, masked


def suppress_tokens(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Set the logits of ``token_ids`` (e.g. [MASK]) to -inf: the model can never predict them.

    This is MDLM's "SUBS" parameterisation of the absorbing state; it returns a new tensor.
    """
    if not token_ids:
        return logits
    logits = logits.clone()
    logits[..., list(token_ids)] = float("-inf")
    return logits


def token_nll(logits: torch.Tensor, targets: torch.Tensor, suppress_token_ids: Sequence[int] = ()) -> torch.Tensor:
    r"""Per-token :math:`-\log p_\theta(x_0 \mid x_t)` with the log-softmax in fp32 (shape [B, L]).

    Suppressed ids get -inf (as :func:`suppress_tokens`). When ``logits`` are not fp32 the cast
    already made a private copy, so the ids are filled in place on it: one [B, L, V] pass less
    (measured: the clone was the largest per-step cost of the Trainer over a raw loop,
    ``benchmarks/train_throughput.py``). fp32 input is never written to.
    """
    out = logits.float()
    ids = list(suppress_token_ids)
    if ids:
        if out is logits:
            out = out.index_fill(-1, torch.tensor(ids, device=out.device), float("-inf"))
        else:
            out[..., ids] = float("-inf")
    return -F.log_softmax(out, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def denoiser_nll(
    model: Callable[..., Any],
    noisy: torch.Tensor,
    targets: torch.Tensor,
    suppress_token_ids: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    r"""The one scoring function: :math:`\ell_{bi} = -\log p_\theta(x_{0,bi} \mid x_t)` for positions
    :math:`i \ge` ``start`` (shape [B, L - start]).

    One forward ``model(noisy)`` (``model(noisy, attention_mask)`` when a mask is given; an output
    with ``.logits`` is unwrapped), then :func:`token_nll` (fp32 log-softmax, [MASK] and the other
    ``suppress_token_ids`` at -inf). Training, evaluation, the adaptive probe and the likelihood
    estimator all score through it; which positions count (the masked ones) and how they are
    weighted is their estimator's business.
    """
    out = model(noisy) if attention_mask is None else model(noisy, attention_mask)
    logits = out.logits if hasattr(out, "logits") else out
    if start:
        logits, targets = logits[:, start:], targets[:, start:]
    return token_nll(logits, targets, suppress_token_ids)


def loss_weights(t: torch.Tensor, loss_weight: LossWeight) -> torch.Tensor:
    """w(t): ``1/t`` for ``"elbo"``, ``1`` for ``"none"`` (shape [B])."""
    if loss_weight == "elbo":
        return 1.0 / t
    if loss_weight == "none":
        return torch.ones_like(t)
    raise ValueError(f"loss_weight={loss_weight!r} is not one of {LOSS_WEIGHTS}")


def md_loss_parts(
    nll: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    maskable: torch.Tensor | None,
    loss_weight: LossWeight,
    normalization: Normalization,
    sequence_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The loss as a ratio :math:`\mathcal{L} = N / Z` of a numerator and a normaliser (two scalars).

    - ``batch_tokens``: :math:`N = \sum_b w_b S_b`, :math:`Z = B L`;
    - ``maskable_tokens``: :math:`N = \sum_b w_b S_b`, :math:`Z = \sum_b |\mathrm{maskable}_b|`;
    - ``per_sequence``: :math:`N = \sum_b w_b S_b / \max(1, |\mathrm{maskable}_b|)`, :math:`Z = B`;
    - ``masked_tokens``: :math:`N = \sum_b w_b S_b`, :math:`Z = \sum_{b,i} m_{bi}`,

    with :math:`S_b = \sum_i m_{bi}\ell_{bi}` and :math:`w_b = w(t_b)` (times ``sequence_weights``).
    Both parts are *sums* over sequences, so the loss of a global batch split over ranks and
    gradient-accumulation steps is :math:`\sum_r N_r / \max(1, \sum_r Z_r)`: data-parallel
    training all-reduces Z (:class:`mdlm.normalizer.GlobalBatchNormalizer`).
    """
    B, L = nll.shape
    masked_nll = torch.where(masked, nll, torch.zeros_like(nll))
    w = loss_weights(t.to(nll.dtype), loss_weight)
    per_seq = w * masked_nll.sum(-1)  # [B]
    if sequence_weights is not None:
        per_seq = per_seq * sequence_weights.to(per_seq.dtype)
    if maskable is None:
        maskable_count = torch.full((B,), L, dtype=nll.dtype, device=nll.device)
    else:
        maskable_count = maskable.sum(-1).to(nll.dtype)
    if normalization == "batch_tokens":
        return per_seq.sum(), torch.tensor(float(B * L), dtype=nll.dtype, device=nll.device)
    if normalization == "maskable_tokens":
        return per_seq.sum(), maskable_count.sum()
    if normalization == "per_sequence":
        return (per_seq / maskable_count.clamp(min=1)).sum(), torch.tensor(float(B), dtype=nll.dtype, device=nll.device)
    if normalization == "masked_tokens":
        return per_seq.sum(), masked.sum().to(nll.dtype)
    raise ValueError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}")


def md_loss(
    nll: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    maskable: torch.Tensor | None,
    loss_weight: LossWeight,
    normalization: Normalization,
    sequence_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted, normalised MD loss of the module docstring (a scalar): N / max(1, Z) of :func:`md_loss_parts`.

    ``sequence_weights`` [B] multiplies each sequence's term (importance weights p(t)/q(t) of an
    adaptive proposal: the expected loss is then that of the target distribution p).
    """
    numerator, normaliser = md_loss_parts(nll, masked, t, maskable, loss_weight, normalization, sequence_weights)
    return numerator / normaliser.clamp(min=1)


def nelbo_sums(nll: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence NELBO numerators :math:`\frac{1}{t_b}\sum_i m_{bi}\ell_{bi}` in float64 (shape [B]).

    Divided by the number of maskable tokens and averaged over :math:`t \sim U[\epsilon, 1]` this is
    the NELBO per token, an upper bound on the negative log-likelihood per token.
    """
    masked_nll = torch.where(masked, nll, torch.zeros_like(nll)).to(torch.float64)
    return masked_nll.sum(-1) / t.to(torch.float64)
