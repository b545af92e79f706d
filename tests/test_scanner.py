"""sidecar.scanner: the streaming data-URL scanner (SPEC 4.2), with scanfind and scanpayload beneath it (their own
functions: test_scanfind, test_scanpayload)."""

from __future__ import annotations

import base64
import random
import tracemalloc
import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.images import b64, make_gif, make_jpeg, make_png, wrap

from sidecar.media import is_complete_bytes, sniff
from sidecar.scanner import Decoded, Ended, Found, Match, Scanner, scan_bytes

DEFAULT = "text/plain;charset=US-ASCII"

# --------------------------------------------------------------------------------------
# SPEC 4.2: the scanner
# --------------------------------------------------------------------------------------


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 9 9"><g transform="rotate(10)">'
    b'<rect x="1" y="1" width="3" height="3" fill="red"/></g><svg><circle r="1"/></svg></svg>'
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# A text form puts a payload into text: (text, start of the replaced range, end of it)
Form = Callable[[bytes], tuple[str, int, int]]


def _around(before: str, url: str, after: str) -> tuple[str, int, int]:
    return before + url + after, len(before.encode()), len(before.encode()) + len(url.encode())


FORMS: dict[str, Form] = {
    "json-escaped-slashes": lambda d: _around(
        '{"image": "', "data:image/png;base64," + b64(d).replace("/", "\\/"), '"}'
    ),
    "json-escaped-type": lambda d: _around('{"i":"', "data:image\\/png;base64," + b64(d).replace("/", "\\/"), '"}'),
    "markdown": lambda d: _around("![chart](", "data:image/png;base64," + b64(d), ")"),
    "html-double": lambda d: _around('<img src="', "data:image/png;base64," + b64(d), '" alt="x">'),
    "html-single": lambda d: _around("<img src='", "data:image/png;base64," + b64(d), "'>"),
    "python-repr": lambda d: _around("{'image': '", "data:image/png;base64," + b64(d), "'}"),
    "unpadded": lambda d: _around("(", "DATA:Image/PNG;BASE64," + b64(d).rstrip("="), ")"),
    "url-safe": lambda d: _around('"', "data:image/png;base64," + base64.urlsafe_b64encode(d).decode(), '"'),
    "wrapped-76-lf": lambda d: _around("out:\n", "data:image/png;base64," + wrap(b64(d), 76, "\n"), "\n\n(end)"),
    "wrapped-64-crlf": lambda d: _around("out:\r\n", "data:image/png;base64," + wrap(b64(d), 64, "\r\n"), "\r\n\r\n"),
    "wrapped-json-escape": lambda d: _around(
        '{"out": "', "data:image/png;base64," + wrap(b64(d), 76, "\\n"), '\\n\\nbye"}'
    ),
    "wrapped-json-escaped-slashes": lambda d: _around(
        '{"o":"', "data:image/png;base64," + wrap(b64(d), 76, "\\n").replace("/", "\\/"), '\\n\\n"}'
    ),
    "percent-encoded": lambda d: _around("<", "data:image/png," + urllib.parse.quote(d, safe=""), "> and more"),
}
BARE_FORMS: dict[str, Form] = {
    "bare-mcp": lambda d: _around('{"type": "image", "data": "', b64(d), '", "mimeType": "image/png"}'),
    "bare-escaped-slashes": lambda d: _around('{"data":"', b64(d).replace("/", "\\/"), '"}'),
}
SVG_FORMS: dict[str, Form] = {
    "svg-raw-single-quoted": lambda d: _around("<img src='", "data:image/svg+xml," + d.decode(), "'>"),
    "svg-raw-then-text": lambda d: _around("x ", "data:image/svg+xml;utf8," + d.decode(), " and more"),
    "svg-percent": lambda d: _around('<img src="', "data:image/svg+xml," + urllib.parse.quote(d, safe=""), '">'),
    "svg-uri-component": lambda d: _around(
        "![v](", "data:image/svg+xml," + urllib.parse.quote(d, safe="-_.!~*'()"), ")"
    ),
    "svg-mixed-case-percent": lambda d: _around(
        "(", "data:image/svg+xml," + urllib.parse.quote(d, safe="").replace("%3C", "%3c"), ")"
    ),
}

FILLER = st.text(alphabet=" \n\t.,;:!?()[]{}<>#=&%xyzXYZ", max_size=300)


def _check_one(text: bytes, start: int, end: int, payload: bytes, splits: list[int], **kw: object) -> None:
    matches = scan_bytes(text, splits=splits, **kw)  # type: ignore[arg-type]
    assert [(m.offset, m.end, m.error) for m in matches] == [(start, end, None)]
    assert matches[0].body == payload


