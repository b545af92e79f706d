"""Watching a tree: what turns filesystem changes into "look at these paths" calls, for the artifacts
dir and the tool-results roots alike. inotify on every directory (TreeWatch), watchfiles polling where
inotify cannot watch, an immediate rescan when events were lost, and a periodic rescan under it all.

Why not watchfiles everywhere: it polls its Rust thread every step (and takes the GIL to do it), delays
each batch by its debounce, and drops the kernel's queue-overflow signal. Here the inotify descriptor
sits in the event loop's selector, a batch is what arrived within BATCH_S of its first event, and an
overflow is reported so that the caller rescans at once rather than at the next periodic rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncinotify import Event, Inotify, Mask, Watch

from sidecar.fsutil import TRANSIENT
from sidecar.logs import get_logger
from sidecar.retry import backoff

__all__ = ("OVERFLOW", "RootGone", "TreeWatch", "WatchUnavailable", "relative", "watch", "watch_forever")

log = get_logger("sidecar.watch")

Paths = Callable[[list[str]], Awaitable[None]]  # "look at these paths"
Rescan = Callable[[], Awaitable[None]]  # reconcile the whole tree with what the caller knows

BATCH_S = 0.005  # events arriving this soon after the first one are handled with it
MAX_BATCH = 65536
READ_EVENTS = 1024  # events read per read(2), at most
SLICE_S = 0.01  # the walk yields to the event loop after this long (a deep path costs its length a step)
MASK = (
    Mask.CREATE
    | Mask.CLOSE_WRITE
    | Mask.MODIFY
    | Mask.ATTRIB
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE
    | Mask.DELETE_SELF
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
    | Mask.EXCL_UNLINK
)
# The root's own watch also hears it move away (`mv artifacts old`): the watch would follow the folder, and
# one made again under the name would only be seen by the next rescan. Other directories' moves are seen
# from their parent (MOVED_FROM / MOVED_TO).
ROOT_MASK = MASK | Mask.MOVE_SELF
OVERFLOW = "\0overflow"  # in a batch: events were lost, rescan everything
# When polling, watchfiles groups events: it yields once no new event came for STEP_MS, at the latest
# after DEBOUNCE_MS.
STEP_MS = 25
DEBOUNCE_MS = 100
ROOT_WAIT_S = 1.0  # after the root was removed, how long before it is watched again


class WatchUnavailable(Exception):
    """inotify cannot watch this tree (no inotify, out of instances or watches): poll instead."""


class RootGone(Exception):
    """The watched root was removed (or is not a directory): watch again once it is back."""


class TreeWatch:
    """A watch on every directory under root (symlinks never followed), kept up to date as directories
    come, go and move. `skip_dir(path)` may leave directories out (dot directories, say)."""

    def __init__(self, root: Path, skip_dir: Callable[[str], bool] | None = None) -> None:
        self.root = root
        self.skip_dir = skip_dir
        try:
            self.ino = Inotify(cache_size=READ_EVENTS, sync_timeout=0)
        except OSError as e:
            raise WatchUnavailable(f"inotify_init1: {e.strerror}") from e
        self.watches: dict[str, Watch] = {}  # directory path -> its watch
        # watch descriptor -> directory path as a str: Event.path joins pathlib objects, linear in depth
        # per event in Python code, and the watch's Path keeps the old name when a directory moves.
        self.dirs: dict[int, str] = {}
        self.incomplete = False  # a listing failed for a moment (EMFILE...): walk everything again soon
        self.walks: dict[asyncio.Task[None], str] = {}  # add_tree running beside the events, and its top
        self.found: dict[str, None] = {}  # what they listed, for the next batch
        self.walked = asyncio.Event()
        self.walk_error: Exception | None = None
        self.pending_get: asyncio.Future[Event] | None = None

    def close(self) -> None:
        for task in list(self.walks):
            task.cancel()
        if self.pending_get is not None:
            self.pending_get.cancel()
        self.ino.close()

    async def add_tree(self, top: str, *, again: bool = False) -> list[str]:
        """Watch top and every directory below it (the watch goes on before the listing, so nothing
        created in between is missed: it is either listed or reported). Returns the other entries
        listed, which no event will report. A directory already watched is not walked again unless
        `again` (after an overflow): what it holds was listed then or reported since. The walk yields
        to the loop every SLICE_S seconds, so a hostile tree (a chain 10,000 deep) cannot stall it."""
        root = str(self.root)
        found: list[str] = []
        stack = [top]
        slice_end = time.monotonic() + SLICE_S
        while stack:
            path = stack.pop()
            if path != root and self.skip_dir is not None and self.skip_dir(path):
                continue
            if not again and self._watched(path):
                continue
            if time.monotonic() > slice_end:
                await asyncio.sleep(0)
                slice_end = time.monotonic() + SLICE_S
            try:
                watch = self.ino.add_watch(path, ROOT_MASK if path == root else MASK)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.ENOMEM):
                    raise WatchUnavailable(f"inotify_add_watch: {e.strerror} (fs.inotify.max_user_watches)") from e
                if path == root:
                    raise RootGone(f"{path}: {e.strerror}") from e
                continue  # gone, not a directory, a symlink, unreadable or too long a path: nothing to watch
            self.dirs[watch.wd] = path  # the same directory under a new name keeps its watch descriptor
            self.watches[path] = watch
            try:
                with os.scandir(path) as it:
                    for d in it:
                        (stack if d.is_dir(follow_symlinks=False) else found).append(d.path)
            except OSError as e:
                if e.errno in TRANSIENT:
                    self.incomplete = True  # out of descriptors: list it again a moment later
        return found

    def _watched(self, path: str) -> bool:
        watch = self.watches.get(path)
        return watch is not None and self.dirs.get(watch.wd) == path  # not a name its directory moved from

    def _forget(self, top: str) -> None:
        """A directory moved away: drop its watches and those below it (a move inside the tree adds
        them back under the new name), and stop walking it."""
        prefix = top + os.sep
        for task, walking in list(self.walks.items()):
            if walking == top or walking.startswith(prefix):
                task.cancel()
        for path in [p for p in self.watches if p == top or p.startswith(prefix)]:
            watch = self.watches.pop(path)
            if self.dirs.get(watch.wd) == path:
                del self.dirs[watch.wd]
            with contextlib.suppress(OSError):
                self.ino.rm_watch(watch)

    def _drain(self, first: Event) -> list[Event]:
        events = [first]
        while len(events) < MAX_BATCH:
            try:
                ev = self.ino.sync_get()
            except BlockingIOError:
                break
            if ev is None:
                break
            events.append(ev)
        return events

    def _walk(self, top: str, *, again: bool = False) -> None:
        """add_tree in a task of its own: events (an ordinary file beside a deep tree) are handled while
        it walks; what it lists comes with a later batch."""

        async def walk() -> None:
            try:
                self.found.update(dict.fromkeys(await self.add_tree(top, again=again)))
            except Exception as e:  # WatchUnavailable, RootGone...: raised by batches()
                self.walk_error = e
            self.walked.set()

        task = asyncio.get_running_loop().create_task(walk())
        self.walks[task] = top
        task.add_done_callback(self.walks.pop)

    async def _next(self, timeout: float | None) -> Event | None:
        """The next inotify event, or None when a walk finished (or the timeout passed) first."""
        if self.pending_get is None:
            self.pending_get = asyncio.ensure_future(self.ino.get())
        walked = asyncio.ensure_future(self.walked.wait())
        waits: set[asyncio.Future[Any]] = {self.pending_get, walked}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            walked.cancel()
        if not self.pending_get.done():
            return None
        got, self.pending_get = self.pending_get, None
        return got.result()

    async def batches(self) -> AsyncIterator[list[str]]:
        """Paths that changed, one batch at a time; a batch holding OVERFLOW means some were lost."""
        await self.add_tree(str(self.root))
        retry = 0
        while True:
            paths: dict[str, None] = {}
            # A listing failed for want of descriptors or memory: list everything again after a
            # backoff, and have the caller rescan, even when no event comes meanwhile.
            retry = retry + 1 if self.incomplete else 0
            first = await self._next(backoff(retry) if retry else None)
            if self.walk_error is not None:
                raise self.walk_error
            if first is None and self.incomplete and not self.walked.is_set():
                self.incomplete = False
                paths[OVERFLOW] = None
                self._walk(str(self.root), again=True)
            self.walked.clear()
            paths.update(self.found)
            self.found.clear()
            if first is not None:
                await asyncio.sleep(BATCH_S)
                self._events(first, paths)
            if paths:
                yield list(paths)

    def _events(self, first: Event, paths: dict[str, None]) -> None:
        for ev in self._drain(first):
            mask = ev.mask
            if Mask.Q_OVERFLOW in mask:
                log.warning("watch.overflow", root=str(self.root))
                paths[OVERFLOW] = None
                self._walk(str(self.root), again=True)  # directories created meanwhile were missed too
                continue
            watch = ev.watch
            if Mask.IGNORED in mask or watch is None:
                continue
            base = self.dirs.get(watch.wd)
            if base is None:
                continue  # a watch already forgotten (its directory moved away)
            path = f"{base}{os.sep}{ev.name}" if ev.name is not None else base
            if Mask.ISDIR in mask:
                if mask & (Mask.CREATE | Mask.MOVED_TO):
                    self._walk(path)
                elif mask & (Mask.MOVED_FROM | Mask.DELETE):
                    self._forget(path)
            if Mask.DELETE_SELF in mask:
                self.watches.pop(path, None)
                self.dirs.pop(watch.wd, None)
                if path == str(self.root):
                    raise RootGone(f"{path} was removed")
            if Mask.MOVE_SELF in mask:  # only the root's watch asks for it (ROOT_MASK)
                raise RootGone(f"{path} was moved away")
            paths[path] = None


async def watch(
    root: Path,
    watch_filter: Callable[[str], bool] | None,
    handle: Paths,
    rescan: Rescan,
    *,
    interval: float,
    first: Rescan | None = None,
) -> None:
    """Everything that turns changes under root into `handle(paths)` and `rescan()` calls: the watch
    (watch_forever), the first scan (`first`, else `rescan`), then a rescan every `interval` seconds, the
    safety net under the events (SPEC 3). The watch starts first, so that nothing written during the
    first scan is missed; a periodic rescan that fails is logged and the next one comes on time."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch_forever(root, watch_filter, handle, rescan))
        await (first or rescan)()
        while True:
            await asyncio.sleep(interval)
            try:
                await rescan()
            except Exception:
                log.exception("watch.rescan_failed", root=str(root))


