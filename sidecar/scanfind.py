"""SPEC 4.2, searching: where data URLs and bare base64 images may start in a window of text."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from typing import Any

from sidecar.datauri import DEFAULT_MIME_TYPE, parse_mime_type

__all__ = (
    "BARE_START",
    "HEADER",
    "LIST_KEY",
    "PAYLOAD",
    "PAYLOAD_ESC",
    "SVG_PEEK",
    "TAIL",
    "Window",
    "header",
    "hyperscan",
)

# 0 for a payload character (standard and URL-safe base64), 1 for anything else
PAYLOAD = bytes(0 if chr(i).isascii() and (chr(i).isalnum() or chr(i) in "+/-_") else 1 for i in range(256))
# the same, with the backslash of a JSON `\/` escape counted in
PAYLOAD_ESC = bytes(0 if i == 0x5C else b for i, b in enumerate(PAYLOAD))
HEADER = re.compile(rb"((?:[^\s\"'()<>\\,]|\\/){0,256}),")
# a JSON string whose content starts like the base64 of an image's magic bytes (a bare base64 candidate)
BARE_START = re.compile(
    rb'"(?=[iRUQPAST/\\_7])(?:iVBORw0KGg|(?:/|\\/|_)9j(?:/|\\/|_)|R0lGOD[dl]h|UklGR|Qk|PHN2Zy|PD94bWw|77u/'
    rb"|AAABAA|SUkqAA|TU0AKg|AAAA[A-Za-z0-9+/_-]{2}Z0eXBh)"
)
# `"image/png": [` before a bare candidate: a Jupyter output as a list of line strings (nbformat writes
# the key as it is here; find_data finds it in the same pass as `data:`)
_IMAGE_KEYS = (b'"image/png":', b'"image/gif":', b'"image/jpeg":')  # the one spelling of the keys
LIST_KEY = re.compile(rb'"image/(?:png|gif|jpeg)":[ \t\r\n]{0,64}\[[ \t\r\n]{0,64}(?=' + BARE_START.pattern + rb")")
# bytes kept back at the end of a window so every start found before it can be judged within the window:
# `data:`, a 256-byte media type, the comma and the start of an SVG (its escapes are judged on SVG_PEEK
# bytes); a bare start's magic
SVG_PEEK = 256
TAIL = 5 + 2 * 256 + 1 + SVG_PEEK + 8
_MAGIC = 24  # longest text BARE_START matches
_STRIDE = 16
# the literal ':' first lets sre skip ahead in C (a lookbehind alternation per key made it ~2x slower:
# the keys are looked for apart, with bytes.find)
_DATA_COLON = re.compile(rb":(?<=[dD][aA][tT][aA]:)")
_LIST_KEY_HS = b"|".join(re.escape(k) for k in _IMAGE_KEYS)
_KEY_MAX = max(len(k) for k in _IMAGE_KEYS)


def _key_start(buf: bytes, colon: int) -> int:
    """Where the `"image/…":` key ending at this colon starts, or -1."""
    for key in _IMAGE_KEYS:
        if buf[colon + 1 - len(key) : colon + 1] == key:
            return colon + 1 - len(key)
    return -1


def _find_key(buf: bytes, start: int, end: int) -> int:
    """Index of the first `"image/…":` key starting in [start, end), or -1."""
    stop = end + len(b'"image/') - 1  # bytes.find wants the whole needle before its end
    k = buf.find(b'"image/', start, stop)
    while k >= 0 and not buf.startswith(_IMAGE_KEYS, k):
        k = buf.find(b'"image/', k + 1, stop)
    return k


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
            db.compile(
                expressions=[b"data:", _LIST_KEY_HS], ids=[0, 1], elements=2, flags=[self.hs.HS_FLAG_CASELESS, 0]
            )
            self.local.db = db
        return db

    def find(self, buf: bytes, start: int, end: int, pos: int, limit: int) -> int:
        """Index of the first `data:` (any case) or Jupyter list key wholly inside buf[start:end] that
        starts in [pos, limit), or -1."""
        hit: list[int] = []

        def on_match(kind: int, _from: int, to: int, _flags: int, _ctx: object) -> bool:
            at = start + to - 5 if kind == 0 else _key_start(buf, start + to - 1)
            if pos <= at < limit:
                hit.append(at)
            return bool(hit)  # the first one is enough: stop

        with contextlib.suppress(self.hs.ScanTerminated):
            self._db().scan(memoryview(buf)[start:end], match_event_handler=on_match)
        return hit[0] if hit else -1


@functools.cache
def hyperscan() -> _Hyperscan | None:
    """Loaded on first use (~5 MiB): a daemon that never scans a long text does not pay for it."""
    try:
        import hyperscan
    except ImportError:  # not on every platform: sre does the same, slower
        return None
    return _Hyperscan(hyperscan)


@functools.lru_cache(maxsize=256)
def header(raw: bytes) -> tuple[bool, str, str]:
    """(base64?, serialized type, essence) of a data URL's media type as the Fetch processor reads it."""
    text = raw.replace(b"\\/", b"/").decode("latin-1")
    is_base64 = text[-7:].lower() == ";base64"
    mime = text[:-7] if is_base64 else text
    if mime.startswith(";"):
        mime = "text/plain" + mime
    parsed = parse_mime_type(mime)
    return (is_base64, *parsed) if parsed is not None else (is_base64, DEFAULT_MIME_TYPE, "text/plain")


class Window:
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
            self.payload = self.buf.translate(PAYLOAD)
        return self.payload

    def escape_class(self) -> bytes:
        if self.esc is None:
            self.esc = self.buf.translate(PAYLOAD_ESC)
        return self.esc

    def find_data(self, pos: int, limit: int) -> int:
        """Index of the first `data:` (any case), or of a Jupyter list key (`"image/png":`, LIST_KEY
        says whether a list of base64 lines follows), starting in [pos, limit); or -1."""
        buf = self.buf
        c = pos + 3
        while self.colons > 0:
            c = buf.find(b":", c + 1, limit + _KEY_MAX)
            if c < 0:
                return -1
            at = c - 4 if buf[c - 4 : c].lower() == b"data" else _key_start(buf, c)
            if pos <= at < limit:
                return at
            self.colons -= 1
        # every colon up to c was looked at: a start whose colon is past c begins at lo or later
        lo = max(pos, c + 1 - _KEY_MAX)
        hs = hyperscan()
        if hs is not None:
            return hs.find(buf, lo, limit + _KEY_MAX, pos, limit)
        m = _DATA_COLON.search(buf, max(c + 1, pos + 4), limit + 4)
        key = _find_key(buf, lo, limit)
        if m is None:
            return key
        return m.start() - 4 if key < 0 or m.start() - 4 < key else key

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
            m = BARE_START.search(buf, pos, limit + _MAGIC)
            return m.start() if m is not None and m.start() < limit else -1
        # a string starting this close to the end may not show k samples yet: check it exactly
        exact_from = max(pos, min(limit, len(buf) - (k + 2) * _STRIDE - TAIL))
        if self.sampled is None:
            self.sampled = buf[::_STRIDE].translate(PAYLOAD_ESC)
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
                if BARE_START.match(buf, q):
                    return q
                q = buf.find(b'"', q + 1, hi)
            j = sampled.find(needle, end)
        m = BARE_START.search(buf, exact_from, limit + _MAGIC)
        return m.start() if m is not None and m.start() < limit else -1