class TestScannerProperties:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        form=st.sampled_from(sorted(FORMS)),
        payload=st.binary(min_size=1, max_size=2500),
        before=FILLER,
        after=FILLER,
        data=st.data(),
    )
    def test_any_payload_in_any_form_at_any_split(
        self, form: str, payload: bytes, before: str, after: str, data: st.DataObject
    ) -> None:
        """Any bytes in any data URL text form, at any offset, fed in any pieces, come back byte-exact."""
        text, start, end = FORMS[form](payload)
        raw = (before + text + after).encode()
        off = len(before.encode())
        splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
        _check_one(raw, off + start, off + end, payload, splits)

    @settings(max_examples=40, deadline=None)
    @given(
        form=st.sampled_from(sorted(BARE_FORMS)),
        tail=st.binary(min_size=0, max_size=2000),
        before=FILLER,
        min_bytes=st.sampled_from([0, 64, 512]),
        data=st.data(),
    )
    def test_bare_base64_images_at_any_split(
        self, form: str, tail: bytes, before: str, min_bytes: int, data: st.DataObject
    ) -> None:
        """A JSON string holding base64 of image bytes is found whole, whatever the pieces and the minimum."""
        payload = PNG_MAGIC + tail
        text, start, end = BARE_FORMS[form](payload)
        raw = (before + text).encode()
        off = len(before.encode())
        splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
        matches = scan_bytes(raw, splits=splits, min_bare_bytes=min_bytes)
        if len(payload) >= min_bytes:
            assert [(m.offset, m.end, m.bare, m.body) for m in matches] == [(off + start, off + end, True, payload)]
        else:
            assert matches == []

    @settings(max_examples=30, deadline=None)
    @given(form=st.sampled_from(sorted(SVG_FORMS)), before=FILLER, data=st.data())
    def test_svg_payloads_at_any_split(self, form: str, before: str, data: st.DataObject) -> None:
        """SVG payloads, raw or percent-encoded, end right after their (outer) closing tag."""
        text, start, end = SVG_FORMS[form](SVG)
        raw = (before + text).encode()
        off = len(before.encode())
        splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
        _check_one(raw, off + start, off + end, SVG, splits)

    @settings(max_examples=25, deadline=None)
    @given(
        forms=st.lists(st.sampled_from(sorted(FORMS)), min_size=2, max_size=5),
        seed=st.integers(0, 1000),
        data=st.data(),
    )
    def test_many_payloads_in_order(self, forms: list[str], seed: int, data: st.DataObject) -> None:
        """Several data URLs in one text are all found, in order, with their own bodies."""
        rng = random.Random(seed)
        parts: list[bytes] = []
        expected: list[tuple[int, int, bytes]] = []
        pos = 0
        for f in forms:
            payload = rng.randbytes(rng.randrange(1, 900))
            text, start, end = FORMS[f](payload)
            chunk = (text + " ;\n").encode()
            expected.append((pos + start, pos + end, payload))
            parts.append(chunk)
            pos += len(chunk)
        raw = b"".join(parts)
        splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
        assert [(m.offset, m.end, m.body) for m in scan_bytes(raw, splits=splits)] == expected

    @settings(max_examples=40, deadline=None)
    @given(
        kind=st.sampled_from(["png", "jpeg", "gif"]), cut=st.floats(0.0, 1.0, exclude_max=True), wrapped=st.booleans()
    )
    def test_every_truncation_is_never_complete(self, kind: str, cut: float, wrapped: bool) -> None:
        """A payload cut anywhere (bytes or base64 text) never scans to a complete image: it is rejected."""
        image = {"png": make_png, "jpeg": make_jpeg, "gif": make_gif}[kind](3)
        enc = b64(image)
        for body in (b64(image[: int(cut * len(image))]), enc[: int(cut * len(enc))]):
            text = "data:image/png;base64," + (wrap(body, 76, "\n") if wrapped else body) + " [cut]"
            (m,) = scan_bytes(text.encode())
            if m.error is None and m.body != image:  # cutting only the optional padding loses nothing
                mime = sniff(m.body[:1024]) or "image/png"
                assert not is_complete_bytes(mime, m.body)


