"""The child of `sidecar run`: spawned in its own process group, signals forwarded, every orphan reaped."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from sidecar.logs import get_logger
from sidecar.privileges import ChildUser, child_environ
from sidecar.signals import FORWARDED

__all__ = ("Child", "become_subreaper")

log = get_logger("sidecar.supervise")

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """As PID 1 we reap orphans anyway; elsewhere on Linux ask to be their reaper (like tini -s)."""
    if os.getpid() == 1:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Child:
    """We spawn and reap it ourselves (no asyncio child watcher), with waitpid(-1) on SIGCHLD like tini."""

    def __init__(
        self, argv: Sequence[str], *, user: ChildUser | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.user = user
        self.env = child_environ(os.environ if env is None else env, user)
        self.pid = 0
        self.status: int | None = None
        self.reaped_orphans = 0
        self._done = asyncio.Event()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.pid > 0 and self.status is None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        become_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in FORWARDED:
            loop.add_signal_handler(sig, self.forward, sig)
        try:
            # stdin, stdout, stderr and working directory are inherited as they are; the environment less
            # the sidecar's secrets (SPEC 8). As another user: that uid and gid, no supplementary groups.
            u = self.user
            self._proc = subprocess.Popen(
                self.argv,
                process_group=0,
                close_fds=True,
                env=self.env,
                user=u.uid if u else None,
                group=u.gid if u else None,
                extra_groups=[] if u else None,
            )
        except OSError as e:
            log.error("lifecycle.child_failed", command=self.argv[0], error=str(e))
            self.status = 127 if isinstance(e, FileNotFoundError) else 126
            self._done.set()
            return
        self.pid = self._proc.pid
        self.reap()  # it may already be gone

    def forward(self, sig: int) -> None:
        if self.alive:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as e:  # a --child-user child and no CAP_KILL: the signal is lost, say so
                log.warning("lifecycle.forward_failed", signal=signal.Signals(sig).name, error=str(e))

    def reap(self) -> None:
        """Collect every child that exited: ours gives the exit status, orphans just go away."""
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid and self.status is None:
                code = os.waitstatus_to_exitcode(wstatus)
                self.status = 128 - code if code < 0 else code
                if self._proc is not None:
                    self._proc.returncode = code  # so Popen never waits on a reaped PID
                self._done.set()
            else:
                self.reaped_orphans += 1

    async def wait(self) -> int:
        await self._done.wait()
        assert self.status is not None
        return self.status

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGCHLD, *FORWARDED):
            loop.remove_signal_handler(sig)
        self.reap()
