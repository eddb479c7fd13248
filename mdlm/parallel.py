r"""Sharded training: wrap/activation-checkpointing policy, FSDP2 ``fully_shard``, meta init, clipping.

Two routes, both configured from YAML (``configs/trainer/``):

- **FSDP (v1)** — :class:`BlockFSDPStrategy`, Lightning's ``FSDPStrategy`` (GPU only) whose
  auto-wrap policy and activation-checkpointing policy default to the model's *block classes*
  (:func:`block_classes`: mdlm's :class:`~mdlm.models.transformer.TransformerBlock`, the decoder
  layer of a Hugging Face backbone). Sharded or full state dicts (``state_dict_type``), CPU offload
  (``cpu_offload``), and norm clipping through the sharded root (:func:`clip_grad_norm_`).
- **FSDP2** — :class:`FSDP2Strategy`, Lightning's ``ModelParallelStrategy`` (runs on CPU with gloo
  too) with pure data-parallel defaults; :meth:`mdlm.module.MaskedDiffusionLM.configure_model`
  calls :func:`parallelize` which applies ``fully_shard`` to every block and then to the backbone
  (parameters become ``DTensor`` shards on the ``data_parallel`` mesh dimension), optionally with
  activation checkpointing of each block, then materialises meta-device parameters and loads
  pretrained weights into the shards: a safetensors folder read per rank (only the rows of each
  rank's shards, :func:`mdlm.models.loading.load_safetensors_into`) or a ``torch.save``-d full
  state dict broadcast from rank 0 (:func:`load_full_state_dict`). Non-persistent buffers that
  checkpoints do not hold (rotary ``inv_freq``) are rebuilt after materialisation
  (:func:`mdlm.models.loading.rebuild_non_persistent_buffers`).

Pretrained weights under FSDP (v1): there is no per-rank safetensors loading for FSDP1. The
supported route is rank-0 loading: build the model with ``from_pretrained`` on rank 0 and on the
meta device on the other ranks, and pass ``sync_module_states=True`` to :class:`BlockFSDPStrategy`
(FSDP1 materialises the meta modules itself — ``to_empty`` + ``reset_parameters``, or a
``param_init_fn`` — and then broadcasts rank 0's parameters *and buffers*, so rotary caches arrive
too). Rank 0 holds the full model once, so this only suits models that fit one process; FSDP2 (the
default) never materialises the full model anywhere. (FSDP1 needs a GPU in Lightning; this route
is not exercised by the CPU tests.)

Gradient norm under sharding: with shards :math:`g^{(r)}` of the flattened gradient on rank r,
:math:`\lVert g\rVert_2 = (\sum_r \lVert g^{(r)}\rVert_2^2)^{1/2}`; clipping scales every shard by
:math:`\min(1, c / (\lVert g\rVert_2 + 10^{-6}))` — the same factor on every rank, so the result
equals clipping the unsharded gradient of one process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------- policy
def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes FSDP wraps and activation checkpointing recomputes: one per transformer layer.

    mdlm's :class:`~mdlm.models.transformer.TransformerBlock` wherever it occurs, plus the decoder
    layer classes of any Hugging Face backbone (:meth:`mdlm.models.hf.HFBackbone.block_classes`).
    Raises a ValueError when the model has neither (naming its type), since wrapping nothing would
    silently give one flat shard.
    """
    from mdlm.models.transformer import TransformerBlock

    classes: set[type[nn.Module]] = set()
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            classes.add(type(module))
        finder = getattr(module, "block_classes", None)
        if callable(finder) and not isinstance(module, TransformerBlock):
            classes |= set(finder())
    if not classes:
        raise ValueError(
            f"found no transformer block in {type(model).__name__}: sharding needs mdlm.models.transformer."
            "TransformerBlock layers or a backbone with a `block_classes()` method (mdlm.models.hf.HFBackbone)"
        )
    return classes


def wrap_policy(model: nn.Module):
    """FSDP (v1) ``ModuleWrapPolicy`` over :func:`block_classes` (each block becomes one FSDP unit)."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return ModuleWrapPolicy(block_classes(model))


def checkpoint_check_fn(model: nn.Module):
    """Predicate of the activation-checkpointing policy: True for the blocks of :func:`block_classes`."""
    classes = tuple(block_classes(model))
    return lambda module: isinstance(module, classes)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The block instances of ``model`` in forward order (what FSDP2 shards one by one)."""
    classes = tuple(block_classes(model))
    return [m for m in model.modules() if isinstance(m, classes)]



