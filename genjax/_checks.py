"""Host-side checks of options and values, with one message format everywhere.

Every check raises ``ValueError("<name> must <requirement>; got <value>")`` before any compute, naming the option
(a keyword, a field of a config, a CLI flag) as the caller passes it in ``name``. Choices come from the
``Literal`` types of :mod:`genjax._typing` (:func:`choices`), so a string option is declared once, in its type.
"""

from __future__ import annotations

import math
import numbers
import typing
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["choices", "check_choice", "check_range", "check_int", "first_true", "as_list"]


def choices(literal: Any) -> tuple:
    """The allowed values of a ``Literal[...]`` type (or of an iterable of values), as a tuple."""
    args = typing.get_args(literal)
    return tuple(args) if args else tuple(literal)


def check_choice(name: str, value: Any, allowed: Any) -> Any:
    """``value`` if it is one of ``allowed`` (a ``Literal`` type or an iterable).

    Raises:
        ValueError: ``"<name> must be one of (...); got <value!r>"``.
    """
    options = choices(allowed)
    if isinstance(value, bool) or not any(value == option for option in options if not isinstance(option, bool)):
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return value


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_range(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if it is a finite real number inside the interval (``low`` / ``high`` ``None``: no bound;
    ``*_open``: the bound is excluded).

    Raises:
        ValueError: ``"<name> must be in [low, high); got <value!r>"`` (or ``> low`` / ``>= low`` / ...), also for
            NaN, infinities, booleans and non-numbers.
    """
    ok = isinstance(value, numbers.Real | np.number) and not isinstance(value, bool | np.bool_)
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name} must be {_interval(low, high, low_open, high_open)}; got {value!r}")
    return v


def check_int(name: str, value: Any, *, low: int | None = 1, high: int | None = None) -> int:
    """``int(value)`` if ``value`` is a whole number (a Python / numpy integer, or a float such as ``4.0``; ``2.7``
    is refused rather than truncated) in ``[low, high]`` (``None``: no bound).

    Raises:
        ValueError: ``"<name> must be an integer >= <low>; got <value!r>"``.
    """
    ok = isinstance(value, numbers.Real | np.number) and not isinstance(value, bool | np.bool_)
    ok = ok and math.isfinite(float(value)) and float(value).is_integer()
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bound = "" if low is None and high is None else " " + _interval(low, high, False, False)
        raise ValueError(f"{name} must be an integer{bound}; got {value!r}")
    return int(value)


def first_true(mask: np.ndarray) -> tuple[int, ...] | None:
    """Index (a tuple, one entry per axis) of the first ``True`` of ``mask`` in C order, or ``None``."""
    mask = np.asarray(mask)
    if not mask.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def as_list(value: str | Iterable[str] | None) -> list[str]:
    """A list of keys from ``None`` (empty), one string, or an iterable of strings."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
