"""Build models without allocating them, even when their constructors name a device.

``with torch.device("meta"):`` only sets the *default* device: a constructor that passes
``device="cpu"`` explicitly still allocates. LLaDA's published ``modeling_llada.py`` does exactly
that — its ``LLaDAModelLM.__init__`` sets ``init_device = "cpu"`` and every layer is built with
``device=config.init_device`` — so under a plain meta context an 8B LLaDA lands in host memory on
every rank. :func:`force_device` is a ``TorchFunctionMode`` that rewrites the ``device`` argument of
every tensor factory (the set torch's own device context patches: ``empty``, ``zeros``, ``arange``,
``tensor``, ...) and of ``Tensor.to`` / ``Module.to``-style moves to the forced device, so nothing
is allocated whatever the code asks for. Parameters then have shapes and dtypes only; FSDP2
materialises each rank's shard (:func:`mdlm.parallel.parallelize`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

__all__ = ["allocated_bytes", "force_device", "is_meta_context"]


def _constructors() -> set[Any]:
    from torch.utils._device import _device_constructors

    return set(_device_constructors())


class _ForceDevice(TorchFunctionMode):
    """Rewrite the ``device`` of tensor factories and of ``Tensor.to``/``cuda``/``cpu`` to one device."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.constructors = _constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.constructors:
            kwargs["device"] = self.device
        elif func in (torch.Tensor.cuda, torch.Tensor.cpu):
            return args[0].to(self.device)
        elif func is torch.Tensor.to:
            # Tensor.to(device | dtype | tensor, ...): keep the dtype request, drop the device one
            tensor, rest = args[0], list(args[1:])
            kwargs.pop("device", None)
            rest = [a for a in rest if not isinstance(a, (torch.device, str, int))]
            if rest and isinstance(rest[0], torch.Tensor):
                kwargs.setdefault("dtype", rest.pop(0).dtype)
            return func(tensor, self.device, *rest, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def force_device(device: str | torch.device = "meta") -> Iterator[None]:
    """Within the block every tensor factory and device move targets ``device`` (default ``meta``).

    Unlike ``with torch.device("meta")`` this overrides explicit ``device=`` arguments, so a remote
    model whose constructor pins ``device="cpu"`` is built unallocated too. The default device is
    set as well, for code that asks for it.
    """
    device = torch.device(device)
    with torch.device(device), _ForceDevice(device):
        yield


def is_meta_context() -> bool:
    """True when tensors created here would land on the meta device (inside ``torch.device("meta")``)."""
    return torch.empty(0).is_meta


def allocated_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers that are really allocated (meta tensors count 0)."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_meta or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total
