"""HTTP (SPEC 5, 9): artifacts served from the in-memory manifest, the manifest itself, events, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import stat
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import quote

from aiohttp import hdrs, web

from sidecar.archive import add_archive_route
from sidecar.beneath import Root, open_regular_beneath
from sidecar.compat import add_skyvern_routes
from sidecar.conditional import Validators, decide, weak_match
from sidecar.config import Settings
from sidecar.logs import get_logger
from sidecar.manifest import Entry, Identity, ManifestStore
from sidecar.media import needs_sandbox
from sidecar.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sidecar.metrics import Metrics
from sidecar.numbers import ascii_decimal, ascii_int
from sidecar.security import bearer_ok, is_loopback_address, name_from_raw_path, signature_ok
from sidecar.streams import SLICE, SSE_HEADERS, BodyWriter, Frames, Hub, Trimmer, Writers, stream_events

__all__ = ("API_KEY", "Api", "Hooks", "build_app")

log = get_logger("sidecar.http")

SETTLE_WAIT_S = 5.0  # SPEC 5: a settling name waits this long before 404
MAX_LONG_POLL_S = 60.0
SMALL_BODY = 64 * 1024  # below this one pread + one write beats the sendfile machinery
PREFLIGHT_HEADERS = (
    "Authorization, Range, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since, If-Range, "
    "Last-Event-ID, Content-Type"
)
EXPOSE_HEADERS = "Content-Length, Content-Range, Accept-Ranges, ETag, Last-Modified, Content-Disposition"
OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
_STATIC_HEADERS = (("Accept-Ranges", "bytes"), ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"))
_SANDBOX = (("Content-Security-Policy", "sandbox"),)
_NOT_MODIFIED_HEADERS = frozenset({"ETag", "Last-Modified", "Cache-Control"})  # as _response_headers spells them
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    416: "range_not_satisfiable",
    412: "precondition_failed",
    431: "headers_too_large",
    503: "not_ready",
}


@dataclasses.dataclass
class Hooks:
    """What the server asks of the lifecycle: readiness, finalize/release, download accounting."""

    ready: Callable[[], bool]
    finalize: Callable[[], Awaitable[str]]
    release: Callable[[], Awaitable[None]]
    nudge: Callable[[str], None]
    served: Callable[[Entry, int, int], None]  # a body [start, end) went out in full


@functools.lru_cache(maxsize=4096)
def _response_headers(e: Entry) -> tuple[tuple[str, str], ...]:
    """An artifact's response headers, made at the first request for this publication and kept for the last
    4,096 served (not held by every entry: with 10,000 artifacts that would be ~5 MB)."""
    basename = e.name.rsplit("/", 1)[-1]
    return (
        ("Content-Type", e.mime_type),
        ("ETag", f'"{e.sha256}"'),
        ("Last-Modified", formatdate(e.mtime, usegmt=True)),
        *_STATIC_HEADERS,
        ("Content-Disposition", f"inline; filename*=UTF-8''{quote(basename, safe='')}"),
        *(_SANDBOX if needs_sandbox(e.mime_type) else ()),
    )


def _error(status: int, detail: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    code = _ERROR_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
    body = json.dumps({"error": code, "detail": detail or HTTPStatus(status).phrase}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def _sendfile(request: web.Request, fd: int, offset: int, count: int) -> None:
    """The body straight from the page cache. One `os.sendfile` first: when nothing is queued in the
    transport (the headers went out), a range of a few MB usually fits the socket buffer, and this skips
    `loop.sendfile`'s pause, waiter and writer callbacks. The rest, if any, goes through `loop.sendfile`.
    A file that got shorter since publication cuts the connection: the status line is gone already."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    if transport.get_write_buffer_size() == 0:
        with contextlib.suppress(BlockingIOError):
            sent = os.sendfile(transport.get_extra_info("socket").fileno(), fd, offset, count)
            if sent == 0:
                _cut(transport)
            offset, count = offset + sent, count - sent
    if count > 0:
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            if await asyncio.get_running_loop().sendfile(transport, f, offset, count) < count:
                _cut(transport)


def _cut(transport: asyncio.Transport) -> NoReturn:
    transport.abort()
    raise ConnectionResetError("the file got shorter while it was sent")


