"""File-descriptor limits (SPEC 9): the soft limit raised at start, HTTP connections capped below it, and
asyncio's accept errors logged once a second instead of once per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.logs import Throttle, get_logger

__all__ = ("CappedSite", "connection_cap", "install_accept_log", "raise_nofile")

log = get_logger("sidecar.limits")

ACCEPT_ERROR = "socket.accept() out of system resource"  # asyncio's message (selector_events.py)
MIN_RESERVE = 64  # descriptors kept for publishing and state, whatever the limit
MIN_CONNECTIONS = 16
_BUSY_BODY = b'{"error":"service_unavailable","detail":"too many connections, retry"}\n'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (systemd and most shells start daemons at 1,024, which
    a few hundred idle connections exhaust); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one: the kernel caps descriptors at fs.nr_open.
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("limits.nofile_unchanged", soft=soft, hard=hard, error=str(e))
            return soft
        log.info("limits.nofile_raised", soft_before=soft, soft=target, hard=hard)
        return target
    return soft if soft != resource.RLIM_INFINITY else target


def connection_cap(nofile: int) -> int:
    """Concurrent HTTP connections allowed under a descriptor limit. A reserve (1/16 of the limit, at
    least 64) stays for hashing, the manifest, inotify and logs; of the rest, half: a connection that
    downloads an artifact holds the file's descriptor as well as its socket."""
    reserve = max(MIN_RESERVE, nofile // 16)
    return max(MIN_CONNECTIONS, (nofile - reserve) // 2)


def install_accept_log(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs a traceback for every failed accept (thousands a second once descriptors run out,
    tens of MB of log a minute): one line a second instead, with the count of those left out."""
    throttle = Throttle()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            left_out = throttle.hit()
            if left_out is not None:
                exc = context.get("exception")
                log.warning("http.accept_failed", error=str(exc) if exc else None, suppressed=left_out)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class _Busy(asyncio.Protocol):
    """Past the cap, with no idle connection to close: a fast 503 instead of a client left hanging."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        with contextlib.suppress(OSError, RuntimeError):
            transport.write(BUSY)
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass


def _busy(handler: Any) -> bool:
    """A request in progress or queued (private aiohttp state: without it, a handler counts as busy)."""
    return bool(getattr(handler, "_request_in_progress", True) or getattr(handler, "_messages", True))


class CappedSite(web.TCPSite):
    """A TCPSite whose connections never exceed `cap`. At the cap, a new connection closes the oldest
    idle one (a keep-alive connection between requests, or one that never sent a request: the idle
    floods that exhaust descriptors); when every connection is busy, it gets a 503 and is closed."""

    __slots__ = ("_throttle", "cap", "evicted", "refused", "starting")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, cap: int, **kw: Any) -> None:
        super().__init__(runner, host, port, **kw)
        self.cap = cap
        self.starting = 0  # made by the factory, connection_made not yet called
        self.evicted = 0
        self.refused = 0
        self._throttle = Throttle()

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self._factory(loop, server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    def _factory(self, loop: asyncio.AbstractEventLoop, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        def done() -> None:
            self.starting -= 1

        def make() -> asyncio.BaseProtocol:
            # aiohttp keeps its live connections in Server._connections (insertion order: oldest first).
            live: dict[Any, Any] = getattr(server, "_connections", {})
            if len(live) + self.starting >= self.cap and not self._make_room(live):
                self.refused += 1
                self._note()
                return _Busy()
            self.starting += 1
            loop.call_soon(done)  # runs just before the transport's connection_made
            return server()

        return make

    def _make_room(self, live: dict[Any, Any]) -> bool:
        """True when the new connection may be served: the cap counted those that are still open
        (a closed one stays listed until its handler task ends), or the oldest idle one was closed."""
        open_ = self.starting
        idle = None
        for handler in live:
            # Private aiohttp state, read defensively: a handler without it counts as open and busy.
            if getattr(handler, "_force_close", False):
                continue
            open_ += 1
            if idle is None and not _busy(handler):
                idle = handler
        if open_ < self.cap:
            return True
        if idle is None:
            return False
        idle.force_close()
        self.evicted += 1
        self._note()
        return True

    def _note(self) -> None:
        if self._throttle.hit() is not None:
            log.warning("http.connections_capped", cap=self.cap, evicted=self.evicted, refused=self.refused)
