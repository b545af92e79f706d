"""Publication (SPEC 3): watch the artifacts dir, wait for files to settle, hash off the loop, commit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sidecar.fsutil import (
    Signature,
    Transient,
    hash_beneath,
    list_tree,
    lstat_beneath,
    lstat_many,
    signature,
)
from sidecar.logs import Throttle, get_logger
from sidecar.manifest import Entry, Identity, ManifestStore, Rejected
from sidecar.media import mime_from_name
from sidecar.metrics import Metrics
from sidecar.retry import backoff
from sidecar.security import is_publishable_name
from sidecar.settle import Due, Settler
from sidecar.watch import relative, watch

__all__ = ("ArtifactWatcher", "Provenance", "relevant_name")

log = get_logger("sidecar.watcher")


def relevant_name(name: str) -> bool:
    """A name that could be published: valid UTF-8, no dot component, no temp suffix."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come through as surrogate escapes
        return False
    return is_publishable_name(name)


class ArtifactFilter:
    """Only paths that may be published or may hold publishable files; dot paths and temp names never."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.prefix = self.root.rstrip(os.sep) + os.sep

    def __call__(self, path: str) -> bool:
        # A prefix cut, not os.path.relpath: that splits both paths, quadratic down a deep chain.
        rel = relative(path, self.prefix)
        return rel is not None and relevant_name(rel)


@dataclasses.dataclass(frozen=True, slots=True)
class Provenance:
    """Where a materialized data URL came from; applies while the file keeps this content."""

    sha256: str
    mime_type: str
    origin: str
    declared_mime_type: str | None


class ArtifactWatcher:
    """Keeps the manifest equal to the set of settled, publishable regular files under the root."""

    def __init__(self, root: Path, store: ManifestStore, metrics: Metrics, *, settle: float, rescan: float) -> None:
        self.root = root
        self.store = store
        self.metrics = metrics
        self.settler = Settler(settle)
        self.rescan_interval = rescan
        self.provenance: dict[str, Provenance] = {}
        self.first_scan = asyncio.Event()
        self.failed: dict[str, Signature] = {}  # names whose current version could not be hashed
        self.unverified: set[str] = set()  # entries from the state file not hashed again yet
        self.prefix = str(root).rstrip(os.sep) + os.sep
        self.throttle = Throttle()

    # ---- the long-lived task -------------------------------------------------------

    def distrust(self) -> None:
        """Before the first scan: every entry from the state file is hashed again (its sha256 must be
        what is on disk for its name, SPEC 9); a data URL's provenance is kept only while it matches."""
        for e in self.store.entries.values():
            if e.source == "data-url" and e.origin is not None and e.name not in self.provenance:
                self.provenance[e.name] = Provenance(e.sha256, e.mime_type, e.origin, e.declared_mime_type)
        self.unverified = set(self.store.entries)

    async def run(self) -> None:
        if not self.first_scan.is_set():
            self.distrust()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.settler.run(self._publish_due, "watch.publish_failed"))
            await watch(
                self.root,
                ArtifactFilter(self.root),
                self.examine,
                self._rescan,
                interval=self.rescan_interval,
                first=self._first_scan,
            )

    async def _first_scan(self) -> None:
        await self.scan()
        self.first_scan.set()

    async def _rescan(self) -> None:
        await self.scan()

    # ---- examining paths -------------------------------------------------------------

    def nudge(self, name: str) -> None:
        """Someone asked for this name: look at it now, in case an event was missed."""
        try:
            st = lstat_beneath(self.root, name)
        except Transient:
            return  # the events and the rescans still see it
        if st is not None and stat.S_ISREG(st.st_mode):
            self._offer(name, st)

    def _offer(self, name: str, st: os.stat_result) -> None:
        """A regular file that differs from what is published becomes a candidate, unless this very
        version of it already failed to hash (unreadable): that one waits for a change."""
        entry = self.store.entries.get(name)
        if entry is not None and Identity.of(st) == entry.identity and name not in self.unverified:
            return
        self.unverified.discard(name)
        if self.failed.get(name) == signature(st):
            return
        self.failed.pop(name, None)
        self.settler.offer(name, st)

    async def examine(self, paths: Iterable[str]) -> None:
        """React to watcher events: publish candidates, removals, symlinks, directories. A new directory's
        contents come as paths of their own (TreeWatch lists them; polling reports them)."""
        removals: list[str] = []
        rejected_add: list[Rejected] = []
        rejected_remove: list[str] = []
        # A burst of events means thousands of lstat calls, and names thousands of levels deep cost
        # their length to check: both off the event loop.
        try:
            wanted, stats = await asyncio.to_thread(self._look, list(paths))
        except Transient as e:
            # Out of descriptors or memory: "missing" would be a lie. Reconcile once there is room.
            self._note_retry("examine", e)
            await self.scan()
            return
        for (path, rel), st in zip(wanted, stats, strict=True):
            if st is None:
                self.settler.drop(rel)
                self.failed.pop(rel, None)
                removals += self._names_at(rel)
                rejected_remove.append(path)
                continue
            if stat.S_ISLNK(st.st_mode):
                self.settler.drop(rel)
                removals += self._names_at(rel)
                rejected_add.append(Rejected(path, "symlink", "symbolic links are never published"))
            elif stat.S_ISDIR(st.st_mode):
                if rel in self.store.entries:  # a file that became a directory
                    removals.append(rel)
            elif stat.S_ISREG(st.st_mode):
                rejected_remove.append(path)
                self._offer(rel, st)
            else:  # FIFOs, sockets, devices: never published, never opened
                removals += self._names_at(rel)
        rejected_remove = [k for k in rejected_remove if k in self.store.rejected]
        await self._commit(removals=removals, rejected_add=rejected_add, rejected_remove=rejected_remove)

    def _look(self, paths: list[str]) -> tuple[list[tuple[str, str]], list[os.stat_result | None]]:
        """(path, name) of the paths that may be published, and their lstat (in a worker thread)."""
        wanted: list[tuple[str, str]] = []
        for path in paths:
            rel = relative(path, self.prefix)
            if rel is not None and relevant_name(rel):
                wanted.append((path, rel))
        return wanted, lstat_many(self.root, [rel for _, rel in wanted])

    def _note_retry(self, what: str, e: OSError) -> None:
        left_out = self.throttle.hit()
        if left_out is not None:
            log.warning("watch.retry_later", step=what, error=e.strerror, errno=e.errno, suppressed=left_out)

    def _names_at(self, rel: str) -> list[str]:
        """The published names at rel or below it (a removed directory takes its files along)."""
        prefix = rel + "/"
        return [n for n in self.store.entries if n == rel or n.startswith(prefix)]

    async def scan(self, *, deadline: float | None = None) -> None:
        """Full reconciliation with the disk: the safety net under the events (SPEC 3). A listing cut
        short by a temporary error (EMFILE...) changes nothing and is tried again after a backoff until it
        works (or `deadline`, monotonic, passes)."""
        attempt = 0
        while True:
            try:
                found = await asyncio.to_thread(list_tree, self.root)
                break
            except Transient as e:
                self._note_retry("scan", e)
                attempt += 1
                if deadline is not None and time.monotonic() >= deadline:
                    return
                await asyncio.sleep(backoff(attempt))
        on_disk: set[str] = set()
        links: set[str] = set()
        for name, st in found:
            if not relevant_name(name):
                continue
            if stat.S_ISLNK(st.st_mode):
                links.add(str(self.root / name))
            elif stat.S_ISREG(st.st_mode):
                on_disk.add(name)
                self._offer(name, st)
        removals = [n for n in self.store.entries if n not in on_disk]
        for n in removals:
            self.settler.drop(n)
        symlink_keys = {k for k, r in self.store.rejected.items() if r.reason == "symlink"}
        await self._commit(
            removals=removals,
            rejected_add=[Rejected(p, "symlink", "symbolic links are never published") for p in links - symlink_keys],
            rejected_remove=list(symlink_keys - links),
        )

    # ---- publishing --------------------------------------------------------------------

    async def _publish_due(self, due: Due) -> None:
        results = await asyncio.to_thread(lambda: [_hash(self.root, n, sig) for n, sig, _ in due])
        upserts: list[Entry] = []
        latencies: list[float] = []
        retry: list[str] = []
        for (name, sig, last_change), result in zip(due, results, strict=True):
            if isinstance(result, Transient):  # out of descriptors or memory: not an answer, try again
                self._note_retry("hash", result)
                self.settler.retry(name, sig, last_change)
                continue
            self.settler.succeeded(name)
            if result is None:  # changed while hashed, gone, unreadable, or no longer a regular file
                self.failed[name] = sig
                retry.append(str(self.root / name))
                continue
            sha, st = result
            upserts.append(self._entry(name, sha, st))
            latencies.append(max(0.0, time.time() - last_change))
        change = await self._commit(upserts=upserts)
        if change is not None:
            for lat in latencies:
                self.metrics.publish_latency.observe(lat)
        if retry:  # look again: a change is a new candidate, a removal a removal, the same file waits
            await self.examine(retry)

    def _entry(self, name: str, sha: str, st: os.stat_result) -> Entry:
        prov = self.provenance.get(name)
        if prov is not None and prov.sha256 != sha:
            prov = None
        return Entry(
            name=name,
            sha256=sha,
            size_bytes=st.st_size,
            mime_type=prov.mime_type if prov else mime_from_name(name),
            mtime=st.st_mtime,
            created_at=time.time(),
            identity=Identity.of(st),
            source="data-url" if prov else "file",
            origin=prov.origin if prov else None,
            declared_mime_type=prov.declared_mime_type if prov else None,
        )

    async def publish_known(
        self, name: str, *, sha256: str, mime_type: str, origin: str, declared_mime_type: str | None
    ) -> None:
        """Publish a file the sidecar itself wrote and hashed (a materialized data URL from `origin`)
        without settling; its type and origin stay with it while it keeps this content."""
        self.provenance[name] = Provenance(sha256, mime_type, origin, declared_mime_type)
        try:
            result = await asyncio.to_thread(hash_beneath, self.root, name, None)
        except Transient as e:
            # The file is there and settled: the settler publishes it (with this provenance) later.
            self._note_retry("hash", e)
            with contextlib.suppress(OSError):
                st = await asyncio.to_thread(os.lstat, self.root / name)
                self.settler.again(name, signature(st), time.time(), backoff(1))
            return
        if result is not None:
            sha, st = result
            self.settler.drop(name)
            await self._commit(upserts=[self._entry(name, sha, st)])

    async def _commit(self, **kw: Any) -> Any:
        change = await self.store.commit(**kw)
        if change is None:
            return None
        for e in change.upserted:
            self.metrics.published.inc()
            log.info(
                "artifact.published", name=e.name, sha256=e.sha256, size_bytes=e.size_bytes, version=change.version
            )
        for name in change.removed:
            self.metrics.removed.inc()
            log.info("artifact.removed", name=name, version=change.version)
        return change

    async def flush(self, timeout: float) -> None:
        """Finalization: rescan, then wait (bounded) until nothing is settling or being published."""
        deadline = time.monotonic() + timeout
        await self.scan(deadline=deadline)
        await self.settler.drain(deadline)


def _hash(root: Path, name: str, sig: Signature) -> tuple[str, os.stat_result] | Transient | None:
    try:
        return hash_beneath(root, name, sig)
    except Transient as e:
        return e
