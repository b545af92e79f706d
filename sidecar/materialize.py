"""Data URLs in text files become artifact files (SPEC 4.2-4.3): decode, validate, write durably, rewrite the source.

Synchronous and blocking: the daemon runs `materialize_file` in a worker thread; `sidecar materialize`
calls `run_materialize` directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from sidecar.datauri import type_matches
from sidecar.imagecheck import damage
from sidecar.media import SNIFF_BYTES, extension_for, is_complete, sniff
from sidecar.scanner import Decoded, Dropped, Ended, Found, Scanner

if TYPE_CHECKING:
    from sidecar.config import Settings

__all__ = ("NotARegularFile", "Outcome", "materialize_file", "run_materialize")

_READ = 1 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3)
_SPILL = 4 << 20  # decoded bytes held in memory before they go to the temp file
# Payloads are made durable in batches: one filesystem sync for many files costs about what one fsync does.
_BATCH_FILES = 256
_BATCH_BYTES = 64 << 20
# two spellings of one type must not count as "the detected type differs from the declared one"
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/vnd.microsoft.icon": "image/x-icon",
    "image/ico": "image/x-icon",
    "image/x-ms-bmp": "image/bmp",
    "image/svg": "image/svg+xml",
}
_SNIFFABLE = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/svg+xml", "image/avif", "image/x-icon"}
    | {"image/tiff"}
)


class NotARegularFile(OSError):
    """A FIFO, a directory or a device where a text file was expected: never opened for a blocking read."""


@dataclass(frozen=True)
class Outcome:
    """What became of one data URL (or bare base64 image) found in a source file."""

    source: Path
    offset: int  # byte offset of `data:`, or of a bare base64 string's first character
    status: Literal["materialized", "rejected"]
    name: str | None = None  # artifact name, relative to the artifacts dir
    sha256: str | None = None
    mime_type: str | None = None
    declared_mime_type: str | None = None  # only when the detected type differs from the declared one
    reason: str | None = None  # invalid_base64 | empty | too_large | truncated | corrupt | write_failed
    detail: str | None = None
    size_bytes: int | None = None

    def to_record(self) -> dict[str, object]:
        """The JSON object `sidecar materialize` prints for it (SPEC 1), plus the extra fields."""
        return {
            "source": str(self.source),
            "offset": self.offset,
            "status": self.status,
            "name": self.name,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "reason": self.reason,
            "declared_mime_type": self.declared_mime_type,
            "detail": self.detail,
            "size_bytes": self.size_bytes,
        }


def _keep_read_buffers() -> None:
    """glibc serves 1 MiB allocations with a fresh mmap and returns them at free, so every read and every
    window faults its pages in again: about a third of the time on text without data URLs. Heap-allocated
    and kept instead (this short-lived command only: the daemon's RSS stays as it is)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 8 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def run_materialize(files: list[Path], settings: Settings, out: TextIO) -> int:
    """`sidecar materialize FILE...`: one JSON line per data URL, in order; 1 if a FILE could not be read."""
    _keep_read_buffers()
    status = 0
    for f in files:
        path = Path(f)
        try:
            outcomes = materialize_file(path, settings)
        except OSError as e:
            print(f"sidecar materialize: {path}: {e.strerror or e}", file=sys.stderr)
            status = 1
            continue
        for o in outcomes:
            out.write(json.dumps(o.to_record()) + "\n")
        out.flush()
    return status


def materialize_file(path: Path, settings: Settings) -> list[Outcome]:
    """Materialize every data URL in one text file, then (if asked) rewrite it; in bounded memory.

    Raises OSError when the file cannot be read (NotARegularFile for FIFOs and directories, which are
    opened non-blocking and never read). A rejected payload leaves the text as it is; payloads below
    the minimum are skipped without an outcome.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        outcomes, edits = _scan(fd, path, settings)
        if edits:
            # every artifact is renamed into place; one directory fsync makes all the names durable
            _fsync_dir(settings.artifacts_dir)
            if settings.rewrite_tool_results:
                _rewrite(fd, path, before, edits)
        return outcomes
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# decoding one payload
# --------------------------------------------------------------------------------------


class _Sink:
    """Where the decoded bytes of one payload go: memory first, a hidden temp file once large."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.size = 0
        self.sha = hashlib.sha256()
        self.head = b""
        self.memory: list[bytes] = []
        self.held = 0
        self.fd = -1
        self.tmp: Path | None = None
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
            _write_all(self.fd, data)
        except OSError as e:
            self.error = e
            self.discard()

    def _spill(self) -> None:
        # a dot name ending in .tmp: the watcher of the artifacts dir ignores it (SPEC 3)
        self.tmp = self.directory / f".datauri-{secrets.token_hex(8)}.tmp"
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        for part in self.memory:
            _write_all(self.fd, part)
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

    def commit(self, target: Path, batch: _Batch) -> None:
        """Hand the payload to the batch that makes it the file at target once it is durable."""
        if target in batch.targets:
            self.discard()  # the same payload twice in one batch: the name carries the hash
            return
        with contextlib.suppress(OSError):
            st = os.stat(target, follow_symlinks=False)
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
                os.unlink(self.tmp)
            self.tmp = None


class _Batch:
    """Payloads written to hidden temp files but not yet durable. `flush` syncs the filesystem once, then
    renames them into place: a crash before that leaves only ignored temp names, never a torn artifact."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.items: list[tuple[Path, Path]] = []
        self.targets: set[Path] = set()
        self.size = 0

    def add(self, tmp: Path, target: Path, size: int) -> None:
        self.items.append((tmp, target))
        self.targets.add(target)
        self.size += size

    @property
    def full(self) -> bool:
        return len(self.items) >= _BATCH_FILES or self.size >= _BATCH_BYTES

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
                    fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as e:
                    failed[target.name] = e
        for tmp, target in items:
            if target.name not in failed:
                try:
                    os.replace(tmp, target)
                    continue
                except OSError as e:
                    failed[target.name] = e
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return failed


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        func: Callable[[int], int] | None = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None
    return func


_SYNCFS = _load_syncfs() if sys.platform.startswith("linux") else None


def _sync_filesystem(directory: Path) -> None:
    """syncfs(2) on the artifacts dir's filesystem: every file written so far is on disk when it returns."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _scan(fd: int, path: Path, settings: Settings) -> tuple[list[Outcome], list[tuple[int, int, bytes]]]:
    scanner = Scanner(
        settings.data_url_types,
        bare_images=settings.bare_base64_images,
        min_bare_bytes=settings.min_data_url_bytes,
    )
    outcomes: list[Outcome] = []
    edits: list[tuple[int, int, bytes]] = []
    batch = _Batch(settings.artifacts_dir)
    found: Found | None = None
    sink: _Sink | None = None
    offset = 0
    try:
        while True:
            chunk = os.pread(fd, _READ, offset)
            offset += len(chunk)
            events = scanner.feed(chunk) if chunk else scanner.close()
            for ev in events:
                if isinstance(ev, Decoded):
                    if sink is not None:
                        sink.write(ev.data)
                elif isinstance(ev, Found):
                    found = ev
                    sink = _Sink(settings.artifacts_dir, settings.max_data_url_bytes)
                elif isinstance(ev, Ended) and found is not None and sink is not None:
                    outcome = _settle(path, found, ev, sink, settings, batch)
                    sink.discard()
                    found, sink = None, None
                    if outcome is not None:
                        outcomes.append(outcome)
                        if outcome.status == "materialized":
                            edits.append((ev.offset, ev.end, f"/artifacts/{outcome.name}".encode()))
                        if batch.full:
                            edits = _failed_writes(batch.flush(), outcomes, edits)
                elif isinstance(ev, Dropped) and sink is not None:
                    sink.discard()
                    found, sink = None, None
            if not chunk:
                return outcomes, _failed_writes(batch.flush(), outcomes, edits)
    finally:
        if sink is not None:
            sink.discard()
        for tmp, _ in batch.items:  # only left when something raised: no half-made artifact stays
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _failed_writes(
    failed: dict[str, OSError], outcomes: list[Outcome], edits: list[tuple[int, int, bytes]]
) -> list[tuple[int, int, bytes]]:
    """Turn the outcomes whose artifact could not be made durable into `write_failed`; drop their edits."""
    if not failed:
        return edits
    for i, o in enumerate(outcomes):
        if o.status == "materialized" and o.name in failed:
            error = failed[o.name]
            outcomes[i] = Outcome(
                o.source,
                o.offset,
                "rejected",
                mime_type=o.mime_type,
                reason="write_failed",
                detail=f"the artifact could not be written: {error.strerror or error}",
                size_bytes=o.size_bytes,
            )
    gone = {f"/artifacts/{name}".encode() for name in failed}
    return [e for e in edits if e[2] not in gone]


def _settle(path: Path, found: Found, ended: Ended, sink: _Sink, settings: Settings, batch: _Batch) -> Outcome | None:
    """Decide about one finished payload: None (left alone), rejected, or written as an artifact."""

    def rejected(reason: str, detail: str, mime: str | None) -> Outcome | None:
        if found.bare:
            return None  # a bare base64 string that is not a whole image is just a string
        return Outcome(
            path, ended.offset, "rejected", mime_type=mime, reason=reason, detail=detail, size_bytes=sink.size
        )

    declared = found.mime_type or None
    if ended.error == "invalid_base64":
        return rejected("invalid_base64", "the payload is not valid base64", declared)
    if sink.size == 0:
        return rejected("empty", "the payload decodes to no bytes", declared)
    if sink.size < settings.min_data_url_bytes:
        return None
    detected = sniff(sink.head)
    if found.bare and (detected is None or not type_matches(detected, settings.data_url_types)):
        return None
    if sink.too_large:
        return rejected(
            "too_large", f"{sink.size} bytes decoded, more than --max-data-url-bytes {sink.limit}", detected or declared
        )
    if sink.error is not None:
        return _write_failed(path, ended, sink, detected or declared, sink.error)
    if ended.error == "unclosed":
        return rejected("truncated", "the SVG's closing </svg> tag never comes", detected or declared)
    declared_essence = _ALIASES.get(found.essence, found.essence)
    if detected is not None:
        problem = sink.problem(detected)
        if problem is not None:
            return rejected(*problem, detected)
        mime = detected
        differs = not found.bare and declared_essence != detected
    elif declared_essence in _SNIFFABLE:
        return rejected("truncated", f"the bytes are not {declared_essence}: no known image signature", declared)
    else:
        # a type whose bytes cannot be checked (text/*, application/pdf, an image format not sniffed)
        mime, differs = found.mime_type, False
    digest = sink.sha.hexdigest()
    name = f"datauri-{digest[:16]}.{extension_for(mime)}"
    try:
        sink.commit(settings.artifacts_dir / name, batch)
    except OSError as e:  # one artifact that cannot be written does not stop the others
        return _write_failed(path, ended, sink, mime, e)
    return Outcome(
        path,
        ended.offset,
        "materialized",
        name=name,
        sha256=digest,
        mime_type=mime,
        declared_mime_type=found.mime_type if differs else None,
        size_bytes=sink.size,
    )


def _write_failed(path: Path, ended: Ended, sink: _Sink, mime: str | None, error: OSError) -> Outcome:
    detail = f"the artifact could not be written: {error.strerror or error}"
    return Outcome(
        path, ended.offset, "rejected", mime_type=mime, reason="write_failed", detail=detail, size_bytes=sink.size
    )


# --------------------------------------------------------------------------------------
# rewriting the source
# --------------------------------------------------------------------------------------


def _rewrite(fd: int, path: Path, before: os.stat_result, edits: list[tuple[int, int, bytes]]) -> None:
    """Replace each edited range, streaming the untouched bytes from the original; atomic, mode kept.

    Nothing happens when the file changed since it was scanned (it will be scanned again).
    """
    real = Path(os.path.realpath(path))  # a symlinked source keeps its link; its target is rewritten
    if not _unchanged(fd, real, before):
        return
    tmp = real.with_name(f".{real.name}.{secrets.token_hex(6)}.tmp")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        pos = 0
        for start, end, replacement in edits:
            _copy_range(fd, out, pos, start)
            _write_all(out, replacement)
            pos = end
        _copy_range(fd, out, pos, before.st_size)
        os.fchmod(out, stat.S_IMODE(before.st_mode))
        with contextlib.suppress(OSError):  # keeps the agent's ownership when the sidecar runs as root
            os.fchown(out, before.st_uid, before.st_gid)
        os.fsync(out)
        os.close(out)
        out = -1
        if not _unchanged(fd, real, before):
            os.unlink(tmp)
            return
        os.replace(tmp, real)
    except BaseException:
        if out >= 0:
            os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(real.parent)


def _unchanged(fd: int, real: Path, before: os.stat_result) -> bool:
    now = os.fstat(fd)
    try:
        there = os.stat(real)
    except OSError:
        return False
    same = (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    return same and (there.st_ino, there.st_dev) == (before.st_ino, before.st_dev)


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    while start < end:
        data = os.pread(src, min(_READ, end - start), start)
        if not data:
            raise OSError(errno.EIO, "the source file shrank while it was rewritten")
        _write_all(dst, data)
        start += len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
