"""Hostile input (SPEC 4 and 9): generated request paths over a raw socket, and fuzzed data-URL text.

- Paths: over a thousand generated request targets (percent-encodings, overlong UTF-8, NUL, backslashes,
  Unicode look-alikes of `.` and `/`, very long paths, dot segments) go to one daemon as raw bytes, with
  aiohttp's C HTTP parser and again with its pure-Python one. Nothing outside the artifacts dir, no dotfile
  and no symlink target ever comes back, no answer is a 5xx, every 200 body is a published artifact, and
  the daemon still answers afterwards.
- Data URLs: `parse_data_url` on text built from the pieces data URLs are made of raises nothing but
  `DataURLError`/`ValueError`, in bounded time; `materialize_file` on random text with whole, cut and
  corrupted data URLs (and bare base64 images) never crashes, and every file it writes is a whole image;
  the scanner finds the same payloads however the text is cut; megabytes of hostile text end in bounded
  time; and a bounded atheris (libFuzzer) run of tests/fuzz_atheris.py finds nothing.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.helpers import Sidecar, Workspace, names, raw_request, wait_manifest
from support.images import b64, make_png, wrap

from sidecar.config import Settings
from sidecar.datauri import DataURLError, forgiving_base64_decode, parse_data_url, parse_mime_type
from sidecar.imagecheck import damage_bytes
from sidecar.materialize import Outcome, materialize_file
from sidecar.media import is_complete_bytes, sniff
from sidecar.scanner import Match, scan_bytes
from sidecar.security import sign

# --------------------------------------------------------------------------------------
# small real images
# --------------------------------------------------------------------------------------


def make_gif(seed: int) -> bytes:
    """A 1x1 GIF89a with a comment block of random text (so that seeds differ)."""
    text = random.Random(seed).randbytes(40).hex().encode()
    comment = b"\x21\xfe" + b"".join(bytes([len(p)]) + p for p in (text[:80], text[80:])) + b"\x00"
    image = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02\x44\x01\x00"
    return b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff" + comment + image + b"\x3b"


def make_svg(seed: int) -> bytes:
    r = random.Random(seed)
    circles = "".join(
        f'<circle cx="{r.randrange(64)}" cy="{r.randrange(64)}" r="{r.randrange(1, 9)}"/>' for _ in range(8)
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">{circles}</svg>'.encode()


# --------------------------------------------------------------------------------------
# (a) hostile request paths over a raw socket
# --------------------------------------------------------------------------------------

SEED = 20261127
N_PATHS = 1200
CANARY = b"CANARY-" + hashlib.sha256(b"outside the artifacts dir").hexdigest().encode()
SECRET = b"DOTFILE-" + hashlib.sha256(b"a dotfile inside the artifacts dir").hexdigest().encode()
HIDDEN = b"HIDDEN-" + hashlib.sha256(b"under a dot directory").hexdigest().encode()
NEVER = (CANARY, SECRET, HIDDEN, b"root:x:0:0", b"Traceback")

ARTIFACTS: dict[str, bytes] = {
    "a.png": make_png(1, 12),
    "notes.txt": b"plain notes\n",
    "sub/deep.txt": b"deep file\n",
    "caf\u00e9 \u2024 r\u00e9sum\u00e9.txt": b"non-ASCII name\n",
}


def plant(ws: Workspace) -> None:
    """Published files, a canary outside the artifacts dir, a dotfile, a dot dir and two symlinks inside."""
    for name, data in ARTIFACTS.items():
        ws.write(name, data)
    (ws.root / "canary.txt").write_bytes(CANARY)
    (ws.artifacts / ".secret").write_bytes(SECRET)
    (ws.artifacts / "sub" / ".hidden").mkdir()
    (ws.artifacts / "sub" / ".hidden" / "x.txt").write_bytes(HIDDEN)
    (ws.artifacts / "link.png").symlink_to(ws.root / "canary.txt")
    (ws.artifacts / "linkdir").symlink_to(ws.root)


def _pct(text: str, upper: bool = False) -> str:
    """Every byte percent-encoded."""
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in text.encode())


# Things that may spell "..", "." or a separator to some decoder, somewhere.
DOTDOT = [
    "..", "...", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2e", "%252e%252e", "%25%32%65%25%32%65",
    "%c0%ae%c0%ae", "%e0%80%ae%e0%80%ae", "%f0%80%80%ae%f0%80%80%ae", "%c0%2e%c0%2e", "..;", "..%00", "..%01",
    "..%20", " ..", "..\t", "..\\", "..%5c", "..%2f", "%2e%2e%2f", "%2e%2e%5c",
    "\u2024\u2024", "\uff0e\uff0e", "\ufe52\ufe52", "\u3002\u3002", "\u2025", "%e2%80%a4%e2%80%a4",
    "%ef%bc%8e%ef%bc%8e", "%e2%80%a5", ".\u200b.", "%2e%e2%80%8b%2e",
]  # fmt: skip
SEPARATORS = [
    "/", "/", "/", "//", "/./", "%2f", "%2F", "\\", "%5c", "%5C", "%252f", "%c0%af", "%e0%80%af", "%c1%9c",
    "\u2215", "%e2%88%95", "\uff0f", "%ef%bc%8f", "\u2044", "%e2%81%84", "\uff3c", "%ef%bc%bc", "\u29f8",
    "%00/", ";/", "?/",
]  # fmt: skip
NAMES = [
    "a.png", "notes.txt", "sub", "deep.txt", ".secret", ".hidden", "x.txt", "link.png", "linkdir", "canary.txt",
    "artifacts", "state", "manifest.json", "etc", "passwd", "proc", "self", "environ", "A.PNG", "a.png.", "a.png ",
    "a.png%00", "a.png%00.txt", "a.png\x00", "a.png%0d%0aX-Injected:%20yes", "%61%2e%70%6e%67", "%2esecret",
    "%2Esecret", "%c0%aesecret", "\uff0esecret", "\u2024secret", "\uff41.png", "a\u0307.png", "a.pn\u0261",
    "caf\u00e9 \u2024 r\u00e9sum\u00e9.txt", "cafe\u0301 \u2024 re\u0301sume\u0301.txt", "~", "~root", "C:",
    "c:\\windows", "file:", "%", "%%", "%zz", "%e9", "%ff%fe", "\xff", "*", ";", "a.png;x=1", "a.png#frag", "CON",
    "nul",
]  # fmt: skip
PREFIXES = [
    "/artifacts/", "/artifacts/", "/artifacts/", "/artifacts/", "/artifacts/", "/artifacts", "/", "//artifacts/",
    "/ARTIFACTS/", "/artifacts%2f", "/artifacts%2F", "/artifacts\\", "/%61rtifacts/", "/artifacts/./",
    "/artifacts/sub/", "/artifacts/sub/../", "/v1/../artifacts/", "/./artifacts/", "", "artifacts/",
    "http://127.0.0.1/artifacts/", "http://127.0.0.1:1/artifacts/", "//127.0.0.1/artifacts/",
]  # fmt: skip
QUERIES = ["", "", "", "", "?download=1", "?x=../../canary.txt", "?expires=1&signature=AAAA", "?%00", "#/../x"]


_URL_OK = frozenset(chr(i) for i in range(0x21, 0x7F)) - frozenset('\\"<>^`{|}')


def hostile_targets(root: Path, count: int, seed: int) -> list[bytes]:
    """Request targets as raw bytes: the daemon's own parser is the first thing they meet."""
    rng = random.Random(seed)
    # the absolute path of the canary and its parts, so that enough `..` can reach it
    abs_parts = [p for p in (root / "canary.txt").parts if p != "/"]
    pool = NAMES + abs_parts
    # every published name by its own path first (asked with GET: the harness must see their 200s)
    targets = [("/artifacts/" + "/".join(urllib.parse.quote(s) for s in n.split("/"))).encode() for n in ARTIFACTS]
    # direct tries at each planted thing
    for direct in (
        "/artifacts/../canary.txt", "/artifacts/%2e%2e/canary.txt", "/artifacts/..%2fcanary.txt",
        "/artifacts/.secret", "/artifacts/link.png", "/artifacts/linkdir/canary.txt", "/artifacts/sub/.hidden/x.txt",
        "/artifacts/%2Esecret", "/artifacts/", "/artifacts", "/artifacts/sub", "/artifacts/sub/",
        "/artifacts/" + "/".join([".."] * 40) + str(root / "canary.txt"),
        "/artifacts/" + "%2f".join(["%2e%2e"] * 40) + urllib.parse.quote(str(root / "canary.txt"), safe=""),
        "/artifacts/" + str(root / "canary.txt"), "/artifacts//" + str(root / "canary.txt"),
        "/artifacts/%2F" + urllib.parse.quote(str(root / "canary.txt")[1:], safe=""),
        "/artifacts/..\\canary.txt", "/artifacts/..%5ccanary.txt", "/artifacts/%c0%ae%c0%ae/canary.txt",
        "/artifacts/\uff0e\uff0e/canary.txt", "/artifacts/\u2024\u2024\u2215canary.txt", "/artifacts/.secret%00",
        "/artifacts/a.png/../.secret", "/artifacts/a.png%2f..%2f.secret", "/artifacts/sub%2fdeep.txt",
    ):  # fmt: skip
        targets.append(direct.encode())
        encoded = "".join(c if c in _URL_OK else _pct(c) for c in direct)
        if encoded != direct:  # raw, the HTTP parser refuses it; encoded, it reaches the lookup
            targets.append(encoded.encode())
    while len(targets) < count:
        kind = rng.random()
        if kind < 0.05:  # very long: one huge segment, or thousands of dot segments
            unit = rng.choice(["A", "../", "%2e%2e/", "a/", "\uff0e\uff0e/", "%c0%ae%c0%ae/", "./"])
            n = rng.choice([255, 256, 1024, 4000, 9000, 20000]) // len(unit) + 1
            target = rng.choice(PREFIXES[:5]) + unit * n + rng.choice(["canary.txt", "a.png", ""])
        else:
            parts = []
            for _ in range(rng.randint(1, 8)):
                r = rng.random()
                parts.append(rng.choice(DOTDOT) if r < 0.45 else rng.choice(pool))
                parts.append(rng.choice(SEPARATORS))
            parts.pop()
            body = "".join(parts)
            if rng.random() < 0.2:  # percent-encode some of it (again)
                cut = rng.randrange(len(body) + 1)
                body = body[:cut] + _pct(body[cut:], upper=rng.random() < 0.5)
            target = rng.choice(PREFIXES) + body + rng.choice(QUERIES)
        if rng.random() < 0.85:  # encoded as a client would send it; raw, the HTTP parser itself refuses most of it
            target = "".join(c if c in _URL_OK else _pct(c, upper=rng.random() < 0.5) for c in target)
        raw = target.encode()
        if rng.random() < 0.03:  # a raw byte that is not UTF-8 at all
            at = rng.randrange(len(raw) + 1)
            raw = raw[:at] + rng.choice([b"\xc0\xae", b"\xff", b"\x80", b"\xe2\x88", b"\x00", b"\x7f"]) + raw[at:]
        targets.append(raw)
    return targets


