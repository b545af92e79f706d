"""The servers under test, and the process handling that starts them pinned and always stops them.

To add a peer: subclass `Server`, give it a `name`, a `command()`, the commands it `needs` and, if it needs
more than "a small file answers 200", a `wait_ready()`; then add it to `SERVERS`. Every server serves the
fixture folder under `prefix` (default /artifacts/), so probes and load scripts are shared.
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
SETTLE_MS = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a server needs to be launched: where the files are, a port, and a scratch dir of its own."""

    fixtures: Fixtures
    port: int
    scratch: Path  # empty, private to this server run, removed afterwards (never inside the files dir)
    python: str


class Server:
    name = "?"
    label = "?"  # what it is, for the table's legend
    prefix = "/artifacts/"
    ready_timeout_s = 60.0
    needs: tuple[str, ...] = ()  # commands that must exist (see deps.py)

    def command(self, ctx: Context) -> list[str]:
        raise NotImplementedError

    def env(self, ctx: Context) -> dict[str, str]:
        return dict(os.environ)

    def wait_ready(self, ctx: Context, proc: Running) -> None:
        """Default: a small fixture file answers 200."""
        path = self.prefix + ctx.fixtures.small[0]
        poll(lambda: http_status(ctx.port, path) == 200, self.ready_timeout_s, proc, f"{self.name}: GET {path}")


def sidecar_argv(
    python: str, artifacts: Path, state: Path, tools: Path, port: int, extra: tuple[str, ...] = ()
) -> list[str]:
    """`python -m sidecar serve` as the benchmark runs it. `--grace-period 0` only shortens the exit (a SIGTERM
    finalizes, then the grace period would wait for downloads); nothing measured depends on it."""
    return [
        python,
        "-m",
        "sidecar",
        "serve",
        "--artifacts-dir",
        str(artifacts),
        "--state-dir",
        str(state),
        "--tool-results-dir",
        str(tools),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--settle-ms",
        str(SETTLE_MS),
        "--log-format",
        "json",
        "--log-level",
        "warning",
        "--grace-period",
        "0",
        *extra,
    ]


def sidecar_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class Sidecar(Server):
    name = "sidecar"
    label = "python -m sidecar serve (this repository)"

    def command(self, ctx: Context) -> list[str]:
        state, tools = ctx.scratch / "state", ctx.scratch / "tool-results"
        tools.mkdir()
        return sidecar_argv(ctx.python, ctx.fixtures.files_dir, state, tools, ctx.port)

    def env(self, ctx: Context) -> dict[str, str]:
        return sidecar_env()

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
    label = "aiohttp web.static (bench/peers/aiohttp_static.py)"

    def command(self, ctx: Context) -> list[str]:
        script = BENCH_DIR / "peers" / "aiohttp_static.py"
        return [ctx.python, str(script), "--dir", str(ctx.fixtures.files_dir), "--port", str(ctx.port)]


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {scratch}/body;
    proxy_temp_path {scratch}/proxy;
    fastcgi_temp_path {scratch}/fastcgi;
    uwsgi_temp_path {scratch}/uwsgi;
    scgi_temp_path {scratch}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location /artifacts/ {{
            alias {files}/;
        }}
    }}
}}
"""


class Nginx(Server):
    name = "nginx"
    label = "nginx, 1 worker, sendfile on, access_log off"
    needs = ("nginx",)

    def command(self, ctx: Context) -> list[str]:
        conf = ctx.scratch / "nginx.conf"
        conf.write_text(NGINX_CONF.format(scratch=ctx.scratch, port=ctx.port, files=ctx.fixtures.files_dir))
        # -e: the error log before the config is read; -p: prefix; the master and its worker run pinned.
        return ["nginx", "-p", str(ctx.scratch), "-e", str(ctx.scratch / "error.log"), "-c", str(conf)]


class Express(Server):
    name = "express"
    label = "express res.sendFile (bench/peers/express_static.js)"
    needs = ("node",)

    def command(self, ctx: Context) -> list[str]:
        script = BENCH_DIR / "peers" / "express_static.js"
        return ["node", str(script), "--dir", str(ctx.fixtures.files_dir), "--port", str(ctx.port)]

    def env(self, ctx: Context) -> dict[str, str]:
        return dict(os.environ, NODE_ENV="production")


class HttpServer(Server):
    name = "http.server"
    label = "python -m http.server (ThreadingHTTPServer, HTTP/1.0)"
    prefix = "/"  # it serves the folder at the root

    def command(self, ctx: Context) -> list[str]:
        return [
            ctx.python,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(ctx.fixtures.files_dir),
            str(ctx.port),
        ]


SERVERS: dict[str, type[Server]] = {
    "sidecar": Sidecar,
    "nginx": Nginx,
    "aiohttp": AiohttpStatic,
    "express": Express,
    "http.server": HttpServer,
}


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

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread, reaped children included) of the server's process group: what
        it cost, whatever else runs on the machine."""
        ticks = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # pgrp: the group leader is the process we started
                ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / CLK_TCK

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
