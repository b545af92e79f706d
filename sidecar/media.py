"""Media types: by file name for published files; by magic bytes and completeness for decoded payloads."""

from __future__ import annotations

import mimetypes
import re
import struct
from collections.abc import Callable
from typing import Literal, TypeAlias

__all__ = (
    "SNIFF_BYTES",
    "ArtifactType",
    "ReadAt",
    "artifact_type",
    "extension_for",
    "is_complete",
    "is_complete_bytes",
    "mime_from_name",
    "needs_sandbox",
    "sniff",
)

ArtifactType = Literal["image", "file", "dataset", "binary"]

# Our own table first: the platform's mimetypes database differs between machines (and lacks some).
_BY_EXTENSION: dict[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".bmp": "image/bmp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "application/xhtml+xml",
    ".xml": "application/xml",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".parquet": "application/vnd.apache.parquet",
    ".pdf": "application/pdf",
    ".bin": "application/octet-stream",
    ".zip": "application/zip",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".js": "text/javascript",
    ".css": "text/css",
    ".py": "text/x-python",
}

_DATASETS = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/ndjson",
        "text/csv",
        "text/tab-separated-values",
        "application/vnd.apache.parquet",
        "application/x-parquet",
    }
)


def mime_from_name(name: str) -> str:
    """The media type a file name implies; `application/octet-stream` when nothing is known."""
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > name.rfind("/") else ""
    if ext in _BY_EXTENSION:
        return _BY_EXTENSION[ext]
    guessed, _ = mimetypes.guess_type("x" + ext, strict=False) if ext else (None, None)
    return guessed or "application/octet-stream"


def _essence(mime: str) -> str:
    return mime.split(";", 1)[0].strip().lower()


def artifact_type(mime: str) -> ArtifactType:
    """SPEC 6: image for image/*, dataset for JSON/NDJSON/CSV/TSV/Parquet, binary for octet-stream."""
    essence = _essence(mime)
    if essence.startswith("image/"):
        return "image"
    if essence in _DATASETS:
        return "dataset"
    if essence == "application/octet-stream":
        return "binary"
    return "file"


def needs_sandbox(mime: str) -> bool:
    """Types a browser would run script in: served with `Content-Security-Policy: sandbox` (SPEC 9)."""
    essence = _essence(mime)
    return essence in ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml") or (
        essence.endswith("+xml")
    )


# --------------------------------------------------------------------------------------
# magic bytes
# --------------------------------------------------------------------------------------

SNIFF_BYTES = 1024  # how much of the start sniff() wants: SVG may open with a prolog and comments

ReadAt: TypeAlias = Callable[
    [int, int], bytes
]  # (offset, size) -> at most size bytes; lets a file be checked via pread

_EXTENSIONS: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/svg+xml": "svg",
    "image/bmp": "bmp",
    "image/avif": "avif",
    "image/x-icon": "ico",
    "image/vnd.microsoft.icon": "ico",
    "image/tiff": "tiff",
}

_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# an XML prolog, comments and a doctype (with an internal subset) may come before the root element, <svg
_SVG_HEAD = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:(?:<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)\s*)*<svg[\s>/]",
    re.IGNORECASE | re.DOTALL,
)
_SVG_TAIL = re.compile(rb"</svg\s*>\s*\Z", re.IGNORECASE)


