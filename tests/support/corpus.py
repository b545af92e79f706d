"""A seeded corpus of tool results as agents really write them, with the truth about every payload.

Images come from real encoders (Pillow: PNG, JPEG, GIF, WebP, ICO, BMP) and real SVG text. Each file is
a list of segments: literal text, or a payload with what must become of it — `recover` (published
byte-exact, its text replaced by `/artifacts/<name>`), `refuse` (listed as rejected with a reason, text
kept) or `ignore` (no record, text kept). `expected_text` is the file after the rewrite.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import struct
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from support.images import b64, wrap

Fate = Literal["recover", "refuse", "ignore"]
EXT = {"png": "png", "jpeg": "jpg", "gif": "gif", "webp": "webp", "ico": "ico", "bmp": "bmp", "svg+xml": "svg"}


@dataclass(frozen=True)
class Payload:
    text: str  # exactly the text a rewrite replaces
    fate: Fate
    data: bytes = b""  # the bytes to recover
    ext: str = ""
    reason: str | None = None  # for refuse

    @property
    def name(self) -> str:
        return f"datauri-{hashlib.sha256(self.data).hexdigest()[:16]}.{self.ext}"


@dataclass
class CorpusFile:
    name: str  # relative path under the tool-results root
    shape: str
    parts: list[str | Payload] = field(default_factory=list)

    def add(self, *parts: str | Payload) -> CorpusFile:
        self.parts.extend(parts)
        return self

    @property
    def text(self) -> bytes:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts).encode()

    @property
    def expected_text(self) -> bytes:
        out = []
        for p in self.parts:
            out.append(p if isinstance(p, str) else f"/artifacts/{p.name}" if p.fate == "recover" else p.text)
        return "".join(out).encode()

    def found(self) -> list[tuple[int, Payload]]:
        """(byte offset, payload) of every payload that must give a record, in text order."""
        out, pos = [], 0
        for p in self.parts:
            text = p if isinstance(p, str) else p.text
            if isinstance(p, Payload) and p.fate != "ignore":
                out.append((pos, p))
            pos += len(text.encode())
        return out


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------


def _picture(rng: random.Random, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Noise under a few flat rectangles: compresses to a few KiB, like a small chart or screenshot."""
    w, h = size
    im = Image.frombytes("RGB", size, rng.randbytes(w * h * 3))
    for _ in range(rng.randint(1, 4)):
        x, y = rng.randrange(w), rng.randrange(h)
        im.paste(tuple(rng.randbytes(3)), (x, y, min(w, x + rng.randint(4, w)), min(h, y + rng.randint(4, h))))
    return im.convert(mode) if mode != "RGB" else im


def encode(rng: random.Random, kind: str, size: int | None = None) -> bytes:
    """A real image of `kind` (png, jpeg, gif, webp, ico, bmp, svg+xml), seeded, above the 512-byte minimum."""
    side = size or rng.randint(20, 48)
    while True:
        data = _encode(rng, kind, side)
        if len(data) >= 700:
            return data
        side += 16


def _encode(rng: random.Random, kind: str, side: int) -> bytes:
    if kind == "svg+xml":
        return svg(rng)
    buf = io.BytesIO()
    if kind == "png":
        _picture(rng, (side, side), rng.choice(["RGB", "RGBA", "P", "L"])).save(buf, "PNG")
    elif kind == "jpeg":
        _picture(rng, (side * 2, side * 2)).save(
            buf, "JPEG", quality=rng.randint(60, 95), progressive=rng.random() < 0.3
        )
    elif kind == "gif":
        frames = [_picture(rng, (side, side)).convert("P") for _ in range(rng.randint(1, 3))]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    elif kind == "webp":
        _picture(rng, (side, side)).save(buf, "WEBP", lossless=rng.random() < 0.5, quality=80)
    elif kind == "ico":
        _picture(rng, (32, 32), "RGBA").save(buf, "ICO", sizes=[(32, 32)])
    elif kind == "bmp":
        _picture(rng, (side, side)).save(buf, "BMP")
    else:
        raise ValueError(kind)
    return buf.getvalue()


