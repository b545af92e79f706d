"""A real browser (Debian's Chromium, driven by Playwright) against the real daemon (SPEC 5 and 9).

A page served from another origin (a tiny aiohttp server on another 127.0.0.1 port) shows an `<img>` from
the sidecar, plays and seeks a `<video>` (Range requests), reads `/v1/manifest` and `/v1/events` with a
bearer token through CORS, loads signed URLs in `<img>`; and an SVG or HTML artifact opened top-level
cannot run its script (`Content-Security-Policy: sandbox`).

Needs `/usr/bin/chromium` (`apt-get install -y chromium`) and the PyPI package `playwright` (its own
browser download is never used); the video test also needs `ffmpeg` (`apt-get install -y ffmpeg`).
All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support.helpers import free_port, get_manifest, wait_for, wait_manifest

from sidecar.security import sign

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium (Playwright's browsers are not used)",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="pip install playwright (the browser itself comes from Debian's chromium package)"
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-token"  # noqa: S105 - a test token
FFMPEG = shutil.which("ffmpeg")


def make_png(width: int, height: int, seed: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3 + seed) % 256 for x in range(width * 3)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------
# fixtures: the browser, and the page's own origin
# --------------------------------------------------------------------------------------


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh Chromium profile (persistent context in an empty user-data-dir); closed at teardown."""
    async with playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            await context.close()


class PageServer:
    """The page's origin: serves `pages[path]` as HTML (or its own content type) and records every hit."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, bytes, dict[str, str]]] = {}
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, path: str, body: str | bytes, content_type: str = "text/html", **headers: str) -> str:
        self.pages[path] = (content_type, body.encode() if isinstance(body, str) else body, headers)
        return self.origin + path

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        found = self.pages.get(request.path)
        if found is None:
            return web.Response(status=204, headers={"Access-Control-Allow-Origin": "*"})
        content_type, body, headers = found
        return web.Response(body=body, content_type=content_type, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def pages() -> AsyncIterator[Callable[[], Awaitable[PageServer]]]:
    """Factory: each call starts one more page origin on its own 127.0.0.1 port."""
    started: list[PageServer] = []

    async def start() -> PageServer:
        server = PageServer()
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


async def open_page(browser: Any, url: str) -> Any:
    page = await browser.new_page()
    await page.goto(url)
    return page


IMG_STATE = """
(id) => new Promise((resolve) => {
  const img = document.getElementById(id);
  const done = () => resolve({complete: img.complete, width: img.naturalWidth, height: img.naturalHeight});
  if (img.complete) { done(); } else { img.onload = done; img.onerror = done; }
})
"""


# --------------------------------------------------------------------------------------
# <img>
# --------------------------------------------------------------------------------------


async def test_img_from_another_origin_renders(run_sidecar, workspace, browser, pages, http) -> None:
    """An `<img>` on another origin's page decodes the artifact; a missing one does not (the check can fail)."""
    ws = workspace()
    ws.write("charts/pic one.png", make_png(40, 24))
    sc = await run_sidecar()
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1)
    site = await pages()
    url = site.page(
        "/",
        f'<img id="ok" src="{sc.url("/artifacts/charts/pic%20one.png")}">'
        f'<img id="missing" src="{sc.url("/artifacts/charts/nope.png")}">',
    )
    page = await open_page(browser, url)
    assert await page.evaluate(IMG_STATE, "ok") == {"complete": True, "width": 40, "height": 24}
    assert (await page.evaluate(IMG_STATE, "missing"))["width"] == 0


