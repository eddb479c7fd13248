"""Tokenizers for masked diffusion: load one (local folder or hub name), make sure it has a [MASK]
token, fingerprint it for cache keys, or train a small byte-level BPE.

A masked diffusion model needs an absorbing ``[MASK]`` id that never occurs in the data; most
causal-LM tokenizers (GPT-2, LLaMA/Mistral) have none, so :func:`load_tokenizer` adds ``[MASK]``
(and ``[PAD]`` when missing) as added special tokens. ``len(tokenizer)`` then includes them, and
the model's embedding size must follow ``len(tokenizer)``, not ``tokenizer.vocab_size``.

Tokenizer specs accepted by the data modules (:func:`mdlm.data.text.TextDataModule`):

* a local folder (``shared/data/tokenizers/gpt2``) or a Hugging Face Hub name (``gpt2``);
* ``"bpe:<vocab_size>"``: a byte-level BPE trained on the training split with
  :func:`train_bpe_tokenizer` and cached (a 50k vocabulary makes the output layer dominate a tiny
  model).

:func:`resolve_tokenizer` settles the tokenizer *and* its [MASK] id (added, the tokenizer's own, or
an explicit id of a pretrained model such as LLaDA's 126336).

The tokenizer travels with the checkpoint: :func:`tokenizer_to_state` turns it (with the
[MASK]/[PAD] mdlm added) into the files ``save_pretrained`` writes plus a sha256 over them;
:class:`mdlm.module.MaskedDiffusionLM` stores that under ``checkpoint["mdlm_tokenizer"]``
(:data:`CHECKPOINT_KEY`), and a sharded (DCP) checkpoint directory also gets the files themselves
in ``<ckpt_dir>/tokenizer/`` (written by rank 0, :mod:`mdlm.parallel`).
:func:`tokenizer_from_checkpoint` restores it without the original files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_KEY",
    "DEFAULT_BPE_SPECIAL_TOKENS",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "SHARDED_TOKENIZER_DIR",
    "TokenizerError",
    "load_tokenizer",
    "parse_bpe_spec",
    "resolve_tokenizer",
    "tokenizer_fingerprint",
    "tokenizer_from_checkpoint",
    "tokenizer_from_state",
    "tokenizer_to_state",
    "train_bpe_tokenizer",
    "write_tokenizer_folder",
]

MASK_TOKEN = "[MASK]"
PAD_TOKEN = "[PAD]"
#: special tokens of a trained BPE, in id order (ids 0, 1, 2), keyed by their transformers role.
DEFAULT_BPE_SPECIAL_TOKENS: dict[str, str] = {
    "eos_token": "<|endoftext|>",
    "mask_token": MASK_TOKEN,
    "pad_token": PAD_TOKEN,
}


class TokenizerError(ValueError):
    """A tokenizer could not be loaded or does not fit masked diffusion (one-line message)."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything starting like a path is a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def parse_bpe_spec(spec: str) -> int | None:
    """``"bpe:4096"`` -> 4096; any other string -> None. A malformed ``bpe:`` spec raises."""
    if not spec.startswith("bpe:"):
        return None
    value = spec[4:]
    if not value.isdigit():
        raise TokenizerError(f"tokenizer spec {spec!r} is malformed: expected 'bpe:<vocab_size>', e.g. 'bpe:4096'")
    return int(value)


