"""Per-rank loading of safetensors checkpoints into (possibly FSDP2-sharded) modules built on the meta device.

The route for models too big for one process (the paper's 8B backbones): build the backbone on the
meta device, shard it with FSDP2 (:func:`mdlm.parallel.parallelize`), allocate only the local shards
(:func:`mdlm.parallel.materialize_meta_`), then let every rank read *only the rows of its shards*
from the checkpoint files:

- :func:`checkpoint_files` — which file holds which tensor: ``model.safetensors.index.json``
  (``weight_map`` of a sharded checkpoint, ``model-00001-of-00003.safetensors`` ...) or a single
  ``model.safetensors``; a hub name is downloaded lazily with ``huggingface_hub.snapshot_download``
  (from the local cache only when offline).
- :func:`load_safetensors_into` — for every parameter and persistent buffer, the checkpoint key
  (module name minus a ``prefix``, wrapper infixes removed, optional ``key_map``) and the part this
  rank holds: for a ``DTensor`` the local shape and global offset of its placements (FSDP2:
  ``Shard(0)``, dim-0 chunks of ``ceil(n / world)`` rows, the last ranks may hold fewer or none);
  exactly that block is read through ``safe_open(file).get_slice(key)[a:b, ...]`` (safetensors
  memory-maps the file, so only those bytes are read) and copied into ``to_local()``, cast to the
  parameter's dtype. Plain tensors and ``Replicate`` placements read the whole tensor. Strict:
  missing keys, shape mismatches and unexpected checkpoint keys are errors that name the keys.
- :func:`rebuild_non_persistent_buffers` — buffers a checkpoint never holds (rotary ``inv_freq``,
  ``original_inv_freq``, ...) are garbage after ``to_empty``; they are recomputed from the owning
  submodule's own constructor (see the function for the order of strategies), or an error names
  them.

Tied weights. Tying survives ``fully_shard`` and ``to_empty``: FSDP2 keeps one ``DTensor``
``Parameter`` object for a shared parameter and sets it on every module that uses it (checked on
Llama with ``tie_word_embeddings``). So aliases are found by *object identity* over
``named_parameters(remove_duplicate=False)`` — before or after sharding — and one tensor is loaded
from whichever of its names the checkpoint holds (``save_pretrained`` writes only
``model.embed_tokens.weight`` for a tied Llama). In addition, ties that transformers declares
(``all_tied_weights_keys`` of every ``PreTrainedModel`` submodule, non-empty only when the config
ties) and an explicit ``tied={module_name: source_module_name}`` give further names to read a
tensor from when its own key is absent (a model whose ties were broken by a conversion, or custom
code that ties by copying).

Not handled: transformers' key renames for legacy checkpoints (``gamma``/``beta``,
``conversion_mapping``), quantised tensors, and ``Partial`` placements (an error).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open

log = logging.getLogger(__name__)

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "CheckpointKeyError",
    "LoadReport",
    "checkpoint_files",
    "load_safetensors_into",
    "non_persistent_buffer_names",
    "rebuild_non_persistent_buffers",
    "parameters_on_meta",
]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
#: infixes of wrappers that change parameter names but not checkpoints (FSDP1, checkpoint_wrapper, torch.compile)
WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
#: checkpoint keys that are never errors: rotary caches some old checkpoints store
DEFAULT_ALLOW_UNEXPECTED = (r"(^|\.)rotary_emb\.inv_freq$",)


class CheckpointKeyError(KeyError):
    """A ``KeyError`` (missing or unexpected checkpoint keys) whose message prints unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------- files
def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    if any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False


def _looks_like_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", name)) and not name.startswith((".", "/"))


def _resolve_folder(folder: str | Path, revision: str | None = None) -> Path:
    path = Path(folder).expanduser()
    if path.is_dir():
        return path
    name = str(folder)
    if not _looks_like_repo_id(name):
        raise FileNotFoundError(f"checkpoint folder {name!r} does not exist (nor is it a hub name like 'org/model')")
    from huggingface_hub import snapshot_download  # lazy: only for hub names

    offline = _offline()
    try:
        return Path(
            snapshot_download(
                name, revision=revision, local_files_only=offline,
                allow_patterns=["*.safetensors", INDEX_FILE, "config.json"],
            )
        )
    except Exception as err:  # noqa: BLE001 - re-raised with the folder named
        where = "the local hub cache (HF_HUB_OFFLINE is set)" if offline else "the hub"
        raise FileNotFoundError(f"{name!r} is not a local folder and could not be fetched from {where}: {err}") from err


