"""sidecar.lifecycle, through real processes: finalization, the grace period, restarts, and `run -- CMD`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from support.helpers import accepts, entry, get_manifest, names, sha256, wait_for, wait_manifest
from support.machine import mount_tmpfs, umount

from sidecar.lifecycle import open_url


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def state_file(ws) -> dict:
    return json.loads((ws.state / "manifest.json").read_bytes())


def parent_of(pid: int) -> int | None:
    """The parent PID of a live (or zombie) process, None once it is gone (Linux /proc)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def order(sc, *events: str) -> list[str]:
    """The given lifecycle events in the order they were logged."""
    return [d["event"] for d in sc.logs() if d.get("event") in events]


class TestServe:
    async def test_port_zero_binds_a_free_port_and_logs_it(self, run_sidecar):
        """`--port 0` listens on a port the system picked, logged in `http.listening`."""
        sc = await run_sidecar(port=0, wait_ready=False)
        port = (await sc.wait_log("http.listening"))["port"]
        assert isinstance(port, int) and port > 0
        sc.port, sc.base = port, f"http://127.0.0.1:{port}"
        await sc.wait_ready()

    async def test_sigterm_finalizes_and_exits_0_once_released(self, run_sidecar, workspace, http):
        """SIGTERM makes the manifest `final` (persisted), the grace period holds it, POST /v1/release ends it: 0."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar("--grace-period", "30")
        await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        sc.signal(signal.SIGTERM)
        doc = await wait_manifest(http, sc, lambda d: d["state"] == "final")
        assert names(doc) == ["a.txt"]
        assert state_file(ws)["state"] == "final"
        await asyncio.sleep(0.3)
        assert sc.proc.poll() is None  # the grace period: a.txt was never downloaded
        async with http.post(sc.url("/v1/release")) as resp:
            assert resp.status == 202
        assert await sc.wait_exit(5) == 0
        assert order(sc, "lifecycle.finalizing", "lifecycle.final", "lifecycle.released", "lifecycle.exit") == [
            "lifecycle.finalizing",
            "lifecycle.final",
            "lifecycle.released",
            "lifecycle.exit",
        ]
        assert sc.stdout() == b""  # stdout belongs to the agent

    async def test_grace_ends_early_once_everything_was_downloaded(self, run_sidecar, workspace, http):
        """When every artifact was fetched in full (a whole 200, or ranges covering it), SIGTERM exits at once."""
        ws = workspace()
        small, big = b"small", bytes(range(256)) * 400
        ws.write("small.txt", small)
        ws.write("big.bin", big)
        sc = await run_sidecar("--grace-period", "30")
        async with http.get(sc.url("/artifacts/small.txt")) as resp:
            assert await resp.read() == small
        for rng in ("bytes=0-49999", "bytes=50000-"):
            async with http.get(sc.url("/artifacts/big.bin"), headers={"Range": rng}) as resp:
                assert resp.status == 206
                await resp.read()
        started = time.monotonic()
        sc.signal(signal.SIGTERM)
        assert await sc.wait_exit(5) == 0
        assert time.monotonic() - started < 4
        assert sc.events("lifecycle.final")

    async def test_head_and_partial_downloads_do_not_end_the_grace(self, run_sidecar, workspace, http):
        """HEAD and a range that leaves bytes out do not count; the missing range, fetched during grace, does."""
        ws = workspace()
        data = bytes(range(256)) * 10
        ws.write("d.bin", data)
        sc = await run_sidecar("--grace-period", "30")
        async with http.head(sc.url("/artifacts/d.bin")) as resp:
            assert resp.status == 200
        async with http.get(sc.url("/artifacts/d.bin"), headers={"Range": "bytes=0-1000"}) as resp:
            assert await resp.read() == data[:1001]
        sc.signal(signal.SIGTERM)
        await wait_manifest(http, sc, lambda d: d["state"] == "final")
        await asyncio.sleep(0.3)
        assert sc.proc.poll() is None
        async with http.get(sc.url("/artifacts/d.bin"), headers={"Range": "bytes=1001-"}) as resp:
            assert await resp.read() == data[1001:]
        assert await sc.wait_exit(4) == 0

    async def test_a_download_of_older_content_does_not_count(self, run_sidecar, workspace, http):
        """Only a download of the final content counts: a file fetched, then changed, holds the grace period."""
        ws = workspace()
        ws.write("a.txt", b"old")
        sc = await run_sidecar("--grace-period", "30")
        async with http.get(sc.url("/artifacts/a.txt")) as resp:
            assert await resp.read() == b"old"
        ws.write("a.txt", b"new content")
        await wait_manifest(http, sc, lambda d: entry(d, "a.txt")["sha256"] == sha256(b"new content"))
        sc.signal(signal.SIGTERM)
        await wait_manifest(http, sc, lambda d: d["state"] == "final")
        await asyncio.sleep(0.3)
        assert sc.proc.poll() is None
        async with http.get(sc.url("/artifacts/a.txt")) as resp:
            assert await resp.read() == b"new content"
        assert await sc.wait_exit(4) == 0

    async def test_finalize_endpoint_then_grace_expiry(self, run_sidecar, workspace, http):
        """POST /v1/finalize answers 202 and finalizes; with nothing downloaded the grace period runs out: exit 0."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar("--grace-period", "0.6")
        await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        async with http.post(sc.url("/v1/finalize")) as resp:
            assert resp.status == 202
            assert (await resp.json())["state"] in ("finalizing", "final")
        async with http.post(sc.url("/v1/finalize")) as resp:
            assert resp.status == 202  # idempotent
        started = time.monotonic()
        assert await sc.wait_exit(6) == 0
        assert time.monotonic() - started > 0.4
        assert state_file(ws)["state"] == "final"
        assert sc.events("lifecycle.grace_expired")

    async def test_second_sigterm_skips_the_grace(self, run_sidecar, workspace, http):
        """A second SIGTERM during the grace period exits within a second."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar("--grace-period", "30")
        await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        sc.signal(signal.SIGTERM)
        await wait_manifest(http, sc, lambda d: d["state"] == "final")
        started = time.monotonic()
        sc.signal(signal.SIGTERM)
        assert await sc.wait_exit(3) == 0
        assert time.monotonic() - started < 1.5


class TestRestart:
    async def test_restart_with_the_same_state_continues(self, run_sidecar, workspace, http):
        """A restart on the same state dir keeps sidecar_id and created_at, and the version never goes back."""
        ws = workspace()
        ws.write("a.txt", b"first")
        first = await run_sidecar()
        seen = await wait_manifest(http, first, lambda d: "a.txt" in names(d))
        await first.stop()
        assert first.proc.returncode == 0
        final = state_file(ws)
        assert final["state"] == "final"

        second = await run_sidecar()
        doc = await get_manifest(http, second)
        assert doc["sidecar_id"] == final["sidecar_id"]
        assert doc["version"] > final["version"]
        assert doc["state"] == "running"
        a = entry(doc, "a.txt")
        assert a["sha256"] == sha256(b"first")
        assert a["created_at"] == entry(seen, "a.txt")["created_at"]
        async with http.get(second.url("/artifacts/a.txt")) as resp:
            assert (resp.status, await resp.read()) == (200, b"first")
        ws.write("a.txt", b"second")
        changed = await wait_manifest(http, second, lambda d: entry(d, "a.txt")["sha256"] == sha256(b"second"))
        assert entry(changed, "a.txt")["created_at"] == a["created_at"]
        assert changed["version"] == doc["version"] + 1

    async def test_sigkill_then_restart_loses_nothing(self, run_sidecar, workspace, http):
        """After SIGKILL, a restart lists every artifact that had been published, under the same id and version."""
        ws = workspace()
        ws.write("a.txt", b"a")
        first = await run_sidecar()
        ws.write("sub/b.txt", b"b")
        seen = await wait_manifest(http, first, lambda d: names(d) == ["a.txt", "sub/b.txt"])
        first.signal(signal.SIGKILL)
        assert await first.wait_exit(5) == -signal.SIGKILL

        second = await run_sidecar()
        doc = await get_manifest(http, second)
        assert doc["sidecar_id"] == seen["sidecar_id"]
        assert doc["version"] >= seen["version"]
        assert names(doc) == ["a.txt", "sub/b.txt"]
        for name in ("a.txt", "sub/b.txt"):
            assert entry(doc, name)["sha256"] == entry(seen, name)["sha256"]
            assert entry(doc, name)["created_at"] == entry(seen, name)["created_at"]

    async def test_downloads_before_a_sigkill_still_count_after_restart(self, run_sidecar, workspace, http):
        """A download survives a SIGKILL: the restarted daemon's grace period does not wait for it again."""
        ws = workspace()
        ws.write("a.txt", b"a")
        ws.write("b.txt", b"b")
        first = await run_sidecar("--grace-period", "30")
        await wait_manifest(http, first, lambda d: names(d) == ["a.txt", "b.txt"])
        async with http.get(first.url("/artifacts/a.txt")) as resp:
            assert await resp.read() == b"a"
        await wait_for(lambda: (ws.state / "deliveries.json").exists(), timeout=3)
        first.signal(signal.SIGKILL)
        assert await first.wait_exit(5) == -signal.SIGKILL

        second = await run_sidecar("--grace-period", "30", ws=ws)
        second.signal(signal.SIGTERM)
        await wait_manifest(http, second, lambda d: d["state"] == "final")
        await asyncio.sleep(0.3)
        assert second.proc.poll() is None, "b.txt was never downloaded"
        async with http.get(second.url("/artifacts/b.txt")) as resp:
            assert await resp.read() == b"b"
        assert await second.wait_exit(4) == 0
        assert second.events("lifecycle.delivered")


