"""sidecar.subscribers: which /v1/events streams were sent which version, and waiting for them all."""

from __future__ import annotations

import asyncio

from sidecar.subscribers import Subscribers


class TestBookkeeping:
    def test_a_new_stream_is_behind_every_version(self) -> None:
        """An opened stream has been sent nothing yet, not even version 0."""
        subs = Subscribers()
        subs.open()
        assert subs.behind(0) == 1

    def test_streams_get_distinct_keys(self) -> None:
        """Each open() is a key of its own."""
        subs = Subscribers()
        assert len({subs.open() for _ in range(5)}) == 5

    def test_sent_only_moves_forward(self) -> None:
        """A stream's version never goes back: a late report of an older event changes nothing."""
        subs = Subscribers()
        key = subs.open()
        subs.sent(key, 5)
        subs.sent(key, 3)
        assert subs.behind(5) == 0 and subs.behind(6) == 1

    def test_reports_for_unknown_or_closed_streams_are_ignored(self) -> None:
        """A stream that is closed (or never was) does not come back through `sent`."""
        subs = Subscribers()
        key = subs.open()
        subs.close(key)
        subs.sent(key, 9)
        subs.sent(12345, 9)
        subs.close(key)  # twice is harmless
        assert subs.behind(100) == 0

    def test_behind_counts_each_stream_short_of_the_version(self) -> None:
        """Of three streams at 1, 2 and 3, two are behind 3."""
        subs = Subscribers()
        for version in (1, 2, 3):
            subs.sent(subs.open(), version)
        assert [subs.behind(v) for v in (1, 2, 3, 4)] == [0, 1, 2, 3]


class TestCaughtUp:
    async def test_no_stream_is_caught_up_at_once(self) -> None:
        """With no open stream there is nothing to wait for."""
        assert await Subscribers().caught_up(7, timeout=5)

    async def test_waits_for_every_stream_to_report(self) -> None:
        """caught_up returns True once the last stream reports the version, not before."""
        subs = Subscribers()
        a, b = subs.open(), subs.open()
        waiter = asyncio.create_task(subs.caught_up(3, timeout=5))
        subs.sent(a, 3)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiter.done(), "one stream is still behind"
        subs.sent(b, 2)
        await asyncio.sleep(0)
        assert not waiter.done(), "version 2 is not version 3"
        subs.sent(b, 4)
        assert await waiter

    async def test_a_closed_stream_is_not_waited_for(self) -> None:
        """A client that disconnects ends the wait as surely as one that got the event."""
        subs = Subscribers()
        key = subs.open()
        waiter = asyncio.create_task(subs.caught_up(1, timeout=5))
        await asyncio.sleep(0)
        subs.close(key)
        assert await waiter

    async def test_a_stalled_stream_costs_the_deadline_only(self) -> None:
        """A stream that never reports makes caught_up return False after the timeout, without an error."""
        subs = Subscribers()
        subs.open()
        subs.sent(subs.open(), 1)
        assert not await subs.caught_up(1, timeout=0.05)
        assert subs.behind(1) == 1

    async def test_several_waiters_are_all_woken(self) -> None:
        """Two waiters on different versions each return when theirs is reached."""
        subs = Subscribers()
        key = subs.open()
        first = asyncio.create_task(subs.caught_up(1, timeout=5))
        second = asyncio.create_task(subs.caught_up(2, timeout=5))
        await asyncio.sleep(0)
        subs.sent(key, 1)
        assert await first
        assert not second.done()
        subs.sent(key, 2)
        assert await second
