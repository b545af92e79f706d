"""Pushing to the UI (SPEC 7): newest first, one at a time, retried with backoff, acknowledgements persisted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict

from sidecar.config import Settings
from sidecar.deliveries import Deliveries
from sidecar.fsutil import OrderedFile
from sidecar.logs import Throttle, get_logger
from sidecar.manifest import Entry, ManifestStore
from sidecar.metrics import Metrics
from sidecar.numbers import ascii_uint
from sidecar.retry import backoff_delay

__all__ = ("PushHold", "Pusher", "retry_after_seconds")

log = get_logger("sidecar.pusher")

PUSH_TIMEOUT_S = 10.0
RETRY_AFTER_CAP_S = 120.0
RETRYABLE = frozenset({408, 425, 429})
STATE_FILE = "push.json"
LAST_TRY_MARGIN_S = 0.25  # in settle, the last retry starts at least this long before the deadline
SAVE_EVERY_S = 0.25  # acknowledgements are written at most this often (and when idle, and at the end)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds = ascii_uint(value)
    if seconds is not None:
        return float(min(seconds, RETRY_AFTER_CAP_S))
    try:
        return min(max(0.0, parsedate_to_datetime(value).timestamp() - time.time()), RETRY_AFTER_CAP_S)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def _download_failed(pushed_url: str | None, answer: bytes) -> bool:
    """True when a cache-mode answer's JSON `url` is the `url` that was pushed."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return False
    if not isinstance(doc, dict) or "url" not in doc:
        return False
    return pushed_url is not None and doc["url"] == pushed_url


@dataclasses.dataclass(frozen=True, slots=True)
class _Push:
    """One push: the whole manifest (manifest mode), or one artifact (cache mode: `name`, `sha256`, `url`)."""

    key: str  # the Idempotency-Key
    body: bytes
    version: int
    name: str | None = None
    sha256: str | None = None
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class PushHold:
    """Object storage's say in cache-mode pushes (SPEC 11), wired by the lifecycle from the offloader."""

    holds: Callable[[str], bool]  # sha256 -> its upload is on its way: the push waits for its storage_url
    ended: asyncio.Event  # set when a hold ends without a new manifest version: look again