class Api:
    def __init__(self, settings: Settings, store: ManifestStore, metrics: Metrics, hooks: Hooks) -> None:
        self.settings = settings
        self.root = settings.artifacts_dir.absolute()
        self.root_dir = Root(self.root)  # kept open: names are resolved beneath it at every request
        self.store = store
        self.metrics = metrics
        self.hooks = hooks
        self.token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self.any_origin = "*" in settings.cors_origins
        self.origins = frozenset(settings.cors_origins)
        self.closing = asyncio.Event()
        self.hub = Hub(store)
        self.frames = Frames(store)
        self.trimmer = Trimmer()
        self.writers = Writers(settings.write_timeout)  # big bodies take turns, and stalled readers are cut
        # Another route's spelling of an artifact -> the `/artifacts/<name>` path its signature covers (compat.py).
        self.signed_path: Callable[[web.Request], str | None] = lambda request: None

    def close_streams(self) -> None:
        """At exit: end event streams and long polls now instead of waiting out the drain."""
        self.closing.set()
        self.hub.close()
        self.trimmer.close()

    async def _change_or_closing(self, timeout: float) -> None:
        waits = [asyncio.ensure_future(self.store.wait_change(timeout)), asyncio.ensure_future(self.closing.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # ---- middlewares and signals -------------------------------------------------------

    @web.middleware
    async def edge(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """One middleware (each layer costs a coroutine per request): preflight, auth, errors as JSON."""
        try:
            if request.method == hdrs.METH_OPTIONS:
                return self._preflight(request)
            if not self._authorized(request):
                return _error(401, "a bearer token or a valid signed URL is needed", {hdrs.WWW_AUTHENTICATE: "Bearer"})
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            keep = {k: v for k, v in e.headers.items() if k in (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE, hdrs.CONTENT_RANGE)}
            return _error(e.status, e.reason, keep)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("http.error", path=request.path)
            return _error(500, "internal error")

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None or request.path in OPEN_ROUTES:
            return True
        if bearer_ok(request.headers.get(hdrs.AUTHORIZATION), self.token):
            return True
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD) and request.raw_path.startswith("/artifacts/"):
            path = request.raw_path.split("?", 1)[0]
            q = request.query
            return signature_ok(self.token, path, q.get("expires"), q.get("signature"))
        signed = self.signed_path(request) if request.method in (hdrs.METH_GET, hdrs.METH_HEAD) else None
        if signed is not None:
            q = request.query
            return signature_ok(self.token, signed, q.get("expires"), q.get("signature"))
        return False

    def _preflight(self, request: web.Request) -> web.Response:
        resp = web.Response(status=204, headers={hdrs.ALLOW: "GET, HEAD, POST, OPTIONS"})
        if self._allowed_origin(request.headers.get(hdrs.ORIGIN)) is not None:
            resp.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "GET, HEAD, POST, OPTIONS"
            resp.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = PREFLIGHT_HEADERS
            resp.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "600"
        return resp

    def _allowed_origin(self, origin: str | None) -> str | None:
        if self.any_origin:
            return "*"
        if origin and origin in self.origins:
            return origin
        return None

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """CORS on every response, streamed ones included (SPEC 5)."""
        allowed = self._allowed_origin(request.headers.get(hdrs.ORIGIN))
        if not self.any_origin:
            response.headers.add(hdrs.VARY, "Origin")
        if allowed is not None:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS

    # ---- artifacts -------------------------------------------------------------------

    def _may_be_published(self, name: str) -> bool:
        """On disk as a regular file under plain directories: worth waiting for while it settles."""
        parts = name.split("/")
        path = self.root
        try:
            for part in parts[:-1]:
                path = path / part
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    return False
            return stat.S_ISREG(os.lstat(path / parts[-1]).st_mode)
        except OSError:
            return False

    def _open(self, entry: Entry) -> int | None:
        """The published inode itself, or None when the file changed since publication. Resolved beneath
        the root without following a symlink anywhere, and checked before it is opened for reading: a
        FIFO or a device swapped in for a published file is never read (sidecar.beneath, SPEC 9)."""

        def published(st: os.stat_result) -> bool:
            return Identity.of(st) == entry.identity

        for _ in range(2):
            try:
                fd, _ = open_regular_beneath(self.root_dir.fd(), entry.name, published)
            except OSError:
                if self.root_dir.moved():  # the folder was replaced since it was opened: look in the new one
                    continue
                return None
            return fd
        return None

    async def artifact(self, request: web.Request) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        name = name_from_raw_path(request.raw_path)
        if name is None:
            raise web.HTTPNotFound(reason="no such artifact")
        return await self.serve(request, name)

    async def serve(self, request: web.Request, name: str) -> web.StreamResponse:
        """The artifact `name` (already checked publishable), for `/artifacts/*` and the Skyvern routes."""
        found = await self.open_published(name, may_come=True)
        if found is None:
            raise web.HTTPNotFound(reason="no such artifact")
        entry, fd = found
        try:
            return await self._send(request, entry, fd)
        finally:
            os.close(fd)

    async def open_published(self, name: str, *, may_come: bool) -> tuple[Entry, int] | None:
        """The name's publication and its verified inode (the caller closes it). A name rewritten since
        its publication waits up to SETTLE_WAIT_S for the next one (SPEC 5); with `may_come`, so does a
        name not published yet whose file may still be, while it may. None when none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_WAIT_S
        while True:
            entry = self.store.entries.get(name)
            if entry is None and not may_come:
                return None
            fd = self._open(entry) if entry is not None else None
            if fd is not None and entry is not None:
                return entry, fd
            left = deadline - loop.time()
            if left <= 0 or (may_come and not self._may_be_published(name)):
                return None
            self.hooks.nudge(name)
            await self.store.wait_change(min(left, 0.25))

    async def _send(self, request: web.Request, entry: Entry, fd: int) -> web.StreamResponse:
        size = entry.size_bytes
        # A plain list: web.Response makes the one CIMultiDict of it (a dict here would be copied again).
        headers = list(_response_headers(entry))
        if "?" in request.raw_path and request.query.get("download") in ("1", "true", "yes"):
            headers = [
                (k, "attachment" + v[len("inline") :] if k == hdrs.CONTENT_DISPOSITION else v) for k, v in headers
            ]
        d = decide(request.method, request.headers, Validators(f'"{entry.sha256}"', entry.mtime, size))
        if d.status == 304:  # the validators and Cache-Control only, not the body's headers (SPEC 5)
            return web.Response(status=304, headers=[(k, v) for k, v in headers if k in _NOT_MODIFIED_HEADERS])
        if d.status == 412:
            return _error(412, "a precondition (If-Match or If-Unmodified-Since) does not hold")
        if d.status == 416:
            return _error(416, "range not satisfiable", {hdrs.CONTENT_RANGE: f"bytes */{size}"})
        start, end, status = d.start, d.end, d.status
        if status == 206:
            headers.append((hdrs.CONTENT_RANGE, f"bytes {start}-{end - 1}/{size}"))
            log.debug("http.range", name=entry.name, start=start, end=end - 1, size=size)
        count = end - start
        headers.append((hdrs.CONTENT_LENGTH, str(count)))
        if request.method == hdrs.METH_HEAD:
            return web.Response(status=status, headers=headers)
        if count <= SMALL_BODY:
            body = os.pread(fd, count, start)
            if len(body) != count:
                raise web.HTTPNotFound(reason="the file changed while it was read")
            resp: web.StreamResponse = web.Response(status=status, headers=headers, body=body)
        else:
            resp = web.StreamResponse(status=status, headers=headers)
        try:
            # Sent here rather than by aiohttp after we return, to know that the whole body went out.
            await resp.prepare(request)
            if count > SMALL_BODY:
                await _sendfile(request, fd, start, count)
            await resp.write_eof()
        except ConnectionError:
            log.debug("http.client_gone", name=entry.name, start=start, count=count)
            return resp
        self.metrics.response_bytes.inc(count)
        self.hooks.served(entry, start, end)
        return resp

    async def no_listing(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound(reason="no listings")

    # ---- manifest, events, lifecycle -----------------------------------------------------

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        since = ascii_int(q["since"]) if "since" in q else None
        wait = ascii_decimal(q["wait"]) if "wait" in q else 0.0
        if ("since" in q and since is None) or wait is None:
            raise web.HTTPBadRequest(reason="since must be an integer and wait a number of seconds")
        wait = min(max(wait, 0.0), MAX_LONG_POLL_S)
        if since is not None and wait > 0:
            deadline = asyncio.get_running_loop().time() + wait
            while self.store.version <= since and not self.closing.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                await self._change_or_closing(left)
        etag = f'"{self.store.version}"'
        headers = {hdrs.ETAG: etag, hdrs.CACHE_CONTROL: "no-cache"}
        inm = request.headers.get(hdrs.IF_NONE_MATCH)
        if inm is not None and weak_match(inm, etag):
            return web.Response(status=304, headers=headers)
        body = self.store.body()
        self.metrics.response_bytes.inc(len(body))
        if len(body) <= SLICE:
            return web.Response(body=body, content_type="application/json", headers=headers)
        # As fast as the client reads, from the one cached body (SPEC 9): one write of it all would leave a
        # copy of the unsent rest in the transport's buffer for each client that does not read, 20 MB at
        # 50,000 artifacts, kept until the client reads or leaves.
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(body)
        try:
            out = await BodyWriter.start(request, resp, self.writers)
            await out.write(body)
            await out.end()
        except ConnectionError as e:
            log.debug("http.client_gone", path=request.path, reason=str(e))
            self.trimmer.soon()  # a dropped connection leaves cycles behind; one that ended well does not
        return resp

    async def events(self, request: web.Request) -> web.StreamResponse:
        # Anything but a plain version (`²`, 5,000 digits, text) gets a fresh manifest event (SPEC 5, 9).
        cur = ascii_int(request.headers.get("Last-Event-ID", "").strip())
        resp = web.StreamResponse(headers=SSE_HEADERS)
        resp.enable_chunked_encoding()
        out = await BodyWriter.start(request, resp, self.writers)
        self.hub.join(out.transport)
        subscribers = self.store.subscribers
        subscriber = subscribers.open()
        try:
            await stream_events(
                out,
                cur,
                self.frames,
                self.hub,
                self.closing,
                lambda version: subscribers.sent(subscriber, version),
            )
            await out.end()
        except ConnectionError as e:  # the subscriber went away or stopped reading: its stream simply ends
            log.debug("events.client_gone", peer=request.remote, reason=str(e))
        finally:
            subscribers.close(subscriber)
            self.hub.leave(out.transport)
            self.trimmer.soon()
        return resp

    def _local_only(self, request: web.Request) -> None:
        """Without a token, ending the run is for this machine only (SPEC 9): else a cross-site form post
        from any page the operator visits, or anyone who can reach the port, ends the grace period."""
        if self.token is None and not is_loopback_address(request.remote):
            log.debug("http.forbidden", path=request.path, peer=request.remote)  # debug: no log flood from outside
            raise web.HTTPForbidden(reason="without --auth-token only loopback clients may finalize or release")

    async def finalize(self, request: web.Request) -> web.StreamResponse:
        self._local_only(request)
        state = await self.hooks.finalize()
        return web.json_response({"state": state}, status=202)

    async def release(self, request: web.Request) -> web.StreamResponse:
        self._local_only(request)
        await self.hooks.release()
        return web.json_response({"state": self.store.state, "released": True}, status=202)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        if self.hooks.ready():
            return web.json_response({"status": "ready"})
        return _error(503, "the first scan is not done")

    async def metrics_route(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.metrics.render(), headers={hdrs.CONTENT_TYPE: METRICS_CONTENT_TYPE})


API_KEY = web.AppKey("api", Api)


def build_app(settings: Settings, store: ManifestStore, metrics: Metrics, hooks: Hooks) -> web.Application:
    api = Api(settings, store, metrics, hooks)
    app = web.Application(middlewares=[api.edge], client_max_size=64 * 1024)
    app[API_KEY] = api
    app.on_response_prepare.append(api.on_prepare)
    r = app.router
    r.add_route("*", "/artifacts/{tail:.*}", api.artifact)
    r.add_get("/artifacts", api.no_listing)
    r.add_get("/v1/manifest", api.manifest, allow_head=False)
    r.add_get("/v1/events", api.events, allow_head=False)
    r.add_post("/v1/finalize", api.finalize)
    r.add_post("/v1/release", api.release)
    r.add_get("/healthz", api.healthz)
    r.add_get("/readyz", api.readyz)
    r.add_get("/metrics", api.metrics_route, allow_head=False)
    add_archive_route(app, api)
    if settings.skyvern_routes:
        add_skyvern_routes(app, api)
    return app