def checkpoint_files(folder: str | Path, revision: str | None = None) -> dict[str, Path]:
    """Map every tensor key of a safetensors checkpoint to the file that holds it.

    ``folder`` holds either ``model.safetensors.index.json`` (its ``weight_map``: key -> shard file
    name, as ``save_pretrained`` writes sharded checkpoints) or a single ``model.safetensors``. A
    hub name (``org/model``) that is not a local folder is resolved with
    ``huggingface_hub.snapshot_download`` (only ``*.safetensors``, the index and ``config.json``;
    from the local cache when ``HF_HUB_OFFLINE`` is set). Raises ``FileNotFoundError`` naming the
    folder and what was expected when neither file exists, or when the index names a missing shard.
    """
    path = _resolve_folder(folder, revision)
    index, single = path / INDEX_FILE, path / SINGLE_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map' (key -> shard file)")
        files = {key: path / name for key, name in weight_map.items()}
        missing = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing:
            raise FileNotFoundError(f"{index} names shard files that are not in {path}: {missing}")
        return files
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {key: single for key in f.keys()}
    present = sorted(p.name for p in path.iterdir())[:20]
    raise FileNotFoundError(
        f"{path} holds no safetensors checkpoint: expected {INDEX_FILE} (with model-0000k-of-0000n.safetensors "
        f"shards) or a single {SINGLE_FILE}; found {present}"
    )


