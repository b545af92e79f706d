"""sidecar.server, through a real daemon on 127.0.0.1: artifacts, conditional and range requests, errors,
CORS, authentication, and paths that try to leave the artifacts dir."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
from support.helpers import (
    Sidecar,
    Workspace,
    entry,
    fetch,
    free_port,
    get_manifest,
    names,
    raw_request,
    sha256,
    wait_manifest,
)
from yarl import URL

from sidecar.security import encode_path, sign

DIGITS = b"0123456789abcdef"


def raw(sc: Any, path: str) -> URL:
    """A URL whose path goes out exactly as written (already percent-encoded)."""
    return URL(sc.url(path), encoded=True)


class TestArtifactHeaders:
    async def test_headers_describe_the_published_file(self, run_sidecar, workspace, http):
        """A 200 carries every SPEC 5 artifact header; `?download=1` makes it an attachment."""
        ws = workspace()
        data = b"\x89PNG\r\n\x1a\n" + os.urandom(300)
        path = ws.write("charts/q3.png", data)
        ws.write("reports/café report.txt", b"hello")
        sc = await run_sidecar()
        status, headers, body = await fetch(http, "GET", sc.url("/artifacts/charts/q3.png"))
        assert status == 200
        assert body == data
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Length"] == str(len(data))
        assert headers["ETag"] == f'"{sha256(data)}"'
        assert headers["Last-Modified"] == formatdate(path.stat().st_mtime, usegmt=True)
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Disposition"] == "inline; filename*=UTF-8''q3.png"
        assert "Content-Security-Policy" not in headers
        report = "/artifacts/reports/caf%C3%A9%20report.txt"
        status, headers, _ = await fetch(http, "GET", raw(sc, report))
        assert status == 200
        assert headers["Content-Disposition"] == "inline; filename*=UTF-8''caf%C3%A9%20report.txt"
        status, headers, body = await fetch(http, "GET", raw(sc, report + "?download=1"))
        assert (status, body) == (200, b"hello")
        assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''caf%C3%A9%20report.txt"

    async def test_large_file_is_served_byte_exact(self, run_sidecar, workspace, http):
        """A body above the small-body threshold (sent with sendfile) arrives whole, and ranges of it are exact."""
        data = os.urandom(300_000)
        workspace().write("big.bin", data)
        sc = await run_sidecar()
        status, headers, body = await fetch(http, "GET", sc.url("/artifacts/big.bin"))
        assert (status, headers["Content-Type"], len(body)) == (200, "application/octet-stream", len(data))
        assert body == data
        status, headers, body = await fetch(
            http, "GET", sc.url("/artifacts/big.bin"), headers={"Range": "bytes=100000-250000"}
        )
        assert status == 206
        assert headers["Content-Range"] == f"bytes 100000-250000/{len(data)}"
        assert body == data[100_000:250_001]

    async def test_a_file_cut_short_while_sent_ends_the_connection(self, run_sidecar, workspace, http):
        """A published file truncated in the middle of its download: the status line and Content-Length are
        gone already, so the sidecar closes the connection; the client sees a short body at once, instead of
        waiting on a kept-alive connection for bytes that will never come."""
        size = 32 * 1024 * 1024
        path = workspace().write("shrinks.bin", os.urandom(size))
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: "shrinks.bin" in names(d))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the client reads slowly
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sc.port))
        except OSError:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /artifacts/shrinks.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            received = await reader.readexactly(256 * 1024)
            assert received.startswith(b"HTTP/1.1 200")
            os.truncate(path, 1024 * 1024)
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
                received += chunk
        finally:
            writer.close()
        assert len(received) < size
        assert sc.proc.poll() is None

    async def test_script_capable_types_are_sandboxed(self, run_sidecar, workspace, http):
        """HTML, SVG, XHTML and XML get `Content-Security-Policy: sandbox`; images and text do not."""
        ws = workspace()
        for name in ("page.html", "pic.svg", "doc.xhtml", "feed.xml", "a.png", "notes.txt"):
            ws.write(name, b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
        sc = await run_sidecar()
        for name in ("page.html", "pic.svg", "doc.xhtml", "feed.xml"):
            status, headers, _ = await fetch(http, "GET", sc.url(f"/artifacts/{name}"))
            assert status == 200
            assert headers.get("Content-Security-Policy") == "sandbox", name
        for name in ("a.png", "notes.txt"):
            status, headers, _ = await fetch(http, "GET", sc.url(f"/artifacts/{name}"))
            assert status == 200
            assert "Content-Security-Policy" not in headers, name


class TestRanges:
    async def test_single_ranges_give_206_with_content_range(self, run_sidecar, workspace, http):
        """First-last, suffix, open-ended and overlong ranges each give 206 and exactly those bytes."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        cases = {
            "bytes=2-5": (b"2345", "bytes 2-5/16"),
            "bytes=0-0": (b"0", "bytes 0-0/16"),
            "bytes=-3": (b"def", "bytes 13-15/16"),
            "bytes=10-": (b"abcdef", "bytes 10-15/16"),
            "bytes=14-100": (b"ef", "bytes 14-15/16"),
            "bytes=-100": (DIGITS, "bytes 0-15/16"),
        }
        for header, (want, content_range) in cases.items():
            status, headers, body = await fetch(http, "GET", sc.url("/artifacts/d.txt"), headers={"Range": header})
            assert (status, body, headers["Content-Range"]) == (206, want, content_range), header
            assert headers["Content-Length"] == str(len(want))

    async def test_unsatisfiable_ranges_give_416_with_the_size(self, run_sidecar, workspace, http):
        """A range starting at or past the end, or an empty suffix, is 416 with `Content-Range: bytes */size`."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        for header in ("bytes=16-", "bytes=100-200", "bytes=-0"):
            status, headers, body = await fetch(http, "GET", sc.url("/artifacts/d.txt"), headers={"Range": header})
            assert status == 416, header
            assert headers["Content-Range"] == "bytes */16"
            assert json.loads(body)["error"] == "range_not_satisfiable"

    async def test_unusable_range_headers_get_the_whole_body(self, run_sidecar, workspace, http):
        """Several ranges, other units and malformed ranges are ignored: 200 with the whole file."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        for header in ("bytes=0-1,4-5", "items=0-1", "bytes=5-2", "bytes=x-y"):
            status, headers, body = await fetch(http, "GET", sc.url("/artifacts/d.txt"), headers={"Range": header})
            assert (status, body) == (200, DIGITS), header
            assert "Content-Range" not in headers


