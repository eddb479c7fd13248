"""Answer extraction and checking for GSM8K and MATH (SFT evaluation).

GSM8K
    References end with ``#### <number>``. A prediction is the number after the
    last ``####`` of the generation if there is one, else the last number in the
    text. Numbers are compared exactly (``Decimal``) after :func:`normalize_number`.

MATH
    The reference is the record's ``answer`` field (MATH-500) or the last
    ``\\boxed{...}`` of its ``solution`` (MATH). A prediction is the last
    ``\\boxed{...}``/``\\fbox{...}`` of the generation. :func:`math_is_equivalent`
    accepts a pair if any of these routes accepts it:

    1. the cheap string route: equal :func:`normalize_math_answer` forms;
    2. Hugging Face ``math_verify`` (``parse`` + ``verify``), imported lazily and
       skipped when it is not installed;
    3. an exact numeric comparison of simple closed forms (integers, decimals,
       fractions, mixed numbers, ``\\sqrt``, ``\\pi``) with sympy.

    Numbers written in another base (``52_8``) are compared by route 1 only,
    because ``math_verify`` drops the subscript (it would accept ``52_8 == 52``).

Timeouts
    ``math_verify`` implements its own timeouts with ``signal.alarm``, which only
    works in the main thread (elsewhere it raises ``ValueError``) and only with
    whole seconds. This module therefore always calls it with its timeouts
    disabled (``parsing_timeout=None``, ``timeout_seconds=None``) and applies one
    per-item budget, ``timeout_s``, around the whole check instead:

    * in the main thread of a POSIX process, with ``signal.setitimer`` (float
      seconds; an outer ``ITIMER_REAL`` timer is restored afterwards);
    * elsewhere (worker threads, Windows), by running the check in a daemon
      thread and giving up after ``timeout_s``; the abandoned check finishes in
      the background because Python threads cannot be killed.

    A timed-out item counts as *not equivalent*. Work that never returns to the
    interpreter (one huge C-level integer power, say) cannot be interrupted by
    either mechanism; ``timeout_s=None`` disables the budget.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal, TypeVar

import torch
from torchmetrics import Metric

__all__ = [
    "AnswerAccuracy",
    "AnswerTimeout",
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

Dataset = Literal["gsm8k", "math"]
DATASETS: tuple[str, ...] = ("gsm8k", "math")
T = TypeVar("T")

# --------------------------------------------------------------------------- #
# GSM8K
# --------------------------------------------------------------------------- #

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


# --------------------------------------------------------------------------- #
# MATH: extraction
# --------------------------------------------------------------------------- #

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _match_brace(s: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start``; escaped braces are skipped."""
    depth = 0
    i = start
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``).

    Nested braces are matched and escaped braces (``\\{``) are ignored, so
    ``\\boxed{\\{1,\\frac{1}{2}\\}}`` gives ``\\{1,\\frac{1}{2}\\}``. The brace-less
    form ``\\boxed 5`` gives the token up to the next whitespace or ``$``.
    Returns ``None`` when there is no box or the last one is never closed
    (a truncated generation); an earlier box is then *not* used.
    """
    text = str(text)
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    i = m.end()
    j = i
    while j < len(text) and text[j] in " \t\n":
        j += 1
    if j < len(text) and text[j] == "{":
        end = _match_brace(text, j)
        if end is None:
            return None
        return text[j + 1 : end]
    if j > i:  # "\boxed 5": the next token
        tok = re.match(r"[^\s$]+", text[j:])
        return tok.group(0) if tok else None
    return None


_MINERVA_RE = re.compile(
    r"final answer is\s*:?\s*\$?(?P<ans>.+?)\$?\s*\.?\s*I hope it is correct", re.IGNORECASE | re.DOTALL
)


def math_reference_answer(record: Mapping[str, Any]) -> str:
    """Reference answer of a MATH record: its ``answer`` field, else the last box of ``solution``."""
    answer = record.get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    solution = record.get("solution")
    if isinstance(solution, str):
        boxed = last_boxed(solution)
        if boxed is not None and boxed.strip():
            return boxed.strip()
    uid = record.get("unique_id", "<no unique_id>")
    raise ValueError(
        f"MATH record {uid!r} has no answer: expected a non-empty 'answer' field or a 'solution' "
        f"containing \\boxed{{...}}; got keys {sorted(record)}"
    )


# --------------------------------------------------------------------------- #
# MATH: string normalisation
# --------------------------------------------------------------------------- #

# Words dropped after a number (or as a whole \text{} group). Multi-word entries first.
_UNIT_WORDS = (
    "square units", "sq units", "square feet", "square inches", "square meters", "square centimeters",
    "square cm", "square yards", "square miles", "cubic units", "cubic feet", "cubic inches",
    "cubic centimeters", "cubic meters",
    "units", "unit", "degrees", "degree", "cents", "cent", "dollars", "dollar",
    "centimeters", "centimeter", "cm", "millimeters", "millimeter", "mm", "meters", "meter",
    "metres", "metre", "m", "kilometers", "kilometer", "km", "inches", "inch", "in", "feet",
    "foot", "ft", "yards", "yard", "yd", "miles", "mile", "mi", "mph", "seconds", "second",
    "sec", "s", "minutes", "minute", "min", "hours", "hour", "hr", "hrs", "days", "day",
    "weeks", "week", "years", "year", "pounds", "pound", "lbs", "lb", "ounces", "ounce", "oz",
    "grams", "gram", "g", "kilograms", "kg", "liters", "liter", "litres", "mL", "ml", "L",
    "gallons", "gallon", "cups", "cup", "ways", "people", "students", "points", "calories",
    "percent", "sq", "square", "cubic",
)
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNIT_WORDS, key=len, reverse=True))
_UNIT_ONLY = re.compile(rf"\s*(?:(?:{_UNIT_ALT})\s*)+\.?")
_POWER = r"(?:\^\{?[23]\}?)?"
# "<number-ish> <unit words>": the unit needs whitespace before it unless it is 2+ letters.
_TRAILING_UNIT = re.compile(rf"^(?P<v>.*[\d}}])(?:\s+|(?=[a-zA-Z]{{2}}))(?:{_UNIT_ALT})(?:\s+(?:{_UNIT_ALT}))*{_POWER}\.?$")
_TEXT_MACROS = ("text", "mbox", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "textnormal", "operatorname")
_SPACING = re.compile(r"(\\\\)|\\[,!;:> ]|\\q?quad(?![a-zA-Z])|~|\\displaystyle|\\textstyle")


def _replace_macro(s: str, macro: str, fn: Callable[[str, str], str]) -> str:
    """Replace every ``\\macro{arg}`` (with the text after it) using ``fn(arg, rest) -> new``."""
    pat = re.compile(rf"\\{macro}(?![a-zA-Z])\s*\{{")
    out = s
    pos = 0
    while True:
        m = pat.search(out, pos)
        if not m:
            return out
        end = _match_brace(out, m.end() - 1)
        if end is None:
            return out
        new = fn(out[m.end() : end], out[end + 1 :])
        out = out[: m.start()] + new
        pos = m.start()


def _unwrap_text(arg: str, rest: str) -> str:
    if _UNIT_ONLY.fullmatch(arg) and arg.strip():
        return re.sub(rf"^{_POWER}", "", rest, count=1)  # drop the unit (and a ^2 after it)
    return arg + rest


def _read_arg(s: str, i: int) -> tuple[str, int] | None:
    """Read one TeX argument at ``s[i:]``: ``{...}``, ``\\command`` or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] == "{":
        end = _match_brace(s, i)
        if end is None:
            return None
        return s[i + 1 : end], end + 1
    if s[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    if s[i] in "}^_":
        return None
    return s[i], i + 1


def _brace_args(s: str, macro: str, nargs: int) -> str:
    """Rewrite ``\\frac12``/``\\frac 34``/``\\frac9{19}`` as ``\\frac{1}{2}`` (same for ``\\sqrt``)."""
    pat = re.compile(rf"\\{macro}(?![a-zA-Z])")
    out, pos = s, 0
    while True:
        m = pat.search(out, pos)
        if not m:
            return out
        i = m.end()
        if macro == "sqrt" and out[i : i + 1] == "[":  # \sqrt[n]{x}: leave alone
            pos = i
            continue
        args = []
        for _ in range(nargs):
            r = _read_arg(out, i)
            if r is None:
                break
            args.append(r[0])
            i = r[1]
        if len(args) < nargs:
            pos = m.end()
            continue
        new = f"\\{macro}" + "".join("{" + a + "}" for a in args)
        out = out[: m.start()] + new + out[i:]
        pos = m.start() + len(f"\\{macro}")


def _strip_outer_braces(s: str) -> str:
    while s.startswith("{") and _match_brace(s, 0) == len(s) - 1:
        s = s[1:-1]
    return s


def normalize_math_answer(s: str) -> str:
    """Cheap canonical string of a MATH answer (the string route of :func:`math_is_equivalent`).

    Removes: a whole-string ``\\boxed{}``/``\\fbox{}``, ``$``/``\\$``, ``\\left``/``\\right``,
    spacing (``\\!`` ``\\,`` ``\\;`` ``\\:`` ``\\ `` ``~`` ``\\quad``), ``\\displaystyle``,
    degrees (``^\\circ``, ``^{\\circ}``, ``\\degree``, ``°``), percent signs (``\\%``,
    ``%``; no scaling), units (a ``\\text{}``/``\\mbox{}`` group of unit words, or unit
    words after a number, with an optional ``^2``/``^3``), ``{,}`` thousands marks,
    all whitespace, one trailing ``.``, and a single-variable prefix (``x=5`` and
    ``x\\in[0,1]`` keep only the right-hand side). Unwraps other ``\\text{}``-like
    groups, ``\\dfrac``/``\\tfrac``/``\\cfrac`` become ``\\frac`` and shorthand
    ``\\frac12``/``\\sqrt2`` gain braces; ``a/b`` integers become ``\\frac{a}{b}``;
    ``(C)`` becomes ``C``; thousands commas in a lone number, a leading ``+``,
    trailing decimal zeros and a missing leading ``0`` (``.5``) are normalised.
    Base subscripts are written ``_8`` (``_{8}`` loses its braces).
    """
    t = str(s).strip()
    if _BOX_RE.match(t):
        inner = last_boxed(t)
        if inner is not None and t.rstrip().endswith("}"):
            t = inner
    t = t.replace("\n", " ")
    t = t.replace("\\$", "").replace("$", "")
    t = _SPACING.sub(lambda g: g.group(1) or " ", t)  # keep the TeX row break (two backslashes)
    t = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])\.?", "", t)
    t = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", t)
    t = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])|°", "", t)
    t = t.replace("\\%", "").replace("%", "")
    t = t.replace("{,}", "")
    for macro in _TEXT_MACROS:
        t = _replace_macro(t, macro, _unwrap_text)
    t = t.strip()
    m = _TRAILING_UNIT.match(t)
    if m:
        t = m.group("v")
    t = _brace_args(t, "frac", 2)
    t = _brace_args(t, "sqrt", 1)
    t = re.sub(r"\s+", "", t)
    if t.endswith(".") and not t.endswith(".."):
        t = t[:-1]
    m = re.fullmatch(r"([a-zA-Z]|\\[a-zA-Z]+)(?:=|\\in)(.+)", t)
    if m and "=" not in m.group(2):
        t = m.group(2)
    t = _strip_outer_braces(t)
    if t.startswith("+"):
        t = t[1:]
    if _THOUSANDS.fullmatch(t):
        t = t.replace(",", "")
    t = re.sub(r"_\{(\d+)\}", r"_\1", t)
    t = re.sub(r"(?<![\d}.])\.(\d)", r"0.\1", t)
    t = re.sub(r"(?<![\d.])(\d+)\.(\d*?)0+(?![\d.])", lambda g: g.group(1) + ("." + g.group(2) if g.group(2) else ""), t)
    t = re.sub(r"(?<![\d.])(\d+)\.(?![\d.])", r"\1", t)  # "5." inside tuples
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", t)
    if m:
        t = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.fullmatch(r"\(([A-Za-z])\)", t)
    if m:
        t = m.group(1)
    return t