# --------------------------------------------------------------------------------------
# <video>: plays, and a seek makes Range requests
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 10 s, 160x120, 25 fps VP8 WebM of about 6.5 MB (noise keeps it large), one keyframe a second."""
    if FFMPEG is None:
        pytest.skip("ffmpeg is missing: apt-get install -y ffmpeg (makes the test video)")
    out = tmp_path_factory.mktemp("video") / "clip.webm"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=25:duration=10", "-vf", "noise=alls=100:allf=t", "-c:v", "libvpx",
         "-deadline", "realtime", "-cpu-used", "16", "-qmin", "0", "-qmax", "8", "-b:v", "20M", "-g", "25", "-an",
         str(out)],
        check=True,
        timeout=120,
    )  # fmt: skip
    data = out.read_bytes()
    assert len(data) > 3_000_000, len(data)
    return data


VIDEO_STEP = """
async ([action, arg]) => {
  const v = document.getElementById('v');
  const until = (event, check) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for ' + event)), 15000);
    const on = () => { if (check()) { clearTimeout(timer); v.removeEventListener(event, on); resolve(); } };
    v.addEventListener(event, on);
    v.addEventListener('error', () => reject(new Error('media error ' + (v.error && v.error.code))));
    on();
  });
  if (action === 'metadata') await until('loadedmetadata', () => v.readyState >= 1);
  if (action === 'play') { await v.play(); await until('timeupdate', () => v.currentTime >= arg); }
  if (action === 'seek') { v.pause(); v.currentTime = arg; await until('seeked', () => !v.seeking); }
  const q = v.getVideoPlaybackQuality();
  return {time: v.currentTime, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
          frames: q.totalVideoFrames, paused: v.paused};
}
"""


@pytest.mark.slow  # encoding the video and playing it: 5-10 s
async def test_video_plays_and_seeks_with_range_requests(run_sidecar, workspace, browser, pages, http, webm) -> None:
    """A seek near the end is served by 206 ranges that start there; the video plays there and from the start."""
    ws = workspace()
    ws.write("clip.webm", webm)
    size = len(webm)
    sc = await run_sidecar("--log-level", "debug")
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1)
    site = await pages()
    src = sc.url("/artifacts/clip.webm")
    url = site.page("/", f'<video id="v" src="{src}" preload="metadata" muted playsinline></video>')

    page = await browser.new_page()
    answers: list[tuple[int, str | None]] = []

    async def on_response(response: Any) -> None:
        if response.url == src:
            answers.append((response.status, response.headers.get("content-range")))

    page.on("response", on_response)
    await page.goto(url)

    meta = await page.evaluate(VIDEO_STEP, ["metadata", 0])
    assert (meta["width"], meta["height"]) == (160, 120)
    assert 9.5 < meta["duration"] < 10.5
    # preload="metadata": the browser has read the start and stopped; a seek near the end needs new ranges
    before_seek = len(answers)
    target = 8.5
    seeked = await page.evaluate(VIDEO_STEP, ["seek", target])
    assert abs(seeked["time"] - target) < 0.5
    played = await page.evaluate(VIDEO_STEP, ["play", target + 0.5])
    assert played["time"] >= target + 0.5 and played["frames"] > 0
    after_seek = len(answers)
    # and back to the start: it plays from there too
    await page.evaluate(VIDEO_STEP, ["seek", 0.2])
    again = await page.evaluate(VIDEO_STEP, ["play", 0.8])
    assert 0.8 <= again["time"] < 5 and again["frames"] > played["frames"]
    await page.close()

    assert answers and all(status in (200, 206) for status, _ in answers), answers
    starts: list[int | None] = []  # the first byte of each 206 the sidecar sent, None for a 200
    for status, content_range in answers:
        if status == 200:
            starts.append(None)
            continue
        assert content_range is not None and content_range.startswith("bytes "), answers
        span, total = content_range[6:].split("/")
        first, last = map(int, span.split("-"))
        assert int(total) == size and 0 <= first <= last < size, content_range
        starts.append(first)
    # Ranges past the start were asked for and answered as asked. Whether the seek itself needs a new range,
    # or is served by the open-ended one asked for first, depends on how far Chromium had read over loopback
    # by then (under load, to the end): the index at the end is the range every run asks for.
    assert any(first is not None and first > 0 for first in starts), (answers, before_seek, after_seek)

    # The daemon's own record of the ranges it served: needs a debug line per ranged response (not there yet).
    logged = [e for e in sc.events("http.range", name="clip.webm") if e.get("start", 0) >= size // 2]
    if not logged:
        pytest.xfail("the daemon logs no `http.range` debug line (name, start, end, size) for 206 responses")


# --------------------------------------------------------------------------------------
# fetch() with a bearer token, through CORS: /v1/manifest and /v1/events
# --------------------------------------------------------------------------------------

FETCH_API = """
async ([base, token]) => {
  const auth = {headers: {Authorization: 'Bearer ' + token}};
  const r = await fetch(base + '/v1/manifest', auth);
  const doc = await r.json();
  const unauth = await fetch(base + '/v1/manifest');
  const cond = await fetch(base + '/v1/manifest', {headers: {...auth.headers, 'If-None-Match': r.headers.get('ETag')}});
  return {status: r.status, etag: r.headers.get('ETag'), names: doc.artifacts.map(a => a.name),
          version: doc.version, unauth: unauth.status, cond: cond.status};
}
"""
START_EVENTS = """
([base, token]) => {
  window.sse = '';
  window.sseStatus = null;
  window.sseAbort = new AbortController();
  fetch(base + '/v1/events', {headers: {Authorization: 'Bearer ' + token}, signal: window.sseAbort.signal})
    .then(async (r) => {
      window.sseStatus = [r.status, r.headers.get('Content-Type')];
      const reader = r.body.getReader();
      const text = new TextDecoder();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        window.sse += text.decode(value, {stream: true});
      }
    })
    .catch((e) => { if (e.name !== 'AbortError') window.sseError = String(e); });
}
"""


def sse_events(text: str) -> list[tuple[str, str, Any]]:
    """(event, id, data) of each complete event in a Server-Sent Events text."""
    out = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n")[:-1]:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = fields.get(key, "") + value.removeprefix(" ")
        if "event" in fields:
            out.append((fields["event"], fields.get("id", ""), json.loads(fields.get("data", "null"))))
    return out


async def test_manifest_and_events_with_a_bearer_token_through_cors(
    run_sidecar, workspace, browser, pages, http
) -> None:
    """The listed origin reads the manifest (and a 401, and a 304) and streams events; another origin cannot."""
    site = await pages()
    other = await pages()
    ws = workspace()
    ws.write("first.png", make_png(8, 8))
    sc = await run_sidecar("--auth-token", TOKEN, "--cors-origin", site.origin)
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1)

    page = await open_page(browser, site.page("/", "<title>api</title>"))
    got = await page.evaluate(FETCH_API, [sc.base, TOKEN])
    assert got["status"] == 200 and got["names"] == ["first.png"]
    assert got["etag"] == f'"{got["version"]}"'  # ETag is readable: listed in Access-Control-Expose-Headers
    assert got["unauth"] == 401  # the 401 carries CORS headers too, so the page can see it
    assert got["cond"] == 304

    await page.evaluate(START_EVENTS, [sc.base, TOKEN])
    await wait_for(lambda: page.evaluate("/\\r?\\n\\r?\\n/.test(window.sse) || window.sseError"), timeout=10)
    assert await page.evaluate("window.sseError || null") is None
    status, content_type = await page.evaluate("window.sseStatus")
    assert status == 200 and content_type.startswith("text/event-stream")
    event, ident, data = sse_events(await page.evaluate("window.sse"))[0]
    assert event == "manifest" and [a["name"] for a in data["artifacts"]] == ["first.png"]
    assert ident == str(data["version"])

    ws.write("second.png", make_png(9, 9))

    async def second_arrived() -> bool:
        return any(
            e == "artifacts" and any(a["name"] == "second.png" for a in d["upserted"])
            for e, _, d in sse_events(await page.evaluate("window.sse"))
        )

    await wait_for(second_arrived, timeout=10)
    await page.evaluate("window.sseAbort.abort()")

    # an origin that is not listed: the browser hides the answer from the page
    page2 = await open_page(browser, other.page("/", "<title>other</title>"))
    blocked = await page2.evaluate(
        """async ([base, token]) => {
             try { await fetch(base + '/v1/manifest', {headers: {Authorization: 'Bearer ' + token}}); return 'read'; }
             catch (e) { return e.name; }
           }""",
        [sc.base, TOKEN],
    )
    assert blocked == "TypeError"


# --------------------------------------------------------------------------------------
# signed URLs in <img>
# --------------------------------------------------------------------------------------


async def test_signed_urls_load_in_img_and_nothing_else_does(run_sidecar, workspace, browser, pages, http) -> None:
    """The manifest's signed `url` loads in an `<img>` with no header at all; unsigned or tampered ones do not."""
    ws = workspace()
    ws.write("a.png", make_png(30, 20, seed=1))
    ws.write("sub/b c.png", make_png(12, 34, seed=2))
    port = free_port()
    sc = await run_sidecar("--auth-token", TOKEN, "--public-base-url", f"http://127.0.0.1:{port}", port=port)
    doc = await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 2)
    urls = {a["name"]: a["url"] for a in doc["artifacts"]}
    for u in urls.values():
        assert u.startswith(sc.base + "/artifacts/") and "expires=" in u and "signature=" in u, u
    a_url, b_url = urls["a.png"], urls["sub/b c.png"]
    a_query = a_url.split("?", 1)[1]
    tampered = a_url[:-2] + ("AA" if not a_url.endswith("AA") else "BB")
    site = await pages()
    imgs = {
        "a": a_url,
        "b": b_url,
        "unsigned": sc.url("/artifacts/a.png"),
        "tampered": tampered,
        "other-path": b_url.split("?", 1)[0] + "?" + a_query,  # a's signature on b's path
        "expired": sc.url(f"/artifacts/a.png?expires=1&signature={sign(TOKEN, '/artifacts/a.png', 1)}"),
    }
    html = "".join(f'<img id="{k}" src="{v}">' for k, v in imgs.items())
    page = await open_page(browser, site.page("/", html))
    assert await page.evaluate(IMG_STATE, "a") == {"complete": True, "width": 30, "height": 20}
    assert await page.evaluate(IMG_STATE, "b") == {"complete": True, "width": 12, "height": 34}
    for refused in ("unsigned", "tampered", "other-path", "expired"):
        assert (await page.evaluate(IMG_STATE, refused))["width"] == 0, refused
    # the same manifest, read with the token, agrees with what the browser saw
    assert {a["name"] for a in (await get_manifest(http, sc))["artifacts"]} == {"a.png", "sub/b c.png"}


