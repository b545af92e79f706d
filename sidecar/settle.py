"""Settling (SPEC 3): a candidate is due once its signature has been still for the settle time; one loop
hands due candidates to the watcher's work, and finalization waits for it to run dry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable

from sidecar.fsutil import Signature, signature
from sidecar.logs import get_logger
from sidecar.retry import backoff

__all__ = ("Due", "Settler")

log = get_logger("sidecar.settle")

FLUSH_POLL_S = 0.02

Due = list[tuple[str, Signature, float]]  # (key, signature, last change): candidates whose time came


@dataclasses.dataclass(slots=True)
class _Pending:
    sig: Signature
    last_change: float  # wall clock: the file's ctime, or when we first saw it if its clock is off
    due: float


class Settler:
    """Candidates wait here until their signature has been still for `settle` seconds (SPEC 3); `run`
    hands them to the watcher's work, `drain` waits until none is waiting or in hand."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.pending: dict[str, _Pending] = {}
        self.wake = asyncio.Event()
        self.in_hand = 0  # candidates handed to the work that it has not finished with
        self.attempts: dict[str, int] = {}  # keys a temporary error (EMFILE...) kept from being done

    def again(self, key: str, sig: Signature, last_change: float, delay: float) -> None:
        """Try this version again after `delay` seconds (a temporary error stopped it), unless a newer
        version was offered meanwhile."""
        if key not in self.pending:
            self.pending[key] = _Pending(sig, last_change, time.time() + delay)
            self.wake.set()

    def retry(self, key: str, sig: Signature, last_change: float) -> None:
        """A temporary error (EMFILE...) stopped this version: again after a backoff that grows with
        every attempt in a row, not at the next rescan."""
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        self.again(key, sig, last_change, backoff(attempt))

    def succeeded(self, key: str) -> None:
        """The key was dealt with (whatever the answer): its next temporary error starts the backoff over."""
        self.attempts.pop(key, None)

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

    async def due(self) -> Due:
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

    async def run(self, work: Callable[[Due], Awaitable[None]], failed: str) -> None:
        """The settle loop: each batch of due candidates goes to `work`, and counts as in hand until it
        returns. An exception is logged as the event `failed`; the loop goes on."""
        while True:
            due = await self.due()
            self.in_hand += len(due)
            try:
                await work(due)
            except Exception:
                log.exception(failed)
            finally:
                self.in_hand -= len(due)

    def idle(self) -> bool:
        """Nothing settling, nothing in hand."""
        return not self.pending and not self.in_hand

    async def drain(self, deadline: float) -> None:
        """Finalization: wait until idle, or until `deadline` (monotonic) passes."""
        while not self.idle() and time.monotonic() < deadline:
            await asyncio.sleep(FLUSH_POLL_S)
