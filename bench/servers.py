"""The servers under test, and the process handling that starts them pinned and always stops them.

To add a peer (nginx, express, http.server...): subclass `Server`, give it a `name`, a `command()` and, if
it needs more than "a small file answers 200", a `wait_ready()`; then add it to `SERVERS`. Every server
serves the fixture folder under `prefix` (default /artifacts/), so probes and load scripts are shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fixtures import Fixtures

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


@dataclasses.dataclass(frozen=True)
class Context:
    """What a server needs to be launched: where the files are, a port, and a scratch dir of its own."""

    fixtures: Fixtures
    port: int
    scratch: Path  # empty, private to this server run, removed afterwards (never inside the files dir)
    python: str


class Server:
    name = "?"
    prefix = "/artifacts/"
    ready_timeout_s = 60.0

    def command(self, ctx: Context) -> list[str]:
        raise NotImplementedError

    def env(self, ctx: Context) -> dict[str, str]:
        return dict(os.environ)

    def wait_ready(self, ctx: Context, proc: Running) -> None:
        """Default: a small fixture file answers 200."""
        path = self.prefix + ctx.fixtures.small[0]
        poll(lambda: http_status(ctx.port, path) == 200, self.ready_timeout_s, proc, f"{self.name}: GET {path}")


class Sidecar(Server):
    name = "sidecar"

    def command(self, ctx: Context) -> list[str]:
        state, tools = ctx.scratch / "state", ctx.scratch / "tool-results"
        tools.mkdir()
        return [
            ctx.python,
            "-m",
            "sidecar",
            "serve",
            "--artifacts-dir",
            str(ctx.fixtures.files_dir),
            "--state-dir",
            str(state),
            "--tool-results-dir",
            str(tools),
            "--host",
            "127.0.0.1",
            "--port",
            str(ctx.port),
            "--settle-ms",
            "50",
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ]

    def env(self, ctx: Context) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def wait_ready(self, ctx: Context, proc: Running) -> None:
        """/readyz is 200, then the manifest lists every fixture (the 200 MiB file takes a hash first)."""
        poll(lambda: http_status(ctx.port, "/readyz") == 200, self.ready_timeout_s, proc, "sidecar: /readyz")
        want = set(ctx.fixtures.names)

        def published() -> bool:
            status, body = http_get(ctx.port, "/v1/manifest")
            if status != 200:
                return False
            doc = json.loads(body)
            return want <= {a["name"] for a in doc["artifacts"]}

        poll(published, self.ready_timeout_s, proc, "sidecar: every fixture in /v1/manifest")


class AiohttpStatic(Server):
    name = "aiohttp"

    def command(self, ctx: Context) -> list[str]:
        script = BENCH_DIR / "peers" / "aiohttp_static.py"
        return [ctx.python, str(script), "--dir", str(ctx.fixtures.files_dir), "--port", str(ctx.port)]


SERVERS: dict[str, type[Server]] = {"sidecar": Sidecar, "aiohttp": AiohttpStatic}
BASELINE = "sidecar"  # ratios are BASELINE / each other server


# ---- processes ---------------------------------------------------------------------------------


class ServerDied(RuntimeError):
    pass


class Running:
    """A child in its own session (so its whole process group can be killed), output to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cpu: int | None) -> None:
        self.log_path = log_path
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.argv = argv
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise ServerDied(f"exited with {code} before it was ready; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> float:
        """SIGTERM to the group, a second SIGTERM after 2 s (the sidecar's "exit now"), SIGKILL after 3 s more.
        The group is killed even if the leader already exited (a child of it could still hold the port).
        Returns the seconds it took."""
        t0 = time.monotonic()
        for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of an exited leader
        return time.monotonic() - t0


@contextlib.contextmanager
def started(server: Server, ctx: Context, log_path: Path, cpu: int | None) -> Iterator[Running]:
    running = Running(server.command(ctx), server.env(ctx), log_path, cpu)
    try:
        server.wait_ready(ctx, running)
        yield running
    finally:
        print(f"[{server.name}] stopped in {running.stop():.1f} s", flush=True)


# ---- small HTTP helpers used while waiting --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_status(port: int, path: str) -> int | None:
    try:
        return http_get(port, path)[0]
    except (OSError, http.client.HTTPException):
        return None


def poll(check: Callable[[], bool], timeout_s: float, proc: Running, what: str) -> None:
    """Call `check()` every 50 ms until it is true; bounded by `timeout_s` and by the server staying alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s; log tail:\n{proc.log_tail()}")
