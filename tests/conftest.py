"""Fixtures: workspaces under tmp_path, the real daemon as a subprocess, an HTTP client, delayed writers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.helpers import FakeUI, Sidecar, Workspace, daemon_env, free_port, spawn
from support.machine import agent_user

DEFAULT_FLAGS = ("--settle-ms", "50", "--grace-period", "2", "--rescan-interval", "30")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Remember whether the test body failed, so teardown can show the daemon's logs."""
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SIDECAR_* variable or CLAUDE_CONFIG_DIR from the outside; HOME is a fresh directory (returned)."""
    for key in list(os.environ):
        if key.startswith("SIDECAR_") or key == "CLAUDE_CONFIG_DIR":
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Callable[..., Workspace]]:
    """Factory: `workspace("name")` makes artifacts, state, tool-results and HOME dirs (same name, same dirs)."""
    made: dict[str, Workspace] = {}

    def make(name: str = "ws") -> Workspace:
        if name not in made:
            made[name] = Workspace.create(tmp_path / name)
        return made[name]

    yield make
    for ws in made.values():
        shutil.rmtree(ws.root, ignore_errors=True)


@pytest.fixture(scope="session")
def agent() -> pwd.struct_passwd:
    """The real non-root user `sidecar-test-agent` (support.machine.agent_user); skips where there is none."""
    user = agent_user()
    if isinstance(user, str):
        pytest.skip(user)
    return user


@pytest.fixture
def open_ws() -> Iterator[Workspace]:
    """A workspace outside pytest's 0700 tmp dir, so that a non-root process can reach it at all."""
    root = Path(tempfile.mkdtemp(prefix="sidecar-secrets-"))
    root.chmod(0o755)
    yield Workspace.create(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def run_sidecar(
    request: pytest.FixtureRequest, workspace: Callable[..., Workspace]
) -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    """Factory: start `python -m sidecar serve|run` on a free 127.0.0.1 port; always stopped at teardown."""
    started: list[Sidecar] = []

    async def start(
        *flags: str,
        ws: Workspace | None = None,
        mode: str = "serve",
        command: Sequence[str] | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        preexec: Callable[[], None] | None = None,
    ) -> Sidecar:
        ws = ws or workspace()
        args = [
            "--artifacts-dir",
            str(ws.artifacts),
            "--state-dir",
            str(ws.state),
            "--tool-results-dir",
            str(ws.tool_results),
            *DEFAULT_FLAGS,
            *flags,
        ]
        for attempt in range(3):
            sc = spawn(
                ws,
                args,
                mode=mode,
                command=command,
                port=free_port() if port is None else port,
                env=daemon_env(ws, env),
                log_name=f"sidecar-{len(started)}",
                preexec=preexec,
            )
            started.append(sc)
            if not wait_ready:
                return sc
            try:
                await sc.wait_ready()
                return sc
            except AssertionError:
                # Someone else took the port between free_port() and the bind: try another one.
                if port is None and attempt < 2 and "address already in use" in sc.stderr().lower():
                    continue
                raise
        raise AssertionError("unreachable")

    yield start
    failed = request.node.stash.get(_FAILED, False)
    for sc in reversed(started):
        await sc.stop()
        if failed:
            print(f"---- {' '.join(sc.argv[2:])}\nexit {sc.proc.returncode}\n{sc.stderr()[-8000:]}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the daemon; no automatic decompression or redirects to hide what was sent."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=15), auto_decompress=False, connector=aiohttp.TCPConnector(force_close=True)
    ) as session:
        yield session


@pytest.fixture
async def write_soon() -> AsyncIterator[Callable[..., asyncio.Task[None]]]:
    """Factory: `write_soon(path, *chunks, delay=, every=)` appends chunks in the background, one per `every` s."""
    tasks: list[asyncio.Task[None]] = []

    async def writer(path: Path, chunks: Sequence[bytes], delay: float, every: float) -> None:
        await asyncio.sleep(delay)
        path.parent.mkdir(parents=True, exist_ok=True)
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(every)
            with open(path, "ab") as f:
                f.write(chunk)

    def schedule(path: Path, *chunks: bytes, delay: float = 0.0, every: float = 0.02) -> asyncio.Task[None]:
        task = asyncio.create_task(writer(path, chunks, delay, every))
        tasks.append(task)
        return task

    yield schedule
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def run_ui(aiohttp_server):
    """Factory: `await run_ui(503, 503, default=200)` starts a fake UI in the test's event loop."""

    async def start(*statuses: int, default: int = 200, retry_after: str | None = None, delay: float = 0.0) -> FakeUI:
        ui = FakeUI(list(statuses), default, retry_after, delay)
        app = web.Application()
        app.router.add_post("/push", ui.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        ui.url = str(server.make_url("/push"))
        return ui

    return start
