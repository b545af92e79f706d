"""sidecar.compat, --skyvern-routes (SPEC 12): Skyvern's `/artifact/{image,json,text,recording}?path=<absolute
path>` serve published artifacts like `/artifacts/*`, and nothing else. `?path=` to a name is tested on its own
(TestNameOf); the routes through a real daemon on 127.0.0.1.

What the real `artifactServer.js` does (and these routes do not): it serves any path on the machine, takes
`Range: bytes=0-1000` as byte 1000 (it deletes the non-digits), labels every recording `video/mp4`,
answers 400 to a recording request without `Range`, and has no authentication.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request
from support.helpers import Sidecar, fetch, raw_request, sha256, wait_manifest
from yarl import URL

from sidecar.compat import SkyvernRoutes
from sidecar.security import sign

TOKEN = "skyvern-token"  # noqa: S105 - a test token
WEBM = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 40  # the EBML magic; only the name decides the type
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
JSON = json.dumps({"steps": [1, 2, 3], "ok": True}).encode()
TEXT = "line one\nligne deux — ü\n".encode() * 50
FILES = {"recordings/run 1.webm": WEBM, "shots/a.png": PNG, "llm/response.json": JSON, "logs/out.txt": TEXT}
TYPES = {"recordings/run 1.webm": "video/webm", "shots/a.png": "image/png", "llm/response.json": "application/json"}
KIND = {
    "recordings/run 1.webm": "recording",
    "shots/a.png": "image",
    "llm/response.json": "json",
    "logs/out.txt": "text",
}


def route(sc: Sidecar, kind: str, path: str, extra: str = "") -> URL:
    """The URL Skyvern's UI builds: `encodeURIComponent` of the path (so `/` is `%2F`)."""
    return URL(sc.url(f"/artifact/{kind}?path={quote(path, safe='')}{extra}"), encoded=True)


def abs_path(sc: Sidecar, name: str) -> str:
    return str(sc.workspace.artifacts) + "/" + name


@pytest.fixture
async def skyvern(run_sidecar, workspace, http):
    """A daemon with --skyvern-routes and the four files published."""

    async def start(*flags: str) -> Sidecar:
        ws = workspace()
        for name, data in FILES.items():
            ws.write(name, data)
        sc = await run_sidecar("--skyvern-routes", *flags)
        await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == len(FILES))
        return sc

    return start


def routes_for(root: Path) -> SkyvernRoutes:
    """SkyvernRoutes reads nothing of the server but its artifacts root."""
    return SkyvernRoutes(SimpleNamespace(root=root))  # type: ignore[arg-type]


def name_of(routes: SkyvernRoutes, query: str, path: str = "/artifact/image") -> str | None:
    return routes.name_of(make_mocked_request("GET", f"{path}?{query}"))


