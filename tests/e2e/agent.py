"""The scripted agent of the end-to-end scenario: makes artifacts every way, then says what must arrive.

Run as the child of `sidecar run` (or beside `sidecar serve`). It writes `--out` (JSON) last:
  final     name -> sha256 every artifact of the final manifest must have (the receiver must hold it)
  optional  name -> sha256 that may be missing (a data URL refused for a full disk) but never differ
  allowed   name -> [sha256] every content a publication of that name may ever carry (complete versions)
  forbidden [sha256] contents that must never be published (truncated payloads, half-written files)
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import json
import os
import random
import struct
import sys
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png(rng: random.Random, width: int, height: int, level: int = 6) -> bytes:
    """A complete PNG with random (so unique) RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b"")


def gif(rng: random.Random) -> bytes:
    """A complete GIF89a, 16x16, 2 colours, padded with a comment extension so it is over 512 bytes."""
    header = b"GIF89a" + struct.pack("<HHBBB", 16, 16, 0x80, 0, 0) + rng.randbytes(3) + b"\xff\xff\xff"
    comment = b"\x21\xfe" + b"".join(bytes([200]) + rng.randbytes(200) for _ in range(4)) + b"\x00"
    lzw = bytes.fromhex("02168c2d99872a1cdc33a00275ec95faa8de608c04914c0100")
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 16, 16, 0) + lzw
    return header + comment + image + b"\x3b"


def svg(rng: random.Random) -> bytes:
    rects = "".join(
        f'<rect x="{i * 12}" y="{rng.randrange(80)}" width="10" height="{rng.randrange(5, 90)}" '
        f'fill="#{rng.randrange(1 << 24):06x}"/>'
        for i in range(20)
    )
    head = '<svg xmlns="http://www.w3.org/2000/svg" width="240" height="100" viewBox="0 0 240 100">'
    return f"{head}{rects}</svg>".encode()


