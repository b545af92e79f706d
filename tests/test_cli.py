"""sidecar.cli's error path: a daemon that cannot start says why in one line and exits non-zero."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from helpers import Sidecar

RunSidecar = Callable[..., Awaitable[Sidecar]]


class TestStartupErrors:
    async def test_a_port_in_use_is_one_line_naming_it_and_exit_1(self, run_sidecar: RunSidecar) -> None:
        """Another process listens on the port: one `sidecar: error:` line naming the port, no traceback, 1."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            sc = await run_sidecar(port=port, wait_ready=False)
            assert await sc.wait_exit(10) == 1
        lines = sc.stderr().splitlines()
        assert "Traceback" not in sc.stderr()
        assert lines[-1] == f"sidecar: error: port {port} is already in use on 127.0.0.1 (--port, SIDECAR_PORT)"
        for line in lines[:-1]:  # whatever was logged before the bind, as JSON
            json.loads(line)

    async def test_with_a_log_file_stderr_still_gets_the_one_line(
        self, run_sidecar: RunSidecar, tmp_path: Path
    ) -> None:
        """`--log-file`: stderr holds exactly the one error line; the log file has `lifecycle.startup_failed`."""
        log_file = tmp_path / "sidecar.log"
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            sc = await run_sidecar("--log-file", str(log_file), port=port, wait_ready=False)
            assert await sc.wait_exit(10) == 1
        assert sc.stderr().splitlines() == [
            f"sidecar: error: port {port} is already in use on 127.0.0.1 (--port, SIDECAR_PORT)"
        ]
        events = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert [e["event"] for e in events if e["level"] == "error"] == ["lifecycle.startup_failed"]