class TestNameOf:
    """`?path=` to an artifact name by string comparison with the artifacts dir, nothing normalised."""

    def test_the_path_beneath_the_root_is_the_name(self, tmp_path: Path) -> None:
        """Encoded (`%2F`) or not, with `file://` or not, `+` as a space like Express and axios."""
        r = routes_for(tmp_path)
        root = str(tmp_path)
        assert name_of(r, "path=" + quote(f"{root}/shots/a b.png", safe="")) == "shots/a b.png"
        assert name_of(r, f"path={root}/shots/a+b.png") == "shots/a b.png"
        assert name_of(r, "path=" + quote(f"file://{root}/x.json", safe="")) == "x.json"
        assert name_of(r, f"other=1&path={root}/x.json&v=2") == "x.json"

    @pytest.mark.parametrize(
        "tail",
        ["", "/", "/../secret", "/a/../x.json", "/./x.json", "//x.json", "/.hidden", "/x.json.tmp", "/a/./b"],
    )
    def test_no_normalisation_opens_anything(self, tmp_path: Path, tail: str) -> None:
        """Dot components, doubled slashes, the root itself, hidden and temp names: no name at all."""
        assert name_of(routes_for(tmp_path), "path=" + quote(str(tmp_path) + tail, safe="")) is None

    @pytest.mark.parametrize(
        "query",
        ["", "path=", "path=/etc/passwd", "path=x.json", "path=%ff%fe", "path=%E2%82", "pathx=/y"],
        ids=["none", "empty", "outside", "relative", "not-utf8", "cut-utf8", "other-key"],
    )
    def test_what_names_nothing(self, tmp_path: Path, query: str) -> None:
        """No `path`, a path outside the root or relative, invalid UTF-8: None, never an exception."""
        assert name_of(routes_for(tmp_path), query) is None

    def test_invalid_utf8_beneath_the_root_names_nothing(self, tmp_path: Path) -> None:
        """`%FF` in the name is no spelling of any file name: not replaced by U+FFFD, refused."""
        root = quote(str(tmp_path), safe="")
        assert name_of(routes_for(tmp_path), f"path={root}%2Fshots%2F%FF.png") is None
        assert name_of(routes_for(tmp_path), f"path={root}%2Fshots%2F%C3%BC.png") == "shots/\u00fc.png"

    def test_two_paths_are_ambiguous(self, tmp_path: Path) -> None:
        """`path` twice is refused even when both are the same."""
        root = str(tmp_path)
        assert name_of(routes_for(tmp_path), f"path={root}/x.json&path={root}/x.json") is None

    def test_a_sibling_with_the_same_prefix_is_outside(self, tmp_path: Path) -> None:
        """`<root>-other/x` starts with the root's spelling but is not beneath it."""
        root = tmp_path / "artifacts"
        assert name_of(routes_for(root), f"path={root}-other/x.json") is None
        assert name_of(routes_for(root), f"path={root}x.json") is None

    def test_the_root_as_given_and_as_resolved(self, tmp_path: Path) -> None:
        """A root given through a symlink is known by both spellings; nothing else resolves."""
        real = tmp_path / "real"
        real.mkdir()
        (tmp_path / "link").symlink_to(real)
        r = routes_for(tmp_path / "link")
        assert name_of(r, f"path={tmp_path}/link/x.json") == "x.json"
        assert name_of(r, f"path={real}/x.json") == "x.json"
        assert len(r.prefixes) == 2
        assert len(routes_for(real).prefixes) == 1

    def test_the_signed_path_is_the_artifacts_own(self, tmp_path: Path) -> None:
        """On /artifact/* the signature covers `/artifacts/<name>` (encoded); elsewhere there is none."""
        r = routes_for(tmp_path)
        request = make_mocked_request("GET", f"/artifact/recording?path={tmp_path}/run+1.webm")
        assert r.signed_path(request) == "/artifacts/run%201.webm"
        assert r.signed_path(make_mocked_request("GET", f"/artifacts/x?path={tmp_path}/x.json")) is None
        assert r.signed_path(make_mocked_request("GET", "/artifact/image?path=/etc/passwd")) is None


