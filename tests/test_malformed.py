"""Malformed numbers from clients and from the UI, through a real daemon: a 4xx or a default, never a 500
or a dead task (SPEC 9)."""

from __future__ import annotations

import asyncio
import json

from support.helpers import names, raw_request, sha256, wait_for

DIGITS = b"0123456789abcdef"
TOKEN = "malformed-test-token"  # noqa: S105 - a test token


def get(target: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + extra + b"\r\n"


async def first_event(port: int, *headers: bytes) -> tuple[int, bytes]:
    """Open /v1/events, read until the first event is complete, and close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get(b"/v1/events", *headers))
        await writer.drain()
        data = b""
        while b"\nevent: " not in data or b"\ndata: " not in data.split(b"\nevent: ", 1)[1]:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


class TestMalformedNumbersOverHttp:
    async def test_numbers_that_are_not_ascii_digits_are_never_a_500(self, run_sidecar, workspace):
        """`?expires=²`, `Range: bytes=²-`, a Unicode `since`/`wait`: 401, 200 whole and 400, not 500."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar("--auth-token", TOKEN)
        auth = b"Authorization: Bearer " + TOKEN.encode()
        cases = [
            (get(b"/artifacts/d.txt?expires=%C2%B2&signature=x"), 401),
            (get(b"/artifacts/d.txt?expires=%D9%A3&signature=x"), 401),
            (get(b"/artifacts/d.txt?expires=" + b"9" * 5000 + b"&signature=x"), 401),
            (get(b"/artifacts/d.txt", auth, "Range: bytes=²-".encode()), 200),
            (get(b"/artifacts/d.txt", auth, "Range: bytes=0-²".encode()), 200),
            (get(b"/artifacts/d.txt", auth, "Range: bytes=\u0661-".encode()), 200),
            (get(b"/artifacts/d.txt", auth, b"Range: bytes=" + b"9" * 5000 + b"-"), 200),
            (get(b"/v1/manifest?since=%C2%B2&wait=1", auth), 400),
            (get(b"/v1/manifest?since=1&wait=%D9%A3", auth), 400),
            (get(b"/v1/manifest?since=1_0&wait=0", auth), 400),
            (get(b"/v1/manifest?since=" + b"9" * 5000 + b"&wait=0", auth), 400),
            (get(b"/v1/manifest?since=1&wait=1e3", auth), 400),
        ]
        for head, want in cases:
            status, answer = await raw_request(sc.port, head)
            assert status == want, (head[:120], answer[:300])
            if status == 200:
                assert answer.endswith(b"\r\n\r\n" + DIGITS)
        assert not sc.events("http.error")

    async def test_malformed_last_event_id_gets_a_fresh_manifest(self, run_sidecar, workspace):
        """`Last-Event-ID: ²` or 5,000 digits starts the stream with a manifest event instead of killing it."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        for value in ("²".encode(), "٣".encode(), b"9" * 5000, b"-" + b"9" * 5000, b"1_0"):
            status, data = await first_event(sc.port, b"Last-Event-ID: " + value)
            assert status == 200, data[:300]
            assert b"event: manifest" in data, (value[:20], data[:300])
        assert not sc.events("http.error")


class TestMalformedRetryAfter:
    async def test_a_ui_answering_retry_after_superscript_does_not_kill_the_pusher(
        self, run_ui, run_sidecar, workspace, http
    ):
        """After 503s with `Retry-After: ²` the pusher retries with its own backoff, pushes later versions,
        and pushes the final manifest."""
        ui = await run_ui(503, 503, retry_after="²")
        ws = workspace()
        sc = await run_sidecar("--ui-push-url", ui.url)
        ws.write("a.txt", b"a")
        await wait_for(lambda: [p for p in ui.acked() if "a.txt" in names(p.body)], 10)
        assert [p.status for p in ui.requests[:2]] == [503, 503]
        ws.write("b.txt", b"b")
        await wait_for(lambda: [p for p in ui.acked() if "b.txt" in names(p.body)], 10)
        async with http.post(sc.url("/v1/finalize")) as resp:
            assert resp.status == 202
        final = await wait_for(lambda: [p for p in ui.acked() if p.body["state"] == "final"], 10)
        assert sorted(names(final[-1].body)) == ["a.txt", "b.txt"]
        assert {a["sha256"] for a in final[-1].body["artifacts"]} == {sha256(b"a"), sha256(b"b")}
        assert not sc.events("task.died")
        assert json.dumps(sc.events("push.retry")).count("HTTP 503") == 2
