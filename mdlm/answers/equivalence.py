"""MATH answer equivalence: string, ``math_verify`` and exact numeric routes, under a time budget.

:func:`math_is_equivalent` accepts a pair if any of these routes accepts it:

1. the cheap string route: equal :func:`~mdlm.answers.math_latex.normalize_math_answer` forms;
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
import re
import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar

from mdlm.answers.math_latex import normalize_math_answer

__all__ = ["AnswerTimeout", "math_is_equivalent", "math_verify_available", "run_with_timeout"]

T = TypeVar("T")

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