def svg(rng: random.Random, prolog: bool = False) -> bytes:
    """SVG text as matplotlib or a hand writes it: attributes in double quotes, `#` colours, newlines."""
    shapes = "\n".join(
        f'  <circle cx="{rng.randint(0, 99)}" cy="{rng.randint(0, 99)}" r="{rng.randint(2, 20)}" '
        f'fill="#{rng.randbytes(3).hex()}" stroke="#000"/>'
        for _ in range(rng.randint(12, 30))
    )
    head = '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' if prolog else ""
    return (
        f'{head}<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" viewBox="0 0 100 100">\n'
        f"  <title>chart &amp; legend</title>\n{shapes}\n</svg>"
    ).encode()


def flip_idat(png: bytes, rng: random.Random) -> bytes:
    """One flipped byte inside the IDAT data; IEND intact: complete, but its CRC no longer matches."""
    i = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[i - 8 : i - 4])[0]
    j = i + rng.randrange(length)
    return png[:j] + bytes([png[j] ^ 0x10]) + png[j + 1 :]


def tiny_png() -> bytes:
    """A 1x1 icon: far below --min-data-url-bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def unpadded(rng: random.Random, kind: str = "png") -> bytes:
    """An image whose base64 has no `=` padding (its length a multiple of 3): the run-on case."""
    while True:
        data = encode(rng, kind)
        if len(data) % 3 == 0:
            return data


def url(data: bytes, kind: str, prefix: str = "data:image/") -> Payload:
    return Payload(f"{prefix}{kind};base64,{b64(data)}", "recover", data, EXT[kind])


def bare(data: bytes, kind: str, text: str | None = None) -> Payload:
    return Payload(text if text is not None else b64(data), "recover", data, EXT[kind])


# --------------------------------------------------------------------------------------
# the shapes
# --------------------------------------------------------------------------------------

KINDS = ("png", "jpeg", "gif", "webp", "ico", "bmp")
Shape = Callable[[random.Random, str], CorpusFile]


def claude_txt(rng: random.Random, kind: str) -> CorpusFile:
    """Claude Code's persisted Bash output (tool-results/<id>.txt): the payload, then a line of prose."""
    data = unpadded(rng, "png") if rng.random() < 0.5 else encode(rng, kind)
    k = "png" if data.startswith(b"\x89PNG") else kind
    f = CorpusFile(f"tool-results/toolu_{rng.randrange(16**8):08x}.txt", "claude-txt")
    after = rng.choice(["Done", "saved", "OK all good"])
    return f.add("$ python plot.py — ventes Q3 ✓\nSaved chart:\n", url(data, k), f"\n{after}\n")


def claude_json(rng: random.Random, kind: str) -> CorpusFile:
    """Claude Code's content array (tool-results/<id>.json, JSON.stringify(content, null, 2))."""
    data = encode(rng, kind)
    mime = "image/" + kind
    f = CorpusFile(f"tool-results/toolu_{rng.randrange(16**8):08x}.json", "claude-json")
    head = json.dumps([{"type": "text", "text": "Screenshot taken"}], indent=2)[:-2]
    return f.add(
        head,
        ',\n  {\n    "type": "image",\n    "source": {\n      "type": "base64",\n      "media_type": '
        f'"{mime}",\n      "data": "',
        bare(data, kind),
        '"\n    }\n  }\n]',
    )


def mcp_block(rng: random.Random, kind: str) -> CorpusFile:
    """An MCP tool result's image block: the base64 is a bare JSON string, the mimeType after it."""
    data = encode(rng, kind)
    f = CorpusFile(f"mcp/{rng.randrange(10**6)}.jsonl", "mcp")
    head = '{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"image","data":"'
    return f.add(head, bare(data, kind), f'","mimeType":"image/{kind}"}}]}}}}\n')


