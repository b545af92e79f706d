"""sidecar.settle: a candidate is due once its signature stopped changing for the settle time; one loop
hands due candidates to the work, and finalization waits for it to run dry."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from sidecar.fsutil import signature
from sidecar.settle import Due, Settler

SETTLE_S = 0.1


@pytest.fixture
def file(tmp_path: Path) -> Path:
    p = tmp_path / "f.txt"
    p.write_bytes(b"one")
    return p


def grow(path: Path, data: bytes = b"+") -> os.stat_result:
    """Append to the file (a new signature) and return its lstat."""
    with open(path, "ab") as f:
        f.write(data)
    return os.lstat(path)


async def due_within(settler: Settler, timeout: float) -> Due:
    async with asyncio.timeout(timeout):
        return await settler.due()


class TestSettler:
    async def test_a_candidate_is_due_once_still_for_the_settle_time(self, file: Path) -> None:
        """An offered file comes due no sooner than the settle time after its last change, with its signature."""
        s = Settler(SETTLE_S)
        st = os.lstat(file)
        s.offer("f", st)
        ((key, sig, last_change),) = await due_within(s, 2.0)
        assert (key, sig) == ("f", signature(st))
        assert last_change == st.st_ctime, "the last change is the file's ctime (when not in the future)"
        assert time.time() >= last_change + SETTLE_S
        assert not s.pending, "a due candidate is forgotten"

    async def test_a_change_starts_the_wait_over(self, file: Path) -> None:
        """A new signature offered before the candidate is due postpones it; the newest version comes due."""
        s = Settler(0.3)
        s.offer("f", os.lstat(file))
        await asyncio.sleep(0.2)
        st = grow(file)
        s.offer("f", st)
        with pytest.raises(TimeoutError):
            await due_within(s, 0.15)
        ((_, sig, _),) = await due_within(s, 2.0)
        assert sig == signature(st)

    async def test_the_same_version_offered_again_keeps_its_time(self, file: Path) -> None:
        """Offering an unchanged file again (an event, a rescan) does not postpone it."""
        s = Settler(0.3)
        st = os.lstat(file)
        s.offer("f", st)
        first = s.pending["f"].due
        await asyncio.sleep(0.05)
        s.offer("f", st)
        assert s.pending["f"].due == first

    async def test_a_dropped_candidate_never_comes_due(self, file: Path) -> None:
        """drop() (the file went away) forgets the candidate."""
        s = Settler(0.05)
        s.offer("f", os.lstat(file))
        s.drop("f")
        with pytest.raises(TimeoutError):
            await due_within(s, 0.2)

    async def test_again_does_not_replace_a_newer_version(self, file: Path) -> None:
        """A version sent back after a temporary error waits its delay, unless a newer one is waiting."""
        s = Settler(SETTLE_S)
        old = signature(os.lstat(file))
        st = grow(file)
        s.offer("f", st)
        s.again("f", old, time.time(), 0.0)
        assert s.pending["f"].sig == signature(st)
        s.drop("f")
        s.again("f", old, time.time(), 0.0)
        ((_, sig, _),) = await due_within(s, 1.0)
        assert sig == old

    async def test_retries_back_off_until_one_succeeds(self, file: Path) -> None:
        """retry() counts the attempts in a row (each waits longer); succeeded() starts the count over."""
        s = Settler(SETTLE_S)
        sig = signature(os.lstat(file))
        s.retry("f", sig, time.time())
        assert s.attempts == {"f": 1} and "f" in s.pending
        await due_within(s, 2.0)
        s.retry("f", sig, time.time())
        assert s.attempts == {"f": 2}
        await due_within(s, 2.0)
        s.succeeded("f")
        assert s.attempts == {}


class TestSettleLoop:
    async def test_due_candidates_go_to_the_work_and_count_as_in_hand(self, file: Path) -> None:
        """run() hands a due batch to the work; until the work returns, the settler is not idle."""
        s = Settler(0.01)
        got: list[Due] = []
        release = asyncio.Event()

        async def work(due: Due) -> None:
            got.append(due)
            await release.wait()

        loop = asyncio.create_task(s.run(work, "test.failed"))
        try:
            s.offer("f", os.lstat(file))
            assert not s.idle()
            async with asyncio.timeout(2.0):
                while not got:
                    await asyncio.sleep(0.01)
            assert [k for k, _, _ in got[0]] == ["f"]
            assert not s.pending and s.in_hand == 1 and not s.idle()
            release.set()
            await s.drain(time.monotonic() + 2.0)
            assert s.idle() and s.in_hand == 0
        finally:
            loop.cancel()

    async def test_a_failing_work_does_not_stop_the_loop(self, file: Path, tmp_path: Path) -> None:
        """An exception from the work is logged; the next due candidates still go to it."""
        s = Settler(0.01)
        seen: list[str] = []

        async def work(due: Due) -> None:
            seen.extend(k for k, _, _ in due)
            if len(seen) == 1:
                raise RuntimeError("boom")

        loop = asyncio.create_task(s.run(work, "test.failed"))
        try:
            s.offer("a", os.lstat(file))
            await s.drain(time.monotonic() + 2.0)
            other = tmp_path / "g.txt"
            other.write_bytes(b"two")
            s.offer("b", os.lstat(other))
            await s.drain(time.monotonic() + 2.0)
            assert seen == ["a", "b"]
            assert not loop.done()
        finally:
            loop.cancel()

    async def test_drain_gives_up_at_the_deadline(self, file: Path) -> None:
        """Finalization waits for what is settling, but never past its deadline."""
        s = Settler(60.0)
        s.offer("f", os.lstat(file))
        began = time.monotonic()
        await s.drain(began + 0.2)
        assert 0.2 <= time.monotonic() - began < 1.0
        assert not s.idle()