async def digits_served(
    run_sidecar: Callable[..., Awaitable[Sidecar]], workspace: Callable[..., Workspace]
) -> tuple[str, str, float]:
    """d.txt (DIGITS) served by a fresh sidecar: its URL, strong ETag and mtime (for the validators)."""
    path = workspace().write("d.txt", DIGITS)
    sc = await run_sidecar()
    return sc.url("/artifacts/d.txt"), f'"{sha256(DIGITS)}"', path.stat().st_mtime


class TestConditionalRequests:
    async def test_if_none_match_and_if_modified_since(self, run_sidecar, workspace, http):
        """The current ETag (any form) or Last-Modified gives 304; If-None-Match decides alone."""
        url, etag, mtime = await digits_served(run_sidecar, workspace)
        last_modified = formatdate(mtime, usegmt=True)
        older = formatdate(mtime - 3600, usegmt=True)
        for value in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            status, headers, body = await fetch(http, "GET", url, headers={"If-None-Match": value})
            assert (status, body) == (304, b""), value
            assert headers["ETag"] == etag
        status, _, body = await fetch(http, "GET", url, headers={"If-None-Match": '"nope"'})
        assert (status, body) == (200, DIGITS)
        status, _, body = await fetch(http, "GET", url, headers={"If-Modified-Since": last_modified})
        assert (status, body) == (304, b"")
        status, _, body = await fetch(http, "GET", url, headers={"If-Modified-Since": older})
        assert (status, body) == (200, DIGITS)
        status, _, body = await fetch(
            http, "GET", url, headers={"If-None-Match": '"nope"', "If-Modified-Since": last_modified}
        )
        assert (status, body) == (200, DIGITS)

    async def test_if_range_sends_the_range_only_for_the_current_version(self, run_sidecar, workspace, http):
        """If-Range with the strong ETag or the exact date gives 206; a stale or weak validator gives 200 whole."""
        url, etag, mtime = await digits_served(run_sidecar, workspace)
        for validator in (etag, formatdate(mtime, usegmt=True)):
            status, _, body = await fetch(http, "GET", url, headers={"Range": "bytes=0-3", "If-Range": validator})
            assert (status, body) == (206, b"0123"), validator
        for validator in ('"0000"', f"W/{etag}", formatdate(mtime - 3600, usegmt=True)):
            status, _, body = await fetch(http, "GET", url, headers={"Range": "bytes=0-3", "If-Range": validator})
            assert (status, body) == (200, DIGITS), validator

    async def test_if_match_and_if_unmodified_since_give_412(self, run_sidecar, workspace, http):
        """A stale If-Match or If-Unmodified-Since is 412, even with a Range (a resuming client never glues
        new bytes onto an old partial file); the current ones serve the range."""
        url, etag, mtime = await digits_served(run_sidecar, workspace)
        stale = [
            {"If-Match": '"0000"'},
            {"If-Match": f"W/{etag}"},
            {"If-Match": '"0000"', "If-Unmodified-Since": formatdate(mtime + 3600, usegmt=True)},
            {"If-Unmodified-Since": formatdate(mtime - 3600, usegmt=True)},
            {"If-Unmodified-Since": formatdate(mtime - 3600, usegmt=True), "If-None-Match": etag},
        ]
        for headers in stale:
            for method in ("GET", "HEAD"):
                status, _, body = await fetch(http, method, url, headers={**headers, "Range": "bytes=4-"})
                assert status == 412, (method, headers)
                if method == "GET":
                    assert json.loads(body)["error"] == "precondition_failed"
        current = [
            {"If-Match": etag},
            {"If-Match": f'"0000", {etag}'},
            {"If-Match": "*"},
            {"If-Unmodified-Since": formatdate(mtime, usegmt=True)},
            {"If-Match": etag, "If-Unmodified-Since": formatdate(mtime - 3600, usegmt=True)},
        ]
        for headers in current:
            status, _, body = await fetch(http, "GET", url, headers={**headers, "Range": "bytes=4-"})
            assert (status, body) == (206, DIGITS[4:]), headers
        status, _, _ = await fetch(http, "GET", url, headers={"If-Match": etag, "If-None-Match": etag})
        assert status == 304

    async def test_304_carries_validators_and_cache_control_only(self, run_sidecar, workspace, http):
        """A 304 has ETag, Last-Modified, Cache-Control (and CORS), not the body's type, length or disposition."""
        ws = workspace()
        ws.write("page.html", b"<html>hi</html>")
        sc = await run_sidecar()
        url = sc.url("/artifacts/page.html")
        _, full, _ = await fetch(http, "GET", url)
        for method in ("GET", "HEAD"):
            status, headers, body = await fetch(http, method, url, headers={"If-None-Match": full["ETag"]})
            assert (status, body) == (304, b"")
            assert (headers["ETag"], headers["Last-Modified"]) == (full["ETag"], full["Last-Modified"])
            assert headers["Cache-Control"] == "no-cache"
            assert headers.get("Access-Control-Allow-Origin") == "*"
            body_headers = ("Content-Type", "Content-Disposition", "Accept-Ranges", "Content-Security-Policy")
            assert [h for h in body_headers if h in headers] == [], method
            assert headers.get("Content-Length", "0") == "0"


