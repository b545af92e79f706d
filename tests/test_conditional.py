"""sidecar.conditional: the conditional and range decision of an artifact response, RFC 9110 13.2.2's order."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from sidecar.conditional import Decision, Validators, decide, parse_range, strong_match, weak_match

ETAG = '"5d41402abc4b2a76b9719d911017c592"'
OTHER = '"0000"'
MTIME = 1_700_000_000.75  # Last-Modified announces the whole second: 1_700_000_000
SIZE = 100
V = Validators(ETAG, MTIME, SIZE)
LM = formatdate(1_700_000_000, usegmt=True)
BEFORE = formatdate(1_700_000_000 - 3600, usegmt=True)
AFTER = formatdate(1_700_000_000 + 3600, usegmt=True)

OK = Decision(200, 0, SIZE)


def d(status: int, start: int = 0, end: int = 0) -> Decision:
    return Decision(status, start, end)  # type: ignore[arg-type]


CASES = [
    # no precondition
    ("GET", {}, OK),
    ("HEAD", {}, OK),
    # If-Match: strong comparison, `*`, lists; a failing one is 412 whatever follows
    ("GET", {"If-Match": ETAG}, OK),
    ("GET", {"If-Match": "*"}, OK),
    ("GET", {"If-Match": f"{OTHER}, {ETAG}"}, OK),
    ("GET", {"If-Match": OTHER}, d(412)),
    ("GET", {"If-Match": f"W/{ETAG}"}, d(412)),
    ("GET", {"If-Match": ETAG[:-1] + 'x"'}, d(412)),
    ("HEAD", {"If-Match": OTHER}, d(412)),
    ("GET", {"If-Match": OTHER, "Range": "bytes=0-9"}, d(412)),
    ("GET", {"If-Match": OTHER, "If-None-Match": ETAG}, d(412)),
    ("GET", {"If-Match": ETAG, "Range": "bytes=0-9"}, d(206, 0, 10)),
    # If-Unmodified-Since: 412 when modified after the date; ignored when If-Match is there or not a date
    ("GET", {"If-Unmodified-Since": LM}, OK),
    ("GET", {"If-Unmodified-Since": AFTER}, OK),
    ("GET", {"If-Unmodified-Since": BEFORE}, d(412)),
    ("GET", {"If-Unmodified-Since": BEFORE, "Range": "bytes=0-9"}, d(412)),
    ("GET", {"If-Unmodified-Since": "yesterday"}, OK),
    ("GET", {"If-Match": ETAG, "If-Unmodified-Since": BEFORE}, OK),
    ("GET", {"If-Match": OTHER, "If-Unmodified-Since": AFTER}, d(412)),
    # If-None-Match: weak comparison, 304 for GET and HEAD; after the 412 checks
    ("GET", {"If-None-Match": ETAG}, d(304)),
    ("HEAD", {"If-None-Match": ETAG}, d(304)),
    ("GET", {"If-None-Match": f"W/{ETAG}"}, d(304)),
    ("GET", {"If-None-Match": "*"}, d(304)),
    ("GET", {"If-None-Match": f"{OTHER}, {ETAG}"}, d(304)),
    ("GET", {"If-None-Match": OTHER}, OK),
    ("GET", {"If-None-Match": "garbage, ,,"}, OK),
    ("GET", {"If-Match": ETAG, "If-None-Match": ETAG}, d(304)),
    ("GET", {"If-Unmodified-Since": BEFORE, "If-None-Match": ETAG}, d(412)),
    # If-Modified-Since: only without If-None-Match
    ("GET", {"If-Modified-Since": LM}, d(304)),
    ("GET", {"If-Modified-Since": AFTER}, d(304)),
    ("HEAD", {"If-Modified-Since": LM}, d(304)),
    ("GET", {"If-Modified-Since": BEFORE}, OK),
    ("GET", {"If-Modified-Since": "not a date"}, OK),
    ("GET", {"If-Modified-Since": LM, "If-None-Match": OTHER}, OK),
    ("GET", {"If-Modified-Since": BEFORE, "If-None-Match": ETAG}, d(304)),
    ("GET", {"If-Modified-Since": LM, "Range": "bytes=0-9"}, d(304)),
    # Range, If-Range; HEAD ignores Range
    ("GET", {"Range": "bytes=0-9"}, d(206, 0, 10)),
    ("HEAD", {"Range": "bytes=0-9"}, OK),
    ("GET", {"Range": "bytes=100-"}, d(416)),
    ("GET", {"Range": "bytes=0-9", "If-Range": ETAG}, d(206, 0, 10)),
    ("GET", {"Range": "bytes=0-9", "If-Range": LM}, d(206, 0, 10)),
    ("GET", {"Range": "bytes=0-9", "If-Range": OTHER}, OK),
    ("GET", {"Range": "bytes=0-9", "If-Range": f"W/{ETAG}"}, OK),
    ("GET", {"Range": "bytes=0-9", "If-Range": BEFORE}, OK),
    ("GET", {"Range": "bytes=0-9", "If-Range": AFTER}, OK),
    ("GET", {"Range": "bytes=100-", "If-Range": OTHER}, OK),
    ("GET", {"If-Range": ETAG}, OK),
    # a resuming client: its partial file is still current, or it gets 412 and starts over
    ("GET", {"Range": "bytes=50-", "If-Match": ETAG}, d(206, 50, 100)),
    ("GET", {"Range": "bytes=50-", "If-Match": OTHER}, d(412)),
    ("GET", {"Range": "bytes=50-", "If-Unmodified-Since": BEFORE}, d(412)),
]


class TestDecide:
    @pytest.mark.parametrize(("method", "headers", "want"), CASES, ids=[f"{m} {h}" for m, h, _ in CASES])
    def test_rfc9110_order_of_evaluation(self, method, headers, want):
        """If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, then Range with If-Range."""
        assert decide(method, headers, V) == want

    def test_empty_representation(self):
        """An empty file: any range is unsatisfiable, the whole (empty) body is 200."""
        empty = Validators(ETAG, MTIME, 0)
        assert decide("GET", {}, empty) == Decision(200, 0, 0)
        assert decide("GET", {"Range": "bytes=0-"}, empty) == Decision(416)
        assert decide("GET", {"Range": "bytes=-5"}, empty) == Decision(416)


class TestComparisons:
    def test_strong_and_weak(self):
        """If-Match compares strongly (a weak tag never matches); If-None-Match weakly."""
        assert strong_match(ETAG, ETAG) and strong_match("*", ETAG)
        assert not strong_match(f"W/{ETAG}", ETAG)
        assert weak_match(f"W/{ETAG}", ETAG) and weak_match(ETAG, ETAG)
        assert not weak_match(OTHER, ETAG) and not strong_match("", ETAG)


class TestParseRange:
    @pytest.mark.parametrize(
        ("header", "want"),
        [
            ("bytes=2-5", (2, 6)),
            ("bytes=-3", (97, 100)),
            ("bytes=10-", (10, 100)),
            ("bytes=90-1000", (90, 100)),
            ("BYTES = 1-1", (1, 2)),
            ("bytes=100-", False),
            ("bytes=-0", False),
            ("bytes=5-2", None),
            ("bytes=0-1,4-5", None),
            ("items=0-1", None),
            ("bytes=x-y", None),
            ("bytes=-", None),
            ("bytes=abc", None),
        ],
    )
    def test_single_ranges(self, header, want):
        """One range gives [start, end); unsatisfiable is False; anything else is ignored (None)."""
        assert parse_range(header, SIZE) == want

    @pytest.mark.parametrize(
        "header",
        [
            "bytes=²-",
            "bytes=-²",
            "bytes=0-²",
            "bytes=\u0661-5",  # ARABIC-INDIC DIGIT ONE: int() takes it, HTTP does not
            "bytes=1_0-20",
            "bytes=+1-5",
            "bytes=0x1-5",
            "bytes=" + "9" * 5000 + "-",
            "bytes=0-" + "9" * 5000,
        ],
    )
    def test_non_ascii_or_huge_numbers_are_ignored(self, header):
        """Only ASCII digits of a sane length are positions: anything else ignores the header, never raises."""
        assert parse_range(header, SIZE) is None
