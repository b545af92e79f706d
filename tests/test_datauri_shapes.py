"""One test per case: data URLs and bare base64 images in the shapes agents write (SPEC 4.2, 4.3)."""

from __future__ import annotations

import json
import random
import struct
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from support.corpus import encode, flip_idat, svg, unpadded
from support.helpers import source_writer, wait_manifest
from support.images import b64, datauri_name

from sidecar.config import Settings
from sidecar.materialize import materialize_file
from sidecar.media import is_complete_bytes
from sidecar.scanner import scan_bytes

Image = pytest.importorskip("PIL.Image")


def png(seed: int) -> bytes:
    return encode(random.Random(seed), "png", size=40)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        artifacts_dir=tmp_path / "artifacts", state_dir=tmp_path / "state", tool_results_dirs=[tmp_path / "results"]
    )


@pytest.fixture
def source(tmp_path: Path) -> Callable[..., Path]:
    return source_writer(tmp_path / "results")


def published(settings: Settings, name: str) -> bytes:
    return (settings.artifacts_dir / name).read_bytes()


class TestLineBreaks:
    """1. A line break continues only base64 wrapped at a fixed width W (SPEC 4.2)."""

    @pytest.mark.parametrize("after", ["Done", "saved", "OK"])
    @pytest.mark.parametrize("sep", ["\n", "\r\n", "\\n"])
    def test_single_line_payload_then_a_line_starting_with_a_letter(
        self, settings: Settings, source: Callable[..., Path], after: str, sep: str
    ) -> None:
        """An unpadded one-line payload of any length ends at its line break: the next line is kept."""
        data = unpadded(random.Random(4))
        assert not b64(data).endswith("=")
        src = source(f"data:image/png;base64,{b64(data)}{sep}{after}{sep}")
        (o,) = materialize_file(src, settings)
        assert (o.status, o.name) == ("materialized", datauri_name(data, "png"))
        assert published(settings, o.name) == data
        assert src.read_bytes().decode() == f"/artifacts/{o.name}{sep}{after}{sep}"

    def test_for_loop_of_echo_base64_w0(self, settings: Settings, source: Callable[..., Path]) -> None:
        """`for f in *.png; do echo "data:…$(base64 -w0 $f)"; done`: every line is its own image."""
        images = [unpadded(random.Random(s)) for s in range(4)]
        src = source("".join(f"data:image/png;base64,{b64(d)}\n" for d in images))
        outcomes = materialize_file(src, settings)
        assert [o.name for o in outcomes] == [datauri_name(d, "png") for d in images]
        assert src.read_bytes().decode() == "".join(f"/artifacts/{datauri_name(d, 'png')}\n" for d in images)

    def test_a_second_data_url_on_the_next_line_is_its_own(
        self, settings: Settings, source: Callable[..., Path]
    ) -> None:
        """A first line of exactly 76 characters, then `data:` on the next line: two payloads, not one."""
        small = random.Random(1).randbytes(57)  # 76 characters, below the minimum: skipped
        data = png(2)
        src = source(f"data:image/png;base64,{b64(small)}\ndata:image/png;base64,{b64(data)}\nend\n")
        (o,) = materialize_file(src, settings)
        assert o.name == datauri_name(data, "png")
        assert src.read_bytes().decode() == f"data:image/png;base64,{b64(small)}\n/artifacts/{o.name}\nend\n"

    def test_a_line_of_another_width_ends_the_payload(self, settings: Settings, source: Callable[..., Path]) -> None:
        """Lines of 76, then one of 72 that is not the last: the payload ends at that line's break."""
        data = png(3)
        enc = b64(data)
        lines = [enc[i : i + 76] for i in range(0, 760, 76)] + [enc[760:832], enc[832:]]  # 624 bytes, then cut
        text = "data:image/png;base64," + "\n".join(lines) + "\n"
        src = source(text)
        (o,) = materialize_file(src, settings)
        assert (o.status, o.reason) == ("rejected", "truncated")
        assert src.read_bytes().decode() == text

    @pytest.mark.parametrize(("width", "sep"), [(76, "\n"), (64, "\r\n"), (76, "\\n"), (120, "\n"), (60, "\n")])
    def test_fixed_width_wrapping_still_continues(
        self, settings: Settings, source: Callable[..., Path], width: int, sep: str
    ) -> None:
        """Base64 wrapped at one width W (60..120, LF, CRLF or `\\n`) is still one payload; the next line is kept."""
        data = png(5)
        enc = b64(data)
        text = "x\ndata:image/png;base64," + sep.join(enc[i : i + width] for i in range(0, len(enc), width))
        src = source(text + sep + "* next" + sep)
        (o,) = materialize_file(src, settings)
        assert published(settings, o.name or "") == data
        assert src.read_bytes().decode() == f"x\n/artifacts/{o.name}{sep}* next{sep}"


