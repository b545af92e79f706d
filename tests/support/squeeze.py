"""The file-descriptor squeeze fault (SPEC 9): the sidecar under a low descriptor limit while
hundreds of connections that never send a byte are held open against it."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

__all__ = ("IDLE", "NOFILE", "idle_flood", "low_nofile")

NOFILE = 256  # soft = hard: the daemon cannot raise it, so it must cap its connections below it
IDLE = 400  # more idle connections than the limit holds


def low_nofile() -> None:
    """preexec_fn of the sidecar: `prlimit --nofile=256:256`."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def idle_flood(port: int, seconds: float, notes: dict[str, Any], count: int = IDLE) -> None:
    """Keep `count` idle connections open for `seconds`; each one the sidecar closes (an idle connection
    it evicts at its cap, or a 503) is opened again at once, so the pressure lasts the whole window."""
    until = time.monotonic() + seconds
    stats = {"opened": 0, "closed_by_sidecar": 0, "refused": 0}

    async def one() -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["refused"] += 1
                await asyncio.sleep(0.2)
                continue
            stats["opened"] += 1
            try:
                async with asyncio.timeout(max(0.0, until - time.monotonic())):
                    await reader.read()  # returns at EOF: the sidecar closed it
                stats["closed_by_sidecar"] += 1
            except (TimeoutError, OSError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    finally:
        notes["fd_squeeze"] = {"nofile": NOFILE, "idle": count, "seconds": round(seconds, 1), **stats}