def anthropic_log(rng: random.Random, kind: str) -> CorpusFile:
    """An API log line: the request body is a JSON string, so the image block's quotes are escaped."""
    data = encode(rng, kind)
    f = CorpusFile(f"logs/api-{rng.randrange(10**6)}.jsonl", "anthropic-escaped")
    return f.add(
        '{"ts":"2026-01-01T00:00:00Z","request_body":"{\\"model\\":\\"claude\\",\\"messages\\":[{\\"role\\":'
        '\\"user\\",\\"content\\":[{\\"type\\":\\"image\\",\\"source\\":{\\"type\\":\\"base64\\",'
        f'\\"media_type\\":\\"image/{kind}\\",\\"data\\":\\"',
        bare(data, kind),
        '\\"}}]}]}"}\n',
    )


def openai_image_url(rng: random.Random, kind: str) -> CorpusFile:
    data = encode(rng, kind)
    f = CorpusFile(f"logs/openai-{rng.randrange(10**6)}.json", "openai")
    return f.add('{"role":"user","content":[{"type":"image_url","image_url":{"url":"', url(data, kind), '"}}]}\n')


def jupyter(rng: random.Random, kind: str, form: int) -> CorpusFile:
    """A notebook output: one string ending in `\\n` (0), wrapped at 76 by `\\n` escapes (1), a list (2)."""
    kind = "png" if kind not in ("png", "jpeg", "gif") else kind
    data = encode(rng, kind)
    enc = b64(data)
    f = CorpusFile(f"nb/{rng.randrange(10**6)}-{form}.ipynb", f"jupyter-{form}")
    head = f'{{\n "cells": [\n  {{\n   "outputs": [\n    {{\n     "data": {{\n      "image/{kind}": '
    tail = ',\n      "text/plain": [\n       "<Figure size 640x480 with 1 Axes>"\n      ]\n     }\n    }\n   ]\n'
    tail += "  }\n ]\n}\n"
    if form == 0:
        return f.add(head + '"', bare(data, kind, enc + "\\n"), '"' + tail)
    if form == 1:
        return f.add(head + '"', bare(data, kind, wrap(enc, 76, "\\n") + "\\n"), '"' + tail)
    lines = [enc[i : i + 76] + "\\n" for i in range(0, len(enc), 76)]
    if rng.random() < 0.5:
        lines[-1] = lines[-1][:-2]
    body = '",\n       "'.join(lines)
    return f.add(head + '[\n       "', bare(data, kind, body), '"\n      ]' + tail)


def shell_wrapped(rng: random.Random, kind: str) -> CorpusFile:
    """`echo "data:image/png;base64,$(base64 f)"` (76) or openssl (64), LF or CRLF."""
    data = encode(rng, kind)
    width, sep = rng.choice([(76, "\n"), (64, "\n"), (76, "\r\n"), (64, "\r\n")])
    f = CorpusFile(f"tool-results/sh-{rng.randrange(10**6)}.txt", f"wrapped-{width}")
    enc = b64(data)
    text = f"data:image/{kind};base64," + wrap(enc, width, sep)
    # a last line of exactly the width with no padding goes on into a next line that starts with a
    # letter (SPEC 4.2): that text is not what this shape is about, so it starts with `$` then
    after = "$ exit 0" if len(enc) % width == 0 else "exit 0"
    return f.add("output:" + sep, Payload(text, "recover", data, EXT[kind]), sep + after + sep)


def for_loop(rng: random.Random, kind: str) -> CorpusFile:
    """for f in *.png; do echo "data:image/png;base64,$(base64 -w0 $f)"; done"""
    f = CorpusFile(f"tool-results/loop-{rng.randrange(10**6)}.txt", "for-loop")
    for _ in range(rng.randint(2, 4)):
        data = unpadded(rng) if rng.random() < 0.5 else encode(rng, "png")
        f.add(url(data, "png"), "\n")
    return f


def markdown(rng: random.Random, kind: str) -> CorpusFile:
    data = encode(rng, kind)
    f = CorpusFile(f"md/{rng.randrange(10**6)}.md", "markdown")
    return f.add("Voilà le graphique 📈:\n\n![chart](", url(data, kind), ")\n\nAnd the rest.\n")


def html(rng: random.Random, kind: str) -> CorpusFile:
    data = encode(rng, kind)
    q = rng.choice("\"'")
    f = CorpusFile(f"html/{rng.randrange(10**6)}.html", "html")
    return f.add(f"<p><img alt={q}x{q} src={q}", url(data, kind), f"{q} width={q}40{q}></p>\n")