def load_tokenizer(name_or_path: str | os.PathLike, *, add_mask_token: bool = True, add_pad_token: bool = True) -> Any:
    """Load a tokenizer with ``transformers.AutoTokenizer`` and give it a mask (and pad) token.

    Args:
        name_or_path: a local tokenizer folder, or a Hugging Face Hub name (needs the hub).
        add_mask_token: add ``[MASK]`` when the tokenizer has no mask token; when False such a
            tokenizer is an error.
        add_pad_token: add ``[PAD]`` when the tokenizer has no pad token (packed text never pads,
            but SFT-style data and generation use it).

    Raises:
        TokenizerError: unknown name (or hub unreachable), a folder without tokenizer files, or
            no mask token while ``add_mask_token=False``.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if name.startswith("bpe:"):
        raise TokenizerError(
            f"tokenizer {name!r} is trained from the training split: pass it to a data module "
            "(TextDataModule/WikiTextDataModule), or call train_bpe_tokenizer(files, vocab_size)"
        )
    path = Path(name).expanduser()
    if path.exists():
        source = str(path)
    elif _looks_like_path(name):
        raise TokenizerError(f"tokenizer folder {name!r} does not exist")
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        where = "local folder" if path.exists() else "local folder nor a name the Hugging Face Hub could provide (offline?)"
        hint = (
            "; on a machine without the Hub, run an SFT config with its CPU preset: mdlm fit --config "
            "configs/sft_math_high_mask.yaml --config configs/data/math_train.yaml --config configs/presets/sft_tiny_cpu.yaml"
            if not path.exists() else ""
        )
        raise TokenizerError(
            f"could not load tokenizer {name!r}: it is neither a usable {where}; pass a local tokenizer "
            f"folder (e.g. --data.init_args.tokenizer=../shared/data/tokenizers/gpt2) or 'bpe:<vocab_size>'{hint} "
            f"[{type(err).__name__}: {_one_line(err)}]"
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise TokenizerError(f"could not load tokenizer {name!r}: {type(err).__name__}: {_one_line(err)}") from err

    if tokenizer.mask_token is None:
        if not add_mask_token:
            raise TokenizerError(
                f"tokenizer {name!r} has no mask token and add_mask_token=False: set add_mask_token=True "
                f"to add {MASK_TOKEN!r} (the vocabulary grows by one) or use a tokenizer that defines mask_token"
            )
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if tokenizer.pad_token is None and add_pad_token:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def resolve_tokenizer(
    spec: str | os.PathLike,
    *,
    mask_token_id: int | None = None,
    add_mask_token: bool = False,
    add_pad_token: bool = False,
) -> tuple[Any, int]:
    """The tokenizer of ``spec`` and its [MASK] id: the one function that settles the mask id.

    * ``add_mask_token=True``: :func:`load_tokenizer` adds ``[MASK]`` when missing (training from
      scratch; the vocabulary grows by one);
    * ``mask_token_id=<id>``: the mask id of a pretrained model whose tokenizer has no mask token
      (e.g. 126336 for LLaDA). It must lie in the vocabulary and agree with the tokenizer's own
      mask token when it has one; the tokenizer's ``mask_token`` is set to that id's token;
    * neither: the tokenizer's own mask token (an error naming both options when it has none).

    ``add_pad_token`` adds ``[PAD]`` when missing (text data; SFT pads with EOS and passes False).
    """
    if mask_token_id is not None and add_mask_token:
        raise TokenizerError(
            f"give either mask_token_id={mask_token_id} (a pretrained model's mask id) or add_mask_token=True "
            "(add [MASK] when training from scratch), not both"
        )
    if add_mask_token:
        tok = load_tokenizer(spec, add_mask_token=True, add_pad_token=add_pad_token)
        return tok, int(tok.mask_token_id)
    try:
        tok = load_tokenizer(spec, add_mask_token=False, add_pad_token=add_pad_token)
    except TokenizerError as err:
        if "no mask token" not in str(err):
            raise
        if mask_token_id is None:
            raise TokenizerError(
                f"tokenizer {str(spec)!r} has no mask token: for a pretrained model pass its mask id explicitly, "
                "mask_token_id=<id> (e.g. 126336 for LLaDA), or set add_mask_token=True to add '[MASK]' "
                "when training from scratch (the vocabulary grows by one)"
            ) from err
        # the tokenizer loads (only its mask token is missing): load it as is, without adding tokens
        from transformers import AutoTokenizer

        path = Path(str(spec)).expanduser()
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else str(spec))
        if add_pad_token and tok.pad_token is None:
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if mask_token_id is None:
        return tok, int(tok.mask_token_id)
    mask_token_id = int(mask_token_id)
    if not 0 <= mask_token_id < len(tok):
        raise TokenizerError(f"mask_token_id={mask_token_id} is outside the tokenizer's vocabulary [0, {len(tok)})")
    if tok.mask_token_id is not None and tok.mask_token_id != mask_token_id:
        raise TokenizerError(
            f"mask_token_id={mask_token_id} conflicts with the tokenizer's own mask token "
            f"{tok.mask_token!r} (id {tok.mask_token_id}); drop mask_token_id to use the tokenizer's"
        )
    if tok.mask_token_id is None:
        tok.mask_token = tok.convert_ids_to_tokens(mask_token_id)
    return tok, mask_token_id


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 (hex) of what decides token ids: class, vocabulary, merges, added/special tokens.

    For fast (``tokenizers``-backed) tokenizers the serialized backend (vocab, merges, added tokens,
    normalizer, pre-tokenizer, post-processor) is hashed; otherwise the vocabulary and added tokens.
    Two tokenizers with the same fingerprint produce the same ids, so it keys token caches.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # pragma: no cover - slow tokenizers are rare with transformers 5
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
        added = {str(k): str(v) for k, v in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        h.update(json.dumps(added, sort_keys=True, ensure_ascii=False).encode())
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    h.update(json.dumps(special, sort_keys=True, ensure_ascii=False).encode())
    h.update(str(len(tokenizer)).encode())
    return h.hexdigest()


def _bpe_backend(vocab_size: int, special_tokens: Sequence[str], min_frequency: int) -> tuple[Any, Any]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def train_bpe_tokenizer(
    files: Sequence[str | os.PathLike] | None,
    vocab_size: int,
    special_tokens: Mapping[str, str] | None = None,
    *,
    texts: Iterable[str] | None = None,
    save_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
) -> Any:
    """Train a byte-level BPE with the ``tokenizers`` library (deterministic for the same input).

    Args:
        files: plain-text files to train on (read line by line); or None and ``texts``.
        vocab_size: total vocabulary size, special tokens and the 256 byte symbols included
            (a small corpus may stop merging earlier: ``len(tokenizer)`` is the truth).
        special_tokens: transformers role -> token string, ids assigned 0, 1, ... in order;
            default ``{"eos_token": "<|endoftext|>", "mask_token": "[MASK]", "pad_token": "[PAD]"}``.
        texts: an iterable of strings to train on instead of ``files``.
        save_dir: when given, the tokenizer is saved there (``save_pretrained``, written to a
            temporary sibling and renamed into place) and the returned object is reloaded from it.
        min_frequency: a pair must occur this often to be merged.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with eos/mask/pad tokens set.
    """
    from transformers import PreTrainedTokenizerFast

    special = dict(DEFAULT_BPE_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if vocab_size < 256 + len(special):
        raise TokenizerError(
            f"BPE vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{256 + len(special)} (256 bytes + {len(special)} special tokens)"
        )
    if (files is None) == (texts is None):
        raise TokenizerError("train_bpe_tokenizer needs exactly one of `files` or `texts`")
    backend, trainer = _bpe_backend(vocab_size, list(special.values()), min_frequency)
    if files is not None:
        paths = [str(Path(f)) for f in files]
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"BPE training file {p!r} does not exist")
        backend.train(paths, trainer)
    else:
        backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    if save_dir is None:
        return tokenizer
    save_dir = Path(save_dir)
    if not (save_dir / "tokenizer.json").is_file():
        save_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = save_dir.parent / f".tmp-{save_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tokenizer.save_pretrained(str(tmp))
            try:
                os.rename(tmp, save_dir)
            except OSError:  # another process finished the same (deterministic) tokenizer first
                if not (save_dir / "tokenizer.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(save_dir))


# ---------------------------------------------------------------------------- the tokenizer in checkpoints
#: top-level checkpoint key of :func:`tokenizer_to_state` (written by MaskedDiffusionLM.on_save_checkpoint)
CHECKPOINT_KEY = "mdlm_tokenizer"
#: folder of a sharded (DCP) checkpoint directory holding the tokenizer files (written by rank 0)
SHARDED_TOKENIZER_DIR = "tokenizer"
#: Lightning's file of the non-tensor entries of a sharded checkpoint directory
_SHARDED_META = "meta.pt"
_STATE_FORMAT = 1


def _files_sha256(files: Mapping[str, bytes]) -> str:
    """sha256 over ``name, size, bytes`` of every file, in name order."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def tokenizer_to_state(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer as plain checkpoint data: the files ``save_pretrained`` writes and their sha256.

    Returns ``{"format": 1, "files": {name: text}, "binary_files": {name: base64}, "sha256",
    "fingerprint" (:func:`tokenizer_fingerprint`), "mask_token_id", "len", "class", "name_or_path"}``:
    strings and ints only, so it loads with ``torch.load(weights_only=True)``. Every token mdlm added
    ([MASK], [PAD]) is part of the files.
    """
    mask = getattr(tokenizer, "mask_token_id", None)
    # a mask token set on an ordinary vocabulary entry (resolve_tokenizer with an explicit id) is saved
    # without it: reloading would turn that entry into an added special token; _checked sets it again
    plain_mask = mask is not None and int(mask) not in getattr(tokenizer, "added_tokens_decoder", {})
    saved_mask = tokenizer.mask_token
    with tempfile.TemporaryDirectory(prefix="mdlm-tokenizer-") as tmp:
        if plain_mask:
            tokenizer.mask_token = None
        try:
            tokenizer.save_pretrained(tmp)
        finally:
            if plain_mask:
                tokenizer.mask_token = saved_mask
        raw = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    files: dict[str, str] = {}
    binary: dict[str, str] = {}
    for name, data in raw.items():
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:  # e.g. a SentencePiece model
            binary[name] = base64.b64encode(data).decode("ascii")
    return {
        "format": _STATE_FORMAT,
        "files": files,
        "binary_files": binary,
        "sha256": _files_sha256(raw),
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "mask_token_id": None if mask is None else int(mask),
        "len": len(tokenizer),
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
    }


def _state_files(state: Mapping[str, Any]) -> dict[str, bytes]:
    """The file bytes of a :func:`tokenizer_to_state` dict, checked against its sha256."""
    if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
        found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise TokenizerError(f"the checkpoint's tokenizer has format {found!r}, not {_STATE_FORMAT}: a newer mdlm wrote it")
    raw = {name: text.encode("utf-8") for name, text in state["files"].items()}
    raw.update({name: base64.b64decode(text) for name, text in state.get("binary_files", {}).items()})
    if _files_sha256(raw) != state.get("sha256"):
        raise TokenizerError(
            f"the checkpoint's tokenizer files ({', '.join(sorted(raw))}) do not match their sha256 "
            f"{str(state.get('sha256'))[:12]}: the checkpoint is corrupt; pass the tokenizer folder explicitly"
        )
    return raw


def _write_files(raw: Mapping[str, bytes], folder: Path) -> None:
    for name, data in raw.items():
        target = folder / name
        if folder.resolve() not in target.resolve().parents:
            raise TokenizerError(f"the checkpoint's tokenizer file name {name!r} leaves its folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def write_tokenizer_folder(state: Mapping[str, Any], folder: str | os.PathLike) -> Path:
    """Write the files of a :func:`tokenizer_to_state` dict into ``folder`` (replaced as a whole)."""
    folder = Path(folder)
    raw = _state_files(state)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write_files(raw, tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _checked(tokenizer: Any, state: Mapping[str, Any], where: str) -> Any:
    """Restore ``name_or_path`` and the mask token of a reloaded tokenizer; check its length."""
    if state.get("name_or_path"):
        tokenizer.name_or_path = state["name_or_path"]
    mask = state.get("mask_token_id")
    if mask is not None and tokenizer.mask_token_id != mask:
        if tokenizer.mask_token_id is not None:
            raise TokenizerError(
                f"{where}: the restored tokenizer's mask token id {tokenizer.mask_token_id} is not the saved {mask}"
            )
        tokenizer.mask_token = tokenizer.convert_ids_to_tokens(int(mask))
    if state.get("len") is not None and len(tokenizer) != int(state["len"]):
        raise TokenizerError(f"{where}: the restored tokenizer has {len(tokenizer)} tokens, the saved one {state['len']}")
    return tokenizer


def tokenizer_from_state(state: Mapping[str, Any], *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a :func:`tokenizer_to_state` dict (files checked against their sha256)."""
    from transformers import AutoTokenizer

    raw = _state_files(state)
    with tempfile.TemporaryDirectory(prefix="mdlm-tokenizer-") as tmp:
        _write_files(raw, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=trust_remote_code)
    return _checked(tokenizer, state, "checkpoint")


