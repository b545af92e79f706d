"""sidecar.media: media types by name, by magic bytes, and whether decoded bytes are a whole image."""

from __future__ import annotations

import base64
import random
import struct

import pytest
from support.images import make_gif, make_jpeg, make_png

from sidecar.media import (
    SNIFF_BYTES,
    artifact_type,
    extension_for,
    is_complete,
    is_complete_bytes,
    mime_from_name,
    needs_sandbox,
    sniff,
)

# --------------------------------------------------------------------------------------
# small real images, made with the standard library
# --------------------------------------------------------------------------------------


def make_webp() -> bytes:
    return base64.b64decode("UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==")


def make_bmp() -> bytes:
    pixels = bytes(range(16))  # 2x2, 24-bit, rows padded to 8 bytes
    return (
        b"BM"
        + struct.pack("<IHHI", 54 + 16, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 2, 2, 1, 24, 0, 16, 0, 0, 0, 0)
        + pixels
    )


def make_svg() -> bytes:
    return (
        b'<?xml version="1.0"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>\n'
    )


def make_avif() -> bytes:
    ftyp = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"avif", 0, b"avif", b"mif1")
    meta = struct.pack(">I4s", 16, b"meta") + bytes(8)
    mdat = struct.pack(">I4s", 40, b"mdat") + bytes(32)
    return ftyp + meta + mdat


def make_ico() -> bytes:
    png = make_png(3, 4)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 4, 4, 0, 0, 1, 32, len(png), 22) + png


def make_tiff() -> bytes:
    strip = bytes(range(12))  # 2x2 RGB
    entries = [(256, 3, 1, 2), (257, 3, 1, 2), (258, 3, 1, 8), (262, 3, 1, 2), (273, 4, 1, 8), (279, 4, 1, 12)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, n) + (struct.pack("<HH", v, 0) if kind == 3 else struct.pack("<I", v))
        for tag, kind, n, v in entries
    )
    return b"II*\x00" + struct.pack("<I", 20) + strip + ifd + struct.pack("<I", 0)


IMAGES = {
    "image/png": make_png(),
    "image/jpeg": make_jpeg(),
    "image/gif": make_gif(),
    "image/webp": make_webp(),
    "image/bmp": make_bmp(),
    "image/svg+xml": make_svg(),
    "image/avif": make_avif(),
    "image/x-icon": make_ico(),
    "image/tiff": make_tiff(),
}
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/svg+xml": "svg",
    "image/avif": "avif",
    "image/x-icon": "ico",
    "image/tiff": "tiff",
}


class TestSniff:
    @pytest.mark.parametrize("mime", IMAGES)
    def test_magic_bytes_name_the_type(self, mime: str) -> None:
        """Each supported image type is recognised from its first bytes."""
        assert sniff(IMAGES[mime][:SNIFF_BYTES]) == mime

    @pytest.mark.parametrize(
        "head",
        [
            b"",
            b"hello world",
            b"BM is not a bitmap",
            b"%PDF-1.4\n",
            b"<html><body>",
            b"\x00\x00\x01\x00\x00\x00",
            b"RIFFxxxxWAVE",
        ],
    )
    def test_other_bytes_are_no_image(self, head: bytes) -> None:
        """Text, PDFs, HTML, WAV and a zero-image icon header are not taken for images."""
        assert sniff(head) is None

    def test_svg_with_bom_comment_and_doctype(self) -> None:
        """An SVG may open with a BOM, an XML prolog, comments and a doctype."""
        head = b'\xef\xbb\xbf<?xml version="1.0"?><!-- x --><!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x">\n<svg>'
        assert sniff(head) == "image/svg+xml"

    def test_avif_brand_among_compatible_brands(self) -> None:
        """An ftyp box whose major brand is mif1 but lists avif is AVIF."""
        head = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"mif1", 0, b"mif1", b"avif")
        assert sniff(head) == "image/avif"


class TestExtensionFor:
    @pytest.mark.parametrize(("mime", "ext"), [*EXTENSIONS.items(), ("image/vnd.microsoft.icon", "ico")])
    def test_image_types(self, mime: str, ext: str) -> None:
        """Known image types get their usual extension."""
        assert extension_for(mime) == ext

    @pytest.mark.parametrize("mime", ["application/pdf", "text/plain;charset=utf-8", "image/heic", ""])
    def test_everything_else_is_bin(self, mime: str) -> None:
        """Anything that is not a known image type is written as .bin."""
        assert extension_for(mime) == "bin"

    def test_parameters_and_case_are_ignored(self) -> None:
        """Only the essence counts."""
        assert extension_for("IMAGE/PNG; name=x") == "png"


