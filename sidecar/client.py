"""A baseline's client of a sidecar: follow its manifest (events, else long polls) and make Janus chunks of it.

Pure client: aiohttp and the standard library only, nothing of the daemon, so a baseline can import it
without the sidecar's dependencies running anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Collection
from typing import Any, Literal, NotRequired, TypedDict

import aiohttp

__all__ = ("JanusArtifact", "Manifest", "SidecarUnreachable", "janus_artifacts", "janus_event", "watch")

Manifest = dict[str, Any]
JANUS_TYPES = frozenset({"image", "file", "dataset", "binary"})
DEFAULT_MIME = "application/octet-stream"
RETRY_BASE_S = 0.25
RETRY_CAP_S = 5.0
_NO_EVENTS = frozenset({404, 405, 406, 501})  # no /v1/events here (an older sidecar, a proxy): long-poll


class JanusArtifact(TypedDict):
    """Janus's `Artifact`: exactly these fields (`sha256` may be left out)."""

    id: str
    type: Literal["image", "file", "dataset", "binary"]
    mime_type: str
    display_name: str
    size_bytes: int
    sha256: NotRequired[str]
    created_at: str
    ttl_seconds: int
    url: str


class SidecarUnreachable(ConnectionError):
    """The sidecar did not answer for longer than `watch`'s `retry_for`."""


class _NoEvents(Exception):
    pass


# ---- Janus -------------------------------------------------------------------------------


def janus_artifacts(
    manifest: Manifest, *, base_url: str | None = None, skip: Collection[str] = ()
) -> list[JanusArtifact]:
    """The manifest's artifacts as Janus `Artifact`s, one per id (the same bytes under two names are one
    artifact to Janus, which caches by id), in name order. `url` is the manifest's, else `base_url + path`;
    an entry with neither is left out (Janus could not download it). `skip`: ids already sent."""
    out: list[JanusArtifact] = []
    seen = set(skip)
    for a in manifest.get("artifacts", []):
        art_id = a.get("id")
        url = a.get("url") or (base_url.rstrip("/") + a["path"] if base_url and a.get("path") else None)
        if not art_id or art_id in seen or not url:
            continue
        seen.add(art_id)
        kind = a.get("type")
        item: JanusArtifact = {
            "id": art_id,
            "type": kind if kind in JANUS_TYPES else "file",
            "mime_type": a.get("mime_type") or DEFAULT_MIME,  # a missing one crashes Janus's message view
            "display_name": a.get("display_name") or str(a.get("name", art_id)).rsplit("/", 1)[-1],
            "size_bytes": int(a.get("size_bytes", 0)),
            "created_at": str(a.get("created_at", "")),
            "ttl_seconds": int(a.get("ttl_seconds", 0)),
            "url": url,
        }
        if a.get("sha256"):
            item["sha256"] = a["sha256"]
        out.append(item)
    return out


def janus_event(manifest: Manifest, *, base_url: str | None = None, skip: Collection[str] = ()) -> dict[str, Any]:
    """The chat-completion chunk a Janus baseline emits for these artifacts:
    `{"choices": [{"delta": {"janus": {"event": "artifacts", "payload": {"items": [Artifact...]}}}}]}`."""
    items = janus_artifacts(manifest, base_url=base_url, skip=skip)
    return {"choices": [{"delta": {"janus": {"event": "artifacts", "payload": {"items": items}}}}]}


# ---- following the manifest --------------------------------------------------------------------


def _apply(manifest: Manifest, kind: str, doc: dict[str, Any]) -> Manifest | None:
    """The manifest after one event (a new dict; the old one is left as it was), or None to ignore it."""
    if kind == "manifest":
        return doc
    if not manifest or kind not in ("artifacts", "state") or not isinstance(doc.get("version"), int):
        return None
    new = dict(manifest, version=doc["version"])
    if "state" in doc:
        new["state"] = doc["state"]
    if kind == "artifacts" and (doc.get("upserted") or doc.get("removed")):
        arts = {a["name"]: a for a in manifest.get("artifacts", [])}
        arts.update((a["name"], a) for a in doc.get("upserted", []))
        for name in doc.get("removed", []):
            arts.pop(name, None)
        new["artifacts"] = [arts[n] for n in sorted(arts)]
    return new