# --------------------------------------------------------------------------- #
# Timeouts
# --------------------------------------------------------------------------- #


class AnswerTimeout(BaseException):
    """Raised inside a check that ran past its budget (a ``BaseException`` so that
    libraries catching ``Exception`` do not swallow it)."""


def run_with_timeout(fn: Callable[[], T], timeout_s: float | None) -> T:
    """Run ``fn()`` with a wall-clock budget; raise :class:`AnswerTimeout` past it.

    Main thread on POSIX: ``signal.setitimer`` (restoring any outer timer and
    handler). Elsewhere: ``fn`` runs in a daemon thread that is abandoned on
    timeout. ``timeout_s=None`` or ``<= 0`` runs ``fn`` with no budget.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn()
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _timeout_with_signal(fn, float(timeout_s))
    return _timeout_with_thread(fn, float(timeout_s))


def _timeout_with_signal(fn: Callable[[], T], timeout_s: float) -> T:
    def handler(signum: int, frame: Any) -> None:
        raise AnswerTimeout(f"answer check ran past {timeout_s} s")

    old_handler = signal.signal(signal.SIGALRM, handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    start = time.monotonic()
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # getsignal()/signal() return None for a handler not installed from Python
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # give an outer timer back what is left of it
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _timeout_with_thread(fn: Callable[[], T], timeout_s: float) -> T:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    worker = threading.Thread(target=target, name="mdlm-answer-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise AnswerTimeout(f"answer check ran past {timeout_s} s (left running in a daemon thread)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------- #
# MATH: equivalence
# --------------------------------------------------------------------------- #

_MV: Any = None  # (parse, verify) once imported, False when unavailable


class _DropDisabledTimeoutWarning(logging.Filter):
    """math_verify warns once that its timeouts are off; this module supplies its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