class TestServing:
    async def test_every_route_serves_the_artifact_with_its_real_type(self, skyvern, http):
        """Each kind answers with the bytes, the artifact's own type (WebM is video/webm) and /artifacts' headers."""
        sc = await skyvern()
        for name, data in FILES.items():
            for spelling in (abs_path(sc, name), "file://" + abs_path(sc, name)):
                status, headers, body = await fetch(http, "GET", route(sc, KIND[name], spelling))
                assert (status, body) == (200, data), (name, spelling)
                assert headers["Content-Type"] == TYPES.get(name, "text/plain")
                assert headers["ETag"] == f'"{sha256(data)}"'
                assert headers["Accept-Ranges"] == "bytes"
                assert headers["X-Content-Type-Options"] == "nosniff"
                _, plain, _ = await fetch(http, "GET", sc.url("/artifacts/" + quote(name)))
                assert {k: v for k, v in headers.items() if k != "Date"} == {
                    k: v for k, v in plain.items() if k != "Date"
                }
            status, headers, body = await fetch(http, "HEAD", route(sc, KIND[name], abs_path(sc, name)))
            assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
        # any published artifact on any kind: the route names what Skyvern expects, the type tells the truth
        status, headers, body = await fetch(http, "GET", route(sc, "text", abs_path(sc, "shots/a.png")))
        assert (status, headers["Content-Type"], body) == (200, "image/png", PNG)

    async def test_the_path_as_axios_and_unencoded_callers_send_it(self, skyvern, http):
        """axios' `params` encoding (encodeURIComponent, then `:` `$` `,` `[` `]` kept and a space as `+`) and
        the workflow page's unencoded path (as a browser sends it: `/` as is, a space as `%20`) find the file."""
        sc = await skyvern()
        path = abs_path(sc, "recordings/run 1.webm")
        axios = quote(path, safe=":$,[]").replace("%20", "+")
        for query in (axios, path.replace(" ", "%20")):
            status, _, body = await fetch(http, "GET", URL(sc.url(f"/artifact/recording?path={query}"), encoded=True))
            assert (status, body) == (200, WEBM), query

    async def test_ranges_and_conditionals_on_every_route(self, skyvern, http):
        """Single ranges (206), suffix ranges, 416, If-None-Match 304: `bytes=0-1000` means bytes 0 to 1000."""
        sc = await skyvern()
        for name, data in FILES.items():
            url = route(sc, KIND[name], abs_path(sc, name))
            size = len(data)
            status, headers, body = await fetch(http, "GET", url, headers={"Range": "bytes=0-1000"})
            assert (status, body) == (206, data[:1001]), name
            assert headers["Content-Range"] == f"bytes 0-{min(1000, size - 1)}/{size}"
            status, headers, body = await fetch(http, "GET", url, headers={"Range": "bytes=-10"})
            assert (status, body, headers["Content-Range"]) == (206, data[-10:], f"bytes {size - 10}-{size - 1}/{size}")
            status, headers, _ = await fetch(http, "GET", url, headers={"Range": f"bytes={size}-"})
            assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
            status, _, body = await fetch(http, "GET", url, headers={"If-None-Match": f'"{sha256(data)}"'})
            assert (status, body) == (304, b"")
        # a recording without Range is simply the whole file (Skyvern's server answers 400)
        status, _, body = await fetch(http, "GET", route(sc, "recording", abs_path(sc, "recordings/run 1.webm")))
        assert (status, body) == (200, WEBM)

    async def test_cors_and_methods(self, skyvern, http):
        """CORS headers as on every route, a preflight 204, and 405 with Allow for other methods."""
        sc = await skyvern()
        url = route(sc, "image", abs_path(sc, "shots/a.png"))
        status, headers, _ = await fetch(http, "GET", url, headers={"Origin": "http://127.0.0.1:9"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Range" in headers["Access-Control-Expose-Headers"]
        status, headers, _ = await fetch(
            http, "OPTIONS", url, headers={"Origin": "http://127.0.0.1:9", "Access-Control-Request-Method": "GET"}
        )
        assert status == 204 and "Range" in headers["Access-Control-Allow-Headers"]
        status, headers, body = await fetch(http, "POST", url)
        assert status == 405 and {m.strip() for m in headers["Allow"].split(",")} == {"GET", "HEAD"}
        assert json.loads(body)["error"] == "method_not_allowed"

    async def test_off_by_default_and_switched_on_by_flag_or_environment(self, run_sidecar, workspace, http):
        """Off (404, while /artifacts serves the file) by default and with --no-skyvern-routes; on with
        SIDECAR_SKYVERN_ROUTES=1."""
        ws = workspace()
        ws.write("shots/a.png", PNG)
        for flags, env, expected in (((), None, 404), (("--no-skyvern-routes",), None, 404), ((), "1", 200)):
            sc = await run_sidecar(*flags, env={"SIDECAR_SKYVERN_ROUTES": env} if env else None)
            await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1)
            status, _, body = await fetch(http, "GET", route(sc, "image", abs_path(sc, "shots/a.png")))
            assert status == expected, (flags, env)
            if expected == 404:
                assert json.loads(body)["error"] == "not_found"
            assert (await fetch(http, "GET", sc.url("/artifacts/shots/a.png")))[0] == 200
            await sc.stop()


class TestOnlyPublishedArtifacts:
    async def test_hostile_spellings_are_404_as_sent(self, skyvern, http):
        """`..`, `.`, `//`, percent tricks, NUL, bad UTF-8, the dir itself, symlinks, dotfiles, temp names,
        paths outside, relative paths, two `path`s: all 404 JSON, sent over a raw socket as written."""
        sc = await skyvern()
        ws = sc.workspace
        root = str(ws.artifacts)
        (ws.root / "secret.txt").write_bytes(b"outside")
        sibling = ws.root / "artifacts-other"
        sibling.mkdir()
        (sibling / "a.png").write_bytes(PNG)
        os.symlink(ws.root / "secret.txt", ws.artifacts / "link.txt")
        os.symlink(ws.artifacts / "shots/a.png", ws.artifacts / "shots/alias.png")
        os.symlink(ws.artifacts / "shots", ws.artifacts / "shotlink")
        ws.write(".hidden.png", PNG)
        ws.write("shots/b.png.tmp", PNG)
        enc = quote(root, safe="/")
        bad = [
            f"{enc}/../secret.txt",
            f"{enc}/%2e%2e/secret.txt",
            f"{enc}/%252e%252e/secret.txt",
            f"{enc}%2F..%2Fsecret.txt",
            f"{enc}/shots/../shots/a.png",
            f"{enc}/./shots/a.png",
            f"{enc}//shots/a.png",
            f"{enc}/shots//a.png",
            f"{enc}/shots/a.png/",
            f"{enc}/shots%5Ca.png",
            f"{enc}/shots/a.png%00",
            f"{enc}/shots/a%ff.png",
            f"{enc}",
            f"{enc}/",
            f"{enc}/shots",
            f"{enc}-other/a.png",
            f"{enc}/link.txt",
            f"{enc}/shots/alias.png",
            f"{enc}/shotlink/a.png",
            f"{enc}/.hidden.png",
            f"{enc}/shots/b.png.tmp",
            f"{enc}/shots/nope.png",
            f"{enc}/SHOTS/A.PNG",
            "shots/a.png",
            "/shots/a.png",
            "/etc/passwd",
            f"file:{enc}/shots/a.png",
            f"FILE://{enc}/shots/a.png",
            f"file://localhost{enc}/shots/a.png",
            f"{enc}/shots/a.png&path={enc}/shots/a.png",
            f"{enc}/shots/a.png&path=/etc/passwd",
            f"{enc}/shots/a.png;/etc/passwd",
            "",
        ]
        for query in bad:
            head = f"GET /artifact/image?path={query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            status, data = await raw_request(sc.port, head)
            assert status == 404, (query, data[:300])
            assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"] == "not_found", query
            assert b"outside" not in data
        for path in ("/artifact/image", "/artifact/image?file=" + enc + "/shots/a.png", "/artifact/video?path=" + enc):
            status, _ = await raw_request(
                sc.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            assert status == 404, path
        # the control: the same socket, the clean spelling
        head = f"GET /artifact/image?path={enc}/shots/a.png HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, data = await raw_request(sc.port, head.encode())
        assert status == 200 and data.endswith(PNG)

    async def test_the_artifacts_dir_as_given_and_as_resolved(self, run_sidecar, workspace, http, tmp_path: Path):
        """--artifacts-dir through a symlinked parent: that spelling and the real one work; no third one does."""
        ws = workspace()
        ws.write("a.png", PNG)
        (tmp_path / "via").symlink_to(ws.root)
        (tmp_path / "other").symlink_to(ws.root)
        sc = await run_sidecar("--skyvern-routes", "--artifacts-dir", str(tmp_path / "via" / "artifacts"))
        await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 1)
        for base, expected in ((tmp_path / "via"), 200), (ws.root.resolve(), 200), ((tmp_path / "other"), 404):
            status, _, _ = await fetch(http, "GET", route(sc, "image", f"{base}/artifacts/a.png"))
            assert status == expected, base


class TestAuth:
    async def test_bearer_and_signed_urls(self, skyvern, http):
        """401 before any lookup without a token; a bearer token or the artifact's own signature opens it."""
        sc = await skyvern("--auth-token", TOKEN)
        path = abs_path(sc, "shots/a.png")
        url = route(sc, "image", path)
        for target in (url, route(sc, "image", "/etc/passwd"), route(sc, "image", abs_path(sc, "nope.png"))):
            status, headers, body = await fetch(http, "GET", target)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer", target
            assert json.loads(body)["error"] == "unauthorized"
        status, _, body = await fetch(http, "GET", url, headers={"Authorization": f"bearer {TOKEN}"})
        assert (status, body) == (200, PNG)
        status, _, _ = await fetch(http, "GET", url, headers={"Authorization": "Bearer wrong"})
        assert status == 401

        exp = 4_000_000_000
        own = sign(TOKEN, "/artifacts/shots/a.png", exp)
        status, _, body = await fetch(http, "GET", route(sc, "image", path, f"&expires={exp}&signature={own}"))
        assert (status, body) == (200, PNG)
        status, _, body = await fetch(http, "HEAD", route(sc, "image", path, f"&expires={exp}&signature={own}"))
        assert status == 200
        refused = {
            "another artifact's": sign(TOKEN, "/artifacts/logs/out.txt", exp),
            "the route's own path": sign(TOKEN, "/artifact/image", exp),
            "another token's": sign("other", "/artifacts/shots/a.png", exp),
        }
        for why, sig in refused.items():
            status, _, _ = await fetch(http, "GET", route(sc, "image", path, f"&expires={exp}&signature={sig}"))
            assert status == 401, why
        old = sign(TOKEN, "/artifacts/shots/a.png", 1)
        assert (await fetch(http, "GET", route(sc, "image", path, f"&expires=1&signature={old}")))[0] == 401
        # a signature never opens a path that is not the published artifact's
        other = route(sc, "image", str(sc.workspace.root / "secret.txt"), f"&expires={exp}&signature={own}")
        assert (await fetch(http, "GET", other))[0] == 401

    async def test_the_manifest_signed_url_query_works_on_the_skyvern_route(self, skyvern, http):
        """The `expires` and `signature` of a manifest `url` open the same artifact through /artifact/*."""
        sc = await skyvern("--auth-token", TOKEN, "--public-base-url", "http://127.0.0.1:1")
        doc = await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == len(FILES))
        for a in doc["artifacts"]:
            query = a["url"].split("?", 1)[1]
            status, _, body = await fetch(http, "GET", route(sc, KIND[a["name"]], abs_path(sc, a["name"]), "&" + query))
            assert (status, body) == (200, FILES[a["name"]]), a["name"]
