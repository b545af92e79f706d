"""systemd's sd_notify protocol in a few lines: READY=1, STOPPING=1 and watchdog keep-alives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from sidecar.numbers import ascii_uint

__all__ = ("Notifier",)


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls) -> Notifier:
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watchdog_pid = ascii_uint(pid)
        watchdog = ascii_uint(usec) if watchdog_pid is None or watchdog_pid == os.getpid() else None
        return cls(address, watchdog)

    def send(self, message: str) -> bool:
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(addr)
                sock.sendall(message.encode())
            return True
        except OSError:
            return False

    async def watchdog(self) -> None:
        """Keep-alives at half the watchdog interval, while the event loop is healthy."""
        if not self.address or not self.watchdog_usec:
            return
        interval = self.watchdog_usec / 2_000_000
        while True:
            with contextlib.suppress(OSError):
                self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
