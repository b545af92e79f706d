"""Responses that cannot pile up in memory (SPEC 9): big bodies written a slice at a time as the client reads,
a write timeout for clients that stop reading, event-stream frames made once for every subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from sidecar.logs import get_logger
from sidecar.manifest import Change, ManifestStore

__all__ = ("SLICE", "BodyWriter", "Frames", "Hub", "StalledReader", "Trimmer")

log = get_logger("sidecar.http")

# What one connection may hold in user space while its reader is slow: the slice being written. 1,000
# stalled subscribers then hold 16 MiB at most; a reading client still gets a 20 MB manifest in ~1,300
# sends, each straight into the kernel's buffer (a few milliseconds of CPU in all).
SLICE = 16 * 1024
REAP_S = 1.0  # how soon the end of an idle event stream's connection is noticed
FRAMES_KEPT = 64  # encoded changes kept for subscribers that are behind (older ones are encoded again)
TRIM_DELAY_S = 1.0
TRIM_MAX_WAIT_S = 10.0


class StalledReader(ConnectionError):
    """The client took nothing for the write timeout: its connection was cut."""


class BodyWriter:
    """Writes one response so that at most one slice waits in user space: the transport's buffer limit is 0,
    so after each slice the protocol pauses until the kernel took all of it. A client that takes nothing for
    `timeout` seconds is cut (`StalledReader`); one that reads slowly but steadily is not."""

    def __init__(self, resp: web.StreamResponse, transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
        self.resp = resp
        self.transport = transport
        self.writer = writer

    @classmethod
    async def start(cls, request: web.Request, resp: web.StreamResponse) -> BodyWriter:
        transport = request.transport
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            raise ConnectionResetError("connection lost")
        transport.set_write_buffer_limits(high=0)
        writer = await resp.prepare(request)  # the headers wait in aiohttp until the first slice goes out
        if writer is None:
            raise ConnectionResetError("connection lost")
        return cls(resp, transport, writer)

    async def write(self, data: bytes, timeout: float) -> None:
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                for off in range(0, len(view), SLICE):
                    deadline.reschedule(loop.time() + timeout)  # per slice: slow readers are fine, stalled ones not
                    await self.writer.write(view[off : off + SLICE])
                    await self.writer.drain()
                    # Even when the kernel takes everything at once, let other requests run between slices:
                    # 1,000 subscribers each sending a few MB in one go would hold /healthz for seconds.
                    await asyncio.sleep(0)
        except TimeoutError:
            raise self._cut(timeout) from None

    async def end(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.resp.write_eof()
        except TimeoutError:
            raise self._cut(timeout) from None

    def _cut(self, timeout: float) -> StalledReader:
        """Abort (not close: a close would wait for the buffer to drain, which it never will)."""
        log.info("http.stalled_reader_cut", peer=self.transport.get_extra_info("peername"), timeout_s=timeout)
        self.transport.abort()
        return StalledReader(f"the client read nothing for {timeout:g} s")


class Hub:
    """Wakes the event streams: at each change of the manifest, at exit, and when a subscriber's connection
    closed. One task watches every connection once a second, instead of each idle stream waking to look
    (aiohttp does not cancel a handler whose client left)."""

    def __init__(self, store: ManifestStore) -> None:
        self.store = store
        self._event = asyncio.Event()
        self._transports: set[asyncio.BaseTransport] = set()
        self._task: asyncio.Task[None] | None = None

    def join(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(self.store.version), name="sse-hub")

    def leave(self, transport: asyncio.BaseTransport) -> None:
        self._transports.discard(transport)

    def wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> None:
        """Until the next wake-up, or `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()

    async def _watch(self, seen: int) -> None:
        while self._transports:
            await self.store.wait_change(REAP_S)
            gone = {t for t in self._transports if t.is_closing()}
            if gone or self.store.version != seen:
                self._transports -= gone
                seen = self.store.version
                self.wake()

    def close(self) -> None:
        self.wake()
        if self._task is not None:
            self._task.cancel()


def _frame(event: str, version: int, data: str) -> str:
    return f"id: {version}\r\nevent: {event}\r\ndata: {data}\r\n\r\n"


class Frames:
    """Event-stream frames as bytes, made once and shared by every subscriber: the `manifest` event around the
    store's cached body (never copied), and each change's frames per version and state. Re-made after the
    store's body freshness (signed URLs in entries expire)."""

    def __init__(self, store: ManifestStore) -> None:
        self.store = store
        self.fresh_s = min(60.0, store.ttl / 4)
        self._changes: OrderedDict[tuple[int, str], tuple[float, bytes]] = OrderedDict()

    def manifest(self) -> tuple[int, bytes, bytes, bytes]:
        """(version, head, body, tail) of a `manifest` event: the body is the JSON on one line."""
        version = self.store.version
        body = self.store.body()
        return version, f"id: {version}\r\nevent: manifest\r\ndata: ".encode(), body, b"\r\n\r\n"

    def change(self, ch: Change) -> bytes:
        store = self.store
        key = (ch.version, store.state)
        now = time.monotonic()
        hit = self._changes.get(key)
        if hit is not None and now - hit[0] < self.fresh_s:
            self._changes.move_to_end(key)
            return hit[1]
        parts = []
        if ch.upserted or ch.removed:
            doc = {
                "version": ch.version,
                "state": store.state,
                "upserted": [store.entry_doc(e) for e in ch.upserted],
                "removed": list(ch.removed),
            }
            parts.append(_frame("artifacts", ch.version, json.dumps(doc)))
        if ch.state_changed:
            parts.append(_frame("state", ch.version, json.dumps({"version": ch.version, "state": store.state})))
        if not parts:
            parts.append(_frame("artifacts", ch.version, json.dumps({"version": ch.version})))
        frames = "".join(parts).encode()
        self._changes[key] = (now, frames)
        while len(self._changes) > FRAMES_KEPT:
            self._changes.popitem(last=False)
        return frames


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class Trimmer:
    """Gives memory back once clients have gone. A stream that ends on a dropped connection leaves reference
    cycles (the exception, its frames, the request) that only a full collection frees, its objects having
    aged into the oldest generation; and glibc keeps freed heap unless asked. Both would keep RSS near its
    peak after 1,000 subscribers left. So: one `gc.collect()` and a `malloc_trim(0)` (in a worker thread:
    ctypes drops the GIL) a second after the last of a run of releases, and at least every 10 s while
    releases go on."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._handle: asyncio.TimerHandle | None = None
        self._first = 0.0

    def soon(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._handle is None:
            self._first = now
        elif now - self._first < TRIM_MAX_WAIT_S:
            self._handle.cancel()
        else:
            return
        self._handle = loop.call_at(now + TRIM_DELAY_S, self._run)

    def _run(self) -> None:
        self._handle = None
        t0 = time.perf_counter()
        found = gc.collect()
        log.debug("memory.collect", objects=found, ms=round((time.perf_counter() - t0) * 1000, 1))
        if self._trim is not None:
            asyncio.get_running_loop().run_in_executor(None, self._trim, 0)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
