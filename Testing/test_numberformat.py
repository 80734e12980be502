"""The one number check and formatter (SinusAnomalyLib.numberformat) that bundle.json, result.json
and the reports share."""
from __future__ import annotations

import numpy as np

from SinusAnomalyLib.numberformat import format_number, is_finite_number


def test_finite_numbers_are_reals_not_bools_strings_nan_or_infinities():
    for value in (0, 3, -2.5, np.float32(0.5), np.int64(7)):
        assert is_finite_number(value), value
    for value in (True, None, "0.5", float("nan"), float("inf"), np.float64("-inf"), 10**400, [1.0]):
        assert not is_finite_number(value), value


def test_numbers_are_written_with_fixed_decimals_or_a_placeholder():
    assert format_number(0.93, 3) == "0.930" and format_number(np.float32(41.6), 0) == "42"
    assert format_number(None, 2) == "-" and format_number(float("nan"), 2) == "-"
    assert format_number(None, 2, missing="") == "" and format_number(float("inf"), 1, missing="n/a") == "n/a"
