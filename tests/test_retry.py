"""sidecar.retry: one exponential, capped backoff curve, full jitter beneath it for pushes and uploads, half
jitter for temporary I/O errors."""

from __future__ import annotations

import random

import pytest

from sidecar.retry import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff, backoff_delay, exponential


class TestExponential:
    def test_doubles_from_the_base(self) -> None:
        """Step 0 is the base; each step doubles it."""
        assert [exponential(n, 0.25, 100.0) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 4.0]

    def test_never_more_than_the_cap(self) -> None:
        """Past the cap every step is the cap."""
        assert exponential(5, 0.25, 3.0) == 3.0
        assert exponential(6, 0.25, 3.0) == 3.0

    @pytest.mark.parametrize("step", [17, 10_000, 10**100])
    def test_huge_steps_cost_nothing(self, step: int) -> None:
        """An attempt counter that ran for days neither overflows nor builds a huge number: it is the cap."""
        assert exponential(step, 0.25, 10.0) == 10.0
        assert exponential(step, 1e-9, 1e9) == 1e-9 * 2.0**16  # the exponent itself is bounded

    def test_a_negative_step_is_the_base(self) -> None:
        """A caller counting from 1 that passes 0 - 1 still gets the first delay."""
        assert exponential(-1, 0.1, 30.0) == 0.1


class TestBackoffDelay:
    def test_full_jitter_stays_under_the_curve(self) -> None:
        """Every delay lies in [0, min(cap, base * 2**attempt)] and they spread across that range."""
        rng = random.Random(7)
        for attempt in range(8):
            ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
            delays = [backoff_delay(attempt, rng) for _ in range(200)]
            assert all(0.0 <= d <= ceiling for d in delays)
            assert max(delays) > ceiling / 2 and min(delays) < ceiling / 2, "jitter covers the range"

    def test_the_cap_holds_for_late_attempts(self) -> None:
        """From 250 ms doubling, an attempt far along waits at most 10 s."""
        rng = random.Random(1)
        assert all(backoff_delay(50, rng) <= BACKOFF_CAP_S for _ in range(100))
        assert (BACKOFF_BASE_S, BACKOFF_CAP_S) == (0.25, 10.0)

    def test_the_random_source_is_the_callers(self) -> None:
        """Two generators seeded alike give the same delays: tests can replay a run of retries."""
        a, b = random.Random(42), random.Random(42)
        assert [backoff_delay(n, a) for n in range(6)] == [backoff_delay(n, b) for n in range(6)]


class TestBackoffDelayAsPushesUseIt:
    @pytest.mark.parametrize("attempt", [0, 1, 2, 3, 4, 5, 6, 7, 10, 20])
    def test_full_jitter_under_a_doubling_cap(self, attempt):
        """Attempt n waits uniformly in [0, min(10 s, 250 ms * 2**n)]: never above, spread over the whole range."""
        cap = min(BACKOFF_CAP_S, 0.25 * 2**attempt)
        rng = random.Random(attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(500)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.8 * cap
        assert min(delays) < 0.2 * cap

    def test_cap_is_ten_seconds_even_for_huge_attempts(self):
        """The cap holds for any attempt number, without overflow."""
        assert BACKOFF_CAP_S == 10.0
        rng = random.Random(1)
        assert all(0.0 <= backoff_delay(n, rng) <= 10.0 for n in (30, 1_000, 10**9))


def test_backoff_grows_is_capped_and_jittered() -> None:
    waits = [backoff(n) for n in range(1, 12)]
    assert all(0 < w <= 2.0 for w in waits)
    assert 0.025 <= backoff(1) <= 0.05
    assert max(backoff(30) for _ in range(50)) <= 2.0
