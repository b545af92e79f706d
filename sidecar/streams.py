"""Responses that cannot pile up in memory (SPEC 9): big bodies written as fast as the client reads, never
copied per connection; a write timeout for clients that stop reading; event-stream frames made once for
every subscriber; memory handed back once many clients are gone."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from sidecar.logs import get_logger
from sidecar.manifest import Change, ManifestStore
from sidecar.tasks import keep_running

__all__ = (
    "SLICE",
    "SSE_HEADERS",
    "WRITERS",
    "BodyWriter",
    "Frames",
    "Hub",
    "StalledReader",
    "Trimmer",
    "Writers",
    "stream_events",
)

log = get_logger("sidecar.http")

# What one connection may hold in user space while its reader is slow: one slice. 1,000 stalled subscribers
# then hold 16 MiB at most. While the kernel has room, bytes go to the socket directly, STEP at a time.
SLICE = 16 * 1024
STEP = 256 * 1024
# Connections writing in one loop iteration, one step each: an iteration stays short (~1 MB of copying)
# however many subscribers are owed a manifest, so /healthz never waits behind 1,000 of them.
WRITERS = 4
REAP_S = 1.0  # how soon the end of an idle event stream's connection is noticed
STALL_CHECK_S = 1.0  # how often writers waiting on their client are looked at (Writers)
FRAMES_KEPT = 64  # encoded changes kept for subscribers that are behind (older ones are encoded again)
TRIM_DELAY_S = 1.0
TRIM_MAX_WAIT_S = 10.0
SSE_PING_S = 15.0  # SPEC 5: a comment line at least every 15 s
PING_TICK_S = 5.0  # the Hub wakes every stream this often; a stream then sends a comment line if it is due
# A stream's comment line is due this long after its last one: the tick after that comes within PING_TICK_S
# (plus REAP_S, the Hub's own step), so no gap exceeds SSE_PING_S.
PING_DUE_S = SSE_PING_S - PING_TICK_S - REAP_S
SSE_PING = b": ping\r\n\r\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # a proxy in front must pass events on at once
}


class StalledReader(ConnectionError):
    """The client took nothing for the write timeout: its connection was cut."""


class Writers:
    """What every BodyWriter shares: turns (WRITERS steps a loop iteration) and the write timeout.

    The timeout is kept by one task that looks at every writer waiting on its client a few times a second,
    not by a timer per writer: a timer is moved at each step, and each cancelled one stays in the loop's
    heap until it comes due (asyncio purges them only while over half of its timers are cancelled): with
    1,000 stalled clients, thousands of cancelled timers and their contexts, outliving the clients."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.turns = asyncio.Semaphore(WRITERS)
        self.every_s = min(STALL_CHECK_S, timeout / 4)
        self._writing: set[BodyWriter] = set()
        self._task: asyncio.Task[None] | None = None

    def arm(self, w: BodyWriter) -> None:
        """`w` is waiting on its client: cut it if that lasts `timeout` seconds."""
        loop = asyncio.get_running_loop()
        w.deadline = loop.time() + self.timeout
        self._writing.add(w)
        if self._task is None or self._task.done():
            self._task = loop.create_task(keep_running("stalled-readers", self._watch), name="stalled-readers")

    def disarm(self, w: BodyWriter) -> None:
        self._writing.discard(w)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._writing:
            await asyncio.sleep(self.every_s)
            now = loop.time()
            for w in [w for w in self._writing if w.deadline <= now]:
                self._writing.discard(w)
                w.cut()


