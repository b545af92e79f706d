"""SPEC 4.2, reading: the payload being read (base64, percent-encoded text, SVG) and the events it yields."""

from __future__ import annotations

import binascii
import functools
import re
from dataclasses import dataclass
from typing import Literal, TypeAlias
from urllib.parse import unquote_to_bytes

import pybase64

__all__ = (
    "Base64",
    "Decoded",
    "Dropped",
    "Ended",
    "Event",
    "Found",
    "SvgPayload",
    "TextPayload",
    "read_svg",
    "read_text",
    "take_wrapped",
)


@dataclass(frozen=True, slots=True)
class Found:
    """A payload starts: `offset` is the byte offset of `data:`, or of a bare base64 string's first byte."""

    offset: int
    bare: bool
    mime_type: str  # the declared type, serialized; "" for a bare base64 string
    essence: str  # "" for a bare base64 string
    base64: bool


@dataclass(frozen=True, slots=True)
class Decoded:
    """The next decoded bytes of the current payload."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    """The current payload is over: the text [offset, end) is what a rewrite replaces.

    `error` is `invalid_base64` (not forgiving-base64) or `unclosed` (an SVG whose closing tag never came,
    ended at the usual terminators); the decoded bytes are then not to be trusted.
    """

    offset: int
    end: int
    error: Literal["invalid_base64", "unclosed"] | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """The current bare base64 candidate is not a pure base64 string after all: forget it."""

    offset: int


Event: TypeAlias = Found | Decoded | Ended | Dropped

_URLSAFE = bytes.maketrans(b"-_", b"+/")
_FLUSH = 1 << 16  # base64 characters gathered from small pieces before they are decoded together
_STD_TAIL = re.compile(rb"[A-Za-z0-9+/]{0,3}")
_WRAP_LINES = 512  # wrapped lines taken at once (more would slice past the payload for nothing)
_TEXT_END = re.compile(rb"[\s\"'()<>\\]")
# the start of an SVG payload: its root element, or the XML prolog matplotlib and Inkscape write before it
SVG_START = re.compile(rb"(<svg|%3csvg)|<\?xml|%3c(?:%3f|\?)xml", re.IGNORECASE)
_SVG_TAG = re.compile(
    rb"(?:<|%3c)(?:((?:/|%2f|\\/)svg(?:[ \t\r\n]|%20|%09|%0a|%0d|\\[nrt]){0,16}(?:>|%3e))"  # a closing tag (group 1)
    rb"|svg(?=[\s/>\\]|%(?:20|09|0a|0d|2f|3e)))"  # or an opening one
    rb"|(data:image(?:/|\\/)svg\+xml)",  # or the start of another SVG data URL (group 2)
    re.IGNORECASE,
)
TAG_MAX = 64  # longest tag _SVG_TAG can match, so a tag never straddles the part of a window kept back


class Base64:
    """A base64 payload being read: characters are normalized, then decoded in large aligned pieces."""

    __slots__ = (
        "bare",
        "count",
        "held",
        "in_pad",
        "line",
        "line_escaped",
        "min_bytes",
        "offset",
        "pad",
        "pieces",
        "quote",
        "width",
    )

    def __init__(self, offset: int, bare: bool, min_bytes: int = 0, quote: bytes = b'"') -> None:
        self.offset = offset
        self.bare = bare
        self.quote = quote  # what closes a bare string: `"`, or `\\"` for one escaped inside another string
        self.min_bytes = min_bytes  # a bare string decoding to fewer bytes is dropped
        self.pieces: list[bytes | memoryview] = []  # payload characters not decoded yet
        self.held = 0  # characters in pieces
        self.count = 0  # payload characters so far, '=' not counted
        self.pad = 0
        self.in_pad = False
        self.line = 0  # payload characters since the last line break
        self.line_escaped = False  # the current line had a `\/` escape
        self.width = 0  # the wrap width W that every line so far carried (0: still on the first line)

    def add(self, piece: bytes, out: list[Event]) -> None:
        """Characters known to be payload characters (either alphabet)."""
        if b"-" in piece or b"_" in piece:
            piece = piece.translate(_URLSAFE)
        n = len(piece)
        self.pieces.append(piece)
        self.held += n
        self.count += n
        self.line += n
        if self.held >= _FLUSH:
            self._flush(out)

    def add_unchecked(self, piece: memoryview, out: list[Event]) -> bool:
        """Characters that are probably standard base64: decoding them is the check. False if they are not."""
        if self.held >= 4:
            self._flush(out)
        rest = b"".join(self.pieces)
        k = -len(rest) % 4 if rest else 0
        cut = k + ((len(piece) - k) & ~3)
        if cut <= k or _STD_TAIL.fullmatch(piece[cut:]) is None:
            return False
        try:
            first = pybase64.b64decode(rest + piece[:k], validate=True) if rest else b""
            body = pybase64.b64decode(piece[k:cut], validate=True)
        except (binascii.Error, ValueError):
            return False
        if first:
            out.append(Decoded(first))
        out.append(Decoded(body))
        tail = bytes(piece[cut:])
        self.pieces = [tail] if tail else []
        self.held = len(tail)
        self.count += len(piece)
        self.line += len(piece)
        return True

    def _flush(self, out: list[Event]) -> None:
        text = b"".join(self.pieces)
        cut = len(text) & ~3
        if cut:
            out.append(Decoded(pybase64.b64decode(memoryview(text)[:cut], validate=True)))
        self.pieces = [text[cut:]] if cut < len(text) else []
        self.held = len(text) - cut

    def finish(self, end: int, out: list[Event]) -> None:
        valid = self.count % 4 != 1 and (self.pad == 0 or (self.pad <= 2 and (self.count + self.pad) % 4 == 0))
        if self.bare and (not valid or (self.count * 3 >> 2) < self.min_bytes):
            out.append(Dropped(self.offset))
            return
        if valid and self.held:
            self._flush(out)
            if self.held:
                text = b"".join(self.pieces)
                out.append(Decoded(pybase64.b64decode(text + b"=" * (-len(text) % 4), validate=True)))
        self.pieces = []
        out.append(Ended(self.offset, end, None if valid else "invalid_base64"))


class PercentDecoder:
    """Percent-decoding of a payload that arrives in pieces (an escape may be split between them)."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, raw: bytes) -> bytes:
        data = self.tail + raw if self.tail else raw
        k = data.rfind(b"%", max(0, len(data) - 2))
        if k >= 0:
            self.tail, data = data[k:], data[:k]
        else:
            self.tail = b""
        return unquote_to_bytes(data) if b"%" in data else data

    def close(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail  # an incomplete escape stays as it is, like WHATWG percent-decode leaves it


_JSON_ESCAPE = re.compile(rb"\\(?:u[0-9a-fA-F]{4}|[^u])|\\", re.DOTALL)
_JSON_SIMPLE = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


class JsonDecoder:
    """JSON string escapes of a payload that arrives in pieces: what an SVG written inside a JSON string
    needs before it is XML again. A malformed escape stays as it is."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, raw: bytes, final: bool = False) -> bytes:
        data = self.tail + raw if self.tail else raw
        self.tail = b""
        if b"\\" not in data:
            return data
        out: list[bytes] = []
        units: list[int] = []  # consecutive \\uXXXX escapes: a surrogate pair is two of them
        pos = 0
        for m in _JSON_ESCAPE.finditer(data):
            esc = m.group()
            partial = esc == b"\\" or (esc[1:2] == b"u" and 0xD800 <= int(esc[2:], 16) < 0xDC00)
            if partial and not final and len(data) - m.start() <= 12:  # the rest comes with the next piece
                out.append(_units(units) + data[pos : m.start()])
                self.tail = data[m.start() :]
                return b"".join(out)
            if m.start() > pos or esc[1:2] != b"u":
                out.append(_units(units) + data[pos : m.start()])
                units = []
            if esc[1:2] == b"u":
                units.append(int(esc[2:], 16))
            else:
                out.append(_JSON_SIMPLE.get(esc[1:], esc))
            pos = m.end()
        out.append(_units(units) + data[pos:])
        return b"".join(out)

    def close(self) -> bytes:
        return self.feed(b"", final=True)


def _units(units: list[int]) -> bytes:
    if not units:
        return b""
    text = b"".join(u.to_bytes(2, "big") for u in units).decode("utf-16-be", "replace")
    units.clear()
    return text.encode()


class TextPayload:
    """A payload that is not base64: percent-decoded up to the first terminator."""

    __slots__ = ("decoder", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.decoder = PercentDecoder()

    def feed(self, raw: bytes) -> Decoded:
        return Decoded(self.decoder.feed(raw))

    def close(self) -> Decoded:
        return Decoded(self.decoder.close())


class SvgPayload:
    """A non-base64 payload that began with `<svg` or an XML prolog: it ends right after its closing tag.

    Until the closing tag is found the text after the first usual terminator is only held back (up to
    the lookahead) and not decoded; when the tag never comes, the payload ends at that terminator and
    the held-back text is scanned again for other data URLs. Written inside a JSON string, its escapes
    are decoded first (SPEC 4.2).
    """

    __slots__ = ("decoder", "depth", "json", "offset", "pending", "pending_len", "term", "term_prior")

    def __init__(self, offset: int, depth: int, json: bool) -> None:
        self.offset = offset
        self.decoder = PercentDecoder()
        self.json = JsonDecoder() if json else None
        self.depth = depth  # open <svg> elements (0 while still in the prolog)
        self.term: int | None = None
        self.term_prior = b""  # the two bytes before term: what a scan from there needs to know
        self.pending: list[bytes] = []
        self.pending_len = 0

    def feed(self, raw: bytes) -> Decoded:
        return Decoded(self.decoder.feed(self.json.feed(raw) if self.json is not None else raw))

    def close(self) -> Decoded:
        rest = self.decoder.feed(self.json.close()) if self.json is not None else b""
        return Decoded(rest + self.decoder.close())


@functools.lru_cache(maxsize=64)
def _wrap_pattern(width: int, sep: bytes, escaped: bool) -> re.Pattern[bytes]:
    """Whole lines of base64 wrapped at width, each followed by its line break."""
    char = rb"(?:[A-Za-z0-9+/_-]|\\/)" if escaped else rb"[A-Za-z0-9+/_-]"
    return re.compile(rb"(?:" + char + rb"{%d}" % width + re.escape(sep) + rb")+")


def take_wrapped(st: Base64, buf: bytes, pos: int, sep: bytes, out: list[Event]) -> int:
    """After a continued line break at pos: take every further whole line of width W at once. The last
    line's break is left to the caller (what follows it decides)."""
    width, escaped = st.width, st.line_escaped
    st.line = 0
    st.line_escaped = False
    end = _wrapped_columns(st, buf, pos, width, sep, out) if not escaped else -1
    if end >= 0:
        st.line = width
        return end
    m = _wrap_pattern(width, sep, escaped).match(buf, pos)
    if m is None:
        return pos
    end = m.end() - len(sep)
    body = buf[pos:end].replace(sep, b"")
    if escaped:
        body = body.translate(None, b"\\")  # what is left of the backslashes started `\/`
    st.add(body, out)
    st.line = width
    st.line_escaped = escaped
    return end


def _wrapped_columns(st: Base64, buf: bytes, pos: int, width: int, sep: bytes, out: list[Event]) -> int:
    """The common case of `take_wrapped` without a regex: line breaks checked column by column with
    extended slices, the characters checked by decoding them. -1 when that does not work out."""
    unit = width + len(sep)
    k = min((len(buf) - pos) // unit, _WRAP_LINES)
    if k < 2:
        return -1
    for i in range(len(sep)):
        column = buf[pos + width + i : pos + k * unit : unit]
        k = min(k, len(column) - len(column.lstrip(sep[i : i + 1])))
    if k < 1:
        return -1
    end = pos + k * unit - len(sep)
    body = buf[pos:end].replace(sep, b"")
    if len(body) != k * width or not st.add_unchecked(memoryview(body), out):
        return -1
    return end


def read_text(st: TextPayload, buf: bytes, base: int, pos: int, final: bool, out: list[Event]) -> tuple[int, bool]:
    m = _TEXT_END.search(buf, pos)
    r = m.start() if m is not None else len(buf)
    if r > pos:
        out.append(st.feed(buf[pos:r]))
    if m is None and not final:
        return r, False
    out.append(st.close())
    out.append(Ended(st.offset, base + r, None))
    return r, True


def read_svg(
    st: SvgPayload, buf: bytes, base: int, pos: int, final: bool, lookahead: int, prior: bytes, out: list[Event]
) -> tuple[int, bool] | bytes:
    """Read on to the closing tag: (where scanning goes on, payload over?), or the held-back text to scan
    again when the closing tag never came (`prior`: the two bytes before buf)."""
    n = len(buf)
    limit = n if final else n - TAG_MAX
    if limit <= pos:
        return pos, False
    t = _TEXT_END.search(buf, pos, limit) if st.term is None else None
    looking_ahead = st.term if st.term is not None else base + t.start() if t is not None else None
    close = -1
    stop = False
    k = pos
    while True:
        m = _SVG_TAG.search(buf, k)
        if m is None or m.start() >= limit:
            break
        k = m.end()
        if m.group(2) is not None:
            # another SVG data URL past the terminator: this one did not close before it. Stopping
            # there keeps lookaheads disjoint, so a text of many unclosed SVGs stays linear.
            if looking_ahead is not None and base + m.start() >= looking_ahead:
                stop = True
                limit = m.start()  # hold back only what lies before it (no copy of the rest)
                break
        elif m.group(1) is None:
            st.depth += 1
        else:
            st.depth -= 1
            if st.depth == 0:
                close = k
                break
    upto = close if close >= 0 else limit
    if st.term is None:
        if t is not None and close < 0:
            out.append(st.feed(buf[pos : t.start()]))
            st.term = base + t.start()
            k = t.start()
            st.term_prior = buf[k - 2 : k] if k >= 2 else (prior + buf[:k])[-2:]
            st.pending = [buf[t.start() : upto]]
            st.pending_len = upto - t.start()
        else:
            out.append(st.feed(buf[pos:upto]))
    elif close >= 0:
        for held in st.pending:
            out.append(st.feed(held))
        st.pending = []
        out.append(st.feed(buf[pos:upto]))
    else:
        st.pending.append(buf[pos:upto])
        st.pending_len += upto - pos
    if close >= 0:
        out.append(st.close())
        out.append(Ended(st.offset, base + close, None))
        return close, True
    if not (final or stop) and st.pending_len <= lookahead:
        return upto, False
    out.append(st.close())
    if st.term is None:
        out.append(Ended(st.offset, base + upto, "unclosed"))
        return upto, True
    out.append(Ended(st.offset, st.term, "unclosed"))
    if st.term >= base:  # the held-back text is all in this buffer: scan on from the terminator, no copy
        return st.term - base, True
    return b"".join(st.pending) + buf[upto:]
