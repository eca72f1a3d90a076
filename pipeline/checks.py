"""The checks of settings that features, augmentation and the demo synthesiser share.

Each raises ``ValueError`` naming the setting and the value it got; a command line
turns that into a message naming its flag. A bool is never taken for a number
(``True`` is an ``int`` to Python, never to a user).

>>> check_int("n_mels", 64, minimum=1)
64
>>> parse_names("mel, mfcc", choices=("mel", "mfcc", "cqt"), what="feature")
['mel', 'mfcc']
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Iterable, Sequence


def is_int(value) -> bool:
    """True for an integer that is not a bool.

    >>> is_int(3), is_int(3.0), is_int(True)
    (True, False, False)
    """
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """True for a finite real number that is not a bool.

    >>> is_real(0.5), is_real(float("nan")), is_real(False)
    (True, False, False)
    """
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(setting: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int of at least ``minimum``, or a ValueError naming ``setting``.

    >>> check_int("hop_length", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: hop_length must be >= 1, got 0
    """
    if not is_int(value):
        raise ValueError(f"{setting} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{setting} must be >= {minimum}, got {value}")
    return int(value)


def check_number(setting: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` if ``low_open``).

    Either bound may be None (no bound).

    >>> check_number("p", 1.5, low=0.0, high=1.0)
    Traceback (most recent call last):
    ...
    ValueError: p must be in [0.0, 1.0], got 1.5
    >>> check_number("fmin", 0.0, low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: fmin must be > 0.0, got 0.0
    """
    if not is_real(value):
        raise ValueError(f"{setting} must be a finite number, got {value!r}")
    too_low = low is not None and (value < low or (low_open and value == low))
    too_high = high is not None and value > high
    if too_low or too_high:
        if low is not None and high is not None:
            bounds = f"in {'(' if low_open else '['}{low}, {high}]"
        elif low is not None:
            bounds = f"{'>' if low_open else '>='} {low}"
        else:
            bounds = f"<= {high}"
        raise ValueError(f"{setting} must be {bounds}, got {value}")
    return float(value)


def parse_names(text: str, *, choices: Sequence[str], what: str) -> list[str]:
    """Split a comma-separated list of names of ``what`` (e.g. "feature") from ``choices``.

    Spaces around names are ignored; an empty list, an empty name (a stray comma), an
    unknown name and a repeated name are refused.

    >>> parse_names("pitch,,gain", choices=("pitch", "gain"), what="effect")
    Traceback (most recent call last):
    ...
    ValueError: empty effect name in 'pitch,,gain'; remove the stray comma
    """
    names = [part.strip() for part in str(text).split(",")]
    if not any(names):
        raise ValueError(f"no {what} names in {text!r}; give a comma-separated list from: {', '.join(choices)}")
    if not all(names):
        raise ValueError(f"empty {what} name in {text!r}; remove the stray comma")
    check_names(names, choices=choices, what=what)
    return names


def check_names(names: Iterable[str], *, choices: Sequence[str], what: str) -> None:
    """Refuse a name not in ``choices``, listing them, and a name given twice.

    >>> check_names(["mel", "mel"], choices=("mel",), what="feature")
    Traceback (most recent call last):
    ...
    ValueError: feature(s) mel listed more than once
    """
    names = list(names)
    for name in names:
        if name not in choices:
            raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(choices)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what}(s) {', '.join(duplicates)} listed more than once")
