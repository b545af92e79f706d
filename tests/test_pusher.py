"""sidecar.pusher: pushes to a real UI server on 127.0.0.1, retries, acknowledgements; backoff arithmetic."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web
from support.helpers import FakeUI, Pushed, free_port, names, sha256, wait_for

from sidecar.config import Settings
from sidecar.deliveries import STATE_FILE as DELIVERIES_FILE
from sidecar.deliveries import Deliveries
from sidecar.manifest import Entry, Identity, ManifestStore
from sidecar.metrics import Metrics
from sidecar.pusher import (
    RETRY_AFTER_CAP_S,
    STATE_FILE,
    Pusher,
    PushHold,
    retry_after_seconds,
)


def manifest_pushes_with(ui: FakeUI, name: str) -> list[Pushed]:
    return [p for p in ui.requests if name in names(p.body)]


class TestManifestMode:
    async def test_pushes_the_manifest_with_its_headers(self, run_ui, run_sidecar, workspace):
        """Pushes carry the manifest, type, key `<sidecar_id>:<version>`, token; one at a time, upward."""
        ui = await run_ui(delay=0.1)
        ws = workspace()
        await run_sidecar("--ui-push-url", ui.url, "--ui-token", "ui-secret", "--chat-id", "chat-1")
        for i in range(4):
            ws.write(f"f{i}.txt", str(i).encode())
            await asyncio.sleep(0.07)
        await wait_for(lambda: [p for p in ui.acked() if len(p.body["artifacts"]) == 4])
        for p in ui.requests:
            assert p.headers["Content-Type"] == "application/json"
            assert p.headers["Authorization"] == "Bearer ui-secret"
            assert p.headers["Idempotency-Key"] == f"{p.body['sidecar_id']}:{p.body['version']}"
            assert (p.body["schema"], p.body["chat_id"], p.body["state"]) == (1, "chat-1", "running")
        versions = [p.body["version"] for p in ui.requests]
        assert versions == sorted(set(versions))
        assert ui.max_in_flight == 1

    async def test_no_authorization_header_without_a_ui_token(self, run_ui, run_sidecar, workspace):
        """Without --ui-token the push carries no Authorization header."""
        ui = await run_ui()
        ws = workspace()
        await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: manifest_pushes_with(ui, "a.txt"))
        assert all("Authorization" not in p.headers for p in ui.requests)

    async def test_503_is_retried_with_the_same_key_then_acknowledged(self, run_ui, run_sidecar, workspace):
        """5xx answers are retried (same Idempotency-Key) until a 2xx acknowledges the version."""
        ui = await run_ui(503, 502)
        ws = workspace()
        sc = await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: ui.acked())
        assert [p.status for p in ui.requests] == [503, 502, 200]
        assert len(set(ui.keys())) == 1
        await sc.wait_log("push.ok")
        assert len(sc.events("push.retry")) == 2

    async def test_retry_after_is_honoured(self, run_ui, run_sidecar, workspace):
        """A 503 with `Retry-After: 1` delays the next attempt by about a second, not the 250 ms backoff."""
        ui = await run_ui(503, retry_after="1")
        ws = workspace()
        await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: ui.acked(), 5)
        first, second = ui.requests[0], ui.requests[1]
        assert second.at - first.at >= 0.9

    async def test_400_is_not_retried(self, run_ui, run_sidecar, workspace):
        """A 4xx other than 408/425/429 ends that version's pushes (`push.failed`); the next version is pushed."""
        ui = await run_ui(default=400)
        ws = workspace()
        sc = await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: ui.requests)
        await sc.wait_log("push.failed")
        await asyncio.sleep(0.6)  # a retry would come within 250 ms
        assert len(ui.requests) == 1
        ui.default = 200
        ws.write("b.txt", b"b")
        await wait_for(lambda: ui.acked())
        assert len(ui.requests) == 2
        assert ui.requests[1].body["version"] > ui.requests[0].body["version"]