class TestRun:
    async def test_run_exits_with_the_child_status(self, run_sidecar):
        """`run -- CMD` exits with CMD's exit status."""
        sc = await run_sidecar(mode="run", command=child("import sys; sys.exit(3)"), wait_ready=False)
        assert await sc.wait_exit(10) == 3
        assert sc.events("lifecycle.child_exited", status=3)

    async def test_child_killed_by_a_signal_gives_128_plus_n(self, run_sidecar):
        """A child killed by SIGTERM makes the sidecar exit 143."""
        code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
        sc = await run_sidecar(mode="run", command=child(code), wait_ready=False)
        assert await sc.wait_exit(10) == 128 + signal.SIGTERM

    async def test_signals_are_forwarded_to_the_child_group(self, run_sidecar):
        """SIGUSR1 and SIGTERM sent to the sidecar reach the child, which has its own process group and stdout."""
        code = (
            "import os, signal, sys, time\n"
            "signal.signal(signal.SIGUSR1, lambda *_: print('usr1', flush=True))\n"
            "print('own-group' if os.getpgid(0) == os.getpid() else 'shared-group', flush=True)\n"
            "while True: time.sleep(0.05)\n"
        )
        sc = await run_sidecar(mode="run", command=child(code))
        await wait_for(lambda: sc.stdout().endswith(b"\n"), 5)
        sc.signal(signal.SIGUSR1)
        await wait_for(lambda: sc.stdout().endswith(b"usr1\n"), 5)
        sc.signal(signal.SIGTERM)
        assert await sc.wait_exit(5) == 128 + signal.SIGTERM
        assert sc.stdout() == b"own-group\nusr1\n"

    async def test_orphans_are_reaped(self, run_sidecar, workspace):
        """A grandchild orphaned by the child's exit is adopted by the sidecar and reaped when it ends."""
        ws = workspace()
        ws.write("keep-alive.txt", b"x")  # never downloaded: the grace period keeps the sidecar up
        code = (
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.8)'])\n"
            "print(p.pid, flush=True)\n"
        )
        sc = await run_sidecar("--grace-period", "30", mode="run", command=child(code))
        orphan = int(await wait_for(lambda: sc.stdout().strip(), 5))
        await wait_for(lambda: parent_of(orphan) == sc.pid, 2)
        await wait_for(lambda: not Path(f"/proc/{orphan}").exists(), 3)
        assert sc.proc.poll() is None

    async def test_files_written_just_before_exit_are_in_the_final_manifest(self, run_sidecar, workspace):
        """The final rescan waits for what the child wrote last, so the final manifest has it."""
        ws = workspace()
        code = f"import pathlib; pathlib.Path({str(ws.artifacts / 'result.txt')!r}).write_text('done')"
        sc = await run_sidecar(
            "--settle-ms", "300", "--grace-period", "0.5", mode="run", command=child(code), wait_ready=False
        )
        assert await sc.wait_exit(10) == 0
        final = state_file(ws)
        assert final["state"] == "final"
        assert [e["name"] for e in final["entries"]] == ["result.txt"]
        assert final["entries"][0]["sha256"] == sha256(b"done")