def _torch_load(path: Path) -> Any:
    """``torch.load`` of a trusted checkpoint file, memory-mapped where possible (tensors are not read)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip-format file: mmap is unsupported
        return torch.load(path, map_location="cpu", weights_only=False)


def tokenizer_from_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Any], *, trust_remote_code: bool = False) -> Any:
    """The tokenizer a checkpoint carries, or None when it holds none (parity, or an older mdlm).

    ``checkpoint``: a loaded checkpoint dict, a Lightning ``.ckpt`` file, or a sharded (DCP)
    checkpoint directory (its ``meta.pt``, else its ``tokenizer/`` folder). Files are read with
    ``weights_only=False`` (checkpoints may hold the backbone factory): load only checkpoints you trust.
    """
    if isinstance(checkpoint, Mapping):
        state = checkpoint.get(CHECKPOINT_KEY)
        return None if state is None else tokenizer_from_state(state, trust_remote_code=trust_remote_code)
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        meta = _torch_load(path / _SHARDED_META) if (path / _SHARDED_META).is_file() else {}
        state = meta.get(CHECKPOINT_KEY) if isinstance(meta, Mapping) else None
        if state is not None:
            return tokenizer_from_state(state, trust_remote_code=trust_remote_code)
        folder = path / SHARDED_TOKENIZER_DIR
        if (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        return None
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (a .ckpt file or a sharded checkpoint directory)")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, Mapping):
        raise TokenizerError(f"{path} is not a Lightning checkpoint (it holds a {type(ckpt).__name__})")
    return tokenizer_from_checkpoint(ckpt, trust_remote_code=trust_remote_code)
