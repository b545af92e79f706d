"""Settling (SPEC 3): a candidate is due once its signature has been still for the settle time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time

from sidecar.fsutil import Signature, signature

__all__ = ("Settler",)


@dataclasses.dataclass(slots=True)
class _Pending:
    sig: Signature
    last_change: float  # wall clock: the file's ctime, or when we first saw it if its clock is off
    due: float


class Settler:
    """Candidates wait here until their signature has been still for `settle` seconds (SPEC 3)."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.pending: dict[str, _Pending] = {}
        self.wake = asyncio.Event()

    def again(self, key: str, sig: Signature, last_change: float, delay: float) -> None:
        """Try this version again after `delay` seconds (a temporary error stopped it), unless a newer
        version was offered meanwhile."""
        if key not in self.pending:
            self.pending[key] = _Pending(sig, last_change, time.time() + delay)
            self.wake.set()

    def offer(self, key: str, st: os.stat_result) -> None:
        sig = signature(st)
        old = self.pending.get(key)
        if old is not None and old.sig == sig:
            return
        now = time.time()
        last = min(now, st.st_ctime)
        self.pending[key] = _Pending(sig, last, last + self.settle)
        self.wake.set()

    def drop(self, key: str) -> None:
        self.pending.pop(key, None)

    async def due(self) -> list[tuple[str, Signature, float]]:
        """Wait until some candidate is due; return (key, signature, last change) and forget them."""
        while True:
            now = time.time()
            ready = [(k, p.sig, p.last_change) for k, p in self.pending.items() if p.due <= now]
            if ready:
                for k, _, _ in ready:
                    del self.pending[k]
                return ready
            self.wake.clear()
            timeout = min((p.due for p in self.pending.values()), default=now + 3600) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.001)):
                    await self.wake.wait()
