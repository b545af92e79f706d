"""Numbers from untrusted text (SPEC 9): ASCII digits only, bounded length, None instead of an exception.

`str.isdigit()` and `int()` accept far more than an HTTP grammar does: `"²".isdigit()` is true but
`int("²")` raises, `int()` takes any Unicode decimal digit (`"٣"`), `_` separators and surrounding
spaces, and from Python 3.11 raises on more than 4,300 digits. Every number a client, a UI or the
environment gives goes through here instead.
"""

from __future__ import annotations

import re

__all__ = ("MAX_DIGITS", "ascii_decimal", "ascii_int", "ascii_uint")

MAX_DIGITS = 40  # far above any size, version or date in seconds; far below int()'s 4,300-digit limit

_UINT = re.compile(r"[0-9]+", re.ASCII)
_INT = re.compile(r"-?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)


def ascii_uint(value: str | None, max_digits: int = MAX_DIGITS) -> int | None:
    """`1*DIGIT` (RFC 5234 DIGIT: 0-9 only) as an int; None when absent, malformed or too long."""
    if value is None or len(value) > max_digits or _UINT.fullmatch(value) is None:
        return None
    return int(value)


def ascii_int(value: str | None, max_digits: int = MAX_DIGITS) -> int | None:
    """An optional `-` then ASCII digits; None when absent, malformed or too long."""
    if value is None or len(value) > max_digits + 1 or _INT.fullmatch(value) is None:
        return None
    return int(value)


def ascii_decimal(value: str | None, max_digits: int = MAX_DIGITS) -> float | None:
    """A plain decimal (`5`, `0.25`, `-1`): no exponent, no `nan`/`inf`, no `_`, ASCII only."""
    if value is None or len(value) > max_digits + 2 or _DECIMAL.fullmatch(value) is None:
        return None
    return float(value)