class TestHead:
    async def test_head_has_the_headers_and_no_body(self, run_sidecar, workspace, http):
        """HEAD answers like GET (length, ETag, type) without a body; HEAD of a missing name is 404."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        status, headers, body = await fetch(http, "HEAD", sc.url("/artifacts/d.txt"))
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == "16"
        assert headers["ETag"] == f'"{sha256(DIGITS)}"'
        assert headers["Content-Type"] == "text/plain"
        status, _, _ = await fetch(http, "HEAD", sc.url("/artifacts/missing.txt"))
        assert status == 404


class TestErrors:
    async def test_other_methods_get_405_with_allow(self, run_sidecar, workspace, http):
        """Methods a route does not take answer 405 with an `Allow` header and a JSON error."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        for method, path, allowed in (
            ("POST", "/artifacts/d.txt", {"GET", "HEAD"}),
            ("PUT", "/artifacts/d.txt", {"GET", "HEAD"}),
            ("DELETE", "/artifacts/missing.txt", {"GET", "HEAD"}),
            ("PUT", "/v1/manifest", {"GET"}),
            ("GET", "/v1/finalize", {"POST"}),
            ("DELETE", "/v1/release", {"POST"}),
        ):
            status, headers, body = await fetch(http, method, sc.url(path))
            assert status == 405, (method, path)
            assert {m.strip() for m in headers["Allow"].split(",")} == allowed, (method, path)
            assert json.loads(body)["error"] == "method_not_allowed"
        assert (await fetch(http, "GET", sc.url("/artifacts/d.txt")))[2] == DIGITS

    async def test_names_that_are_not_artifacts_get_json_404_at_once(self, run_sidecar, workspace, http):
        """Missing names, directories, temp names, dotfiles, symlinks and `/artifacts` itself: 404 JSON, no wait."""
        ws = workspace()
        ws.write("sub/inner.txt", b"inner")
        ws.write("upload.part", b"partial")
        ws.write(".env", b"SECRET=1")
        ws.write("real.txt", b"real")
        (ws.artifacts / "link.txt").symlink_to("real.txt")
        sc = await run_sidecar()
        for path in (
            "/artifacts/missing.txt",
            "/artifacts/sub",
            "/artifacts/sub/",
            "/artifacts/upload.part",
            "/artifacts/.env",
            "/artifacts/link.txt",
            "/artifacts",
            "/artifacts/",
            "/nowhere",
        ):
            started = time.monotonic()
            status, headers, body = await fetch(http, "GET", sc.url(path))
            assert status == 404, path
            assert time.monotonic() - started < 1.0, path
            assert headers["Content-Type"].startswith("application/json"), path
            assert json.loads(body)["error"] == "not_found", path


