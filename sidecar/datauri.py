"""Data URLs (SPEC 4.1): the WHATWG Fetch "data: URL processor", MIME type parsing, forgiving base64."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import pybase64

__all__ = (
    "DEFAULT_MIME_TYPE",
    "DataURL",
    "DataURLError",
    "forgiving_base64_decode",
    "parse_data_url",
    "parse_mime_type",
    "type_matches",
)

DEFAULT_MIME_TYPE = "text/plain;charset=US-ASCII"


class DataURLError(ValueError):
    """The text is not a data URL the Fetch standard would accept."""


@dataclass(frozen=True)
class DataURL:
    mime_type: str  # serialized as Fetch serializes it
    essence: str  # type/subtype, lower case
    body: bytes


# --------------------------------------------------------------------------------------
# SPEC 4.1: one whole data URL, as a browser's fetch() reads it
# --------------------------------------------------------------------------------------

_ASCII_WS = " \t\n\f\r"
_HTTP_WS = " \t\n\r"
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_B64_TEXT = re.compile(r"[A-Za-z0-9+/]*")


def parse_data_url(text: str) -> DataURL:
    """Parse one data URL with the Fetch "data: URL processor" (after the URL parser's own effects).

    Raises DataURLError when the URL parser or the processor fails.
    """
    rest = _url_without_fragment(text)
    mime, comma, encoded = rest.partition(",")
    if not comma:
        raise DataURLError("a data URL needs a comma after its media type")
    mime = mime.strip(_ASCII_WS)
    body = unquote_to_bytes(encoded)
    if mime[-7:].lower() == ";base64":
        body = forgiving_base64_decode(body.decode("latin-1"))
        mime = mime[:-6].rstrip(" ")[:-1]
    if mime.startswith(";"):
        mime = "text/plain" + mime
    parsed = parse_mime_type(mime)
    if parsed is None:
        return DataURL(DEFAULT_MIME_TYPE, "text/plain", body)
    return DataURL(parsed[0], parsed[1], body)


def _url_without_fragment(text: str) -> str:
    """What the URL parser and serializer (excluding the fragment) leave after `data:`."""
    text = text.strip("".join(map(chr, range(0x21)))).translate({9: None, 10: None, 13: None})
    m = _SCHEME.match(text)
    if m is None or m.group().lower() != "data:":
        raise DataURLError("not a data: URL")
    rest = text[m.end() :].partition("#")[0]
    rest, question, query = rest.partition("?")
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        out = "//" + _authority(authority) + _path(slash + path)
    elif rest.startswith("/"):
        out = _path(rest)
    else:
        out = _percent_encode(rest, _C0_SET)
    if question:
        out += "?" + _percent_encode(query, _QUERY_SET)
    return out


_C0_SET: frozenset[str] = frozenset()
_QUERY_SET = frozenset(' "#<>')
_PATH_SET = _QUERY_SET | frozenset("?^`{}")
_FORBIDDEN_HOST = frozenset("\x00\t\n\r #/:<>?@[\\]^|")


def _percent_encode(text: str, extra: frozenset[str]) -> str:
    if text.isascii() and text.isprintable() and not any(c in extra for c in text):
        return text
    out = []
    for c in text:
        if c < " " or c > "~" or c in extra:
            if "\ud800" <= c <= "\udfff":
                c = "\ufffd"  # the URL parser encodes scalar values; a lone surrogate becomes U+FFFD
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def _authority(authority: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host, bracket, port = hostport.partition("]")
        host += bracket
        if not bracket or (port and not port.startswith(":")):
            raise DataURLError("invalid IPv6 host")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
        if any(c in _FORBIDDEN_HOST for c in host):
            raise DataURLError("forbidden code point in host")
    if port and (not port.isascii() or not port.isdigit() or int(port) > 65535):
        raise DataURLError("invalid port")
    if (userinfo or port) and not host:
        raise DataURLError("credentials or port without a host")
    host = _percent_encode(host, _C0_SET)
    cred = _percent_encode(userinfo, _PATH_SET | frozenset("/:;=@[\\]|")) + "@" if at and userinfo else ""
    return cred + host + (":" + str(int(port)) if port else "")


def _path(path: str) -> str:
    """A hierarchical path with its dot segments resolved, as the URL path state leaves it."""
    segments: list[str] = []
    parts = path[1:].split("/") if path else []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        dots = part.lower().replace("%2e", ".")
        if dots == "..":
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif dots == ".":
            if last:
                segments.append("")
        else:
            segments.append(_percent_encode(part, _PATH_SET))
    return "".join("/" + s for s in segments)


def forgiving_base64_decode(data: str | bytes) -> bytes:
    """The Infra standard's forgiving-base64 decode: ASCII whitespace ignored, padding optional."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    text = text.translate({9: None, 10: None, 12: None, 13: None, 32: None})
    if len(text) % 4 == 0:
        text = text[:-2] if text.endswith("==") else text[:-1] if text.endswith("=") else text
    if len(text) % 4 == 1 or not text.isascii() or _B64_TEXT.fullmatch(text) is None:
        raise DataURLError("not forgiving-base64")
    try:
        return pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:  # unreachable after the checks above; kept as a guard
        raise DataURLError(str(e)) from None


def parse_mime_type(text: str) -> tuple[str, str] | None:
    """WHATWG MIME Sniffing "parse a MIME type", then "serialize": (serialized, essence) or None."""
    text = text.strip(_HTTP_WS)
    kind, slash, rest = text.partition("/")
    if not slash or not kind or not all(c in _TOKEN for c in kind):
        return None
    subtype = rest.partition(";")[0].rstrip(_HTTP_WS)
    if not subtype or not all(c in _TOKEN for c in subtype):
        return None
    essence = f"{kind}/{subtype}".lower()
    params: dict[str, str] = {}
    n = len(text)
    pos = text.find(";", len(kind) + 1)
    if pos < 0:
        pos = n
    while pos < n:
        pos += 1  # past ';'
        while pos < n and text[pos] in _HTTP_WS:
            pos += 1
        start = pos
        while pos < n and text[pos] not in ";=":
            pos += 1
        name = text[start:pos].lower()
        if pos < n:
            if text[pos] == ";":
                continue
            pos += 1  # past '='
        if pos >= n:
            break
        if text[pos] == '"':
            value, pos = _quoted_string(text, pos)
            while pos < n and text[pos] != ";":
                pos += 1
        else:
            start = pos
            while pos < n and text[pos] != ";":
                pos += 1
            value = text[start:pos].rstrip(_HTTP_WS)
        # an empty value is dropped, quoted or not (the WPT vectors this parser is held to say so)
        if value and name and all(c in _TOKEN for c in name) and _quoted_ok(value) and name not in params:
            params[name] = value
    return essence + "".join(f";{k}={_serialize_value(v)}" for k, v in params.items()), essence


def _quoted_string(text: str, pos: int) -> tuple[str, int]:
    """Collect an HTTP quoted string (extract-value) starting at the opening quote."""
    out: list[str] = []
    pos += 1
    n = len(text)
    while pos < n:
        c = text[pos]
        pos += 1
        if c == '"':
            break
        if c == "\\":
            if pos >= n:
                out.append("\\")
                break
            out.append(text[pos])
            pos += 1
        else:
            out.append(c)
    return "".join(out), pos


def _quoted_ok(value: str) -> bool:
    return all(c == "\t" or " " <= c <= "~" or "\x80" <= c <= "\xff" for c in value)


def _serialize_value(value: str) -> str:
    if value and all(c in _TOKEN for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def type_matches(essence: str, patterns: Iterable[str]) -> bool:
    """Whether a media type essence matches one of the `--data-url-types` patterns (`image/*`, `*/*`, exact)."""
    for p in patterns:
        p = p.strip().lower()
        if p in ("*", "*/*") or p == essence or (p.endswith("/*") and essence.startswith(p[:-1])):
            return True
    return False