def _split(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


TOKEN = "fuzz-token"  # noqa: S105 - a test token


@pytest.mark.parametrize(
    "parser",
    [
        pytest.param({}, id="c-parser"),
        # aiohttp's pure-Python HTTP parser (used where its C extension is not built) lets non-ASCII bytes through
        pytest.param({"AIOHTTP_NO_EXTENSIONS": "1"}, id="python-parser"),
    ],
)
async def test_hostile_paths_never_escape_the_artifacts_dir(
    run_sidecar: Callable[..., Awaitable[Sidecar]],
    workspace: Callable[..., Workspace],
    http: aiohttp.ClientSession,
    parser: dict[str, str],
) -> None:
    """1,200 generated targets: no canary, dotfile or symlink target, no 5xx, only artifact bodies, still alive.

    Most requests carry the bearer token (so that they reach the lookup); one in five does not and goes
    through the signed-URL check instead (unexpired, half of them with a signature valid for the raw path).
    """
    ws = workspace()
    plant(ws)
    sc = await run_sidecar("--auth-token", TOKEN, env=parser)
    doc = await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == len(ARTIFACTS))
    assert sorted(names(doc)) == sorted(ARTIFACTS)
    bodies = set(ARTIFACTS.values())
    sizes = {str(len(b)).encode() for b in bodies}

    targets = hostile_targets(ws.root, N_PATHS, SEED)
    assert len(targets) >= 1000
    limit = asyncio.Semaphore(8)
    expires = int(time.time()) + 3600

    async def one(i: int, target: bytes) -> tuple[int, bytes, bytes, bytes]:
        method = b"HEAD" if i % 10 == 9 else b"GET"
        version = b"HTTP/1.0" if i % 7 == 6 else b"HTTP/1.1"
        auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        if i % 5 == 4 and i >= len(ARTIFACTS):
            auth = b""
            if b"?" not in target and b"#" not in target:
                path = target.decode("utf-8", "surrogateescape")
                try:
                    signature = sign(TOKEN, path, expires).encode() if i % 2 else b"AAAA"
                except UnicodeEncodeError:  # a path that is not UTF-8: a signature is made up
                    signature = b"AAAA"
                if i % 3 == 0:  # raw bytes in the signature too
                    signature = b"\xff" + signature
                target += f"?expires={expires}&signature=".encode() + signature
        head = (
            method + b" " + target + b" " + version + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + auth + b"\r\n"
        )
        async with limit:
            status, data = await raw_request(sc.port, head, timeout=10.0)
        return status, method, target, data

    started = time.monotonic()
    results = await asyncio.gather(*(one(i, t) for i, t in enumerate(targets)))
    elapsed = time.monotonic() - started

    statuses: dict[int, int] = {}
    served: list[bytes] = []
    for status, method, target, data in results:
        statuses[status] = statuses.get(status, 0) + 1
        shown = target[:200]
        for secret in NEVER:
            assert secret not in data, f"{secret[:12]!r} in the answer to {shown!r}"
        assert status != 0, f"no HTTP answer to {shown!r}: {data[:200]!r}"
        assert status < 500, f"{status} for {shown!r}: {data[:400]!r}"
        got, headers, body = _split(data)
        assert got == status
        if status in (200, 206):
            assert status == 200, f"206 without a Range header for {shown!r}"
            if method == b"GET":
                assert body in bodies, f"200 for {shown!r} is not a published artifact: {body[:200]!r}"
                served.append(target)
            else:
                assert headers.get(b"content-length") in sizes, f"HEAD {shown!r}: {headers}"
    # the harness sees a 200 when there is one: every published name was asked for by its own path
    assert len(served) >= len(ARTIFACTS), statuses

    status, data = await raw_request(sc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200, data
    assert sc.proc.poll() is None
    assert not sc.events("http.error"), sc.events("http.error")[:3]
    assert elapsed < 60, f"{len(targets)} requests took {elapsed:.1f} s"


# --------------------------------------------------------------------------------------
# (b) parse_data_url on text made of the pieces data URLs are made of
# --------------------------------------------------------------------------------------

URL_PIECES = [
    "data:", "DaTa:", "data:", " ", "\t", "\n", "\r", "\x0c", "\x00", "\x1f", ";", ",", ",", "base64", ";base64",
    "; base64", ";BASE64,", ";base64 ,", "=", "==", "%", "%2", "%25", "%3D", "%3d", "%zz", "%00", "%C3%A9", "%FF",
    "%20", "%2C", "/", "//", "\\", "?", "#", "@", ":", "[", "]", "[::1]", "[::", "user:pw@", ":99999", ":80", '"',
    "image/png", "text/plain", "TEXT/HTML", "charset=", "charset=utf-8", 'x="y\\"z"', '"a;b"', "x=;", "=x",
    "AAAA", "QUJD", "QQ", "Q", "+/", "-_", "\ud800", "\udfff", "\u00e9", "\u2028", "\ufeff", "\U0001f600", "\x7f",
    "\u0130", "\u212a", "\xa0", "\x85",
]  # fmt: skip
url_texts = st.lists(
    st.one_of(st.sampled_from(URL_PIECES), st.text(max_size=6), st.characters(codec=None)), max_size=40
).map("".join)
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def reference_forgiving_base64(text: str) -> bytes | None:
    """The Infra standard's forgiving-base64 decode, step by step, bit by bit (None for failure)."""
    text = "".join(c for c in text if c not in "\t\n\x0c\r ")
    if len(text) % 4 == 0:
        if text.endswith("=="):
            text = text[:-2]
        elif text.endswith("="):
            text = text[:-1]
    if len(text) % 4 == 1 or any(c not in B64_ALPHABET for c in text):
        return None
    bits = "".join(f"{B64_ALPHABET.index(c):06b}" for c in text)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8))