class TestBareEscaped:
    """2. A bare base64 image escaped inside another JSON string (Claude Code .json, API logs)."""

    def test_image_block_inside_a_json_string(self, settings: Settings, source: Callable[..., Path]) -> None:
        """An image block serialized into another JSON string (`\\"data\\": \\"iVBOR…\\"`): found, rewritten."""
        data = png(6)
        inner = json.dumps(
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(data)}}
        )
        text = json.dumps({"ts": "é", "request_body": inner}) + "\n"
        src = source(text, "log.json")
        (o,) = materialize_file(src, settings)
        assert (o.status, o.offset) == ("materialized", text.encode().index(b64(data).encode()))
        assert published(settings, o.name or "") == data
        doc = json.loads(src.read_bytes().decode())
        assert json.loads(doc["request_body"])["source"]["data"] == f"/artifacts/{o.name}"

    def test_claude_code_content_array_json(self, settings: Settings, source: Callable[..., Path]) -> None:
        """tool-results/<id>.json is JSON.stringify(content, null, 2): the image block's data is found."""
        data = encode(random.Random(7), "jpeg")
        content = [{"type": "text", "text": "shot"}, {"type": "image", "source": {"data": b64(data)}}]
        src = source(json.dumps(content, indent=2), "tool-results/toolu_1.json")
        (o,) = materialize_file(src, settings)
        assert published(settings, o.name or "") == data
        assert json.loads(src.read_bytes().decode())[1]["source"]["data"] == f"/artifacts/{o.name}"


class TestJupyter:
    """3. Jupyter's `"image/png"` outputs in all three forms."""

    @pytest.mark.parametrize("form", ["one-string", "wrapped-76", "list-of-lines", "list-last-line-bare"])
    def test_outputs(self, settings: Settings, source: Callable[..., Path], form: str) -> None:
        """Jupyter's image/png output: one string ending in `\\n`, wrapped at 76, or a list of lines."""
        data = png(8)
        enc = b64(data)
        if form == "one-string":
            value: object = enc + "\n"
        elif form == "wrapped-76":
            value = "\n".join(enc[i : i + 76] for i in range(0, len(enc), 76)) + "\n"
        else:
            value = [enc[i : i + 76] + "\n" for i in range(0, len(enc), 76)]
            if form == "list-last-line-bare":
                value[-1] = value[-1][:-1]  # type: ignore[index]
        nb = {"cells": [{"outputs": [{"data": {"image/png": value, "text/plain": ["<Figure>"]}}]}]}
        text = json.dumps(nb, indent=1)
        src = source(text, "nb.ipynb")
        (o,) = materialize_file(src, settings)
        assert published(settings, o.name or "") == data
        assert o.offset == text.encode().index(enc[:76].encode())
        out = json.loads(src.read_bytes().decode())["cells"][0]["outputs"][0]["data"]
        want = [f"/artifacts/{o.name}"] if isinstance(value, list) else f"/artifacts/{o.name}"
        assert out == {"image/png": want, "text/plain": ["<Figure>"]}


class TestRawSvg:
    """4. Raw SVG inside JSON strings is unescaped; an XML prolog starts an SVG; `#` is kept."""

    def test_svg_in_a_json_string_is_unescaped(self, settings: Settings, source: Callable[..., Path]) -> None:
        """A raw SVG after an unescaped `"` is JSON-unescaped before it is checked and written."""
        data = svg(random.Random(9))
        assert b'"' in data and b"\n" in data and b"#" in data
        text = json.dumps({"image": "data:image/svg+xml;utf8," + data.decode(), "next": "kept"})
        src = source(text)
        (o,) = materialize_file(src, settings)
        assert (o.status, o.mime_type) == ("materialized", "image/svg+xml")
        assert published(settings, o.name or "") == data
        assert json.loads(src.read_bytes().decode()) == {"image": f"/artifacts/{o.name}", "next": "kept"}

    def test_svg_with_unicode_escapes(self, settings: Settings, source: Callable[..., Path]) -> None:
        """`\\uXXXX` escapes (surrogate pairs too) and `\\/` in a JSON-escaped SVG decode to its UTF-8 text."""
        data = svg(random.Random(10)).replace(b"legend", "légende ✓ 😀".encode())
        text = json.dumps({"image": "data:image/svg+xml," + data.decode()}, ensure_ascii=True).replace("/", "\\/")
        src = source(text)
        (o,) = materialize_file(src, settings)
        assert published(settings, o.name or "") == data

    @pytest.mark.parametrize("encoding", ["raw", "percent"])
    def test_xml_prolog(self, settings: Settings, source: Callable[..., Path], encoding: str) -> None:
        """matplotlib and Inkscape start with `<?xml …?>`: found, and ends right after `</svg>`."""
        data = svg(random.Random(11), prolog=True)
        body = data.decode() if encoding == "raw" else urllib.parse.quote(data.decode(), safe="")
        src = source(f"Figure:\ndata:image/svg+xml,{body} (done)\n")
        (o,) = materialize_file(src, settings)
        assert (o.status, o.name) == ("materialized", datauri_name(data, "svg"))
        assert published(settings, o.name) == data
        assert src.read_bytes().decode() == f"Figure:\n/artifacts/{o.name} (done)\n"


