"""sidecar.offload (SPEC 11) against a real S3-protocol server (moto, server mode) on 127.0.0.1.

The daemon is a real process; the store is moto's threaded server, started here, recording what it is sent.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from support.helpers import FakeUI, entry, free_port, sha256, wait_for, wait_manifest
from support.s3server import BUCKET, S3Server, s3_env

MiB = 1 << 20
SANDBOX = "http://sandbox.example"


@pytest.fixture
def s3() -> Iterator[Callable[..., S3Server]]:
    """Factory: `s3(port=None, bucket=True, part_delay=0)` starts moto on 127.0.0.1; all stopped, state reset."""
    servers: list[S3Server] = []

    def start(port: int | None = None, *, bucket: bool = True, part_delay: float = 0.0) -> S3Server:
        srv = S3Server(port or free_port(), part_delay=part_delay)
        srv.start()
        servers.append(srv)
        if bucket:
            srv.create_bucket()
        return srv

    yield start
    for srv in servers:
        if srv._server_ready_event.is_set():
            try:
                srv.api("/moto-api/reset-auth", b"inf")
                srv.api("/moto-api/reset")
            finally:
                srv.stop()


def offload(srv: S3Server | str, *extra: str) -> tuple[str, ...]:
    url = srv if isinstance(srv, str) else srv.url
    return ("--s3-bucket", BUCKET, "--s3-endpoint-url", url, *extra)


def cache_pushes(ui: FakeUI) -> tuple[str, ...]:
    """Cache-mode pushes to ui; before a storage_url, the artifact's url is the sandbox's."""
    return ("--ui-push-url", ui.url, "--ui-push-mode", "cache", "--public-base-url", SANDBOX, "--chat-id", "c")


def stored(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda doc: (e := entry(doc, name)) is not None and e.get("storage_url")


async def download(url: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read(), resp.headers


async def metric(http: aiohttp.ClientSession, sc: Any, series: str) -> float:
    async with http.get(sc.url("/metrics")) as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class TestUpload:
    async def test_presigned_download_is_byte_exact(self, s3, run_sidecar, workspace, http):
        """An artifact is uploaded to <sidecar_id>/<name> and its storage_url downloads the same bytes."""
        srv = s3()
        ws = workspace()
        data = os.urandom(300_000)
        sc = await run_sidecar(*offload(srv), "--public-base-url", SANDBOX, env=s3_env())
        ws.write("charts/q3.png", data)
        published = await wait_manifest(http, sc, lambda d: entry(d, "charts/q3.png"))
        doc = await wait_manifest(http, sc, stored("charts/q3.png"), timeout=10)
        e = entry(doc, "charts/q3.png")
        assert doc["version"] > published["version"]  # the URL came as a change of its own
        assert e["url"] == f"{SANDBOX}/artifacts/charts/q3.png"  # the manifest's url is the sidecar's
        status, body, headers = await download(e["storage_url"])
        assert (status, sha256(body)) == (200, sha256(data))
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"] == "inline; filename*=UTF-8''q3.png"
        assert "X-Amz-Expires=3600" in e["storage_url"]
        key = f"{doc['sidecar_id']}/charts/q3.png"
        assert srv.ops(key) == ["PutObject", "GetObject"]
        head = srv.object(key)
        assert head is not None and head["Metadata"] == {"sha256": sha256(data)}
        assert head["ChecksumSHA256"] == b64sha(data)
        assert await metric(http, sc, 'sidecar_uploads_total{outcome="ok"}') == 1

    @pytest.mark.parametrize(
        ("flags", "key"),
        [
            (("--chat-id", "chat-9"), "chat-9/a.txt"),
            (("--chat-id", "chat-9", "--s3-prefix", "runs/7/"), "runs/7/a.txt"),
        ],
        ids=["chat-id", "explicit"],
    )
    async def test_key_is_prefix_plus_name(self, s3, run_sidecar, workspace, http, flags, key):
        """The key is the prefix and the name; the prefix defaults to `<chat_id>/`."""
        srv = s3()
        ws = workspace()
        sc = await run_sidecar(*offload(srv, *flags), env=s3_env())
        ws.write("a.txt", b"hello")
        await wait_manifest(http, sc, stored("a.txt"), timeout=10)
        assert srv.ops(key) == ["PutObject"]

    async def test_multipart_above_8_mib_with_a_checksum_per_part(self, s3, run_sidecar, workspace, http):
        """A 20 MiB file goes in three parts, each carrying its own SHA-256; the object is whole and byte-exact."""
        srv = s3()
        ws = workspace()
        data = os.urandom(20 * MiB)
        sc = await run_sidecar(*offload(srv, "--s3-prefix", ""), env=s3_env())
        ws.write("big.bin", data)
        doc = await wait_manifest(http, sc, stored("big.bin"), timeout=30)
        assert srv.ops("big.bin") == ["CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart",
                                      "CompleteMultipartUpload"]  # fmt: skip
        parts = [c for c in srv.calls if c.op == "UploadPart"]
        assert [c.size for c in parts] == [8 * MiB, 8 * MiB, 4 * MiB]
        assert all(c.checksum == c.body_sha256 for c in parts)  # what a verifying store checks
        head = srv.object("big.bin")
        assert head is not None and head["ETag"].endswith('-3"') and head["Metadata"] == {"sha256": sha256(data)}
        status, body, _ = await download(entry(doc, "big.bin")["storage_url"])
        assert (status, sha256(body)) == (200, sha256(data))
        assert await metric(http, sc, "sidecar_upload_bytes_total") == len(data)

    async def test_same_content_is_uploaded_once(self, s3, run_sidecar, workspace, http):
        """Two names with the same bytes: one upload, and both entries download it."""
        srv = s3()
        ws = workspace()
        data = os.urandom(50_000)
        sc = await run_sidecar(*offload(srv, "--s3-prefix", ""), env=s3_env())
        ws.write("a.bin", data)
        await wait_manifest(http, sc, stored("a.bin"), timeout=10)
        ws.write("copy/b.bin", data)
        doc = await wait_manifest(http, sc, stored("copy/b.bin"), timeout=10)
        assert entry(doc, "a.bin")["storage_url"] == entry(doc, "copy/b.bin")["storage_url"]
        assert [c.op for c in srv.calls if c.key and c.method in ("PUT", "POST")] == ["PutObject"]
        assert await metric(http, sc, "sidecar_upload_bytes_total") == len(data)
        status, body, _ = await download(entry(doc, "copy/b.bin")["storage_url"])
        assert (status, body) == (200, data)

    async def test_a_changed_file_is_uploaded_again_and_shared_content_kept(self, s3, run_sidecar, workspace, http):
        """When a.bin changes, its key gets the new bytes and b.bin (a's old content) moves to a key of its own."""
        srv = s3()
        ws = workspace()
        old, new = os.urandom(10_000), os.urandom(12_000)
        sc = await run_sidecar(*offload(srv, "--s3-prefix", ""), env=s3_env())
        ws.write("a.bin", old)
        await wait_manifest(http, sc, stored("a.bin"), timeout=10)
        ws.write("b.bin", old)
        await wait_manifest(http, sc, stored("b.bin"), timeout=10)
        ws.write("a.bin", new)

        def both_right(doc: dict[str, Any]) -> bool:
            a, b = entry(doc, "a.bin"), entry(doc, "b.bin")
            return bool(a and b and a["sha256"] == sha256(new) and a.get("storage_url") and b.get("storage_url"))

        doc = await wait_manifest(http, sc, both_right, timeout=15)
        for name, data in (("a.bin", new), ("b.bin", old)):
            status, body, _ = await download(entry(doc, name)["storage_url"])
            assert (name, status, sha256(body)) == (name, 200, sha256(data))
        assert srv.ops("b.bin") == ["PutObject", "GetObject"]


class TestStoreTrouble:
    async def test_store_down_then_up(self, s3, run_sidecar, workspace, http, run_ui):
        """With the store down, serving and cache-mode pushes go on (sidecar URL); once it is up, uploads land."""
        port = free_port()
        s3(port).stop()  # the bucket exists, nobody listens
        ui = await run_ui()
        ws = workspace()
        data = os.urandom(2000)
        sc = await run_sidecar(*offload(f"http://127.0.0.1:{port}", "--s3-prefix", ""), *cache_pushes(ui), env=s3_env())
        ws.write("a.txt", data)
        await sc.wait_log("upload.retry", timeout=10)
        async with http.get(sc.url("/artifacts/a.txt")) as resp:
            assert (resp.status, await resp.read()) == (200, data)
        await wait_for(ui.bodies, timeout=10)
        pushed = ui.bodies()[0]["artifact"]
        assert pushed["url"] == f"{SANDBOX}/artifacts/a.txt" and "storage_url" not in pushed
        assert "storage_url" not in entry(await wait_manifest(http, sc, lambda d: True), "a.txt")
        assert await metric(http, sc, 'sidecar_uploads_total{outcome="retry"}') >= 1
        s3(port, bucket=False)
        doc = await wait_manifest(http, sc, stored("a.txt"), timeout=20)
        status, body, _ = await download(entry(doc, "a.txt")["storage_url"])
        assert (status, body) == (200, data)
        await sc.wait_log("upload.ok")

    async def test_wrong_credentials_are_visible_and_do_not_block(self, s3, run_sidecar, workspace, http):
        """A store that refuses our key: upload.failed, the failure metric, no storage_url; serving goes on."""
        srv = s3()
        key_id, secret = srv.require_auth()
        good_ws, bad_ws = workspace("good"), workspace("bad")
        good = await run_sidecar(*offload(srv), ws=good_ws, env=s3_env(key_id, secret))
        bad = await run_sidecar(*offload(srv), ws=bad_ws, env=s3_env(key_id, "not-the-secret"))
        good_ws.write("a.txt", b"good")
        bad_ws.write("a.txt", b"bad")
        await wait_manifest(http, good, stored("a.txt"), timeout=10)  # moto does check signatures
        failed = await bad.wait_log("upload.failed", timeout=10)
        assert "SignatureDoesNotMatch" in failed["reason"] and failed["wait_s"] == 60.0
        assert await metric(http, bad, 'sidecar_uploads_total{outcome="failed"}') == 1
        assert "storage_url" not in entry(await wait_manifest(http, bad, lambda d: True), "a.txt")
        async with http.get(bad.url("/artifacts/a.txt")) as resp:
            assert (resp.status, await resp.read()) == (200, b"bad")


class TestRestart:
    async def test_sigkill_mid_multipart_then_restart(self, s3, run_sidecar, workspace, http):
        """SIGKILL during a multipart upload: after a restart the object is whole and byte-exact, the interrupted
        upload is aborted, and what was confirmed before is not uploaded again."""
        srv = s3(part_delay=0.4)
        ws = workspace()
        small, big = os.urandom(1000), os.urandom(40 * MiB)
        first = await run_sidecar(*offload(srv, "--s3-prefix", ""), ws=ws, env=s3_env())
        ws.write("small.txt", small)
        await wait_manifest(http, first, stored("small.txt"), timeout=10)
        ws.write("big.bin", big)
        await wait_for(lambda: srv.ops("big.bin").count("UploadPart") >= 2, timeout=30)
        first.signal(signal.SIGKILL)
        await first.wait_exit(5)
        interrupted = next(c.query["uploadId"][0] for c in srv.calls if c.op == "UploadPart")
        before = len(srv.calls)
        srv.part_delay = 0.0
        second = await run_sidecar(*offload(srv, "--s3-prefix", ""), ws=ws, env=s3_env())
        doc = await wait_manifest(http, second, stored("big.bin"), timeout=30)
        status, body, _ = await download(entry(doc, "big.bin")["storage_url"])
        assert (status, sha256(body)) == (200, sha256(big))
        after = srv.calls[before:]
        assert [c.query["uploadId"][0] for c in after if c.op == "AbortMultipartUpload"] == [interrupted]
        assert [c.op for c in after if c.key == "small.txt"] == []  # confirmed before: not even a HeadObject
        assert await metric(http, second, 'sidecar_uploads_total{outcome="ok"}') == 1
        assert "storage_url" in entry(doc, "small.txt")

    async def test_stored_but_unconfirmed_is_found_not_uploaded_again(self, s3, run_sidecar, workspace, http):
        """Killed after the store had an object but before uploads.json said so: a HeadObject confirms it."""
        srv = s3()
        ws = workspace()
        first = await run_sidecar(*offload(srv, "--s3-prefix", ""), ws=ws, env=s3_env())
        ws.write("a.txt", b"landed")
        await wait_manifest(http, first, stored("a.txt"), timeout=10)
        first.signal(signal.SIGKILL)
        await first.wait_exit(5)
        (ws.state / "uploads.json").unlink()
        second = await run_sidecar(*offload(srv, "--s3-prefix", ""), ws=ws, env=s3_env())
        await second.wait_log("upload.ok", found=True, timeout=10)
        assert srv.ops("a.txt") == ["PutObject", "HeadObject"]
        assert await metric(http, second, 'sidecar_uploads_total{outcome="found"}') == 1


class TestPushesAndGrace:
    async def test_cache_mode_pushes_the_storage_url_as_url(self, s3, run_sidecar, workspace, http, run_ui):
        """In cache mode a push waits for the upload, then carries storage_url as the artifact's url."""
        srv = s3()
        ui = await run_ui()
        ws = workspace()
        data = os.urandom(5000)
        sc = await run_sidecar(*offload(srv), *cache_pushes(ui), env=s3_env())
        ws.write("a.png", data)
        await wait_for(ui.bodies, timeout=10)
        art = ui.bodies()[0]["artifact"]
        assert art["url"] == art["storage_url"] and art["url"].startswith(srv.url)
        status, body, _ = await download(art["url"])
        assert (status, body) == (200, data)
        doc = await wait_manifest(http, sc, stored("a.png"))
        assert entry(doc, "a.png")["url"] == f"{SANDBOX}/artifacts/a.png"
        assert len(ui.bodies()) == 1

    async def test_a_slow_upload_does_not_keep_the_push_waiting(self, s3, run_sidecar, workspace, http, run_ui):
        """An upload still going after 10 s lets its cache-mode push go with the sidecar's URL."""
        srv = s3(part_delay=5.0)
        ui = await run_ui()
        ws = workspace()
        sc = await run_sidecar(*offload(srv), *cache_pushes(ui), env=s3_env())
        ws.write("big.bin", os.urandom(20 * MiB))
        await wait_for(ui.bodies, timeout=20)
        art = ui.bodies()[0]["artifact"]
        assert art["url"] == f"{SANDBOX}/artifacts/big.bin" and "storage_url" not in art
        await wait_manifest(http, sc, stored("big.bin"), timeout=30)
        assert len(ui.bodies()) == 1  # the UI has it already: no second push for the storage_url

    async def test_pushes_go_when_the_upload_job_cannot_start(self, s3, run_sidecar, workspace, run_ui):
        """A store client that cannot even be made (a region botocore refuses): the upload job ends at once,
        and cache-mode pushes wait no longer than for a slow upload, then go with the sidecar's URL."""
        srv = s3()
        ui = await run_ui()
        ws = workspace()
        sc = await run_sidecar(*offload(srv, "--s3-region", "bad_region!"), *cache_pushes(ui), env=s3_env())
        ws.write("a.txt", b"abc")
        await wait_for(ui.bodies, timeout=20)
        assert ui.bodies()[0]["artifact"]["url"] == f"{SANDBOX}/artifacts/a.txt"
        assert sc.proc.poll() is None

    async def test_manifest_mode_pushes_carry_storage_url(self, s3, run_sidecar, workspace, run_ui):
        """In manifest mode, a later manifest push carries the entry's storage_url."""
        srv = s3()
        ui = await run_ui()
        ws = workspace()
        await run_sidecar(*offload(srv), "--ui-push-url", ui.url, env=s3_env())
        ws.write("a.txt", b"abc")
        await wait_for(lambda: [p for p in ui.bodies() if (e := entry(p, "a.txt")) and e.get("storage_url")], 10)

    async def test_run_exits_when_uploads_are_confirmed(self, s3, run_sidecar, workspace, http):
        """`run`: once every artifact is in the store the grace period ends, though nobody downloaded anything."""
        srv = s3()
        ws = workspace()
        agent = (
            f"import os; d = {str(ws.artifacts)!r}\n"
            "for i in range(5): open(os.path.join(d, f'f{i}.bin'), 'wb').write(os.urandom(3000))"
        )
        sc = await run_sidecar(
            *offload(srv, "--s3-prefix", ""),
            "--grace-period",
            "120",
            mode="run",
            command=[sys.executable, "-c", agent],
            env=s3_env(),
        )
        assert await sc.wait_exit(60) == 0
        assert sc.events("lifecycle.delivered") and not sc.events("lifecycle.grace_expired")
        assert sorted(c.key for c in srv.calls if c.key and c.op == "PutObject") == [f"f{i}.bin" for i in range(5)]
