"""sidecar.logs: one JSON object a line for structlog and stdlib loggers alike, never a secret, and a throttle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.helpers import REPO_ROOT, entry, wait_manifest

from sidecar import logs

AUTH = "auth-logs-4d2e9f1a7c"
UI = "ui-logs-8b3c5e0f6a"

# A process of its own: configure_logging rewires the root logger and structlog for the whole process.
EMIT = r"""
import logging, sys
from pathlib import Path
from sidecar.logs import configure_logging, get_logger
configure_logging(fmt=sys.argv[1], level=sys.argv[2], log_file=Path(sys.argv[3]) if sys.argv[3] else None)
log = get_logger("sidecar.test")
log.debug("probe.debug", n=0)
log.info("probe.info", n=1, path="a b.png")
log.warning("probe.warning", n=2)
try:
    raise ValueError("boom")
except ValueError:
    log.exception("probe.crashed", n=3)
logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1")
logging.getLogger("aiohttp.access").info("GET /x 200")
"""


def emit(fmt: str, level: str, log_file: Path | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", EMIT, fmt, level, str(log_file or "")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        check=True,
    )


def lines_of(text: str) -> list[dict[str, Any]]:
    """Every line parsed as one JSON object (a line that is not one fails the test)."""
    docs = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(d, dict) for d in docs)
    return docs


class TestConfigureLogging:
    def test_json_to_stderr_has_one_shape_and_nothing_on_stdout(self) -> None:
        """`json`: structlog events and aiohttp's stdlib lines alike carry event, level, logger and an
        ISO UTC timestamp; stdout (the agent's) gets nothing."""
        done = emit("json", "info", None)
        assert done.stdout == ""
        docs = lines_of(done.stderr)
        assert [d["event"] for d in docs] == [
            "probe.info",
            "probe.warning",
            "probe.crashed",
            "Error handling request from 127.0.0.1",
        ]
        for d in docs:
            assert {"event", "level", "logger", "timestamp"} <= d.keys()
            assert d["timestamp"].endswith("Z")
        assert docs[0]["logger"] == "sidecar.test" and docs[0]["n"] == 1 and docs[0]["path"] == "a b.png"
        assert docs[3]["logger"] == "aiohttp.server" and docs[3]["level"] == "error"
        assert "ValueError: boom" in docs[2]["exception"], "the traceback is a field of the line"

    def test_the_level_filters_and_access_lines_are_debug_only(self) -> None:
        """At `warning` info events go; at `debug` they come, and so does aiohttp's access log."""
        quiet = [d["event"] for d in lines_of(emit("json", "warning", None).stderr)]
        assert "probe.info" not in quiet and "probe.warning" in quiet
        loud = [d["event"] for d in lines_of(emit("json", "debug", None).stderr)]
        assert loud[0] == "probe.debug" and "GET /x 200" in loud

    def test_a_log_file_gets_the_lines_and_its_directory_is_made(self, tmp_path: Path) -> None:
        """--log-file: appended to, its parent created; `auto` is JSON there (a file is no TTY)."""
        path = tmp_path / "sub" / "dir" / "sidecar.log"
        first = emit("auto", "info", path)
        emit("json", "info", path)
        assert first.stdout == "" and first.stderr == ""
        events = [d["event"] for d in lines_of(path.read_text())]
        assert events.count("probe.info") == 2, "appended, not truncated"

    def test_console_format_is_not_json(self) -> None:
        """`console` renders for people: the event name is there, the line is not a JSON object."""
        err = emit("console", "info", None).stderr
        assert "probe.info" in err and not err.lstrip().startswith("{")


class TestDaemonLogs:
    async def test_every_line_is_json_and_no_token_is_in_any(self, run_sidecar, run_ui, workspace, http) -> None:  # type: ignore[no-untyped-def]
        """A daemon with both tokens, pushes that fail then succeed and requests with wrong credentials
        writes only JSON lines, and neither token appears in any of them."""
        ws = workspace()
        for name, value in (("auth.token", AUTH), ("ui.token", UI)):
            (ws.root / name).write_text(value + "\n")
            (ws.root / name).chmod(0o600)
        ui = await run_ui(503, 500)
        sc = await run_sidecar(
            "--auth-token-file",
            str(ws.root / "auth.token"),
            "--ui-token-file",
            str(ws.root / "ui.token"),
            "--ui-push-url",
            ui.url,
            "--log-level",
            "debug",
            ws=ws,
        )
        sc.auth_token = AUTH
        ws.write("a.txt", b"hello")
        for bad in ("Bearer " + AUTH[:-1], "Bearer " + UI, "Basic " + AUTH):
            async with http.get(sc.url("/v1/manifest"), headers={"Authorization": bad}) as resp:
                assert resp.status == 401
        await wait_manifest(http, sc, lambda d: entry(d, "a.txt"))
        await sc.wait_log("push.ok", timeout=10)
        await sc.stop()
        docs = lines_of(sc.stderr())
        events = {d["event"] for d in docs}
        assert {"http.listening", "artifact.published", "push.retry", "push.ok"} <= events
        assert all({"event", "level", "timestamp"} <= d.keys() for d in docs)
        assert AUTH not in sc.stderr() and UI not in sc.stderr()
        assert sc.stdout() == b""


class TestThrottle:
    def test_says_how_many_lines_it_left_out(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """One line an interval; the next line carries the count of those left out in between."""
        now = [100.0]
        monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
        throttle = logs.Throttle(interval=1.0)
        assert throttle.hit() == 0
        assert [throttle.hit() for _ in range(5)] == [None] * 5
        now[0] += 1.0
        assert throttle.hit() == 5
        assert throttle.hit() is None

    def test_the_first_line_is_never_held_back(self) -> None:
        """A fresh throttle lets its first line through at once, with nothing left out."""
        assert logs.Throttle(interval=3600).hit() == 0

    def test_interval_zero_lets_every_line_through(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no interval nothing is left out, even within the same instant."""
        monkeypatch.setattr(logs.time, "monotonic", lambda: 5.0)
        throttle = logs.Throttle(interval=0.0)
        assert [throttle.hit() for _ in range(3)] == [0, 0, 0]
