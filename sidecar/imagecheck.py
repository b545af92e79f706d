"""SPEC 4.3 `corrupt`: is a complete image also intact (CRCs, segment chains, block structure, well-formed XML)?"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import NoReturn

__all__ = ("ReadAt", "damage", "damage_bytes")

ReadAt = Callable[[int, int], bytes]  # (offset, size) -> at most size bytes
_BLOCK = 1 << 20


class _Damaged(Exception):
    """The structure is there but wrong: the message says where."""


class _Reader:
    """Exact reads through read_at; running out of bytes is damage too (completeness was checked first)."""

    def __init__(self, read_at: ReadAt, size: int) -> None:
        self.read_at = read_at
        self.size = size

    def take(self, pos: int, n: int) -> bytes:
        data = self.read_at(pos, n) if pos >= 0 and pos + n <= self.size else b""
        if len(data) != n:
            raise _Damaged(f"the structure points past the end, at byte {pos}")
        return data

    def blocks(self, pos: int, end: int) -> Iterator[bytes]:
        """The bytes [pos, end) in blocks of at most 1 MiB, one at a time: a payload is never held whole."""
        while pos < end:
            n = min(_BLOCK, end - pos)
            yield self.take(pos, n)
            pos += n


def damage_bytes(mime: str, data: bytes) -> str | None:
    """`damage` over bytes held in memory."""
    view = memoryview(data)
    return damage(mime, lambda offset, size: bytes(view[offset : offset + size]), len(data))


def damage(mime: str, read_at: ReadAt, size: int) -> str | None:
    """What is damaged in a complete image file of type `mime` (a sentence), or None when it is intact.

    PNG: every chunk's CRC up to IEND. JPEG: segments chain from SOI to EOI with a frame and a scan.
    GIF: header, blocks and sub-blocks up to the trailer, at least one image. WebP: RIFF chunk sizes
    that add up. SVG: namespace-well-formed XML whose root is the SVG namespace's `svg`, parsed without
    DTD entities (a declaration is refused: no expansion bombs, no external entities). ICO: the CRCs
    of PNG entries. Other types are not checked.
    """
    check = _CHECKS.get(mime.split(";", 1)[0].strip().lower())
    if check is None:
        return None
    try:
        check(_Reader(read_at, size))
    except _Damaged as e:
        return str(e)
    return None


def _png(r: _Reader, pos: int = 8) -> None:
    while True:
        length, kind = struct.unpack(">I4s", r.take(pos, 8))
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise _Damaged(f"a chunk header at byte {pos} is not one")
        crc = zlib.crc32(kind)
        for block in r.blocks(pos + 8, pos + 8 + length):
            crc = zlib.crc32(block, crc)
        if struct.unpack(">I", r.take(pos + 8 + length, 4))[0] != crc:
            raise _Damaged(f"the CRC of the {kind.decode()} chunk at byte {pos} does not match its bytes")
        if kind == b"IEND":
            return
        pos += 12 + length


_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(r: _Reader) -> None:
    pos, frame, scan = 2, False, False
    while True:
        head = r.take(pos, 2)
        if head[0] != 0xFF:
            raise _Damaged(f"byte {pos} should start a segment and does not")
        marker = head[1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker == 0xD9:
            if not (frame and scan):
                raise _Damaged("the file ends before it has a frame and a scan")
            return
        if marker == 0x01:  # TEM: a marker without a segment
            pos += 2
            continue
        if marker in (0x00, 0xD8) or 0xD0 <= marker <= 0xD7:
            raise _Damaged(f"a misplaced marker {marker:#04x} at byte {pos}")
        (length,) = struct.unpack(">H", r.take(pos + 2, 2))
        if length < 2:
            raise _Damaged(f"a segment of length {length} at byte {pos}")
        frame |= marker in _SOF
        pos += 2 + length
        if marker == 0xDA:
            if not frame:
                raise _Damaged("a scan before the frame header")
            scan = True
            pos = _next_marker(r, pos)


def _next_marker(r: _Reader, pos: int) -> int:
    """After a scan header: the entropy-coded data runs to the next marker that is not a restart."""
    while pos < r.size:
        data = r.read_at(pos, _BLOCK)
        m = _JPEG_MARKER.search(data)
        if m:
            return pos + m.start()
        pos += len(data) - 1 if data.endswith(b"\xff") and len(data) > 1 else len(data)
    raise _Damaged("the scan data runs to the end without a marker")


def _gif(r: _Reader) -> None:
    width, height, flags = struct.unpack("<HHB", r.take(6, 5))
    if not width or not height:
        raise _Damaged("the logical screen has no size")
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    images = 0
    while True:
        kind = r.take(pos, 1)[0]
        if kind == 0x3B:
            if not images:
                raise _Damaged("the file holds no image")
            return
        if kind == 0x2C:
            local = r.take(pos + 9, 1)[0]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            if not 1 <= r.take(pos, 1)[0] <= 11:
                raise _Damaged(f"an image at byte {pos} has an impossible LZW code size")
            pos += 1
            images += 1
        elif kind == 0x21:
            pos += 2
        else:
            raise _Damaged(f"an unknown block {kind:#04x} at byte {pos}")
        while True:  # data sub-blocks up to the zero-length terminator
            n = r.take(pos, 1)[0]
            pos += 1 + n
            if n == 0:
                break


def _webp(r: _Reader) -> None:
    end = 8 + struct.unpack("<I", r.take(4, 4))[0]
    pos, first = 12, True
    while pos < end:
        kind, length = struct.unpack("<4sI", r.take(pos, 8))
        if first and kind not in (b"VP8 ", b"VP8L", b"VP8X"):
            raise _Damaged(f"the first chunk is {kind!r}, not an image")
        if kind == b"VP8 " and r.take(pos + 11, 3) != b"\x9d\x01\x2a":
            raise _Damaged("the VP8 frame has no start code")
        if kind == b"VP8L" and r.take(pos + 8, 1) != b"\x2f":
            raise _Damaged("the VP8L stream has no signature")
        first = False
        pos += 8 + length + (length & 1)
    if pos != end:
        raise _Damaged(f"the chunks run to byte {pos}, the RIFF size says {end}")


def _svg(r: _Reader) -> None:
    from xml.parsers import expat  # only once an SVG is checked: not every run needs it

    # namespace-aware like a browser: an unbound prefix is an error there, and without the SVG namespace on
    # its root an <img> shows nothing
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    roots: list[str] = []

    def refuse(*_: object) -> NoReturn:
        raise _Damaged("it declares or uses DTD entities (refused: never expanded)")

    def start(name: str, _attrs: object) -> None:
        if not roots:
            roots.append(name)

    parser.EntityDeclHandler = refuse
    parser.SkippedEntityHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    try:
        for block in r.blocks(0, r.size):
            parser.Parse(block, False)
        parser.Parse(b"", True)
    except expat.ExpatError as e:
        raise _Damaged(f"not well-formed XML: {expat.ErrorString(e.code)} at line {e.lineno}") from None
    if not roots or roots[0] != _SVG_ROOT:
        raise _Damaged(f"the root element is {roots[0] if roots else 'missing'}, not svg in the SVG namespace")


def _ico(r: _Reader) -> None:
    """An icon's entries may be whole PNG files (Pillow and Windows write them so): their CRCs too."""
    (count,) = struct.unpack("<H", r.take(4, 2))
    for i in range(count):
        _, offset = struct.unpack("<II", r.take(6 + 16 * i + 8, 8))
        if r.take(offset, 8) == b"\x89PNG\r\n\x1a\n":
            _png(r, offset + 8)


_SVG_ROOT = "http://www.w3.org/2000/svg svg"

_CHECKS: dict[str, Callable[[_Reader], None]] = {
    "image/png": _png,
    "image/jpeg": _jpeg,
    "image/gif": _gif,
    "image/webp": _webp,
    "image/svg+xml": _svg,
    "image/x-icon": _ico,
    "image/vnd.microsoft.icon": _ico,
}
