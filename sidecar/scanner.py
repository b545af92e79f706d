"""SPEC 4.2: finding data URLs and bare base64 images in a stream of bytes, in bounded memory."""

from __future__ import annotations

import binascii
import contextlib
import functools
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote_to_bytes

import pybase64

from sidecar.datauri import DEFAULT_MIME_TYPE, parse_mime_type, type_matches

__all__ = (
    "Decoded",
    "Dropped",
    "Ended",
    "Event",
    "Found",
    "Match",
    "Scanner",
    "scan_bytes",
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

# 0 for a payload character (standard and URL-safe base64), 1 for anything else
_PAYLOAD = bytes(0 if chr(i).isascii() and (chr(i).isalnum() or chr(i) in "+/-_") else 1 for i in range(256))
# the same, with the backslash of a JSON `\/` escape counted in
_PAYLOAD_ESC = bytes(0 if i == 0x5C else b for i, b in enumerate(_PAYLOAD))
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_BAD_ESCAPE = re.compile(rb"\\(?!/)")
_HEADER = re.compile(rb"((?:[^\s\"'()<>\\,]|\\/){0,256}),")
_TEXT_END = re.compile(rb"[\s\"'()<>\\]")
_SVG_START = re.compile(rb"<svg|%3csvg", re.IGNORECASE)
_SVG_TAG = re.compile(
    rb"(?:<|%3c)(?:((?:/|%2f|\\/)svg(?:[ \t\r\n]|%20|%09|%0a|%0d){0,16}(?:>|%3e))"  # a closing tag (group 1)
    rb"|svg(?=[\s/>]|%(?:20|09|0a|0d|2f|3e)))"  # or an opening one
    rb"|(data:image(?:/|\\/)svg\+xml)",  # or the start of another SVG data URL (group 2)
    re.IGNORECASE,
)
_TAG_MAX = 64  # longest tag _SVG_TAG can match, so a tag never straddles the part of a window kept back
# a JSON string whose content starts like the base64 of an image's magic bytes (a bare base64 candidate)
_BARE_START = re.compile(
    rb'"(?=[iRUQPAST/\\_7])(?:iVBORw0KGg|(?:/|\\/|_)9j(?:/|\\/|_)|R0lGOD[dl]h|UklGR|Qk|PHN2Zy|PD94bWw|77u/'
    rb"|AAABAA|SUkqAA|TU0AKg|AAAA[A-Za-z0-9+/_-]{2}Z0eXBh)"
)
# bytes kept back at the end of a window so every start found before it can be judged within the window:
# `data:`, a 256-byte media type, the comma and `%3Csvg`; a bare start's magic
_TAIL = 5 + 2 * 256 + 1 + 6 + 8
_MAGIC = 24  # longest text _BARE_START matches
_FLUSH = 1 << 16  # base64 characters gathered from small pieces before they are decoded together
_FAST_MIN = 256  # shortest stretch worth the fast path
_STRIDE = 16
_STD_TAIL = re.compile(rb"[A-Za-z0-9+/]{0,3}")
_DATA_COLON = re.compile(rb":(?<=[dD][aA][tT][aA]:)")  # the literal ':' first lets sre skip ahead in C


class _Hyperscan:
    """`data:` in any case found by Hyperscan (SIMD): ~3.6 GB/s on JSON-shaped text here, where sre's
    search for the colon reaches ~1.3 GB/s. One database per thread (a scratch space is not shared)."""

    def __init__(self, hs: Any) -> None:
        self.hs = hs
        self.local = threading.local()

    def _db(self) -> Any:
        db = getattr(self.local, "db", None)
        if db is None:
            db = self.hs.Database(mode=self.hs.HS_MODE_BLOCK)
            db.compile(expressions=[b"data:"], ids=[0], elements=1, flags=[self.hs.HS_FLAG_CASELESS])
            self.local.db = db
        return db

    def find(self, buf: bytes, start: int, end: int) -> int:
        """Index of the first `data:` (any case) wholly inside buf[start:end], or -1."""
        hit: list[int] = []

        def on_match(_id: int, _from: int, to: int, _flags: int, _ctx: object) -> bool:
            hit.append(to)
            return True  # the first one is enough: stop

        with contextlib.suppress(self.hs.ScanTerminated):
            self._db().scan(memoryview(buf)[start:end], match_event_handler=on_match)
        return start + hit[0] - 5 if hit else -1


@functools.cache
def _hyperscan() -> _Hyperscan | None:
    """Loaded on first use (~5 MiB): a daemon that never scans a long text does not pay for it."""
    try:
        import hyperscan
    except ImportError:  # not on every platform: sre does the same, slower
        return None
    return _Hyperscan(hyperscan)


_WRAP_MAX = 4096  # longest wrapped line the fast path compiles a pattern for
_WRAP_LINES = 512  # wrapped lines taken at once (more would slice past the payload for nothing)

_SLASH, _BSL, _EQ, _LF, _CR, _QUOTE, _PCT = b"/"[0], b"\\"[0], b"="[0], b"\n"[0], b"\r"[0], b'"'[0], b"%"[0]


@functools.lru_cache(maxsize=256)
def _header(raw: bytes) -> tuple[bool, str, str]:
    """(base64?, serialized type, essence) of a data URL's media type as the Fetch processor reads it."""
    header = raw.replace(b"\\/", b"/").decode("latin-1")
    is_base64 = header[-7:].lower() == ";base64"
    mime = header[:-7] if is_base64 else header
    if mime.startswith(";"):
        mime = "text/plain" + mime
    parsed = parse_mime_type(mime)
    return (is_base64, *parsed) if parsed is not None else (is_base64, DEFAULT_MIME_TYPE, "text/plain")


@functools.lru_cache(maxsize=64)
def _wrap_pattern(width: int, sep: bytes, escaped: bool) -> re.Pattern[bytes]:
    """Whole lines of base64 wrapped at width, each followed by its line break."""
    char = rb"(?:[A-Za-z0-9+/_-]|\\/)" if escaped else rb"[A-Za-z0-9+/_-]"
    return re.compile(rb"(?:" + char + rb"{%d}" % width + re.escape(sep) + rb")+")


class _Base64:
    """A base64 payload being read: characters are normalized, then decoded in large aligned pieces."""

    __slots__ = ("bare", "count", "held", "in_pad", "line", "line_escaped", "min_bytes", "offset", "pad", "pieces")

    def __init__(self, offset: int, bare: bool, min_bytes: int = 0) -> None:
        self.offset = offset
        self.bare = bare
        self.min_bytes = min_bytes  # a bare string decoding to fewer bytes is dropped
        self.pieces: list[bytes | memoryview] = []  # payload characters not decoded yet
        self.held = 0  # characters in pieces
        self.count = 0  # payload characters so far, '=' not counted
        self.pad = 0
        self.in_pad = False
        self.line = 0  # payload characters since the last line break
        self.line_escaped = False  # the current line had a `\/` escape

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


class _PercentDecoder:
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


class _Text:
    """A payload that is not base64: percent-decoded up to the first terminator."""

    __slots__ = ("decoder", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.decoder = _PercentDecoder()


class _Svg:
    """A non-base64 payload that began with `<svg`: it ends right after its closing tag.

    Until the closing tag is found the text after the first usual terminator is only held back (up to
    the lookahead) and not decoded; when the tag never comes, the payload ends at that terminator and
    the held-back text is scanned again for other data URLs.
    """

    __slots__ = ("decoder", "depth", "offset", "pending", "pending_len", "term")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.decoder = _PercentDecoder()
        self.depth = 1
        self.term: int | None = None
        self.pending: list[bytes] = []
        self.pending_len = 0


_State: TypeAlias = _Base64 | _Text | _Svg


class _Window:
    """One buffer being scanned, with views of it computed once, on first need."""

    __slots__ = ("bare_hi", "bare_lo", "bare_res", "buf", "colons", "esc", "fast", "next_data", "payload", "sampled")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.payload: bytes | None = None
        self.esc: bytes | None = None
        self.sampled: bytes | None = None
        # ':' is found with memchr while it is rare; JSON is full of them, so past this budget the
        # window is searched with a regular expression instead (no Python code per colon)
        self.colons = 16 + (len(buf) >> 16)
        self.fast = 2  # fast-path attempts that may still fail in this window
        self.next_data = -2  # -2: not searched yet; -1: none before the limit
        # [bare_lo, bare_hi) was searched for bare candidates: bare_res is the first, or -1
        self.bare_lo = self.bare_hi = len(buf) + 1
        self.bare_res = -1

    def payload_class(self) -> bytes:
        if self.payload is None:
            self.payload = self.buf.translate(_PAYLOAD)
        return self.payload

    def escape_class(self) -> bytes:
        if self.esc is None:
            self.esc = self.buf.translate(_PAYLOAD_ESC)
        return self.esc

    def find_data(self, pos: int, limit: int) -> int:
        """Index of the first `data:` (any case) starting in [pos, limit), or -1."""
        buf = self.buf
        c = pos + 3
        while self.colons > 0:
            c = buf.find(b":", c + 1, limit + 4)
            if c < 0:
                return -1
            if buf[c - 4 : c].lower() == b"data":
                return c - 4
            self.colons -= 1
        lo = c - 3  # a `data:` whose colon is past c; c >= pos + 3, so lo >= pos >= 0
        hs = _hyperscan()
        if hs is not None:
            return hs.find(buf, lo, limit + 4)
        m = _DATA_COLON.search(buf, c + 1, limit + 4)
        return m.start() - 4 if m is not None else -1

    def bare(self, pos: int, upto: int, run: int) -> int:
        """`find_bare` remembering what was searched: a search stops at the next `data:`, and after that
        data URL's payload goes on from there, so payload text is not searched for quotes."""
        if self.bare_lo <= pos:
            if self.bare_res >= pos:
                return self.bare_res if self.bare_res < upto else -1
            if self.bare_res < 0 and self.bare_hi >= upto:
                return -1
            start = max(pos, self.bare_hi) if self.bare_res < 0 else pos
        else:
            start = pos
        self.bare_lo, self.bare_hi = pos, upto
        self.bare_res = self.find_bare(start, upto, run) if start < upto else -1
        return self.bare_res

    def find_bare(self, pos: int, limit: int, run: int) -> int:
        """Index of the first bare candidate's opening quote in [pos, limit), or -1.

        Only strings of at least `run` payload characters matter (`run` 0: all of them). For long
        ones the window is sampled every _STRIDE bytes first: such a string covers many consecutive
        samples, while ordinary text and JSON almost never do, so most of the window is skipped at
        memchr speed and quotes are only looked at where a long stretch of payload samples begins.
        """
        buf = self.buf
        k = run // _STRIDE - 1
        if k < 8:
            m = _BARE_START.search(buf, pos, limit + _MAGIC)
            return m.start() if m is not None and m.start() < limit else -1
        # a string starting this close to the end may not show k samples yet: check it exactly
        exact_from = max(pos, min(limit, len(buf) - (k + 2) * _STRIDE - _TAIL))
        if self.sampled is None:
            self.sampled = buf[::_STRIDE].translate(_PAYLOAD_ESC)
        sampled = self.sampled
        needle = b"\x00" * k
        j = sampled.find(needle, -(-pos // _STRIDE))
        while j >= 0 and (j - 1) * _STRIDE < exact_from:
            # samples [j, end) are all payload characters; a long run among them starts after sample
            # j-1 and early enough to cover k more samples, and its opening quote is right before it
            end = sampled.find(b"\x01", j)
            if end < 0:
                end = len(sampled)
            hi = min((end - k) * _STRIDE, exact_from)
            q = buf.find(b'"', max(pos, (j - 1) * _STRIDE), hi)
            while q >= 0:
                if _BARE_START.match(buf, q):
                    return q
                q = buf.find(b'"', q + 1, hi)
            j = sampled.find(needle, end)
        m = _BARE_START.search(buf, exact_from, limit + _MAGIC)
        return m.start() if m is not None and m.start() < limit else -1


class Scanner:
    """Finds data URLs (and bare base64 images in JSON strings) in bytes fed in chunks of any size.

    `feed()` and `close()` return events in text order: `Found`, then `Decoded` pieces, then `Ended`
    (or `Dropped` for a bare candidate that turned out not to be one). Offsets are byte offsets in
    the whole stream. Memory stays bounded whatever the sizes: only a few hundred bytes of text, one
    block of base64 and the SVG lookahead are ever held.
    """

    def __init__(
        self,
        types: Iterable[str] = ("image/*",),
        *,
        bare_images: bool = True,
        min_bare_bytes: int = 0,
        svg_lookahead: int = 4 << 20,
    ) -> None:
        """`types`: `--data-url-types` patterns. Bare base64 strings are only looked for when
        `bare_images`; those decoding to fewer than `min_bare_bytes` bytes are dropped (and the
        minimum lets the search skip text that cannot hold one). An SVG's closing tag is looked for
        up to `svg_lookahead` bytes past its first usual terminator.
        """
        self.types = tuple(t.strip().lower() for t in types)
        self.bare_images = bare_images
        self._bare_min = max(0, min_bare_bytes)
        self._bare_run = 4 * self._bare_min // 3  # fewest payload characters such a string has
        self.svg_lookahead = svg_lookahead
        self._guess = _QUOTE  # the byte that ended the last payload: the next one likely ends the same way
        self._carry = b""
        self._base = 0  # stream offset of _carry[0]
        self._state: _State | None = None
        self._closed = False

    def feed(self, chunk: bytes) -> list[Event]:
        """Scan the next bytes of the stream."""
        if self._closed:
            raise ValueError("the scanner is closed")
        return self._run(bytes(chunk), final=False)

    def close(self) -> list[Event]:
        """The stream is over: finish whatever payload is open."""
        if self._closed:
            return []
        out = self._run(b"", final=True)
        self._closed = True
        return out

    def _run(self, chunk: bytes, final: bool) -> list[Event]:
        out: list[Event] = []
        buf = self._carry + chunk if self._carry else chunk
        base = self._base
        w = _Window(buf)
        pos = 0
        while True:
            st = self._state
            if st is None:
                limit = len(buf) if final else len(buf) - _TAIL
                if pos >= limit:
                    break
                pos = self._next(w, base, pos, limit, final, out)
                continue
            if isinstance(st, _Base64):
                pos, done = self._base64(st, w, base, pos, final, out)
                if done and not st.bare and pos < len(buf) and _PAYLOAD[buf[pos]]:
                    self._guess = buf[pos]
            elif isinstance(st, _Text):
                pos, done = self._text(st, buf, base, pos, final, out)
            else:
                res = self._svg(st, buf, base, pos, final, out)
                if isinstance(res, tuple):
                    pos, done = res
                else:  # gave up on the closing tag: scan the held-back text again, from the terminator
                    self._state = None
                    assert st.term is not None
                    buf, base, pos = res, st.term, 0
                    w = _Window(buf)
                    continue
            if not done:
                break
            self._state = None
        self._carry = buf[pos:]
        self._base = base + pos
        return out

    # ---- finding starts ------------------------------------------------------------------

    def _next(self, w: _Window, base: int, pos: int, limit: int, final: bool, out: list[Event]) -> int:
        """Handle the next start before limit; return where scanning goes on."""
        if w.next_data == -2 or 0 <= w.next_data < pos:
            w.next_data = w.find_data(pos, limit)
        d = w.next_data
        b = -1
        if self.bare_images:
            b = w.bare(pos, d if d >= 0 else limit, self._bare_run)
        if d < 0 and b < 0:
            return limit
        if b < 0 or 0 <= d < b:
            return self._data_url(w.buf, base, d, out)
        self._state = _Base64(base + b + 1, bare=True, min_bytes=self._bare_min)
        out.append(Found(base + b + 1, True, "", "", True))
        return b + 1

    def _data_url(self, buf: bytes, base: int, i: int, out: list[Event]) -> int:
        m = _HEADER.match(buf, i + 5)
        if m is None:
            return i + 5
        is_base64, serialized, essence = _header(m.group(1))
        if not type_matches(essence, self.types):
            return i + 5
        out.append(Found(base + i, False, serialized, essence, is_base64))
        pos = m.end()
        if is_base64:
            self._state = _Base64(base + i, bare=False)
            return pos
        svg = _SVG_START.match(buf, pos)
        if svg is None:
            self._state = _Text(base + i)
            return pos
        st = _Svg(base + i)
        opening = buf[pos : svg.end()]
        out.append(Decoded(st.decoder.feed(opening)))
        self._state = st
        return svg.end()

    # ---- reading payloads ------------------------------------------------------------------

    def _base64(self, st: _Base64, w: _Window, base: int, pos: int, final: bool, out: list[Event]) -> tuple[int, bool]:
        buf = w.buf
        n = len(buf)
        while True:
            if st.in_pad:
                while pos < n and buf[pos] == _EQ:
                    st.pad += 1
                    pos += 1
                if not st.bare and pos < n and buf[pos] == _PCT:
                    # `%3D` is '=' in a percent-encoded URL; keep it inside the payload it pads
                    if pos + 3 > n and not final:
                        return pos, False
                    if buf[pos : pos + 3].lower() == b"%3d":
                        st.pad += 1
                        pos += 3
                        continue
                if pos >= n and not final:
                    return pos, False
                if st.bare:
                    if pos < n and buf[pos] == _QUOTE:
                        st.finish(base + pos, out)
                        return pos + 1, True
                    out.append(Dropped(st.offset))
                    return pos, True
                st.finish(base + pos, out)
                return pos, True
            r = self._fast(st, w, pos, out) if w.fast > 0 else -1
            if r < 0:
                r = w.payload_class().find(b"\x01", pos)
                if r < 0:
                    r = n
                if r > pos:
                    st.add(buf[pos:r], out)
            pos = r
            if pos >= n:
                if not final:
                    return pos, False
                if st.bare:
                    out.append(Dropped(st.offset))
                else:
                    st.finish(base + pos, out)
                return pos, True
            c = buf[pos]
            if c == _BSL:
                if pos + 1 >= n and not final:
                    return pos, False
                nxt = buf[pos + 1] if pos + 1 < n else -1
                if nxt == _SLASH:
                    j = self._escaped_run(w, pos)
                    piece = buf[pos:j].translate(None, b"\\")  # every backslash here starts a `\/`
                    st.add(piece, out)
                    st.line_escaped = True
                    pos = j
                    continue
                if not st.bare and nxt in (b"n"[0], b"r"[0]):
                    if pos + 5 > n and not final:
                        return pos, False
                    sep = b"\\n" if nxt == b"n"[0] else b"\\r\\n" if buf[pos : pos + 4] == b"\\r\\n" else b""
                    if sep:
                        go = self._continues(st, w, pos + len(sep), final)
                        if go is None:
                            return pos, False
                        if go:
                            pos = Scanner._wrapped(st, w, pos + len(sep), sep, out)
                            continue
            elif c == _EQ:
                st.in_pad = True
                continue
            elif c == _PCT and not st.bare:
                if pos + 3 > n and not final:
                    return pos, False
                if buf[pos : pos + 3].lower() == b"%3d":  # percent-encoded padding
                    st.in_pad = True
                    continue
            elif not st.bare and c in (_LF, _CR):
                if pos + 3 > n and not final:
                    return pos, False
                sep = b"\n" if c == _LF else b"\r\n" if buf[pos + 1 : pos + 2] == b"\n" else b""
                if sep:
                    go = self._continues(st, w, pos + len(sep), final)
                    if go is None:
                        return pos, False
                    if go:
                        pos = Scanner._wrapped(st, w, pos + len(sep), sep, out)
                        continue
            elif st.bare and c == _QUOTE:
                st.finish(base + pos, out)
                return pos + 1, True
            if st.bare:
                out.append(Dropped(st.offset))
            else:
                st.finish(base + pos, out)
            return pos, True

    def _fast(self, st: _Base64, w: _Window, pos: int, out: list[Event]) -> int:
        """Read a run of payload characters without classifying the window byte by byte; -1 if it cannot.

        The run is guessed to end where the last payload ended (memchr), and decoding it with
        validation checks the guess: the run ends right there when every character before it is
        standard base64 ('=' padding aside). Anything else (URL-safe characters, escapes, line
        breaks, another terminator) makes the check fail and the caller take the exact path.
        """
        buf = w.buf
        q = buf.find(_QUOTE if st.bare else self._guess, pos)
        if q < 0:
            q = len(buf)
        e = q
        while e > pos and buf[e - 1] == _EQ:
            e -= 1
        if e - pos < _FAST_MIN:
            return -1
        if not st.add_unchecked(memoryview(buf)[pos:e], out):
            w.fast -= 1
            return -1
        return e

    @staticmethod
    def _escaped_run(w: _Window, pos: int) -> int:
        """End of the stretch from pos of payload characters and `\\/` escapes (pos is at a `\\/`)."""
        buf = w.buf
        r = w.escape_class().find(b"\x01", pos)
        if r < 0:
            r = len(buf)
        bad = _BAD_ESCAPE.search(buf, pos, r)
        return bad.start() if bad is not None else r

    @staticmethod
    def _continues(st: _Base64, w: _Window, q: int, final: bool) -> bool | None:
        """At a line break: whether the payload goes on at q (None: the window ends too soon to tell)."""
        if st.line < 60 or st.line % 4:
            return False
        buf = w.buf
        if q >= len(buf):
            return None if not final else False
        if _PAYLOAD[buf[q]] == 0:
            return True
        if buf[q] == _BSL:
            if q + 1 >= len(buf):
                return None if not final else False
            return buf[q + 1] == _SLASH
        return False

    @staticmethod
    def _wrapped(st: _Base64, w: _Window, pos: int, sep: bytes, out: list[Event]) -> int:
        """After a continued line break at pos: take every further whole line of the same width at once."""
        width, escaped = st.line, st.line_escaped
        st.line = 0
        st.line_escaped = False
        if width > _WRAP_MAX:
            return pos
        end = Scanner._wrapped_columns(st, w, pos, width, sep, out) if not escaped else -1
        if end >= 0:
            st.line = width
            return end
        m = _wrap_pattern(width, sep, escaped).match(w.buf, pos)
        if m is None:
            return pos
        # the last line's break is judged by the ordinary path (what follows it decides)
        end = m.end() - len(sep)
        body = w.buf[pos:end].replace(sep, b"")
        if escaped:
            body = body.translate(None, b"\\")  # what is left of the backslashes started `\/`
        st.add(body, out)
        st.line = width
        st.line_escaped = escaped
        return end

    @staticmethod
    def _wrapped_columns(st: _Base64, w: _Window, pos: int, width: int, sep: bytes, out: list[Event]) -> int:
        """The common case of `_wrapped` without a regex: line breaks checked column by column with
        extended slices, the characters checked by decoding them. -1 when that does not work out."""
        buf = w.buf
        unit = width + len(sep)
        k = min((len(buf) - pos) // unit, _WRAP_LINES)
        if k < 2:
            return -1
        for i in range(len(sep)):
            column = buf[pos + width + i : pos + k * unit : unit]
            k = min(k, len(column) - len(column.lstrip(sep[i : i + 1])))
        if k < 1:
            return -1
        end = pos + k * unit - len(sep)  # the last break is judged by the ordinary path
        body = buf[pos:end].replace(sep, b"")
        if len(body) != k * width or not st.add_unchecked(memoryview(body), out):
            return -1
        return end

    @staticmethod
    def _text(st: _Text, buf: bytes, base: int, pos: int, final: bool, out: list[Event]) -> tuple[int, bool]:
        m = _TEXT_END.search(buf, pos)
        r = m.start() if m is not None else len(buf)
        if r > pos:
            out.append(Decoded(st.decoder.feed(buf[pos:r])))
        if m is None and not final:
            return r, False
        out.append(Decoded(st.decoder.close()))
        out.append(Ended(st.offset, base + r, None))
        return r, True

    def _svg(
        self, st: _Svg, buf: bytes, base: int, pos: int, final: bool, out: list[Event]
    ) -> tuple[int, bool] | bytes:
        n = len(buf)
        limit = n if final else n - _TAG_MAX
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
                out.append(Decoded(st.decoder.feed(buf[pos : t.start()])))
                st.term = base + t.start()
                st.pending = [buf[t.start() : upto]]
                st.pending_len = upto - t.start()
            else:
                out.append(Decoded(st.decoder.feed(buf[pos:upto])))
        elif close >= 0:
            for held in st.pending:
                out.append(Decoded(st.decoder.feed(held)))
            st.pending = []
            out.append(Decoded(st.decoder.feed(buf[pos:upto])))
        else:
            st.pending.append(buf[pos:upto])
            st.pending_len += upto - pos
        if close >= 0:
            out.append(Decoded(st.decoder.close()))
            out.append(Ended(st.offset, base + close, None))
            return close, True
        if not (final or stop) and st.pending_len <= self.svg_lookahead:
            return upto, False
        out.append(Decoded(st.decoder.close()))
        if st.term is None:
            out.append(Ended(st.offset, base + upto, "unclosed"))
            return upto, True
        out.append(Ended(st.offset, st.term, "unclosed"))
        if st.term >= base:  # the held-back text is all in this buffer: scan on from the terminator, no copy
            return st.term - base, True
        return b"".join(st.pending) + buf[upto:]


@dataclass(frozen=True)
class Match:
    """One payload found by `scan_bytes`, assembled from its events."""

    offset: int
    end: int
    bare: bool
    mime_type: str
    essence: str
    body: bytes
    error: str | None


def scan_bytes(
    data: bytes,
    types: Iterable[str] = ("image/*",),
    *,
    bare_images: bool = True,
    min_bare_bytes: int = 0,
    splits: Iterable[int] = (),
) -> list[Match]:
    """Scan bytes held in memory, fed in pieces cut at `splits`, and assemble every payload found."""
    sc = Scanner(types, bare_images=bare_images, min_bare_bytes=min_bare_bytes)
    events: list[Event] = []
    start = 0
    for cut in [*sorted(set(splits)), len(data)]:
        events += sc.feed(data[start:cut])
        start = max(start, cut)
    events += sc.close()
    return list(_assemble(events))


def _assemble(events: Iterable[Event]) -> Iterator[Match]:
    found: Found | None = None
    parts: list[bytes] = []
    for ev in events:
        if isinstance(ev, Found):
            found, parts = ev, []
        elif isinstance(ev, Decoded):
            parts.append(ev.data)
        elif isinstance(ev, Ended):
            assert found is not None
            yield Match(ev.offset, ev.end, found.bare, found.mime_type, found.essence, b"".join(parts), ev.error)
            found = None
        else:
            found = None
