r"""The data contract: what every mdlm data module offers the model, the CLI and the tools.

:class:`MDLMDataModule` is the base of :class:`~mdlm.data.parity.ParityDataModule`,
:class:`~mdlm.data.text.TextDataModule` (and :class:`~mdlm.data.wikitext.WikiTextDataModule`) and
:class:`~mdlm.data.sft.SFTDataModule` (and its GSM8K, MATH and arithmetic variants). A plain
``LightningDataModule`` still trains; the model then uses its own ``vocab_size``/``mask_token_id``,
names its loaders ``val``/``test`` and cannot decode generations (no tokenizer).

Attributes, set in ``__init__`` (before ``setup``: the CLI links ``vocab_size`` and ``mask_token_id``
into the model when it instantiates the classes):

============================  ====================================================================
``vocab_size: int``           ids the model must embed, [MASK] included (``len(tokenizer)``)
``mask_token_id: int``        the absorbing [MASK] id; it never occurs in the data
``tokenizer``                 a ``transformers`` tokenizer with every token mdlm added, or None
                              (parity: tokens are ids); it travels with the checkpoint
``eos_token_id: int | None``  end of a document / response (None: parity)
``pad_token_id: int | None``  the padding id (SFT: EOS; text: ``[PAD]`` or the tokenizer's; parity: None)
``val_dataloader_names``      one name per validation loader, the prefix of its metrics
                              (``["val"]``; parity ``["val", "train"]``)
``test_dataloader_names``     one name per test loader (``["test"]``)
``answer_groups``             groups of the generation prompts for per-group answer accuracy
                              (e.g. ``["Level 1", ...]``); ``[]`` when the test loader has none
============================  ====================================================================

Batches (dicts of tensors; B rows, L positions):

* **training / evaluation blocks** (every train and val loader, text and parity test loaders):
  ``input_ids`` LongTensor [B, L] and ``index`` LongTensor [B] (the global sample index: evaluation
  randomness is keyed by it). Optional: ``maskable`` BoolTensor [B, L] (positions the forward
  process may mask; default all), ``attention_mask`` BoolTensor [B, L] (default all attended),
  ``query_mask`` BoolTensor [B, L] (parity: the label position, for ``label_acc``),
  ``prompt_length`` LongTensor [B] (SFT).
  Text blocks carry ``input_ids`` + ``index``; parity adds ``query_mask``; SFT adds
  ``maskable``, ``attention_mask`` and ``prompt_length``.
* **generation prompts** (SFT test/predict loaders, answered by the reverse process):
  ``prompt_input_ids`` LongTensor [B, P] (left-padded), ``prompt_attention_mask`` BoolTensor [B, P],
  ``index`` LongTensor [B], and lists of B: ``reference`` (str | None), ``group`` (str),
  ``prompt_text`` (str), ``dataset`` (``gsm8k`` | ``math`` | ``chat``: the answer checker).
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule

__all__ = ["DataContractError", "MDLMDataModule", "check_data_contract"]

#: attributes a data module must set in ``__init__`` (the CLI links them into the model)
REQUIRED = ("vocab_size", "mask_token_id")


class DataContractError(ValueError):
    """An :class:`MDLMDataModule` that does not set a required attribute (names it)."""


class MDLMDataModule(LightningDataModule):
    """Base class of mdlm's data modules: the attributes and batches of :mod:`mdlm.data.contract`.

    Subclasses set ``vocab_size`` and ``mask_token_id`` in ``__init__`` and, when they have one,
    ``tokenizer``, ``eos_token_id`` and ``pad_token_id``; they override ``val_dataloader_names`` /
    ``test_dataloader_names`` when they have other loaders, and ``answer_groups`` when their test
    prompts are grouped.
    """

    val_dataloader_names: ClassVar[list[str]] = ["val"]
    test_dataloader_names: ClassVar[list[str]] = ["test"]
    tokenizer: Any = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    vocab_size: int
    mask_token_id: int

    @property
    def answer_groups(self) -> list[str]:
        """Group labels of the generation prompts (per-group answer accuracy); none by default."""
        return []

    def tokenizer_state(self) -> dict[str, Any] | None:
        """The tokenizer as checkpoint data (:func:`mdlm.data.tokenizer.tokenizer_to_state`), None without one.

        Computed once per tokenizer object; :class:`mdlm.module.MaskedDiffusionLM` stores it in every
        checkpoint under ``"mdlm_tokenizer"``.
        """
        if self.tokenizer is None:
            return None
        memo = self.__dict__.get("_tokenizer_state_memo")
        if memo is None or memo[0] is not self.tokenizer or memo[1] != len(self.tokenizer):
            from mdlm.data.tokenizer import tokenizer_to_state

            memo = (self.tokenizer, len(self.tokenizer), tokenizer_to_state(self.tokenizer))
            self.__dict__["_tokenizer_state_memo"] = memo
        return memo[2]


def check_data_contract(datamodule: Any) -> None:
    """Raise :class:`DataContractError` naming the first required attribute an MDLMDataModule lacks.

    Plain ``LightningDataModule`` s (and None) pass: the contract is what mdlm's own modules promise.
    """
    if not isinstance(datamodule, MDLMDataModule):
        return
    for name in REQUIRED:
        if not hasattr(datamodule, name):
            raise DataContractError(
                f"{type(datamodule).__name__} sets no `{name}`: an MDLMDataModule sets "
                f"{' and '.join(REQUIRED)} in __init__ (the CLI links them into the model)"
            )
