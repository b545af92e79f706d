"""SPEC 4.2: data URLs and bare base64 images in a stream of bytes, in bounded memory (the state machine)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sidecar.datauri import type_matches
from sidecar.scanfind import HEADER, LIST_KEY, PAYLOAD, SVG_PEEK, TAIL, Window, header
from sidecar.scanpayload import (
    SVG_START,
    Base64,
    Decoded,
    Dropped,
    Ended,
    Event,
    Found,
    SvgPayload,
    TextPayload,
    read_svg,
    read_text,
    take_wrapped,
)

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

_BAD_ESCAPE = re.compile(rb"\\(?!/)")
_FAST_MIN = 256  # shortest stretch worth the fast path
_BSL, _EQ, _QUOTE, _PCT = b"\\"[0], b"="[0], b'"'[0], b"%"[0]
# line breaks: LF, CRLF and their JSON escapes; in a bare string the escapes, and between the line
# strings of a Jupyter output's list `\n",` then whitespace and the next string's quote
_BREAK = re.compile(rb"\r?\n|\\r\\n|\\n")
_BARE_BREAK = re.compile(rb'\\n(?:",[ \t\r\n]{0,64}")?')
# the next string of such a list: a line of at most 120 characters closing the string, then `,` or `]`
# (a dict key after the output, `"text/plain":`, is not one)
_LIST_LINE = re.compile(rb'[A-Za-z0-9+/=_-]{1,120}(?:\\n)?"[ \t\r\n]{0,64}[,\]]')
_LOOK = 200  # bytes past the end of a payload's characters that decide what the break or the end is


class Scanner:
    """Finds data URLs (and bare base64 images in JSON strings) in bytes fed in chunks of any size.

    `scanfind` finds where payloads may start, `scanpayload` reads one; this class moves between them.

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
        self._prior = b"  "  # the two bytes before _carry (is a start escaped, or inside a JSON string?)
        self._base = 0  # stream offset of _carry[0]
        self._state: Base64 | TextPayload | SvgPayload | None = None
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
        w = Window(buf)
        pos = 0
        while True:
            st = self._state
            if st is None:
                limit = len(buf) if final else len(buf) - TAIL
                if pos >= limit:
                    break
                pos = self._next(w, base, pos, limit, final, out)
                continue
            if isinstance(st, Base64):
                pos, done = self._base64(st, w, base, pos, final, out)
                if done and not st.bare and pos < len(buf) and PAYLOAD[buf[pos]]:
                    self._guess = buf[pos]
            elif isinstance(st, TextPayload):
                pos, done = read_text(st, buf, base, pos, final, out)
            else:
                res = read_svg(st, buf, base, pos, final, self.svg_lookahead, self._prior, out)
                if isinstance(res, tuple):
                    pos, done = res
                else:  # gave up on the closing tag: scan the held-back text again, from the terminator
                    self._state = None
                    assert st.term is not None
                    buf, base, pos = res, st.term, 0
                    self._prior = st.term_prior
                    w = Window(buf)
                    continue
            if not done:
                break
            self._state = None
        self._prior = (self._prior + buf[max(0, pos - 2) : pos])[-2:]
        self._carry = buf[pos:]
        self._base = base + pos
        return out

    # ---- finding starts ------------------------------------------------------------------

    def _next(self, w: Window, base: int, pos: int, limit: int, final: bool, out: list[Event]) -> int:
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
            if w.buf[d] != _QUOTE:
                return self._data_url(w.buf, base, d, out)
            key = LIST_KEY.match(w.buf, d)  # `"image/png": [`, a Jupyter output as a list of lines?
            if key is None or not self.bare_images:
                return d + 1
            b = key.end()
        # `\\"iVBOR…\\"`: a JSON string escaped inside another one (Claude Code's .json tool results, API logs)
        escaped = (w.buf[b - 1] if b else self._prior[-1]) == _BSL
        self._state = Base64(base + b + 1, bare=True, min_bytes=self._bare_min, quote=b'\\"' if escaped else b'"')
        out.append(Found(base + b + 1, True, "", "", True))
        return b + 1

    def _data_url(self, buf: bytes, base: int, i: int, out: list[Event]) -> int:
        m = HEADER.match(buf, i + 5)
        if m is None:
            return i + 5
        is_base64, serialized, essence = header(m.group(1))
        if not type_matches(essence, self.types):
            return i + 5
        out.append(Found(base + i, False, serialized, essence, is_base64))
        pos = m.end()
        if is_base64:
            self._state = Base64(base + i, bare=False)
            return pos
        svg = SVG_START.match(buf, pos)
        if svg is None:
            self._state = TextPayload(base + i)
            return pos
        # Inside a JSON string (an unescaped `"` before `data:`) the SVG's JSON escapes are decoded; so they
        # are when its start shows an escaped attribute quote (a data URL in the middle of a JSON string).
        before = (self._prior + buf[:i])[-2:] if i < 2 else buf[i - 2 : i]
        quoted = before[-1:] == b'"' and before[:1] != b"\\"
        st = SvgPayload(base + i, 1 if svg.group(1) else 0, quoted or b'=\\"' in buf[pos : pos + SVG_PEEK])
        out.append(st.feed(buf[pos : svg.end()]))
        self._state = st
        return svg.end()

    # ---- reading payloads ------------------------------------------------------------------

    def _base64(self, st: Base64, w: Window, base: int, pos: int, final: bool, out: list[Event]) -> tuple[int, bool]:
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
                if pos + _LOOK > n and not final:
                    return pos, False
                return self._end(st, buf, base, pos, out)
            r = self._fast(st, w, pos, out) if w.fast > 0 else -1
            if r < 0:
                r = w.payload_class().find(b"\x01", pos)
                if r < 0:
                    r = n
                if r > pos:
                    st.add(buf[pos:r], out)
            pos = r
            if pos + _LOOK > n and not final:
                return pos, False
            if pos >= n:
                return self._end(st, buf, base, pos, out)
            c = buf[pos]
            if c == _BSL and buf[pos + 1 : pos + 2] == b"/":
                j = self._escaped_run(w, pos)
                st.add(buf[pos:j].translate(None, b"\\"), out)  # every backslash here starts a `\/`
                st.line_escaped = True
                pos = j
                continue
            if c == _EQ:
                st.in_pad = True
                continue
            if c == _PCT and not st.bare and buf[pos : pos + 3].lower() == b"%3d":  # percent-encoded padding
                st.in_pad = True
                continue
            sep = self._line_break(st, buf, pos)
            if sep:
                pos = take_wrapped(st, buf, pos + len(sep), sep, out)
                continue
            return self._end(st, buf, base, pos, out)

    @staticmethod
    def _end(st: Base64, buf: bytes, base: int, pos: int, out: list[Event]) -> tuple[int, bool]:
        """The payload's characters stop at pos. A bare string must close right there (after the one `\\n`
        a Jupyter output ends with, if any); anything else means it was not a pure base64 string."""
        if not st.bare:
            st.finish(base + pos, out)
            return pos, True
        q = pos + 2 if buf[pos : pos + 2] == b"\\n" else pos
        if buf.startswith(st.quote, q):
            st.finish(base + q, out)
            return q + len(st.quote), True
        out.append(Dropped(st.offset))
        return pos, True

    @staticmethod
    def _line_break(st: Base64, buf: bytes, pos: int) -> bytes:
        """The line break at pos when the payload goes on after it (SPEC 4.2), else b"".

        Only base64 wrapped at a fixed width W goes on: its first line carried W characters (a multiple
        of 4 from 60 to 120), every line since exactly W, and the next line starts with a payload
        character and is not another data URL. A bare JSON string breaks only at `\\n` escapes, and a
        Jupyter output split into a list of line strings breaks at `\\n", "`.
        """
        line = st.line
        if not (line == st.width if st.width else 60 <= line <= 120 and not line % 4):
            return b""
        m = (_BARE_BREAK if st.bare else _BREAK).match(buf, pos)
        if m is None:
            return b""
        q = m.end()
        c = buf[q] if q < len(buf) else _EQ
        if (PAYLOAD[c] and not (c == _BSL and buf[q + 1 : q + 2] == b"/")) or buf[q : q + 5].lower() == b"data:":
            return b""
        if m.end() - pos > 2 and _LIST_LINE.match(buf, q) is None:
            return b""
        st.width = line
        return m.group()

    def _fast(self, st: Base64, w: Window, pos: int, out: list[Event]) -> int:
        """Read a run of payload characters without classifying the window byte by byte; -1 if it cannot.

        The run is guessed to end where the last payload ended (memchr), and decoding it with
        validation checks the guess: the run ends right there when every character before it is
        standard base64 ('=' padding aside). Anything else (URL-safe characters, escapes, line
        breaks, another terminator) makes the check fail and the caller take the exact path.
        """
        buf = w.buf
        q = buf.find(st.quote if st.bare else self._guess, pos)
        if q < 0:
            q = len(buf)
        e = q - 2 if st.bare and buf[q - 2 : q] == b"\\n" else q  # a Jupyter output's last `\n`
        while e > pos and buf[e - 1] == _EQ:
            e -= 1
        if e - pos < _FAST_MIN:
            return -1
        if not st.add_unchecked(memoryview(buf)[pos:e], out):
            w.fast -= 1
            return -1
        return e

    @staticmethod
    def _escaped_run(w: Window, pos: int) -> int:
        """End of the stretch from pos of payload characters and `\\/` escapes (pos is at a `\\/`)."""
        buf = w.buf
        r = w.escape_class().find(b"\x01", pos)
        if r < 0:
            r = len(buf)
        bad = _BAD_ESCAPE.search(buf, pos, r)
        return bad.start() if bad is not None else r


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
