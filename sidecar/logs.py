"""Logging: structlog events, JSON or console, to stderr or a file; aiohttp's own loggers in the same shape."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ("Throttle", "configure_logging", "get_logger")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def get_logger(name: str = "sidecar") -> Any:
    return structlog.get_logger(name)


def configure_logging(*, fmt: str, level: str, log_file: Path | None) -> None:
    """Route structlog and stdlib logging into one handler. Nothing ever goes to stdout (it is the agent's)."""
    stream: TextIO
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
    else:
        stream = sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = _LEVELS.get(level, logging.CRITICAL if level == "critical" else logging.INFO)
    root.setLevel(numeric)
    # aiohttp's access log is per request noise at info; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Methods below the level are no-ops: a debug event on a hot path (one per range served) costs a
        # call, not a trip through the processors (stdlib's BoundLogger + filter_by_level cost ~3 % there).
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


class Throttle:
    """At most one log line per `interval` seconds; the next line says how many were left out."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last = -float("inf")
        self.suppressed = 0

    def hit(self) -> int | None:
        """None: stay quiet. A number: log now, and say that many were left out since the last line."""
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return None
        self.last = now
        left_out, self.suppressed = self.suppressed, 0
        return left_out
