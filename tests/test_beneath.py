"""sidecar.beneath and the writes built on it: no symlink is followed anywhere beneath the artifacts dir,
nothing but a regular file is opened for reading, state writes never land somewhere else (SPEC 9)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import beneath
from sidecar.beneath import NotRegular, open_regular_beneath
from sidecar.fsutil import atomic_write_bytes, hash_beneath, open_beneath


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with openat2 (where the kernel has it) and with the O_NOFOLLOW walk."""
    if request.param == "walk":
        monkeypatch.setattr(beneath._openat2, "syscall", None)
    elif beneath._openat2.syscall is None:
        pytest.skip("no openat2 here")
    yield request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with sub/x.txt, a folder symlink inside and one to outside, a leaf symlink, a FIFO."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.txt").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_bytes(b"OUTSIDE")
    (root / "inlink").symlink_to("sub")
    (root / "outlink").symlink_to(outside)
    (root / "leaf.txt").symlink_to("sub/x.txt")
    os.mkfifo(root / "fifo")
    return root


def _read(fd: int) -> bytes:
    try:
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


class TestOpenRegularBeneath:
    def test_plain_names_open(self, tree, resolver):
        """A regular file under plain directories opens for reading, with its stat."""
        fd, st = open_regular_beneath(tree, "sub/x.txt")
        assert stat.S_ISREG(st.st_mode) and _read(fd) == b"inside"

    @pytest.mark.parametrize(
        "name",
        [
            "inlink/x.txt",
            "outlink/x.txt",
            "leaf.txt",
            "../outside/x.txt",
            "sub/../../x",
            "sub/x.txt\0.png",
            "..",
            ".",
            "",
        ],
    )
    def test_no_symlink_anywhere_and_nothing_outside(self, tree, resolver, name):
        """A symlinked folder (inside or pointing out), a symlinked leaf, `..` out of root, and root itself
        or its parent as a one-component name are refused."""
        with pytest.raises(OSError):
            fd, _ = open_regular_beneath(tree, name)
            os.close(fd)

    def test_a_fifo_is_never_opened_for_reading(self, tree, resolver):
        """A FIFO is refused after an O_PATH look: no reader ever appears on it (a writer waiting in open
        would have been let through by an O_RDONLY | O_NONBLOCK open)."""
        with pytest.raises(NotRegular):
            open_regular_beneath(tree, "fifo")
        with pytest.raises(OSError) as e:
            os.open(tree / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        assert e.value.errno == errno.ENXIO  # still nobody reading

    def test_a_device_node_is_never_opened(self, tree, resolver):
        """A character device in place of a published file is refused without being opened."""
        try:
            os.mknod(tree / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
        except OSError:
            pytest.skip("cannot make a device node here")
        with pytest.raises(NotRegular):
            open_regular_beneath(tree, "dev")

    def test_the_check_sees_the_stat_before_the_file_is_opened(self, tree, resolver):
        """A file the caller's check refuses (another inode than the one published) is not opened."""
        seen: list[int] = []

        def check(st: os.stat_result) -> bool:
            seen.append(st.st_ino)
            return False

        with pytest.raises(NotRegular):
            open_regular_beneath(tree, "sub/x.txt", check)
        assert seen == [os.stat(tree / "sub" / "x.txt").st_ino]

    def test_a_directory_fd_as_root(self, tree, resolver):
        """root may be an open directory fd (a swap of the path afterwards changes nothing)."""
        dfd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd, _ = open_regular_beneath(dfd, "sub/x.txt")
            assert _read(fd) == b"inside"
        finally:
            os.close(dfd)


class TestHashingAndOffload:
    def test_open_beneath_refuses_a_fifo(self, tree, resolver):
        """fsutil.open_beneath (hashing, uploads) never opens a FIFO for reading."""
        with pytest.raises(OSError):
            fd = open_beneath(tree, "fifo")
            os.close(fd)
        assert hash_beneath(tree, "fifo", None) is None
        assert hash_beneath(tree, "inlink/x.txt", None) is None
        assert hash_beneath(tree, "sub/x.txt", None) is not None


class TestStateWrites:
    def test_a_link_planted_at_the_temp_name_is_not_followed(self, tmp_path):
        """The temp file is created O_EXCL | O_NOFOLLOW: a symlink planted at its name is replaced, and the
        file it points to is never written (as root this could have been any file on the machine)."""
        state = tmp_path / "state"
        state.mkdir()
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        tmp_name = f".manifest.json.{os.getpid()}.{threading.get_native_id()}.tmp"
        (state / tmp_name).symlink_to(victim)
        atomic_write_bytes(state / "manifest.json", b'{"new": true}')
        assert victim.read_bytes() == b"precious"
        assert not (state / "manifest.json").is_symlink()
        assert (state / "manifest.json").read_bytes() == b'{"new": true}'
        assert not (state / tmp_name).exists()

    def test_a_state_dir_swapped_for_a_symlink_is_refused(self, tmp_path):
        """A symlink in place of the directory written to is refused (ELOOP/ENOTDIR), nothing lands behind it."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (tmp_path / "state").symlink_to(elsewhere)
        with pytest.raises(OSError):
            atomic_write_bytes(tmp_path / "state" / "manifest.json", b"{}")
        assert list(elsewhere.iterdir()) == []