class Pusher:
    def __init__(
        self,
        settings: Settings,
        store: ManifestStore,
        metrics: Metrics,
        deliveries: Deliveries | None = None,
        hold: PushHold | None = None,
    ) -> None:
        assert settings.ui_push_url is not None
        self.url = settings.ui_push_url
        self.mode = settings.ui_push_mode
        self.chat_id = settings.chat_id
        self.token = settings.ui_token.get_secret_value() if settings.ui_token else None
        self.extra_headers = [(name, value.get_secret_value()) for name, value in settings.ui_push_headers]
        self.store = store
        self.metrics = metrics
        self.deliveries = deliveries  # saved before the acknowledgements (see Deliveries)
        self.hold = hold
        self.path = settings.state_dir.absolute() / STATE_FILE
        self._file = OrderedFile(self.path)  # an older snapshot never replaces a newer one
        self.acked_version = 0
        self.acked: dict[str, str] = {}  # cache mode: name -> sha256 the UI acknowledged
        self.failed: set[str] = set()  # Idempotency-Keys refused with a 4xx: never retried
        self.rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._throttle = Throttle()  # one persist_failed line a second at most
        self._stopping = False
        self._last_call: float | None = None  # settle's deadline (monotonic): a retry lands before it
        # cache mode: names changed since they were last looked at, oldest first (the newest is pushed first)
        self._queue: dict[str, None] = {}
        self._synced = -1  # the store version the queue reflects; -1: rebuild from all entries
        self._dirty = False  # acknowledgements not yet on disk
        self._saved_at = 0.0

    # ---- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return
        try:
            if doc.get("sidecar_id") != self.store.sidecar_id:
                return
            acked_version = int(doc.get("acked_version", 0))
            acked = {str(k): str(v) for k, v in doc.get("acked", {}).items()}
        except (AttributeError, TypeError, ValueError):  # not ours: push everything again
            log.warning("push.state_unreadable", path=str(self.path))
            return
        self.acked_version, self.acked = acked_version, acked

    def _snapshot(self) -> tuple[int, bytes]:
        self._dirty = False
        self._saved_at = time.monotonic()
        doc = {"sidecar_id": self.store.sidecar_id, "acked_version": self.acked_version, "acked": self.acked}
        return self._file.snapshot(json.dumps(doc).encode())

    async def _persist(self, *, force: bool = False) -> None:
        """Write the acknowledgements, at most every SAVE_EVERY_S unless forced. A SIGKILL in between only
        means a few pushes are repeated after restart, with the same Idempotency-Key."""
        if self._dirty and (force or time.monotonic() - self._saved_at >= SAVE_EVERY_S):
            snap = self._snapshot()  # first: the deliveries saved next include every acknowledgement in it
            try:
                if self.deliveries is not None and not await self.deliveries.save_now():
                    self._dirty = True  # no acknowledgement on disk before the delivery it stands for
                    return
                await asyncio.to_thread(self._file.write, snap)
            except OSError as e:
                # Out of descriptors, or a full disk: the acknowledgements stay in memory and are written
                # next time. Raising here ended the pusher task: no push after it, not even the final one.
                self._dirty = True
                if self._throttle.hit() is not None:
                    log.warning("push.persist_failed", error=e.strerror, errno=e.errno)
            except asyncio.CancelledError:
                self._dirty = True  # not known to be on disk: the exit's flush writes it
                raise

    def flush(self) -> None:
        """The last write at exit (blocking; the loop is shutting down)."""
        if self._dirty and (self.deliveries is None or self.deliveries.flush()):
            with contextlib.suppress(OSError):
                self._file.write(self._snapshot())

    # ---- the loop ------------------------------------------------------------------------

    def _sync(self) -> None:
        """Bring the cache-mode queue up to the store's version: O(changes), not O(entries)."""
        store = self.store
        if self._synced == store.version:
            return
        changes = store.changes_since(self._synced) if self._synced >= 0 else None
        if changes is None:
            order = sorted(store.entries.values(), key=lambda e: (e.mtime, e.name))
            self._queue = dict.fromkeys(e.name for e in order)
        else:
            for c in changes:
                for e in c.upserted:
                    self._queue.pop(e.name, None)
                    self._queue[e.name] = None
                for name in c.removed:
                    self._queue.pop(name, None)
        self._synced = store.version

    def _next(self) -> _Push | None:
        """The newest thing not yet acknowledged."""
        store = self.store
        if self.mode == "manifest":
            key = f"{store.sidecar_id}:{store.version}"
            if store.version <= self.acked_version or key in self.failed:
                return None
            return _Push(key, store.body(), store.version)
        self._sync()
        gone: list[str] = []
        work = None
        for name in reversed(self._queue):  # newest first; held ones (their upload is on its way) stay queued
            e = store.entries.get(name)
            key = f"{store.sidecar_id}:{e.id}" if e is not None else ""
            if e is None or self.acked.get(name) == e.sha256 or key in self.failed:
                gone.append(name)
                continue
            if self.hold is not None and self.hold.holds(e.sha256):
                continue
            work = key, name, e
            break
        for name in gone:
            del self._queue[name]
        if work is not None:
            key, name, e = work
            artifact = self._artifact(e)
            body = json.dumps({"chatId": self.chat_id, "artifact": artifact}).encode()
            return _Push(key, body, store.version, name, e.sha256, artifact.get("url"))
        return None

    def _artifact(self, e: Entry) -> dict[str, Any]:
        """A cache-mode push's artifact: the entry, downloaded from object storage when it is there."""
        doc = self.store.entry_doc(e)
        if "storage_url" in doc:
            doc["url"] = doc["storage_url"]
        return doc

    async def run(self) -> None:
        await asyncio.to_thread(self._load)
        headers = CIMultiDict({"Content-Type": "application/json"})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.extend(self.extra_headers)  # --ui-push-header (a name may repeat): on every push, never logged
        timeout = aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                await self._loop(session)
        finally:
            self.flush()

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        attempt = 0
        while not self._stopping:
            work = self._next()
            if work is None:
                attempt = 0
                await self._persist(force=True)
                if self.hold is not None:
                    self.hold.ended.clear()  # before looking: a hold that ends from now on wakes the wait
                if self._next() is None:
                    await self._idle(3600)
                continue
            try:
                await self._post(session, work)
                attempt = 0
            except _Retry as r:
                wait = r.wait if r.wait is not None else backoff_delay(attempt, self.rng)
                left = self._last_call - time.monotonic() - LAST_TRY_MARGIN_S if self._last_call else 0.0
                if r.wait is None and left > 0:
                    wait = min(wait, left)  # settle's last chance: a backoff ending past it would waste it
                self.metrics.push_attempts.labels(outcome="retry").inc()
                log.info(
                    "push.retry",
                    key=work.key,
                    version=work.version,
                    attempt=attempt + 1,
                    wait_s=round(wait, 3),
                    reason=r.reason,
                )
                attempt += 1
                await asyncio.sleep(wait)  # then the newest wins: _next() looks again

    async def _idle(self, timeout: float) -> None:
        """Until the store has a new version or, with offload in cache mode, a hold ends."""
        if self.hold is None:
            await self.store.wait_change(timeout)
            return
        version = self.store.version
        waits = [asyncio.ensure_future(self._new_version(version)), asyncio.ensure_future(self.hold.ended.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _new_version(self, version: int) -> None:
        # A version check first: a commit between the caller's look and this task's start still counts.
        while self.store.version == version:
            await self.store.wait_change(3600)

    async def _post(self, session: aiohttp.ClientSession, push: _Push) -> None:
        key, version, name = push.key, push.version, push.name
        try:
            async with session.post(self.url, data=push.body, headers={"Idempotency-Key": key}) as resp:
                answer = await resp.read()
                status = resp.status
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _Retry(type(e).__name__) from None
        if 200 <= status < 300 and name is not None and _download_failed(push.url, answer):
            # The Janus cache route's way of saying its download failed: it echoes the url (SPEC 7).
            raise _Retry("the UI could not download the artifact", retry_after)
        if 200 <= status < 300:
            self.metrics.push_attempts.labels(outcome="ok").inc()
            if name is None or push.sha256 is None:
                self.acked_version = max(self.acked_version, version)
            else:
                self.acked[name] = push.sha256
                if self.deliveries is not None:
                    self.deliveries.acknowledged(push.sha256)  # the UI holds this content: counts as downloaded
            self._dirty = True
            await self._persist()
            log.info("push.ok", key=key, version=version, status=status, name=name)
            return
        if status in RETRYABLE or status >= 500:
            raise _Retry(f"HTTP {status}", retry_after)
        self.metrics.push_attempts.labels(outcome="failed").inc()
        self.failed.add(key)
        log.warning("push.failed", key=key, version=version, status=status, name=name)

    def stop(self) -> None:
        """No new attempt after this (the run task is cancelled too; this holds if a library eats that)."""
        self._stopping = True

    async def settle(self, timeout: float) -> None:
        """Give an unacknowledged push up to `timeout` seconds (never past the grace period)."""
        deadline = self._last_call = time.monotonic() + timeout
        while self._next() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
