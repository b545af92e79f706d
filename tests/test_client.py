"""sidecar.client: `janus_event` (pure) and `watch` against a real sidecar, directly and through a proxy
that drops the event stream or refuses it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.helpers import Sidecar, names, sha256, wait_for, wait_manifest

from sidecar.client import janus_artifacts, janus_event, watch

JANUS_FIELDS = {"id", "type", "mime_type", "display_name", "size_bytes", "sha256", "created_at", "ttl_seconds", "url"}


def entry_doc(name: str, data: bytes, **over: Any) -> dict[str, Any]:
    doc = {
        "id": "artf_" + sha256(data)[:16], "type": "image", "display_name": name.rsplit("/", 1)[-1], "name": name,
        "path": "/artifacts/" + name, "url": "https://sb.example/artifacts/" + name, "mime_type": "image/png",
        "size_bytes": len(data), "sha256": sha256(data), "created_at": "2026-11-22T10:00:00.123Z",
        "modified_at": "2026-11-22T10:00:00.000Z", "ttl_seconds": 3600, "source": "file", "origin": None,
    }  # fmt: skip
    doc.update(over)
    return doc


class TestJanusEvent:
    def test_the_chunk_carries_items_with_exactly_the_janus_fields(self):
        """`janus_event` is the baseline's chunk; each item has Janus's Artifact fields and no others."""
        m = {"version": 3, "state": "running", "artifacts": [entry_doc("a.png", b"a"), entry_doc("b.csv", b"b")]}
        chunk = janus_event(m)
        janus = chunk["choices"][0]["delta"]["janus"]
        assert janus["event"] == "artifacts"
        items = janus["payload"]["items"]
        assert [set(i) for i in items] == [JANUS_FIELDS, JANUS_FIELDS]
        assert items[0] == {k: v for k, v in m["artifacts"][0].items() if k in JANUS_FIELDS}
        json.dumps(chunk)  # plain JSON

    def test_mime_type_is_always_present_and_type_is_a_janus_type(self):
        """A missing mime_type (it crashes Janus's message view) becomes application/octet-stream; an
        unknown type becomes `file`; a missing sha256 is left out, never null."""
        m = {"artifacts": [entry_doc("x", b"x", mime_type=None, type="video", sha256=None)]}
        (item,) = janus_artifacts(m)
        assert (item["mime_type"], item["type"]) == ("application/octet-stream", "file")
        assert "sha256" not in item

    def test_one_item_per_id_and_urls_from_the_base_url(self):
        """The same bytes under two names are one Janus artifact; without a `url` the item's url is
        base_url + path, and without either the entry is left out."""
        m = {
            "artifacts": [
                entry_doc("a.png", b"same", url=None),
                entry_doc("copy/a.png", b"same"),
                entry_doc("b.png", b"other", url=None),
            ]
        }
        items = janus_artifacts(m, base_url="https://sb.example:5173/")
        assert [(i["display_name"], i["url"]) for i in items] == [
            ("a.png", "https://sb.example:5173/artifacts/a.png"),
            ("b.png", "https://sb.example:5173/artifacts/b.png"),
        ]
        assert [i["display_name"] for i in janus_artifacts(m)] == ["a.png"]  # copy/a.png: the same id

    def test_skip_leaves_out_the_ids_already_sent(self):
        """`skip` makes the next chunk carry only what is new."""
        m = {"artifacts": [entry_doc("a.png", b"a"), entry_doc("b.png", b"b")]}
        items = janus_event(m, skip={"artf_" + sha256(b"a")[:16]})["choices"][0]["delta"]["janus"]["payload"]["items"]
        assert [i["display_name"] for i in items] == ["b.png"]


async def collect(base: str, token: str | None = None, **kw: Any) -> list[dict[str, Any]]:
    return [m async for m in watch(base, token, retry_for=20, **kw)]


def final_of(sc: Sidecar) -> dict[str, Any]:
    """The final manifest as the sidecar persisted it (it has exited)."""
    doc = json.loads((sc.workspace.state / "manifest.json").read_bytes())
    assert doc["state"] == "final"
    return doc


class TestWatch:
    @pytest.mark.parametrize("events", [True, False], ids=["events", "long-polls"])
    async def test_follows_the_manifest_to_the_final_one(self, run_sidecar, workspace, http, events):
        """Manifests come in version order, each a whole manifest, the last one `final` with everything."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar("--auth-token", "s3cret", "--public-base-url", "http://127.0.0.1:1")
        seen = asyncio.create_task(collect(sc.base, "s3cret", events=events, wait=5))
        await wait_for(lambda: sc.events("http.listening"))
        await asyncio.sleep(0.3)
        ws.write("dir/b.txt", b"bb")
        ws.write("c.txt", b"ccc")
        await asyncio.sleep(0.3)
        async with http.post(sc.url("/v1/finalize"), headers=sc.auth_headers()) as resp:
            assert resp.status == 202
        got = await asyncio.wait_for(seen, 20)
        versions = [m["version"] for m in got]
        assert versions == sorted(set(versions))
        last = got[-1]
        assert last["state"] == "final"
        assert names(last) == ["a.txt", "c.txt", "dir/b.txt"]
        assert last["version"] == final_of(sc)["version"]
        assert all(a["url"].startswith("http://127.0.0.1:1/artifacts/") for a in last["artifacts"])

    async def test_a_refused_token_raises(self, run_sidecar):
        """A wrong token is an error at once, not something to retry."""
        sc = await run_sidecar("--auth-token", "s3cret")
        with pytest.raises(PermissionError):
            await asyncio.wait_for(collect(sc.base, "wrong"), 10)


class Proxy:
    """Between the client and the sidecar: `/v1/events` refused (404), or ended after its first event."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream = upstream
        self.mode = mode
        self.event_requests: list[dict[str, str]] = []
        self.first_events: list[bytes] = []

    async def events(self, request: web.Request) -> web.StreamResponse:
        self.event_requests.append(dict(request.headers))
        if self.mode == "refuse":
            return web.json_response({"error": "not_found"}, status=404)
        headers = {k: v for k, v in request.headers.items() if k in ("Last-Event-ID", "Authorization")}
        cut = len(self.event_requests) == 1
        async with aiohttp.ClientSession() as client, client.get(self.upstream + "/v1/events", headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
            await resp.prepare(request)
            buf = b""
            async for chunk in up.content.iter_any():
                buf += chunk
                first, end, _ = buf.replace(b"\r\n", b"\n").partition(b"\n\n")
                if end and len(self.first_events) < len(self.event_requests):
                    self.first_events.append(first)
                if end and cut:
                    await resp.write(first + b"\n\n")
                    await resp.write_eof()  # the stream ends before `final` (a proxy's idle timeout)
                    return resp
                if not cut:  # the stream to cut is held until its first event is whole: it may come in parts
                    await resp.write(chunk)
        return resp

    async def manifest(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as client, client.get(self.upstream + request.path_qs) as up:
            return web.Response(status=up.status, body=await up.read(), content_type="application/json")


@pytest.fixture
def run_proxy(aiohttp_server):
    async def start(upstream: str, mode: str) -> tuple[Proxy, str]:
        proxy = Proxy(upstream, mode)
        app = web.Application()
        app.router.add_get("/v1/events", proxy.events)
        app.router.add_get("/v1/manifest", proxy.manifest)
        server = await aiohttp_server(app, host="127.0.0.1")
        return proxy, str(server.make_url("")).rstrip("/")

    return start


class TestReconnects:
    async def test_an_ended_stream_resumes_with_last_event_id(self, run_sidecar, workspace, http, run_proxy):
        """A stream that ends before `final`: the client reconnects with `Last-Event-ID` and gets only the
        changes after it."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar()
        first = await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        proxy, base = await run_proxy(sc.base, "cut")
        seen = asyncio.create_task(collect(base))
        await wait_for(lambda: len(proxy.event_requests) >= 2, timeout=10)
        ws.write("b.txt", b"b")
        await wait_manifest(http, sc, lambda d: "b.txt" in names(d))
        async with http.post(sc.url("/v1/finalize")) as resp:
            assert resp.status == 202
        got = await asyncio.wait_for(seen, 20)
        assert proxy.event_requests[1].get("Last-Event-ID") == str(first["version"])
        assert b"event: manifest" in proxy.first_events[0]
        assert b"event: manifest" not in proxy.first_events[1]  # resumed: deltas only
        assert (got[-1]["state"], names(got[-1])) == ("final", ["a.txt", "b.txt"])
        assert got[-1]["version"] == final_of(sc)["version"]

    async def test_no_event_stream_falls_back_to_long_polls(self, run_sidecar, workspace, http, run_proxy):
        """A 404 on /v1/events (an older sidecar, a proxy) makes the client long-poll /v1/manifest instead."""
        ws = workspace()
        ws.write("a.txt", b"a")
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        proxy, base = await run_proxy(sc.base, "refuse")
        seen = asyncio.create_task(collect(base, wait=5))
        await wait_for(lambda: proxy.event_requests, timeout=10)
        await asyncio.sleep(0.2)
        async with http.post(sc.url("/v1/finalize")) as resp:
            assert resp.status == 202
        got = await asyncio.wait_for(seen, 20)
        assert len(proxy.event_requests) == 1
        assert (got[-1]["state"], names(got[-1])) == ("final", ["a.txt"])
        with contextlib.suppress(Exception):
            seen.cancel()