class TestFinalManifest:
    async def test_final_manifest_is_retried_until_acknowledged(self, run_ui, run_sidecar, workspace, http):
        """After release, the daemon keeps retrying the `final` manifest and exits once the UI acknowledges it."""
        ui = await run_ui()
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar("--ui-push-url", ui.url, "--grace-period", "30")
        await wait_for(lambda: manifest_pushes_with(ui, "a.txt") and ui.acked())
        ui.default = 503
        async with http.post(sc.url("/v1/release")) as resp:
            assert resp.status == 202
        sc.signal(signal.SIGTERM)
        await wait_for(lambda: [p for p in ui.requests if p.body["state"] == "final"])
        await asyncio.sleep(0.5)
        assert sc.proc.poll() is None
        ui.default = 200
        assert await sc.wait_exit(5) == 0
        final = [p for p in ui.acked() if p.body["state"] == "final"]
        assert len(final) == 1
        assert names(final[0].body) == ["a.txt"]


class TestAcknowledgements:
    async def test_acknowledged_version_is_not_pushed_again_after_a_restart(self, run_ui, run_sidecar, workspace):
        """What the UI acknowledged is persisted: a restart (even after SIGKILL) does not push it again."""
        ui = await run_ui()
        ws = workspace()
        first = await run_sidecar("--ui-push-url", ui.url, ws=ws)
        ws.write("a.txt", b"a")
        await wait_for(lambda: manifest_pushes_with(ui, "a.txt"))
        await first.wait_log("push.ok")
        first.signal(signal.SIGKILL)
        await first.wait_exit(5)
        pushed = len(ui.requests)

        second = await run_sidecar("--ui-push-url", ui.url, ws=ws)
        await asyncio.sleep(0.6)
        assert len(ui.requests) == pushed
        ws.write("b.txt", b"b")
        await wait_for(lambda: manifest_pushes_with(ui, "b.txt"))
        assert len(set(ui.keys())) == len(ui.requests)  # no key was ever sent twice
        await second.wait_log("push.ok")  # logged once the acknowledgement is persisted, just after the UI answered

    async def test_unacknowledged_version_is_pushed_after_a_restart(self, run_ui, run_sidecar, workspace):
        """A version the UI never acknowledged is pushed again, under the same key, by the next run."""
        ui = await run_ui(default=503)
        ws = workspace()
        first = await run_sidecar("--ui-push-url", ui.url, ws=ws)
        ws.write("a.txt", b"a")
        await wait_for(lambda: manifest_pushes_with(ui, "a.txt"))
        key = ui.requests[-1].headers["Idempotency-Key"]
        first.signal(signal.SIGKILL)
        await first.wait_exit(5)
        ui.default = 200

        await run_sidecar("--ui-push-url", ui.url, ws=ws)
        await wait_for(lambda: ui.acked())
        assert ui.acked()[0].headers["Idempotency-Key"] == key


