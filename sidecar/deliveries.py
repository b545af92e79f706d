"""Which contents were downloaded in full (SPEC 8 step 3), persisted so a restart does not forget them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from sidecar.fsutil import OrderedFile
from sidecar.logs import get_logger
from sidecar.manifest import Entry

__all__ = ("Deliveries",)

log = get_logger("sidecar.deliveries")

STATE_FILE = "deliveries.json"
SAVE_AFTER_S = 0.25  # a delivery reaches the disk this long after it happened, at the latest


class Deliveries:
    """Whole 200 bodies, or 206 ranges that together cover them, per content (sha256: one download counts
    for every name holding the same bytes, SPEC 8 step 3); cache-mode pushes the UI acknowledged; with
    offload, also the contents confirmed in object storage.

    The only writer of deliveries.json: a moment after each change, and always before the pusher writes
    the acknowledgements that follow (it awaits `save_now` first; a Janus-like UI downloads, then
    acknowledges): after a SIGKILL and a restart, an artifact is either known delivered or pushed again,
    so the grace period never waits for a download that already happened and will not be repeated."""

    def __init__(self, state_dir: Path | None = None, stored: Callable[[str], bool] | None = None) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None
        self._file = OrderedFile(self.path) if self.path is not None else None
        self._stored = stored  # with offload: sha256 -> confirmed in object storage (delivered, SPEC 11)
        self.sidecar_id = ""
        self._cover: dict[str, list[tuple[int, int]]] = {}  # sha256 -> byte spans served so far
        self._done: set[str] = set()  # sha256
        self._dirty = False
        self._saving = asyncio.Lock()  # one save_now at a time (OrderedFile keeps their order on disk)
        self._wake = asyncio.Event()
        self.changed = asyncio.Event()

    # ---- persistence -------------------------------------------------------------------

    def load(self, sidecar_id: str) -> None:
        """Blocking, at start: what was delivered before a restart of the same sidecar."""
        self.sidecar_id = sidecar_id
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_bytes())
            if doc.get("sidecar_id") == sidecar_id:
                # Older files held [name, sha256] pairs: the content is what counts.
                self._done.update(str(d[-1] if isinstance(d, list) else d) for d in doc.get("done", []))
        except (OSError, ValueError, TypeError, AttributeError):
            return

    def _snapshot(self) -> tuple[int, bytes] | None:
        """The file's next content when something changed since the last one (on the loop's thread)."""
        if not self._dirty or self._file is None:
            return None
        self._dirty = False
        return self._file.snapshot(json.dumps({"sidecar_id": self.sidecar_id, "done": sorted(self._done)}).encode())

    def _write(self, snap: tuple[int, bytes] | None) -> bool:
        """Blocking: run in a thread, or at exit. False when the write failed (logged; tried again later)."""
        if snap is None or self._file is None:
            return True
        try:
            self._file.write(snap)
        except OSError as e:
            self._dirty = True
            log.warning("deliveries.save_failed", error=str(e))
            return False
        return True

    async def save_now(self) -> bool:
        """Write what changed since the last write, now. True once it is on disk (or nothing changed); False
        when the write failed (logged): then what depends on it must not be written either."""
        async with self._saving:
            snap = self._snapshot()
            if snap is None:
                return not self._dirty
            try:
                return await asyncio.to_thread(self._write, snap)
            except asyncio.CancelledError:
                self._dirty = True  # not known to be on disk: the exit's flush writes it again
                raise

    def flush(self) -> bool:
        """The last write at exit (blocking; the loop is shutting down)."""
        return self._write(self._snapshot())

    async def persist_forever(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(SAVE_AFTER_S)
                await self.save_now()
        finally:
            with contextlib.suppress(Exception):
                self.flush()

    # ---- bookkeeping -------------------------------------------------------------------

    def served(self, entry: Entry, start: int, end: int) -> None:
        key = entry.sha256
        if key in self._done:
            return
        spans = sorted([*self._cover.get(key, []), (start, end)])
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._cover[key] = merged
        if merged[0][0] <= 0 and merged[0][1] >= entry.size_bytes:
            self._mark(key)

    def acknowledged(self, sha256: str) -> None:
        """A cache-mode push of this content was acknowledged: the UI has it (SPEC 8 step 3)."""
        if sha256 not in self._done:
            self._mark(sha256)

    def _mark(self, sha256: str) -> None:
        self._done.add(sha256)
        self._cover.pop(sha256, None)
        self._dirty = True
        self._wake.set()
        self.changed.set()

    def delivered(self, entry: Entry) -> bool:
        if entry.sha256 in self._done or entry.size_bytes == 0:
            return True
        return self._stored is not None and self._stored(entry.sha256)