class TestCors:
    async def test_any_origin_by_default(self, run_sidecar, workspace, http):
        """By default responses allow `*` and expose headers; preflight is 204 with methods and headers."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar()
        for path in ("/artifacts/d.txt", "/v1/manifest", "/artifacts/missing.txt"):
            _, headers, _ = await fetch(http, "GET", sc.url(path), headers={"Origin": "https://ui.example"})
            assert headers["Access-Control-Allow-Origin"] == "*", path
            exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
            assert exposed >= {
                "Content-Length",
                "Content-Range",
                "Accept-Ranges",
                "ETag",
                "Last-Modified",
                "Content-Disposition",
            }
        status, headers, _ = await fetch(
            http,
            "OPTIONS",
            sc.url("/artifacts/d.txt"),
            headers={
                "Origin": "https://ui.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "range, authorization",
            },
        )
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "*"
        methods = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
        assert methods == {"GET", "HEAD", "POST", "OPTIONS"}
        allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert allowed >= {
            "authorization",
            "range",
            "if-none-match",
            "if-modified-since",
            "if-range",
            "last-event-id",
            "content-type",
        }

    async def test_listed_origins_are_echoed_and_others_get_nothing(self, run_sidecar, http):
        """With --cors-origin, a listed origin is echoed with `Vary: Origin`; an unlisted one gets no CORS header."""
        sc = await run_sidecar("--cors-origin", "https://a.example,https://b.example")
        _, headers, _ = await fetch(http, "GET", sc.url("/v1/manifest"), headers={"Origin": "https://b.example"})
        assert headers["Access-Control-Allow-Origin"] == "https://b.example"
        assert "Origin" in headers.getall("Vary")
        _, headers, _ = await fetch(http, "GET", sc.url("/v1/manifest"), headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in headers
        status, headers, _ = await fetch(
            http,
            "OPTIONS",
            sc.url("/v1/manifest"),
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert status == 204
        assert "Access-Control-Allow-Origin" not in headers


class TestAuth:
    TOKEN = "s3cret-token-0123456789"  # noqa: S105 - a test token

    async def test_missing_or_wrong_token_is_401_before_any_lookup(self, run_sidecar, workspace, http):
        """Without the right bearer token every API route is 401 with `WWW-Authenticate: Bearer`, never 404."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar("--auth-token", self.TOKEN)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {self.TOKEN}"}):
            for method, path in (
                ("GET", "/artifacts/d.txt"),
                ("GET", "/artifacts/missing.txt"),
                ("HEAD", "/artifacts/missing.txt"),
                ("GET", "/artifacts/.env"),
                ("GET", "/v1/manifest"),
                ("GET", "/v1/events"),
                ("GET", "/metrics"),
                ("POST", "/v1/finalize"),
            ):
                status, got, body = await fetch(http, method, sc.url(path), headers=headers)
                assert status == 401, (method, path, headers)
                assert got["WWW-Authenticate"] == "Bearer"
                if method != "HEAD":
                    assert json.loads(body)["error"] == "unauthorized"
        assert (await get_manifest(http, sc))["state"] == "running"  # the POST /v1/finalize above did nothing

    async def test_bearer_token_opens_the_api_with_any_scheme_case(self, run_sidecar, workspace, http):
        """`Authorization: Bearer <token>` works whatever the case of `Bearer`; health routes need nothing."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar("--auth-token", self.TOKEN)
        for scheme in ("Bearer", "bearer", "BEARER"):
            auth = {"Authorization": f"{scheme} {self.TOKEN}"}
            status, _, body = await fetch(http, "GET", sc.url("/artifacts/d.txt"), headers=auth)
            assert (status, body) == (200, DIGITS), scheme
            status, _, _ = await fetch(http, "GET", sc.url("/artifacts/missing.txt"), headers=auth)
            assert status == 404
        for path in ("/healthz", "/readyz"):
            status, _, _ = await fetch(http, "GET", sc.url(path))
            assert status == 200, path
        status, _, _ = await fetch(
            http, "OPTIONS", sc.url("/artifacts/d.txt"), headers={"Origin": "https://ui.example"}
        )
        assert status == 204

    async def test_signed_urls_open_artifacts_and_nothing_else(self, run_sidecar, workspace, http):
        """A signed `url` opens its artifact without a token; any other signature or route is 401."""
        ws = workspace()
        ws.write("charts/q 3.png", DIGITS)
        ws.write("a.txt", b"a")
        ws.write("b.txt", b"b")
        port = free_port()
        sc = await run_sidecar("--auth-token", self.TOKEN, "--public-base-url", f"http://127.0.0.1:{port}", port=port)
        doc = await wait_manifest(http, sc, lambda d: "charts/q 3.png" in names(d))
        url = entry(doc, "charts/q 3.png")["url"]
        assert url.startswith(f"http://127.0.0.1:{port}/artifacts/charts/q%203.png?expires=")
        status, _, body = await fetch(http, "GET", URL(url, encoded=True))
        assert (status, body) == (200, DIGITS)
        status, headers, _ = await fetch(http, "HEAD", URL(url, encoded=True))
        assert (status, headers["Content-Length"]) == (200, "16")

        path = encode_path("a.txt")
        future = int(time.time()) + 600
        good = sign(self.TOKEN, path, future)
        status, _, body = await fetch(http, "GET", raw(sc, f"{path}?expires={future}&signature={good}"))
        assert (status, body) == (200, b"a")
        past = int(time.time()) - 5
        for query_path, query in (
            (encode_path("b.txt"), f"expires={future}&signature={good}"),
            (path, f"expires={future + 1}&signature={good}"),
            (path, f"expires={past}&signature={sign(self.TOKEN, path, past)}"),
            (path, f"expires={future}&signature={good[:-1]}{'B' if good.endswith('A') else 'A'}"),
            (path, f"expires={future}&signature={sign('other-token', path, future)}"),
            (path, f"expires={future}"),
            ("/v1/manifest", f"expires={future}&signature={sign(self.TOKEN, '/v1/manifest', future)}"),
        ):
            status, headers, _ = await fetch(http, "GET", raw(sc, f"{query_path}?{query}"))
            assert status == 401, (query_path, query)
            assert headers["WWW-Authenticate"] == "Bearer"

    async def test_the_token_never_reaches_the_logs(self, run_sidecar, workspace, http):
        """Neither the auth token nor the UI token is written to the log, even at debug level."""
        workspace().write("d.txt", DIGITS)
        sc = await run_sidecar("--auth-token", self.TOKEN, "--ui-token", "ui-token-9876543210", "--log-level", "debug")
        auth = {"Authorization": f"Bearer {self.TOKEN}"}
        await fetch(http, "GET", sc.url("/artifacts/d.txt"), headers=auth)
        await fetch(http, "GET", sc.url("/artifacts/d.txt"))
        await fetch(http, "GET", sc.url("/v1/manifest"), headers=auth)
        await sc.stop()
        logs = sc.stderr()
        assert "lifecycle.exit" in logs
        assert self.TOKEN not in logs
        assert "ui-token-9876543210" not in logs


class TestTraversal:
    async def test_raw_paths_never_leave_the_artifacts_dir(self, run_sidecar, workspace):
        """Over a raw socket, no spelling of a path outside the artifacts dir returns the canary; none is a 5xx."""
        ws = workspace()
        canary = b"CANARY-" + secrets.token_hex(16).encode()
        outside = ws.root / "canary.txt"
        outside.write_bytes(canary)
        (ws.root / "elsewhere").mkdir()
        (ws.root / "elsewhere" / "canary.txt").write_bytes(canary)
        ws.write("ok.txt", b"inside")
        ws.write("sub/x.txt", b"x")
        (ws.artifacts / "link.txt").symlink_to("../canary.txt")
        (ws.artifacts / "linkdir").symlink_to(ws.root / "elsewhere")
        sc = await run_sidecar()

        head = b"GET /artifacts/ok.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        status, answer = await raw_request(sc.port, head)
        assert status == 200 and answer.endswith(b"inside")  # the harness itself works

        absolute = str(outside).encode()
        targets = [
            b"/artifacts/../canary.txt",
            b"/artifacts/sub/../../canary.txt",
            b"/artifacts/%2e%2e/canary.txt",
            b"/artifacts/%2E%2E/canary.txt",
            b"/artifacts/.%2e/canary.txt",
            b"/artifacts/..%2fcanary.txt",
            b"/artifacts/..%2Fcanary.txt",
            b"/artifacts/%2e%2e%2fcanary.txt",
            b"/artifacts/..%5ccanary.txt",
            b"/artifacts/..\\canary.txt",
            b"/artifacts/%c0%ae%c0%ae/canary.txt",
            b"/artifacts/%c0%ae%c0%ae%c0%afcanary.txt",
            b"/artifacts/..%c0%afcanary.txt",
            b"/artifacts/%e0%80%ae%e0%80%ae/canary.txt",
            b"/artifacts/%252e%252e/canary.txt",
            b"/artifacts/..%00/canary.txt",
            b"/artifacts/%00../canary.txt",
            b"/artifacts/..;/canary.txt",
            b"/artifacts/%u002e%u002e/canary.txt",
            b"/artifacts/%EF%BC%8E%EF%BC%8E/canary.txt",
            b"/artifacts/..%E2%88%95canary.txt",
            b"/artifacts/" + absolute,
            b"/artifacts/%2F" + absolute.replace(b"/", b"%2F"),
            b"/artifacts/link.txt",
            b"/artifacts/linkdir/canary.txt",
            b"/../canary.txt",
            b"/artifacts/./../canary.txt",
            b"http://127.0.0.1/artifacts/../canary.txt",
        ]
        failures = []
        for target in targets:
            head = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            status, answer = await raw_request(sc.port, head)
            if canary in answer or status not in (400, 404):
                failures.append((target, status, answer[:200]))
        assert failures == []
        assert sc.proc.poll() is None


class TestSettling:
    async def test_settling_file_waits_then_is_served_whole(self, run_sidecar, workspace, http, write_soon):
        """A GET for a file still being written waits until it is published, then gets every byte of it."""
        ws = workspace()
        sc = await run_sidecar("--settle-ms", "300")
        chunks = [os.urandom(4096) for _ in range(6)]
        path = ws.write("growing.bin", chunks[0])
        writer = write_soon(path, *chunks[1:], delay=0.05, every=0.05)
        started = time.monotonic()
        status, headers, body = await fetch(http, "GET", sc.url("/artifacts/growing.bin"))
        await writer
        assert status == 200
        assert body == b"".join(chunks)
        assert headers["ETag"] == f'"{sha256(body)}"'
        assert time.monotonic() - started < 5.0
        assert [e["sha256"] for e in sc.events("artifact.published", name="growing.bin")] == [sha256(body)]

    async def test_a_rewritten_file_is_served_with_its_new_content(self, run_sidecar, workspace, http):
        """After a file changes, a GET never gets the old bytes: it waits for the republication."""
        ws = workspace()
        ws.write("v.txt", b"version one")
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: "v.txt" in names(d))
        assert (await fetch(http, "GET", sc.url("/artifacts/v.txt")))[2] == b"version one"
        ws.write("v.txt", b"version two, longer")
        status, headers, body = await fetch(http, "GET", sc.url("/artifacts/v.txt"))
        assert (status, body) == (200, b"version two, longer")
        assert headers["ETag"] == f'"{sha256(body)}"'

    async def test_a_replaced_artifacts_dir_is_served_from_the_new_one(self, run_sidecar, workspace, http):
        """The server keeps the artifacts dir open between requests; once the agent replaces the folder
        (moved away, made again), files published in the new one are served, not looked for in the old."""
        ws = workspace()
        ws.write("a.txt", b"in the first folder")
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        assert (await fetch(http, "GET", sc.url("/artifacts/a.txt")))[2] == b"in the first folder"
        ws.artifacts.rename(ws.root / "moved-away")
        ws.artifacts.mkdir()
        ws.write("a.txt", b"in the second folder, longer")
        ws.write("b.txt", b"only in the second")

        def both_new(d: dict[str, Any]) -> bool:
            sizes = {a["name"]: a["size_bytes"] for a in d["artifacts"]}
            return "b.txt" in sizes and sizes.get("a.txt") == 28

        await wait_manifest(http, sc, both_new, timeout=20)
        assert (await fetch(http, "GET", sc.url("/artifacts/b.txt")))[:3:2] == (200, b"only in the second")
        status, _, body = await fetch(http, "GET", sc.url("/artifacts/a.txt"))
        assert (status, body) == (200, b"in the second folder, longer")


class TestManifestAndEvents:
    async def test_manifest_etag_and_long_poll(self, run_sidecar, workspace, http):
        """ETag is the version (304); `since`+`wait` answers on change; a non-numeric one is 400."""
        ws = workspace()
        sc = await run_sidecar()
        async with http.get(sc.url("/v1/manifest")) as resp:
            doc = await resp.json()
            assert resp.headers["ETag"] == f'"{doc["version"]}"'
        status, _, _ = await fetch(
            http, "GET", sc.url("/v1/manifest"), headers={"If-None-Match": f'"{doc["version"]}"'}
        )
        assert status == 304
        poll = asyncio.create_task(get_manifest(http, sc, f"?since={doc['version']}&wait=10"))
        await asyncio.sleep(0.2)
        assert not poll.done()
        ws.write("new.txt", b"new")
        started = time.monotonic()
        newer = await asyncio.wait_for(poll, 5)
        assert time.monotonic() - started < 3.0
        assert newer["version"] == doc["version"] + 1
        assert names(newer) == ["new.txt"]
        started = time.monotonic()
        same = await get_manifest(http, sc, f"?since={newer['version']}&wait=0.3")
        assert 0.25 < time.monotonic() - started < 3.0
        assert same["version"] == newer["version"]
        for query in ("?since=abc&wait=1", "?since=1&wait=soon", "?since=1&wait=nan"):
            status, _, body = await fetch(http, "GET", sc.url("/v1/manifest" + query))
            assert status == 400, query
            assert json.loads(body)["error"] == "bad_request"

    async def test_events_start_with_the_manifest_then_stream_changes(self, run_sidecar, workspace, http):
        """/v1/events sends `manifest` first (id = version), then `artifacts` with the upserted entry."""
        ws = workspace()
        sc = await run_sidecar()
        start = (await get_manifest(http, sc))["version"]
        async with http.get(sc.url("/v1/events")) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(read_event(resp), 5)
            assert (first["event"], first["id"]) == ("manifest", str(start))
            assert json.loads(first["data"])["version"] == start
            ws.write("e.txt", b"event")
            nxt = await asyncio.wait_for(read_event(resp), 5)
        assert (nxt["event"], nxt["id"]) == ("artifacts", str(start + 1))
        doc = json.loads(nxt["data"])
        assert doc["version"] == start + 1
        assert [e["name"] for e in doc["upserted"]] == ["e.txt"]
        assert doc["upserted"][0]["sha256"] == sha256(b"event")
        assert doc["removed"] == []

    async def test_events_resume_after_last_event_id(self, run_sidecar, workspace, http):
        """`Last-Event-ID: V` replays the changes after V (no `manifest` first); an unknown id gets the manifest."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("one.txt", b"1")
        first = await wait_manifest(http, sc, lambda d: "one.txt" in names(d))
        ws.write("two.txt", b"2")
        await wait_manifest(http, sc, lambda d: "two.txt" in names(d))
        (ws.artifacts / "one.txt").unlink()
        last = await wait_manifest(http, sc, lambda d: "one.txt" not in names(d))
        assert last["version"] == first["version"] + 2
        async with http.get(sc.url("/v1/events"), headers={"Last-Event-ID": str(first["version"])}) as resp:
            events = [await asyncio.wait_for(read_event(resp), 5) for _ in range(2)]
        assert [(e["event"], e["id"]) for e in events] == [
            ("artifacts", str(first["version"] + 1)),
            ("artifacts", str(first["version"] + 2)),
        ]
        assert [u["name"] for u in json.loads(events[0]["data"])["upserted"]] == ["two.txt"]
        assert json.loads(events[1]["data"])["removed"] == ["one.txt"]
        async with http.get(sc.url("/v1/events"), headers={"Last-Event-ID": "not-a-version"}) as resp:
            event = await asyncio.wait_for(read_event(resp), 5)
        assert (event["event"], event["id"]) == ("manifest", str(last["version"]))

    async def test_events_client_gone_is_not_an_error(self, run_sidecar, workspace, http):
        """A subscriber that vanishes (reset connection) ends its stream quietly: no traceback, no error log."""
        ws = workspace()
        sc = await run_sidecar()
        for i in range(3):
            with socket.create_connection(("127.0.0.1", sc.port)) as s:
                s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while b"event: manifest" not in got:
                    chunk = s.recv(65536)
                    assert chunk, got
                    got += chunk
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            ws.write(f"after-{i}.txt", b"x" * 100)
            await wait_manifest(http, sc, lambda d, i=i: f"after-{i}.txt" in names(d))
        await asyncio.sleep(0.5)
        assert "Traceback" not in sc.stderr()
        assert not [e for e in sc.logs() if e.get("level") in ("error", "critical")]


