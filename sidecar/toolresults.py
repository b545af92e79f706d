"""Tool-results recovery (SPEC 4): watch the roots, and once a matching file is stable, materialize its data URLs.

Imports no other async part: what it materializes reaches the manifest through the `Publish` callable it
is given (the artifacts watcher's `publish_known`, wired in sidecar.lifecycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

from sidecar.config import Settings
from sidecar.fsutil import Signature, Transient, is_transient, list_tree, signature
from sidecar.logs import Throttle, get_logger
from sidecar.manifest import ManifestStore, Rejected
from sidecar.metrics import Metrics
from sidecar.retry import backoff
from sidecar.settle import Due, Settler
from sidecar.watch import relative, watch

__all__ = ("Publish", "ToolResultsWatcher", "compile_glob")

log = get_logger("sidecar.toolresults")

ROOT_POLL_S = 1.0  # how often a missing root is looked for (one stat; no watch can see it appear)
WATCH_SETTLE_S = 0.5  # by then the watch is registered: one more scan closes the gap before it


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob over POSIX relative paths: `**/` spans any number of directories, `*` and `?` one segment."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class Publish(Protocol):
    """Publish a file the sidecar wrote and hashed itself (a materialized data URL from `origin`) at once,
    with its provenance: ArtifactWatcher.publish_known."""

    def __call__(
        self, name: str, *, sha256: str, mime_type: str, origin: str, declared_mime_type: str | None
    ) -> Awaitable[None]: ...


class ToolResultsWatcher:
    """Materializes the data URLs of every settled file matching the glob under the tool-results roots."""

    def __init__(self, settings: Settings, store: ManifestStore, publish: Publish, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.publish = publish
        self.metrics = metrics
        self.roots = [r.absolute() for r in settings.tool_results_dirs]
        self.glob = compile_glob(settings.tool_results_glob)
        self.settler = Settler(settings.settle_s)
        self.done: dict[str, Signature] = {}  # what each file looked like after we processed (and maybe rewrote) it
        self.throttle = Throttle()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.settler.run(self._process_due, "datauri.settle_failed"))
            for root in self.roots:
                tg.create_task(self._watch_root(root))

    def _matches(self, root: Path, path: str) -> bool:
        rel = relative(path, f"{root}{os.sep}")
        return rel is not None and bool(self.glob.match(rel))

    async def _watch_root(self, root: Path) -> None:
        while not root.is_dir():
            await asyncio.sleep(ROOT_POLL_S)
        log.debug("toolresults.watching", root=str(root))

        async def handle(paths: list[str]) -> None:
            for path in paths:
                if self._matches(root, path):
                    self._offer(path)
                elif os.path.isdir(path) and not os.path.islink(path):
                    await self.scan_root(root, Path(path))

        async def rescan() -> None:
            await self.scan_root(root)

        async def first() -> None:
            # A file written before the watch is really registered (it registers in a thread) is caught
            # by the second scan, and anything missed later by the periodic rescan.
            await self.scan_root(root)
            await asyncio.sleep(WATCH_SETTLE_S)
            await self.scan_root(root)

        await watch(root, None, handle, rescan, interval=self.settings.rescan_interval, first=first)

    def _offer(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            self.settler.drop(path)
            return
        if stat.S_ISREG(st.st_mode) and self.done.get(path) != signature(st):
            self.settler.offer(path, st)

    async def scan_root(self, root: Path, below: Path | None = None) -> None:
        """Offer every matching file; a listing cut short by a temporary error is tried again after a
        backoff (out of descriptors, a partial listing would miss files until the next rescan)."""
        base = below or root
        attempt = 0
        while True:
            try:
                found = await asyncio.to_thread(list_tree, base)
                break
            except Transient as e:
                attempt += 1
                self._note_retry(str(base), e.strerror)
                await asyncio.sleep(backoff(attempt))
        for rel, st in found:
            path = str(base / rel)
            if stat.S_ISREG(st.st_mode) and self._matches(root, path) and self.done.get(path) != signature(st):
                self.settler.offer(path, st)

    async def scan(self) -> None:
        for root in self.roots:
            if root.is_dir():
                await self.scan_root(root)

    async def _process_due(self, due: Due) -> None:
        for path, sig, last_change in due:
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if signature(st) != sig:
                self.settler.offer(path, st)
                continue
            try:
                finished = await self.process(Path(path))
            except Exception:
                log.exception("datauri.source_failed", origin=path)
                finished = True
            if finished:
                self.settler.succeeded(path)
            else:  # a temporary error: the same version again after a backoff, not at the next rescan
                self.settler.retry(path, sig, last_change)

    def _note_retry(self, origin: str, error: str | None) -> None:
        left_out = self.throttle.hit()
        if left_out is not None:
            log.warning("datauri.retry_later", origin=origin, reason="temporary", error=error, suppressed=left_out)

    async def process(self, path: Path) -> bool:
        """Materialize one source file; False when a temporary error (EMFILE...) means it must be
        processed again soon (its payloads are not refused for it)."""
        from sidecar.materialize import materialize_file  # the scanner is only loaded once a file needs it

        try:
            outcomes = await asyncio.to_thread(materialize_file, path, self.settings)
        except OSError as e:
            if is_transient(e):
                self._note_retry(str(path), e.strerror)
                return False
            log.warning("datauri.unreadable", origin=str(path), error=str(e))
            return True
        origin = str(path)
        transient = [o for o in outcomes if o.transient]
        if transient:
            self._note_retry(origin, transient[0].detail)
            outcomes = [o for o in outcomes if not o.transient]
        if transient or any(o.status == "rejected" and o.reason == "write_failed" for o in outcomes):
            # Not done: offered again (after a backoff when the error was temporary, else at the periodic
            # rescan), so the payloads arrive once there is room.
            self.done.pop(origin, None)
            if not transient:
                log.warning("datauri.retry_later", origin=origin, reason="write_failed")
        else:
            with contextlib.suppress(OSError):
                self.done[origin] = signature(os.lstat(path))
        rejected: list[Rejected] = []
        for o in outcomes:
            if o.status == "materialized" and o.name and o.sha256 and o.mime_type:
                self.metrics.materialized.inc()
                log.info("datauri.materialized", origin=origin, offset=o.offset, name=o.name, sha256=o.sha256)
                await self.publish(
                    o.name,
                    sha256=o.sha256,
                    mime_type=o.mime_type,
                    origin=origin,
                    declared_mime_type=o.declared_mime_type,
                )
            elif o.status == "rejected":
                reason = o.reason or "invalid"
                self.metrics.rejected.labels(reason=reason).inc()
                log.warning("datauri.rejected", origin=origin, offset=o.offset, reason=reason, detail=o.detail)
                rejected.append(Rejected(origin, reason, o.detail or reason, o.offset))
        keep = {r.key for r in rejected}
        stale = [
            k for k, r in self.store.rejected.items() if r.origin == origin and r.offset is not None and k not in keep
        ]
        await self.store.commit(rejected_add=rejected, rejected_remove=stale)
        return not transient

    async def flush(self, timeout: float) -> None:
        """Finalization: scan every root, then wait (bounded) until every stable file was processed."""
        await self.scan()
        await self.settler.drain(time.monotonic() + timeout)
