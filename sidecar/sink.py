"""Decoded payloads on their way to artifact files: memory, then a hidden temp file, then made durable in batches."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import stat
import sys
from collections.abc import Callable

from sidecar.imagecheck import damage
from sidecar.media import SNIFF_BYTES, is_complete

__all__ = ("BATCH_FILES", "Batch", "Sink", "write_all")

_SPILL = 4 << 20  # decoded bytes held in memory before they go to the temp file
# Payloads are made durable in batches: one filesystem sync for many files costs about what one fsync does.
BATCH_FILES = 256
BATCH_BYTES = 64 << 20


class Sink:
    """Where the decoded bytes of one payload go: memory first, a hidden temp file once large."""

    def __init__(self, directory: int, limit: int) -> None:
        self.directory = directory  # the artifacts dir's fd: every name below is relative to it (SPEC 9)
        self.limit = limit
        self.size = 0
        self.sha = hashlib.sha256()
        self.head = b""
        self.memory: list[bytes] = []
        self.held = 0
        self.fd = -1
        self.tmp: str | None = None  # a name in the directory
        self.error: OSError | None = None  # writing the temp file failed (disk full...): nothing is kept

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    def write(self, data: bytes) -> None:
        if not data:
            return
        if len(self.head) < SNIFF_BYTES:
            self.head += data[: SNIFF_BYTES - len(self.head)]
        self.size += len(data)
        if self.too_large:  # it will be rejected: stop storing, keep counting
            self.discard()
            return
        self.sha.update(data)
        if self.error is not None:
            return
        if self.fd < 0 and self.held + len(data) <= _SPILL:
            self.memory.append(data)
            self.held += len(data)
            return
        try:
            if self.fd < 0:
                self._spill()
            write_all(self.fd, data)
        except OSError as e:
            self.error = e
            self.discard()

    def _spill(self) -> None:
        # a dot name ending in .tmp: the watcher of the artifacts dir ignores it (SPEC 3)
        self.tmp = f".datauri-{secrets.token_hex(8)}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.tmp, flags, 0o644, dir_fd=self.directory)
        for part in self.memory:
            write_all(self.fd, part)
        self.memory, self.held = [], 0

    def problem(self, mime: str) -> tuple[str, str] | None:
        """Why the decoded bytes of a detected image type must not be published: (reason, detail), or None."""
        if self.fd < 0:
            data = b"".join(self.memory)  # at most _SPILL bytes
            self.memory = [data]

            def read_at(offset: int, size: int) -> bytes:
                return data[offset : offset + size]
        else:
            fd = self.fd

            def read_at(offset: int, size: int) -> bytes:
                return os.pread(fd, size, offset)

        if not is_complete(mime, read_at, self.size):
            return "truncated", f"not a complete {mime} file: it ends before its structure does"
        why = damage(mime, read_at, self.size)
        if why is not None:
            return "corrupt", f"a damaged {mime} file: {why}"
        return None

    def commit(self, target: str, batch: Batch) -> None:
        """Hand the payload to the batch that makes it the file at target once it is durable."""
        if target in batch.targets:
            self.discard()  # the same payload twice in one batch: the name carries the hash
            return
        with contextlib.suppress(OSError):
            st = os.stat(target, dir_fd=self.directory, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == self.size:
                self.discard()  # identical payloads give one file
                return
        try:
            if self.fd < 0:
                self._spill()
            assert self.tmp is not None
            os.close(self.fd)
            self.fd = -1
        except OSError:
            self.discard()
            raise
        batch.add(self.tmp, target, self.size)
        self.tmp = None

    def discard(self) -> None:
        self.memory, self.held = [], 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp, dir_fd=self.directory)
            self.tmp = None


class Batch:
    """Payloads written to hidden temp files but not yet durable. `flush` syncs the filesystem once, then
    renames them into place: a crash before that leaves only ignored temp names, never a torn artifact."""

    def __init__(self, directory: int) -> None:
        self.directory = directory  # the artifacts dir's fd; items are (temp name, artifact name) in it
        self.items: list[tuple[str, str]] = []
        self.targets: set[str] = set()
        self.size = 0

    def add(self, tmp: str, target: str, size: int) -> None:
        self.items.append((tmp, target))
        self.targets.add(target)
        self.size += size

    @property
    def full(self) -> bool:
        return len(self.items) >= BATCH_FILES or self.size >= BATCH_BYTES

    def flush(self) -> dict[str, OSError]:
        """Make every pending payload durable and visible; returns the artifact names that failed."""
        items, self.items, self.targets, self.size = self.items, [], set(), 0
        if not items:
            return {}
        failed: dict[str, OSError] = {}
        try:
            _sync_filesystem(self.directory)
        except OSError:
            for tmp, target in items:  # no syncfs here: one fsync a file
                try:
                    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.directory)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as e:
                    failed[target] = e
        for tmp, target in items:
            if target not in failed:
                try:
                    os.replace(tmp, target, src_dir_fd=self.directory, dst_dir_fd=self.directory)
                    continue
                except OSError as e:
                    failed[target] = e
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.directory)
        return failed


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        func: Callable[[int], int] | None = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None
    return func


_SYNCFS = _load_syncfs() if sys.platform.startswith("linux") else None


def _sync_filesystem(directory: int) -> None:
    """syncfs(2) on the artifacts dir's filesystem: every file written so far is on disk when it returns."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _SYNCFS(directory) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