class TestParseDataUrlFuzz:
    @settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])  # ms: no hang
    @given(prefix=st.sampled_from(["data:", "DATA:", " data:", "data:,", ""]), text=url_texts)
    @example(prefix="data:", text="\ud800,x")
    @example(prefix="data:", text="//[::1,x")
    @example(prefix="data:", text=";base64,\u00e9")
    def test_only_data_url_errors(self, prefix: str, text: str) -> None:
        """Whatever the text: a DataURL whose MIME type re-parses to itself, or DataURLError/ValueError."""
        try:
            d = parse_data_url(prefix + text)
        except (DataURLError, ValueError):  # DataURLError is a ValueError: the only failures allowed
            return
        assert isinstance(d.body, bytes)
        assert d.essence == d.essence.lower() and d.essence.count("/") == 1
        assert d.mime_type.startswith(d.essence)
        # serializing a parsed MIME type and parsing it again gives the same (WHATWG MIME Sniffing)
        assert parse_mime_type(d.mime_type) == (d.mime_type, d.essence)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([*B64_ALPHABET, "=", "=", " ", "\n", "\t", "\x0c", "\r", "-", "_", "%", "\xe9"])))
    def test_forgiving_base64_is_the_infra_algorithm(self, chars: list[str]) -> None:
        """Differential: the fast decoder accepts and refuses exactly what the Infra algorithm does."""
        text = "".join(chars)
        expected = reference_forgiving_base64(text)
        try:
            got: bytes | None = forgiving_base64_decode(text)
        except DataURLError:
            got = None
        assert got == expected

    @pytest.mark.parametrize(
        "text",
        [
            "data:" + ";" * 200_000 + ",x",
            "data:a/b" + ";x=" * 100_000 + ",x",
            "data:a/b;x=" + '"\\' * 100_000 + ",x",
            "data:a/b" + ';x="' * 100_000 + ",x",
            "data:," + "%" * 1_000_000,
            "data:," + "%zz" * 300_000,
            "data:;base64," + "A" * 1_000_001,
            "data:;base64," + "A " * 500_000,
            "data:" + "/.." * 200_000 + ",x",
            "data://" + "a" * 200_000 + "/" + "%2e%2e/" * 100_000 + ",x",
            "data:" + "\ud800" * 200_000 + ",x",
            " \x00" * 200_000 + "data:,x" + "#" * 200_000,
        ],
        ids=lambda t: repr(t[:16]),
    )
    def test_huge_hostile_inputs_end_quickly(self, text: str) -> None:
        """Long runs of what makes parsers backtrack or go quadratic: linear time, no other exception."""
        started = time.perf_counter()
        with contextlib.suppress(DataURLError):
            parse_data_url(text)
        assert time.perf_counter() - started < 3.0


