"""sidecar.tasks: a long-lived background task that crashes is logged and restarted with a backoff (SPEC 9)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar import tasks
from sidecar.tasks import RESTART_CAP_S, keep_running, restart_delay


class Recorder:
    """Stands in for the module's logger: every call as (level, event, fields)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **fields: Any) -> None:
            self.calls.append((level, event, fields))

        return log

    def events(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, e, fields in self.calls if e == event]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(tasks, "log", rec)
    return rec


class TestKeepRunning:
    async def test_a_crashed_task_is_logged_and_restarted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An exception restarts the task after a backoff (and logs task.died); a return ends it."""
        runs: list[int] = []

        async def flaky() -> None:
            runs.append(len(runs))
            if len(runs) < 3:
                raise ValueError("could not convert string to float: '²'")

        await asyncio.wait_for(keep_running("flaky", flaky), 10)
        assert runs == [0, 1, 2]
        err = capsys.readouterr()
        assert "task.died" in err.out + err.err and "task.restarted" in err.out + err.err

    async def test_cancellation_is_not_a_crash(self):
        """Cancelling the supervised task ends it at once; it is not restarted."""
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(keep_running("forever", forever))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    def test_backoff_doubles_up_to_a_cap(self):
        """0.1 s after the first crash, doubling, never more than the cap."""
        assert restart_delay(1) == pytest.approx(0.1)
        assert restart_delay(2) == pytest.approx(0.2)
        assert restart_delay(1000) == RESTART_CAP_S

    async def test_each_crash_in_a_row_waits_twice_as_long(self, recorder: Recorder) -> None:
        """Three crashes in a row: restarts after 0.1, 0.2 and 0.4 s, each logged as an exception."""
        runs: list[int] = []

        async def crashes_three_times() -> None:
            runs.append(len(runs))
            if len(runs) <= 3:
                raise RuntimeError(f"crash {len(runs)}")

        await asyncio.wait_for(keep_running("pusher", crashes_three_times), 10)
        died = recorder.events("task.died")
        assert [d["restart_in_s"] for d in died] == pytest.approx([0.1, 0.2, 0.4])
        assert [d["crashes"] for d in died] == [1, 2, 3]
        assert {d["task"] for d in died} == {"pusher"}
        assert [level for level, e, _ in recorder.calls if e == "task.died"] == ["exception"] * 3
        assert [r["crashes"] for r in recorder.events("task.restarted")] == [1, 2, 3]
        assert len(runs) == 4

    async def test_a_crash_loop_does_not_spin(self, recorder: Recorder) -> None:
        """A task that always crashes is started again only after its backoff: in 0.25 s (less than the
        0.1 + 0.2 + 0.4 s of the first three waits) it runs at most three times, not thousands."""
        runs: list[int] = []

        async def always_crashes() -> None:
            runs.append(1)
            raise ValueError("bad input")

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(keep_running("watcher", always_crashes), 0.25)
        assert 1 <= len(runs) <= 3

    async def test_a_crash_after_a_healthy_run_starts_the_backoff_over(
        self, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A task that ran for HEALTHY_S before dying waits the first delay again, not a longer one."""
        monkeypatch.setattr(tasks, "HEALTHY_S", 0.0)  # every run counts as a healthy one
        runs: list[int] = []

        async def crashes_after_running() -> None:
            runs.append(1)
            if len(runs) <= 3:
                raise OSError("disk went away")

        await asyncio.wait_for(keep_running("persist", crashes_after_running), 10)
        assert [d["crashes"] for d in recorder.events("task.died")] == [1, 1, 1]
        assert [d["restart_in_s"] for d in recorder.events("task.died")] == pytest.approx([0.1] * 3)

    async def test_a_task_that_returns_is_done(self, recorder: Recorder) -> None:
        """Returning is not crashing: no restart, nothing logged."""
        runs: list[int] = []

        async def done() -> None:
            runs.append(1)

        await keep_running("watchdog", done)
        assert runs == [1] and recorder.calls == []
