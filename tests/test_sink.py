"""sidecar.sink: decoded payloads become artifact files beneath the artifacts dir's fd, durably and atomically."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.corpus import encode, flip_idat

from sidecar import sink
from sidecar.sink import BATCH_FILES, Batch, Sink, write_all

SPILL = 4 << 20  # what sink keeps in memory before a temp file


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    d = tmp_path / "artifacts"
    d.mkdir()
    return d


@pytest.fixture
def dirfd(artifacts: Path) -> Iterator[int]:
    """The artifacts dir opened as the sidecar opens it: every name the sink uses is relative to this fd."""
    fd = os.open(artifacts, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def filled(fd: int, *pieces: bytes, limit: int = 64 << 20) -> Sink:
    s = Sink(fd, limit)
    for p in pieces:
        s.write(p)
    return s


class TestWriting:
    def test_a_small_payload_stays_in_memory_until_committed(self, dirfd: int, artifacts: Path) -> None:
        """Nothing touches the disk while a small payload is decoded; size, hash and head are kept."""
        s = filled(dirfd, b"hello ", b"world")
        assert list(artifacts.iterdir()) == []
        assert s.size == 11 and s.sha.hexdigest() == hashlib.sha256(b"hello world").hexdigest()
        assert s.head == b"hello world"

    def test_a_large_payload_spills_to_a_hidden_temp_file(self, dirfd: int, artifacts: Path) -> None:
        """Past 4 MiB the bytes go to a `.datauri-*.tmp` file the watcher ignores, not to memory."""
        data = random.Random(1).randbytes(SPILL + 1000)
        s = filled(dirfd, data[:SPILL], data[SPILL:])
        (tmp,) = temps(artifacts)
        assert tmp.startswith(".datauri-") and tmp.endswith(".tmp")
        assert (artifacts / tmp).read_bytes() == data
        assert s.memory == [] and len(s.head) == 1024
        s.discard()
        assert list(artifacts.iterdir()) == []

    def test_too_large_stops_storing_and_keeps_counting(self, dirfd: int, artifacts: Path) -> None:
        """Over the limit the temp file is removed at once; the size still grows for the rejection."""
        s = filled(dirfd, b"x" * (SPILL + 10), limit=SPILL + 20)
        assert temps(artifacts) != []
        s.write(b"y" * 100)
        s.write(b"z" * 100)
        assert s.too_large and s.size == SPILL + 210
        assert list(artifacts.iterdir()) == []

    def test_write_all_writes_everything(self, tmp_path: Path) -> None:
        """write_all loops over short writes: a pipe drained by the reader end gets every byte."""
        r, w = os.pipe()
        try:
            data = random.Random(2).randbytes(50_000)  # less than a pipe buffer holds
            write_all(w, data)
            os.close(w)
            got = b""
            while chunk := os.read(r, 65536):
                got += chunk
            assert got == data
        finally:
            os.close(r)


class TestCommit:
    def test_a_file_appears_only_after_the_flush(self, dirfd: int, artifacts: Path) -> None:
        """commit leaves a temp file; flush syncs and renames it into place; no temp file remains."""
        batch = Batch(dirfd)
        s = filled(dirfd, b"payload bytes")
        s.commit("datauri-abc.txt", batch)
        assert not (artifacts / "datauri-abc.txt").exists() and len(temps(artifacts)) == 1
        assert batch.flush() == {}
        assert (artifacts / "datauri-abc.txt").read_bytes() == b"payload bytes"
        assert temps(artifacts) == []

    def test_names_are_beneath_the_fd_not_a_path(self, dirfd: int, artifacts: Path, tmp_path: Path) -> None:
        """The artifacts dir renamed while a payload is written: the file lands in the directory the fd
        holds, and nothing is created at the old path."""
        moved = tmp_path / "moved"
        artifacts.rename(moved)
        artifacts.mkdir()  # someone else's directory now has the old name
        batch = Batch(dirfd)
        filled(dirfd, b"abc").commit("a.txt", batch)
        assert batch.flush() == {}
        assert (moved / "a.txt").read_bytes() == b"abc"
        assert list(artifacts.iterdir()) == []

    def test_a_symlink_at_the_target_is_replaced_not_followed(
        self, dirfd: int, artifacts: Path, tmp_path: Path
    ) -> None:
        """A link planted where the artifact goes (to a file outside, of the same size) is neither taken for
        the payload nor written through: the artifact becomes a regular file, the outside file is untouched."""
        outside = tmp_path / "outside.txt"
        outside.write_bytes(b"secret")
        (artifacts / "a.txt").symlink_to(outside)
        batch = Batch(dirfd)
        filled(dirfd, b"public").commit("a.txt", batch)
        assert batch.flush() == {}
        assert not (artifacts / "a.txt").is_symlink()
        assert (artifacts / "a.txt").read_bytes() == b"public"
        assert outside.read_bytes() == b"secret"

    def test_an_identical_file_is_kept(self, dirfd: int, artifacts: Path) -> None:
        """The same name (it carries the hash) and size already there: nothing is written again."""
        (artifacts / "a.txt").write_bytes(b"same")
        before = os.stat(artifacts / "a.txt").st_ino
        batch = Batch(dirfd)
        filled(dirfd, b"same").commit("a.txt", batch)
        assert batch.items == [] and temps(artifacts) == []
        assert batch.flush() == {} and os.stat(artifacts / "a.txt").st_ino == before

    def test_the_same_payload_twice_in_a_batch_is_one_file(self, dirfd: int, artifacts: Path) -> None:
        """The second copy is discarded before it reaches the disk."""
        batch = Batch(dirfd)
        filled(dirfd, b"twice").commit("t.txt", batch)
        filled(dirfd, b"twice").commit("t.txt", batch)
        assert len(batch.items) == 1 and len(temps(artifacts)) == 1
        batch.flush()
        assert [p.name for p in artifacts.iterdir()] == ["t.txt"]


class TestBatch:
    def test_full_after_batch_files(self, dirfd: int) -> None:
        """A batch asks to be flushed at BATCH_FILES payloads."""
        batch = Batch(dirfd)
        for i in range(BATCH_FILES - 1):
            batch.add(f".t{i}", f"a{i}", 1)
        assert not batch.full
        batch.add(".last", "last", 1)
        assert batch.full

    def test_without_syncfs_each_file_is_fsynced(
        self, dirfd: int, artifacts: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where syncfs(2) is missing the flush falls back to one fsync a file, with the same result."""
        monkeypatch.setattr(sink, "_SYNCFS", None)
        batch = Batch(dirfd)
        for i in range(3):
            filled(dirfd, b"n%d" % i).commit(f"f{i}.txt", batch)
        assert batch.flush() == {}
        assert sorted(p.name for p in artifacts.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]

    def test_a_rename_that_fails_is_reported_and_cleaned_up(self, dirfd: int, artifacts: Path) -> None:
        """A target that cannot be replaced (a non-empty directory): flush names it, removes its temp
        file, and still places the others."""
        (artifacts / "busy").mkdir()
        (artifacts / "busy" / "x").write_bytes(b"x")
        batch = Batch(dirfd)
        filled(dirfd, b"1").commit("busy", batch)
        filled(dirfd, b"2").commit("ok.txt", batch)
        failed = batch.flush()
        assert list(failed) == ["busy"] and isinstance(failed["busy"], OSError)
        assert (artifacts / "ok.txt").read_bytes() == b"2"
        assert temps(artifacts) == [] and batch.items == []

    def test_flushing_an_empty_batch_does_nothing(self, dirfd: int) -> None:
        """No payload, no sync, no failure."""
        assert Batch(dirfd).flush() == {}


class TestProblem:
    @pytest.mark.parametrize("spilled", [False, True], ids=["in-memory", "spilled"])
    def test_complete_truncated_and_corrupt_images(self, dirfd: int, spilled: bool) -> None:
        """An intact PNG has no problem; a cut one is `truncated`; a flipped byte is `corrupt` — whether
        the bytes are still in memory or already in the temp file."""
        rng = random.Random(3)
        png = encode(rng, "png")
        pad = b""
        if spilled:  # a private chunk big enough to spill, with a right CRC
            body = bytes(SPILL)
            pad = struct.pack(">I", len(body)) + b"zzZz" + body + struct.pack(">I", zlib.crc32(b"zzZz" + body))
        at = 33  # after the signature and IHDR
        intact = png[:at] + pad + png[at:]
        for data, want in (
            (intact, None),
            (intact[:-20], "truncated"),
            (flip_idat(intact, rng), "corrupt"),
        ):
            s = filled(dirfd, data)
            assert (s.fd >= 0) == spilled
            got = s.problem("image/png")
            assert (got[0] if got else None) == want
            s.discard()
