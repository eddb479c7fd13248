r"""Supervised fine-tuning (SFT) data for the masked-diffusion objective, LLaDA-style.

A sample is a *prompt* and a *response*. The model sees ``prompt + response + EOS (+ EOS padding)``;
only the response, its EOS and (optionally) the EOS padding are *maskable*, so the forward process
never masks a prompt token and the loss is computed on the response only (LLaDA, Nie et al. 2025,
§2.3 / App. B.1).

Sources (``dataset=``), each a small adapter from a raw record to (prompt turns, response,
reference answer, group):

* ``gsm8k``: ``question`` / ``answer`` (``... #### 72``); reference = the number after ``####``;
  group ``"all"``. Local JSONL or Hugging Face ``openai/gsm8k`` (config ``main``).
* ``math``: ``problem`` / ``solution`` / ``level`` / ``type`` (MATH, ``EleutherAI/hendrycks_math``);
  reference = the ``answer`` field if any, else the last ``\boxed{}`` of the solution.
* ``math500``: ``problem`` / ``solution`` / ``answer`` / ``subject`` / ``level`` (MATH-500,
  ``HuggingFaceH4/MATH-500``); reference = ``answer``. For both MATH kinds the group is the level
  (``"Level 3"``; ``group_by="subject"`` uses ``type``/``subject``) and ``dataset`` is ``"math"``.
* ``chat``: ``messages = [{role, content}, ...]`` (e.g. allenai/tulu-3-sft-personas-math-filtered):
  prompt = every turn before the last assistant turn, response = the last assistant turn (turns
  after it are ignored and counted). An optional ``answer``/``reference`` field is the reference.

Records without a reference answer (2 MATH train records end in an empty ``\boxed{}``) follow
``on_missing_answer``: ``error`` (default; names them) or ``drop`` (counted, logged and listed in
``stats[split].missing_answer``). A malformed JSONL line is an error naming ``file:line``.

Templates (``template=``): ``chat`` renders the prompt turns with the tokenizer's chat template
(``add_generation_prompt=True``) and the response as the rest of the templated conversation
(``apply_chat_template(prompt + [assistant])`` minus the prompt text, so the template's
end-of-turn markup is part of the response); ``plain`` renders ``Question: {q}\nAnswer:`` and the
response as ``" {response}"`` (a system turn is a first paragraph; few-shot exemplars are
``Question: …\nAnswer: …`` paragraphs), with the tokenizer's BOS prepended when it has one that
differs from EOS; ``auto`` (default) = ``chat`` when the tokenizer has a chat template.

Tokenisation: prompt ids = ``tokenize(prompt_text)``, exactly the ids a generation prompt gets;
response ids = ``tokenize(prompt_text + response_text)`` after those prompt ids (the response is
tokenised in context, which matters for SentencePiece-style tokenizers; if the prompt ids are not a
prefix of the joint ids the response is tokenised on its own), then one EOS is appended unless the
template already ends the response with EOS.

Training-format batches (train and val loaders; :class:`SFTCollator`)::

    input_ids       LongTensor [B, L]   prompt + response + EOS, padded with EOS
    maskable        BoolTensor [B, L]   True exactly on response tokens, the final EOS and supervised padding
    attention_mask  BoolTensor [B, L]   True on prompt, response, EOS and supervised padding
    prompt_length   LongTensor [B]      number of prompt tokens (positions [0, prompt_length))
    index           LongTensor [B]      global sample index: 0-based record number in its split's source

Padding uses the EOS id (LLaDA pads responses with EOS and trains on them, so the model learns to
end an answer and fill the rest with EOS). Since padding and the real EOS share an id, the
explicit ``maskable``/``attention_mask`` tensors are the only way to tell them apart. With
``supervise_padding=True`` (LLaDA) padding is maskable and attended; with False it is neither.
``pad_to="max_length"`` pads every row to ``max_length``; ``pad_to="batch"`` to the longest row of
the batch — then the number of supervised EOS tokens of a sample (and so its
``per_sequence`` normalisation ``|maskable_b|``) depends on which samples share its batch.

Samples longer than ``max_length`` follow ``on_overflow``: ``error`` (default), ``drop`` or
``truncate_response`` (the sequence is cut at ``max_length``, so it loses its final EOS: the
answer does not end there). A prompt of ``max_length`` tokens or more is always an error naming
the record. Counts are logged and kept in :attr:`SFTDataModule.stats`.

Generation batches (test and predict loaders; :class:`PromptCollator`)::

    prompt_input_ids       LongTensor [B, P]  LEFT-padded with EOS (the optional few-shot prefix included)
    prompt_attention_mask  BoolTensor [B, P]  True on real prompt tokens
    index                  LongTensor [B]     record number in the test source
    reference              list[str | None]   reference answers (GSM8K number, MATH answer string)
    group                  list[str]          e.g. "Level 3" (MATH), "all" (GSM8K)
    prompt_text            list[str]          the templated prompt text (without a plain-template BOS)
    dataset                list[str]          "gsm8k" | "math" | "chat" (the answer checker of mdlm.answers)

``num_shots > 0`` prefixes every evaluation prompt with the first ``num_shots`` usable records of
the train split (deterministic), as earlier user/assistant turns of the conversation.

Modules: :mod:`~mdlm.data.sft.records` (reading, :class:`SFTRecord`, :class:`SplitStats`), one
adapter per source (:mod:`~mdlm.data.sft.gsm8k`, :mod:`~mdlm.data.sft.math_dataset`,
:mod:`~mdlm.data.sft.chat`; :mod:`~mdlm.data.sft.adapters` holds :func:`read_records`),
:mod:`~mdlm.data.sft.rendering` (templates, tokenisation), :mod:`~mdlm.data.sft.collate` (datasets,
collators) and :mod:`~mdlm.data.sft.module` (the data modules). Every public name is importable
from ``mdlm.data.sft``, which is also the ``class_path`` the configs use
(``mdlm.data.sft.SFTDataModule``).
"""

from mdlm.data.sft.adapters import ADAPTERS, read_records
from mdlm.data.sft.collate import PromptCollator, PromptDataset, SFTCollator, SFTDataset
from mdlm.data.sft.module import GSM8KDataModule, MATHDataModule, SFTDataModule
from mdlm.data.sft.records import (
    DATASETS,
    GROUP_BY,
    ON_MISSING_ANSWER,
    ON_OVERFLOW,
    PAD_TO,
    SPLITS,
    TEMPLATES,
    DatasetName,
    SFTDataError,
    SFTRecord,
    SplitStats,
    iter_raw_records,
    load_hf_rows,
)
from mdlm.data.sft.rendering import Tokenized, render_prompt, tokenize_records

__all__ = [
    "ADAPTERS",
    "DATASETS",
    "GROUP_BY",
    "ON_MISSING_ANSWER",
    "ON_OVERFLOW",
    "PAD_TO",
    "SPLITS",
    "TEMPLATES",
    "DatasetName",
    "GSM8KDataModule",
    "MATHDataModule",
    "PromptCollator",
    "PromptDataset",
    "SFTCollator",
    "SFTDataError",
    "SFTDataModule",
    "SFTDataset",
    "SFTRecord",
    "SplitStats",
    "Tokenized",
    "iter_raw_records",
    "load_hf_rows",
    "read_records",
    "render_prompt",
    "tokenize_records",
]
