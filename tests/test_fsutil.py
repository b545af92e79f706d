"""sidecar.fsutil: atomic writes, hashing beneath a root, tree walks, and temporary errors told apart."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.fsutil import (
    OrderedFile,
    Transient,
    atomic_write_bytes,
    hash_beneath,
    is_transient,
    list_tree,
    lstat_beneath,
    lstat_many,
    signature,
)


@contextlib.contextmanager
def no_descriptors_left() -> Iterator[None]:
    """Every descriptor under a lowered soft RLIMIT_NOFILE taken: the next open fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class TestAtomicWrite:
    def test_writes_whole_content_with_mode_and_no_temp_left(self, tmp_path: Path) -> None:
        target = tmp_path / "state.json"
        atomic_write_bytes(target, b"one")
        atomic_write_bytes(target, b"two")
        assert target.read_bytes() == b"two"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]

    def test_a_planted_temp_symlink_is_replaced_not_followed(self, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.write_bytes(b"keep")
        state = tmp_path / "state"
        state.mkdir()
        planted = state / f".x.json.{os.getpid()}.{threading.get_native_id()}.tmp"
        planted.symlink_to(outside)
        atomic_write_bytes(state / "x.json", b"new")
        assert outside.read_bytes() == b"keep"
        assert (state / "x.json").read_bytes() == b"new"

    # A symlink in place of the directory written to: tests/test_beneath.py.


def test_an_older_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    """A save cancelled on the loop goes on in its thread while the exit writes a newer snapshot: whichever
    write ends last, the file keeps the newer."""
    f = OrderedFile(tmp_path / "state.json")
    older, newer = f.snapshot(b"older"), f.snapshot(b"newer")
    f.write(newer)
    f.write(older)
    assert f.path.read_bytes() == b"newer"
    f.write(f.snapshot(b"newest"))
    assert f.path.read_bytes() == b"newest"


class TestHashBeneath:
    def test_hash_and_stat_of_a_regular_file(self, tmp_path: Path) -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "f.bin").write_bytes(b"x" * 3_000_000)
        got = hash_beneath(tmp_path, "a/f.bin", None)
        assert got is not None
        assert got[0] == hashlib.sha256(b"x" * 3_000_000).hexdigest()
        assert got[1].st_size == 3_000_000

    def test_a_changed_signature_gives_none(self, tmp_path: Path) -> None:
        f = tmp_path / "f"
        f.write_bytes(b"one")
        old = signature(f.stat())
        f.write_bytes(b"longer")
        assert hash_beneath(tmp_path, "f", old) is None
        assert hash_beneath(tmp_path, "f", signature(f.stat())) is not None

    @pytest.mark.parametrize("kind", ["symlink", "symlinked-dir", "fifo", "missing", "dotdot"])
    def test_what_is_not_a_plain_file_beneath_gives_none(self, tmp_path: Path, kind: str) -> None:
        root = tmp_path / "root"
        root.mkdir()
        secret = tmp_path / "secret"
        secret.write_bytes(b"secret")
        name = "x"
        if kind == "symlink":
            (root / "x").symlink_to(secret)
        elif kind == "symlinked-dir":
            (root / "d").symlink_to(tmp_path)
            name = "d/secret"
        elif kind == "fifo":
            os.mkfifo(root / "x")
        elif kind == "dotdot":
            name = "../secret"
        assert hash_beneath(root, name, None) is None

    def test_out_of_descriptors_is_transient_not_an_answer(self, tmp_path: Path) -> None:
        (tmp_path / "f").write_bytes(b"data")
        with no_descriptors_left(), pytest.raises(Transient) as caught:
            hash_beneath(tmp_path, "f", None)
        assert is_transient(caught.value)
        assert hash_beneath(tmp_path, "f", None) is not None


class TestTrees:
    def test_list_tree_names_everything_and_does_not_enter_linked_dirs(self, tmp_path: Path) -> None:
        (tmp_path / "a" / "b").mkdir(parents=True)
        (tmp_path / "a" / "b" / "f").write_bytes(b"1")
        (tmp_path / "g").write_bytes(b"2")
        elsewhere = tmp_path.parent / (tmp_path.name + "-elsewhere")
        elsewhere.mkdir()
        try:
            (elsewhere / "hidden").write_bytes(b"3")
            (tmp_path / "link").symlink_to(elsewhere)
            names = sorted(n for n, _ in list_tree(tmp_path))
        finally:
            (elsewhere / "hidden").unlink()
            elsewhere.rmdir()
        assert names == ["a", "a/b", "a/b/f", "g", "link"]

    def test_list_tree_out_of_descriptors_is_transient(self, tmp_path: Path) -> None:
        (tmp_path / "a").mkdir()
        with no_descriptors_left(), pytest.raises(Transient):
            list_tree(tmp_path)

    def test_lstat_beneath_refuses_a_path_through_a_symlinked_dir(self, tmp_path: Path) -> None:
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_bytes(b"1")
        (tmp_path / "l").symlink_to(tmp_path / "d")
        assert lstat_beneath(tmp_path, "d/f") is not None
        assert lstat_beneath(tmp_path, "l/f") is None
        assert lstat_beneath(tmp_path, "d/missing") is None

    def test_lstat_many_deep_and_shallow_names(self, tmp_path: Path) -> None:
        deep = "/".join(f"d{i}" for i in range(60))
        os.makedirs(tmp_path / deep)
        (tmp_path / deep / "f").write_bytes(b"deep")
        (tmp_path / "s").write_bytes(b"x")
        got = lstat_many(tmp_path, [f"{deep}/f", "s", f"{deep}/nope", "nope/f"])
        assert [g is not None for g in got] == [True, True, False, False]
        assert got[0] is not None and got[0].st_size == 4
