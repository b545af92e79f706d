"""Conditional and range requests (SPEC 5, RFC 9110 13 and 14) as one pure decision: no I/O, no aiohttp."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Literal

from sidecar.numbers import ascii_uint

__all__ = ("Decision", "Validators", "decide", "http_date", "parse_range", "strong_match", "weak_match")

Status = Literal[200, 206, 304, 412, 416]

# Longer than any real size: a longer number is not a position this server could ever serve.
_RANGE_DIGITS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Validators:
    """What a representation is compared with: its strong ETag (quoted) and its modification time."""

    etag: str
    mtime: float
    size: int

    @property
    def last_modified(self) -> int:
        """Last-Modified has one-second resolution: compare the date it announced, not the float."""
        return math.floor(self.mtime)


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """200 or 206: send bytes [start, end); 304, 412, 416: send no body."""

    status: Status
    start: int = 0
    end: int = 0


def _tags(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def weak_match(header: str, etag: str) -> bool:
    """If-None-Match: the weak comparison (RFC 9110 8.8.3.2); `*` matches any current representation."""
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in _tags(header))


def strong_match(header: str, etag: str) -> bool:
    """If-Match: the strong comparison, a weak tag never matches; `*` matches any current representation."""
    return any(tag == "*" or (tag == etag and not tag.startswith("W/")) for tag in _tags(header))


def http_date(value: str | None) -> float | None:
    """An HTTP-date as a timestamp; None when absent or not a date (such a header is ignored)."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """One byte range [start, end) from a Range header; None to ignore the header; False if unsatisfiable.

    Positions are ASCII digits only (RFC 5234 DIGIT): `bytes=²-` is a malformed header, ignored."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units are ignored; several ranges get the whole body (SPEC 5 allows 200)
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s or last_s):
        return None
    first = ascii_uint(first_s, _RANGE_DIGITS) if first_s else None
    last = ascii_uint(last_s, _RANGE_DIGITS) if last_s else None
    if (first_s and first is None) or (last_s and last is None):
        return None
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            return False
        return max(0, size - last), size
    if first >= size:
        return False
    end = size if last is None else min(last + 1, size)
    if end <= first:
        return None  # last < first is a syntax error: ignore the header
    return first, end


def _if_range_holds(value: str, v: Validators) -> bool:
    """If-Range: a strong ETag match or exactly the announced Last-Modified; else the whole body."""
    value = value.strip()
    if value.startswith(("W/", '"')):
        return value == v.etag
    when = http_date(value)
    return when is not None and when == v.last_modified


def decide(method: str, headers: Mapping[str, str], v: Validators) -> Decision:
    """The answer to a GET or HEAD of a representation, in RFC 9110 13.2.2's order of evaluation:
    If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, then Range with If-Range.

    `headers` is looked up by the canonical field names (aiohttp's headers are case-insensitive)."""
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not strong_match(if_match, v.etag):
            return Decision(412)
    else:
        since = http_date(headers.get("If-Unmodified-Since"))
        if since is not None and v.last_modified > since:
            return Decision(412)
    safe = method in ("GET", "HEAD")
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if weak_match(if_none_match, v.etag):
            return Decision(304 if safe else 412)
    elif safe:
        since = http_date(headers.get("If-Modified-Since"))
        if since is not None and v.last_modified <= since:
            return Decision(304)
    range_header = headers.get("Range")
    if range_header is not None and method == "GET":
        if_range = headers.get("If-Range")
        if if_range is None or _if_range_holds(if_range, v):
            rng = parse_range(range_header, v.size)
            if rng is False:
                return Decision(416)
            if isinstance(rng, tuple):
                return Decision(206, rng[0], rng[1])
    return Decision(200, 0, v.size)
