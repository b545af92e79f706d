"""Filesystem primitives: atomic writes, opening beneath a root without following links, tree walks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = (
    "Signature",
    "atomic_write_bytes",
    "hash_beneath",
    "list_tree",
    "lstat_beneath",
    "lstat_many",
    "open_beneath",
    "signature",
    "walk_tree",
)

Signature = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns): any write changes one of them

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: all or nothing. Mode 0600 by
    default: these are the sidecar's state files, nobody else's to read (SPEC 9)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")  # one per thread
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def open_beneath(root: Path, name: str) -> int:
    """Open root/name for reading, refusing a symlink at every component (no escape from root).

    Raises OSError (ELOOP, ENOTDIR, ENOENT...) when the path is not a plain chain of directories ending
    in a non-link; the caller still has to check that the fd is a regular file.
    """
    parts = name.split("/")
    dfd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], _OPEN_FLAGS, dir_fd=dfd)
    finally:
        os.close(dfd)


def hash_beneath(root: Path, name: str, expected: Signature | None) -> tuple[str, os.stat_result] | None:
    """SHA-256 of root/name if it is a regular file that did not change while it was read, else None."""
    try:
        fd = open_beneath(root, name)
    except OSError:
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
    except OSError:
        return None
    finally:
        os.close(fd)


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative POSIX name, lstat) of everything below root; symlinked directories are not entered."""
    stack = [""]
    while stack:
        rel = stack.pop()
        base = os.path.join(root, rel) if rel else str(root)
        with contextlib.suppress(OSError), os.scandir(base) as it:
            for de in it:
                name = f"{rel}/{de.name}" if rel else de.name
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                yield name, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(name)


def list_tree(root: Path) -> list[tuple[str, os.stat_result]]:
    return list(walk_tree(root))


def lstat_beneath(root: Path, rel: str, plain_dirs: dict[str, bool] | None = None) -> os.stat_result | None:
    """lstat of root/rel, or None when it is missing or any directory on the way is not a plain one (a
    symlinked directory is never entered, whatever a watcher that follows links reports)."""
    parts = rel.split("/")
    known = plain_dirs if plain_dirs is not None else {}
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        ok = known.get(parent)
        if ok is None:
            try:
                ok = stat.S_ISDIR(os.lstat(os.path.join(root, parent)).st_mode)
            except OSError:
                ok = False
            known[parent] = ok
        if not ok:
            return None
    try:
        return os.lstat(os.path.join(root, rel))
    except OSError:
        return None


def lstat_many(root: Path, rels: list[str]) -> list[os.stat_result | None]:
    plain_dirs: dict[str, bool] = {}
    return [lstat_beneath(root, rel, plain_dirs) for rel in rels]
