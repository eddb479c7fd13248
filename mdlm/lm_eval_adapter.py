"""lm-evaluation-harness adapter: an ``LM`` registered as ``"mdlm"`` (needs ``pip install 'mdlm[lm_eval]'``).

Importing this module registers the model, after which ``lm_eval.simple_evaluate(model="mdlm",
model_args={"checkpoint": ...}, tasks=[...])`` works; on the command line::

    python -m mdlm.lm_eval_adapter --model mdlm \\
        --model_args checkpoint=runs/x/version_0/checkpoints/last.ckpt,mc_num=128 \\
        --tasks hellaswag --batch_size 32

The checkpoint carries the run's tokenizer (``tokenizer=DIR`` overrides it; checkpoints written
before mdlm saved the tokenizer in them need it). Instead of a checkpoint, a folder written by
``mdlm export`` (weights, config with ``mask_token_id``, tokenizer; mdlm's own Transformer ships its
modeling code, hence ``trust_remote_code``)::

    mdlm-lm-eval --model mdlm --model_args pretrained=examples/parity_md,trust_remote_code=True,mc_num=32 ...

* ``loglikelihood``: the Monte Carlo ELBO of :func:`mdlm.likelihood.estimate_log_likelihoods`
  (``mc_num`` draws, ``batch_size`` sequences per forward pass), and ``is_greedy`` from
  :func:`mdlm.likelihood.greedy_matches` (``check_greedy=False`` skips it and reports False, as
  LLaDA recommends when no task needs it). The draws are keyed by a hash of the context tokens, so
  a request's score does not depend on which other requests are evaluated or in which order, and
  the choices of one question share their masks (common random numbers: lower variance of the
  comparison).
* ``loglikelihood_rolling``: the ELBO (negative NELBO bound) of the whole text after the prefix
  token (BOS, else EOS), in windows of ``max_length`` tokens when it is longer; each later window
  sees up to ``max_length - rolling_chunk`` tokens before it as its (unmasked) prompt.
* ``generate_until``: :func:`mdlm.generation.generate` (``gen_length``, ``steps``,
  ``block_length``, ``remasking``, and the fast-decoding settings ``threshold``,
  ``max_tokens_per_step``, ``stop_at_eos``, ``cache``, ``cache_refresh``; greedy unless the task
  sets ``do_sample`` with a ``temperature``), cut at EOS and at the first of the task's ``until``
  strings. The task's ``max_gen_toks`` is ignored: ``gen_length`` decides (as in LLaDA's adapter).

Nothing is padded: ``loglikelihood`` and ``is_greedy`` batch only requests of equal prompt and
continuation lengths, ``generate_until`` only contexts of equal length (and temperature), and the
model never gets an attention mask. So even for a padding-blind model (LLaDA) a request's ELBO,
``is_greedy`` and greedy generation do not depend on requests of other lengths, bit for bit
(sampled generation draws its noise per batch, seeded by ``seed`` and the batch's offset).

Too long inputs raise (``truncation="error"``) or keep the last tokens of the context
(``truncation="left"``, the harness' usual behaviour).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mdlm.lm_eval_adapter needs lm-evaluation-harness: pip install 'mdlm[lm_eval]' (or pip install lm-eval)"
    ) from err

from mdlm.generation import generate
from mdlm.likelihood import estimate_log_likelihoods, greedy_matches, model_max_length

__all__ = ["MDLMEvalHarness"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name}={value!r} must be a boolean")


def _as_int(value: Any, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    try:
        number = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and number != value):
            raise ValueError
        if isinstance(value, str) and str(number) != value.strip():
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}") from None
    if number < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return number


def _key(tokens: Sequence[int]) -> int:
    """A 62-bit key of a token sequence (keys the Monte Carlo draws of a request)."""
    digest = hashlib.sha256(",".join(map(str, tokens)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


@register_model("mdlm")
class MDLMEvalHarness(LM):
    """A :class:`~mdlm.module.MaskedDiffusionLM` checkpoint as an lm-evaluation-harness ``LM``.

    Args:
        checkpoint: a Lightning checkpoint of ``MaskedDiffusionLM`` (loaded with
            ``weights_only=False``: it holds the backbone factory).
        tokenizer: tokenizer folder (or hub name, or a tokenizer object). Without ``mask_token_id`` it
            is loaded as in training, with :func:`mdlm.data.tokenizer.load_tokenizer` (``[MASK]`` added
            when missing); with it, by ``AutoTokenizer`` as it is. Default with ``checkpoint``: the
            tokenizer saved in the checkpoint (:func:`mdlm.data.tokenizer.tokenizer_from_checkpoint`;
            checkpoints of older mdlm versions hold none and need this argument); with ``pretrained``:
            that folder.
        model: instead of ``checkpoint``, a model object (``model(ids) -> logits``) — for Python use.
        pretrained: instead of ``checkpoint``, a folder written by ``mdlm export`` (or any transformers
            folder whose ``config.json`` has ``mask_token_id``), loaded with :func:`mdlm.export.load_exported`;
            its ``mask_token_id`` is the default of ``mask_token_id``.
        trust_remote_code: with ``pretrained``, allow the folder's own modeling code (``mdlm export`` of
            mdlm's Transformer ships ``modeling_mdlm.py``; LLaDA ships its own). Default False.
        mask_token_id: the ``[MASK]`` id; default the tokenizer's, which must equal the model's.
        mc_num: Monte Carlo draws per ``loglikelihood`` request (LLaDA: 128).
        batch_size: sequences per forward pass (the harness' ``--batch_size``).
        stratified: spread the number of masked tokens evenly over the draws (lower variance).
        seed: seed of the draws (and of sampled generation).
        check_greedy: compute ``is_greedy`` (costs ``L`` forward passes per request).
        gen_length, steps, block_length, remasking: decoding settings of ``generate_until``
            (``steps`` default ``gen_length``; ``block_length`` default ``gen_length``).
        threshold, max_tokens_per_step, stop_at_eos, cache, cache_refresh: parallel decoding and
            block caching of ``generate_until`` (see :func:`mdlm.generation.generate`; default
            off, the exact loop), e.g. ``threshold=0.9,cache=dual,block_length=32,stop_at_eos=True``.
        max_length: longest sequence; default the model's (``max_seq_len``).
        truncation: ``"error"`` or ``"left"`` (drop the oldest context tokens) for too long inputs.
        add_bos_token: put the prefix token (BOS, else EOS) before every context, not only before
            an empty one.
        rolling_chunk: tokens scored per window of ``loglikelihood_rolling`` after the first;
            default ``max_length // 2``.
        device: ``"cpu"``, ``"cuda"``, ...; dtype: ``float32`` | ``bfloat16`` | ``float16``.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        tokenizer: Any = None,
        *,
        model: Any = None,
        pretrained: str | None = None,
        trust_remote_code: bool | str = False,
        mask_token_id: int | None = None,
        mc_num: int = 128,
        batch_size: int | str = 32,
        stratified: bool = True,
        seed: int = 0,
        check_greedy: bool = True,
        gen_length: int = 128,
        steps: int | None = None,
        block_length: int | None = None,
        remasking: str = "low_confidence",
        threshold: float | None = None,
        max_tokens_per_step: int | None = None,
        stop_at_eos: bool = False,
        cache: str | None = None,
        cache_refresh: int | None = None,
        max_length: int | None = None,
        truncation: str = "error",
        add_bos_token: bool = False,
        rolling_chunk: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        max_batch_size: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            warnings.warn(f"mdlm lm-eval adapter ignores unknown arguments {sorted(kwargs)}", UserWarning, stacklevel=2)
        if sum(x is not None for x in (checkpoint, model, pretrained)) != 1:
            raise ValueError(
                "pass exactly one of checkpoint=<path to a MaskedDiffusionLM .ckpt>, pretrained=<folder of mdlm export> "
                "or model=<module>"
            )
        if pretrained is not None and tokenizer is None:
            tokenizer = str(pretrained)  # mdlm export saves the run's tokenizer beside the weights
        if checkpoint is not None and tokenizer is None:  # the tokenizer the run trained with, saved in the checkpoint
            from mdlm.data.tokenizer import tokenizer_from_checkpoint

            tokenizer = tokenizer_from_checkpoint(str(checkpoint))
        if tokenizer is None:
            raise ValueError("tokenizer=<tokenizer folder> is required (the checkpoint holds no tokenizer)")
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise ValueError(f"batch_size={batch_size!r}: automatic batch sizes are not supported; give an integer")
        self.mc_num = _as_int(mc_num, "mc_num")
        self.batch_size = _as_int(batch_size, "batch_size")
        self.seed = _as_int(seed, "seed", minimum=0)
        self.stratified = _as_bool(stratified, "stratified")
        self.check_greedy = _as_bool(check_greedy, "check_greedy")
        self.add_bos_token = _as_bool(add_bos_token, "add_bos_token")
        if truncation not in ("error", "left"):
            raise ValueError(f"truncation={truncation!r} must be 'error' or 'left'")
        self.truncation = truncation
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
        self._device = torch.device(device or "cpu")
        if self._device.type == "cuda" and not torch.cuda.is_available():
            # the harness' CLI asks for cuda by default
            log.warning("device=%s requested but CUDA is not available: using cpu", device)
            self._device = torch.device("cpu")

        # ---- model
        if checkpoint is not None:
            from mdlm.module import MaskedDiffusionLM

            model = MaskedDiffusionLM.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
        elif pretrained is not None:
            from mdlm.export import load_exported

            trust = _as_bool(trust_remote_code, "trust_remote_code")
            model = load_exported(str(pretrained), trust_remote_code=trust)
            if mask_token_id is None:  # the exported config's id; the tokenizer is then loaded as it is
                mask_token_id = model.mask_token_id
            if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
                from transformers import AutoTokenizer

                # transformers reads the folder's config.json too: its auto_map needs the same trust
                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust)
        self.model = model.to(device=self._device, dtype=_DTYPES[dtype]).eval()
        model_mask = getattr(model, "mask_token_id", None)

        # ---- tokenizer and [MASK]
        if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
            if mask_token_id is None:  # mdlm's convention, as in training: [MASK] added when missing
                from mdlm.data.tokenizer import load_tokenizer

                tokenizer = load_tokenizer(str(tokenizer), add_mask_token=True, add_pad_token=False)
            else:  # an explicit id (e.g. LLaDA's 126336): the tokenizer need not know it
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer = tokenizer
        if mask_token_id is not None:
            self.mask_token_id = _as_int(mask_token_id, "mask_token_id", minimum=0)
            if model_mask is not None and self.mask_token_id != model_mask:
                warnings.warn(
                    f"mask_token_id={self.mask_token_id} differs from the model's mask_token_id={model_mask}",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            tok_mask = getattr(tokenizer, "mask_token_id", None)
            if tok_mask is not None and model_mask is not None and tok_mask != model_mask:
                raise ValueError(
                    f"the tokenizer's mask token id {tok_mask} differs from the model's mask_token_id="
                    f"{model_mask}: pass mask_token_id=... explicitly, or the tokenizer the model was trained with"
                )
            self.mask_token_id = tok_mask if tok_mask is not None else model_mask
            if self.mask_token_id is None:
                raise ValueError("no mask token id: the tokenizer has no mask token; pass mask_token_id=...")
        vocab = getattr(model, "vocab_size", None)
        if isinstance(vocab, int) and len(tokenizer) > vocab:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}: "
                "use the tokenizer the model was trained with"
            )
        suppressed = list(getattr(model, "suppressed", []) or [])
        self.suppress_token_ids = sorted({self.mask_token_id, *[t for t in suppressed if t != model_mask]})
        bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
        self.prefix_token_id = bos if bos is not None else eos
        self.eos_token_id = eos

        # ---- lengths and decoding
        self.max_length = _as_int(max_length, "max_length", allow_none=True) or model_max_length(self.model)
        if self.max_length is None:
            raise ValueError("the model does not tell its maximum sequence length: pass max_length=...")
        self.gen_length = _as_int(gen_length, "gen_length")
        self.steps = _as_int(steps, "steps", allow_none=True) or self.gen_length
        self.block_length = _as_int(block_length, "block_length", allow_none=True) or self.gen_length
        self.remasking = remasking
        if isinstance(threshold, str):
            try:
                threshold = float(threshold)
            except ValueError:
                raise ValueError(f"threshold={threshold!r} must be a number in [0, 1] or None") from None
        self.fast_decoding = {
            "threshold": threshold,
            "max_tokens_per_step": _as_int(max_tokens_per_step, "max_tokens_per_step", allow_none=True),
            "stop_at_eos": _as_bool(stop_at_eos, "stop_at_eos"),
            "cache": None if cache in (None, "", "none", "None") else cache,
            "cache_refresh": _as_int(cache_refresh, "cache_refresh", allow_none=True),
        }
        from mdlm.generation import GenerationConfig

        GenerationConfig(  # validates the decoding settings now, not at the first request
            gen_length=self.gen_length, steps=self.steps, block_length=self.block_length, remasking=remasking,
            **self.fast_decoding,
        )
        chunk = _as_int(rolling_chunk, "rolling_chunk", allow_none=True)
        self.rolling_chunk = chunk if chunk is not None else max(1, self.max_length // 2)
        if self.rolling_chunk > self.max_length:
            raise ValueError(f"rolling_chunk={self.rolling_chunk} exceeds max_length={self.max_length}")

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "mdlm")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ------------------------------------------------------------------ tokenisation
    def tok_encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix(self) -> list[int]:
        return [] if self.prefix_token_id is None else [self.prefix_token_id]

    def _encode_context(self, context: str) -> list[int]:
        ids = self.tok_encode(context) if context else []
        return self._prefix() + ids if (self.add_bos_token or not ids) else ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Trailing spaces of the context move to the continuation; the continuation's ids are the
        tail of the whole text's ids (the harness' ``TemplateLM._encode_pair``)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            return self._encode_context(""), self.tok_encode(continuation)
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        prefix = self._prefix() if self.add_bos_token else []
        return prefix + ctx, whole[len(ctx) :]

    def _fit(self, context: list[int], room: int, what: str) -> list[int]:
        """The context, cut on the left to ``room`` tokens when ``truncation='left'``."""
        if len(context) <= room:
            return context
        if self.truncation == "left" and room >= 1:
            return context[len(context) - room :]
        raise ValueError(
            f"{what}: the context has {len(context)} tokens but only {room} fit in max_length="
            f"{self.max_length}; shorten it or pass truncation=left"
        )

    # ------------------------------------------------------------------ LM interface
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for n, req in enumerate(requests):
            context, continuation = req.args
            ctx, cont = self._encode_pair(context, continuation)
            if not cont:
                raise ValueError(f"request {n}: the continuation {continuation!r} is empty after tokenisation")
            if len(cont) > self.max_length:
                raise ValueError(
                    f"request {n}: the continuation has {len(cont)} tokens, more than max_length={self.max_length}"
                )
            pairs.append((self._fit(ctx, self.max_length - len(cont), f"request {n}"), cont))
        items = [_key(ctx) for ctx, _ in pairs]
        bar = self._bar(None, "mdlm loglikelihood (sequences)", disable_tqdm)
        estimates = self._estimate(pairs, items, progress=bar.update)
        bar.close()
        if self.check_greedy:
            greedy = greedy_matches(
                self.model,
                pairs,
                mask_token_id=self.mask_token_id,
                suppress_token_ids=self.suppress_token_ids,
                batch_size=self.batch_size,
                max_length=self.max_length,
                device=self._device,
            )
        else:
            greedy = [False] * len(pairs)
        out = []
        for req, est, g in zip(requests, estimates, greedy):
            result = (est.mean, bool(g))
            self.cache_hook.add_partial("loglikelihood", req.args, result)
            out.append(result)
        return out

    def _estimate(self, pairs: list, items: list, progress=None) -> list:
        """The Monte Carlo ELBO of (prompt, continuation) ``pairs`` with this harness model's settings."""
        return estimate_log_likelihoods(
            self.model,
            pairs,
            mask_token_id=self.mask_token_id,
            mc_num=self.mc_num,
            batch_size=self.batch_size,
            seed=self.seed,
            items=items,
            stratified=self.stratified,
            suppress_token_ids=self.suppress_token_ids,
            max_length=self.max_length,
            device=self._device,
            progress=progress,
        )

    def _windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """(prompt, continuation) windows that score every token once, each with maximal context."""
        prefix = self._prefix()
        first = self.max_length - len(prefix)
        windows = [(prefix, tokens[:first])]
        pos = first
        while pos < len(tokens):
            cont = tokens[pos : pos + self.rolling_chunk]
            windows.append((tokens[max(0, pos - (self.max_length - len(cont))) : pos], cont))
            pos += len(cont)
        return windows

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        pairs, items, owner = [], [], []
        for n, req in enumerate(requests):
            (text,) = req.args[:1]
            tokens = self.tok_encode(text)
            if not tokens:
                raise ValueError(f"request {n}: the text {text!r} is empty after tokenisation")
            key = _key(tokens)
            for k, window in enumerate(self._windows(tokens)):
                pairs.append(window)
                items.append((key, k))
                owner.append(n)
        estimates = self._estimate(pairs, items)
        totals = [0.0] * len(requests)
        for n, est in zip(owner, estimates):
            totals[n] += est.mean
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if self.gen_length >= self.max_length:
            raise ValueError(
                f"gen_length={self.gen_length} leaves no room for a prompt in max_length={self.max_length}; "
                "pass a smaller gen_length"
            )
        prepared = []
        for n, req in enumerate(requests):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0) if gen_kwargs.get("do_sample") else 0.0
            ctx = self._fit(self._encode_context(context), self.max_length - self.gen_length, f"request {n}")
            prepared.append((ctx, until, temperature))
        groups: dict[tuple[int, float], list[int]] = {}
        for n, (ctx, _, temperature) in enumerate(prepared):
            groups.setdefault((len(ctx), temperature), []).append(n)
        out = [""] * len(requests)
        bar = self._bar(len(requests), "mdlm generate_until", disable_tqdm)
        for (_, temperature), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                prompts = torch.tensor([prepared[n][0] for n in chunk], dtype=torch.long, device=self._device)
                generator = torch.Generator(device=self._device).manual_seed(self.seed + start) if temperature else None
                result = generate(
                    self.model,
                    prompts,
                    mask_token_id=self.mask_token_id,
                    gen_length=self.gen_length,
                    steps=self.steps,
                    block_length=self.block_length,
                    temperature=temperature,
                    remasking=self.remasking,
                    eos_token_id=self.eos_token_id,
                    generator=generator,
                    suppress_token_ids=[t for t in self.suppress_token_ids if t != self.mask_token_id],
                    **self.fast_decoding,
                )
                for n, seq in zip(chunk, result.sequences):
                    out[n] = self._cut(self.tokenizer.decode(seq.tolist(), skip_special_tokens=False), prepared[n][1])
                bar.update(len(chunk))
        bar.close()
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def _cut(self, text: str, until: list[str]) -> str:
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        for special in getattr(self.tokenizer, "all_special_tokens", []):
            text = text.replace(special, "")
        return text

    @staticmethod
    def _bar(total: int | None, desc: str, disable: bool):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=disable)


def main() -> None:
    """``mdlm-lm-eval``: lm-evaluation-harness's command line with the ``mdlm`` model registered.

    ``mdlm-lm-eval --model mdlm --model_args checkpoint=last.ckpt,mc_num=128 --tasks arc_easy``
    """
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":  # pragma: no cover
    main()
