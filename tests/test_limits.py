"""sidecar.limits, through a real daemon: out of file descriptors, artifacts are delayed, never lost."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from support.helpers import entry, names, sha256, wait_for, wait_manifest
from support.images import make_png
from support.stalled import idle_connections

IDLE = 300  # idle connections: more than a 128 or 256 descriptor limit holds


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A preexec for the daemon: RLIMIT_NOFILE as `prlimit --nofile=soft:hard` would set it."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def limits_of(pid: int) -> tuple[int, int]:
    """(soft, hard) "Max open files" of a process, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


async def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a fresh connection, with a deadline (a client the daemon never accepts times out)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.read()


class TestDescriptorLimit:
    async def test_soft_limit_is_raised_to_the_hard_limit(self, run_sidecar, workspace, http):
        """Started with 256 of a 4,096 hard limit, the daemon raises its soft limit, logs it, and then
        serves hundreds of idle connections and a normal client at once."""
        ws = workspace()
        sc = await run_sidecar(preexec=nofile(256, 4096))
        assert limits_of(sc.pid) == (4096, 4096)
        raised = await sc.wait_log("limits.nofile_raised")
        assert (raised["soft_before"], raised["soft"]) == (256, 4096)
        data = os.urandom(100_000)
        with idle_connections(sc.port, IDLE):
            await asyncio.sleep(0.5)
            ws.write("during.bin", data)
            assert (await get(sc.url("/healthz")))[0] == 200
            await wait_manifest(http, sc, lambda d: "during.bin" in names(d))
            status, body = await get(sc.url("/artifacts/during.bin"))
            assert (status, sha256(body)) == (200, sha256(data))

    async def test_squeezed_daemon_answers_and_loses_nothing(self, run_sidecar, workspace, http):
        """With soft = hard = 128 and 300 idle connections, a normal client still gets an answer (a 200, or
        a fast 503), a file written meanwhile is published and served byte-exact, and the accept errors
        take a few log lines, not thousands."""
        ws = workspace()
        sc = await run_sidecar(preexec=nofile(128, 128))
        assert limits_of(sc.pid) == (128, 128)
        data = os.urandom(200_000)
        with idle_connections(sc.port, IDLE):
            await asyncio.sleep(1.0)
            ws.write("squeezed.bin", data)
            for _ in range(3):
                status, _ = await get(sc.url("/healthz"))
                assert status in (200, 503)
                await asyncio.sleep(0.5)
        doc = await wait_manifest(http, sc, lambda d: "squeezed.bin" in names(d), timeout=10.0)
        assert entry(doc, "squeezed.bin")["sha256"] == sha256(data)
        status, body = await get(sc.url("/artifacts/squeezed.bin"))
        assert (status, sha256(body)) == (200, sha256(data))
        accept_lines = [line for line in sc.stderr().splitlines() if "accept" in line]
        assert len(accept_lines) < 20, accept_lines[:3]
        assert len(sc.stderr()) < 200_000

    async def test_a_file_hashed_out_of_descriptors_is_published_at_finalization(self, run_sidecar, workspace, http):
        """Descriptors held until the daemon finalizes: the file is in the final manifest all the same."""
        ws = workspace()
        sc = await run_sidecar("--grace-period", "10", preexec=nofile(128, 128))
        data = os.urandom(50_000)
        with idle_connections(sc.port, IDLE):
            await asyncio.sleep(1.0)
            ws.write("late.bin", data)
            await asyncio.sleep(1.0)
        for _ in range(20):  # a 503 (connections at the cap for a moment) says: again in a second
            async with http.post(sc.url("/v1/finalize")) as resp:
                if resp.status != 503:
                    assert resp.status in (200, 202)
                    break
            await asyncio.sleep(0.2)
        doc = await wait_manifest(http, sc, lambda d: d["state"] == "final", timeout=15.0)
        assert entry(doc, "late.bin") is not None
        assert entry(doc, "late.bin")["sha256"] == sha256(data)


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


@contextlib.contextmanager
def out_of_descriptors(pid: int) -> Iterator[None]:
    """Squeeze a running process: its soft limit at its lowest free descriptor, so every open, socket
    and accept fails with EMFILE until the limit is given back."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


class TestTemporaryErrors:
    async def test_emfile_delays_publication_and_persistence_but_loses_nothing(self, run_sidecar, workspace):
        """Out of descriptors, a new file is not published and a removal not shown (nothing is visible
        before it is persisted); with descriptors back, both happen, and the state file agrees."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("old.bin", b"published before\n")
        data = os.urandom(100_000)
        connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, opened before the squeeze
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as keep:
            before = await wait_manifest(keep, sc, lambda d: "old.bin" in names(d))
            with out_of_descriptors(sc.pid):
                ws.write("new.bin", data)
                (ws.artifacts / "old.bin").unlink()
                await asyncio.sleep(1.5)
                async with keep.get(sc.url("/v1/manifest")) as resp:
                    during = await resp.json()
            assert names(during) == ["old.bin"] and during["version"] == before["version"]
            doc = await wait_manifest(keep, sc, lambda d: names(d) == ["new.bin"], timeout=10.0)
            async with keep.get(sc.url("/artifacts/new.bin")) as resp:
                assert sha256(await resp.read()) == sha256(data)
        state = json.loads((ws.state / "manifest.json").read_bytes())
        assert state["version"] == doc["version"]
        assert sc.events("watch.retry_later") or sc.events("manifest.persist_retry")

    async def test_emfile_while_materializing_is_retried_not_refused(self, run_sidecar, workspace, http):
        """A data URL met while out of descriptors is materialized once they are back, and never listed
        as rejected (write_failed) meanwhile."""
        ws = workspace()
        sc = await run_sidecar()
        png = make_png(3)
        src = ws.tool_results / "p" / "s" / "tool-results" / "t.json"
        src.parent.mkdir(parents=True)
        with out_of_descriptors(sc.pid):
            src.write_text(json.dumps({"content": f"data:image/png;base64,{base64.b64encode(png).decode()}"}))
            await asyncio.sleep(1.5)
        doc = await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1, timeout=10.0)
        assert doc["artifacts"][0]["sha256"] == sha256(png)
        assert not doc["rejected"] and not sc.events("datauri.rejected")

    async def test_pusher_survives_an_acknowledgement_it_cannot_persist(self, run_sidecar, workspace, run_ui):
        """A push acknowledged while out of descriptors (over a kept-alive connection) cannot be written
        to push.json: the pusher carries on, and a file published later is pushed too."""
        ws = workspace()
        ui = await run_ui(503, retry_after="2")  # the first push waits 2 s: the squeeze starts meanwhile
        sc = await run_sidecar("--ui-push-url", ui.url)
        ws.write("first.txt", b"first\n")
        await wait_for(lambda: ui.requests, timeout=10.0)
        with out_of_descriptors(sc.pid):
            await wait_for(ui.acked, timeout=10.0)  # the retry, acknowledged; its persist fails
            await asyncio.sleep(0.5)
        ws.write("second.txt", b"second\n")
        await wait_for(lambda: any("second.txt" in json.dumps(p.body) for p in ui.acked()), timeout=10.0)


@pytest.mark.parametrize("soft", [128, 1024, 65536])
def test_connection_cap_leaves_a_reserve(soft: int) -> None:
    """The cap keeps at least 64 descriptors free, and two per connection (socket and file) fit."""
    from sidecar.limits import connection_cap

    cap = connection_cap(soft)
    assert cap >= 16
    assert 2 * cap + 64 <= soft
