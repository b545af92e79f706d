"""Opening a name beneath a directory without following any symlink, and reading only regular files (SPEC 9).

`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it (Linux 5.6+), else a walk that
opens one component at a time with `O_NOFOLLOW` relative to the previous one. Either way the name is
first opened `O_PATH` (no read access, no side effect: a FIFO is not connected, a device's driver is not
called) and `fstat`ed; only a regular file that passes the caller's check is then opened for reading,
through `/proc/self/fd` so that it is that very inode and no path is resolved again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ("NotRegular", "Root", "open_dir_nofollow", "open_path_beneath", "open_regular_beneath")

RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
# openat2 is 437 on every architecture that has the unified syscall table; these two are the ones we ship for.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())

# Without O_PATH (not Linux) the first open is a non-blocking read-only one: still never a blocking FIFO.
_LOOK = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
_PATH = _LOOK | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_PATH = _LOOK | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegular(OSError):
    """The name resolved to something that is not a regular file (or not the file the caller expects)."""


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


class _Openat2:
    """The raw syscall through ctypes; switched off for good at the first ENOSYS (old kernel) or EPERM
    (a seccomp profile that does not know it)."""

    def __init__(self) -> None:
        self.syscall: Callable[..., int] | None = None
        self.hows: dict[int, _OpenHow] = {}
        self.number = ctypes.c_long(_SYS_OPENAT2 or 0)  # a long, as syscall(2) reads it
        if _SYS_OPENAT2 is not None:
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.syscall
                fn.restype = ctypes.c_long
                self.syscall = fn

    def __call__(self, dirfd: int, name: str, flags: int) -> int | None:
        """An fd, None when openat2 is not available; raises OSError for a refused or missing name."""
        if self.syscall is None or _SYS_OPENAT2 is None:
            return None
        how = self.hows.get(flags)
        if how is None:  # one per flag set, made once: the struct is only read by the kernel
            how = self.hows[flags] = _OpenHow(flags, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
        fd = self.syscall(self.number, ctypes.c_int(dirfd), os.fsencode(name), ctypes.byref(how), _HOW_SIZE)
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):
            self.syscall = None
            return None
        raise OSError(err, os.strerror(err), name)


_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_openat2 = _Openat2()


def open_dir_nofollow(path: Path | str, flags: int = _DIR_PATH) -> int:
    """An fd of the directory at path, refusing a symlink in its place (ELOOP/ENOTDIR).

    The components above it are the operator's choice and may be links; the directory itself is the
    one an agent could swap for a link to somewhere else."""
    return os.open(path, flags | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


class Root:
    """A directory kept open (O_NOFOLLOW) to resolve names beneath it, as serving does for every request:
    opening its path each time cost as much again as opening the name. Opened again only when its path
    has come to name another directory (replaced, or created after the first look); a symlink put in its
    place is never opened, and the directory held stays in use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None

    def fd(self) -> int:
        """The directory's fd; OSError when there is none to open."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        return self._fd

    def moved(self) -> bool:
        """True when the path names another directory than the one held, which is now held instead."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._id or not stat.S_ISDIR(st.st_mode):
                return False
            self._open()
        except OSError:
            return False
        return True

    def _open(self) -> None:
        fd = open_dir_nofollow(self.path)
        st = os.fstat(fd)
        old, self._fd, self._id = self._fd, fd, (st.st_dev, st.st_ino)
        if old is not None:
            os.close(old)


def _walk(dirfd: int, name: str, leaf_flags: int) -> int:
    """The component-by-component fallback: every directory O_NOFOLLOW, relative to the one before."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EXDEV, "not a plain relative name", name)
    fd = dirfd
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_PATH, dir_fd=fd)
            if fd != dirfd:
                os.close(fd)
            fd = nfd
        return os.open(parts[-1], leaf_flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        if fd != dirfd:
            os.close(fd)


def open_path_beneath(dirfd: int, name: str) -> int:
    """An O_PATH fd of dirfd/name: no symlink anywhere on the way (ELOOP), nothing outside (EXDEV)."""
    if "\0" in name:  # a C string would end there: another, shorter name
        raise OSError(errno.EINVAL, "NUL in a name", name)
    if "/" not in name:
        # One component: O_NOFOLLOW relative to dirfd is all that RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS would
        # check, without the ctypes call (serving opens a name per request; most artifacts are top-level).
        if name in ("", ".", ".."):
            raise OSError(errno.EXDEV, "not a plain relative name", name)
        return os.open(name, _PATH, dir_fd=dirfd)
    fd = _openat2(dirfd, name, _PATH)
    return fd if fd is not None else _walk(dirfd, name, _PATH)


def _reopen(pfd: int, dirfd: int, name: str, st: os.stat_result) -> int:
    """A readable fd of the inode pfd points at."""
    try:
        return os.open(f"/proc/self/fd/{pfd}", _READ)
    except FileNotFoundError:
        pass  # no /proc: open the name again (still without links) and check it is the same inode
    fd = _openat2(dirfd, name, _READ)
    if fd is None:
        fd = _walk(dirfd, name, _READ)
    again = os.fstat(fd)
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(again.st_mode):
        os.close(fd)
        raise NotRegular(errno.ESTALE, "replaced while opened", name)
    return fd


def open_regular_beneath(
    root: Path | str | int, name: str, check: Callable[[os.stat_result], bool] | None = None
) -> tuple[int, os.stat_result]:
    """A readable fd of root/name (root: a path or a directory fd) and its stat, taken before it was
    opened for reading: only a regular file for which `check(stat)` holds is ever opened that way.

    Raises OSError: ELOOP (a symlink on the way), EXDEV (outside root), ENOENT, EMFILE...; NotRegular
    when it resolves to a FIFO, a device, a directory or a file the check refuses."""
    owned = not isinstance(root, int)
    dirfd = open_dir_nofollow(root) if not isinstance(root, int) else root
    try:
        pfd = open_path_beneath(dirfd, name)
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegular(errno.EINVAL, "not a regular file", name)
            if check is not None and not check(st):
                raise NotRegular(errno.ESTALE, "not the file expected", name)
            return _reopen(pfd, dirfd, name, st), st
        finally:
            os.close(pfd)
    finally:
        if owned:
            os.close(dirfd)