# --------------------------------------------------------------------------------------
# (b) the scanner and materialize_file on random text with fragments of data URLs in it
# --------------------------------------------------------------------------------------

IMAGES = {
    "png": [make_png(s, 12) for s in range(3)] + [make_png(9, 40)],
    "gif": [make_gif(s) for s in range(2)],
    "svg": [make_svg(s) for s in range(2)],
}
DECLARED = {"png": "image/png", "gif": "image/gif", "svg": "image/svg+xml"}
JUNK = [
    '"', '"', "\\", "\\/", "\\n", "\n", "\r\n", " ", ",", ":", "{", "}", "[", "]", "(", ")", "<", ">", "'", "=", "==",
    "data:", "DATA:", "data:image/png;base64,", "data:image/png;base64,iVBORw0KGgo", "data:image/svg+xml,",
    "data:image/svg+xml;utf8,<svg>", "data:image/png,", "data:image/gif;base64,R0lGODlh", "data:image/x-foo;base64,",
    "data:text/plain;base64,", "data:image\\/png;base64,", ";base64,", "<svg", "</svg>", "</svg >", "%3Csvg",
    "%3C%2Fsvg%3E", '{"type":"image","data":"', '"}', '{"type":"image","source":{"data":"', "iVBORw0KGgo", "R0lGOD",
    "/9j/", "PHN2Zy", "AAAA", "QUJD", "-_", "+/", "\u00e9", "\U0001f600", "\x00", "\xff",
    '\\"', '\\n"', '"image/png": [', '"image/png":[\n "', '\\n",\n  "', '",', "<?xml", '<?xml version="1.0"?>',
    "%3C%3Fxml", "\\u00e9", "\\ud83d", "#",
]  # fmt: skip