class TestScannerEnds:
    def _one(self, text: str | bytes, **kw: object) -> Match:
        matches = scan_bytes(text.encode() if isinstance(text, str) else text, **kw)  # type: ignore[arg-type]
        assert len(matches) == 1, matches
        return matches[0]

    def test_padding_ends_the_payload(self) -> None:
        """After '=' padding the payload is over, even if payload characters follow."""
        m = self._one("data:image/png;base64,iVBORw0KGgo=abc")
        assert (m.end, m.body) == (len("data:image/png;base64,iVBORw0KGgo="), PNG_MAGIC)

    def test_percent_encoded_padding(self) -> None:
        """`%3D` padding belongs to the payload it pads."""
        m = self._one("data:image/png;base64,iVBORw0KGgo%3D tail")
        assert (m.end, m.body) == (len("data:image/png;base64,iVBORw0KGgo%3D"), PNG_MAGIC)

    def test_4n_plus_1_is_invalid(self) -> None:
        """A payload of 4n+1 characters is not forgiving-base64."""
        assert self._one("data:image/png;base64,iVBORw0KGgoAA ").error == "invalid_base64"

    def test_header_alone_on_its_line_is_empty(self) -> None:
        """The line after `data:...;base64,` does not start the payload."""
        m = self._one("data:image/png;base64,\n" + "A" * 76 + "\n")
        assert (m.end, m.body, m.error) == (len("data:image/png;base64,"), b"", None)

    @pytest.mark.parametrize(
        ("line", "why"),
        [("A" * 56, "fewer than 60 characters"), ("A" * 62, "not a multiple of 4")],
    )
    def test_short_or_unaligned_line_ends_at_the_break(self, line: str, why: str) -> None:
        """A line break ends the payload unless the line is a wrapped base64 line."""
        m = self._one("data:image/png;base64," + line + "\nAAAA")
        assert m.end == len("data:image/png;base64," + line), why

    def test_break_followed_by_non_payload_ends(self) -> None:
        """A wrapped-looking line followed by a line that does not start with payload ends there."""
        m = self._one("data:image/png;base64," + "A" * 76 + "\n* item")
        assert m.end == len("data:image/png;base64,") + 76

    def test_lone_carriage_return_ends(self) -> None:
        """Only LF, CRLF and the JSON escapes count as line breaks."""
        m = self._one("data:image/png;base64," + "A" * 76 + "\rAAAA")
        assert m.end == len("data:image/png;base64,") + 76

    def test_non_base64_payload_ends_at_terminators(self) -> None:
        """A non-base64 payload ends at whitespace or one of the quote, paren, angle and backslash characters."""
        for term in " \"'()<>\\\n":
            m = self._one("data:image/png,%89PNG" + term + "rest")
            assert (m.end, m.body) == (len("data:image/png,%89PNG"), b"\x89PNG")

    def test_incomplete_percent_escape_is_kept(self) -> None:
        """A `%` without two hex digits stays as it is (WHATWG percent-decode)."""
        assert self._one("data:image/png,a%4").body == b"a%4"

    def test_unclosed_svg_ends_at_the_first_terminator(self) -> None:
        """An SVG whose closing tag never comes ends at the usual terminators, marked unclosed."""
        text = "data:image/svg+xml,%3Csvg%20x%3D1%3E%3Crect%2F%3E' then prose"
        m = self._one(text)
        assert (m.end, m.error, m.body) == (text.index("'"), "unclosed", b"<svg x=1><rect/>")

    def test_text_after_an_unclosed_svg_is_scanned_again(self) -> None:
        """Data URLs in the text that was held back while waiting for the closing tag are still found."""
        png = b64(make_png())
        text = f"data:image/svg+xml,<svg width='1'> then ![x](data:image/png;base64,{png}) the end"
        a, b = scan_bytes(text.encode(), splits=range(0, len(text), 7))
        assert (a.error, a.end, a.body) == ("unclosed", text.index(" width"), b"<svg")
        assert (b.offset, b.body) == (text.index("data:image/png"), make_png())

    def test_svg_lookahead_is_bounded(self) -> None:
        """Past the lookahead the SVG is given up on, and what came after is scanned again."""
        later = "data:image/png;base64,iVBORw0KGgo="
        text = ("data:image/svg+xml,<svg " + "x" * 5000 + " " + later + " </svg>").encode()
        sc = Scanner(svg_lookahead=1000)
        events = [e for i in range(0, len(text), 512) for e in sc.feed(text[i : i + 512])] + sc.close()
        ends = [e for e in events if isinstance(e, Ended)]
        assert [e.error for e in ends] == ["unclosed", None]
        assert ends[1].offset == text.index(b"data:image/png")

    def test_nested_svg_closes_with_the_outer_tag(self) -> None:
        """An `<svg>` inside the SVG needs its own closing tag first."""
        assert self._one(b"data:image/svg+xml," + SVG + b" after").body == SVG

    def test_offsets_are_byte_offsets(self) -> None:
        """Offsets count bytes of the stream, not characters."""
        text = "préfixe ✓ data:image/png;base64,iVBORw0KGgo="
        assert self._one(text).offset == text.encode().index(b"data:")