# --------------------------------------------------------------------------------------
# active content opened top-level: sandboxed
# --------------------------------------------------------------------------------------


def evil(kind: str, beacon: str) -> bytes:
    script = (
        "document.title = 'pwned';"
        f"new Image().src = '{beacon}/img/{kind}';"
        f"fetch('{beacon}/fetch/{kind}', {{mode: 'no-cors'}}).catch(() => {{}});"
    )
    if kind == "svg":
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40" onload="'
            + script.replace("'", "&apos;")
            + '"><title>clean</title><script><![CDATA['
            + script
            + ']]></script><rect width="40" height="40" fill="red"/></svg>'
        ).encode()
    return f'<!doctype html><title>clean</title><body onload="{script}"><script>{script}</script>'.encode()


@pytest.mark.parametrize("kind", ["svg", "html"])
async def test_active_artifact_opened_top_level_cannot_run_script(
    run_sidecar, workspace, browser, pages, http, kind
) -> None:
    """The same file runs its script when served without CSP (control), and not when the sidecar serves it."""
    site = await pages()
    # The control and the artifact beacon to different paths: a late beacon of the control page must
    # never be blamed on the artifact (it was, once, under load).
    mime = "image/svg+xml" if kind == "svg" else "text/html"
    ws = workspace()
    ws.write(f"evil.{kind}", evil(kind, site.origin + "/beacon/artifact"))
    sc = await run_sidecar()
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1)

    # control: from the page server, without CSP, the same script runs (the probe works)
    page = await browser.new_page()
    await page.goto(site.page(f"/control.{kind}", evil(kind, site.origin + "/beacon/control"), content_type=mime))

    async def pwned() -> bool:
        return await page.title() == "pwned"

    await wait_for(pwned, timeout=5)
    await wait_for(lambda: any(h.startswith("/beacon/control/img/") for h in site.hits), timeout=5)

    # the artifact, opened top-level from the sidecar
    response = await page.goto(sc.url(f"/artifacts/evil.{kind}"))
    assert response is not None and response.status == 200
    assert "sandbox" in (await response.header_value("content-security-policy") or "")
    await asyncio.sleep(1.0)  # time for any script, onload handler or beacon to happen
    assert await page.title() == "clean"
    assert await page.evaluate("self.origin") == "null"  # a sandboxed document has an opaque origin
    assert [h for h in site.hits if h.startswith("/beacon/artifact")] == []