class TestIsComplete:
    @pytest.mark.parametrize("mime", IMAGES)
    def test_whole_images_are_complete(self, mime: str) -> None:
        """A whole file of each type is complete."""
        assert is_complete_bytes(mime, IMAGES[mime])

    @pytest.mark.parametrize("mime", IMAGES)
    def test_every_truncation_is_incomplete(self, mime: str) -> None:
        """Every proper prefix of every image (down to nothing) is refused."""
        data = IMAGES[mime]
        complete = [
            n
            for n in range(len(data))
            if is_complete_bytes(mime, data[:n].rstrip() if mime == "image/svg+xml" else data[:n])
        ]
        if mime == "image/svg+xml":  # only the whitespace after the closing tag may go
            assert complete == [len(data.rstrip())]
        else:
            assert complete == []

    @pytest.mark.parametrize("mime", ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"])
    def test_trailing_bytes_are_tolerated(self, mime: str) -> None:
        """Bytes after the end of the structure do not make a file incomplete (decoders ignore them)."""
        assert is_complete_bytes(mime, IMAGES[mime] + b"\x00\x00trailer")

    def test_svg_needs_its_closing_tag_at_the_end(self) -> None:
        """An SVG with text after its closing tag is not taken as complete; whitespace is fine."""
        assert is_complete_bytes("image/svg+xml", b"<svg></SVG >\r\n\t ")
        assert not is_complete_bytes("image/svg+xml", b"<svg></svg><!-- more")

    def test_jpeg_cut_after_an_exif_thumbnail(self) -> None:
        """An FFD9 inside an EXIF thumbnail does not end the JPEG: a file cut after it is incomplete."""
        jpeg = make_jpeg(exif_thumbnail=True)
        cut = jpeg[: jpeg.index(b"\xff\xd9") + 2]
        assert is_complete_bytes("image/jpeg", jpeg)
        assert not is_complete_bytes("image/jpeg", cut)

    def test_jpeg_with_a_big_scan_spanning_read_blocks(self) -> None:
        """The entropy-coded data is searched for the next marker block by block."""
        scan = bytes(b if b != 0xFF else 0xFE for b in random.Random(5).randbytes(3 << 20))
        jpeg = make_jpeg()
        big = jpeg[:-6] + scan + jpeg[-6:]
        assert is_complete_bytes("image/jpeg", big)
        assert not is_complete_bytes("image/jpeg", big[:-2])

    def test_bmp_without_declared_file_size(self) -> None:
        """A BMP with bfSize 0 is checked against the pixel array its header describes."""
        bmp = bytearray(make_bmp())
        bmp[2:6] = bytes(4)
        assert is_complete_bytes("image/bmp", bytes(bmp))
        assert not is_complete_bytes("image/bmp", bytes(bmp[:-1]))

    def test_types_without_structure_are_complete(self) -> None:
        """Anything the module cannot check counts as complete."""
        assert is_complete_bytes("application/pdf", b"%PDF")
        assert is_complete_bytes("text/plain", b"")

    def test_reads_a_file_through_read_at_without_reading_it_whole(self) -> None:
        """The check reads small windows, never the whole payload at once."""
        png = make_png(size=400)
        reads: list[int] = []

        def read_at(offset: int, size: int) -> bytes:
            reads.append(size)
            return png[offset : offset + size]

        assert is_complete("image/png", read_at, len(png))
        assert max(reads) <= 1 << 16 < len(png)

    def test_corrupt_structures_are_refused(self) -> None:
        """Lengths that point nowhere, loops and unknown GIF blocks are incomplete, never an exception."""
        assert not is_complete_bytes("image/png", b"\x89PNG\r\n\x1a\n" + b"\xff\xff\xff\xff" + b"IDAT")
        assert not is_complete_bytes("image/gif", make_gif()[:-1] + b"\x99")
        tiff = bytearray(make_tiff())
        tiff[-4:] = struct.pack("<I", 4 + 4 + 12)  # the next IFD is the same IFD again
        assert not is_complete_bytes("image/tiff", bytes(tiff))
        assert not is_complete_bytes("image/x-icon", struct.pack("<HHH", 0, 1, 0))


class TestByName:
    @pytest.mark.parametrize(
        ("name", "mime"),
        [
            ("a/b.PNG", "image/png"),
            ("x.tar.csv", "text/csv"),
            ("noext", "application/octet-stream"),
            ("d.ir/file", "application/octet-stream"),
        ],
    )
    def test_mime_from_name(self, name: str, mime: str) -> None:
        """The extension of the last path segment decides, case-insensitively."""
        assert mime_from_name(name) == mime

    @pytest.mark.parametrize(
        ("mime", "kind"),
        [
            ("image/svg+xml", "image"),
            ("text/csv", "dataset"),
            ("application/octet-stream", "binary"),
            ("text/plain", "file"),
        ],
    )
    def test_artifact_type(self, mime: str, kind: str) -> None:
        """SPEC 6 artifact types."""
        assert artifact_type(mime) == kind

    def test_needs_sandbox(self) -> None:
        """Script-capable types are sandboxed, images are not."""
        assert needs_sandbox("image/svg+xml") and needs_sandbox("text/html; charset=utf-8")
        assert not needs_sandbox("image/png")
