"""GSM8K answers: number normalisation, reference and predicted numbers, exact checking.

References end with ``#### <number>``. A prediction is the number after the last ``####`` of the
generation if there is one, else the last number in the text. Numbers are compared exactly
(``Decimal``) after :func:`normalize_number`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["gsm8k_is_correct", "gsm8k_predicted_answer", "gsm8k_reference_answer", "normalize_number"]

# A number as written in a generation: optional sign (not a binary minus, so the
# sign must not follow a word character), optional "$", digits with valid
# thousands separators or plain digits, optional decimals, optional "%".
_GSM_NUMBER = re.compile(
    r"(?<![\w.)])[-+\u2212]?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?"
    r"|(?<![\w.)])[-+\u2212]?\$?\.\d+%?"
)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def normalize_number(s: str) -> str:
    """Canonical text of a number, e.g. ``"$1,000.50" -> "1000.5"``, ``"-3.0" -> "-3"``.

    Strips surrounding whitespace, ``$`` signs, a leading ``+``, one trailing
    ``.``, thousands separators (only in valid 3-digit groups), and trailing
    zeros after the decimal point. A trailing ``%`` is *dropped without scaling*
    (``"25%" -> "25"``), which is how GSM8K writes answers to percent questions.
    The Unicode minus ``\u2212`` is read as ``-``. The result is idempotent:
    ``normalize_number(normalize_number(x)) == normalize_number(x)``.

    Raises:
        ValueError: if ``s`` is not a number in one of those forms (the message
            names the value), e.g. ``"1,2"`` (bad grouping) or ``"12 apples"``.
    """
    t = str(s).strip().replace("\u2212", "-").replace("$", "")
    t = re.sub(r"\s+", "", t)
    if t.endswith("%"):
        t = t[:-1]
    if t.endswith(".") and not t.endswith(".."):
        t = t[:-1]
    if "," in t:
        if not _THOUSANDS.fullmatch(t):
            raise ValueError(
                f"not a number: {s!r} (commas are only accepted as thousands separators, e.g. '1,234.5')"
            )
        t = t.replace(",", "")
    if not _PLAIN_NUMBER.fullmatch(t):
        raise ValueError(
            f"not a number: {s!r} (expected digits with optional sign, '$', thousands commas, "
            "decimals and '%', e.g. '-$1,234.50')"
        )
    d = Decimal(t)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def gsm8k_reference_answer(answer_text: str) -> str:
    """The number after the last ``####`` of a GSM8K ``answer`` field, as written."""
    text = str(answer_text)
    if "####" not in text:
        raise ValueError(
            f"GSM8K reference has no '#### <number>' line: {text[-200:]!r} "
            "(pass the record's 'answer' field, which ends with '\\n#### <number>')"
        )
    tail = text.rsplit("####", 1)[1].strip()
    if not tail:
        raise ValueError(f"GSM8K reference has nothing after '####': {text[-200:]!r}")
    return tail


def _clean_number_match(m: str) -> str:
    return m.replace("\u2212", "-").replace(" ", "")


def gsm8k_predicted_answer(generation: str) -> str | None:
    """Predicted number of a GSM8K generation, as written (e.g. ``"$1,000"``).

    The first number after the last ``####`` if the generation has one (and a
    number follows it), else the last number anywhere in the text; ``None`` when there is no number. A ``-``
    directly after a word character or ``)`` (``3-5``) is read as subtraction,
    not as a sign. Pass the result through :func:`normalize_number` to compare.
    """
    text = str(generation)
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        m = _GSM_NUMBER.search(tail)
        if m:
            return _clean_number_match(m.group(0))
    matches = _GSM_NUMBER.findall(text)
    return _clean_number_match(matches[-1]) if matches else None


def _gsm8k_reference_number(reference: str) -> str:
    text = str(reference)
    if "####" in text:
        return gsm8k_reference_answer(text)
    try:
        normalize_number(text)
    except ValueError:
        gsm8k_reference_answer(text)  # raises the error that names the record
    return text.strip()


def gsm8k_is_correct(generation: str, reference_answer_text: str) -> bool:
    """Whether a GSM8K generation's number equals the reference number exactly.

    ``reference_answer_text`` is the record's ``answer`` field (``... #### 72``)
    or a bare number. Comparison is exact on ``Decimal`` values after
    :func:`normalize_number`; an unparseable or missing prediction is wrong.
    """
    ref = Decimal(normalize_number(_gsm8k_reference_number(reference_answer_text)))
    pred = gsm8k_predicted_answer(generation)
    if pred is None:
        return False
    try:
        return Decimal(normalize_number(pred)) == ref
    except (ValueError, InvalidOperation):
        return False
