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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BPE_SPECIAL_TOKENS",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "TokenizerError",
    "load_tokenizer",
    "parse_bpe_spec",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
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