def data_url_forms(kind: str, image: bytes, form: int) -> str:
    """One image as one of the textual forms agents and tools produce."""
    mime = DECLARED[kind]
    enc = b64(image)
    if form == 0:
        return f"data:{mime};base64,{enc}"
    if form == 1:  # wrapped at 76 with real line breaks
        return f"data:{mime};base64,{wrap(enc, 76, chr(10))}"
    if form == 2:  # wrapped at 64 with JSON `\n` escapes
        return f"data:{mime};base64,{wrap(enc, 64, chr(92) + 'n')}"
    if form == 3:  # inside a JSON string: `\/` escapes
        return f"data:{mime.replace('/', chr(92) + '/')};base64,{enc.replace('/', chr(92) + '/')}"
    if form == 4:  # URL-safe alphabet, padding dropped
        return f"data:{mime};base64,{base64.urlsafe_b64encode(image).decode().rstrip('=')}"
    if form == 5 and kind == "svg":  # raw, then percent-encoded
        return f"data:{mime},{image.decode()}"
    if form == 6 and kind == "svg":
        return f"data:{mime},{urllib.parse.quote(image.decode())}"
    if form == 8:  # a bare string escaped inside another JSON string
        return f'\\"{enc}\\"'
    if form == 9:  # Jupyter: one string ending in `\n`, or wrapped at 76 by `\n` escapes
        return f'"{enc}\\n"' if len(enc) % 2 else f'"{wrap(enc, 76, chr(92) + "n")}\\n"'
    if form == 10:  # Jupyter: a list of line strings
        return '"image/png": [\n "' + wrap(enc, 76, '\\n",\n "') + '"\n]'
    if form == 11 and kind == "svg":  # raw SVG with a prolog inside a JSON string
        return '"data:image/svg+xml,' + json.dumps('<?xml version="1.0"?>\n' + image.decode())[1:-1] + '"'
    return f'"{enc}"'  # a bare base64 JSON string