class TestScannerStarts:
    def test_types_filter_the_media_type(self) -> None:
        """Only media types matching the patterns are found; a text/* pattern finds text payloads."""
        text = b"data:text/plain;base64,aGk= data:application/pdf,%25PDF data:,hey"
        assert scan_bytes(text) == []
        found = scan_bytes(text, ["text/*", "application/pdf"])
        assert [(m.essence, m.body) for m in found] == [
            ("text/plain", b"hi"),
            ("application/pdf", b"%PDF"),
            ("text/plain", b"hey"),
        ]
        assert found[2].mime_type == DEFAULT

    def test_declared_type_is_serialized(self) -> None:
        """Found carries the declared type as Fetch serializes it."""
        (m,) = scan_bytes(b"data:IMAGE/PNG;Name=A\\/b;base64,iVBORw0KGgo=")
        assert (m.mime_type, m.essence) == ('image/png;name="A/b"', "image/png")

    @pytest.mark.parametrize(
        "text", [b"data: image/png;base64,AAAA", b"the data: it says, ok", b"data:image/png;base64"]
    )
    def test_prose_is_not_a_data_url(self, text: bytes) -> None:
        """`data:` not followed by a media type without spaces and a comma is not a data URL."""
        assert scan_bytes(text) == []

    def test_bare_strings_need_image_magic(self) -> None:
        """Base64 strings that do not start like an image, and strings with other characters, are not bare images."""
        other = b64(b"\x13\x37" + random.Random(1).randbytes(800))
        png = b64(make_png())
        # (one `\\n` at the end is a Jupyter output, SPEC 4.2; a `\\t` is not)
        text = f'{{"a": "{other}", "b": "{png[:40]} {png[40:]}", "c": "{png}\\t"}}'.encode()
        assert scan_bytes(text) == []

    def test_bare_images_can_be_turned_off(self) -> None:
        """With bare_images off, only data URLs are found."""
        text = f'{{"data": "{b64(make_png())}"}}'.encode()
        assert len(scan_bytes(text)) == 1
        assert scan_bytes(text, bare_images=False) == []

    def test_bare_stride_finds_strings_after_other_long_tokens(self) -> None:
        """The sampled search finds a long bare string right after other long tokens and short strings."""
        png = make_png(size=40)
        text = ('{"sha": "' + "ab12" * 40 + '", "x": "Qk", "data": "' + b64(png) + '"}').encode()
        for splits in ([], [100], list(range(0, len(text), 333))):
            (m,) = scan_bytes(text, min_bare_bytes=512, splits=splits)
            assert (m.offset, m.body) == (text.index(b"iVBOR"), png)

    def test_every_single_split_point(self) -> None:
        """A text with every kind of payload scans the same whatever byte it is split at."""
        png = make_png()
        text = (
            f'a "data:image/png;base64,{b64(png).replace("/", chr(92) + "/")}" b '
            f"data:image/png;base64,{wrap(b64(png), 64, chr(13) + chr(10))}\r\n\r\n"
            f'{{"data": "{b64(png)}"}} data:image/svg+xml,{SVG.decode()} end'
        ).encode()
        whole = scan_bytes(text)
        assert [m.body for m in whole] == [png, png, png, SVG]
        for cut in range(len(text) + 1):
            assert scan_bytes(text, splits=[cut]) == whole, cut

    def test_close_twice_and_feed_after_close(self) -> None:
        """close() is idempotent; feeding a closed scanner is an error."""
        sc = Scanner()
        sc.feed(b"data:image/png;base64,iVBO")
        assert [type(e) for e in sc.close()] == [Found, Decoded, Ended]
        assert sc.close() == []
        with pytest.raises(ValueError, match="closed"):
            sc.feed(b"x")


class TestScannerMemory:
    def test_huge_payload_in_bounded_memory(self) -> None:
        """A 24 MiB base64 payload is scanned with a few MiB of memory, never the whole payload."""
        block = base64.b64encode(random.Random(2).randbytes(3 << 18))  # 1 MiB of base64
        sc = Scanner()
        decoded = 0
        tracemalloc.start()
        try:
            sc.feed(b'{"image": "data:image/png;base64,')
            for _ in range(24):
                decoded += sum(len(e.data) for e in sc.feed(block) if isinstance(e, Decoded))
            for e in sc.feed(b'"}\n') + sc.close():
                decoded += len(e.data) if isinstance(e, Decoded) else 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert decoded == 24 * (3 << 18)
        assert peak < 8 << 20

    def test_events_hold_bounded_pieces(self) -> None:
        """Decoded pieces of one payload are emitted as the text arrives, not at the end."""
        sc = Scanner()
        sc.feed(b"data:image/png;base64,")
        got = [e for e in sc.feed(b"A" * (4 << 20)) if isinstance(e, Decoded)]
        assert sum(len(e.data) for e in got) >= 3 << 20
