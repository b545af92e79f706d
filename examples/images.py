"""Small real images made with the standard library (PNG, GIF, SVG), for the demo and its agent."""

from __future__ import annotations

import math
import struct
import zlib

__all__ = ("bar_chart_svg", "gradient_png", "tiny_gif")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def gradient_png(width: int = 320, height: int = 200, hue: float = 0.0) -> bytes:
    """An RGB PNG with a smooth two-way gradient and a sine wave drawn across it."""
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0 for every scanline
        for x in range(width):
            r = int(255 * x / (width - 1))
            g = int(255 * y / (height - 1))
            b = int(127 + 127 * math.sin(hue + x / 40))
            if abs(int(height / 2 + math.sin(x / 25 + hue) * height / 3) - y) < 2:
                r, g, b = 255, 255, 255
            row += bytes((r, g, b))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _chunk(b"IEND", b"")
    )


def tiny_gif() -> bytes:
    """A 2x2 four-colour GIF (uncompressed-style LZW stream with a clear code before every pixel)."""
    palette = bytes((255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255))
    # code size 2: clear=4, end=5; 3-bit codes: clear, pixel, clear, pixel ... end
    codes = [4, 0, 4, 1, 4, 2, 4, 3, 5]
    bits = nbits = 0
    out = bytearray()
    for c in codes:
        bits |= c << nbits
        nbits += 3
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
    if nbits:
        out.append(bits & 0xFF)
    header = b"GIF89a" + struct.pack("<HHBBB", 2, 2, 0xF1, 0, 0) + palette
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 2, 2, 0) + b"\x02" + bytes([len(out)]) + bytes(out) + b"\x00"
    return header + image + b"\x3b"


def bar_chart_svg(values: list[float], title: str = "Quarterly revenue") -> bytes:
    width, height, pad = 360, 220, 30
    bar = (width - 2 * pad) / max(1, len(values))
    top = max(values) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-family="sans-serif" font-size="14">{title}</text>',
    ]
    for i, v in enumerate(values):
        h = (height - 2 * pad) * v / top
        x = pad + i * bar + 4
        parts.append(
            f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{bar - 8:.1f}" height="{h:.1f}" fill="steelblue"/>'
        )
        parts.append(
            f'<text x="{x + (bar - 8) / 2:.1f}" y="{height - 10}" text-anchor="middle" font-size="11">Q{i + 1}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts).encode()
