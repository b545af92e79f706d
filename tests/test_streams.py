"""sidecar.streams, through a real daemon: clients that never read cannot exhaust its memory (SPEC 9).

Each such client is a raw socket with a small receive buffer that sends its request and reads nothing.
The many artifacts are published before the daemon starts (tests/support/bulk.py), so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from support.bulk import write_published
from support.helpers import Sidecar, Workspace, wait_for
from support.stalled import stalled_clients

MiB = 1024 * 1024
WRITE_TIMEOUT_S = 2


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def non_readers(port: int, path: str, count: int) -> contextlib.AbstractContextManager[list[socket.socket]]:
    """`count` connections that send `GET path` and never read; closed on the way out."""
    return stalled_clients(port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), count)


def cut_short(s: socket.socket, wait: float = 3.0) -> bool:
    """Read what the server sent until it closes: True when it did (reset or end of stream) within `wait` s
    of silence. A server that never closes keeps sending, or goes silent with the connection open."""
    s.settimeout(wait)
    try:
        while s.recv(1 << 20):
            pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


async def all_cut(socks: list[socket.socket]) -> list[bool]:
    return await asyncio.gather(*(asyncio.to_thread(cut_short, s) for s in socks))


async def held(sc: Sidecar, http: aiohttp.ClientSession, seconds: float) -> int:
    """The highest RSS over `seconds`, while /healthz must keep answering (a loose liveness bound)."""
    peak = rss(sc.pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        async with http.get(sc.url("/healthz"), timeout=aiohttp.ClientTimeout(total=5)) as resp:
            assert resp.status == 200
        peak = max(peak, rss(sc.pid))
        await asyncio.sleep(0.1)
    return peak


async def idle_rss(sc: Sidecar, http: aiohttp.ClientSession) -> tuple[int, int]:
    """(RSS, manifest size) once the manifest was served whole once (its body is cached from then on)."""
    async with http.get(sc.url("/v1/manifest"), timeout=aiohttp.ClientTimeout(total=60)) as resp:
        assert resp.status == 200
        size = len(await resp.read())
    await asyncio.sleep(0.5)
    return rss(sc.pid), size


async def stalled_are_cut(
    run_sidecar: Callable[..., Awaitable[Sidecar]],
    workspace: Callable[..., Workspace],
    http: aiohttp.ClientSession,
    path: str,
    count: int,
) -> tuple[Sidecar, int]:
    """`count` clients ask `path` for a ~9 MB body and read nothing: RSS grows by far less than one copy
    each, /healthz answers meanwhile, the write timeout closes them, and RSS comes back near idle.
    Returns (the sidecar, the manifest's size)."""
    ws = workspace()
    write_published(ws.artifacts, ws.state, 20_000)
    sc = await run_sidecar(env={"SIDECAR_WRITE_TIMEOUT": str(WRITE_TIMEOUT_S)})
    idle, size = await idle_rss(sc, http)
    assert size > 8 * MiB
    with non_readers(sc.port, path, count) as socks:
        peak = await held(sc, http, WRITE_TIMEOUT_S + 1.0)
        assert peak - idle < 48 * MiB  # a copy each would be `count` x 9 MB
        assert all(await all_cut(socks))
    await wait_for(lambda: rss(sc.pid) - idle < 16 * MiB, timeout=10)
    return sc, size


class TestClientsThatNeverRead:
    async def test_manifest_readers_that_stall_hold_no_copy_and_are_cut(self, run_sidecar, workspace, http):
        """30 clients ask for a ~9 MB manifest and read nothing: RSS grows by far less than one copy each,
        /healthz answers meanwhile, the write timeout closes them, and RSS comes back near idle."""
        sc, size = await stalled_are_cut(run_sidecar, workspace, http, "/v1/manifest", 30)
        async with http.get(sc.url("/v1/manifest")) as resp:  # and a client that reads gets it whole
            assert len(await resp.read()) == size

    async def test_event_subscribers_that_stall_hold_no_copy_and_are_cut(self, run_sidecar, workspace, http):
        """200 event subscribers owed a ~9 MB `manifest` event (more than the kernel buffers for each) that
        read nothing: RSS grows by far less than a copy each, /healthz answers meanwhile, the write timeout
        closes them, and RSS comes back near idle."""
        await stalled_are_cut(run_sidecar, workspace, http, "/v1/events", 200)

    async def test_subscribers_that_read_get_every_frame_whole(self, run_sidecar, workspace, http):
        """Beside stalled subscribers, one that reads gets the ~2 MB manifest event whole, then each change."""
        ws = workspace()
        write_published(ws.artifacts, ws.state, 5_000)
        sc = await run_sidecar()
        with non_readers(sc.port, "/v1/events", 50):
            async with http.get(sc.url("/v1/events"), timeout=aiohttp.ClientTimeout(total=30)) as resp:
                buf = b""
                while buf.count(b"\r\n\r\n") < 1:
                    buf += await resp.content.readany()
                ws.write("new.txt", b"fresh")
                while buf.count(b"\r\n\r\n") < 2:
                    buf += await resp.content.readany()
        first, second = buf.split(b"\r\n\r\n")[:2]
        assert first.startswith(b"id: ") and b"\r\nevent: manifest\r\ndata: {" in first
        assert first.count(b'"sha256":') == 5_000
        assert b"event: artifacts" in second and b'"new.txt"' in second
