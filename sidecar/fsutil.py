"""Filesystem primitives: atomic writes, opening beneath a root without following links, tree walks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from sidecar.beneath import open_dir_nofollow, open_regular_beneath

__all__ = (
    "TRANSIENT",
    "OrderedFile",
    "Signature",
    "Transient",
    "atomic_write_bytes",
    "hash_beneath",
    "is_transient",
    "list_tree",
    "lstat_beneath",
    "lstat_many",
    "open_beneath",
    "signature",
    "walk_tree",
)

Signature = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns): any write changes one of them

_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
# Errors that say "not now" rather than "not this file" (SPEC 9): out of descriptors or memory, a
# flaky disk. What hits one is tried again later, never remembered as a failure.
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EIO, errno.EAGAIN})
_SHALLOW = 32  # up to this depth lstat_beneath checks parents by path (cached); deeper, with dir fds


class Transient(OSError):
    """A temporary failure (see TRANSIENT) that the caller must retry, not treat as an answer."""


def is_transient(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in TRANSIENT


def signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: all or nothing.

    Every step is relative to the directory, opened without following a symlink in its place, and the
    temp file is created O_EXCL | O_NOFOLLOW: a link an agent puts in the state dir, or in place of it,
    never turns a state write into a write somewhere else (SPEC 9). Mode 0600 by default: these are the
    sidecar's state files, nobody else's to read."""
    dfd = open_dir_nofollow(path.parent, os.O_RDONLY)
    try:
        tmp = f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp"  # one per thread
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)  # left by a crash, or planted: unlink never follows a link
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)


class OrderedFile:
    """A state file written from snapshots, on the loop's thread or in a worker thread: a snapshot taken
    earlier never replaces one taken later, whichever write ends last (a write cancelled on the loop goes
    on in its thread while the exit writes a newer snapshot)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._taken = 0
        self._written = 0

    def snapshot(self, doc: bytes) -> tuple[int, bytes]:
        """Number `doc` in the order snapshots are taken (on the loop's thread)."""
        self._taken += 1
        return self._taken, doc

    def write(self, snap: tuple[int, bytes]) -> None:
        """Blocking; raises what atomic_write_bytes raises. A snapshot older than the one on disk is skipped."""
        seq, doc = snap
        with self._lock:
            if seq > self._written:
                atomic_write_bytes(self.path, doc)
                self._written = seq


def open_beneath(root: Path, name: str) -> int:
    """Open root/name for reading, refusing a symlink at every component (no escape from root).

    Raises OSError (ELOOP, ENOTDIR, ENOENT...) when the path is not a plain chain of directories ending
    in a non-link, and (sidecar.beneath.NotRegular) when it is not a regular file: a FIFO or a device is
    looked at through O_PATH and never opened for reading.
    """
    return open_regular_beneath(root, name)[0]


def hash_beneath(root: Path, name: str, expected: Signature | None) -> tuple[str, os.stat_result] | None:
    """SHA-256 of root/name if it is a regular file that did not change while it was read, else None.
    Raises Transient when a temporary error (EMFILE...) left the question open."""
    try:
        fd = open_beneath(root, name)
    except OSError as e:
        if is_transient(e):
            raise Transient(e.errno, e.strerror, name) from e
        return None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or (expected is not None and signature(before) != expected):
            return None
        h = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        after = os.fstat(fd)
        if signature(after) != signature(before):
            return None
        return h.hexdigest(), after
    except OSError as e:
        if is_transient(e):
            raise Transient(e.errno, e.strerror, name) from e
        return None
    finally:
        os.close(fd)


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative POSIX name, lstat) of everything below root; symlinked directories are not entered.

    Raises Transient when a directory could not be listed for want of descriptors or memory: a partial
    listing would look like removals."""
    stack = [""]
    while stack:
        rel = stack.pop()
        base = os.path.join(root, rel) if rel else str(root)
        try:
            with os.scandir(base) as it:
                for de in it:
                    name = f"{rel}/{de.name}" if rel else de.name
                    try:
                        st = de.stat(follow_symlinks=False)
                    except OSError as e:
                        if is_transient(e):
                            raise
                        continue
                    yield name, st
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(name)
        except OSError as e:
            if is_transient(e):
                raise Transient(e.errno, e.strerror, base) from e


def list_tree(root: Path) -> list[tuple[str, os.stat_result]]:
    return list(walk_tree(root))


def lstat_beneath(root: Path, rel: str, plain_dirs: dict[str, bool] | None = None) -> os.stat_result | None:
    """lstat of root/rel, or None when it is missing or any directory on the way is not a plain one (a
    symlinked directory is never entered, whatever a watcher that follows links reports). Raises
    Transient when a temporary error (EMFILE...) left the question open: that is not a removal."""
    parts = rel.split("/")
    if len(parts) > _SHALLOW:
        cursor = _DeepCursor(root)
        try:
            return cursor.lstat(parts)
        finally:
            cursor.close()
    known = plain_dirs if plain_dirs is not None else {}
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        ok = known.get(parent)
        if ok is None:
            try:
                ok = stat.S_ISDIR(os.lstat(os.path.join(root, parent)).st_mode)
            except OSError as e:
                _raise_transient(e)
                ok = False
            known[parent] = ok
        if not ok:
            return None
    try:
        return os.lstat(os.path.join(root, rel))
    except OSError as e:
        _raise_transient(e)
        return None


def _raise_transient(e: OSError) -> None:
    if e.errno in TRANSIENT:
        raise Transient(e.errno, e.strerror, e.filename) from e


class _DeepCursor:
    """lstat beneath root for deep names, one openat a component (linear in depth, where checking every
    parent by its full path is quadratic, and fails past PATH_MAX). It keeps the last parent directory
    open: the events of a chain being made name one level more each time, so each costs one step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts: list[str] = []
        self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lstat(self, parts: list[str]) -> os.stat_result | None:
        parent = parts[:-1]
        try:
            if self.fd < 0 or parent[: len(self.parts)] != self.parts:
                self.close()
                self.fd, self.parts = os.open(self.root, _DIR_FLAGS), []
            for part in parent[len(self.parts) :]:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=self.fd)
                os.close(self.fd)
                self.fd = nfd
                self.parts.append(part)
            return os.stat(parts[-1], dir_fd=self.fd, follow_symlinks=False)
        except OSError as e:
            self.close()
            _raise_transient(e)
            return None


def lstat_many(root: Path, rels: list[str]) -> list[os.stat_result | None]:
    plain_dirs: dict[str, bool] = {}
    cursor = _DeepCursor(root)
    try:
        return [
            cursor.lstat(parts) if len(parts := rel.split("/")) > _SHALLOW else lstat_beneath(root, rel, plain_dirs)
            for rel in rels
        ]
    finally:
        cursor.close()