def css(rng: random.Random, kind: str) -> CorpusFile:
    data = encode(rng, kind)
    q = rng.choice(["", "'", '"'])
    f = CorpusFile(f"css/{rng.randrange(10**6)}.css", "css")
    return f.add(f".logo {{ background: url({q}", url(data, kind), f"{q}) no-repeat; }}\n")


def php_json(rng: random.Random, kind: str) -> CorpusFile:
    """json_encode escapes every `/`: in the media type and in the payload."""
    data = encode(rng, kind)
    f = CorpusFile(f"php/{rng.randrange(10**6)}.json", "php-escaped")
    text = f"data:image\\/{kind};base64," + b64(data).replace("/", "\\/")
    return f.add('{"ok":true,"image":"', Payload(text, "recover", data, EXT[kind]), '","next":"kept"}\n')


def svg_shapes(rng: random.Random, variant: int) -> CorpusFile:
    """Raw SVG in text (0; with a prolog 2) or in a JSON string (1; 6), base64 (3), percent-encoded with a
    prolog (4) or without (5)."""
    prolog = variant in (2, 4, 6)
    data = svg(rng, prolog=prolog)
    raw = data.decode()
    f = CorpusFile(f"svg/{rng.randrange(10**6)}-{variant}.txt", f"svg-{variant}")
    if variant in (0, 2):  # raw, in text
        return f.add("Chart:\n", Payload("data:image/svg+xml;utf8," + raw, "recover", data, "svg"), "\nthat is all\n")
    if variant in (1, 6):  # raw, inside a JSON string: its quotes and newlines are escaped
        text = "data:image/svg+xml," + json.dumps(raw)[1:-1]
        return f.add('{"image": "', Payload(text, "recover", data, "svg"), '", "n": 1}\n')
    if variant == 3:  # base64
        return f.add("<img src='", url(data, "svg+xml"), "'>\n")
    enc = urllib.parse.quote(raw, safe="")
    return f.add('<img src="', Payload("data:image/svg+xml," + enc, "recover", data, "svg"), '">\n')


# --------------------------------------------------------------------------------------
# refusals and bait
# --------------------------------------------------------------------------------------


