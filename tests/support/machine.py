"""The machine's knobs the tests turn: small tmpfs mounts (a disk that fills), the inotify queue length, a
non-root user for the agent."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

__all__ = ("AGENT", "INOTIFY_QUEUE", "agent_user", "mount_tmpfs", "umount")

INOTIFY_QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")
AGENT = "sidecar-test-agent"


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a small tmpfs at path; None when the machine does not allow it (not root, no mount)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return None
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "e2e-sidecar", str(path)],
                       capture_output=True, timeout=10, check=False)  # fmt: skip
    return f"tmpfs size={size}" if r.returncode == 0 else None


def umount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(args, capture_output=True, timeout=10, check=False).returncode == 0:
                return


def agent_user() -> pwd.struct_passwd | str:
    """The real non-root user AGENT, or why there is none. Created once with `useradd --system` and left in
    place: a system user with no home and no login shell, which later runs reuse."""
    if os.geteuid() != 0:
        return "creating and becoming another user needs root"
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(AGENT)
    if shutil.which("useradd") is None:
        return "no useradd to create the test user"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            AGENT,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(AGENT)