class TestCacheMode:
    async def test_each_new_or_changed_artifact_is_pushed_once(self, run_ui, run_sidecar, workspace):
        """Cache mode posts each new or changed entry once, keyed `<sidecar_id>:<id>`; deletions not."""
        ui = await run_ui()
        ws = workspace()
        port = free_port()
        await run_sidecar(
            "--ui-push-url",
            ui.url,
            "--ui-push-mode",
            "cache",
            "--public-base-url",
            f"http://127.0.0.1:{port}",
            "--chat-id",
            "chat-9",
            port=port,
        )
        ws.write("a.txt", b"a")
        ws.write("b.txt", b"b")
        await wait_for(lambda: {p.body["artifact"]["name"] for p in ui.acked()} == {"a.txt", "b.txt"})
        for p in ui.requests:
            art = p.body["artifact"]
            assert p.body["chatId"] == "chat-9"
            assert p.headers["Idempotency-Key"].endswith(":" + art["id"])
            assert art["url"] == f"http://127.0.0.1:{port}/artifacts/{art['name']}"
        (ws.artifacts / "a.txt").unlink()
        ws.write("b.txt", b"b, changed")
        await wait_for(lambda: [p for p in ui.acked() if p.body["artifact"]["sha256"] == sha256(b"b, changed")])
        await asyncio.sleep(0.3)
        assert sorted(p.body["artifact"]["name"] for p in ui.requests) == ["a.txt", "b.txt", "b.txt"]

    async def test_newest_artifact_is_pushed_first(self, run_ui, run_sidecar, workspace):
        """While one push is in flight, later artifacts queue up; the newest of them goes next, each once."""
        ui = await run_ui(delay=1.0)
        ws = workspace()
        port = free_port()
        sc = await run_sidecar(
            "--ui-push-url", ui.url, "--ui-push-mode", "cache", "--public-base-url", f"http://127.0.0.1:{port}",
            "--chat-id", "c", port=port,
        )  # fmt: skip
        ws.write("first.txt", b"0")
        await wait_for(lambda: ui.in_flight == 1, timeout=5)
        for n in ("b.txt", "c.txt", "a.txt"):  # published in this order, which is not the order of the names
            ws.write(n, n.encode())
            await wait_for(lambda n=n: [e for e in sc.events("artifact.published") if e.get("name") == n])
        await wait_for(lambda: len(ui.acked()) == 4, timeout=10)
        await asyncio.sleep(0.3)
        assert [p.body["artifact"]["name"] for p in ui.requests] == ["first.txt", "a.txt", "c.txt", "b.txt"]

    async def test_exits_promptly_once_released(self, run_ui, run_sidecar, workspace, http):
        """With everything pushed, POST /v1/release then SIGTERM ends the daemon at once, every task stopped."""
        ui = await run_ui()
        ws = workspace()
        sc = await run_sidecar(
            "--ui-push-url",
            ui.url,
            "--ui-push-mode",
            "cache",
            "--public-base-url",
            "http://127.0.0.1:1",
            "--chat-id",
            "chat-9",
            "--grace-period",
            "30",
        )
        ws.write("a.txt", b"a")
        await wait_for(lambda: ui.acked())
        async with http.post(sc.url("/v1/release")) as resp:
            assert resp.status == 202
        sc.signal(signal.SIGTERM)
        assert await sc.wait_exit(3) == 0
        assert sc.events("lifecycle.exit")
        assert not sc.events("lifecycle.task_stuck")


class TestRetryAfter:
    @pytest.mark.parametrize(("value", "seconds"), [("5", 5.0), (" 7 ", 7.0), ("0", 0.0), ("120", 120.0)])
    def test_delay_seconds(self, value, seconds):
        """An integer Retry-After is that many seconds."""
        assert retry_after_seconds(value) == seconds

    def test_http_date(self):
        """An HTTP-date Retry-After is the time left until then; a past date is zero."""
        soon = retry_after_seconds(formatdate(time.time() + 30, usegmt=True))
        assert soon is not None and 28.0 <= soon <= 31.0
        assert retry_after_seconds(formatdate(time.time() - 300, usegmt=True)) == 0.0
        assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-1", "1.5", "Thu, 99 Foo 2015 07:28:00 GMT"])
    def test_unreadable_values_are_ignored(self, value):
        """Absent or unreadable values give None (the normal backoff applies)."""
        assert retry_after_seconds(value) is None

    def test_long_waits_are_capped(self):
        """A huge Retry-After, as seconds or as a date, is capped so a push is never parked for hours."""
        assert retry_after_seconds("86400") == RETRY_AFTER_CAP_S
        assert retry_after_seconds(formatdate(time.time() + 86400, usegmt=True)) == RETRY_AFTER_CAP_S