async def _read_events(http, url: str, got: list[tuple[str, dict]], opened: asyncio.Event) -> None:
    """Collect (event, data) pairs from one /v1/events stream until the server ends it."""
    async with http.get(url) as resp:
        assert resp.status == 200
        kind, data = "", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                got.append((kind, json.loads(data)))
                opened.set()
                kind, data = "", ""


class TestDeliveredContent:
    async def test_one_download_counts_for_every_name_with_those_bytes(self, run_sidecar, workspace, http):
        """Two names, the same bytes: downloading one of them ends the grace period (content, not names)."""
        ws = workspace()
        ws.write("a.png", b"same bytes" * 100)
        ws.write("copy/a.png", b"same bytes" * 100)
        sc = await run_sidecar("--grace-period", "60")
        await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 2)
        async with http.get(sc.url("/artifacts/a.png")) as resp:
            assert resp.status == 200 and len(await resp.read()) == 1000
        sc.signal(signal.SIGTERM)
        assert await sc.wait_exit(30) == 0
        assert sc.events("lifecycle.delivered") and not sc.events("lifecycle.grace_expired")


class TestFinalEvent:
    async def test_every_event_stream_receives_the_final_state_before_the_exit(self, run_sidecar, workspace, http):
        """SPEC 8 step 4: subscribers see `state: final` even when the grace period ends at once."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        async with http.get(sc.url("/artifacts/a.txt")) as resp:
            assert await resp.read() == b"a"  # delivered: nothing holds the exit after `final`
        streams = [([], asyncio.Event()) for _ in range(4)]
        readers = [asyncio.create_task(_read_events(http, sc.url("/v1/events"), g, o)) for g, o in streams]
        try:
            for _, opened in streams:
                await asyncio.wait_for(opened.wait(), 5)
            async with http.post(sc.url("/v1/finalize")) as resp:
                assert resp.status == 202
            assert await sc.wait_exit(10) == 0
            await asyncio.wait_for(asyncio.gather(*readers), 5)
        finally:
            for r in readers:
                r.cancel()
        for got, _ in streams:
            assert ("state", {"version": got[-1][1]["version"], "state": "final"}) in got, got


class TestShutdown:
    async def test_listeners_close_first_and_an_in_flight_download_completes_and_counts(
        self, run_sidecar, workspace, http
    ):
        """At exit the port stops accepting at once, while a download already under way is drained to its
        end; the background tasks are cancelled only then, so that download is still persisted as delivered."""
        ws = workspace()
        big = os.urandom(32 << 20)  # far more than the socket buffers: the response stays in flight
        ws.write("big.bin", big)
        sc = await run_sidecar("--grace-period", "30")
        await wait_manifest(http, sc, lambda d: "big.bin" in names(d))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        raw.connect(("127.0.0.1", sc.port))
        reader, writer = await asyncio.open_connection(sock=raw, limit=1 << 16)
        try:
            writer.write(b"GET /artifacts/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            body = await reader.readexactly(1 << 16)
            async with http.post(sc.url("/v1/release")) as resp:
                assert resp.status == 202
            sc.signal(signal.SIGTERM)
            await wait_for(lambda: not accepts(sc.port), 10)
            assert sc.proc.poll() is None, "the drain waits for the download"
            body += await asyncio.wait_for(reader.readexactly(len(big) - len(body)), 10)
        finally:
            writer.close()
        assert body == big
        assert await sc.wait_exit(10) == 0
        delivered = json.loads((ws.state / "deliveries.json").read_bytes())["done"]
        assert sha256(big) in delivered
        (summary,) = sc.events("lifecycle.exit")
        assert (summary["published"], summary["downloads"], summary["stuck"]) == (1, 1, 0)

    async def test_one_summary_line_counts_the_run(self, run_sidecar, workspace, run_ui, http):
        """One `lifecycle.exit` line ends the run: exit code, state, and this run's published, pushed,
        uploaded, downloaded and reaped (orphaned grandchildren) counts."""
        ui = await run_ui()
        ws = workspace()
        code = (
            "import os, pathlib, sys, time\n"
            "for _ in range(3):\n"
            "    if os.fork() == 0:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(0.2)\n"  # outlives its parent: an orphan for the sidecar to reap
            "            os._exit(0)\n"
            "        os._exit(0)\n"
            "for _ in range(3): os.wait()\n"
            "time.sleep(0.8)\n"
            f"for n in 'ab': pathlib.Path({str(ws.artifacts)!r}, n + '.txt').write_text(n)\n"
            "sys.exit(4)\n"
        )
        sc = await run_sidecar("--ui-push-url", ui.url, "--grace-period", "30", ws=ws, mode="run", command=child(code))
        final = await sc.wait_log("lifecycle.final", timeout=10)
        await sc.wait_log("push.ok", version=final["version"])  # no push left in flight to blur the count
        async with http.post(sc.url("/v1/release")) as resp:
            assert resp.status == 202
        assert await sc.wait_exit(10) == 4
        (summary,) = sc.events("lifecycle.exit")
        assert (summary["code"], summary["state"], summary["published"]) == (4, "final", 2)
        assert summary["pushed"] == len(sc.events("push.ok")) == len(ui.acked()) > 0
        assert (summary["uploaded"], summary["downloads"], summary["reaped"]) == (0, 0, 3)


class TestFinalizeFailure:
    async def test_a_failed_finalization_is_logged_and_the_grace_still_held(self, run_sidecar, workspace, http):
        """The state dir is full when the child exits: `lifecycle.finalize_failed` says why, the published
        files are still served through the grace period, and the exit status is still the child's."""
        ws = workspace()
        ws.state.mkdir()
        if mount_tmpfs(ws.state, "1m") is None:
            pytest.skip("no tmpfs here (needs root and mount)")
        sc = None
        try:
            ws.write("a.txt", b"hello")
            go = ws.root / "go"
            code = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\nsys.exit(3)"
            sc = await run_sidecar("--grace-period", "30", ws=ws, mode="run", command=child(code))
            await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
            with contextlib.suppress(OSError), open(ws.state / "filler", "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 65536)
            go.touch()
            failed = await sc.wait_log("lifecycle.finalize_failed", timeout=10)
            assert "No space left on device" in failed["error"]
            await asyncio.sleep(0.3)
            assert sc.proc.poll() is None, "the grace period is held all the same"
            async with http.get(sc.url("/artifacts/a.txt")) as resp:
                assert await resp.read() == b"hello"  # delivered: that ends the grace period
            assert await sc.wait_exit(10) == 3
            assert sc.events("lifecycle.delivered")
            (summary,) = sc.events("lifecycle.exit")
            assert summary["code"] == 3 and summary["state"] != "final"
        finally:
            if sc is not None:
                await sc.stop()
            umount(ws.state)


class TestListening:
    @pytest.mark.parametrize(
        ("host", "url"),
        [
            ("0.0.0.0", "http://127.0.0.1:5173"),
            ("", "http://127.0.0.1:5173"),
            ("::", "http://[::1]:5173"),
            ("::1", "http://[::1]:5173"),
            ("fd00::7", "http://[fd00::7]:5173"),
            ("10.1.2.3", "http://10.1.2.3:5173"),
            ("localhost", "http://localhost:5173"),
        ],
    )
    def test_open_url(self, host, url):
        """A wildcard host is logged as its loopback address, an IPv6 address in brackets."""
        assert open_url(host, 5173) == url

    async def test_listening_logs_a_url_one_can_open(self, run_sidecar, http):
        """`--host 0.0.0.0`: `http.listening` keeps the bound host and gives a URL that answers."""
        sc = await run_sidecar("--host", "0.0.0.0", port=0, wait_ready=False)
        listening = await sc.wait_log("http.listening")
        assert listening["host"] == "0.0.0.0"
        assert listening["url"] == f"http://127.0.0.1:{listening['port']}"
        async with http.get(listening["url"] + "/healthz") as resp:
            assert resp.status == 200
