"""Backoff for every retry loop: one exponential, capped curve; each caller picks its base, cap and jitter."""

from __future__ import annotations

import random

__all__ = ("BACKOFF_BASE_S", "BACKOFF_CAP_S", "backoff", "backoff_delay", "exponential")

BACKOFF_BASE_S = 0.25  # pushes and uploads (SPEC 7): from 250 ms, doubling, capped at 10 s
BACKOFF_CAP_S = 10.0


def exponential(step: int, base: float, cap: float) -> float:
    """base * 2**step, at most cap (step counts from 0; huge steps cost nothing)."""
    return min(cap, base * 2.0 ** min(max(step, 0), 16))


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, exponential(attempt, BACKOFF_BASE_S, BACKOFF_CAP_S))


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """Temporary I/O errors (EMFILE, EIO...): seconds before retry number `attempt` (1, 2, ...), from 50 ms
    doubling to 2 s, with half jitter."""
    return exponential(attempt - 1, base, cap) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
