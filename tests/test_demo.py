"""`make demo-serve` (`python examples/demo.py serve`): it never leaves a sidecar running, and refuses a busy port."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.helpers import free_port

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc: zombies do not count)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` (SO_REUSEADDR: closed connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class Demo:
    """One `python examples/demo.py serve` with its output collected."""

    def __init__(self, port: int, workspace: Path) -> None:
        env = dict(os.environ, DEMO_PORT=str(port), DEMO_WORKSPACE=str(workspace))
        self.proc = subprocess.Popen(
            [sys.executable, str(DEMO), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self.sidecars: list[int] = []

    def wait_serving(self, timeout: float = 30) -> int:
        """Read the output until the demo says it is serving; return the sidecar's pid."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"Ctrl-C to stop" not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"the demo did not start serving:\n{self.output.decode(errors='replace')}"
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the demo exited early:\n{self.output.decode(errors='replace')}"
                self.output += chunk
        self.sidecars = children(self.proc.pid)
        assert len(self.sidecars) == 1, self.sidecars
        return self.sidecars[0]

    def finish(self, timeout: float = 30) -> int:
        """Wait for the demo to exit; return its status (its output is kept)."""
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out
        return self.proc.returncode

    def kill(self) -> None:
        """Teardown: whatever happened, nothing of this demo is left running."""
        for pid in [self.proc.pid, *self.sidecars]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=10)
        wait_until(lambda: not any(alive(pid) for pid in self.sidecars), 10)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Factory: `start_demo(port)` runs the demo on that port with its workspace under tmp_path; always killed."""
    started: list[Demo] = []

    def start(port: int, workspace: Path | None = None) -> Demo:
        demo = Demo(port, workspace or tmp_path / "demo-workspace")
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.kill()


class TestDemoServe:
    @pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
    def test_signal_stops_the_sidecar(self, start_demo: Callable[..., Demo], sig: signal.Signals) -> None:
        """A hangup, SIGTERM or Ctrl-C to the demo stops its sidecar before the demo exits; the port is free."""
        port = free_port()
        demo = start_demo(port)
        sidecar = demo.wait_serving()
        demo.proc.send_signal(sig)
        demo.finish()
        assert not alive(sidecar), f"the sidecar {sidecar} outlived the demo"
        assert port_free(port)

    def test_killed_demo_takes_the_sidecar_along(self, start_demo: Callable[..., Demo]) -> None:
        """Even a SIGKILLed demo (no handler runs) leaves no sidecar behind: it is told when its parent dies."""
        port = free_port()
        demo = start_demo(port)
        sidecar = demo.wait_serving()
        demo.proc.kill()
        demo.finish()
        assert wait_until(lambda: not alive(sidecar), 15), f"the sidecar {sidecar} outlived the demo"
        assert wait_until(lambda: port_free(port), 5)

    def test_busy_port_is_refused(self, start_demo: Callable[..., Demo], tmp_path: Path) -> None:
        """A second demo on a port in use fails with a non-zero status and leaves the first one's workspace alone."""
        port = free_port()
        first = start_demo(port)
        first.wait_serving()
        workspace = tmp_path / "demo-workspace"
        assert (workspace / "artifacts" / "waves.png").exists()
        second = start_demo(port, workspace)
        assert second.finish() != 0, second.output.decode(errors="replace")
        assert f"{port}" in second.output.decode(errors="replace")
        assert (workspace / "artifacts" / "waves.png").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert resp.status == 200
