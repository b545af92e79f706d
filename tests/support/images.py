"""Small valid images built byte by byte, and the text forms tests put them in (Pillow's images live in
support.corpus)."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib

__all__ = ("b64", "datauri_name", "make_gif", "make_jpeg", "make_png", "png_chunk", "wrap")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wrap(text: str, width: int, sep: str) -> str:
    """`text` cut into lines of `width` characters joined by `sep` (how encoders wrap base64)."""
    return sep.join(text[i : i + width] for i in range(0, len(text), width))


def datauri_name(data: bytes, ext: str) -> str:
    """The name the sidecar gives a materialized payload (SPEC 4.3)."""
    return f"datauri-{hashlib.sha256(data).hexdigest()[:16]}.{ext}"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(seed: int = 0, size: int = 16, extra: int = 0) -> bytes:
    """A valid size x size RGB PNG of seeded noise, padded with an ancillary chunk of `extra` random bytes."""
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + rng.randbytes(size * 3) for _ in range(size))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    pad = png_chunk(b"zzZz", rng.randbytes(extra)) if extra else b""
    idat = png_chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + pad + idat + png_chunk(b"IEND", b"")


def make_jpeg(seed: int = 0, *, comment: int = 300, exif_thumbnail: bool = False) -> bytes:
    """A complete baseline JPEG whose seeded comment segment is `comment` bytes long; with
    `exif_thumbnail`, an APP1 holding an embedded thumbnail (its own SOI ... EOI) comes first."""
    rng = random.Random(seed)

    def seg(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    app1 = seg(0xE1, b"Exif\x00\x00" + b"\xff\xd8\xff\xdb" + bytes(40) + b"\xff\xd9") if exif_thumbnail else b""
    com = seg(0xFE, bytes(rng.choice(b"abcdefgh ") for _ in range(comment)))
    dqt = seg(0xDB, b"\x00" + bytes([1] * 64))
    sof = seg(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
    dht_dc = seg(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
    dht_ac = seg(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
    sos = seg(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    scan = b"\x3f\xff\x00\x3f"  # entropy data with a stuffed 0xFF
    return b"\xff\xd8" + app1 + com + dqt + sof + dht_dc + dht_ac + sos + scan + b"\xff\xd9"


def make_gif(seed: int = 0) -> bytes:
    """A 4x4 GIF89a with a graphic control extension and 600 seeded bytes of image data."""
    data = random.Random(seed).randbytes(600)
    blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    gce = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    head = b"GIF89a" + struct.pack("<HHBBB", 4, 4, 0x80, 0, 0) + bytes(6)
    return head + gce + b"\x2c" + struct.pack("<HHHHB", 0, 0, 4, 4, 0) + b"\x02" + blocks + b"\x00\x3b"