# --------------------------------------------------------------------------------------
# Skyvern's routes (--skyvern-routes, SPEC 12): the URLs its UI builds, from another origin
# --------------------------------------------------------------------------------------


@pytest.mark.slow  # encoding the video and playing it: 5-10 s
async def test_skyvern_img_and_seeking_webm_video_from_another_origin(
    run_sidecar, workspace, browser, pages, http, webm
) -> None:
    """`/artifact/image?path=` renders in an `<img>` and `/artifact/recording?path=` plays a WebM (served as
    video/webm, which Skyvern's own server labels mp4) and seeks through 206 ranges, as its UI builds them."""
    ws = workspace()
    ws.write("run 1/screenshot.png", make_png(33, 21))
    ws.write("run 1/recording.webm", webm)
    size = len(webm)
    sc = await run_sidecar("--skyvern-routes")
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 2)
    site = await pages()
    # what the UI does with a `file://` URI: `${base}/artifact/<kind>?path=${encodeURIComponent(uri.slice(7))}`
    page = await browser.new_page()
    await page.goto(site.page("/", "<title>skyvern</title>"))
    image, video = await page.evaluate(
        """([base, root]) => ['image', 'recording'].map((kind, i) =>
             `${base}/artifact/${kind}?path=${encodeURIComponent(
               ('file://' + root + ['/run 1/screenshot.png', '/run 1/recording.webm'][i]).slice(7))}`)""",
        [sc.base, str(ws.artifacts)],
    )
    answers: list[tuple[int, str | None, str | None]] = []

    async def on_response(response: Any) -> None:
        if response.url == video:
            headers = response.headers  # as the response event had them: a cancelled request has no others
            answers.append((response.status, headers.get("content-range"), headers.get("content-type")))

    page.on("response", on_response)
    await page.set_content(
        f'<img id="shot" src="{image}"><img id="missing" src="{image.replace("screenshot", "nope")}">'
        f'<video id="v" src="{video}" preload="metadata" muted playsinline></video>'
    )
    assert await page.evaluate(IMG_STATE, "shot") == {"complete": True, "width": 33, "height": 21}
    assert (await page.evaluate(IMG_STATE, "missing"))["width"] == 0

    meta = await page.evaluate(VIDEO_STEP, ["metadata", 0])
    assert (meta["width"], meta["height"]) == (160, 120) and 9.5 < meta["duration"] < 10.5
    seeked = await page.evaluate(VIDEO_STEP, ["seek", 8.0])
    assert abs(seeked["time"] - 8.0) < 0.5
    played = await page.evaluate(VIDEO_STEP, ["play", 8.5])
    assert played["time"] >= 8.5 and played["frames"] > 0
    await page.close()

    # A range request Chromium cancels mid-flight is reported without headers: judge the ones that have them.
    answered = [a for a in answers if a[2] is not None]
    assert answered and all(status in (200, 206) and kind == "video/webm" for status, _, kind in answered), answers
    # Chromium may read the whole file through its first open-ended range before the seek (it did under
    # load), so the page also asks for a range in the middle itself: Skyvern's own parser glues the digits
    # of `bytes=A-B` together (100-199 would start at byte 100199); the sidecar answers what was asked.
    page = await browser.new_page()
    await page.goto(site.page("/range", "<title>range</title>"))
    got = await page.evaluate(
        """async (url) => {
             const r = await fetch(url, {headers: {Range: 'bytes=100-199'}});
             const body = new Uint8Array(await r.arrayBuffer());
             return [r.status, r.headers.get('content-range'), r.headers.get('content-type'), Array.from(body)];
           }""",
        video,
    )
    await page.close()
    assert got[:3] == [206, f"bytes 100-199/{size}", "video/webm"]
    assert bytes(got[3]) == webm[100:200]
