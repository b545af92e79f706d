"""Clients that never read: raw sockets that send one request and read nothing (tests and bench/)."""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Callable, Iterator

__all__ = ("RCVBUF", "idle_connections", "stalled_clients")

RCVBUF = 4096  # a small receive buffer, so the kernel holds little of what the server sends each one


@contextlib.contextmanager
def _connections(count: int, connect: Callable[[socket.socket], None]) -> Iterator[list[socket.socket]]:
    """`count` TCP sockets, each set up by `connect(sock)`; all closed on the way out, whatever happened."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            connect(s)
        yield socks
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def stalled_clients(port: int, request: bytes, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to 127.0.0.1:`port` that send `request` and never read; all closed on the way
    out, and the descriptor limit (raised when `count` needs it) put back."""

    def send(s: socket.socket) -> None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.connect(("127.0.0.1", port))
        s.sendall(request)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    try:
        with _connections(count, send) as socks:
            yield socks
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def idle_connections(port: int, count: int) -> contextlib.AbstractContextManager[list[socket.socket]]:
    """`count` TCP connections to the daemon that never send a byte; all closed on exit."""

    def start(s: socket.socket) -> None:
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))

    return _connections(count, start)
