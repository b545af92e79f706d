"""sidecar.datauri: the WHATWG data: URL parser (SPEC 4.1); the scanner has tests/test_scanner.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.datauri import DataURLError, forgiving_base64_decode, parse_data_url, parse_mime_type, type_matches

WPT = Path(__file__).parents[2] / "shared" / "testdata" / "wpt"
DEFAULT = "text/plain;charset=US-ASCII"


def _wpt(name: str) -> list[object]:
    path = WPT / name
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} is not there"))]
    cases: list[object] = json.loads(path.read_text())
    return [pytest.param(c, id=repr(c[0])[:60]) for c in cases]  # type: ignore[index]


# --------------------------------------------------------------------------------------
# SPEC 4.1: one data URL
# --------------------------------------------------------------------------------------


class TestWptVectors:
    @pytest.mark.parametrize("case", _wpt("data-urls.json"))
    def test_data_urls(self, case: list[object]) -> None:
        """Every web-platform-tests data: URL vector gives its MIME type and body, or fails."""
        text, mime, *body = case
        assert isinstance(text, str)
        if mime is None:
            with pytest.raises(DataURLError):
                parse_data_url(text)
            return
        d = parse_data_url(text)
        assert (d.mime_type, list(d.body)) == (mime or DEFAULT, body[0])

    @pytest.mark.parametrize("case", _wpt("base64.json"))
    def test_forgiving_base64(self, case: list[object]) -> None:
        """Every web-platform-tests forgiving-base64 vector decodes to its bytes, or fails."""
        text, expected = case
        assert isinstance(text, str)
        if expected is None:
            with pytest.raises(DataURLError):
                forgiving_base64_decode(text)
        else:
            assert list(forgiving_base64_decode(text)) == expected
            assert list(forgiving_base64_decode(text.encode("utf-8"))) == expected if text.isascii() else True


class TestParseDataUrl:
    def test_error_is_a_value_error(self) -> None:
        """DataURLError is a ValueError (SPEC 4.1)."""
        assert issubclass(DataURLError, ValueError)

    def test_essence_is_lower_case(self) -> None:
        """The essence is type/subtype in lower case, parameters left out."""
        d = parse_data_url("DATA:IMAGE/PNG;Name=X;base64,iVBORw0KGgo=")
        assert (d.mime_type, d.essence, d.body) == ("image/png;name=X", "image/png", b"\x89PNG\r\n\x1a\n")

    def test_url_parser_effects_come_first(self) -> None:
        """Leading/trailing controls are stripped, tabs and newlines removed, the fragment dropped."""
        d = parse_data_url(" \x00data:text/pl\tain,A\nB#frag\x1f ")
        assert (d.mime_type, d.body) == ("text/plain", b"AB")

    @pytest.mark.parametrize(
        "text", ["data://h:99999/,X", "data://h:1x/,X", "data://a b/,X", "data://:1/,X", "javascript:,X", ""]
    )
    def test_url_parser_failures(self, text: str) -> None:
        """Invalid ports, forbidden host code points and other schemes fail like the URL parser fails."""
        with pytest.raises(DataURLError):
            parse_data_url(text)

    def test_dot_segments_of_a_hierarchical_path(self) -> None:
        """A path starting with '/' has its dot segments resolved before the comma is looked for."""
        assert parse_data_url("data:/a/../b,X").body == b"X"
        with pytest.raises(DataURLError):
            parse_data_url("data:/,a/../b")

    def test_query_is_part_of_the_body(self) -> None:
        """The query stays in the body; only the fragment goes."""
        assert parse_data_url("data:,a?b c#d").body == b"a?b c"


class TestParseMimeType:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('text/html;charset="x\\"y"', ('text/html;charset="x\\"y"', "text/html")),
            ('a/b; q=1 ;r="" ;q=2', ("a/b;q=1", "a/b")),
            ("a/b;x=\u00e9", ('a/b;x="\u00e9"', "a/b")),
            ("a/b;x=\u0100", ("a/b", "a/b")),
            (" A/B ", ("a/b", "a/b")),
        ],
    )
    def test_parse_and_serialize(self, text: str, expected: tuple[str, str]) -> None:
        """Quoted strings, duplicate and empty parameters and non-Latin-1 values follow WHATWG MIME Sniffing."""
        assert parse_mime_type(text) == expected

    @pytest.mark.parametrize("text", ["", "text", "/plain", "text/", "te xt/plain", "text/pl ain"])
    def test_invalid(self, text: str) -> None:
        """A missing or non-token type or subtype is a failure."""
        assert parse_mime_type(text) is None


class TestTypeMatches:
    @pytest.mark.parametrize(
        ("essence", "patterns", "expected"),
        [
            ("image/png", ["image/*"], True),
            ("image/png", ["*/*"], True),
            ("image/png", ["IMAGE/PNG"], True),
            ("application/pdf", ["image/*", "application/pdf"], True),
            ("imagex/png", ["image/*"], False),
            ("text/plain", ["image/*"], False),
        ],
    )
    def test_patterns(self, essence: str, patterns: list[str], expected: bool) -> None:
        """`type/*`, `*/*` and exact types, case-insensitively."""
        assert type_matches(essence, patterns) is expected
