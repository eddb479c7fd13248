r"""Training throughput: tokens/s, FLOP/s and model FLOPs utilisation (MFU), logged during fit.

FLOP count (model FLOPs, the convention of Kaplan et al. 2020 and PaLM, App. B)
---------------------------------------------------------------------------------
Per token of a sequence of length :math:`L`:

.. math::

    F_\text{fwd} = 2N + 4\,n_\text{layer}\,L\,d, \qquad
    F_\text{train} = 3 F_\text{fwd} = 6N + 12\,n_\text{layer}\,L\,d

* :math:`N` = the parameters that multiply activations: every parameter except the embedding
  lookup tables (token and learned-position embeddings), with the output projection (``lm_head``)
  counted once, also when it is tied to the token embedding. Norm weights are included (they are
  <0.1% of :math:`N`). :math:`2N` is one multiply-add per parameter and token.
* :math:`4\,n_\text{layer}\,L\,d`: the attention scores :math:`QK^\top` and the weighted sum
  :math:`AV`, each :math:`2 L d` FLOPs per token and layer (:math:`d = n_\text{head}\cdot
  d_\text{head}`). The model is bidirectional, so the whole :math:`L\times L` matrix is computed
  (no causal halving).
* Training = forward + backward, and the backward costs twice the forward.

Element-wise work (softmax, norms, GELU, rotary, the loss, the optimiser) is not counted: MFU
measures how much of the hardware's matmul peak the model's matmuls achieve.

``achieved FLOP/s = F_train × tokens/s`` and ``MFU = achieved FLOP/s / peak FLOP/s``, where the
peak is the device's nominal value on CUDA (Lightning's table) or, on CPU, the best rate of a large
square matmul at the run's compute dtype measured in this process (:func:`measure_peak_flops`).

The callback
------------
:class:`TokenThroughputMonitor` is added to every ``mdlm fit`` by the CLI (top-level key
``throughput``; ``--throughput=null`` disables it). Every ``log_every_n_steps`` optimiser steps it
logs ``throughput/device/tokens_per_sec``, ``samples_per_sec``, ``batches_per_sec``,
``flops_per_sec`` and ``mfu`` (and the global rates under DDP) through Lightning's
:class:`~lightning.fabric.utilities.throughput.Throughput`. It synchronises CUDA only at those
logging steps and never calls ``.item()``: batch sizes come from tensor shapes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = [
    "TokenThroughputMonitor",
    "attention_shape",
    "batch_shape",
    "compute_dtype",
    "flops_per_token",
    "matmul_parameters",
    "measure_peak_flops",
    "nominal_peak_flops",
    "peak_flops",
]


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------
def _backbone(model: nn.Module) -> nn.Module:
    """The network inside a LightningModule wrapper (``.backbone``), else the model itself."""
    return getattr(model, "backbone", model)


def matmul_parameters(model: nn.Module) -> int:
    """:math:`N`: parameters of every module except ``nn.Embedding`` tables, each counted once.

    A tied output projection is an ``nn.Linear`` whose weight is also an embedding's; it is counted
    (once) through the linear layer.
    """
    seen: set[int] = set()
    total = 0
    for module in _backbone(model).modules():
        if isinstance(module, nn.Embedding):
            continue
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def attention_shape(model: nn.Module) -> tuple[int, int] | None:
    """``(n_layer, d)`` of the self-attention layers, or None when the model does not say.

    Reads ``n_layer``/``d_model`` (:class:`mdlm.models.transformer.Transformer`) or a Hugging Face
    ``config.num_hidden_layers``/``config.hidden_size``.
    """
    net = _backbone(model)
    n_layer, width = getattr(net, "n_layer", None), getattr(net, "d_model", None)
    if n_layer is None or width is None:
        config = getattr(net, "config", None)
        n_layer = getattr(config, "num_hidden_layers", None)
        width = getattr(config, "hidden_size", None)
    if isinstance(n_layer, int) and isinstance(width, int):
        return n_layer, width
    return None


def flops_per_token(model: nn.Module, seq_len: int, training: bool = True) -> int:
    r"""Model FLOPs per token: :math:`6N + 12\,n_\text{layer} L d` (training) or :math:`2N + 4\,n_\text{layer} L d`.

    Without a known attention shape (:func:`attention_shape`) only the :math:`6N` / :math:`2N`
    term is counted.
    """
    n = matmul_parameters(model)
    shape = attention_shape(model)
    attention = 0 if shape is None else 4 * shape[0] * seq_len * shape[1]
    forward = 2 * n + attention
    return 3 * forward if training else forward


def batch_shape(batch: Any) -> tuple[int, int] | None:
    """``(sequences, positions per sequence)`` of a token batch, from shapes only (no sync).

    A dict with ``input_ids`` [B, L] (mdlm's data modules) or a bare [B, L] tensor; positions
    include padding. Other batches (e.g. generation prompts) give None.
    """
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        return int(ids.shape[0]), int(ids.shape[1])
    return None


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s
# ---------------------------------------------------------------------------------------------
def compute_dtype(precision: str | int) -> torch.dtype:
    """The matmul dtype of a Lightning ``precision`` setting (``bf16-mixed`` -> bfloat16, ...)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    if p.startswith("64"):
        return torch.float64
    return torch.float32


def nominal_peak_flops(device: torch.device | str, dtype: torch.dtype) -> float | None:
    """The vendor's dense peak FLOP/s of a CUDA/XLA device at ``dtype`` (Lightning's table); None on CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


_PEAK_CACHE: dict[tuple[str, torch.dtype, int, int], float] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    size: int = 2048,
    repeats: int = 4,
    cache: bool = True,
) -> float:
    r"""Best FLOP/s of a ``size``-square matmul :math:`C = AB` (:math:`2\,\text{size}^3` FLOPs).

    One untimed warm-up product, then the fastest of ``repeats``: the best rate is the closest to
    the hardware's limit when other processes share the machine. Cached per (device, dtype, size,
    threads) within the process unless ``cache=False``.
    """
    device = torch.device(device)
    key = (str(device), dtype, size, torch.get_num_threads())
    if cache and key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    rate = 2.0 * size**3 / best
    if cache:
        _PEAK_CACHE[key] = rate
    return rate


def peak_flops(device: torch.device | str, dtype: torch.dtype, measure: bool = True) -> tuple[float | None, str]:
    """``(peak FLOP/s, source)``: the nominal CUDA/XLA peak, else a measured matmul (or None, ``"none"``)."""
    nominal = nominal_peak_flops(device, dtype)
    if nominal:
        return nominal, "nominal"
    if measure:
        return measure_peak_flops(dtype, device), "measured_matmul"
    return None, "none"


# ---------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------
class TokenThroughputMonitor(Callback):
    r"""Log tokens/s, FLOP/s and MFU of training every ``log_every_n_steps`` steps.

    Rates are averages over the last ``window_size - 1`` logging intervals (Lightning's
    :class:`~lightning.fabric.utilities.throughput.Throughput`), measured on the training loop's
    wall clock with validation time excluded; the first training batch (start-up) is not counted.

    Logged keys (per device; without ``device/`` the sums over ranks when ``world_size > 1``):
    ``throughput/device/tokens_per_sec`` (positions of ``input_ids``, padding included),
    ``.../samples_per_sec``, ``.../batches_per_sec``, ``.../flops_per_sec`` (:math:`F_\text{train}`
    of the module docstring × tokens/s) and ``.../mfu`` (÷ :attr:`peak_flops`).

    Args:
        log_every_n_steps: logging interval in training batches; default: the Trainer's.
        window_size: logging points in the rolling window (>= 2).
        peak_flops: peak FLOP/s per device for MFU; default: the CUDA nominal peak, else a matmul
            measured once per process (:func:`measure_peak_flops`).
        measure_peak: measure the CPU peak when no other is known (False: no MFU on CPU).
        flops_fn: ``(pl_module, batch_size, seq_len) -> FLOPs of one training batch``; default
            ``batch_size * seq_len * flops_per_token(pl_module, seq_len)``.
        prefix: metric name prefix.
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        window_size: int = 2,
        peak_flops: float | None = None,
        measure_peak: bool = True,
        flops_fn: Callable[[nn.Module, int, int], float] | None = None,
        prefix: str = "throughput/",
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps={log_every_n_steps} must be >= 1")
        if window_size < 2:
            raise ValueError(f"window_size={window_size} must be >= 2 (rates need two points)")
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops={peak_flops} must be > 0")
        self.log_every_n_steps = log_every_n_steps
        self.window_size = int(window_size)
        self.peak_flops: float | None = peak_flops
        self.peak_source = "argument" if peak_flops is not None else "none"
        self.measure_peak = bool(measure_peak)
        self.flops_fn = flops_fn
        self.prefix = prefix
        self.history: list[dict[str, float]] = []
        self._throughput: Throughput | None = None
        self._flops_memo: dict[tuple[int, int], float] = {}
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._t0: float | None = None
        self._excluded = 0.0
        self._val_t0: float | None = None
        self._batches = self._samples = self._tokens = 0
        self._flops_since_update = 0.0
        self._anchored = False

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.peak_flops is None:
            dtype = compute_dtype(trainer.precision)
            self.peak_flops, self.peak_source = peak_flops(trainer.strategy.root_device, dtype, self.measure_peak)
        self._throughput = Throughput(
            available_flops=self.peak_flops, world_size=trainer.world_size, window_size=self.window_size
        )
        self._flops_memo.clear()

    def batch_flops(self, pl_module: nn.Module, batch_size: int, seq_len: int) -> float:
        """Training FLOPs of one batch (memoised per shape)."""
        key = (batch_size, seq_len)
        if key not in self._flops_memo:
            if self.flops_fn is not None:
                self._flops_memo[key] = float(self.flops_fn(pl_module, batch_size, seq_len))
            else:
                self._flops_memo[key] = float(batch_size * seq_len * flops_per_token(pl_module, seq_len))
        return self._flops_memo[key]

    def _interval(self, trainer: Trainer) -> int:
        """Logging interval in batches: ``log_every_n_steps`` optimiser steps of accumulated batches."""
        steps = int(self.log_every_n_steps or trainer.log_every_n_steps or 1)
        return steps * max(1, int(trainer.accumulate_grad_batches))

    def _elapsed(self, trainer: Trainer) -> float:
        _sync(trainer.strategy.root_device)
        return time.perf_counter() - self._t0 - self._excluded

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_counters()
        if self._throughput is not None:
            self._throughput.reset()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._throughput is None:
            return
        shape = batch_shape(batch)
        if shape is None:
            return
        if not self._anchored:  # the first batch (compilation, loader start-up) is not counted
            _sync(trainer.strategy.root_device)
            self._t0, self._anchored = time.perf_counter(), True
            self._throughput.update(time=1e-9, batches=0, samples=0, lengths=0, flops=0)
            return
        b, length = shape
        self._batches += 1
        self._samples += b
        self._tokens += b * length
        self._flops_since_update += self.batch_flops(pl_module, b, length)
        if self._batches % self._interval(trainer) != 0:
            return
        self._throughput.update(
            time=self._elapsed(trainer),
            batches=self._batches,
            samples=self._samples,
            lengths=self._tokens,
            flops=self._flops_since_update,
        )
        self._flops_since_update = 0.0
        self._log(trainer)

    def _log(self, trainer: Trainer) -> None:
        rates = {k: v for k, v in self._throughput.compute().items() if k.endswith(("_per_sec", "mfu"))}
        if not rates:
            return
        metrics = {self.prefix + k.replace("items_per_sec", "tokens_per_sec"): float(v) for k, v in rates.items()}
        self.history.append({"step": trainer.global_step, **metrics})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._anchored and not trainer.sanity_checking:
            self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_t0 is not None and self._anchored:
            _sync(trainer.strategy.root_device)
            self._excluded += time.perf_counter() - self._val_t0
        self._val_t0 = None

    def state_dict(self) -> dict[str, Any]:
        return {}