class TestCorrupt:
    """5. Complete but damaged images are refused as `corrupt` (SPEC 4.3)."""

    def _one(self, settings: Settings, source: Callable[..., Path], mime: str, data: bytes) -> None:
        assert is_complete_bytes(mime, data), "complete: only corrupt"
        text = f'{{"x": "data:{mime};base64,{b64(data)}"}}'
        src = source(text)
        (o,) = materialize_file(src, settings)
        assert (o.status, o.reason, o.mime_type) == ("rejected", "corrupt", mime), o.detail
        assert src.read_bytes().decode() == text
        assert not settings.artifacts_dir.exists() or not list(settings.artifacts_dir.iterdir())

    def test_png_with_a_flipped_idat_byte(self, settings: Settings, source: Callable[..., Path]) -> None:
        """One flipped IDAT byte, IEND intact: the CRC says corrupt."""
        self._one(settings, source, "image/png", flip_idat(png(12), random.Random(1)))

    def test_icon_whose_png_entry_is_damaged(self, settings: Settings, source: Callable[..., Path]) -> None:
        """An icon whose PNG entry has a bad CRC is corrupt."""
        ico = encode(random.Random(22), "ico")
        i = ico.index(b"IDAT") + 10
        self._one(settings, source, "image/x-icon", ico[:i] + bytes([ico[i] ^ 1]) + ico[i + 1 :])

    def test_jpeg_whose_segments_do_not_chain(self, settings: Settings, source: Callable[..., Path]) -> None:
        """A segment length one too long breaks the chain from SOI to EOI: corrupt."""
        jpg = encode(random.Random(13), "jpeg")
        i = jpg.index(b"\xff\xdb")  # the DQT segment's length is one too long
        length = struct.unpack(">H", jpg[i + 2 : i + 4])[0]
        self._one(settings, source, "image/jpeg", jpg[: i + 2] + struct.pack(">H", length + 1) + jpg[i + 4 :])

    def test_gif_with_an_impossible_lzw_code_size(self, settings: Settings, source: Callable[..., Path]) -> None:
        """An LZW minimum code size of 0 is corrupt."""
        gif = encode(random.Random(14), "gif")
        i = gif.index(b"\x2c", 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0))  # the first image
        j = i + 10 + (3 << ((gif[i + 9] & 7) + 1) if gif[i + 9] & 0x80 else 0)  # its LZW minimum code size
        self._one(settings, source, "image/gif", gif[:j] + b"\x00" + gif[j + 1 :])

    def test_webp_whose_chunk_sizes_do_not_add_up(self, settings: Settings, source: Callable[..., Path]) -> None:
        """A RIFF size past the last chunk is corrupt."""
        webp = encode(random.Random(15), "webp")
        riff = struct.unpack("<I", webp[4:8])[0]
        bad = webp[:4] + struct.pack("<I", riff + 8) + webp[8:] + b"JUNK\xff\x00\x00\x00"
        self._one(settings, source, "image/webp", bad)

    @pytest.mark.parametrize(
        "text",
        [
            b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="1" height="1"></svg>',  # unclosed rect
            b'<svg xmlns="http://www.w3.org/2000/svg"><text>a \\"quoted\\" b</text><rect x=\\"1\\"/></svg>',
            b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b'<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>',  # entities: never expanded
            b'<svg xmlns="http://www.w3.org/2000/svg"><use xlink:href="#a"/></svg>',  # a browser refuses it
            b'<svg width="10" height="10"><rect width="5" height="5"/></svg>',  # an <img> shows nothing
        ],
        ids=["not-well-formed", "escaped-quotes-outside-json", "entity-declarations", "unbound-prefix", "no-namespace"],
    )
    def test_svg_that_is_not_well_formed_or_declares_entities(
        self, settings: Settings, source: Callable[..., Path], text: bytes
    ) -> None:
        """An SVG a browser would not draw, or one declaring entities, is corrupt."""
        self._one(settings, source, "image/svg+xml", text.replace(b"</svg>", b"<!-- pad -->" * 50 + b"</svg>"))

    def test_intact_images_of_every_kind_pass(self) -> None:
        """What Pillow writes and SVG text as matplotlib writes it are intact."""
        from sidecar.imagecheck import damage_bytes

        rng = random.Random(16)
        for kind in ("png", "jpeg", "gif", "webp", "svg+xml", "ico"):
            mime = "image/x-icon" if kind == "ico" else f"image/{kind}"
            assert damage_bytes(mime, encode(rng, kind)) is None, kind
        assert damage_bytes("image/svg+xml", svg(rng, prolog=True)) is None

    async def test_corrupt_reaches_the_manifest_and_metrics(self, run_sidecar, workspace, http) -> None:  # type: ignore[no-untyped-def]
        """The daemon lists a corrupt payload of a .json tool result in `rejected` and counts it."""
        ws = workspace()
        sc = await run_sidecar()
        bad = flip_idat(png(17), random.Random(2))
        src = ws.tool_results / "p" / "s" / "tool-results" / "t.json"
        src.parent.mkdir(parents=True)
        src.write_text(json.dumps([{"type": "text", "text": f"data:image/png;base64,{b64(bad)}"}], indent=2))
        doc = await wait_manifest(http, sc, lambda d: bool(d["rejected"]))
        assert [(r["reason"], r["origin"]) for r in doc["rejected"]] == [("corrupt", str(src))]
        assert doc["artifacts"] == []
        async with http.get(sc.url("/metrics")) as resp:
            assert 'sidecar_datauri_rejected_total{reason="corrupt"} 1.0' in await resp.text()