def _load_math_verify() -> Any:
    global _MV
    if _MV is None:
        try:
            from math_verify import parse, verify
        except ImportError:
            _MV = False
        else:
            for name in ("math_verify.parser", "math_verify.grader"):
                logging.getLogger(name).addFilter(_DropDisabledTimeoutWarning())
            _MV = (parse, verify)
    return _MV


def math_verify_available() -> bool:
    """Whether Hugging Face ``math_verify`` can be imported (it is imported lazily)."""
    return bool(_load_math_verify())


_BASE_SUBSCRIPT = re.compile(r"\d_\{?\d+\}?")


def _math_verify_equal(prediction: str, reference: str) -> bool:
    parse, verify = _load_math_verify()
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
    pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=None)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


_SIMPLE_RATIONAL = re.compile(r"(-?)(?:(\d+(?:\.\d+)?)|\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+)|(\d+)\\frac\{(\d+)\}\{(\d+)\})")


def _simple_rational(t: str) -> Fraction | None:
    m = _SIMPLE_RATIONAL.fullmatch(t)
    if not m:
        return None
    sign, dec, fn, fd, sn, sd, mi, mn, md = m.groups()
    if dec is not None:
        v = Fraction(Decimal(dec))
    elif fn is not None:
        v = Fraction(int(fn), int(fd)) if int(fd) else None
    elif sn is not None:
        v = Fraction(int(sn), int(sd)) if int(sd) else None
    else:
        v = int(mi) + Fraction(int(mn), int(md)) if int(md) else None
    if v is None:
        return None
    return -v if sign else v