async def _sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream body. Lines are split here rather than by aiohttp's
    readline, which refuses lines over 128 KiB (a whole manifest is one line)."""
    parts: list[bytes] = []
    kind = ""
    data: list[str] = []
    async for chunk in resp.content.iter_any():
        parts.append(chunk)
        if b"\n" not in chunk:
            continue
        *lines, rest = b"".join(parts).split(b"\n")
        parts = [rest]
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    yield kind or "message", "\n".join(data)
                kind, data = "", []
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)


class _Follower:
    """One watch: the last manifest and how to ask for what came after it."""

    def __init__(self, base_url: str, token: str | None, wait: float) -> None:
        self.base = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.wait = wait
        self.manifest: Manifest = {}

    @property
    def version(self) -> int | None:
        v = self.manifest.get("version")
        return v if isinstance(v, int) else None

    def take(self, new: Manifest | None) -> Manifest | None:
        """Keep `new` when it moves forward; the manifest to yield, if any."""
        if new is None or not isinstance(new.get("version"), int):
            return None
        if self.version is not None and new["version"] <= self.version:
            return None
        self.manifest = new
        return new

    @staticmethod
    def _check(resp: aiohttp.ClientResponse) -> None:
        if resp.status in (401, 403):
            raise PermissionError(f"the sidecar refused the token: HTTP {resp.status}")
        resp.raise_for_status()

    async def events(self, http: aiohttp.ClientSession) -> AsyncIterator[Manifest]:
        headers = dict(self.headers, Accept="text/event-stream")
        if self.version is not None:
            headers["Last-Event-ID"] = str(self.version)  # resume: only the changes after it
        async with http.get(self.base + "/v1/events", headers=headers) as resp:
            if resp.status in _NO_EVENTS or (resp.ok and resp.content_type != "text/event-stream"):
                raise _NoEvents
            self._check(resp)
            async for kind, data in _sse(resp):
                with contextlib.suppress(ValueError):
                    got = self.take(_apply(self.manifest, kind, json.loads(data)))
                    if got is not None:
                        yield got

    async def polls(self, http: aiohttp.ClientSession) -> AsyncIterator[Manifest]:
        while True:
            query = f"?since={self.version}&wait={self.wait:g}" if self.version is not None else ""
            async with http.get(self.base + "/v1/manifest" + query, headers=self.headers) as resp:
                self._check(resp)
                got = self.take(await resp.json())
            if got is not None:
                yield got


async def watch(
    base_url: str,
    token: str | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
    events: bool = True,
    wait: float = 30.0,
    retry_for: float = 60.0,
) -> AsyncIterator[Manifest]:
    """Yield the sidecar's manifest each time it changes, until (and including) the `final` one.

    From `GET /v1/events` (the first `manifest` event, then `artifacts` and `state` deltas applied to it;
    after a dropped connection it reconnects with `Last-Event-ID`), else, when the sidecar has no event
    stream (`events=False`, or a 404/405), by long-polling `GET /v1/manifest?since=V&wait=S`. Connection
    errors are retried with jittered backoff; `SidecarUnreachable` after `retry_for` seconds without an
    answer. A refused token raises PermissionError. Each manifest yielded is a new dict."""
    follower = _Follower(base_url, token, min(max(wait, 0.0), 60.0))
    # Silence longer than a long poll, or than a few of the event stream's 15 s pings, is a dead peer
    # (a frozen sandbox sends no FIN): reconnect rather than wait forever.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=max(45.0, follower.wait + 30.0))
    http = session or aiohttp.ClientSession(timeout=timeout)
    rng = random.Random()  # noqa: S311 - jitter, not cryptography
    use_events, attempt, last_ok = events, 0, time.monotonic()
    try:
        while True:
            error: Exception | None = None
            try:
                stream = follower.events(http) if use_events else follower.polls(http)
                async for manifest in stream:
                    attempt, last_ok = 0, time.monotonic()
                    yield manifest
                    if manifest.get("state") == "final":
                        return
            except _NoEvents:
                use_events = False
                continue
            except PermissionError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                error = e
            # A dropped connection, or a stream that ended before `final`: again, after a jittered pause.
            if error is not None and time.monotonic() - last_ok > retry_for:
                raise SidecarUnreachable(f"no answer from {follower.base} for {retry_for:g} s: {error}") from error
            await asyncio.sleep(rng.uniform(0.0, min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt)))
            attempt = min(attempt + 1, 16)
    finally:
        if session is None:
            await http.close()
