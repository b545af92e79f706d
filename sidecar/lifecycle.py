"""Wiring (SPEC 8): start order, child supervision, finalization, the grace period and the exit status."""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
from sidecar.manifest import Entry, ManifestStore
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
from sidecar.security import is_loopback_host, reachable_host
from sidecar.server import API_KEY, Hooks, build_app
from sidecar.signals import STOP, SignalLatch
from sidecar.supervise import Child
from sidecar.tasks import keep_running
from sidecar.toolresults import ToolResultsWatcher
from sidecar.watcher import ArtifactWatcher

if TYPE_CHECKING:
    from sidecar.offload import Offloader

__all__ = ("Sidecar", "StartupError", "open_url")

log = get_logger("sidecar.lifecycle")

DRAIN_S = 5.0  # SPEC 8 step 4: in-flight responses get this long
FAST_EXIT_S = 0.5  # a second signal: what is left of the drain
TASK_STOP_S = 2.0  # how long a cancelled background task may take to end
FINAL_PUSH_S = 2.0  # when the grace period ends early, the final push may still take this long


class StartupError(Exception):
    """The daemon could not start (the port is in use, the state dir cannot be made): one line, exit 1."""


def open_url(host: str, port: int) -> str:
    """A URL one can open for a bound address: a wildcard host becomes its loopback address."""
    host = reachable_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bind_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host} (--port, SIDECAR_PORT)"
    return f"cannot listen on {host} port {port}: {e.strerror or e}"


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
        self._held: list[int] = []  # `run`: signals that came before the child, forwarded once it exists

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

    async def run(self, signals: SignalLatch | None = None) -> int:
        """The whole life, in phases (after uvicorn's Server): signals first, startup, main, shutdown.

        `signals`: the latch `sidecar.cli` set before its imports; without one, signals are caught from here."""
        loop = asyncio.get_running_loop()
        latch = signals or SignalLatch.capture(forwarded=self.mode == "run")
        latch.attach(loop, self._on_signal)
        try:
            runner = await self._startup()
        except BaseException:
            latch.detach()
            raise
        tasks = self._start_background()
        exit_code, stuck = 0, 0
        try:
            exit_code = await self._main(tasks)
        finally:
            try:
                stuck = await self._shutdown(runner, tasks)
            finally:
                latch.detach()
                if self.child is not None:
                    self.child.close(loop)
                # The one summary line (SPEC 10's `lifecycle.exit`): how it ended and what this run did.
                counts = self.metrics.totals()
                counts["reaped"] = self.child.reaped_orphans if self.child is not None else 0
                counts["stuck"] = stuck
                log.info("lifecycle.exit", code=exit_code, state=self.store.state, version=self.store.version, **counts)
        return exit_code

    async def _startup(self) -> web.AppRunner:
        """State loaded, then the port bound: the daemon answers from here on. An OSError is a StartupError."""
        s = self.settings
        nofile = raise_nofile()
        install_accept_log(asyncio.get_running_loop())
        try:
            s.artifacts_dir.mkdir(parents=True, exist_ok=True)
            self._guard_secrets()
            await asyncio.to_thread(self.store.load)
            await asyncio.to_thread(self.deliveries.load, self.store.sidecar_id)
        except OSError as e:
            raise StartupError(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from e
        hooks = Hooks(self.ready, self.request_finalize, self.release, self.watcher.nudge, self._served)
        app = build_app(s, self.store, self.metrics, hooks)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=DRAIN_S, keepalive_timeout=30
        )
        await runner.setup()
        cap = connection_cap(nofile)
        site = CappedSite(runner, s.host, s.port, cap=cap, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise StartupError(_bind_error(s.host, s.port, e)) from e
        port = self._bound_port(runner) or s.port
        log.info("http.listening", host=s.host, port=port, url=open_url(s.host, port), max_connections=cap)
        if s.auth_token is None and not is_loopback_host(s.host):
            log.warning(
                "security.open",
                host=s.host,
                port=port,
                detail="no --auth-token: anyone who can reach this port can read every artifact and the manifest",
            )
        self.listening = True
        await self.store.commit(state="running")
        return runner

    def _start_background(self) -> list[asyncio.Task[None]]:
        tasks = [_background("watcher", self.watcher.run)]
        tasks.append(_background("tool-results", self.toolresults.run))
        tasks.append(_background("deliveries", self.deliveries.persist_forever))
        if self.pusher is not None:
            tasks.append(_background("pusher", self.pusher.run))
        if self.offloader is not None:
            tasks.append(_background("offload", self.offloader.run))
        return tasks

    async def _main(self, tasks: list[asyncio.Task[None]]) -> int:
        """Ready, the child's life (or serving until told to finalize), finalization, grace, the final events."""
        exit_code = 0
        await self.watcher.first_scan.wait()
        self.notifier.send("READY=1")
        tasks.append(_background("watchdog", self.notifier.watchdog))
        if self.mode == "run":
            loop = asyncio.get_running_loop()
            self.child = Child(self.command, user=self.child_user)
            self.child.start(loop)
            log.info(
                "lifecycle.child_started", pid=self.child.pid, command=self.command[0], user=self.settings.child_user
            )
            held, self._held = self._held, []
            for sig in held:  # what arrived before the child existed is its own (SPEC 8: forwarded)
                self._on_signal(sig)
            exit_code = await self._wait_child()
        else:
            await self._wait_any(self.finalize_requested)
        # A step that fails is logged and the next one runs: after a failed finalization (a full disk) the
        # published files can still be downloaded, so the grace period is held all the same, and the exit
        # status stays the child's (serve: 0).
        await self._step("finalize", self._finalize())
        await self._step("grace", self._grace())
        if self.store.state == "final":
            await self._step("flush", self._flush_streams())
        return exit_code

    async def _shutdown(self, runner: web.AppRunner, tasks: list[asyncio.Task[None]]) -> int:
        """Listeners closed, in-flight responses drained under DRAIN_S, then the background tasks cancelled
        (they still count and persist what the drained responses deliver). Returns how many are stuck."""
        self.notifier.send("STOPPING=1")
        for site in list(runner.sites):
            await site.stop()  # stop accepting: a new connection is refused, not half-served
        self.listening = False
        app = runner.app
        app[API_KEY].close_streams()  # they had the final event (SPEC 8 step 4); nothing more comes
        try:
            if self.fast_exit.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runner.cleanup(), FAST_EXIT_S)
            else:
                await runner.cleanup()  # in-flight responses get DRAIN_S (the runner's shutdown_timeout)
        except Exception as e:  # an on_cleanup hook failed: the tasks are still stopped under their deadline
            log.error("lifecycle.drain_failed", error=str(e) or type(e).__name__, exc_info=e)
        return await self._stop_tasks(tasks)

    async def _stop_tasks(self, tasks: list[asyncio.Task[None]]) -> int:
        """The pusher and offloader told to stop, every background task cancelled; returns how many are stuck."""
        if self.pusher is not None:
            self.pusher.stop()
        if self.offloader is not None:
            self.offloader.stop()
        for t in tasks:
            t.cancel()
        # A library may turn a cancellation into another exception and carry on (aiohttp's client
        # timeout can); a task that has not ended after this is left behind, never waited for.
        _, stuck = await asyncio.wait(tasks, timeout=TASK_STOP_S) if tasks else (set(), set())
        for t in stuck:
            log.warning("lifecycle.task_stuck", task=t.get_name())
        return len(stuck)

    @staticmethod
    def _bound_port(runner: web.AppRunner) -> int | None:
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                return int(addr[1])
        return None

    def _on_signal(self, sig: int) -> None:
        if self.mode == "run" and self.child is None:
            # No child yet: it gets the signal the moment it exists (SPEC 8 forwards them to its group).
            self._held.append(sig)
            log.info("lifecycle.signal_held", signal=signal.Signals(sig).name)
        elif sig in STOP:
            self._on_stop_signal(sig)
        elif self.child is not None:
            self.child.forward(sig)

    def _on_stop_signal(self, sig: int) -> None:
        if self.child is not None and self.child.alive:
            self.child.forward(sig)  # while the child lives, SIGTERM/SIGINT are the child's business
            return
        self._signals += 1
        if self._signals == 1 and self.mode == "serve" and not self.finalize_requested.is_set():
            self.finalize_requested.set()
        else:
            self.fast_exit.set()

    def _served(self, entry: Entry, start: int, end: int) -> None:
        self.metrics.downloads.inc()
        self.deliveries.served(entry, start, end)

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

    async def _step(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run one step of the end until it is done or a second signal asks for the exit; its exception is
        logged as `lifecycle.<name>_failed`, never lost (an OSError's message says enough, others get a trace)."""
        if self.fast_exit.is_set():
            work.close()
            return
        task = asyncio.create_task(work, name=f"lifecycle.{name}")
        stop = asyncio.create_task(self.fast_exit.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error(
                f"lifecycle.{name}_failed",
                state=self.store.state,
                version=self.store.version,
                error=str(e) or type(e).__name__,
                exc_info=e if not isinstance(e, OSError) else False,
            )

    async def _flush_streams(self) -> None:
        """SPEC 8 step 4: every open event stream gets the final state event before the exit closes it."""
        subscribers = self.store.subscribers
        if not await subscribers.caught_up(self.store.version, DRAIN_S):
            log.warning("lifecycle.streams_behind", count=subscribers.behind(self.store.version))

    async def _finalize(self) -> None:
        """SPEC 8 steps 1 and 2: `finalizing`, a last full rescan, then `final` persisted (and pushed)."""
        s = self.settings
        log.info("lifecycle.finalizing", version=self.store.version)
        self.notifier.send("STOPPING=1")
        await self.store.commit(state="finalizing")
        flush_s = s.settle_s + 5.0
        try:
            await self.watcher.flush(flush_s)
            await self.toolresults.flush(flush_s)
            await self.watcher.flush(flush_s)
        except Exception as e:  # the last rescan is best effort: what was published is still final
            log.error("lifecycle.rescan_failed", error=str(e) or type(e).__name__, exc_info=e)
        await self.store.commit(state="final")
        log.info("lifecycle.final", version=self.store.version, artifacts=len(self.store.entries))

    async def _grace(self) -> None:
        """SPEC 8 step 3: serve until everything was downloaded, a release, or the grace period is over."""
        s = self.settings
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
