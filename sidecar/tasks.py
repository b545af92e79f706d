"""Long-lived background tasks that are never silently gone (SPEC 9): a crash is logged, then restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sidecar.logs import get_logger
from sidecar.retry import exponential

__all__ = ("RESTART_BASE_S", "RESTART_CAP_S", "keep_running", "restart_delay")

log = get_logger("sidecar.tasks")

RESTART_BASE_S = 0.1
RESTART_CAP_S = 30.0
HEALTHY_S = 60.0  # a task that ran this long before it died starts its backoff over


def restart_delay(crashes: int) -> float:
    """Exponential backoff: 0.1 s after the first crash in a row, doubling, at most 30 s."""
    return exponential(crashes - 1, RESTART_BASE_S, RESTART_CAP_S)


async def keep_running(name: str, start: Callable[[], Awaitable[None]]) -> None:
    """Run `start()` until it returns (its work is done: e.g. no watchdog configured) or is cancelled.

    An exception is a bug or an unforeseen failure (a malformed number from a UI once killed the pusher
    without a word): it is logged with its traceback as `task.died`, and the task starts again after a
    backoff, so one bad input never stops pushing, watching or persisting for the rest of the run."""
    crashes = 0
    while True:
        began = time.monotonic()
        try:
            await start()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if time.monotonic() - began >= HEALTHY_S:
                crashes = 0
            crashes += 1
            delay = restart_delay(crashes)
            log.exception("task.died", task=name, crashes=crashes, restart_in_s=delay)
        await asyncio.sleep(delay)
        log.warning("task.restarted", task=name, crashes=crashes)
