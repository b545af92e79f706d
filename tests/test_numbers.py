"""sidecar.numbers: numbers from untrusted text, and the callers that must never raise on them."""

from __future__ import annotations

import pytest

from sidecar.numbers import ascii_decimal, ascii_int, ascii_uint
from sidecar.pusher import retry_after_seconds
from sidecar.security import sign, signature_ok

# Each passes str.isdigit(), int() or float() somewhere, and none is an HTTP number.
NOT_ASCII_NUMBERS = [
    *("²", "¹²", "\u0661\u0662", "\u0663", "\uff11\uff12"),  # superscripts, Arabic-Indic and fullwidth digits
    *("1_000", " 12", "12 ", "+12", "1e3", "0x10", "", "nan", "inf", "12\n"),
]


class TestAsciiNumbers:
    @pytest.mark.parametrize("value", NOT_ASCII_NUMBERS)
    def test_only_ascii_digits_are_numbers(self, value):
        """Superscripts, other scripts' digits, `_`, spaces, signs and exponents are not numbers."""
        assert ascii_uint(value) is None
        assert ascii_int(value) is None or value.startswith("-")

    def test_plain_numbers(self):
        """ASCII digits give their value; ascii_int takes a leading minus; ascii_decimal a fraction."""
        assert ascii_uint("0") == 0 and ascii_uint("007") == 7 and ascii_uint("1800000000") == 1_800_000_000
        assert ascii_uint("-1") is None and ascii_int("-1") == -1 and ascii_int("42") == 42
        assert ascii_decimal("0.25") == 0.25 and ascii_decimal("5") == 5.0 and ascii_decimal("-5") == -5.0
        assert ascii_decimal(".5") == 0.5 and ascii_decimal("2.") == 2.0

    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "1e3", "²", "1_0", "٣", "0x1", "", ".", "-"])
    def test_decimals_are_plain(self, value):
        """No exponent, nan, infinity, `_` or non-ASCII digit in a decimal."""
        assert ascii_decimal(value) is None

    def test_length_is_capped(self):
        """5,000 digits (int() raises past 4,300) or more than the cap is no number, never an exception."""
        assert ascii_uint("9" * 5000) is None and ascii_int("9" * 5000) is None and ascii_decimal("9" * 5000) is None
        assert ascii_uint("9" * 12, 12) == 999_999_999_999 and ascii_uint("9" * 13, 12) is None


class TestCallers:
    @pytest.mark.parametrize("value", ["²", "٣", "1_0", "9" * 5000, " ", "-5"])
    def test_retry_after_that_is_no_number_is_ignored(self, value):
        """A UI's malformed Retry-After gives None (the pusher's own backoff), never an exception."""
        assert retry_after_seconds(value) is None

    def test_retry_after_seconds_are_capped(self):
        """Plain seconds are used up to the cap; a huge number is the cap."""
        assert retry_after_seconds("3") == 3.0
        assert retry_after_seconds("99999999999") == 120.0

    @pytest.mark.parametrize("expires", ["²", "١٨٠٠٠٠٠٠٦٠", "1_800_000_060", " 1800000060", "9" * 5000])
    def test_signed_url_expiry_that_is_no_number_is_refused(self, expires):
        """`?expires=²` and its kind are refused (401), never a 500."""
        sig = sign("tok", "/artifacts/a.png", 1_800_000_060)
        assert not signature_ok("tok", "/artifacts/a.png", expires, sig, now=1_800_000_000)