class TestHealthAndMetrics:
    async def test_health_and_metrics(self, run_sidecar, workspace, http):
        """/healthz is `{"status": "ok"}`; /metrics is Prometheus text with the SPEC 10 series, counting real work."""
        ws = workspace()
        ws.write("a.txt", b"a" * 10)
        ws.write("b.txt", b"b" * 20)
        sc = await run_sidecar()
        async with http.get(sc.url("/healthz")) as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 2)
        assert (await fetch(http, "GET", sc.url("/artifacts/b.txt")))[2] == b"b" * 20
        status, headers, body = await fetch(http, "GET", sc.url("/metrics"))
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        for family in (
            "sidecar_artifacts_published_total",
            "sidecar_datauri_materialized_total",
            "sidecar_datauri_rejected_total",
            "sidecar_push_attempts_total",
            "sidecar_http_response_bytes_total",
            "sidecar_publish_latency_seconds",
        ):
            assert f"# TYPE {family} " in text, family
        assert samples["sidecar_artifacts_published_total"] == 2
        assert samples["sidecar_http_response_bytes_total"] >= 20
        assert samples["sidecar_publish_latency_seconds_count"] == 2


class TestHostileInput:
    async def test_oversized_headers_are_refused_and_serving_goes_on(self, run_sidecar, workspace):
        """A request with a 64 KiB header is refused with a 4xx; the next request is served as usual."""
        workspace().write("ok.txt", b"inside")
        sc = await run_sidecar()
        head = b"GET /artifacts/ok.txt HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
        status, _ = await raw_request(sc.port, head)
        assert 400 <= status < 500
        head = b"GET /artifacts/ok.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, answer = await raw_request(sc.port, head)
        assert (status, answer.endswith(b"inside")) == (200, True)


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The next SSE event (comment lines skipped) as {"event", "id", "data"}."""
    event: dict[str, str] = {}
    while True:
        line = (await resp.content.readline()).decode().rstrip("\r\n")
        if not line:
            if "data" in event:
                return event
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[key] = event[key] + "\n" + value if key == "data" and key in event else value
