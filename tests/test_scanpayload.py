"""sidecar.scanpayload: decoding a payload that arrives in pieces — percent escapes, JSON string escapes and
base64 — split anywhere. How the scanner finds payloads and where they end is test_scanner's."""

from __future__ import annotations

import base64
import json
import random
from urllib.parse import quote_from_bytes, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.scanpayload import Base64, Decoded, Dropped, Ended, Event, JsonDecoder, PercentDecoder, SvgPayload


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def decoded(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Decoded))


percent_text = st.lists(
    st.sampled_from([b"%", b"%4", b"%41", b"%e2%82%ac", b"%3C", b"%zz", b"%%", b"a", b"<svg>", b"%0", b" "]),
    max_size=30,
).map(b"".join)


class TestPercentDecoder:
    @given(percent_text, st.lists(st.integers(0, 120), max_size=8))
    @settings(max_examples=400, deadline=None)
    def test_any_split_decodes_like_the_whole(self, text: bytes, cuts: list[int]) -> None:
        """Pieces split anywhere, even inside `%41`, give what percent-decoding the whole text gives."""
        dec = PercentDecoder()
        out = b"".join(dec.feed(p) for p in split(text, cuts)) + dec.close()
        assert out == unquote_to_bytes(text)

    @given(st.binary(max_size=200), st.lists(st.integers(0, 600), max_size=6))
    @settings(max_examples=200, deadline=None)
    def test_encoded_bytes_come_back(self, data: bytes, cuts: list[int]) -> None:
        """Any bytes percent-encoded and fed in pieces are those bytes again."""
        dec = PercentDecoder()
        out = b"".join(dec.feed(p) for p in split(quote_from_bytes(data, safe="").encode(), cuts))
        assert out + dec.close() == data

    def test_an_incomplete_escape_at_the_end_is_kept(self) -> None:
        """`%4` with nothing after it stays `%4`, as WHATWG percent-decode leaves it."""
        dec = PercentDecoder()
        assert dec.feed(b"ab%4") == b"ab"
        assert dec.close() == b"%4"
        assert dec.close() == b"", "close empties what was held"


json_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from('"\\/\b\f\n\r\t<>'), max_size=60
)


class TestJsonDecoder:
    @given(json_text, st.booleans(), st.lists(st.integers(0, 400), max_size=8))
    @settings(max_examples=200, deadline=None)
    def test_any_split_decodes_a_json_string(self, text: str, ascii_only: bool, cuts: list[int]) -> None:
        """A JSON string's content (`\\uXXXX` and surrogate pairs included) split anywhere decodes to its UTF-8."""
        raw = json.dumps(text, ensure_ascii=ascii_only)[1:-1].encode()
        dec = JsonDecoder()
        out = b"".join(dec.feed(p) for p in split(raw, cuts)) + dec.close()
        assert out == text.encode()

    def test_a_pair_split_between_pieces(self) -> None:
        """😀 as `\\ud83d\\ude00`, cut after the high surrogate: one character, not two replacements."""
        dec = JsonDecoder()
        first = dec.feed(b"a\\ud83d")
        assert first + dec.feed(b"\\ude00b") + dec.close() == "a\U0001f600b".encode()

    @pytest.mark.parametrize(
        ("raw", "want"),
        [
            (b"a\\xb", b"a\\xb"),  # not a JSON escape
            (b"a\\", b"a\\"),  # a lone backslash at the end
            (b"\\ud800x", "\ufffdx".encode()),  # a lone high surrogate
            (b"\\u12", b"\\u12"),  # a cut \u escape
        ],
    )
    def test_a_malformed_escape_stays_or_is_replaced(self, raw: bytes, want: bytes) -> None:
        """Nothing raises: a malformed escape stays as it is, a lone surrogate is U+FFFD."""
        dec = JsonDecoder()
        assert dec.feed(raw) + dec.close() == want


