"""A small chat-UI receiver that behaves like the Janus cache route `POST /api/artifacts/cache`:
it downloads `artifact.url`, checks its sha256 and stores it by `artifact.id`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ("DemoUI",)


class DemoUI:
    def __init__(self, store: Path, say: Callable[[str], None] = print) -> None:
        self.store = store
        self.say = say
        self.received: list[dict[str, Any]] = []
        self.verified: dict[str, str] = {}  # artifact id -> name
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def cache(self, request: web.Request) -> web.Response:
        doc = await request.json()
        artifact = doc["artifact"]
        self.received.append(doc)
        self.say(
            f"ui: push {request.headers.get('Idempotency-Key')} -> {artifact['name']} ({artifact['size_bytes']} bytes)"
        )
        async with aiohttp.ClientSession() as http, http.get(artifact["url"]) as resp:
            body = await resp.read()
        digest = hashlib.sha256(body).hexdigest()
        if resp.status != 200 or digest != artifact["sha256"]:
            self.say(f"ui: download of {artifact['name']} FAILED ({resp.status}, sha256 {digest[:12]})")
            return web.json_response({"ok": False}, status=502)
        self.store.mkdir(parents=True, exist_ok=True)
        (self.store / artifact["id"]).write_bytes(body)
        self.verified[artifact["id"]] = artifact["name"]
        self.say(f"ui: downloaded {artifact['name']}, sha256 verified, cached as {artifact['id']}")
        return web.json_response({"ok": True})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/artifacts/cache", self.cache)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}/api/artifacts/cache"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
