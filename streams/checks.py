"""Value checks with one message shape everywhere: "<owner>.<param>=<value>: must be <what is allowed>".

The bottom of the house: families, streams, strategies, models and configs all report bad input through
these helpers, so every mistake reads the same way and suggests the nearest valid name.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

# A sanity bound on every size (vocabulary, length, count): validation builds families, and a typo such as
# n_symbols=10000000000 must be an error, not an allocation that takes the machine down.
MAX_SIZE = 2**16


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean 'X'?' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def is_number(value: Any) -> bool:
    """A finite real number (int or float, numpy scalars included; bools are not numbers)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def check_int(owner: str, param: str, value: Any, low: int, high: float = math.inf) -> int:
    bounded = min(high, MAX_SIZE)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= bounded:
        below = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value < low
        rng = f">= {low}" if high == math.inf and below else f"in [{low}, {int(bounded)}]"
        raise ValueError(f"{owner}.{param}={value!r}: must be an integer {rng}")
    return int(value)


def check_positive_floats(owner: str, param: str, value: Any, n: int) -> tuple[float, ...]:
    """A positive float, or a list of `n` positive floats; returned as a tuple of length n."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and len(values) != n:
        raise ValueError(f"{owner}.{param}={value!r}: must be a positive float or a list of {n} positive floats")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        floats = [-1.0]
    if any(isinstance(v, bool) for v in values) or not all(math.isfinite(v) and v > 0 for v in floats):
        raise ValueError(f"{owner}.{param}={value!r}: must be > 0 (a float, or a list of {n} floats)")
    return tuple(floats) * (n if len(floats) == 1 else 1)


def check_open_unit(owner: str, param: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{owner}.{param}={value!r}: must be a float in the open interval (0, 1)")
    return float(value)
