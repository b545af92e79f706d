"""Object-storage offload (SPEC 11): every published sha256 uploaded once, in the background, to an S3-compatible
store; a confirmed upload gives the manifest entries of that content a presigned `storage_url`.

The store never waits on this module: uploads run in their own tasks, and a store that is down or refuses only
shows as `upload.retry` / `upload.failed` lines, `sidecar_uploads_total{outcome}` and entries without the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import stat
import time
from collections.abc import Callable

from sidecar.config import Settings
from sidecar.fsutil import atomic_write_bytes, open_beneath
from sidecar.links import StorageLinks
from sidecar.logs import get_logger
from sidecar.manifest import Entry, ManifestStore
from sidecar.metrics import Metrics
from sidecar.retry import backoff_delay, exponential
from sidecar.s3 import MAX_PRESIGN_S, Bucket, Changed, Down, Refused, Rejected, open_bucket

__all__ = ("Offloader",)

log = get_logger("sidecar.offload")

WORKERS = 4  # uploads in flight at once
REFUSED_RETRY_S = 60.0  # the store refused us as a whole (credentials, bucket): ask again this often, no faster
CHANGED_RETRY_S = 1.0  # the file no longer held the published content: look again after this, doubling to a minute
PUSH_HOLD_S = 10.0  # a cache-mode push waits this long at most for its storage_url, then goes with the sidecar's URL
KEY_BUSY_RETRY_S = 0.5  # another content is being uploaded under the same key
SAVE_BATCH_S = 0.05  # confirmations that land together share one write of uploads.json and one manifest batch
STATE_FILE = "uploads.json"


@dataclasses.dataclass(slots=True)
class _Content:
    """What the offloader knows of one content (sha256)."""

    key: str | None = None  # confirmed in the store under this key: persisted before anyone sees it
    name: str = ""  # a name it was published under ("": none any more)
    unsure: bool = False  # may have reached the store before the last stop: HeadObject first
    queued: bool = False
    busy: bool = False
    seen_at: float | None = None  # when it was first to be uploaded (a push hold ends PUSH_HOLD_S after)
    let_go: bool = False  # an attempt failed: cache-mode pushes no longer wait for it
    rejected: bool = False  # refused for good (or it broke a worker): not tried again
    changed: int = 0  # times in a row its file no longer held the published content


_NOTHING = _Content()  # what is known of a content never seen: read it, never change it


class Offloader:
    """One background job: watch the manifest, upload what is not in the store yet, keep presigned URLs fresh.

    The links it signs go to `links` (shown by the store, counted by the deliveries); `on_stored` is called
    when confirmations became visible, `on_let_go` when a cache-mode push hold ended without a new version."""

    def __init__(
        self,
        settings: Settings,
        store: ManifestStore,
        metrics: Metrics,
        links: StorageLinks,
        on_stored: Callable[[], None] = lambda: None,
        on_let_go: Callable[[], None] = lambda: None,
    ) -> None:
        assert settings.s3_bucket is not None
        self.bucket = settings.s3_bucket
        self.endpoint = settings.s3_endpoint_url
        self.region = settings.s3_region
        self.prefix = settings.s3_prefix  # None: `<chat_id or sidecar_id>/`, once the store is loaded
        self.root = settings.artifacts_dir.absolute()
        self.ttl = min(settings.signed_url_ttl, MAX_PRESIGN_S)
        self.store = store
        self.metrics = metrics
        self.links = links
        self.on_stored = on_stored
        self.on_let_go = on_let_go
        # Only cache-mode pushes wait for a storage_url; without them no hold is timed or ended.
        self.holding = bool(settings.ui_push_url) and settings.ui_push_mode == "cache"
        self.started = time.monotonic()  # content never queued (confirmed before, say) is held from here
        self.path = settings.state_dir.absolute() / STATE_FILE
        self.contents: dict[str, _Content] = {}  # sha256 -> what is known of it
        self.by_key: dict[str, str] = {}  # key -> sha256 of the confirmed object there
        self.multipart: dict[str, str] = {}  # upload id -> key: started, not completed nor aborted (persisted)
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.keys_busy: set[str] = set()
        self.streak = 0  # store-wide failures in a row
        self.paused_until = 0.0
        self.rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self.s3: Bucket | None = None
        self._probe = asyncio.Lock()
        self._relink: set[str] = set()  # sha256s whose storage_url comes or goes with the next flush
        self._flushing: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ---- what the rest of the sidecar asks --------------------------------------------------

    def holds(self, sha256: str) -> bool:
        """Cache-mode pushes wait for the storage_url only while the store answers, this upload has not failed,
        and for PUSH_HOLD_S at most (a big file or a slow store: the UI gets it from the sandbox meanwhile)."""
        c = self.contents.get(sha256, _NOTHING)
        if self._stopping or self.streak or self.links.stored(sha256) or c.let_go or c.rejected:
            return False
        return time.monotonic() - (self.started if c.seen_at is None else c.seen_at) < PUSH_HOLD_S

    def stop(self) -> None:
        self._stopping = True

    def _content(self, sha: str) -> _Content:
        c = self.contents.get(sha)
        if c is None:
            c = self.contents[sha] = _Content()
        return c

    # ---- persistence -------------------------------------------------------------------------

    def _read(self) -> tuple[dict[str, str], dict[str, str]]:
        """uploads.json (blocking): (sha256 -> key of the confirmed objects, upload id -> key of multiparts)."""
        objects: dict[str, str] = {}
        multipart: dict[str, str] = {}
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            doc = None
        # Confirmations hold for the store they were made with; keys are kept whole, so a new prefix is fine.
        if isinstance(doc, dict) and (doc.get("bucket"), doc.get("endpoint")) == (self.bucket, self.endpoint):
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                objects = {str(s): str(k) for s, k in dict(doc.get("objects", {})).items()}
                multipart = {str(u): str(k) for u, k in dict(doc.get("multipart", {})).items()}
        return objects, multipart

    def _state_doc(self) -> bytes:
        doc = {
            "schema": 1,
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "objects": {sha: c.key for sha, c in self.contents.items() if c.key is not None},
            "multipart": self.multipart,
        }
        return json.dumps(doc).encode()

    def _flush(self) -> asyncio.Task[None]:
        """Persist soon (one write for every change until then), then presign and show what came or went."""
        if self._flushing is None or self._flushing.done():
            self._flushing = task = asyncio.create_task(self._write())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return self._flushing

    async def _write(self) -> None:
        await asyncio.sleep(SAVE_BATCH_S)
        async with self._write_lock:
            self._flushing = None  # what changes from now on goes into the next write
            doc, relink, self._relink = self._state_doc(), self._relink, set()
            try:
                await asyncio.to_thread(atomic_write_bytes, self.path, doc)
                for sha in relink:
                    key = self.contents.get(sha, _NOTHING).key
                    url = await self._presign(key) if key is not None else None
                    if url is not None and self.contents.get(sha, _NOTHING).key != key:
                        continue  # the key went to other bytes meanwhile: that change relinks it
                    if url is not None:
                        self.links.put(sha, url)
                    elif not self.links.drop(sha) and key is not None:
                        self._relink.add(sha)  # could not sign it now: again in a while
                        asyncio.get_running_loop().call_later(5.0, self._flush)
                names = [n for n, e in self.store.entries.items() if e.sha256 in relink]
                await self.store.commit(relinked=names)
                self.links.show(relink)
            except OSError as e:  # a full state disk: nothing is shown before it is saved; try again
                log.warning("upload.state_unsaved", error=str(e))
                self._relink |= relink
                asyncio.get_running_loop().call_later(1.0, self._flush)
                return
        self.on_stored()

    # ---- the job -------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.holding:  # the holds of content never queued end then, whatever becomes of this job
            asyncio.get_running_loop().call_later(PUSH_HOLD_S, self.on_let_go)
        objects, self.multipart = await asyncio.to_thread(self._read)
        for sha, key in objects.items():
            self._content(sha).key = key
        self.by_key = {k: s for s, k in objects.items()}
        for e in self.store.entries.values():
            c = self._content(e.sha256)
            c.unsure = c.key is None
        if self.prefix is None:
            self.prefix = f"{self.store.chat_id or self.store.sidecar_id}/"
        async with open_bucket(self.bucket, self.endpoint, self.region, self.ttl) as bucket:
            self.s3 = bucket
            log.info("upload.started", bucket=self.bucket, prefix=self.prefix, endpoint=self.endpoint)
            jobs = [self._schedule(), self._refresh(), self._abort_leftovers(dict(self.multipart))]
            tasks = [asyncio.create_task(j) for j in jobs] + [
                asyncio.create_task(self._worker()) for _ in range(WORKERS)
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.wait(tasks, timeout=1.1)
                if self._background:  # the last confirmations: saved now, not uploaded again after a restart
                    await asyncio.wait(self._background, timeout=0.4)

    async def _schedule(self) -> None:
        """Every content published (and, after a restart, still published) gets uploaded or linked."""
        seen: int | None = None
        while not self._stopping:
            changes = None if seen is None else self.store.changes_since(seen)
            fresh = list(self.store.entries.values()) if changes is None else [e for c in changes for e in c.upserted]
            seen = self.store.version
            for e in fresh:
                c = self._content(e.sha256)
                c.name = c.name or e.name
                if c.key is not None:
                    if not self.links.stored(e.sha256):
                        self._relink.add(e.sha256)
                        self._flush()
                else:
                    self._enqueue(e.sha256)
            await self.store.wait_change(3600)

    def _enqueue(self, sha: str) -> None:
        c = self._content(sha)
        if c.key is not None or c.queued or c.busy or c.rejected or self._stopping:
            return
        if self.holding and c.seen_at is None:
            c.seen_at = time.monotonic()
            asyncio.get_running_loop().call_later(PUSH_HOLD_S, self._let_go, sha)
        c.queued = True
        self.queue.put_nowait(sha)

    def _entry_for(self, sha: str) -> Entry | None:
        """A published entry with this content (the name it was first seen under, if it still has it)."""
        c = self._content(sha)
        e = self.store.entries.get(c.name)
        if e is None or e.sha256 != sha:
            e = next((x for x in self.store.entries.values() if x.sha256 == sha), None)
            c.name = e.name if e is not None else ""
        return e

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            sha = await self.queue.get()
            c = self._content(sha)
            c.queued = False
            if c.key is not None or c.busy:
                continue
            c.busy = True
            try:
                while (left := self.paused_until - time.monotonic()) > 0:
                    await asyncio.sleep(left)
                e = self._entry_for(sha)
                if e is None:
                    continue
                # While the store is failing, one request at a time finds out whether it is back.
                async with self._probe if self.streak else contextlib.nullcontext():
                    if self.paused_until > time.monotonic():
                        loop.call_soon(self._enqueue, sha)
                        continue
                    await self._attempt(e)
            except Exception:  # one artifact never stops the others (SPEC 9)
                log.exception("upload.error", sha256=sha)
                c.rejected = True
            finally:
                c.busy = False

    async def _attempt(self, e: Entry) -> None:
        loop = asyncio.get_running_loop()
        content = self._content(e.sha256)
        assert self.prefix is not None
        key = self.prefix + e.name
        if key in self.keys_busy:
            loop.call_later(KEY_BUSY_RETRY_S, self._enqueue, e.sha256)
            return
        self.keys_busy.add(key)
        try:
            outcome, parts = await self._store_object(e, key)
        except Changed as changed:
            self.metrics.uploads.labels(outcome="changed").inc()
            log.info("upload.skipped", name=e.name, key=key, reason=changed.reason)
            self._let_go(e.sha256)
            content.changed += 1
            loop.call_later(exponential(content.changed - 1, CHANGED_RETRY_S, 64.0), self._enqueue, e.sha256)
        except Rejected as r:
            self.metrics.uploads.labels(outcome="failed").inc()
            log.warning("upload.failed", name=e.name, key=key, reason=r.reason, retry=False)
            content.rejected = True
            self._let_go(e.sha256)
        except (Down, Refused) as f:
            self.streak += 1
            refused = isinstance(f, Refused)
            wait = REFUSED_RETRY_S if refused else backoff_delay(self.streak - 1, self.rng)
            self.paused_until = time.monotonic() + wait
            self.metrics.uploads.labels(outcome="failed" if refused else "retry").inc()
            event, level = ("upload.failed", log.warning) if refused else ("upload.retry", log.info)
            level(event, name=e.name, key=key, reason=f.reason, attempt=self.streak, wait_s=round(wait, 3))
            self._let_go(e.sha256)
            loop.call_soon(self._enqueue, e.sha256)
        else:
            self.streak, self.paused_until = 0, 0.0
            content.changed = 0
            self.metrics.uploads.labels(outcome=outcome).inc()
            log.info("upload.ok", name=e.name, key=key, size=e.size_bytes, parts=parts, found=outcome == "found")
        finally:
            self.keys_busy.discard(key)

    def _let_go(self, sha: str) -> None:
        c = self._content(sha)
        if not self.links.stored(sha) and (not c.let_go or self.streak == 1):
            c.let_go = True
            if self.holding:
                self.on_let_go()  # a cache-mode push that waited for this upload goes now

    # ---- one object ----------------------------------------------------------------------------

    async def _store_object(self, e: Entry, key: str) -> tuple[str, int]:
        """Upload (or find) e's content under key: ("ok" | "found", parts). Raises an s3.Failure."""
        assert self.s3 is not None
        c = self._content(e.sha256)
        if c.unsure:
            if await self.s3.has(key, e.sha256):
                self._confirm(e.sha256, key)
                return "found", 0
            c.unsure = False
        old = self.by_key.get(key)
        if old is not None and old != e.sha256:
            # This key's object is about to hold other bytes: its old content is no longer stored there.
            del self.by_key[key]
            self._content(old).key = None
            self._relink.add(old)
            await self._flush()
            asyncio.get_running_loop().call_soon(self._enqueue, old)  # still published elsewhere: its own key
        try:
            fd = open_beneath(self.root, e.name)
        except OSError as err:
            raise Changed(f"cannot open: {err.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != e.size_bytes:
                raise Changed("not the published file any more")
            parts, size = await self.s3.upload(fd, e, key, self._started, self._ended)
        finally:
            os.close(fd)
        self.metrics.upload_bytes.inc(size)
        self._confirm(e.sha256, key)
        return "ok", parts

    async def _started(self, upload_id: str, key: str) -> None:
        self.multipart[upload_id] = key
        await self._flush()

    def _ended(self, upload_id: str) -> None:
        if self.multipart.pop(upload_id, None) is not None:
            self._flush()

    async def _abort_leftovers(self, leftovers: dict[str, str]) -> None:
        """Multipart uploads a SIGKILL interrupted: abort them (the content is uploaded again), until done."""
        while leftovers and not self._stopping:
            assert self.s3 is not None
            for upload_id, key in list(leftovers.items()):
                if await self.s3.abort(upload_id, key):
                    del leftovers[upload_id]
                    self._ended(upload_id)
                    log.info("upload.aborted", key=key, upload_id=upload_id)
            if leftovers:
                await asyncio.sleep(REFUSED_RETRY_S / 2)

    def _confirm(self, sha: str, key: str) -> None:
        """Confirmed: shown (storage_url, delivered) once uploads.json has it, in the next flush."""
        c = self._content(sha)
        c.key, c.unsure = key, False
        self.by_key[key] = sha
        self._relink.add(sha)
        self._flush()

    # ---- presigned URLs ----------------------------------------------------------------------

    async def _presign(self, key: str) -> str | None:
        from botocore.exceptions import BotoCoreError

        assert self.s3 is not None
        try:
            return await self.s3.presign(key)
        except BotoCoreError as e:  # credentials that could not be refreshed: tried again by _refresh
            log.warning("upload.presign_failed", key=key, error=type(e).__name__)
            return None

    async def _refresh(self) -> None:
        """Re-sign links older than half their life: a URL read from the manifest is good for ttl/2 at least."""
        while not self._stopping:
            await asyncio.sleep(max(1.0, min(60.0, self.ttl / 8)))
            current = {e.sha256 for e in self.store.entries.values()}
            now = time.monotonic()
            for i, (sha, made) in enumerate(self.links.signed()):
                if sha not in current:
                    self.links.drop(sha)  # unpublished; linked again if it comes back
                elif now - made > self.ttl / 2 and (key := self.contents.get(sha, _NOTHING).key) is not None:
                    url = await self._presign(key)
                    if url is not None and self.contents.get(sha, _NOTHING).key == key:  # not reassigned meanwhile
                        self.links.put(sha, url)
                if i % 100 == 99:
                    await asyncio.sleep(0)
