"""MATH answers as LaTeX: ``\\boxed{}`` extraction, the reference answer, string normalisation.

The reference is the record's ``answer`` field (MATH-500) or the last ``\\boxed{...}`` of its
``solution`` (MATH). A prediction is the last ``\\boxed{...}``/``\\fbox{...}`` of the generation.
:func:`normalize_math_answer` is the cheap string route of
:func:`mdlm.answers.equivalence.math_is_equivalent`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from mdlm.answers.gsm8k import _THOUSANDS

__all__ = ["last_boxed", "math_reference_answer", "normalize_math_answer"]

# --------------------------------------------------------------------------- #
# Extraction
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
# String normalisation
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