class TestFaults:
    async def test_ui_down_at_first_then_up(self, run_sidecar, workspace):
        """Connection refused is retried with backoff until the UI comes up; then the push is acknowledged."""
        port = free_port()
        ws = workspace()
        sc = await run_sidecar("--ui-push-url", f"http://127.0.0.1:{port}/push")
        ws.write("a.txt", b"a")
        await sc.wait_log("push.retry", timeout=5)
        ui = FakeUI([])
        app = web.Application()
        app.router.add_post("/push", ui.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await wait_for(lambda: [p for p in ui.acked() if "a.txt" in names(p.body)], timeout=15)
        finally:
            await runner.cleanup()

    async def test_429_is_retried(self, run_ui, run_sidecar, workspace):
        """429 Too Many Requests is retried like a 5xx, with the same Idempotency-Key."""
        ui = await run_ui(429, 429)
        ws = workspace()
        await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: [p for p in ui.acked() if "a.txt" in names(p.body)], timeout=8)
        statuses = [p.status for p in ui.requests]
        assert statuses[:3] == [429, 429, 200]
        assert len(set(ui.keys()[:3])) == 1

    async def test_slow_ui_gets_one_push_at_a_time_newest_first(self, run_ui, run_sidecar, workspace):
        """A UI taking 1 s per push sees one push at a time, versions never going back, the last one whole."""
        ui = await run_ui(delay=1.0)
        ws = workspace()
        await run_sidecar("--ui-push-url", ui.url)
        for i in range(6):
            ws.write(f"f{i}.txt", f"file {i}".encode())
            await asyncio.sleep(0.15)
        want = {f"f{i}.txt" for i in range(6)}
        await wait_for(lambda: [p for p in ui.acked() if want <= set(names(p.body))], timeout=15)
        versions = [p.body["version"] for p in ui.requests]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        assert ui.max_in_flight == 1
        assert len(versions) < 7, f"newest wins: intermediate versions are skipped, got {versions}"

    async def test_restart_in_the_middle_of_a_push(self, run_ui, run_sidecar, workspace):
        """SIGKILL while a push is in flight: the restarted daemon pushes that version again until acked."""
        ui = await run_ui(delay=3.0)
        ws = workspace()
        sc = await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: ui.in_flight == 1, timeout=5)
        sc.signal(signal.SIGKILL)
        await sc.wait_exit(5)
        ui.delay = 0.0
        in_flight_key = f"{sc.events('artifact.published')[0]['version']}"
        await run_sidecar("--ui-push-url", ui.url, ws=ws)
        await wait_for(lambda: [p for p in ui.acked() if "a.txt" in names(p.body)], timeout=10)
        acked = next(p for p in ui.acked() if "a.txt" in names(p.body))
        assert acked.headers["Idempotency-Key"].endswith(":" + in_flight_key), "the same version, the same key"


class TestCacheReceiver:
    async def test_a_janus_like_receiver_gets_every_artifact_byte_exact(self, run_sidecar, workspace, aiohttp_server):
        """A receiver that downloads `artifact.url` and checks its sha256 (like the Janus cache route)."""
        import aiohttp

        verified: dict[str, str] = {}
        failures: list[str] = []

        async def cache(request: web.Request) -> web.Response:
            doc = await request.json()
            art = doc["artifact"]
            async with aiohttp.ClientSession() as client, client.get(art["url"]) as resp:
                body = await resp.read()
            if resp.status != 200 or sha256(body) != art["sha256"] or len(body) != art["size_bytes"]:
                failures.append(art["name"])
                return web.json_response({"ok": False}, status=502)
            verified[art["id"]] = art["name"]
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/api/artifacts/cache", cache)
        server = await aiohttp_server(app, host="127.0.0.1")
        ws = workspace()
        port = free_port()
        png = bytes(range(256)) * 300
        await run_sidecar(
            "--ui-push-url", str(server.make_url("/api/artifacts/cache")), "--ui-push-mode", "cache",
            "--public-base-url", f"http://127.0.0.1:{port}", "--chat-id", "chat-1", port=port,
        )  # fmt: skip
        ws.write("big.bin", png)
        ws.write("dir x/é.txt", b"unicode path")
        await wait_for(lambda: len(verified) == 2, timeout=10)
        assert sorted(verified.values()) == ["big.bin", "dir x/é.txt"] and not failures


