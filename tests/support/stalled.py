"""Clients that never read: raw sockets that send one request and read nothing (tests and bench/)."""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator

__all__ = ("RCVBUF", "idle_connections", "stalled_clients")

RCVBUF = 4096  # a small receive buffer, so the kernel holds little of what the server sends each one


@contextlib.contextmanager
def stalled_clients(port: int, request: bytes, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to 127.0.0.1:`port` that send `request` and never read; all closed on the way
    out, and the descriptor limit (raised when `count` needs it) put back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.connect(("127.0.0.1", port))
            s.sendall(request)
        yield socks
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections to the daemon that never send a byte; all closed on exit."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()