def wrap(text: str, width: int, sep: str) -> str:
    return sep.join(text[i : i + width] for i in range(0, len(text), width))


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = Path(args.artifacts)
        self.t = Path(args.tool_results) / "proj" / "session-1" / "tool-results"
        self.rng = random.Random(args.seed)
        self.args = args
        self.final: dict[str, str] = {}
        self.optional: dict[str, str] = {}
        self.allowed: dict[str, set[str]] = {}
        self.forbidden: set[str] = set()
        self.notes: dict[str, Any] = {}
        self.spill_n = 0

    def allow(self, name: str, data: bytes) -> None:
        self.allowed.setdefault(name, set()).add(sha(data))

    def put(self, name: str, data: bytes) -> None:
        """A direct write, in place."""
        p = self.a / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.allow(name, data)
        self.final[name] = sha(data)

    def datauri_name(self, data: bytes, ext: str) -> str:
        name = f"datauri-{sha(data)[:16]}.{ext}"
        self.allow(name, data)
        return name

    def spill(self, text: str) -> None:
        self.t.mkdir(parents=True, exist_ok=True)
        self.spill_n += 1
        tmp = self.t / f".toolu_{self.spill_n:03d}.tmp"
        tmp.write_text(text)
        tmp.rename(self.t / f"toolu_{self.spill_n:03d}.txt")

    # ---- the ways artifacts are made --------------------------------------------------

    def files(self) -> None:
        self.put("hello.txt", b"hello from the agent\n" * 10)
        self.put("img/plot.png", png(self.rng, 64, 48))
        self.put("a/b/c/d/e/deep.bin", self.rng.randbytes(70_000))
        self.put("unicode/r\u00e9sum\u00e9 \u65e5\u672c.csv", b"x,y\n" + b"1,2\n" * 500)
        # temp-then-rename, with the usual temporary names (never published themselves)
        for tmpname, final in (("report.pdf.tmp", "report.pdf"), ("dl.zip.part", "dl.zip"), (".hidden-w", "moved.bin")):
            data = self.rng.randbytes(self.rng.randrange(1_000, 300_000))
            (self.a / tmpname).write_bytes(data)
            (self.a / tmpname).rename(self.a / final)
            self.allow(final, data)
            self.final[final] = sha(data)
        # overwrite: v1 published, then replaced in place by v2 (written in two pieces)
        v1, v2 = png(self.rng, 32, 32), png(self.rng, 96, 64)
        self.put("over.png", v1)
        time.sleep(self.args.settle * 3)
        with open(self.a / "over.png", "wb") as f:
            f.write(v2[: len(v2) // 2])
            f.flush()
            time.sleep(self.args.settle / 4)
            f.write(v2[len(v2) // 2 :])
        self.allow("over.png", v2)
        self.final["over.png"] = sha(v2)
        # overwrite by rename over the old file
        self.put("swap.txt", b"old\n" * 300)
        (self.a / "swap.txt.tmp").write_bytes(b"new\n" * 400)
        (self.a / "swap.txt.tmp").rename(self.a / "swap.txt")
        self.allow("swap.txt", b"new\n" * 400)
        self.final["swap.txt"] = sha(b"new\n" * 400)
        # deletion: published, then removed (must not be in the final manifest)
        self.put("gone/temp.png", png(self.rng, 20, 20))
        time.sleep(self.args.settle * 3)
        os.unlink(self.a / "gone" / "temp.png")
        del self.final["gone/temp.png"]
        # deleted before it could even settle
        self.put("flash.txt", b"blink")
        os.unlink(self.a / "flash.txt")
        del self.final["flash.txt"]

    def slow(self) -> None:
        """One file written in place over `--slow-s` seconds, pieces `settle/4` apart: never published half."""
        data = png(self.rng, 300, 200, level=0)
        pieces = max(2, int(self.args.slow_s / (self.args.settle / 4)))
        step = -(-len(data) // pieces)
        gaps, last = [], time.monotonic()
        (self.a / "slow").mkdir(parents=True, exist_ok=True)
        with open(self.a / "slow/big.png", "wb") as f:
            for i in range(0, len(data), step):
                f.write(data[i : i + step])
                f.flush()
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                if i + step < len(data):
                    self.forbidden.add(sha(data[: i + step]))
                    time.sleep(self.args.settle / 4)
        self.allow("slow/big.png", data)
        self.final["slow/big.png"] = sha(data)
        self.notes["slow_max_gap_s"] = round(max(gaps[1:] or [0]), 3)

    def big(self) -> None:
        """A file above the 8 MiB multipart threshold of object-storage offload, and a copy of it (dedupe)."""
        data = self.rng.randbytes(self.args.big_mib << 20)
        (self.a / "big").mkdir(exist_ok=True)
        for name in ("big/blob.bin", "big/copy-of-blob.bin"):
            (self.a / "big" / ".writing").write_bytes(data)
            (self.a / "big" / ".writing").rename(self.a / name)
            self.allow(name, data)
            self.final[name] = sha(data)

    def burst(self) -> None:
        n = self.args.burst
        for i in range(n):
            data = f"burst file {i} seed {self.args.seed}\n".encode()
            name = f"burst/d{i // 500:02d}/f{i:05d}.txt"
            p = self.a / name
            if i % 500 == 0:
                p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            self.allowed[name] = {sha(data)}
            self.final[name] = sha(data)

    def data_urls(self) -> None:
        """Every form of SPEC 4.2, each in its own tool-results file; truncated and corrupt ones too."""
        rng = self.rng
        expect: list[str] = []

        def ok(data: bytes, ext: str) -> bytes:
            expect.append(self.datauri_name(data, ext))
            self.final[expect[-1]] = sha(data)
            return data

        b64 = lambda d: base64.b64encode(d).decode()  # noqa: E731
        # 1. markdown in a JSON text block
        d = ok(png(rng, 40, 30), "png")
        self.spill(json.dumps({"type": "text", "text": f"Here: ![plot](data:image/png;base64,{b64(d)}) done"}))
        # 2. JSON-escaped slashes, in the media type and the payload
        d = ok(png(rng, 41, 30), "png")
        while "/" not in b64(d):
            d = ok(png(rng, 41, 31), "png")
        self.spill('{"text": "data:image\\/png;base64,' + b64(d).replace("/", "\\/") + '"}')
        # 3. URL-safe alphabet, mixed case scheme
        d = ok(png(rng, 42, 30), "png")
        self.spill("see DATA:image/png;base64," + base64.urlsafe_b64encode(d).decode() + " ok\n")
        # 4. wrapped at 76 with real CRLF line breaks; 5. wrapped at 64 with JSON \n escapes
        d = ok(png(rng, 43, 30), "png")
        self.spill("data:image/png;base64," + wrap(b64(d), 76, "\r\n") + "\nnext line\n")
        d = ok(png(rng, 44, 30), "png")
        self.spill(json.dumps({"text": "data:image/png;base64," + wrap(b64(d), 64, "\n")}))
        # 6. percent-encoded SVG; 7. raw SVG in plain text; 8. GIF without padding? (with padding)
        d = ok(svg(rng), "svg")
        self.spill(json.dumps({"text": "data:image/svg+xml," + urllib.parse.quote(d.decode(), safe="")}))
        d = ok(svg(rng), "svg")
        self.spill("an svg: data:image/svg+xml;charset=utf-8," + d.decode() + " and text after\n")
        d = ok(gif(rng), "gif")
        self.spill(json.dumps({"content": [{"type": "text", "text": f"<img src='data:image/gif;base64,{b64(d)}'>"}]}))
        # 9. bare base64: MCP and Anthropic image blocks (declared jpeg, really a png: detected type wins)
        d = ok(png(rng, 45, 30), "png")
        self.spill(json.dumps({"content": [{"type": "image", "data": b64(d), "mimeType": "image/png"}]}))
        d = ok(png(rng, 46, 30), "png")
        src = {"type": "base64", "media_type": "image/jpeg", "data": b64(d)}
        self.spill(json.dumps([{"type": "image", "source": src}]))
        # 10. the same payload twice, in two files: one artifact
        self.spill(json.dumps({"text": f"again ![plot](data:image/png;base64,{b64(d)})"}))
        # 11. truncated (Claude Code's cut), corrupt (a bad character mid-payload), invalid base64, tail missing
        for cut in (0.5, 0.9):
            d = png(rng, 50, 40)
            enc = b64(d)
            part = enc[: int(len(enc) * cut) // 4 * 4]
            self.forbidden.add(sha(base64.b64decode(part)))
            self.spill(json.dumps({"text": f"data:image/png;base64,{part}... [truncated 51234 chars]"}))
        d = png(rng, 51, 40)
        enc = b64(d)
        mid = len(enc) // 2 // 4 * 4
        self.forbidden.add(sha(base64.b64decode(enc[:mid])))
        self.spill("data:image/png;base64," + enc[:mid] + "!" + enc[mid:] + "\n")
        self.forbidden.add(sha(d))  # never published whole either: the text never carried it whole
        d = png(rng, 52, 40)
        enc = b64(d)[:-2]
        self.spill(json.dumps({"text": "data:image/png;base64," + enc[: len(enc) - len(enc) % 4] + "A"}))
        self.forbidden.add(sha(d))
        svgd = svg(rng)
        cut_svg = svgd[: len(svgd) - 20]
        self.spill("data:image/svg+xml," + cut_svg.decode() + "\n")
        self.forbidden.add(sha(cut_svg))
        self.notes["datauri_expected"] = len(set(expect))
        # wait (bounded) until the sidecar has written them, so a full disk later does not hit them
        deadline = time.monotonic() + self.args.datauri_wait
        while time.monotonic() < deadline and not all((self.a / n).exists() for n in expect):
            time.sleep(0.05)
        self.notes["datauri_written_before_fill"] = all((self.a / n).exists() for n in expect)

    def fill_disk(self) -> None:
        """The artifacts dir is on a small filesystem: fill it, then spill a data URL too big for what is left."""
        st = os.statvfs(self.a)
        free = st.f_bavail * st.f_frsize
        filler = self.rng.randbytes(max(0, free - 96 * 1024))
        try:
            self.put("zz-filler.bin", filler)
        except OSError as e:
            self.notes["filler_error"] = errno.errorcode.get(e.errno or 0, str(e))
            os.unlink(self.a / "zz-filler.bin")
            self.final.pop("zz-filler.bin", None)
        # a careless big write that fails with ENOSPC: the agent removes what it left
        try:
            with open(self.a / "overflow.bin", "wb") as f:
                for _ in range(64):
                    f.write(self.rng.randbytes(64 * 1024))
            self.notes["enospc"] = False
        except OSError:
            self.notes["enospc"] = True
        os.unlink(self.a / "overflow.bin")
        big = png(self.rng, 400, 400, level=0)  # ~480 KB: cannot fit
        name = self.datauri_name(big, "png")
        self.optional[name] = sha(big)
        self.spill(json.dumps({"text": f"![big](data:image/png;base64,{base64.b64encode(big).decode()})"}))
        self.notes["full_disk_free_bytes"] = os.statvfs(self.a).f_bavail * os.statvfs(self.a).f_frsize

    def run(self) -> int:
        t0 = time.monotonic()
        self.a.mkdir(parents=True, exist_ok=True)
        self.files()
        self.data_urls()
        self.slow()
        self.burst()
        if self.args.big_mib:
            self.big()
        if self.args.fill_disk:
            self.fill_disk()
        self.notes["agent_s"] = round(time.monotonic() - t0, 2)
        doc = {
            "final": self.final,
            "optional": self.optional,
            "allowed": {k: sorted(v) for k, v in self.allowed.items()},
            "forbidden": sorted(self.forbidden),
            "exit_status": self.args.exit_status,
            "notes": self.notes,
        }
        tmp = Path(self.args.out + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.rename(self.args.out)
        return int(self.args.exit_status)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", required=True)
    p.add_argument("--tool-results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--burst", type=int, default=10_000)
    p.add_argument("--settle", type=float, default=0.4, help="the sidecar's --settle-ms, in seconds")
    p.add_argument("--slow-s", type=float, default=2.5)
    p.add_argument("--datauri-wait", type=float, default=20.0)
    p.add_argument("--fill-disk", action="store_true")
    p.add_argument("--big-mib", type=int, default=0, help="also write a file this large, and a copy of it")
    p.add_argument("--exit-status", type=int, default=0)
    return Agent(p.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