def _simple_sympy(t: str) -> Any:
    """Sympy value of a normalised closed form built from numbers, +-*/, ^, \\frac, \\sqrt, \\pi."""
    # only small literal exponents, no towers (2^10^10 would hang in C, past any timeout)
    if re.search(r"\^\{?-?\d{3,}|\^[^{\d-]|\^\{[^}]*[^\d}-]|\^\{?-?\d+\}?\^", t):
        return None
    e = t
    for _ in range(20):
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", e)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == e:
            break
        e = new
    e = e.replace("\\pi", "pi").replace("\\cdot", "*").replace("\\times", "*")
    e = e.replace("{", "(").replace("}", ")").replace("^", "**")
    if not re.fullmatch(r"(?:[0-9+\-*/(). ]|sqrt|pi)+", e) or not re.search(r"\d|pi", e):
        return None
    e = re.sub(r"(?<=[\d)i])(?=[(sp])", "*", e)  # implicit multiplication: 3sqrt(2), 2pi, )(
    import sympy
    from sympy.parsing.sympy_parser import parse_expr

    try:
        return parse_expr(e, local_dict={"sqrt": sympy.sqrt, "pi": sympy.pi}, evaluate=True)
    except Exception:  # noqa: BLE001 - anything unparsable is simply "not simple"
        return None