# ---------------------------------------------------------------------------- checkpoints
def write_tokenizer_beside_shards(strategy: Any, checkpoint: dict[str, Any], filepath: Any) -> Path | None:
    """Rank 0 of a sharded (DCP) checkpoint directory writes the run's tokenizer files into ``<dir>/tokenizer/``.

    The tokenizer state (``checkpoint["mdlm_tokenizer"]``, :func:`mdlm.data.tokenizer.tokenizer_to_state`)
    is also part of the directory's ``meta.pt`` (Lightning saves the non-tensor entries there); the
    folder makes it readable by any tool (``AutoTokenizer.from_pretrained(<dir>/tokenizer)``).
    Returns the folder written, or None (another rank, a single-file checkpoint, no tokenizer).
    """
    from mdlm.data.tokenizer import CHECKPOINT_KEY, SHARDED_TOKENIZER_DIR, write_tokenizer_folder

    path = Path(filepath)
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None or strategy.global_rank != 0 or not path.is_dir():
        return None
    return write_tokenizer_folder(state, path / SHARDED_TOKENIZER_DIR)


# ---------------------------------------------------------------------------- FSDP (v1)
class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with mdlm's block classes as the default wrap policy.

    Args:
        checkpoint_blocks: recompute every block's activations in the backward pass (activation
            checkpointing by the same policy as the wrapping).
        **kwargs: every ``FSDPStrategy`` argument: ``sharding_strategy``, ``state_dict_type``
            (``full`` | ``sharded``), ``cpu_offload``, ``limit_all_gathers``, an explicit
            ``auto_wrap_policy`` (then used instead of the blocks) ...

    Norm clipping (``gradient_clip_algorithm: norm``) goes through the sharded root's
    ``clip_grad_norm_`` in :meth:`mdlm.module.MaskedDiffusionLM.configure_gradient_clipping`.
    """

    def __init__(self, checkpoint_blocks: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkpoint_blocks = bool(checkpoint_blocks)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Lightning's save; a sharded directory also gets the tokenizer files (:func:`write_tokenizer_beside_shards`)."""
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        write_tokenizer_beside_shards(self, checkpoint, filepath)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if "auto_wrap_policy" not in self.kwargs:
            self.kwargs["auto_wrap_policy"] = wrap_policy(model)
        if self.checkpoint_blocks and not self._activation_checkpointing_kwargs:
            self._activation_checkpointing_kwargs = {"check_fn": checkpoint_check_fn(model)}
        return super()._setup_model(model)


