"""Signals held from the first moment (SPEC 8: handlers come before the bind), handed to the event loop later.

`sidecar run|serve` spends a few hundred milliseconds importing, loading state and binding before its loop
can take a signal. A SIGTERM in that window would kill a sidecar that is not PID 1 (no finalization), and
is discarded by the kernel for one that is. The latch records it instead, and `attach` replays it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ("FORWARDED", "STOP", "SignalLatch")

STOP = (signal.SIGTERM, signal.SIGINT)
# `run` forwards these to the child's group (SPEC 8); SIGTERM and SIGINT too, by the lifecycle, only while
# the child lives. This module imports nothing of the sidecar's: `sidecar.cli` loads it before the rest.
FORWARDED = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


class SignalLatch:
    """Plain `signal.signal` handlers that only remember what arrived, until the loop's handlers replace them.

    `run` mode also holds the signals it forwards to the child (SPEC 8), so that a SIGHUP or SIGUSR1
    before the child exists neither kills the sidecar nor goes missing; `serve` leaves them as they are."""

    def __init__(self, *, forwarded: bool) -> None:
        self.signals: tuple[signal.Signals, ...] = STOP + (FORWARDED if forwarded else ())
        self.pending: list[int] = []
        self._attached: asyncio.AbstractEventLoop | None = None

    @classmethod
    def capture(cls, *, forwarded: bool) -> SignalLatch:
        """Start holding signals now (main thread only; `sidecar.cli` calls it before the event loop exists,
        `Sidecar.run` from the loop when no latch was given)."""
        latch = cls(forwarded=forwarded)
        for sig in latch.signals:
            signal.signal(sig, latch._hold)
        return latch

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def attach(self, loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> None:
        """Give every held signal to the loop's `handler(sig)`, the ones already received first, in order."""
        # Blocked while the handlers change hands, so that none falls between the two (in the daemon only
        # the main thread exists yet, so no other thread can take the signal instead).
        with _blocked(self.signals):
            for sig in self.signals:
                loop.add_signal_handler(sig, handler, sig)
            early, self.pending = self.pending, []
        self._attached = loop
        for signum in early:
            handler(signum)

    def detach(self) -> None:
        """Back to the default dispositions (the loop is about to end; the latch's own plain handlers are
        not restored, the process is on its way out)."""
        if self._attached is not None:
            for sig in self.signals:
                self._attached.remove_signal_handler(sig)
            self._attached = None


@contextlib.contextmanager
def _blocked(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