def _numeric_equal(a: str, b: str) -> bool:
    ra, rb = _simple_rational(a), _simple_rational(b)
    if ra is not None and rb is not None:
        return ra == rb
    va, vb = _simple_sympy(a), _simple_sympy(b)
    if va is None or vb is None:
        return False
    import sympy

    try:
        diff = sympy.simplify(va - vb)
        return bool(diff == 0)
    except Exception:  # noqa: BLE001
        return False


def math_is_equivalent(
    prediction: str | None,
    reference: str,
    timeout_s: float | None = 5.0,
    *,
    use_math_verify: bool | None = None,
) -> bool:
    """Whether a MATH prediction (an extracted answer, not a whole generation) equals the reference.

    Accepts if the :func:`normalize_math_answer` forms are equal, or ``math_verify``
    accepts (``verify(gold=parse(\\boxed{reference}), target=parse(\\boxed{prediction}))``),
    or both are simple closed forms with equal exact values. ``use_math_verify``:
    ``None`` uses it when importable, ``False`` never, ``True`` requires it (raises
    ``ImportError`` if missing). Note that ``math_verify`` reads percentages as
    fractions, so ``10\\%`` also equals ``0.1``. ``timeout_s`` bounds the non-string routes per item
    (see the module docstring); a timeout counts as not equivalent.
    """
    if prediction is None or reference is None:
        return False
    prediction, reference = str(prediction).strip(), str(reference).strip()
    if not prediction or not reference:
        return False
    n_pred, n_ref = normalize_math_answer(prediction), normalize_math_answer(reference)
    if n_pred and n_pred == n_ref:
        return True
    if _BASE_SUBSCRIPT.search(n_pred) or _BASE_SUBSCRIPT.search(n_ref):
        return False  # numbers in another base: exact string match only
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    elif use_math_verify and not math_verify_available():
        raise ImportError("use_math_verify=True but math_verify is not installed (pip install 'math-verify[antlr4_13_2]')")

    def check() -> bool:
        if use_math_verify and _math_verify_equal(prediction, reference):
            return True
        return _numeric_equal(n_pred, n_ref)

    try:
        return run_with_timeout(check, timeout_s)
    except AnswerTimeout:
        return False


# --------------------------------------------------------------------------- #
# Dispatchers
# --------------------------------------------------------------------------- #


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def extract_answer(generation: str, dataset: Dataset) -> str | None:
    """Answer text of a generation: GSM8K number (as written) or MATH last box.

    For MATH, if there is no box, a Minerva-style ``Final Answer: The final answer
    is X. I hope it is correct.`` is used; otherwise ``None``.
    """
    _check_dataset(dataset)
    if dataset == "gsm8k":
        return gsm8k_predicted_answer(generation)
    boxed = last_boxed(generation)
    if boxed is not None:
        return boxed.strip()
    matches = list(_MINERVA_RE.finditer(str(generation)))
    return matches[-1].group("ans").strip() if matches else None


