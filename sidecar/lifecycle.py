"""Wiring (SPEC 8): start order, child supervision, finalization, the grace period and the exit status."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from sidecar.config import Settings
from sidecar.deliveries import Deliveries
from sidecar.limits import CappedSite, connection_cap, install_accept_log, raise_nofile
from sidecar.links import StorageLinks
from sidecar.logs import get_logger
from sidecar.manifest import ManifestStore
from sidecar.metrics import Metrics
from sidecar.notify import Notifier
from sidecar.privileges import (
    ChildUser,
    make_writable_for,
    readable_by_others,
    resolve_child_user,
    secure_state_dir,
    set_non_dumpable,
)
from sidecar.pusher import Pusher, PushHold
from sidecar.security import is_loopback_host
from sidecar.server import API_KEY, Hooks, build_app
from sidecar.supervise import Child
from sidecar.tasks import keep_running
from sidecar.toolresults import ToolResultsWatcher
from sidecar.watcher import ArtifactWatcher

if TYPE_CHECKING:
    from sidecar.offload import Offloader

__all__ = ("Sidecar",)

log = get_logger("sidecar.lifecycle")

DRAIN_S = 5.0  # SPEC 8 step 4: in-flight responses get this long
FAST_EXIT_S = 0.5  # a second signal: what is left of the drain
TASK_STOP_S = 2.0  # how long a cancelled background task may take to end
FINAL_PUSH_S = 2.0  # when the grace period ends early, the final push may still take this long


def _background(name: str, start: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """A long-lived task: logged and restarted if it crashes (sidecar.tasks), cancelled at exit."""
    return asyncio.create_task(keep_running(name, start), name=name)


class Sidecar:
    """One daemon: `serve` (no child) or `run` (supervising CMD)."""

    def __init__(self, settings: Settings, mode: Literal["serve", "run"], command: Sequence[str] = ()) -> None:
        self.settings = settings
        self.mode = mode
        self.command = list(command)
        self.metrics = Metrics()
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        # Presigned links of object storage (SPEC 11): the offloader signs them, the store shows them and the
        # deliveries count them; made first, so each of those gets it when it is made.
        self.links = StorageLinks()
        self.store = ManifestStore(
            settings.state_dir.absolute(),
            chat_id=settings.chat_id,
            public_base_url=settings.public_base_url,
            auth_token=token,
            ttl=settings.signed_url_ttl,
            storage=self.links,
        )
        root = settings.artifacts_dir.absolute()
        self.watcher = ArtifactWatcher(
            root, self.store, self.metrics, settle=settings.settle_s, rescan=settings.rescan_interval
        )
        self.toolresults = ToolResultsWatcher(settings, self.store, self.watcher.publish_known, self.metrics)
        self.deliveries = Deliveries(settings.state_dir.absolute(), stored=self.links.stored)
        self.offloader: Offloader | None = None
        hold = None
        if settings.s3_bucket:
            from sidecar.offload import Offloader  # botocore only when offload is on

            let_go = asyncio.Event()  # set by the offloader when a held cache-mode push may go
            self.offloader = Offloader(
                settings,
                self.store,
                self.metrics,
                self.links,
                on_stored=self.deliveries.changed.set,  # "stored" counts as delivered: the grace period looks again
                on_let_go=let_go.set,
            )
            if self.offloader.holding:
                hold = PushHold(self.offloader.holds, let_go)
        self.pusher = (
            Pusher(settings, self.store, self.metrics, self.deliveries, hold) if settings.ui_push_url else None
        )
        self.notifier = Notifier.from_env()
        self.listening = False
        self.finalize_requested = asyncio.Event()
        self.released = asyncio.Event()
        self.fast_exit = asyncio.Event()
        self.child: Child | None = None
        self.child_user: ChildUser | None = None
        self._signals = 0

    # ---- hooks for the HTTP server -------------------------------------------------------

    def ready(self) -> bool:
        return self.listening and self.watcher.first_scan.is_set()

    async def request_finalize(self) -> str:
        self.finalize_requested.set()
        # Let the finalization step in, so the answer already says `finalizing`.
        for _ in range(3):
            if self.store.state != "running":
                break
            await asyncio.sleep(0)
        return self.store.state if self.store.state != "running" else "finalizing"

    async def release(self) -> None:
        if not self.released.is_set():
            self.released.set()
            log.info("lifecycle.released", state=self.store.state)

    # ---- the whole life ------------------------------------------------------------------

    def _guard_secrets(self) -> None:
        """Before anything is read or written: the state dir 0700, our memory unreadable to our own uid,
        and, for `--child-user`, an artifacts dir that user can write (SPEC 8, 9)."""
        s = self.settings
        try:
            secure_state_dir(s.state_dir.absolute())
        except OSError as e:  # not ours to chmod: say so, the store still works
            log.warning("security.state_dir_open", path=str(s.state_dir), error=str(e))
        if not set_non_dumpable():
            log.warning("security.dumpable", reason="prctl(PR_SET_DUMPABLE, 0) failed")
        if self.mode == "run" and s.child_user:
            user = resolve_child_user(s.child_user)
            try:
                if make_writable_for(s.artifacts_dir.absolute(), user):
                    log.info("security.artifacts_dir_shared", path=str(s.artifacts_dir), gid=user.gid)
            except OSError as e:
                log.warning("security.artifacts_dir_not_writable", path=str(s.artifacts_dir), error=str(e))
            self.child_user = user
        for option, path in (("--auth-token-file", s.auth_token_file), ("--ui-token-file", s.ui_token_file)):
            if path is not None and readable_by_others(path, self.child_user):
                log.warning("security.token_file_readable", option=option, path=str(path))

    async def run(self) -> int:
        s = self.settings
        nofile = raise_nofile()
        install_accept_log(asyncio.get_running_loop())
        s.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self._guard_secrets()
        await asyncio.to_thread(self.store.load)
        await asyncio.to_thread(self.deliveries.load, self.store.sidecar_id)
        hooks = Hooks(self.ready, self.request_finalize, self.release, self.watcher.nudge, self.deliveries.served)
        app = build_app(s, self.store, self.metrics, hooks)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=DRAIN_S, keepalive_timeout=30
        )
        await runner.setup()
        cap = connection_cap(nofile)
        site = CappedSite(runner, s.host, s.port, cap=cap, reuse_address=True, backlog=1024)
        await site.start()
        port = self._bound_port(runner) or s.port
        log.info("http.listening", host=s.host, port=port, url=f"http://{s.host}:{port}", max_connections=cap)
        if s.auth_token is None and not is_loopback_host(s.host):
            log.warning(
                "security.open",
                host=s.host,
                port=port,
                detail="no --auth-token: anyone who can reach this port can read every artifact and the manifest",
            )
        self.listening = True
        await self.store.commit(state="running")

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        tasks = [_background("watcher", self.watcher.run)]
        tasks.append(_background("tool-results", self.toolresults.run))
        tasks.append(_background("deliveries", self.deliveries.persist_forever))
        if self.pusher is not None:
            tasks.append(_background("pusher", self.pusher.run))
        if self.offloader is not None:
            tasks.append(_background("offload", self.offloader.run))
        exit_code = 0
        try:
            await self.watcher.first_scan.wait()
            self.notifier.send("READY=1")
            tasks.append(_background("watchdog", self.notifier.watchdog))
            if self.mode == "run":
                self.child = Child(self.command, user=self.child_user)
                self.child.start(loop)
                log.info("lifecycle.child_started", pid=self.child.pid, command=self.command[0], user=s.child_user)
                exit_code = await self._wait_child()
            else:
                await self._wait_any(self.finalize_requested)
            if not self.fast_exit.is_set():
                await self._race_fast_exit(self._finalize_and_grace())
            if not self.fast_exit.is_set() and self.store.state == "final":
                await self._race_fast_exit(self._flush_streams())
        finally:
            self.notifier.send("STOPPING=1")
            api = app[API_KEY]
            api.close_streams()
            if self.pusher is not None:
                self.pusher.stop()
            if self.offloader is not None:
                self.offloader.stop()
            for t in tasks:
                t.cancel()
            # A library may turn a cancellation into another exception and carry on (aiohttp's client
            # timeout can); a task that has not ended after this is left behind, never waited for.
            _, stuck = await asyncio.wait(tasks, timeout=TASK_STOP_S)
            for t in stuck:
                log.warning("lifecycle.task_stuck", task=t.get_name())
            if self.fast_exit.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runner.cleanup(), FAST_EXIT_S)
            else:
                await runner.cleanup()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self.child is not None:
                self.child.close(loop)
        log.info("lifecycle.exit", code=exit_code, version=self.store.version)
        return exit_code

    @staticmethod
    def _bound_port(runner: web.AppRunner) -> int | None:
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        return None

    def _on_stop_signal(self, sig: int) -> None:
        if self.child is not None and self.child.alive:
            self.child.forward(sig)  # while the child lives, SIGTERM/SIGINT are the child's business
            return
        self._signals += 1
        if self._signals == 1 and self.mode == "serve" and not self.finalize_requested.is_set():
            self.finalize_requested.set()
        else:
            self.fast_exit.set()

    async def _wait_any(self, event: asyncio.Event) -> None:
        waits = [asyncio.create_task(event.wait()), asyncio.create_task(self.fast_exit.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _wait_child(self) -> int:
        assert self.child is not None
        status = await self.child.wait()
        log.info("lifecycle.child_exited", pid=self.child.pid, status=status)
        return status

    async def _race_fast_exit(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        stop = asyncio.create_task(self.fast_exit.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _flush_streams(self) -> None:
        """SPEC 8 step 4: every open event stream gets the final state event before the exit closes it."""
        subscribers = self.store.subscribers
        if not await subscribers.caught_up(self.store.version, DRAIN_S):
            log.warning("lifecycle.streams_behind", count=subscribers.behind(self.store.version))

    async def _finalize_and_grace(self) -> None:
        s = self.settings
        log.info("lifecycle.finalizing", version=self.store.version)
        self.notifier.send("STOPPING=1")
        await self.store.commit(state="finalizing")
        flush_s = s.settle_s + 5.0
        await self.watcher.flush(flush_s)
        await self.toolresults.flush(flush_s)
        await self.watcher.flush(flush_s)
        await self.store.commit(state="final")
        log.info("lifecycle.final", version=self.store.version, artifacts=len(self.store.entries))
        deadline = time.monotonic() + s.grace_period
        all_delivered = False
        while not self.released.is_set():
            waiting = [e for e in self.store.entries.values() if not self.deliveries.delivered(e)]
            if not waiting:
                log.info("lifecycle.delivered", artifacts=len(self.store.entries))
                all_delivered = True
                break
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("lifecycle.grace_expired", undelivered=[e.name for e in waiting][:20], count=len(waiting))
                break
            self.deliveries.changed.clear()
            waits = [asyncio.create_task(self.deliveries.changed.wait()), asyncio.create_task(self.released.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        if self.pusher is not None:
            # A last chance for an unacknowledged final push; never past the grace period. With offload,
            # "delivered" may mean "in the store": the pushes that tell the UI where get all the time left.
            left = max(0.0, deadline - time.monotonic())
            await self.pusher.settle(left if all_delivered and self.offloader is not None else min(FINAL_PUSH_S, left))
