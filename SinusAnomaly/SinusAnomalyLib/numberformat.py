"""Numbers read from JSON and shown as text: one check and one formatter for every reader.

:func:`is_finite_number` is what ``bundle.json`` and ``result.json`` mean by "a number": a real,
finite one (not a bool, None, NaN, an infinity or a string). :func:`format_number` writes one with
fixed decimals, or a placeholder where there is none (a side that was not assessable, an undefined
metric). Plain Python: the Slicer module uses both before torch is installed.
"""
from __future__ import annotations

import math
import numbers


def is_finite_number(value) -> bool:
    """Whether ``value`` is a real, finite number (numpy's included; a bool is not one)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def format_number(value, digits: int, missing: str = "-") -> str:
    """``value`` with ``digits`` decimals, or ``missing`` where it is no finite number."""
    return f"{float(value):.{digits}f}" if is_finite_number(value) else missing
