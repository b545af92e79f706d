"""Test helpers: a workspace on disk, the daemon as a real process, raw HTTP, waiting for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.cli import build_parser, load_settings
from sidecar.config import Settings

__all__ = (
    "REPO_ROOT",
    "Sidecar",
    "Workspace",
    "accepts",
    "daemon_env",
    "descendants",
    "entry",
    "fetch",
    "free_port",
    "get_manifest",
    "names",
    "raw_request",
    "refused",
    "settings",
    "sha256",
    "source_writer",
    "spawn",
    "start_logged",
    "wait_for",
    "wait_manifest",
)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def accepts(port: int) -> bool:
    """Whether something accepts a TCP connection on 127.0.0.1:`port` now."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


async def fetch(http: aiohttp.ClientSession, method: str, url: Any, **kw: Any) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one request."""
    async with http.request(method, url, **kw) as resp:
        return resp.status, resp.headers, await resp.read()


def free_port() -> int:
    """A port nobody listens on right now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(interval)


async def raw_request(port: int, head: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (no client normalises the path) and read the whole answer: (status, raw bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    status_line = data.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, data


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks (field 22 of /proc/PID/stat): guards against reused PIDs."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[19]


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below pid, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(raw.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[tuple[int, str]] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            started = _start_time(child)
            if started is not None:
                found.append((child, started))
                stack.append(child)
    return found


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Everything one daemon touches, under the test's tmp_path."""

    root: Path
    artifacts: Path
    state: Path
    tool_results: Path
    home: Path

    @classmethod
    def create(cls, root: Path) -> Workspace:
        ws = cls(root, root / "artifacts", root / "state", root / "tool-results", root / "home")
        for d in (ws.artifacts, ws.tool_results, ws.home):
            d.mkdir(parents=True, exist_ok=True)
        return ws

    def write(self, name: str, data: bytes) -> Path:
        path = self.artifacts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


class Sidecar:
    """One daemon process, its port and its logs (stderr is a JSON-lines file under the workspace)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        port: int,
        workspace: Workspace,
        argv: Sequence[str],
        stdout: Path,
        stderr: Path,
        auth_token: str | None,
    ) -> None:
        self.proc = proc
        self.port = port
        self.workspace = workspace
        self.argv = list(argv)
        self.stdout_path = stdout
        self.stderr_path = stderr
        self.auth_token = auth_token
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout(self) -> bytes:
        try:
            return self.stdout_path.read_bytes()
        except OSError:
            return b""

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [d for d in self.logs() if d.get("event") == event and all(d.get(k) == v for k, v in fields.items())]

    async def wait_log(self, event: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        found = await wait_for(lambda: self.events(event, **fields), timeout)
        return found[0]  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        await wait_for(lambda: self.proc.poll() is not None, timeout, interval=0.01)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.stderr()[-4000:]}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url("/readyz")) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.02)
        raise AssertionError(f"sidecar not ready within {timeout} s:\n{self.stderr()[-4000:]}")

    async def stop(self) -> None:
        """Release, SIGTERM, wait; then SIGKILL its process group and everything it started."""
        below = descendants(self.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                    session.post(self.url("/v1/release"), headers=self.auth_headers()),
                ):
                    pass
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid, started in below:
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def spawn(
    workspace: Workspace,
    args: Sequence[str],
    *,
    mode: str,
    command: Sequence[str] | None,
    port: int,
    env: dict[str, str],
    log_name: str,
    preexec: Callable[[], None] | None = None,
) -> Sidecar:
    # 127.0.0.1 first, so that a test's own --host (given in args) wins.
    argv = [sys.executable, "-m", "sidecar", mode, "--host", "127.0.0.1", "--port", str(port), *args]
    argv += ["--log-format", "json"]
    if command is not None:
        argv += ["--", *command]
    token = None
    for i, a in enumerate(args):
        if a == "--auth-token" and i + 1 < len(args):
            token = args[i + 1]
    # preexec: resource limits for the daemon (what prlimit would do)
    return start_logged(argv, port, workspace, env, log_name, token, preexec_fn=preexec)


def start_logged(
    argv: list[str],
    port: int,
    workspace: Workspace,
    env: dict[str, str],
    log_name: str,
    token: str | None = None,
    **popen: Any,
) -> Sidecar:
    """A daemon `argv` in its own session in the workspace root, stdin closed, stdout and stderr to
    `<log_name>.stdout` and `.stderr` there; `popen`: more subprocess.Popen options (user, preexec_fn...)."""
    stdout = workspace.root / f"{log_name}.stdout"
    stderr = workspace.root / f"{log_name}.stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=workspace.root,
            start_new_session=True,
            **popen,
        )
    return Sidecar(proc, port, workspace, argv, stdout, stderr, token)


def daemon_env(workspace: Workspace, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_") and k != "CLAUDE_CONFIG_DIR"}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["HOME"] = str(workspace.home)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


async def get_manifest(http: aiohttp.ClientSession, sc: Sidecar, query: str = "") -> dict[str, Any]:
    async with http.get(sc.url("/v1/manifest" + query), headers=sc.auth_headers()) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def wait_manifest(
    http: aiohttp.ClientSession, sc: Sidecar, check: Callable[[dict[str, Any]], Any], timeout: float = 5.0
) -> dict[str, Any]:
    """Long-poll /v1/manifest until `check(manifest)` holds; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    doc = await get_manifest(http, sc)
    while not check(doc):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"manifest never matched {check}: {json.dumps(doc, indent=1)}")
        doc = await get_manifest(http, sc, f"?since={doc['version']}&wait={min(left, 1.0):.3f}")
    return doc


def names(doc: dict[str, Any]) -> list[str]:
    return [a["name"] for a in doc["artifacts"]]


def entry(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((a for a in doc["artifacts"] if a["name"] == name), None)


def source_writer(results: Path) -> Callable[..., Path]:
    """write(text or bytes, name="out.txt"): a tool-result file under `results` (parents made), its path."""

    def write(text: str | bytes, name: str = "out.txt") -> Path:
        p = results / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        return p

    return write


def settings(*argv: str, command: str = "serve") -> Settings:
    """Parse only: never start a daemon in the test process (an unknown option may be ignored)."""
    return load_settings(build_parser().parse_args([command, *argv]))


def refused(capsys: pytest.CaptureFixture[str], *argv: str, after_usage: bool = False) -> str:
    """`sidecar serve argv` exits 2 with a one-line error, which is returned; `after_usage`: argparse's own
    refusals print a usage line before it."""
    with pytest.raises(SystemExit) as exc:
        settings(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    if not after_usage:
        assert len(err) == 1, err
    assert err[-1].startswith("sidecar: error: "), err
    return err[-1]


# ---- a UI that receives pushes (served by the run_ui fixture) -------------------------------------


@dataclasses.dataclass
class Pushed:
    at: float
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclasses.dataclass
class FakeUI:
    """Answers each push with the next scripted status (then `default`), and records what it got."""

    statuses: list[int]
    default: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    url: str = ""
    requests: list[Pushed] = dataclasses.field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            await asyncio.sleep(self.delay)
            status = self.statuses.pop(0) if self.statuses else self.default
            self.requests.append(Pushed(time.monotonic(), dict(request.headers), body, status))
            headers = {"Retry-After": self.retry_after} if self.retry_after and status >= 500 else None
            return web.json_response({"ok": status < 300}, status=status, headers=headers)
        finally:
            self.in_flight -= 1

    def acked(self) -> list[Pushed]:
        return [p for p in self.requests if 200 <= p.status < 300]

    def keys(self) -> list[str]:
        return [p.headers["Idempotency-Key"] for p in self.requests]

    def bodies(self) -> list[dict[str, Any]]:
        return [p.body for p in self.requests]
