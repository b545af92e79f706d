"""The files every server serves: made once under bench/.fixtures/, reused while they still match their index."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

SMALL_COUNT = 200
SMALL_SIZE = 20 * 1024
BIG_SIZE = 200 * 1024 * 1024
BIG_NAME = "big.bin"
LAYOUT = 1  # bump when the set of files changes, so old fixtures get rebuilt
_CHUNK = 4 * 1024 * 1024


def small_name(i: int) -> str:
    return f"f{i:03d}.bin"


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
    def names(self) -> list[str]:
        return sorted(self.sizes)


def _expected_sizes() -> dict[str, int]:
    sizes = {small_name(i): SMALL_SIZE for i in range(SMALL_COUNT)}
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
    """Reuse bench/.fixtures/files when intact; otherwise write 200 x 20 KiB + one 200 MiB file of random bytes."""
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
