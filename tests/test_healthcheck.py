"""`sidecar healthcheck`: the image's HEALTHCHECK probes the port and host the daemon was configured with."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from support.helpers import REPO_ROOT, Sidecar, Workspace, daemon_env, free_port


async def healthcheck(
    ws: Workspace, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sidecar", "healthcheck", *flags],
        env=daemon_env(ws, env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_healthy_on_the_port_from_the_environment(
    run_sidecar: Callable[..., Awaitable[Sidecar]], workspace: Callable[..., Workspace]
) -> None:
    sc = await run_sidecar()
    assert sc.port != 5173
    # A wildcard bind (the image's default host) is probed over loopback.
    done = await healthcheck(workspace(), env={"SIDECAR_PORT": str(sc.port), "SIDECAR_HOST": "0.0.0.0"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = await healthcheck(workspace(), "--port", str(sc.port), "--host", "127.0.0.1")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


async def test_unhealthy_when_nothing_listens(workspace: Callable[..., Workspace]) -> None:
    port = free_port()
    done = await healthcheck(workspace(), env={"SIDECAR_PORT": str(port)})
    assert done.returncode == 1
    assert f"port {port}" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("status", [503, 404])
async def test_unhealthy_when_healthz_is_not_200(
    aiohttp_server: Callable[..., Awaitable[object]], workspace: Callable[..., Workspace], status: int
) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(status=status)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    server = await aiohttp_server(app, host="127.0.0.1")
    done = await healthcheck(workspace(), "--port", str(server.port))  # type: ignore[attr-defined]
    assert done.returncode == 1
    assert f"answered {status}" in done.stderr


def test_the_probe_does_not_import_the_server() -> None:
    # The image runs it every 10 s: it must stay a small HTTP client, not a second aiohttp.
    code = (
        "import sys\n"
        "from sidecar.cli import main\n"
        "try:\n"
        "    main(['healthcheck', '--port', '1'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'sidecar')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    loaded = eval(out)  # noqa: S307 - our own repr of a list of names
    assert not [m for m in loaded if m.startswith("aiohttp")], loaded
    assert "sidecar.healthcheck" in loaded and "sidecar.server" not in loaded
