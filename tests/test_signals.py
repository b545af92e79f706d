"""sidecar.signals: a signal that arrives while the daemon is still starting (before the bind) is honoured.

The daemon is held at a known point of its startup, before the bind: its state file is a FIFO, and
reading it blocks until the test writes. A signal sent then reaches a process that has not bound its port."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from support.helpers import Sidecar, Workspace, accepts, wait_for

RunSidecar = Callable[..., Awaitable[Sidecar]]


def _writer(fifo: Path) -> int | None:
    """The write end of the FIFO once the daemon has it open for reading (ENXIO before that)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        raise


@contextlib.contextmanager
def _held_at_load(ws: Workspace) -> Iterator[Path]:
    ws.state.mkdir(parents=True, exist_ok=True)
    fifo = ws.state / "manifest.json"
    os.mkfifo(fifo)
    yield fifo


async def _signal_while_loading(sc: Sidecar, fifo: Path, *sigs: int) -> None:
    """Send `sigs` while the daemon waits for its state file, then let it go on (an empty state file)."""
    fd = await wait_for(lambda: _writer(fifo), 10)
    try:
        for sig in sigs:
            sc.signal(sig)
            await asyncio.sleep(0.1)  # two at once would be one: the kernel keeps one pending signal per kind
        await asyncio.sleep(0.3)  # time for the signal to be delivered, still before the bind
        assert not accepts(sc.port), "the daemon was meant to be held before the bind"
    finally:
        os.close(fd)


class TestBeforeTheBind:
    async def test_serve_sigterm_while_loading_state_finalizes_and_exits_0(
        self, run_sidecar: RunSidecar, workspace: Callable[..., Workspace]
    ) -> None:
        """`serve`: SIGTERM before the port is bound is a finalization request: bind, final, exit 0."""
        ws = workspace()
        ws.write("a.txt", b"a")
        with _held_at_load(ws) as fifo:
            sc = await run_sidecar("--grace-period", "0.5", ws=ws, wait_ready=False)
            await _signal_while_loading(sc, fifo, signal.SIGTERM)
        assert await sc.wait_exit(15) == 0
        order = [d["event"] for d in sc.logs() if d["event"] in ("http.listening", "lifecycle.final", "lifecycle.exit")]
        assert order == ["http.listening", "lifecycle.final", "lifecycle.exit"]
        assert sc.events("lifecycle.final", artifacts=1)

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
    async def test_run_signal_before_the_child_exists_is_forwarded_to_it(
        self, run_sidecar: RunSidecar, workspace: Callable[..., Workspace], sig: signal.Signals
    ) -> None:
        """`run`: a forwarded signal (SIGTERM, SIGHUP) before the child exists neither kills the sidecar nor is
        lost: it is held, then forwarded to the child once it starts (SPEC 8); killed by it, the child's
        128 + N is the sidecar's exit status, after finalization."""
        ws = workspace()
        with _held_at_load(ws) as fifo:
            command = [sys.executable, "-c", "import time; time.sleep(30)"]
            sc = await run_sidecar("--grace-period", "0.5", ws=ws, mode="run", command=command, wait_ready=False)
            await _signal_while_loading(sc, fifo, sig)
        assert await sc.wait_exit(15) == 128 + sig
        assert sc.events("lifecycle.signal_held", signal=sig.name)
        assert sc.events("lifecycle.child_exited", status=128 + sig)
        assert sc.events("lifecycle.final")

    async def test_serve_two_sigterms_while_loading_exit_at_once(
        self, run_sidecar: RunSidecar, workspace: Callable[..., Workspace]
    ) -> None:
        """`serve`: a second SIGTERM before the bind skips finalization and grace, like it does later."""
        ws = workspace()
        ws.write("a.txt", b"a")  # never downloaded: only the second signal can end the grace this soon
        with _held_at_load(ws) as fifo:
            sc = await run_sidecar("--grace-period", "30", ws=ws, wait_ready=False)
            await _signal_while_loading(sc, fifo, signal.SIGTERM, signal.SIGTERM)
        assert await sc.wait_exit(5) == 0
        assert sc.events("lifecycle.exit")
