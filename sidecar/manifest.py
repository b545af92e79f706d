"""The manifest: published artifacts and refusals, versioned, persisted atomically in the state dir."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from sidecar.fsutil import atomic_write_bytes, is_transient
from sidecar.logs import Throttle, get_logger
from sidecar.media import artifact_type, mime_from_name
from sidecar.retry import backoff
from sidecar.security import encode_path, is_publishable_name, signed_query
from sidecar.subscribers import Subscribers

__all__ = (
    "Change",
    "Entry",
    "Identity",
    "ManifestStore",
    "Rejected",
    "State",
    "StorageUrls",
    "rfc3339",
)

State = Literal["running", "finalizing", "final"]
STATE_FILE = "manifest.json"
log = get_logger("sidecar.manifest")
CHANGE_LOG = 512  # batches kept for SSE resume (SPEC 5 asks for at least the last 256 changes)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state_shape_ok(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("sidecar_id"), str)
        and isinstance(doc.get("version"), int)
        and isinstance(doc.get("entries", []), list)
        and isinstance(doc.get("rejected", []), list)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """What was hashed: a served file must still be exactly this inode, size and mtime."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    name: str
    sha256: str
    size_bytes: int
    mime_type: str
    mtime: float
    created_at: float
    identity: Identity
    source: Literal["file", "data-url"] = "file"
    origin: str | None = None
    declared_mime_type: str | None = None
    path: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", encode_path(self.name))

    @property
    def id(self) -> str:
        return "artf_" + self.sha256[:16]

    def public(self) -> dict[str, Any]:
        """The SPEC 6 fields that do not depend on settings (url and ttl are added by the store)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "type": artifact_type(self.mime_type),
            "display_name": self.name.rsplit("/", 1)[-1],
            "name": self.name,
            "path": self.path,
            "url": None,
            "mime_type": self.mime_type,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "created_at": rfc3339(self.created_at),
            "modified_at": rfc3339(self.mtime),
            "ttl_seconds": 0,
            "source": self.source,
            "origin": self.origin,
        }
        if self.declared_mime_type:
            doc["declared_mime_type"] = self.declared_mime_type
        return doc

    def same_publication(self, other: Entry) -> bool:
        """True when nothing a client can see differs (the inode may have changed)."""
        return (
            self.sha256 == other.sha256
            and self.mtime == other.mtime
            and self.mime_type == other.mime_type
            and self.source == other.source
            and self.origin == other.origin
            and self.declared_mime_type == other.declared_mime_type
        )

    def to_state(self) -> dict[str, Any]:
        i = self.identity
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "mime_type": self.mime_type,
            "mtime": self.mtime,
            "created_at": self.created_at,
            "identity": [i.dev, i.ino, i.size, i.mtime_ns],
            "source": self.source,
            "origin": self.origin,
            "declared_mime_type": self.declared_mime_type,
        }

    @classmethod
    def from_state(cls, doc: dict[str, Any]) -> Entry:
        dev, ino, size, mtime_ns = doc["identity"]
        return cls(
            name=doc["name"],
            sha256=doc["sha256"],
            size_bytes=int(doc["size_bytes"]),
            mime_type=doc["mime_type"],
            mtime=float(doc["mtime"]),
            created_at=float(doc["created_at"]),
            identity=Identity(dev, ino, size, mtime_ns),
            source=doc.get("source", "file"),
            origin=doc.get("origin"),
            declared_mime_type=doc.get("declared_mime_type"),
        )


def _distrusted(e: Entry) -> Entry | None:
    """A stored entry is a claim (the state file may have been edited): a name that could never be
    published is dropped, the type is recomputed from the name (a data URL's declared type that the
    name cannot carry, a `.bin`, comes back only when its source is scanned again), the size is the
    one hashed. The watcher hashes every stored entry again at start (ArtifactWatcher.distrust)."""
    if not isinstance(e.name, str) or not is_publishable_name(e.name) or not isinstance(e.sha256, str):
        return None
    if not all(type(v) is int for v in dataclasses.astuple(e.identity)):
        return None
    return dataclasses.replace(e, mime_type=mime_from_name(e.name), size_bytes=e.identity.size)


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    origin: str
    reason: str
    detail: str
    offset: int | None = None

    @property
    def key(self) -> str:
        return self.origin if self.offset is None else f"{self.origin}#{self.offset}"

    def public(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"origin": self.origin, "reason": self.reason, "detail": self.detail}
        if self.offset is not None:
            doc["offset"] = self.offset
        return doc


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One committed batch: the version it reached and what it changed (for SSE and pushes)."""

    from_version: int
    version: int
    upserted: tuple[Entry, ...]  # as they were published in this batch
    removed: tuple[str, ...]
    state_changed: bool


