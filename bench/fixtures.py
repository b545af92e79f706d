"""The files every server serves, and the tool-results files for the data-URL run: made once under
bench/.fixtures/, reused while they still match their index."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

SMALL_COUNT = 200
SMALL_SIZE = 20 * 1024
MEDIUM_COUNT = 5
MEDIUM_SIZE = 2 * 1024 * 1024
BIG_SIZE = 200 * 1024 * 1024
BIG_NAME = "big.bin"
LAYOUT = 2  # bump when the set of files changes, so old fixtures get rebuilt
_CHUNK = 4 * 1024 * 1024


def small_name(i: int) -> str:
    return f"f{i:03d}.bin"


def medium_name(i: int) -> str:
    return f"m{i}.bin"


SMALL_TEMPLATE = "f%03d.bin"  # the same names, for the wrk Lua script


@dataclasses.dataclass(frozen=True)
class Fixtures:
    files_dir: Path  # the folder every server serves, nothing else in it
    sha256: dict[str, str]  # name -> hex digest
    sizes: dict[str, int]
    reused: bool

    @property
    def small(self) -> list[str]:
        return [small_name(i) for i in range(SMALL_COUNT)]

    @property
    def medium(self) -> list[str]:
        return [medium_name(i) for i in range(MEDIUM_COUNT)]

    @property
    def names(self) -> list[str]:
        return sorted(self.sizes)


def _expected_sizes() -> dict[str, int]:
    sizes = {small_name(i): SMALL_SIZE for i in range(SMALL_COUNT)}
    sizes.update({medium_name(i): MEDIUM_SIZE for i in range(MEDIUM_COUNT)})
    sizes[BIG_NAME] = BIG_SIZE
    return sizes


def _write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(_CHUNK, left))
            f.write(block)
            h.update(block)
            left -= len(block)
    tmp.rename(path)
    return h.hexdigest()


def _load(base: Path) -> Fixtures | None:
    """The recorded fixtures when the folder holds exactly the indexed files at their sizes (no re-hash)."""
    files_dir = base / "files"
    try:
        index = json.loads((base / "index.json").read_text())
        if index.get("layout") != LAYOUT:
            return None
        sha, sizes = index["sha256"], index["sizes"]
        if sizes != _expected_sizes() or set(sha) != set(sizes):
            return None
        on_disk = {p.name: p.stat().st_size for p in files_dir.iterdir()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if on_disk != sizes:
        return None
    return Fixtures(files_dir, sha, sizes, reused=True)


def ensure(base: Path) -> Fixtures:
    """Reuse bench/.fixtures/files when intact; otherwise write 200 x 20 KiB, 5 x 2 MiB and one 200 MiB file of
    random bytes."""
    found = _load(base)
    if found is not None:
        return found
    files_dir = base / "files"
    shutil.rmtree(files_dir, ignore_errors=True)
    (base / "index.json").unlink(missing_ok=True)
    files_dir.mkdir(parents=True)
    sizes = _expected_sizes()
    sha = {name: _write_random(files_dir / name, size) for name, size in sizes.items()}
    (base / "index.json").write_text(json.dumps({"layout": LAYOUT, "sha256": sha, "sizes": sizes}, indent=1))
    return Fixtures(files_dir, sha, sizes, reused=False)


# ---- tool-results files for the data-URL run -------------------------------------------------------

SHOT_MEAN = 27 * 1024  # a screenshot's size; each one differs (random pixels), from 25 to 29 KiB
TOOL_LAYOUT = 1
_WORDS_TEXT = (
    "the a to of and in is for on with that this it as be by are from at an was not or have has which but "
    "error warning info debug test passed failed running build compile module import function return class "
    "def const let var async await promise request response status header body json value key index array "
    "string number object null true false undefined server client port host localhost http https path file "
    "directory open read write close lines bytes size total count elapsed ms seconds step page click type "
    "selector button input form submit navigate screenshot element visible hidden wait timeout retry done"
)


@dataclasses.dataclass(frozen=True)
class ToolResults:
    dense: Path  # pristine: copy before use, `sidecar materialize` rewrites its input
    plain: Path
    dense_images: int  # data URLs in `dense`, each a distinct complete PNG
    size: int  # bytes of each file (about)
    reused: bool


def _chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_screenshot(rng: random.Random, size: int) -> bytes:
    """A structurally complete PNG (signature, IHDR, one IDAT holding a valid stored zlib stream of random
    bytes, IEND, right CRCs) of about `size` bytes: what the sidecar checks before it materializes one."""
    import zlib

    ihdr = (1280).to_bytes(4, "big") + (800).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(rng.randbytes(max(64, size - 100)), 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _write_until(path: Path, size: int, record: Callable[[int], bytes]) -> int:
    """Write records until the next one would pass `size`, then pad with a text line to exactly `size`."""
    tmp = path.with_name(path.name + ".part")
    n = written = 0
    with open(tmp, "wb") as f:
        batch: list[bytes] = []
        held = 0
        while True:
            rec = record(n)
            if written + held + len(rec) > size - 200:
                break
            batch.append(rec)
            held += len(rec)
            n += 1
            if held >= _CHUNK:
                f.write(b"".join(batch))
                written += held
                batch, held = [], 0
        f.write(b"".join(batch))
        written += held
        pad = size - written  # at least 200: the loop stops 200 bytes short
        f.write(b'{"type":"text","text":"' + b"." * (pad - 26) + b'"}\n')
    tmp.rename(path)
    return n


def ensure_tool_results(base: Path, size: int) -> ToolResults:
    """Two tool-results files of `size` bytes: `dense` is JSON lines each carrying a ~27 KiB PNG screenshot as a
    data URL (distinct random pixels, so each one becomes its own artifact); `plain` is JSON lines of log-like
    text with no data URL at all. Made once per size, reused."""
    d = base / "tool-results"
    dense, plain, index = d / f"dense-{size}.txt", d / f"plain-{size}.txt", d / f"index-{size}.json"
    try:
        doc = json.loads(index.read_text())
        if doc["layout"] == TOOL_LAYOUT and dense.stat().st_size == size and plain.stat().st_size == size:
            return ToolResults(dense, plain, int(doc["dense_images"]), size, reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    d.mkdir(parents=True, exist_ok=True)
    index.unlink(missing_ok=True)
    rng = random.Random(size)

    def shot(i: int) -> bytes:
        png = png_screenshot(rng, SHOT_MEAN + rng.randint(-2048, 2048))
        return (
            b'{"type":"tool_result","tool_use_id":"toolu_%08d","content":[{"type":"text","text":"Screenshot of '
            b'http://localhost:3000/step/%d (1280x800)"},{"type":"image","url":"data:image/png;base64,'
            % (i, i)
            + base64.b64encode(png)
            + b'"}]}\n'
        )

    words = _WORDS_TEXT.split()
    paragraphs = [
        " ".join(rng.choice(words) for _ in range(rng.randint(300, 900))).replace(" done ", " done\\n")
        for _ in range(256)
    ]

    def text(i: int) -> bytes:
        body = "\\n".join(
            f"[{i}.{k}] {rng.choice(paragraphs)} commit {rng.getrandbits(160):040x} src/{k}.ts:{rng.randint(1, 999)}"
            for k in range(rng.randint(1, 6))
        )
        return (
            f'{{"type":"tool_result","tool_use_id":"toolu_{i:08d}","content":[{{"type":"text","text":"{body}"}}]}}\n'
        ).encode()

    images = _write_until(dense, size, shot)
    _write_until(plain, size, text)
    index.write_text(json.dumps({"layout": TOOL_LAYOUT, "dense_images": images}))
    return ToolResults(dense, plain, images, size, reused=False)