class BodyWriter:
    """Writes a response body without a copy of it per connection. While the transport's buffer is empty the
    bytes go straight to the socket (`os.write`: the kernel takes what fits, nothing stays behind); once the
    kernel is full, one slice goes to the transport, whose buffer limit is 0, and the writer waits until the
    kernel took it. A client that takes nothing for the write timeout is cut (`StalledReader`, by `Writers`);
    one that reads slowly but steadily is not: the deadline moves at each step. Chunked responses (event
    streams) get their framing here."""

    def __init__(
        self, resp: web.StreamResponse, transport: asyncio.Transport, writer: AbstractStreamWriter, writers: Writers
    ) -> None:
        self.resp = resp
        self.transport = transport
        self.writer = writer
        self.writers = writers
        self.fd: int = transport.get_extra_info("socket").fileno()
        self.chunked = resp.chunked
        self.deadline = 0.0
        self.stalled = False

    @classmethod
    async def start(cls, request: web.Request, resp: web.StreamResponse, writers: Writers) -> BodyWriter:
        transport = request.transport
        if not isinstance(transport, asyncio.Transport) or transport.is_closing():
            raise ConnectionResetError("connection lost")
        transport.set_write_buffer_limits(high=0)
        writer = await resp.prepare(request)
        if writer is None:
            raise ConnectionResetError("connection lost")
        await writer.write(b"")  # aiohttp holds the headers back until the first write: they go out now
        return cls(resp, transport, writer, writers)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            if self.chunked:
                await self._raw(f"{len(data):x}\r\n".encode())
            await self._raw(data)
            if self.chunked:
                await self._raw(b"\r\n")
        except ConnectionError:
            self._stalled()
            raise
        finally:
            self.writers.disarm(self)

    async def _raw(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        off, end = 0, len(view)
        transport, writers = self.transport, self.writers
        while off < end:
            writers.arm(self)  # per step: slow readers are fine, stalled ones not
            async with writers.turns:
                if transport.is_closing():
                    raise ConnectionResetError("connection lost")
                if transport.get_write_buffer_size() == 0:
                    want = min(STEP, end - off)
                    try:
                        sent = os.write(self.fd, view[off : off + want])
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    off += sent
                    if sent < want:
                        # The kernel is full: one slice waits in the transport, which wakes us once it is gone.
                        transport.write(view[off : off + SLICE])
                        off += min(SLICE, end - off)
                # Keep the turn until the next loop iteration: the others wait on the semaphore, not in the
                # ready queue, so one iteration writes WRITERS steps at most and requests get their turn.
                await asyncio.sleep(0)
            await self.writer.drain()  # at once, unless the transport holds something

    async def end(self) -> None:
        self.writers.arm(self)
        try:
            await self.resp.write_eof()
        except ConnectionError:
            self._stalled()
            raise
        finally:
            self.writers.disarm(self)

    def cut(self) -> None:
        """Abort (not close: a close would wait for the buffer to drain, which it never will). The write
        waiting on the client then fails with `StalledReader`."""
        peer = self.transport.get_extra_info("peername")
        log.info("http.stalled_reader_cut", peer=peer, timeout_s=self.writers.timeout)
        self.stalled = True
        self.transport.abort()

    def _stalled(self) -> None:
        """A write failed: raise `StalledReader` instead if it is because the client was cut."""
        if self.stalled:
            raise StalledReader(f"the client read nothing for {self.writers.timeout:g} s") from None


class Hub:
    """Wakes the event streams: at each change of the manifest, at exit, when a subscriber's connection
    closed, and every PING_TICK_S for their comment lines. One task watches every connection once a second,
    instead of each idle stream waking to look (aiohttp does not cancel a handler whose client left) or
    keeping a timer of its own for the next comment line."""

    def __init__(self, store: ManifestStore) -> None:
        self.store = store
        self._event = asyncio.Event()
        self._transports: set[asyncio.BaseTransport] = set()
        self._task: asyncio.Task[None] | None = None

    def join(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(keep_running("sse-hub", self._watch), name="sse-hub")

    def leave(self, transport: asyncio.BaseTransport) -> None:
        self._transports.discard(transport)

    def wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self) -> None:
        """Until the next wake-up (at most PING_TICK_S + REAP_S away while a stream is open)."""
        await self._event.wait()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        seen, tick = self.store.version, loop.time() + PING_TICK_S
        while self._transports:
            await self.store.wait_change(REAP_S)
            gone = {t for t in self._transports if t.is_closing()}
            now = loop.time()
            if gone or self.store.version != seen or now >= tick:
                self._transports -= gone
                seen = self.store.version
                if now >= tick:
                    tick = now + PING_TICK_S
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


async def stream_events(
    out: BodyWriter,
    cur: int | None,
    frames: Frames,
    hub: Hub,
    closing: asyncio.Event,
    sent: Callable[[int], None],
) -> None:
    """One subscriber's stream (SPEC 5): the manifest unless `cur` can be resumed, then each change, a
    comment every 15 s; until exit or the connection's end. Every frame comes made from `frames`; `sent`
    hears the version of each one written, so that the exit can wait for the final one (SPEC 8)."""
    store = frames.store
    loop = asyncio.get_running_loop()
    next_ping = loop.time() + PING_DUE_S
    if cur is None or store.changes_since(cur) is None:
        cur = await _send_manifest(out, frames)
    while not closing.is_set() and not out.transport.is_closing():
        sent(cur)
        changes = store.changes_since(cur)
        if changes is None:
            cur = await _send_manifest(out, frames)
        elif changes:
            for ch in changes:
                await out.write(frames.change(ch))
                cur = ch.version
        elif loop.time() >= next_ping:
            await out.write(SSE_PING)
            next_ping = loop.time() + PING_DUE_S
        else:
            await hub.wait()


async def _send_manifest(out: BodyWriter, frames: Frames) -> int:
    version, head, body, tail = frames.manifest()
    for part in (head, body, tail):
        await out.write(part)
    return version


def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols: libc is among them (find_library would fork ldconfig at each start)
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
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
    releases go on. One timer at a time, moved when it comes due: cancelling and remaking it at each of
    1,000 releases would leave 1,000 cancelled timers in the loop's heap for a second."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._handle: asyncio.TimerHandle | None = None
        self._first = self._last = 0.0

    def soon(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = now = loop.time()
        if self._handle is None:
            self._first = now
            self._handle = loop.call_at(now + TRIM_DELAY_S, self._due)

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        at = min(self._last + TRIM_DELAY_S, self._first + TRIM_MAX_WAIT_S)
        if loop.time() < at:
            self._handle = loop.call_at(at, self._due)
            return
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
