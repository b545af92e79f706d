"""sidecar.imagecheck: a complete image is also intact (SPEC 4.3 `corrupt`), checked on real Pillow output."""

from __future__ import annotations

import io
import os
import random
import struct
from pathlib import Path

import pytest
from support.corpus import encode, flip_idat, svg
from support.images import png_chunk

from sidecar.imagecheck import damage, damage_bytes

Image = pytest.importorskip("PIL.Image")

KINDS = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "ico": "image/x-icon",
    "svg+xml": "image/svg+xml",
}


def png_with(extra: bytes) -> bytes:
    """A Pillow PNG with `extra` (whole chunks) inserted right after IHDR."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    png = buf.getvalue()
    at = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:at] + extra + png[at:]


def segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each header segment up to and including the first scan header."""
    out, pos = [], 2
    while True:
        marker = jpeg[pos + 1]
        (length,) = struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        out.append((marker, pos, pos + 2 + length))
        if marker == 0xDA:
            return out
        pos += 2 + length


class TestIntact:
    @pytest.mark.parametrize("kind", list(KINDS))
    @pytest.mark.parametrize("seed", range(4))
    def test_what_pillow_writes_is_intact(self, kind: str, seed: int) -> None:
        """PNG in every mode, baseline and progressive JPEG, animated GIF, lossy and lossless WebP, ICO, SVG."""
        assert damage_bytes(KINDS[kind], encode(random.Random(seed), kind)) is None

    def test_svg_with_an_xml_prolog_is_intact(self) -> None:
        """matplotlib's `<?xml ...?>` before the root is fine."""
        assert damage_bytes("image/svg+xml", svg(random.Random(1), prolog=True)) is None

    def test_types_it_does_not_check_are_intact(self) -> None:
        """Other types (BMP, video, text) are not judged here: None whatever the bytes."""
        for mime in ("image/bmp", "video/mp4", "text/plain", "application/octet-stream"):
            assert damage_bytes(mime, os.urandom(300)) is None

    def test_the_type_is_read_like_a_header(self) -> None:
        """Case and parameters do not hide a type: `IMAGE/PNG; x=y` is checked as PNG."""
        bad = flip_idat(encode(random.Random(2), "png"), random.Random(2))
        assert damage_bytes("IMAGE/PNG; x=y", bad) is not None


class TestPng:
    def test_a_flipped_byte_breaks_the_crc(self) -> None:
        """One changed byte in the image data: the IDAT chunk's CRC names it."""
        rng = random.Random(3)
        why = damage_bytes("image/png", flip_idat(encode(rng, "png"), rng))
        assert why is not None and "CRC of the IDAT chunk" in why

    def test_a_chunk_header_that_is_not_one(self) -> None:
        """A chunk type that is not four letters is damage, at its byte offset."""
        png = png_with(png_chunk(b"teXt", b"k\0v"))
        bad = png.replace(b"teXt", b"te1t", 1)
        assert damage_bytes("image/png", bad) == "a chunk header at byte 33 is not one"

    def test_a_chunk_running_past_the_end(self) -> None:
        """A length that points beyond the file (a cut inside the data) is damage, never an exception."""
        png = png_with(png_chunk(b"teXt", b"k\0" + b"v" * 100))
        why = damage_bytes("image/png", png[:80])
        assert why is not None and "points past the end" in why

    def test_large_chunks_are_checked_across_blocks(self) -> None:
        """A 2.5 MiB chunk (read in 1 MiB blocks) is intact; one byte changed in its third MiB is not."""
        body = random.Random(4).randbytes(5 << 19)
        png = png_with(png_chunk(b"zzZz", body))
        assert damage_bytes("image/png", png) is None
        i = png.index(b"zzZz") + 4 + (5 << 19) - 10
        bad = png[:i] + bytes([png[i] ^ 1]) + png[i + 1 :]
        assert "CRC of the zzZz chunk" in (damage_bytes("image/png", bad) or "")

    def test_reads_are_bounded_and_from_a_real_file(self, tmp_path: Path) -> None:
        """Through pread on a file: the same verdicts as in memory, in reads of at most 1 MiB each."""
        png = png_with(png_chunk(b"zzZz", bytes(3 << 20)))
        path = tmp_path / "big.png"
        path.write_bytes(png)
        sizes: list[int] = []
        fd = os.open(path, os.O_RDONLY)
        try:

            def read_at(offset: int, size: int) -> bytes:
                sizes.append(size)
                return os.pread(fd, size, offset)

            assert damage("image/png", read_at, len(png)) is None
        finally:
            os.close(fd)
        assert max(sizes) <= 1 << 20