class TestSvgPayload:
    def test_json_escapes_then_percent_escapes(self) -> None:
        """An SVG in a JSON string: `\\u003c`, `\\"` and `\\/` first, then `%20`, split anywhere."""
        raw = b'\\u003csvg%20xmlns=\\"http:\\/\\/www.w3.org\\/2000\\/svg\\"\\u003e\\u003c\\/svg\\u003e'
        want = b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'
        for cut in range(len(raw) + 1):
            p = SvgPayload(0, 0, json=True)
            assert p.feed(raw[:cut]).data + p.feed(raw[cut:]).data + p.close().data == want, cut

    def test_outside_json_a_backslash_is_a_backslash(self) -> None:
        p = SvgPayload(0, 0, json=False)
        assert p.feed(b"<svg>a\\/b%3C").data + p.close().data == b"<svg>a\\/b<"


class TestBase64:
    @given(st.binary(max_size=300), st.booleans(), st.booleans(), st.lists(st.integers(0, 500), max_size=6))
    @settings(max_examples=300, deadline=None)
    def test_pieces_in_either_alphabet_decode_whole(
        self, data: bytes, urlsafe: bool, padded: bool, cuts: list[int]
    ) -> None:
        """Standard or URL-safe characters, split anywhere, unpadded: the original bytes, then Ended."""
        text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).rstrip(b"=")
        st_ = Base64(offset=7, bare=False)
        out: list[Event] = []
        for piece in split(text, cuts):
            if piece:
                st_.add(piece, out)
        if padded:
            st_.pad = -len(text) % 4
        st_.finish(99, out)
        assert decoded(out) == data
        assert out[-1] == Ended(7, 99, None)

    def test_large_payloads_are_decoded_as_they_come(self) -> None:
        """Past 64 Ki characters the bytes so far are decoded before the payload ends (bounded memory)."""
        data = random.Random(1).randbytes(300_000)
        text = base64.b64encode(data)
        st_ = Base64(0, bare=False)
        out: list[Event] = []
        for i in range(0, len(text), 10_000):
            st_.add(text[i : i + 10_000], out)
        assert len(decoded(out)) > 200_000, "decoded before finish"
        st_.finish(len(text), out)
        assert decoded(out) == data

    def test_one_character_too_many_is_invalid(self) -> None:
        """4n+1 characters cannot be base64: Ended with `invalid_base64`, no decoded tail."""
        st_ = Base64(3, bare=False)
        out: list[Event] = []
        st_.add(b"QUJD" * 2 + b"Q", out)
        st_.finish(20, out)
        assert out == [Ended(3, 20, "invalid_base64")]

    def test_wrong_padding_is_invalid(self) -> None:
        """Three `=`, or padding that does not complete a quantum."""
        for count, pad in ((8, 1), (6, 3), (7, 2)):
            st_ = Base64(0, bare=False)
            out: list[Event] = []
            st_.add(b"A" * count, out)
            st_.pad = pad
            st_.finish(50, out)
            assert out[-1] == Ended(0, 50, "invalid_base64"), (count, pad)

    def test_a_bare_string_too_short_or_invalid_is_dropped(self) -> None:
        """A bare candidate is forgotten (Dropped), not ended with an error, when it is not base64 or too
        short to be the image its magic promised."""
        for text, min_bytes in ((b"iVBORw0KGgoA" * 4, 100), (b"iVBORw0KG", 0)):
            st_ = Base64(5, bare=True, min_bytes=min_bytes)
            out: list[Event] = []
            st_.add(text, out)
            st_.finish(60, out)
            assert out == [Dropped(5)], text

    def test_unchecked_pieces_are_checked_by_decoding(self) -> None:
        """add_unchecked takes standard base64 and says False (taking nothing) for anything else."""
        st_ = Base64(0, bare=False)
        out: list[Event] = []
        assert not st_.add_unchecked(memoryview(b"QUJD-_EF"), out)
        assert out == [] and st_.count == 0
        assert st_.add_unchecked(memoryview(b"QUJDREVG"), out)
        st_.finish(8, out)
        assert decoded(out) == b"ABCDEF"
