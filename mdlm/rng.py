"""Counter-based random numbers: uniforms that are a pure function of integer keys.

Training and evaluation draw t and masks from ``keyed_uniform(seed, keys...)`` instead of a
stateful generator, so a value depends only on *what* it is for (seed, step, global sample index,
token position) and never on the batch size, the number of data-loader workers or ranks, or the
order in which batches are processed. The global RNG is left alone.

The mixer is the "lowbias32" integer hash (C. Wellons), applied in int64 arithmetic with every
product kept below 2^63, so it is exact and identical on every device::

    h ^= h >> 16;  h *= 0x7FEB352D;  h ^= h >> 15;  h *= 0x846CA68B;  h ^= h >> 16   (mod 2^32)

Keys are folded in one at a time, ``h = mix(h ^ key_j)``; the result ``u = (h + 0.5) / 2^32`` lies
strictly inside (0, 1) with 32-bit resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 without int64 overflow (split x into 16-bit halves)."""
    lo = x & 0xFFFF
    hi = x >> 16
    return ((lo * c) + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, _C1)
    h = h ^ (h >> 15)
    h = _mul32(h, _C2)
    return h ^ (h >> 16)


def keyed_hash(keys: Sequence[int | torch.Tensor], device: torch.device | str | None = None) -> torch.Tensor:
    """32-bit hash (as int64 in [0, 2^32)) of broadcastable integer keys."""
    h = torch.tensor(_GOLDEN, dtype=torch.int64, device=device)
    for key in keys:
        k = torch.as_tensor(key, dtype=torch.int64, device=device)
        # fold 64-bit keys into 32 bits (low word, then high word) so large seeds stay distinct
        h = _mix32(h ^ (k & _MASK32))
        h = _mix32(h ^ ((k >> 32) & _MASK32))
    return h


def keyed_uniform(
    keys: Sequence[int | torch.Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniforms in (0, 1), one per element of the broadcast of ``keys``; a pure function of the keys."""
    h = keyed_hash(keys, device=device)
    return ((h.to(torch.float64) + 0.5) / 4294967296.0).to(dtype)
