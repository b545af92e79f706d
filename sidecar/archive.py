"""`GET /v1/archive.zip[?prefix=P]` (SPEC 12): the published artifacts as one ZIP, streamed while it is built."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import HttpVersion11, hdrs, web
from zipstream import ZIP_DEFLATED, ZIP_STORED, ZipStream

from sidecar.logs import get_logger
from sidecar.manifest import Entry
from sidecar.streams import BodyWriter

if TYPE_CHECKING:
    from sidecar.server import Api

__all__ = ("ArchiveError", "ArchiveRoute", "add_archive_route", "is_compressed")

log = get_logger("sidecar.archive")

READ_CHUNK = 256 * 1024
BATCH = 1024 * 1024  # bytes made per worker-thread hop: bounds the memory of one archive in flight
GROUP = 64  # at most this many members (open files) handed to the worker at once
DEFLATE_LEVEL = 6

# Deflating these gains next to nothing and costs the most CPU: they are stored as they are.
_COMPRESSED = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/heic",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/zstd",
        "application/vnd.rar",
        "application/x-rar-compressed",
        "application/pdf",
        "application/vnd.apache.parquet",
        "application/epub+zip",
        "application/java-archive",
        "font/woff",
        "font/woff2",
    }
)


class ArchiveError(Exception):
    """A member cannot be sent as the manifest named it."""


def is_compressed(mime: str) -> bool:
    essence = mime.split(";", 1)[0].strip().lower()
    return (
        essence in _COMPRESSED
        or essence.startswith(("video/", "audio/"))
        or essence.startswith("application/vnd.openxmlformats-officedocument.")  # docx, xlsx, pptx are ZIPs
    )


class _Member:
    """One member's bytes as the manifest named them, hashed on the way: a mismatch raises before zipstream
    writes the data descriptor (the member's CRC), so a changed file leaves a visibly broken archive, never
    a mixed one. Owns the file descriptor; `close` may come from the generator's end or from the route."""

    def __init__(self, fd: int, entry: Entry) -> None:
        self.fd = fd
        self.entry = entry

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def chunks(self) -> Iterator[bytes]:
        entry = self.entry
        digest = hashlib.sha256()
        offset, size = 0, entry.size_bytes
        try:
            while offset < size:
                chunk = os.pread(self.fd, min(READ_CHUNK, size - offset), offset)
                if not chunk:
                    raise ArchiveError(f"{entry.name} got shorter while it was archived")
                digest.update(chunk)
                offset += len(chunk)
                yield chunk
            if digest.hexdigest() != entry.sha256:
                raise ArchiveError(f"{entry.name} changed while it was archived")
        finally:
            self.close()


def _take(chunks: Iterator[bytes], limit: int) -> list[bytes]:
    """Up to about `limit` bytes of the archive (in the worker thread: reading, hashing, CRC, deflate)."""
    out: list[bytes] = []
    n = 0
    for chunk in chunks:
        if chunk:
            out.append(chunk)
            n += len(chunk)
        if n >= limit:
            break
    return out


class _Out:
    """The archive's body through the server's BodyWriter: written at the client's pace, and a client that
    takes nothing for the write timeout is cut (SPEC 9), like any other big body."""

    def __init__(self, api: Api, request: web.Request, resp: web.StreamResponse) -> None:
        self.api, self.request, self.resp = api, request, resp
        self.body: BodyWriter | None = None

    async def write(self, data: bytes) -> None:
        if self.body is None:
            if self.request.version >= HttpVersion11:
                self.resp.enable_chunked_encoding()  # framed by the writer (HTTP/1.0: the body ends at close)
            self.body = await BodyWriter.start(self.request, self.resp, self.api.writers)
        await self.body.write(data)

    async def end(self) -> None:
        if self.body is None:
            await self.resp.prepare(self.request)
            await self.resp.write_eof()
        else:
            await self.body.end()


class ArchiveRoute:
    def __init__(self, api: Api) -> None:
        self.api = api
        # Two workers: archives are CPU-bound (hash, CRC, deflate); more would starve the event loop's core.
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="sidecar-archive")

    async def close(self, app: web.Application) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _open(self, name: str) -> _Member | None:
        """The name's current publication and its verified inode; None if it was removed meanwhile. One being
        re-published gets as long as a settling /artifacts name (SPEC 5)."""
        found = await self.api.open_published(name, may_come=False)
        if found is not None:
            return _Member(found[1], found[0])
        if name in self.api.store.entries:
            raise ArchiveError(f"{name} is changing and was not published again in time")
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        prefix = request.query.get("prefix", "").strip("/")
        under = prefix + "/" if prefix else ""
        names = sorted(n for n in self.api.store.entries if n.startswith(under))
        filename = (prefix.rsplit("/", 1)[-1] if prefix else "artifacts") + ".zip"
        resp = web.StreamResponse(
            headers={
                hdrs.CONTENT_TYPE: "application/zip",
                hdrs.CONTENT_DISPOSITION: f"attachment; filename*=UTF-8''{quote(filename, safe='')}",
                hdrs.CACHE_CONTROL: "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        zs = ZipStream(compress_type=ZIP_STORED)
        out = _Out(self.api, request, resp)
        sent: list[Entry] = []
        total = 0
        group: list[_Member] = []  # small members go to the worker together: one hop, not one each
        group_bytes = 0
        try:
            for name in names:
                member = await self._open(name)
                if member is None:
                    continue  # removed since the archive began: as in the manifest of that moment
                entry = member.entry
                if is_compressed(entry.mime_type):
                    zs.add(member.chunks(), name, size=entry.size_bytes, compress_type=ZIP_STORED)
                else:
                    zs.add(
                        member.chunks(),
                        name,
                        size=entry.size_bytes,
                        compress_type=ZIP_DEFLATED,
                        compress_level=DEFLATE_LEVEL,
                    )
                group.append(member)
                group_bytes += entry.size_bytes
                if len(group) >= GROUP or group_bytes >= BATCH:
                    handed, group, group_bytes = group, [], 0  # _pump closes what it is handed
                    total += await self._pump(out, zs.all_files(), handed)
                    sent.extend(m.entry for m in handed)
            handed, group = group, []
            total += await self._pump(out, zs.all_files(), handed)
            sent.extend(m.entry for m in handed)
            total += await self._pump(out, zs.footer(), [])
            await out.end()
        except ArchiveError as e:
            log.warning("archive.failed", prefix=prefix, sent=len(sent), reason=str(e))
            if not resp.prepared:
                raise web.HTTPConflict(reason=str(e)) from None
            # The status line is gone: cut the connection so the client sees a broken archive, not a short one.
            if request.transport is not None:
                request.transport.abort()
            return resp
        except ConnectionError:
            log.debug("archive.client_gone", prefix=prefix, sent=len(sent))
            return resp
        finally:
            for member in group:  # opened, never handed to a worker
                member.close()
        self.api.metrics.response_bytes.inc(total)
        for entry in sent:
            self.api.hooks.served(entry, 0, entry.size_bytes)
        log.info("archive.sent", prefix=prefix, members=len(sent), bytes=total)
        return resp

    async def _pump(self, out: _Out, chunks: Iterator[bytes], members: list[_Member]) -> int:
        """Run a zipstream generator in the worker pool and write what it makes; returns the bytes written."""
        written = 0
        pending: concurrent.futures.Future[list[bytes]] | None = None
        try:
            while True:
                pending = self.pool.submit(_take, chunks, BATCH)
                batch = await asyncio.wrap_future(pending)
                pending = None
                if not batch:
                    return written
                data = b"".join(batch)
                await out.write(data)
                written += len(data)
        finally:
            # Neither the generator nor the member's file may be closed while a worker is inside them: that
            # waits for the batch in flight, if any (the client went away, or the request was cancelled).
            def finish(_done: object = None) -> None:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
                for member in members:
                    member.close()

            if pending is not None:
                pending.add_done_callback(finish)
            else:
                finish()


def add_archive_route(app: web.Application, api: Api) -> None:
    route = ArchiveRoute(api)
    app.router.add_get("/v1/archive.zip", route.handle, allow_head=False)
    app.on_cleanup.append(route.close)