@st.composite
def soups(draw: st.DrawFn) -> bytes:
    """Random text with whole, cut and corrupted data URLs (and bare base64 images) mixed in."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 9))
        if choice <= 3:
            out.append(draw(st.sampled_from(JUNK)).encode())
        elif choice == 4:
            out.append(draw(st.binary(max_size=24)))
        else:
            kind = draw(st.sampled_from(sorted(IMAGES)))
            image = draw(st.sampled_from(IMAGES[kind]))
            text = data_url_forms(kind, image, draw(st.integers(0, 11))).encode()
            damage = draw(st.integers(0, 5))
            if damage == 1:  # cut anywhere
                text = text[: draw(st.integers(0, len(text)))]
            elif damage == 2:  # one byte changed
                at = draw(st.integers(0, len(text) - 1))
                text = text[:at] + bytes([draw(st.integers(0, 255))]) + text[at + 1 :]
            elif damage == 3:  # a piece cut out of the middle
                a = draw(st.integers(0, len(text)))
                b = draw(st.integers(a, len(text)))
                text = text[:a] + text[b:]
            out.append(text)
    return b"".join(out)


def _settings(root: Path, min_bytes: int, bare: bool) -> Settings:
    return Settings(
        artifacts_dir=root / "artifacts",
        state_dir=root / "state",
        tool_results_dirs=[root / "results"],
        min_data_url_bytes=min_bytes,
        bare_base64_images=bare,
    )


def _check_materialized(root: Path, outcomes: list[Outcome]) -> set[str]:
    """Every file written is a whole image of the type recorded; nothing else is left in the artifacts dir."""
    written: set[str] = set()
    for o in outcomes:
        if o.status == "rejected":
            assert o.name is None and o.reason in ("invalid_base64", "empty", "too_large", "truncated", "corrupt")
            continue
        assert o.status == "materialized" and o.name is not None
        data = (root / "artifacts" / o.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == o.sha256, o
        assert o.name == f"datauri-{o.sha256[:16]}.{o.name.rsplit('.', 1)[1]}"
        detected = sniff(data[:4096])
        if detected is not None:
            assert o.mime_type == detected, o
            assert is_complete_bytes(detected, data), f"{o.name}: not a complete {detected}"
            assert damage_bytes(detected, data) is None, f"{o.name}: a damaged {detected}"
        else:  # bytes that cannot be checked are only written for a declared type that is not sniffable
            assert (o.mime_type or "").split(";")[0] not in DECLARED.values(), o
        written.add(o.name)
    on_disk = set(os.listdir(root / "artifacts"))
    assert on_disk == written, f"left behind: {on_disk - written}"
    return written


class TestMaterializeFuzz:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=soups(), min_bytes=st.sampled_from([0, 1, 64, 512]), bare=st.booleans())
    def test_random_text_materializes_only_whole_images(self, text: bytes, min_bytes: int, bare: bool) -> None:
        """No crash; every file written is a whole image; a second run over the rewritten text adds nothing."""
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            source = root / "results" / "tool-results" / "out.txt"
            source.parent.mkdir(parents=True)
            source.write_bytes(text)
            s = _settings(root, min_bytes, bare)
            started = time.perf_counter()
            first = materialize_file(source, s)
            assert time.perf_counter() - started < 5.0
            written = _check_materialized(root, first)
            for o in first:
                if o.status == "materialized":
                    assert f"/artifacts/{o.name}".encode() in source.read_bytes()
            again = materialize_file(source, s)
            assert [o for o in again if o.status == "materialized"] == [], again
            assert set(os.listdir(root / "artifacts")) == written

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=soups(), bare=st.booleans(), data=st.data())
    def test_scanner_does_not_depend_on_how_the_text_is_cut(self, text: bytes, bare: bool, data: st.DataObject) -> None:
        """The same hostile text fed in any pieces gives the same payloads (the bytes too, unless in error)."""

        def seen(matches: list[Match]) -> list[tuple[object, ...]]:
            # after `invalid_base64` the decoded bytes are not to be trusted (Ended's contract): not compared
            return [
                (m.offset, m.end, m.bare, m.mime_type, m.error, m.body if m.error is None else b"") for m in matches
            ]

        whole = scan_bytes(text, bare_images=bare)
        splits = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
        assert seen(scan_bytes(text, bare_images=bare, splits=splits)) == seen(whole)
        for m in whole:
            assert 0 <= m.offset < m.end <= len(text)

    @pytest.mark.slow  # 5-10 s on 2 cores when every case is linear
    def test_large_hostile_texts_end_in_bounded_time(self, tmp_path: Path) -> None:
        """Repeated starts, unclosed SVGs, long escapes (0.25-3.3 MB each): linear time, nothing invalid written.

        Each text is materialized by a child process (two at a time) killed after 20 s, so that a scan that
        goes quadratic fails the test instead of hanging it. A linear scanner needs a few seconds at most
        per case (most take a fraction of one); a quadratic one needs minutes for the larger ones.
        """
        cases: dict[str, bytes] = {
            "starts": b"data:" * 50_000,
            "headers": b"data:image/png;base64," * 25_000,
            "unclosed-svg": b"data:image/svg+xml,<svg" * 20_000,
            # each SVG ends at the space without a closing tag
            "unclosed-svg-text": b"data:image/svg+xml,<svg>x " * 16_000,
            "nested-svg": b"data:image/svg+xml,%3Csvg" + b"<svg " * 200_000,
            "bare-starts": b'"iVBORw0KGgo' * 30_000,
            "wrapped-no-end": b"data:image/png;base64," + (b"A" * 76 + b"\\n") * 10_000 + b"!",
            "escapes": b"data:image/png;base64," + b"\\/" * 500_000,
            "backslashes": b"\\" * 1_000_000,
            # the scanner itself, fed 3.3 MB at once (scan_bytes), not in materialize_file's 1 MiB reads
            "scan-unclosed-svg-text": b"data:image/svg+xml,<svg>x " * 128_000,
        }
        script = (
            "import sys, time, json\n"
            "from pathlib import Path\n"
            "from sidecar.config import Settings\n"
            "from sidecar.materialize import materialize_file\n"
            "from sidecar.scanner import scan_bytes\n"
            "source, artifacts = Path(sys.argv[1]), Path(sys.argv[2])\n"
            "s = Settings(artifacts_dir=artifacts, state_dir=artifacts.parent / 'state',\n"
            "             tool_results_dirs=[source.parent], min_data_url_bytes=0)\n"
            "t = time.perf_counter()\n"
            "if sys.argv[3] == 'scan':\n"
            "    scan_bytes(source.read_bytes())\n"
            "    names = []\n"
            "else:\n"
            "    outcomes = materialize_file(source, s)\n"
            "    names = [o.name for o in outcomes if o.status == 'materialized']\n"
            "print(json.dumps([time.perf_counter() - t, names]), flush=True)\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)

        def run(name: str) -> tuple[str, float | None, list[str]]:
            (tmp_path / name).mkdir()
            (tmp_path / name / "source.txt").write_bytes(cases[name])
            mode = "scan" if name.startswith("scan-") else "materialize"
            source, artifacts = tmp_path / name / "source.txt", tmp_path / name / "art"
            cmd = [sys.executable, "-c", script, str(source), str(artifacts), mode]
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=20, env=env, check=False)
            except subprocess.TimeoutExpired:  # the child is killed
                return name, None, []
            assert done.returncode == 0, f"{name}: exit {done.returncode}: {done.stderr.decode()[-2000:]}"
            seconds, written = json.loads(done.stdout)
            return name, seconds, written

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(run, cases))
        seconds = {name: None if t is None else round(t, 2) for name, t, _ in results}
        assert None not in seconds.values(), f"killed after 20 s (None) or seconds taken: {seconds}"
        for name, _, written in results:
            for artifact in written:
                data = (tmp_path / name / "art" / artifact).read_bytes()
                kind = sniff(data[:4096])
                assert kind is not None and is_complete_bytes(kind, data), (name, artifact)


# --------------------------------------------------------------------------------------
# (b) a bounded coverage-guided run (atheris, libFuzzer) of the same parsers
# --------------------------------------------------------------------------------------

ATHERIS_RUNS = 100_000


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed: pip install atheris (wheels for 3.11)",
)
def test_atheris_bounded_run(tmp_path: Path) -> None:
    """tests/fuzz_atheris.py for a fixed number of inputs (about 10 s): no crash, no slow input."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("fuzz_atheris.py")),
        f"-runs={ATHERIS_RUNS}",
        "-max_len=4096",
        "-timeout=10",
        "-seed=1",
        f"-artifact_prefix={tmp_path}/",
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=180, env=env, cwd=tmp_path, check=False)
    log = (done.stdout + done.stderr).decode(errors="replace")
    found = sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "slow-unit-", "oom-"))
    )
    shown = log[log.find("=== Uncaught Python exception") :] if "=== Uncaught Python exception" in log else log[-4000:]
    assert done.returncode == 0 and not found, f"exit {done.returncode}, {found}:\n{shown[:4000]}"
    assert f"Done {ATHERIS_RUNS} runs" in log, log[-2000:]
