"""Data URLs in text files become artifact files (SPEC 4.2-4.3): decode, validate, write durably, rewrite the source.

Synchronous and blocking: the daemon runs `materialize_file` in a worker thread; `sidecar materialize`
calls `run_materialize` directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from sidecar.beneath import open_dir_nofollow
from sidecar.datauri import type_matches
from sidecar.fsutil import is_transient
from sidecar.media import extension_for, sniff
from sidecar.scanner import Decoded, Dropped, Ended, Found, Scanner
from sidecar.sink import Batch, Sink, write_all

if TYPE_CHECKING:
    from sidecar.config import Settings

__all__ = ("NotARegularFile", "Outcome", "materialize_file", "run_materialize")

_READ = 1 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3)
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
    transient: bool = False  # write_failed for want of descriptors or memory (EMFILE...): try again later

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
        # Every write below is relative to this fd: an artifacts dir the agent swapped for a symlink (to
        # /etc, say) is refused here (ELOOP), and a swap after this point changes nothing (SPEC 9).
        dfd = open_dir_nofollow(settings.artifacts_dir, os.O_RDONLY)
        try:
            outcomes, edits = _scan(fd, path, settings, dfd)
            if edits:
                # every artifact is renamed into place; one directory fsync makes all the names durable
                os.fsync(dfd)
        finally:
            os.close(dfd)
        if edits and settings.rewrite_tool_results:
            _rewrite(fd, path, before, edits)
        return outcomes
    finally:
        os.close(fd)


def _scan(
    fd: int, path: Path, settings: Settings, directory: int
) -> tuple[list[Outcome], list[tuple[int, int, bytes]]]:
    scanner = Scanner(
        settings.data_url_types,
        bare_images=settings.bare_base64_images,
        min_bare_bytes=settings.min_data_url_bytes,
    )
    outcomes: list[Outcome] = []
    edits: list[tuple[int, int, bytes]] = []
    batch = Batch(directory)
    found: Found | None = None
    sink: Sink | None = None
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
                    sink = Sink(directory, settings.max_data_url_bytes)
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
                os.unlink(tmp, dir_fd=directory)


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
                transient=is_transient(error),
            )
    gone = {f"/artifacts/{name}".encode() for name in failed}
    return [e for e in edits if e[2] not in gone]


def _settle(path: Path, found: Found, ended: Ended, sink: Sink, settings: Settings, batch: Batch) -> Outcome | None:
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
        sink.commit(name, batch)
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


def _write_failed(path: Path, ended: Ended, sink: Sink, mime: str | None, error: OSError) -> Outcome:
    detail = f"the artifact could not be written: {error.strerror or error}"
    return Outcome(
        path,
        ended.offset,
        "rejected",
        mime_type=mime,
        reason="write_failed",
        detail=detail,
        size_bytes=sink.size,
        transient=is_transient(error),
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
            write_all(out, replacement)
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
        write_all(dst, data)
        start += len(data)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
