"""Small valid images built byte by byte, for tests that need exact bytes (Pillow's live in support.corpus)."""

from __future__ import annotations

import random
import struct
import zlib

__all__ = ("make_png", "png_chunk")


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