def is_correct(
    generation: str,
    reference: str | Mapping[str, Any],
    dataset: Dataset,
    timeout_s: float | None = 5.0,
) -> bool:
    """Whether a generation answers correctly.

    ``reference``: for GSM8K the ``answer`` field (``... #### 72``), a bare number,
    or the record; for MATH the reference answer string or the record (see
    :func:`math_reference_answer`).
    """
    _check_dataset(dataset)
    if dataset == "gsm8k":
        if isinstance(reference, Mapping):
            reference = reference["answer"]
        return gsm8k_is_correct(generation, reference)
    if isinstance(reference, Mapping):
        reference = math_reference_answer(reference)
    return math_is_equivalent(extract_answer(generation, "math"), reference, timeout_s=timeout_s)


# --------------------------------------------------------------------------- #
# Metric
# --------------------------------------------------------------------------- #


class AnswerAccuracy(Metric):
    """Accuracy of checked answers, overall and per group (e.g. MATH level or subject).

    Groups are declared once, at construction: ``AnswerAccuracy(groups=["Level 1", ...])``.
    Every state is a fixed-size count tensor reduced by ``sum``, so the metric is
    exact under DDP. ``update(correct, groups=None)`` takes a list of booleans or a
    bool tensor, plus (only when groups were declared) one label per item; labels
    must be among the declared ones (compared with ``==``, so ``1`` and ``"1"``
    differ). Items updated without labels count toward the overall accuracy only.

    ``compute()`` returns ``{"accuracy": tensor, "count": tensor, "per_group":
    {str(group): tensor}}``; a group with no items has accuracy ``nan``.
    :meth:`flat` gives a ``{"accuracy": ..., "accuracy/<group>": ...}`` dict for
    ``LightningModule.log_dict``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor
    group_correct: torch.Tensor
    group_total: torch.Tensor

    def __init__(self, groups: Sequence[Hashable] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        groups = list(groups) if groups is not None else []
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups must be unique; got {groups}")
        self.groups: list[Hashable] = groups
        self._index = {g: i for i, g in enumerate(groups)}
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        n = len(groups)
        self.add_state("group_correct", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("group_total", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Sequence[bool] | torch.Tensor, groups: Sequence[Hashable] | None = None) -> None:
        c = torch.as_tensor(correct, device=self.correct.device).reshape(-1)
        if c.numel() and c.dtype != torch.bool:
            if not bool(((c == 0) | (c == 1)).all()):
                raise ValueError(f"correct must hold booleans (or 0/1); got values {c.unique().tolist()}")
        c = c.to(torch.long)
        self.correct += c.sum()
        self.total += c.numel()
        if groups is None:
            return
        if not self.groups:
            raise ValueError("group labels were given but AnswerAccuracy was built without groups=[...]")
        labels = groups.tolist() if isinstance(groups, torch.Tensor) else list(groups)
        if len(labels) != c.numel():
            raise ValueError(f"got {c.numel()} results but {len(labels)} group labels")
        try:
            idx = [self._index[g] for g in labels]
        except KeyError as e:
            raise ValueError(f"unknown group label {e.args[0]!r}; declared groups are {self.groups}") from None
        idx_t = torch.tensor(idx, dtype=torch.long, device=c.device)
        self.group_correct.index_add_(0, idx_t, c)
        self.group_total.index_add_(0, idx_t, torch.ones_like(c))

    def compute(self) -> dict[str, Any]:
        def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            return num.double() / den.double() if int(den) > 0 else torch.tensor(math.nan, dtype=torch.float64)

        return {
            "accuracy": ratio(self.correct, self.total),
            "count": self.total.clone(),
            "per_group": {str(g): ratio(self.group_correct[i], self.group_total[i]) for i, g in enumerate(self.groups)},
        }

    def flat(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``compute()`` as a flat dict: ``{prefix+"accuracy": ..., prefix+"accuracy/<group>": ...}``."""
        out = self.compute()
        flat = {f"{prefix}accuracy": out["accuracy"]}
        flat.update({f"{prefix}accuracy/{g}": v for g, v in out["per_group"].items()})
        return flat