def sniff(head: bytes) -> str | None:
    """The image type the first bytes show (give it `SNIFF_BYTES`), or None when no known image starts so."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    # "BM" alone is too common a start for text; a known DIB header size makes it a bitmap
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return "image/bmp"
    if head[4:8] == b"ftyp" and _is_avif_ftyp(head):
        return "image/avif"
    if head[:4] == b"\x00\x00\x01\x00" and len(head) >= 6 and struct.unpack_from("<H", head, 4)[0] > 0:
        return "image/x-icon"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if _SVG_HEAD.match(head):
        return "image/svg+xml"
    return None


def _is_avif_ftyp(head: bytes) -> bool:
    size = struct.unpack_from(">I", head, 0)[0]
    brands = head[8 : min(size, len(head))]
    # major brand, then (after the minor version) the compatible brands
    return brands[:4] in (b"avif", b"avis") or any(
        brands[i : i + 4] in (b"avif", b"avis") for i in range(8, len(brands) - 3, 4)
    )


def extension_for(mime: str) -> str:
    """The artifact file extension for a media type (SPEC 4.3); `bin` for anything that is not a known image."""
    return _EXTENSIONS.get(_essence(mime), "bin")


# --------------------------------------------------------------------------------------
# completeness: is every byte the format's own structure announces really there?
# Trailing bytes after the end of the structure are tolerated (decoders ignore them); what is
# refused is a file that stops before its structure ends, which is what truncation looks like.
# --------------------------------------------------------------------------------------


def is_complete_bytes(mime: str, data: bytes) -> bool:
    """`is_complete` over bytes held in memory."""
    return is_complete(mime, lambda offset, size: data[offset : offset + size], len(data))


def is_complete(mime: str, read_at: ReadAt, size: int) -> bool:
    """Whether `size` bytes, read through `read_at`, are a whole file of the image type `mime`.

    PNG needs its IEND chunk, JPEG its EOI marker after the last scan, GIF its trailer after the
    last block, WebP and BMP their declared length, SVG its closing tag at the end, AVIF boxes that
    add up to the size, ICO and TIFF image data inside the file. Any other type has no structure
    to check and counts as complete. Reads a few bytes per structure element, never the whole file
    at once.
    """
    checker = _CHECKERS.get(_essence(mime))
    if checker is None:
        return True
    try:
        return checker(_Cursor(read_at, size))
    except _Short:
        return False


class _Short(Exception):
    """The structure points past the end of the data."""


class _Cursor:
    """Random access with a read-ahead window, so walks of many small elements stay cheap on a file."""

    WINDOW = 1 << 16

    def __init__(self, read_at: ReadAt, size: int) -> None:
        self.read_at = read_at
        self.size = size
        self._off = 0
        self._buf = b""

    def take(self, pos: int, n: int) -> bytes:
        """Exactly n bytes at pos, or _Short."""
        if pos < 0 or pos + n > self.size:
            raise _Short
        rel = pos - self._off
        if rel < 0 or rel + n > len(self._buf):
            self._buf = self.read_at(pos, max(n, self.WINDOW))
            self._off = pos
            rel = 0
            if len(self._buf) < n:
                raise _Short
        return self._buf[rel : rel + n]

    def u8(self, pos: int) -> int:
        return self.take(pos, 1)[0]

    def uint(self, pos: int, n: int, order: Literal["little", "big"]) -> int:
        return int.from_bytes(self.take(pos, n), order)


def _png(c: _Cursor) -> bool:
    pos = 8
    while True:
        length, kind = c.uint(pos, 4, "big"), c.take(pos + 4, 4)
        if length > 0x7FFFFFFF:
            return False
        pos += 12 + length
        if kind == b"IEND":
            return pos <= c.size
        if pos > c.size:
            return False


_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg(c: _Cursor) -> bool:
    pos = 2
    while True:
        if c.u8(pos) != 0xFF:
            # stray bytes between segments: decoders skip to the next marker, so do we
            pos = _jpeg_next_marker(c, pos)
            continue
        while c.u8(pos + 1) == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = c.u8(pos + 1)
        if marker == 0xD9:
            return True
        if marker == 0xD8:
            return False
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", c.take(pos + 2, 2))
        if length < 2:
            return False
        pos += 2 + length
        if pos > c.size:
            return False
        if marker == 0xDA:  # entropy-coded data follows the scan header, up to the next real marker
            pos = _jpeg_next_marker(c, pos)


def _jpeg_next_marker(c: _Cursor, pos: int) -> int:
    block = 1 << 20
    while pos < c.size:
        data = c.read_at(pos, block)
        if not data:
            break
        m = _JPEG_MARKER.search(data)
        if m:
            return pos + m.start()
        # keep a trailing 0xFF for the next block: its marker byte is there
        pos += len(data) - 1 if data.endswith(b"\xff") and len(data) > 1 else len(data)
    raise _Short


def _gif(c: _Cursor) -> bool:
    flags = c.u8(10)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        kind = c.u8(pos)
        if kind == 0x3B:
            return True
        if kind == 0x2C:
            local = c.u8(pos + 9)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW minimum code size
        elif kind == 0x21:
            pos += 2
        else:
            return False
        while True:  # data sub-blocks up to the zero-length terminator
            n = c.u8(pos)
            pos += 1 + n
            if n == 0:
                break


def _webp(c: _Cursor) -> bool:
    declared = c.uint(4, 4, "little")
    return declared >= 4 and c.size >= 8 + declared


def _bmp(c: _Cursor) -> bool:
    declared = c.uint(2, 4, "little")
    if declared >= 26:
        return c.size >= declared
    # some writers leave bfSize at 0: the pixel array's end is the length then
    off_bits = c.uint(10, 4, "little")
    dib = c.uint(14, 4, "little")
    if dib == 12:
        width, height, _, bpp = struct.unpack("<HHHH", c.take(18, 8))
        image = ((width * bpp + 31) // 32) * 4 * height
    else:
        width, height, _, bpp, _, image = struct.unpack("<iiHHII", c.take(18, 20))
        image = image or ((abs(width) * bpp + 31) // 32) * 4 * abs(height)
    return c.size >= off_bits + int(image)


def _svg(c: _Cursor) -> bool:
    start = max(0, c.size - 512)
    return _SVG_TAIL.search(c.take(start, c.size - start)) is not None


def _avif(c: _Cursor) -> bool:
    # top-level boxes must add up to the size, and a cut at a box boundary still lacks meta or mdat
    pos = 0
    seen: set[bytes] = set()
    while pos < c.size:
        size, kind = c.uint(pos, 4, "big"), c.take(pos + 4, 4)
        if not seen and kind != b"ftyp":
            return False
        seen.add(kind)
        if size == 0:  # the last box runs to the end of the file
            break
        if size == 1:
            size = c.uint(pos + 8, 8, "big")
        if size < 8:
            return False
        pos += size
        if pos > c.size:
            return False
    return {b"meta", b"mdat"} <= seen


def _ico(c: _Cursor) -> bool:
    (count,) = struct.unpack("<H", c.take(4, 2))
    table_end = 6 + 16 * count
    if count == 0 or table_end > c.size:
        return False
    for i in range(count):
        length, offset = struct.unpack("<II", c.take(6 + 16 * i + 8, 8))
        if offset < table_end or offset + length > c.size:
            return False
    return True


_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_TIFF_DATA_PAIRS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def _tiff(c: _Cursor) -> bool:
    order = "<" if c.take(0, 2) == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", c.take(4, 4))
    seen: set[int] = set()
    while ifd:
        if ifd < 8 or ifd in seen or len(seen) > 1024:
            return False
        seen.add(ifd)
        (count,) = struct.unpack(order + "H", c.take(ifd, 2))
        values: dict[int, list[int]] = {}
        for i in range(count):
            tag, kind, n, raw = struct.unpack(order + "HHI4s", c.take(ifd + 2 + 12 * i, 12))
            width = _TIFF_SIZES.get(kind, 1) * n
            if width > 4:
                (where,) = struct.unpack(order + "I", raw)
                data = c.take(where, width)  # out-of-line values must be inside the file
            else:
                data = raw
            if kind in (3, 4) and any(tag in pair for pair in _TIFF_DATA_PAIRS):
                fmt = "H" if kind == 3 else "I"
                values[tag] = list(struct.unpack(f"{order}{n}{fmt}", data[:width]))
        for offsets_tag, counts_tag in _TIFF_DATA_PAIRS:
            for offset, length in zip(values.get(offsets_tag, []), values.get(counts_tag, []), strict=False):
                if offset + length > c.size:
                    return False
        (ifd,) = struct.unpack(order + "I", c.take(ifd + 2 + 12 * count, 4))
    return bool(seen)


_CHECKERS: dict[str, Callable[[_Cursor], bool]] = {
    "image/png": _png,
    "image/jpeg": _jpeg,
    "image/gif": _gif,
    "image/webp": _webp,
    "image/bmp": _bmp,
    "image/svg+xml": _svg,
    "image/avif": _avif,
    "image/x-icon": _ico,
    "image/vnd.microsoft.icon": _ico,
    "image/tiff": _tiff,
}