class StorageUrls(Protocol):
    """Where object storage holds a content (SPEC 11); sidecar.links.StorageLinks, filled by the offloader."""

    def url(self, sha256: str) -> str | None:
        """A presigned GET URL of this content, or None while it is not (or no longer) in the store."""
        ...


class ManifestStore:
    """The single writer of the manifest. Every mutation goes through `commit`, which persists before
    anything becomes visible, so a SIGKILL never loses what a client has seen."""

    def __init__(
        self,
        state_dir: Path,
        *,
        chat_id: str | None = None,
        public_base_url: str | None = None,
        auth_token: str | None = None,
        ttl: int = 3600,
        storage: StorageUrls | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.chat_id = chat_id
        self.public_base_url = public_base_url
        self.auth_token = auth_token
        self.ttl = ttl
        self.sidecar_id = ""
        self.version = 0
        self.state: State = "running"
        self.entries: dict[str, Entry] = {}
        self.rejected: dict[str, Rejected] = {}
        self.changes: deque[Change] = deque(maxlen=CHANGE_LOG)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._cache: tuple[int, float, bytes] | None = None
        self._throttle = Throttle()
        self.storage = storage  # object-storage offload (SPEC 11): the store only shows its links
        self.subscribers = Subscribers()  # the event streams report here what they were sent (SPEC 8 step 4)

    # ---- persistence -------------------------------------------------------------------

    def load(self) -> None:
        """Read the state dir (blocking, at start only): sidecar_id, version and entries survive restarts."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / STATE_FILE
        try:
            doc = json.loads(path.read_bytes())
            if doc is not None and not _state_shape_ok(doc):
                raise ValueError("not a sidecar state file")
        except FileNotFoundError:
            doc = None
        except (OSError, ValueError):
            # A corrupt state file must not stop the daemon: keep it aside, start over with a new version line.
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(f"{STATE_FILE}.corrupt-{int(time.time())}"))
            doc = None
        if doc is None:
            self.sidecar_id = str(uuid.uuid4())
            atomic_write_bytes(path, json.dumps(self._state_doc(0, self.entries, self.rejected, "running")).encode())
            return
        self.sidecar_id = str(doc["sidecar_id"])
        self.version = int(doc["version"])
        self.state = doc.get("state", "running")
        for item in doc.get("entries", []):
            with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
                e = _distrusted(Entry.from_state(item))
                if e is not None:
                    self.entries[e.name] = e
        for item in doc.get("rejected", []):
            with contextlib.suppress(KeyError, TypeError):
                r = Rejected(item["origin"], item["reason"], item.get("detail", ""), item.get("offset"))
                self.rejected[r.key] = r

    def _state_doc(
        self, version: int, entries: dict[str, Entry], rejected: dict[str, Rejected], state: State
    ) -> dict[str, Any]:
        return {
            "schema": 1,
            "sidecar_id": self.sidecar_id,
            "version": version,
            "state": state,
            "entries": [e.to_state() for e in entries.values()],
            "rejected": [r.public() for r in rejected.values()],
        }

    # ---- mutation ----------------------------------------------------------------------

    async def commit(
        self,
        *,
        upserts: Iterable[Entry] = (),
        removals: Iterable[str] = (),
        rejected_add: Iterable[Rejected] = (),
        rejected_remove: Iterable[str] = (),
        state: State | None = None,
        relinked: Iterable[str] = (),
    ) -> Change | None:
        """Apply a batch; every visible difference is one version step. Returns None when nothing changed.

        `relinked` names entries whose document changed while their file did not (their `storage_url`
        came or went): each is a step and is listed as upserted, so pollers, SSE and pushes see it."""
        async with self._lock:
            entries = dict(self.entries)
            rejected = dict(self.rejected)
            steps = 0
            upserted: list[Entry] = []
            removed: list[str] = []
            silent = False
            for e in upserts:
                old = entries.get(e.name)
                if old is not None and old.same_publication(e):
                    if old.identity != e.identity:
                        entries[e.name] = dataclasses.replace(e, created_at=old.created_at)
                        silent = True
                    continue
                if old is not None:
                    e = dataclasses.replace(e, created_at=old.created_at)
                entries[e.name] = e
                upserted.append(e)
                steps += 1
            for name in removals:
                if entries.pop(name, None) is not None:
                    removed.append(name)
                    steps += 1
            fresh = {u.name for u in upserted}
            for name in dict.fromkeys(relinked):
                if name in entries and name not in fresh:  # gone, or already a step of this batch
                    upserted.append(entries[name])
                    steps += 1
            for key in rejected_remove:
                if rejected.pop(key, None) is not None:
                    steps += 1
            for r in rejected_add:
                if rejected.get(r.key) != r:
                    rejected[r.key] = r
                    steps += 1
            new_state = self.state
            if state is not None and state != self.state:
                new_state = state
                steps += 1
            if steps == 0 and not silent:
                return None
            version = self.version + steps
            doc = json.dumps(self._state_doc(version, entries, rejected, new_state)).encode()
            await self._persist(doc)
            state_changed = new_state != self.state
            self.entries, self.rejected, self.state = entries, rejected, new_state
            if steps == 0:
                return None
            change = Change(self.version, version, tuple(upserted), tuple(removed), state_changed)
            self.version = version
            self.changes.append(change)
            self._cache = None
            event, self._changed = self._changed, asyncio.Event()  # wakes every wait_change
            event.set()
            return change

    async def _persist(self, doc: bytes) -> None:
        """Write the state file; a temporary error (EMFILE, ENOMEM, EIO...) is retried after a backoff,
        under the lock: nothing becomes visible before it is on disk (SPEC 9: delayed, never lost)."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(atomic_write_bytes, self.state_dir / STATE_FILE, doc)
                return
            except OSError as e:
                if not is_transient(e):
                    raise
                attempt += 1
                left_out = self._throttle.hit()
                if left_out is not None:
                    log.warning("manifest.persist_retry", error=e.strerror, attempt=attempt, suppressed=left_out)
                await asyncio.sleep(backoff(attempt))

    # ---- reading -----------------------------------------------------------------------

    async def wait_change(self, timeout: float) -> bool:
        """Wait for the next commit; False on timeout."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races the event.
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def entry_doc(self, e: Entry, now: float | None = None) -> dict[str, Any]:
        doc = e.public()
        doc["ttl_seconds"] = self.ttl
        if self.public_base_url:
            url = self.public_base_url + e.path
            if self.auth_token:
                url += "?" + signed_query(self.auth_token, e.path, self.ttl, now)
            doc["url"] = url
        if self.storage is not None and (link := self.storage.url(e.sha256)) is not None:
            doc["storage_url"] = link
        return doc

    def document(self) -> dict[str, Any]:
        now = time.time()
        return {
            "schema": 1,
            "sidecar_id": self.sidecar_id,
            "chat_id": self.chat_id,
            "version": self.version,
            "state": self.state,
            "generated_at": rfc3339(now),
            "artifacts": [self.entry_doc(self.entries[n], now) for n in sorted(self.entries)],
            "rejected": [r.public() for _, r in sorted(self.rejected.items())],
        }

    def body(self) -> bytes:
        """The manifest as JSON bytes, cached per version (re-made now and then so signed URLs stay fresh)."""
        now = time.monotonic()
        cached = self._cache
        if cached is not None and cached[0] == self.version and now - cached[1] < min(60.0, self.ttl / 4):
            return cached[2]
        body = json.dumps(self.document(), ensure_ascii=False, separators=(",", ":")).encode()
        self._cache = (self.version, now, body)
        return body

    def changes_since(self, version: int) -> list[Change] | None:
        """The batches after `version`, or None when they are no longer all kept."""
        if version >= self.version:
            return []
        kept = [c for c in self.changes if c.version > version]
        if not kept or kept[0].from_version > version:
            return None
        return kept