class TestJpeg:
    def jpeg(self) -> bytes:
        return encode(random.Random(5), "jpeg")

    def test_no_scan_before_the_end(self) -> None:
        """Header segments then EOI, without a scan: no picture."""
        data = self.jpeg()
        sos = segments(data)[-1][1]
        assert damage_bytes("image/jpeg", data[:sos] + b"\xff\xd9") == "the file ends before it has a frame and a scan"

    def test_a_scan_before_the_frame(self) -> None:
        """The frame header (SOF) removed: the scan comes first."""
        data = self.jpeg()
        sof = next((s, e) for m, s, e in segments(data) if 0xC0 <= m <= 0xC2)
        assert damage_bytes("image/jpeg", data[: sof[0]] + data[sof[1] :]) == "a scan before the frame header"

    def test_a_broken_segment_chain(self) -> None:
        """A segment length one byte too long: the next segment does not start with 0xFF."""
        data = self.jpeg()
        _, start, _ = segments(data)[0]
        (length,) = struct.unpack(">H", data[start + 2 : start + 4])
        bad = data[: start + 2] + struct.pack(">H", length + 1) + data[start + 4 :]
        why = damage_bytes("image/jpeg", bad)
        assert why is not None and "should start a segment" in why

    def test_scan_data_without_an_end_marker(self) -> None:
        """Entropy-coded data that runs to the end of the file: no marker ends it."""
        data = self.jpeg()
        end = segments(data)[-1][2]
        why = damage_bytes("image/jpeg", data[:end] + b"\x12\x34" * 64)
        assert why == "the scan data runs to the end without a marker"


class TestGif:
    def gif(self) -> bytes:
        buf = io.BytesIO()
        Image.new("P", (4, 4), 1).save(buf, "GIF")
        return buf.getvalue()

    def test_header_and_trailer_only(self) -> None:
        """A screen and a trailer but no image."""
        data = self.gif()
        flags = data[10]
        table = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
        assert damage_bytes("image/gif", data[: 13 + table] + b"\x3b") == "the file holds no image"

    def test_an_impossible_lzw_code_size(self) -> None:
        """A code size of 0 after the image descriptor."""
        data = self.gif()
        i = data.index(b"\x2c")  # the image descriptor (no extension in this file before it)
        local = data[i + 9]
        j = i + 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
        why = damage_bytes("image/gif", data[:j] + b"\x00" + data[j + 1 :])
        assert why is not None and "impossible LZW code size" in why

    def test_a_screen_without_size(self) -> None:
        """Width 0."""
        data = self.gif()
        assert damage_bytes("image/gif", data[:6] + b"\0\0" + data[8:]) == "the logical screen has no size"


class TestWebp:
    def test_chunk_sizes_that_do_not_add_up(self) -> None:
        """The RIFF size says two bytes fewer than its chunks take."""
        data = encode(random.Random(6), "webp")
        size = struct.unpack("<I", data[4:8])[0]
        bad = data[:4] + struct.pack("<I", size - 2) + data[8:]
        assert damage_bytes("image/webp", bad) == f"the chunks run to byte {size + 8}, the RIFF size says {size + 6}"

    def test_the_first_chunk_must_be_an_image(self) -> None:
        """A RIFF/WEBP file starting with some other chunk is not a picture."""
        body = b"WEBP" + b"JUNK" + struct.pack("<I", 4) + b"abcd"
        assert damage_bytes("image/webp", b"RIFF" + struct.pack("<I", len(body)) + body) == (
            "the first chunk is b'JUNK', not an image"
        )


class TestSvg:
    @pytest.mark.parametrize(
        ("text", "says"),
        [
            (b'<svg xmlns="http://www.w3.org/2000/svg"><g></svg>', "not well-formed"),
            (b'<!DOCTYPE svg [<!ENTITY a "aaaa">]><svg xmlns="http://www.w3.org/2000/svg">&a;</svg>', "DTD"),
            (b'<!DOCTYPE svg SYSTEM "http://x/y.dtd"><svg xmlns="http://www.w3.org/2000/svg">&e;</svg>', "DTD"),
            (b"<svg><rect/></svg>", "not svg in the SVG namespace"),
            (b'<svg xmlns="http://www.w3.org/2000/svg"><x:a/></svg>', "not well-formed"),
            (b'<html xmlns="http://www.w3.org/2000/svg"/>', "not svg in the SVG namespace"),
        ],
        ids=["unclosed", "entity", "external", "no-namespace", "unbound-prefix", "other-root"],
    )
    def test_what_a_browser_would_not_draw(self, text: bytes, says: str) -> None:
        """Not well-formed, entities (never expanded), no SVG root: each is damage with its reason."""
        why = damage_bytes("image/svg+xml", text)
        assert why is not None and says in why


class TestIco:
    def test_a_damaged_png_entry(self) -> None:
        """Pillow writes icon entries as PNG files: their CRCs are checked like a PNG's."""
        ico = encode(random.Random(7), "ico")
        assert b"IDAT" in ico
        why = damage_bytes("image/x-icon", flip_idat(ico, random.Random(7)))
        assert why is not None and "IDAT" in why
        assert damage_bytes("image/vnd.microsoft.icon", flip_idat(ico, random.Random(7))) == why
