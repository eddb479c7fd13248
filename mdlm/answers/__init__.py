"""Answer extraction and checking for GSM8K and MATH (SFT evaluation).

* :mod:`mdlm.answers.gsm8k`: GSM8K numbers (``#### <number>`` references, the last number of a
  generation, exact ``Decimal`` comparison).
* :mod:`mdlm.answers.math_latex`: MATH ``\\boxed{}`` extraction, reference answers and the string
  normalisation of LaTeX answers.
* :mod:`mdlm.answers.equivalence`: MATH equivalence (string, ``math_verify`` and sympy routes) under
  a per-item time budget.
* :mod:`mdlm.answers.metric`: the dataset dispatchers :func:`extract_answer` / :func:`is_correct`
  and the :class:`AnswerAccuracy` metric.

Every public name is re-exported here (``mdlm.answers.AnswerAccuracy`` and ``from mdlm.answers import
is_correct`` keep working). To monkeypatch a function, patch it in the submodule that looks it up
(e.g. ``mdlm.answers.equivalence._math_verify_equal``), not here.
"""

from __future__ import annotations

from mdlm.answers.equivalence import AnswerTimeout, math_is_equivalent, math_verify_available, run_with_timeout
from mdlm.answers.gsm8k import gsm8k_is_correct, gsm8k_predicted_answer, gsm8k_reference_answer, normalize_number
from mdlm.answers.math_latex import last_boxed, math_reference_answer, normalize_math_answer
from mdlm.answers.metric import DATASETS, AnswerAccuracy, Dataset, extract_answer, is_correct

__all__ = [
    "DATASETS",
    "AnswerAccuracy",
    "AnswerTimeout",
    "Dataset",
    "extract_answer",
    "gsm8k_is_correct",
    "gsm8k_predicted_answer",
    "gsm8k_reference_answer",
    "is_correct",
    "last_boxed",
    "math_is_equivalent",
    "math_reference_answer",
    "math_verify_available",
    "normalize_math_answer",
    "normalize_number",
    "run_with_timeout",
]