class TestExtraHeaders:
    @pytest.mark.parametrize("mode", ["manifest", "cache"])
    async def test_every_push_carries_them_and_no_log_line_shows_a_value(self, run_ui, run_sidecar, workspace, mode):
        """`--ui-push-header` goes out on every push, in both modes, beside the sidecar's own headers."""
        ui = await run_ui(503)
        ws = workspace()
        flags = ["--ui-push-url", ui.url, "--ui-push-header", "X-PreReleasePassword: pw, with comma"]
        flags += ["--ui-push-header", "X-Trace: 7", "--ui-push-mode", mode]
        flags += ["--public-base-url", "http://127.0.0.1:1", "--chat-id", "c"]
        sc = await run_sidecar(*flags)
        ws.write("a.txt", b"a")
        await wait_for(lambda: ui.acked(), timeout=10)
        assert len(ui.requests) >= 2  # the retry too
        for p in ui.requests:
            assert (p.headers["X-PreReleasePassword"], p.headers["X-Trace"]) == ("pw, with comma", "7")
            assert p.headers["Content-Type"] == "application/json" and "Idempotency-Key" in p.headers
        assert "pw, with comma" not in sc.stderr()


class TestSeams:
    """The pusher in process, with what the lifecycle injects: a push hold and the deliveries."""

    @staticmethod
    async def pusher(tmp_path: Path, hold: PushHold | None = None, deliveries: Deliveries | None = None) -> Pusher:
        settings = Settings(
            artifacts_dir=tmp_path / "artifacts",
            state_dir=tmp_path / "state",
            ui_push_url="http://127.0.0.1:1/push",
            ui_push_mode="cache",
            public_base_url="http://127.0.0.1:2",
            chat_id="c",
        )
        store = ManifestStore(settings.state_dir, public_base_url=settings.public_base_url)
        store.load()
        data = b"held"
        e = Entry("a.txt", sha256(data), len(data), "text/plain", 1.0, 1.0, Identity(1, 1, len(data), 1))
        await store.commit(upserts=[e])
        return Pusher(settings, store, Metrics(), deliveries, hold)

    async def test_a_held_content_waits_and_goes_when_its_hold_ends(self, tmp_path):
        """While the hold holds an entry's content it is not pushed; once it ends the idle pusher wakes."""
        held = {sha256(b"held")}
        hold = PushHold(held.__contains__, asyncio.Event())
        p = await self.pusher(tmp_path, hold)
        assert p._next() is None
        idle = asyncio.create_task(p._idle(30))
        await asyncio.sleep(0.05)
        assert not idle.done()
        held.clear()
        hold.ended.set()  # no new manifest version: only the hold's event wakes it
        await asyncio.wait_for(idle, 1)
        work = p._next()
        assert work is not None and work.name == "a.txt"

    async def test_deliveries_are_on_disk_before_the_acknowledgements(self, tmp_path):
        """Writing push.json first has the deliveries save every acknowledged content (Deliveries' promise)."""
        deliveries = Deliveries(tmp_path / "state")
        p = await self.pusher(tmp_path, deliveries=deliveries)
        deliveries.load(p.store.sidecar_id)
        p.acked["a.txt"] = sha256(b"held")
        deliveries.acknowledged(sha256(b"held"))
        p._dirty = True
        await p._persist(force=True)
        done = json.loads((tmp_path / "state" / DELIVERIES_FILE).read_text())["done"]
        assert done == [sha256(b"held")]
        assert json.loads((tmp_path / "state" / STATE_FILE).read_text())["acked"] == {"a.txt": sha256(b"held")}

    async def test_no_acknowledgement_is_written_when_its_delivery_could_not_be(self, tmp_path):
        """deliveries.json cannot be replaced (a directory stands in its place): push.json is not written
        either, and both are once the deliveries can be; never an acknowledgement without its delivery."""
        deliveries = Deliveries(tmp_path / "state")
        p = await self.pusher(tmp_path, deliveries=deliveries)
        deliveries.load(p.store.sidecar_id)
        (tmp_path / "state" / DELIVERIES_FILE).mkdir()
        p.acked["a.txt"] = sha256(b"held")
        deliveries.acknowledged(sha256(b"held"))
        p._dirty = True
        await p._persist(force=True)
        assert not (tmp_path / "state" / STATE_FILE).exists()
        assert p._dirty
        (tmp_path / "state" / DELIVERIES_FILE).rmdir()
        await p._persist(force=True)
        assert json.loads((tmp_path / "state" / DELIVERIES_FILE).read_text())["done"] == [sha256(b"held")]
        assert json.loads((tmp_path / "state" / STATE_FILE).read_text())["acked"] == {"a.txt": sha256(b"held")}
