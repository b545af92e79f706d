"""Skyvern's artifact routes (SPEC 12): `/artifact/{image,json,text,recording}?path=<absolute path>`.

Skyvern's UI turns a `file://` artifact URI into `<VITE_ARTIFACT_API_BASE_URL>/artifact/<kind>?path=<the
absolute path>`; with `--skyvern-routes` the sidecar answers those URLs itself, for published artifacts only
and exactly as `/artifacts/<name>` answers (same headers, conditionals, ranges, auth).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from sidecar.security import encode_path, is_publishable_name

if TYPE_CHECKING:
    from sidecar.server import Api

__all__ = ("KINDS", "SkyvernRoutes", "add_skyvern_routes")

KINDS = ("image", "json", "text", "recording")
FILE_SCHEME = "file://"


class SkyvernRoutes:
    """Maps `?path=` to a manifest name by plain string comparison: nothing in the path is normalised, so
    `..`, `//`, `.`, percent tricks and symlinked spellings never reach a file; they name nothing."""

    def __init__(self, api: Api) -> None:
        self.api = api
        # The artifacts dir as it was given and as the kernel resolves it (Skyvern may know either spelling).
        # Both are computed here from the settings, never from a request.
        real = os.path.realpath(api.root).rstrip("/") + "/"
        self.prefixes = tuple(dict.fromkeys((str(api.root).rstrip("/") + "/", real)))

    def name_of(self, request: web.Request) -> str | None:
        """The artifact name `?path=` spells, or None: one `path`, clean UTF-8, beneath the artifacts dir."""
        query = request.raw_path.partition("?")[2]
        try:
            # '+' is a space, as in Skyvern's own server (Express's query parser) and axios's `params`.
            values = [v for k, v in parse_qsl(query, keep_blank_values=True, errors="strict") if k == "path"]
        except (UnicodeDecodeError, ValueError):
            return None
        if len(values) != 1:
            return None  # none, or ambiguous
        path = values[0].removeprefix(FILE_SCHEME)
        for prefix in self.prefixes:
            if path.startswith(prefix):
                name = path[len(prefix) :]
                return name if is_publishable_name(name) else None
        return None

    def signed_path(self, request: web.Request) -> str | None:
        """A signed Skyvern URL carries the signature of the artifact's own `/artifacts/<name>` path, so the
        manifest's signed `url` query (`expires`, `signature`) works unchanged on these routes."""
        if not request.path.startswith("/artifact/"):
            return None
        name = self.name_of(request)
        return encode_path(name) if name is not None else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        name = self.name_of(request)
        if name is None:
            raise web.HTTPNotFound(reason="no such artifact")
        # Every kind serves any published artifact with its own type: Skyvern's UI reads json and text
        # through axios (which parses JSON whatever the Content-Type) and images and videos by tag.
        return await self.api.serve(request, name)


def add_skyvern_routes(app: web.Application, api: Api) -> None:
    routes = SkyvernRoutes(api)
    api.signed_path = routes.signed_path
    for kind in KINDS:
        app.router.add_route("*", f"/artifact/{kind}", routes.handle)