def truncated(rng: random.Random, kind: str) -> CorpusFile:
    """Output cut by a truncation marker: refused, text kept."""
    k = kind if kind != "ico" else "png"
    data = encode(rng, k, size=64)
    enc = b64(data)
    cut = enc[: max(720, rng.randint(len(enc) // 4, len(enc) * 3 // 4)) // 4 * 4]  # above the 512-byte minimum
    marker = rng.choice(["... [truncated 12345 chars]", "…", "\n[output truncated]"])
    f = CorpusFile(f"tool-results/cut-{rng.randrange(10**6)}.txt", "truncated")
    return f.add("shot: ", Payload(f"data:image/{k};base64,{cut}", "refuse", reason="truncated"), marker + "\n")


def damaged(rng: random.Random, as_bare: bool) -> CorpusFile:
    """A PNG with one flipped byte in IDAT, IEND intact: refused as corrupt; a bare string of it is ignored."""
    data = flip_idat(encode(rng, "png", size=40), rng)
    f = CorpusFile(f"tool-results/damaged-{rng.randrange(10**6)}.json", "damaged")
    if as_bare:
        return f.add('{"type":"image","data":"', Payload(b64(data), "ignore"), '","mimeType":"image/png"}\n')
    return f.add('{"text":"', Payload(f"data:image/png;base64,{b64(data)}", "refuse", reason="corrupt"), '"}\n')


def bait(rng: random.Random, which: int) -> CorpusFile:
    """Things that look like data URLs or base64 images and are not (or are not wanted)."""
    blob = rng.randbytes(rng.randint(900, 3000))
    f = CorpusFile(f"tool-results/bait-{rng.randrange(10**6)}-{which}.txt", f"bait-{which}")
    if which == 0:  # fonts
        return f.add(
            "@font-face { src: url(", Payload("data:font/woff2;base64," + b64(b"wOF2" + blob), "ignore"), "); }\n"
        )
    if which == 1:  # PDF
        return f.add('{"doc":"', Payload("data:application/pdf;base64," + b64(b"%PDF-1.7\n" + blob), "ignore"), '"}\n')
    if which == 2:  # WAV: RIFF, like WebP
        wav = b"RIFF" + struct.pack("<I", len(blob) + 4) + b"WAVE" + blob
        return f.add('<audio src="', Payload("data:audio/wav;base64," + b64(wav), "ignore"), '">\n')
    if which == 3:  # MP4: ftyp, like AVIF
        mp4 = struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2" + blob
        return f.add(
            '{"v":"',
            Payload("data:video/mp4;base64," + b64(mp4), "ignore"),
            '","bare":"',
            Payload(b64(mp4), "ignore"),
            '"}\n',
        )
    if which == 4:  # JWT
        jwt = ".".join(
            base64.urlsafe_b64encode(x).decode().rstrip("=") for x in (b'{"alg":"HS256"}', blob[:600], blob[:32])
        )
        return f.add('{"token":"', Payload(jwt, "ignore"), '","note":"data: expires soon"}\n')
    if which == 5:  # prose and SSE
        return f.add(
            "The data: field of an SSE event carries JSON, e.g.\n",
            'data: {"delta":"' + b64(blob)[:200] + '"}\n\ndata: [DONE]\n',
            "Use data:image/png;base64 URLs sparingly; data:, is empty.\n",
        )
    if which == 6:  # tiny icon: below --min-data-url-bytes, skipped silently
        return f.add('<link rel="icon" href="', Payload("data:image/png;base64," + b64(tiny_png()), "ignore"), '">\n')
    if which == 7:  # non-image base64 in JSON strings (random bytes, zlib, gzip-looking)
        return f.add(
            '{"blob":"', Payload(b64(blob), "ignore"), '","z":"', Payload(b64(zlib.compress(blob)), "ignore"), '"}\n'
        )
    # a base64 PNG whose magic is right but which is cut short, as a bare string: left alone
    png = encode(rng, "png")
    return f.add('{"type":"image","data":"', Payload(b64(png[: len(png) // 2]), "ignore"), '"}\n')


def second_url_on_next_line(rng: random.Random) -> CorpusFile:
    """A first payload whose line is exactly 76 characters (57 bytes, skipped as small), then a second
    data URL on the next line: its own payload, not eaten by the first."""
    small = rng.randbytes(57)
    data = encode(rng, "png")
    f = CorpusFile(f"tool-results/next-{rng.randrange(10**6)}.txt", "second-url-next-line")
    return f.add(Payload("data:image/png;base64," + b64(small), "ignore"), "\n", url(data, "png"), "\nend\n")


def build(seed: int = 13, count: int = 220) -> list[CorpusFile]:
    """`count` files (at least one of every shape), seeded."""
    rng = random.Random(seed)
    makers: list[Callable[[], CorpusFile]] = []
    for kind in KINDS:
        for shape in (claude_txt, claude_json, anthropic_log, openai_image_url, shell_wrapped, markdown, html, css):
            makers.append(lambda s=shape, k=kind: s(rng, k))
        makers.append(lambda k=kind: mcp_block(rng, k))
        makers.append(lambda k=kind: php_json(rng, k))
        makers.append(lambda k=kind: truncated(rng, k))
    for form in range(3):
        for kind in ("png", "jpeg", "gif"):
            makers.append(lambda f=form, k=kind: jupyter(rng, k, f))
    for variant in range(7):
        makers.append(lambda v=variant: svg_shapes(rng, v))
    makers += [lambda: for_loop(rng, "png"), lambda: second_url_on_next_line(rng)]
    makers += [lambda: damaged(rng, False), lambda: damaged(rng, True)]
    makers += [lambda w=which: bait(rng, w) for which in range(9)]
    files = [make() for make in makers]
    while len(files) < count:
        files.append(rng.choice(makers)())
    # names must not collide
    seen: set[str] = set()
    for i, f in enumerate(files):
        if f.name in seen:
            f.name = f.name.replace("/", f"/{i}-", 1)
        seen.add(f.name)
    return files