# ---------------------------------------------------------------------------- names
def _clean(name: str) -> str:
    for infix in WRAPPER_INFIXES:
        name = name.replace(infix, "")
    return name


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def _state_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers (all names, aliases included) — what a checkpoint holds."""
    yield from module.named_parameters(remove_duplicate=False)
    for name, buf in module.named_buffers(remove_duplicate=False):
        owner, leaf = _owner(module, name)
        if buf is not None and leaf not in owner._non_persistent_buffers_set:
            yield name, buf


def transformers_ties(module: nn.Module) -> dict[str, str]:
    """``{target: source}`` module names of the weights transformers ties in ``module`` (empty when untied).

    From ``all_tied_weights_keys`` (transformers >= 5: filled by ``post_init`` only when the config
    ties) of every ``PreTrainedModel`` submodule, prefixed with the submodule's name.
    """
    ties: dict[str, str] = {}
    for path, sub in module.named_modules():
        keys = getattr(sub, "all_tied_weights_keys", None)
        if not isinstance(keys, Mapping):
            continue
        pre = _clean(f"{path}.") if path else ""
        for target, source in keys.items():
            if isinstance(target, str) and isinstance(source, str):
                ties[pre + target] = pre + source
    return ties


@dataclass
class LoadReport:
    """What :func:`load_safetensors_into` did on this rank.

    Attributes:
        keys: module tensor name -> checkpoint key it was loaded from (aliases of one tensor share it).
        reads: checkpoint key -> the ``(start, stop)`` range read along every dimension (a rank
            holding no rows of a tensor reads nothing and records an empty range).
        bytes_read: bytes of checkpoint data read (in the checkpoint's dtype).
        files: the checkpoint files opened.
    """

    keys: dict[str, str] = field(default_factory=dict)
    reads: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    bytes_read: int = 0
    files: list[str] = field(default_factory=list)


def _local_block(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """The local tensor to write into and the global index block it holds."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return tensor, tuple(slice(0, n) for n in tensor.shape)
    from torch.distributed.tensor import Partial
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(isinstance(p, Partial) for p in tensor.placements):
        raise ValueError(f"cannot load into a DTensor with Partial placement {tensor.placements}")
    local = tensor.to_local()
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    if tuple(local.shape) != tuple(shape):
        raise RuntimeError(
            f"local shard shape {tuple(local.shape)} differs from the placement's {tuple(shape)} "
            f"(global {tuple(tensor.shape)}, {tensor.placements})"
        )
    return local, tuple(slice(o, o + s) for o, s in zip(offset, shape))


@torch.no_grad()
def load_safetensors_into(
    module: nn.Module,
    folder: str | Path,
    prefix: str = "",
    key_map: Mapping[str, str] | Callable[[str], str] | None = None,
    dtype: torch.dtype | None = None,
    tied: Mapping[str, str] | None = None,
    allow_unexpected: Iterable[str] | bool = (),
    revision: str | None = None,
) -> LoadReport:
    """Load a safetensors checkpoint into ``module`` in place, each rank reading only its shards.

    Works on plain modules (no process group needed) and on FSDP2/DTensor-sharded ones.

    Args:
        module: the target; its parameters and persistent buffers must be allocated (not meta).
        folder: checkpoint folder or hub name (:func:`checkpoint_files`).
        prefix: leading part of the module's tensor names that the checkpoint keys lack, e.g.
            ``"model."`` for :class:`mdlm.models.hf.HFBackbone` (``model.model.embed_tokens.weight``
            -> ``model.embed_tokens.weight``). A name without it is an error.
        key_map: further renaming after the prefix is stripped: a dict (names not in it unchanged)
            or a function ``name -> key``.
        dtype: if set, values pass through this dtype before the copy (e.g. ``torch.bfloat16`` to
            reproduce a bf16 load); the destination's own dtype is always what is stored.
        tied: extra ``{module_name: source_module_name}`` ties (both sides full module names): a
            tensor whose own key is absent is read from the source's key (and vice versa). Ties by
            object identity and transformers' ``all_tied_weights_keys`` are found automatically.
        allow_unexpected: regular expressions (``re.search``) of further checkpoint keys the module
            may lack; ``True`` ignores every extra key. Always allowed: legacy ``rotary_emb.inv_freq``
            keys (:data:`DEFAULT_ALLOW_UNEXPECTED`) and the ``_keys_to_ignore_on_load_unexpected`` of
            transformers submodules.
        revision: hub revision when ``folder`` is a hub name.

    Returns:
        A :class:`LoadReport` (keys used, ranges read, bytes read).

    Raises:
        KeyError: tensors without a checkpoint key (all named), or checkpoint keys the module lacks.
        ValueError: a checkpoint tensor whose shape differs from the module's (key and both shapes).
    """
    files = checkpoint_files(folder, revision)
    if key_map is None:
        rename: Callable[[str], str] = lambda k: k  # noqa: E731
    elif callable(key_map):
        rename = key_map
    else:
        rename = lambda k: key_map.get(k, k)  # noqa: E731

    def to_key(name: str) -> str:
        clean = _clean(name)
        if prefix:
            if not clean.startswith(prefix):
                raise CheckpointKeyError(f"module tensor {name!r} does not start with the checkpoint prefix {prefix!r}")
            clean = clean[len(prefix):]
        return rename(clean)

    # group aliases: one entry per tensor object, all its names
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, tensor in _state_tensors(module):
        groups.setdefault(id(tensor), (tensor, []))[1].append(_clean(name))
    ties = {**transformers_ties(module), **{_clean(k): _clean(v) for k, v in (tied or {}).items()}}
    partners: dict[str, set[str]] = {}
    for a, b in ties.items():
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)

    report = LoadReport()
    consumed: set[str] = set()
    missing: list[str] = []
    handles: dict[Path, Any] = {}
    with contextlib.ExitStack() as stack:

        def open_file(path: Path):
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                report.files.append(str(path))
            return handles[path]

        for tensor, names in groups.values():
            own = [to_key(n) for n in names]
            candidates = own + [to_key(p) for n in names for p in sorted(partners.get(n, ())) if p not in names]
            present = [k for k in dict.fromkeys(candidates) if k in files]
            consumed.update(k for k in own if k in files)
            if not present:
                missing.extend(f"{n} (checkpoint key {k!r})" for n, k in zip(names, own))
                continue
            key = present[0]
            consumed.add(key)
            if tensor.is_meta:
                raise RuntimeError(f"{names[0]} is on the meta device: materialise the module before loading")
            handle = open_file(files[key])
            view = handle.get_slice(key)
            shape = tuple(view.get_shape())
            if shape != tuple(tensor.shape):
                raise ValueError(
                    f"checkpoint tensor {key!r} has shape {shape} but {names[0]} has shape {tuple(tensor.shape)} "
                    f"(in {files[key]})"
                )
            local, block = _local_block(tensor)
            report.reads[key] = tuple((s.start, s.stop) for s in block)
            for n in names:
                report.keys[n] = key
            if local.numel() == 0:
                continue
            value = view[block] if block else handle.get_tensor(key)
            report.bytes_read += value.numel() * value.element_size()
            if dtype is not None:
                value = value.to(dtype)
            local.copy_(value.reshape(local.shape))
            del value

    if missing:
        raise CheckpointKeyError(
            f"{len(missing)} tensor(s) of {type(module).__name__} have no key in the checkpoint {folder} "
            f"(prefix {prefix!r}): {', '.join(missing)}"
        )
    unexpected = sorted(set(files) - consumed)
    if unexpected and allow_unexpected is not True:
        patterns = [*DEFAULT_ALLOW_UNEXPECTED, *(allow_unexpected or ())]
        for sub in module.modules():
            patterns += list(getattr(sub, "_keys_to_ignore_on_load_unexpected", None) or [])
        unexpected = [k for k in unexpected if not any(re.search(p, k) for p in patterns)]
        if unexpected:
            raise CheckpointKeyError(
                f"{len(unexpected)} checkpoint key(s) in {folder} match no tensor of {type(module).__name__} "
                f"(prefix {prefix!r}; pass allow_unexpected to ignore them): {unexpected}"
            )
    return report