class TestOffsets:
    """6. `offset` is the byte offset in the file, also for the new shapes."""

    def test_byte_offsets_after_non_ascii_text(self, settings: Settings, source: Callable[..., Path]) -> None:
        """Offsets count bytes for data URLs, escaped bare strings and SVGs after non-ASCII text."""
        a, b, c = png(18), png(19), svg(random.Random(20), prolog=True)
        inner = json.dumps({"data": b64(b)})
        text = f"héllo ✓ data:image/png;base64,{b64(a)}\nDone ✓\n" + json.dumps(
            {"log": "ü " + inner, "svg": "data:image/svg+xml," + c.decode()}, ensure_ascii=False
        )
        raw = text.encode()
        src = source(raw)
        outcomes = materialize_file(src, settings)
        assert [o.offset for o in outcomes] == [
            raw.index(b"data:image/png"),
            raw.index(b64(b).encode()),
            raw.index(b"data:image/svg"),
        ]
        assert all(o.status == "materialized" for o in outcomes)


class TestSplits:
    """The new shapes are found the same whatever pieces the text arrives in (bounded-memory streaming)."""

    def test_every_split_near_a_payload_edge_and_tiny_pieces(self) -> None:
        """Cuts near every payload edge and line break, and pieces of 1..64 bytes, change nothing."""
        rng = random.Random(21)
        a, b, c, d = (encode(rng, "png") for _ in range(4))
        enc_c = b64(c)
        lines = [enc_c[i : i + 76] + "\\n" for i in range(0, len(enc_c), 76)]
        jl = '",\n  "'.join(lines)
        s = svg(rng, prolog=True).decode()
        text = (
            f"data:image/png;base64,{b64(unpadded(rng))}\nDone\n"
            + '{"body": "{\\"data\\": \\"'
            + b64(a)
            + '\\"}"}\n'
            + '{"image/png": "'
            + b64(b)
            + '\\n", "x": 1}\n'
            + '{"image/png": [\n  "'
            + jl
            + '"\n ]}\n'
            + json.dumps({"svg": "data:image/svg+xml," + s}, ensure_ascii=True)
            + "\r\ndata:image/png;base64,"
            + "\r\n".join(b64(d)[i : i + 64] for i in range(0, len(b64(d)), 64))
            + "\r\nok\r\n"
        ).encode()
        whole = scan_bytes(text, min_bare_bytes=512)
        assert len(whole) == 6 and all(m.error is None for m in whole)
        edges = {e + k for m in whole for e in (m.offset, m.end) for k in range(-9, 10)}
        edges |= {i + k for i in range(len(text)) if text[i : i + 1] in (b"\n", b"\\") for k in (-1, 0, 1, 2)}
        for cut in sorted(e for e in edges if 0 <= e <= len(text)):
            assert scan_bytes(text, min_bare_bytes=512, splits=[cut]) == whole, cut
        for step in (1, 3, 7, 64):
            assert scan_bytes(text, min_bare_bytes=512, splits=range(0, len(text), step)) == whole, step