def relative(path: str, prefix: str) -> str | None:
    """The POSIX name of path below prefix (the root with its trailing separator), else None. A prefix cut,
    not os.path.relpath: that splits both paths, quadratic down a deep chain, on every event."""
    if not path.startswith(prefix) or len(path) == len(prefix):
        return None
    return path[len(prefix) :].replace(os.sep, "/")


def _polling_forced() -> bool:
    return os.environ.get("WATCHFILES_FORCE_POLLING", "").lower() not in ("", "0", "false", "no")


async def watch_forever(root: Path, watch_filter: Callable[[str], bool] | None, handle: Paths, rescan: Rescan) -> None:
    """inotify on every directory of the tree (TreeWatch); restarted with a rescan when it fails, an
    immediate rescan when the kernel's queue overflowed. Where inotify cannot watch (no inotify, no
    watches left, WATCHFILES_FORCE_POLLING set) or keeps failing, watchfiles polls instead."""
    failures = 0
    polling = _polling_forced()
    skip = None if watch_filter is None else (lambda path: not watch_filter(path))
    while True:
        try:
            if polling:
                await _poll(root, watch_filter, handle)
                return
            tree = TreeWatch(root, skip)
            try:
                async for paths in tree.batches():
                    failures = 0
                    if OVERFLOW in paths:
                        await rescan()
                    await handle([p for p in paths if p != OVERFLOW])
            finally:
                tree.close()
        except RootGone as e:
            log.warning("watch.root_gone", root=str(root), error=str(e))
            await asyncio.sleep(ROOT_WAIT_S)  # then watch it again, once it is back
            with contextlib.suppress(Exception):
                await rescan()
        except Exception as e:
            failures += 1
            if isinstance(e, WatchUnavailable) or failures >= 3:
                polling = True
            log.warning("watch.restarted", root=str(root), error=str(e), failures=failures, polling=polling)
            await asyncio.sleep(min(2.0, 0.05 * failures))
            with contextlib.suppress(Exception):
                await rescan()


async def _poll(root: Path, watch_filter: Callable[[str], bool] | None, handle: Paths) -> None:
    # Imported here: a daemon that never polls does not pay for watchfiles (~5 MiB, ~30 ms at start).
    from watchfiles import Change, DefaultFilter, awatch

    class Filter(DefaultFilter):
        def __init__(self) -> None:
            super().__init__(ignore_dirs=(), ignore_entity_patterns=(), ignore_paths=())

        def __call__(self, change: Change, path: str) -> bool:
            return watch_filter is None or watch_filter(path)

    async for changes in awatch(
        root,
        watch_filter=Filter(),
        debounce=DEBOUNCE_MS,
        step=STEP_MS,
        recursive=True,
        ignore_permission_denied=True,
        force_polling=True,
    ):
        await handle([path for _, path in changes])