# ---------------------------------------------------------------------------- non-persistent buffers
def non_persistent_buffer_names(module: nn.Module, only_meta: bool = False) -> list[str]:
    """Full names of ``module``'s non-persistent buffers (those no checkpoint holds), optionally only meta ones.

    Record them *before* ``to_empty`` (``only_meta=True``): afterwards they hold uninitialised memory.
    """
    names = []
    for path, sub in module.named_modules(remove_duplicate=False):
        for leaf in sorted(sub._non_persistent_buffers_set):
            buf = sub._buffers.get(leaf)
            if buf is None or (only_meta and not buf.is_meta):
                continue
            names.append(f"{path}.{leaf}" if path else leaf)
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on the meta device but buffers real (as accelerate's
    ``init_empty_weights(include_buffers=False)``): a fresh submodule costs only its buffers."""
    original = nn.Module.register_parameter

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and not param.is_meta:
            cls = type(param)
            self._parameters[name] = cls(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _constructor_args(sub: nn.Module) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for ``type(sub)(...)`` taken from same-named attributes of ``sub``; missing required ones."""
    try:
        params = inspect.signature(type(sub).__init__).parameters
    except (TypeError, ValueError):
        return {}, ["<signature unavailable>"]
    kwargs: dict[str, Any] = {}
    lacking: list[str] = []
    for name, p in list(params.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name == "device":
            continue
        if hasattr(sub, name):
            kwargs[name] = getattr(sub, name)
        elif p.default is inspect.Parameter.empty:
            lacking.append(name)
    return kwargs, lacking


def _fresh_buffers(sub: nn.Module, device: torch.device) -> tuple[dict[str, torch.Tensor] | None, str]:
    kwargs, lacking = _constructor_args(sub)
    if lacking:
        return None, f"its constructor needs {lacking}, which are not attributes of the instance"
    try:
        with parameters_on_meta(), torch.device(device):
            fresh = type(sub)(**kwargs)
    except Exception as err:  # noqa: BLE001 - reported in the error below
        return None, f"{type(sub).__name__}({', '.join(kwargs)}) failed: {type(err).__name__}: {err}"
    return dict(fresh._buffers), ""


def _reference_buffers(reference: nn.Module | Callable[[], nn.Module], device: torch.device) -> dict[str, torch.Tensor]:
    if isinstance(reference, nn.Module):
        ref = reference
    else:
        with parameters_on_meta(), torch.device(device):
            ref = reference()
    return {_clean(n): b for n, b in ref.named_buffers(remove_duplicate=False) if b is not None}


@torch.no_grad()
def rebuild_non_persistent_buffers(
    module: nn.Module,
    names: Iterable[str] | None = None,
    device: torch.device | str | None = None,
    reference: nn.Module | Callable[[], nn.Module] | None = None,
) -> dict[str, str]:
    """Recompute non-persistent buffers (garbage after ``to_empty``) in place; returns ``{name: how}``.

    ``names``: the buffers to rebuild (default: every non-persistent buffer; pass
    :func:`non_persistent_buffer_names` ``(module, only_meta=True)`` taken before materialising).
    Each owning submodule is rebuilt by the first strategy that applies:

    1. ``reference`` (``"reference"``): a module with the same buffer names (e.g. the same model built
       by a factory, which is called with parameters on meta so only buffers are allocated);
    2. the submodule's own hook ``reset_non_persistent_buffers()`` (``"hook"``), for custom modules;
    3. a fresh instance of the submodule's class (``"fresh"``), built on ``device`` with its
       parameters on the meta device (:func:`parameters_on_meta`), its constructor arguments taken
       from same-named attributes of the instance — transformers modules keep ``config``, so
       ``LlamaRotaryEmbedding(config)`` recomputes ``inv_freq``/``original_inv_freq`` (and
       ``attention_scaling``) exactly as the original construction did, whatever the rope type.

    The new values are copied into the existing buffers (their device and dtype stay). Raises a
    ``RuntimeError`` naming the buffers when none applies (never leaves garbage silently).
    """
    wanted = list(dict.fromkeys(names)) if names is not None else non_persistent_buffer_names(module)
    if not wanted:
        return {}
    by_owner: dict[str, list[str]] = {}
    for name in wanted:
        path, _, leaf = name.rpartition(".")
        by_owner.setdefault(path, []).append(leaf)
    ref_buffers = None
    how: dict[str, str] = {}
    failures: list[str] = []
    for path, leaves in by_owner.items():
        sub = module.get_submodule(path) if path else module
        current = {leaf: sub._buffers.get(leaf) for leaf in leaves}
        if any(b is None for b in current.values()):
            raise CheckpointKeyError(f"{type(sub).__name__} at {path or '<root>'!r} has no buffer(s) {leaves}")
        dev = torch.device(device) if device is not None else next(iter(current.values())).device
        if dev.type == "meta":
            raise RuntimeError(
                f"buffers {leaves} of {path or '<root>'!r} are still on the meta device: materialise first"
            )
        values: dict[str, torch.Tensor] | None = None
        strategy = ""
        if reference is not None:
            if ref_buffers is None:
                ref_buffers = _reference_buffers(reference, dev)
            pre = _clean(f"{path}.") if path else ""
            if all(pre + leaf in ref_buffers for leaf in leaves):
                values, strategy = {leaf: ref_buffers[pre + leaf] for leaf in leaves}, "reference"
        if values is None and callable(getattr(sub, "reset_non_persistent_buffers", None)):
            sub.reset_non_persistent_buffers()
            for leaf in leaves:
                how[f"{path}.{leaf}" if path else leaf] = "hook"
            continue
        reason = ""
        if values is None:
            fresh, reason = _fresh_buffers(sub, dev)
            if fresh is not None and all(leaf in fresh and fresh[leaf] is not None for leaf in leaves):
                values, strategy = fresh, "fresh"
            elif fresh is not None:
                lacking = [leaf for leaf in leaves if leaf not in fresh]
                reason = f"a fresh {type(sub).__name__} has no buffer(s) {lacking}"
        if values is None:
            failures.append(f"{path or '<root>'} ({type(sub).__name__}): {leaves} — {reason}")
            continue
        for leaf in leaves:
            new, old = values[leaf], current[leaf]
            if tuple(new.shape) != tuple(old.shape):
                failures.append(
                    f"{path or '<root>'}.{leaf}: rebuilt shape {tuple(new.shape)} differs from {tuple(old.shape)}"
                )
                continue
            old.copy_(new)
            how[f"{path}.{leaf}" if path else leaf] = strategy
            # Python attributes derived at construction (e.g. rotary attention_scaling) are not garbage
    if failures:
        raise RuntimeError(
            "cannot rebuild non-persistent buffers (they hold uninitialised memory after to_empty): "
            + "; ".join(failures)
            + ". Give the owning module a reset_non_persistent_buffers() method or pass reference=<model factory>"
        )
    return how