# ---------------------------------------------------------------------------- FSDP2
@dataclass
class FSDP2Plan:
    """How :func:`parallelize` shards and initialises a backbone.

    Attributes:
        checkpoint_blocks: activation checkpointing of every block (``torch.distributed._composable.
            checkpoint``: parameter names are unchanged).
        reshard_after_forward: free the gathered parameters after each block's forward (ZeRO-3);
            False keeps them until the backward (ZeRO-2-like: more memory, fewer all-gathers).
        cpu_offload: keep the parameter shards, gradients and optimizer state in CPU memory.
        param_dtype, reduce_dtype: FSDP2 mixed precision (``bfloat16``/``float32``): compute in
            ``param_dtype`` while the sharded master weights stay in their own dtype; ``None`` leaves
            precision to the Trainer's ``precision`` plugin.
        init_weights: a ``torch.save``-d full state dict of the backbone, loaded into the shards once
            after sharding (read on rank 0 only and broadcast).
        pretrained: a folder (or hub name) of safetensors weights (``model.safetensors`` or sharded
            ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``), read by every
            rank for its own shards only (:func:`mdlm.models.loading.load_safetensors_into`). Key
            prefix and ties come from the backbone (``checkpoint_prefix``, ``tied_weights``, see
            :func:`parallelize`). Exclusive with ``init_weights``.
    """

    checkpoint_blocks: bool = False
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    init_weights: str | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.init_weights and self.pretrained:
            raise ValueError(
                f"init_weights={self.init_weights!r} and pretrained={self.pretrained!r} both set: "
                "give one source of weights"
            )
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ValueError(f"{name}={value!r} is not one of {sorted(DTYPES)} (or None)")


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` set up for FSDP2 data parallelism over all devices.

    ``data_parallel_size="auto"`` means every process (``num_nodes * devices / tensor_parallel_size``);
    the module's ``configure_model`` shards with ``fully_shard`` according to :attr:`plan`.

    Args:
        data_parallel_size, tensor_parallel_size: the device mesh (default: all devices, no TP).
        checkpoint_blocks, reshard_after_forward, cpu_offload, param_dtype, reduce_dtype,
            init_weights, pretrained: the :class:`FSDP2Plan`.
        save_distributed_checkpoint: True saves a sharded DCP directory (every rank writes its
            shards; rank 0 writes ``meta.pt`` and the run's tokenizer files in ``tokenizer/``), False a
            consolidated single file gathered on rank 0.
        **kwargs: further ``ModelParallelStrategy`` arguments (``process_group_backend``, ``timeout``).
    """

    def __init__(
        self,
        data_parallel_size: int | Literal["auto"] = "auto",
        tensor_parallel_size: int = 1,
        checkpoint_blocks: bool = False,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        init_weights: str | None = None,
        pretrained: str | None = None,
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        if tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size={tensor_parallel_size}: mdlm shards with FSDP2 only (data parallel); use 1"
            )
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.plan = FSDP2Plan(
            checkpoint_blocks=checkpoint_blocks, reshard_after_forward=reshard_after_forward, cpu_offload=cpu_offload,
            param_dtype=param_dtype, reduce_dtype=reduce_dtype, init_weights=init_weights, pretrained=pretrained,
        )

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Lightning's save; a sharded (DCP) directory also gets the tokenizer files in ``<dir>/tokenizer/``
        (:func:`write_tokenizer_beside_shards`)."""
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        write_tokenizer_beside_shards(self, checkpoint, filepath)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def is_checkpointed(module: nn.Module) -> bool:
    """True once the composable ``torch.distributed._composable.checkpoint`` has been applied to ``module``."""
    from torch.distributed._composable.contract import _get_registry

    return "checkpoint" in (_get_registry(module) or {})


def is_sharded(module: nn.Module) -> bool:
    """True once ``fully_shard`` has been applied to ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def parallelize(module: nn.Module, mesh, plan: FSDP2Plan | None = None, device: torch.device | None = None) -> bool:
    """Apply FSDP2 to ``module`` (a backbone) in place: blocks first, then the module itself.

    ``mesh`` is a 1-D device mesh or a mesh with a ``data_parallel`` dimension. Idempotent: returns
    False (and does nothing) when ``module`` is already sharded. Meta-device parameters are
    materialised on ``device`` (only the local shards are allocated), non-persistent buffers are
    rebuilt (:func:`mdlm.models.loading.rebuild_non_persistent_buffers`), and the weights come from,
    in this order of precedence:

    1. ``plan.pretrained`` — a safetensors folder, every rank reading only its shards;
    2. the backbone's own checkpoint (contract below) — the same per-rank loading;
    3. ``plan.init_weights`` — a ``torch.save``-d full state dict, read on rank 0 and broadcast;
    4. otherwise every submodule's ``reset_parameters`` (a fresh initialisation).

    With 1 or 2, ``reset_parameters`` is skipped (every parameter is overwritten; loading is strict).

    Backbone contract (duck-typed; e.g. :class:`mdlm.models.hf.HFBackbone` built on the meta device):

    - ``pretrained_folder: str | None`` — safetensors folder or hub name of the weights (set it
      only when the backbone was built without them, e.g. on the meta device: it is loaded whether
      or not the parameters were on meta);
    - ``checkpoint_prefix: str`` (default ``""``) — the part of the backbone's parameter names that
      checkpoint keys lack, e.g. ``"model."`` when the transformers model is ``backbone.model``;
    - ``tied_weights: dict[str, str] | None`` (optional) — extra ``{name: source_name}`` ties in
      the backbone's own parameter names (aliased parameters and transformers' declared ties are
      found automatically).

    ``plan.pretrained`` uses the same ``checkpoint_prefix``/``tied_weights`` when the backbone has them.
    """
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if is_sharded(module):
        return False
    plan = plan or FSDP2Plan()
    if mesh.ndim > 1:
        mesh = mesh["data_parallel"]
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": plan.reshard_after_forward}
    if plan.param_dtype or plan.reduce_dtype:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=DTYPES[plan.param_dtype] if plan.param_dtype else None,
            reduce_dtype=DTYPES[plan.reduce_dtype] if plan.reduce_dtype else None,
        )
    if plan.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    folder = plan.pretrained or getattr(module, "pretrained_folder", None)
    if folder and plan.init_weights:
        raise ValueError(
            f"{type(module).__name__} brings its checkpoint {folder!r} and the plan sets init_weights="
            f"{plan.init_weights!r}: give one source of weights"
        )
    for block in blocks(module):
        if plan.checkpoint_blocks and not is_checkpointed(block):  # HFBackbone may have done it already
            checkpoint(block)
        fully_shard(block, **kwargs)
    fully_shard(module, **kwargs)
    if has_meta_tensors(module):
        materialize_meta_(module, device or torch.device("cpu"), init=not folder)
    if folder:
        from mdlm.models.loading import load_safetensors_into

        load_safetensors_into(
            module, folder, prefix=getattr(module, "checkpoint_prefix", "") or "",
            tied=getattr(module, "tied_weights", None),
        )
    elif plan.init_weights:
        load_full_state_dict(module, plan.init_weights)
    return True


# ---------------------------------------------------------------------------- meta init and loading
def has_meta_tensors(module: nn.Module) -> bool:
    """True when some parameter or buffer of ``module`` lives on the meta device (not allocated)."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


@torch.no_grad()
def materialize_meta_(module: nn.Module, device: torch.device | str, init: bool = True) -> nn.Module:
    """Allocate meta tensors on ``device`` (``to_empty``), initialise them and rebuild non-persistent buffers.

    With ``init``, every submodule's own ``reset_parameters`` runs, innermost first, so a model-level
    ``reset_parameters`` (e.g. :meth:`mdlm.models.transformer.Transformer.reset_parameters`, the
    GPT-2 scheme) has the last word; ``init=False`` leaves the parameters uninitialised for a loader
    that overwrites all of them. Non-persistent buffers that were on the meta device (rotary
    ``inv_freq``, which no checkpoint holds) are recomputed by
    :func:`mdlm.models.loading.rebuild_non_persistent_buffers` — an error names any that cannot be.
    Works on sharded (DTensor) parameters: each rank allocates and initialises only its shard.
    """
    from mdlm.models.loading import non_persistent_buffer_names, rebuild_non_persistent_buffers

    stale = non_persistent_buffer_names(module, only_meta=True)
    module.to_empty(device=device)
    if init:
        for sub in reversed(list(module.modules())):
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    if stale:
        rebuild_non_persistent_buffers(module, stale, device=device)
    return module


def load_full_state_dict(
    module: nn.Module, state_dict: dict[str, torch.Tensor] | str | Path, broadcast_from_rank0: bool = True
) -> None:
    """Load a *full* (unsharded) state dict into a possibly sharded ``module``.

    Uses ``set_model_state_dict(..., full_state_dict=True, broadcast_from_rank0=True)``: only rank 0
    reads the weights (a path is ``torch.load``-ed there with ``mmap``), every other rank receives
    its shards by broadcast, so no rank but 0 ever holds the full model. Without a process group the
    state dict is loaded directly (strict).
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    if isinstance(state_dict, (str, Path)):
        state_dict = torch.load(state_dict, map_location="cpu", mmap=True, weights_only=True) if rank == 0 else {}
    if not distributed:
        module.load_state_dict(state_dict, strict=True)
        return
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast_from_rank0, strict=True)
    set_model_state_dict(module, state_dict if (rank == 0 or not broadcast_from_rank0) else {}, options=options)


# ---------------------------------------------------------------------------- clipping and memory
@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Clip the global gradient norm of (possibly ``DTensor``-sharded) parameters; returns the norm before clipping.

    The total norm of sharded gradients is reduced over their mesh (``DTensor.full_tensor()`` of the
    partial norm), so every rank applies the same factor ``min(1, max_norm / (norm + 1e-6))`` — equal
    to ``torch.nn.utils.clip_grad_norm_`` on the unsharded model of one process.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=norm_type)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds for ``tensors`` (the local shard of a ``DTensor``; an aliased tensor counted once).

    Tensors are identified by (start address, number of elements): FSDP2 keeps many shards as
    views of one flat buffer, so storages would undercount.
    """
    from torch.distributed.tensor import DTensor

    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        key = (id(local), -1) if local.is_meta else (local.data_ptr(), local.numel())
        if key in seen:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return total


def training_state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and optimizer state (local shards; RSS is too noisy)."""
    params = list(module.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    out = {"parameters": local_bytes(params), "gradients": local_bytes(grads), "optimizer": local_bytes(state)}
    out["total"] = sum(out.values())
    return out
