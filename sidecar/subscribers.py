"""Open /v1/events streams and the last version each was sent, so the exit waits for the final one (SPEC 8)."""

from __future__ import annotations

import asyncio
import itertools

__all__ = ("Subscribers",)


class Subscribers:
    """The lifecycle's view of the event streams, independent of how the server writes them: each stream
    reports the version its last event carried; `caught_up` waits until every open one reached a version
    (or ended). A stream that never reports (a stalled client) costs the deadline, nothing more."""

    def __init__(self) -> None:
        self._sent: dict[int, int] = {}  # stream -> version of the last event written to it
        self._ids = itertools.count(1)
        self._moved = asyncio.Event()

    def open(self) -> int:
        key = next(self._ids)
        self._sent[key] = -1
        return key

    def sent(self, key: int, version: int) -> None:
        if key in self._sent and version > self._sent[key]:
            self._sent[key] = version
            self._poke()

    def close(self, key: int) -> None:
        if self._sent.pop(key, None) is not None:
            self._poke()

    def behind(self, version: int) -> int:
        """How many open streams have not been sent `version` yet."""
        return sum(1 for v in self._sent.values() if v < version)

    async def caught_up(self, version: int, timeout: float) -> bool:
        """Wait until every open stream was sent `version` (or closed); False if the deadline came first."""
        try:
            async with asyncio.timeout(timeout):
                while self.behind(version):
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True

    def _poke(self) -> None:
        event, self._moved = self._moved, asyncio.Event()
        event.set()
