"""supervise.py: the child of `sidecar run` gets its signals, its stdio and its status; no zombie piles up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from support.helpers import REPO_ROOT, Sidecar, Workspace, free_port

RunSidecar = Callable[..., Awaitable[Sidecar]]

# Double-forks five grandchildren that outlive their parent by 0.3 s, so they are orphaned and must be
# reaped by whoever adopts them; then counts the zombies whose parent is that adopter.
ORPHANS = textwrap.dedent(
    """
    import os, sys, time
    adopter = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    for _ in range(5):
        if os.fork() == 0:
            if os.fork() == 0:
                time.sleep(0.3)
                os._exit(0)
            os._exit(0)
    time.sleep(1.5)
    zombies = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == adopter:
            zombies += 1
    print(f"zombies={zombies}", flush=True)
    sys.exit(min(zombies, 100))
    """
)


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10, check=False
    )
    return probe.returncode == 0


@contextlib.contextmanager
def _process_group(argv: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


class TestReaping:
    @pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (a new PID namespace)")
    def test_orphans_are_reaped_when_the_sidecar_is_pid_1(self, workspace: Callable[..., Workspace]) -> None:
        """As PID 1 of a new PID namespace the sidecar reaps every orphan the agent leaves behind."""
        ws = workspace()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        argv = [
            "unshare", "--pid", "--fork", "--mount-proc",
            sys.executable, "-m", "sidecar", "run",
            "--artifacts-dir", str(ws.artifacts), "--state-dir", str(ws.state),
            "--tool-results-dir", str(ws.tool_results), "--host", "127.0.0.1", "--port", str(free_port()),
            "--grace-period", "0", "--log-format", "json",
            "--", sys.executable, "-c", ORPHANS, "1",
        ]  # fmt: skip
        with _process_group(argv, env, ws.root) as proc:
            out, err = proc.communicate(timeout=30)
        assert b"zombies=0" in out, f"orphans left as zombies under PID 1: {out!r}\n{err.decode()[-2000:]}"
        assert proc.returncode == 0

    async def test_orphans_are_reaped_by_the_subreaper(self, run_sidecar: RunSidecar) -> None:
        """Outside a PID namespace the sidecar is a child subreaper: orphans come to it and are reaped."""
        sc = await run_sidecar(mode="run", command=[sys.executable, "-c", ORPHANS], wait_ready=False)
        assert await sc.wait_exit(20) == 0, f"zombies left: {sc.stdout()!r}\n{sc.stderr()[-2000:]}"
        assert b"zombies=0" in sc.stdout()


class TestSignals:
    async def test_signals_reach_a_grandchild_in_the_process_group(
        self, run_sidecar: RunSidecar, tmp_path: Path
    ) -> None:
        """SIGUSR1 and SIGHUP sent to the sidecar reach every process of the child's group, grandchildren too."""
        marker = tmp_path / "got"
        grandchild = textwrap.dedent(
            f"""
            import signal, sys, time
            seen = []
            def note(sig, frame):
                seen.append(signal.Signals(sig).name)
                open({str(marker)!r}, "w").write(",".join(seen))
                if len(seen) == 2:
                    sys.exit(0)
            signal.signal(signal.SIGUSR1, note)
            signal.signal(signal.SIGHUP, note)
            open({str(marker)!r} + ".ready", "w").close()
            time.sleep(20)
            """
        )
        script = tmp_path / "grandchild.py"
        script.write_text(grandchild)
        # The shell itself ignores both, so that only the grandchild decides how the run ends.
        shell = f"trap '' USR1 HUP; {sys.executable} {script}; exit 5"
        sc = await run_sidecar(mode="run", command=["sh", "-c", shell])
        for _ in range(200):
            if Path(str(marker) + ".ready").exists():
                break
            await asyncio.sleep(0.02)
        sc.signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)
        sc.signal(signal.SIGHUP)
        assert await sc.wait_exit(15) == 5
        assert marker.read_text() == "SIGUSR1,SIGHUP"

    async def test_sigterm_goes_to_the_child_and_its_status_comes_back(self, run_sidecar: RunSidecar) -> None:
        """While the child lives, SIGTERM is the child's: killed by it, the sidecar exits 128 + 15."""
        sc = await run_sidecar(mode="run", command=[sys.executable, "-c", "import time; time.sleep(30)"])
        sc.signal(signal.SIGTERM)
        assert await sc.wait_exit(15) == 128 + signal.SIGTERM
        assert sc.events("lifecycle.child_exited", status=128 + signal.SIGTERM)

    async def test_missing_command_exits_127(self, run_sidecar: RunSidecar) -> None:
        """A command that does not exist ends like it would in a shell: status 127, after finalization."""
        sc = await run_sidecar(mode="run", command=["/nonexistent/agent"], wait_ready=False)
        assert await sc.wait_exit(15) == 127


class TestStdio:
    async def test_stdout_is_passed_through_byte_exact(self, run_sidecar: RunSidecar) -> None:
        """The child's stdout is the sidecar's stdout, byte for byte; the sidecar adds nothing to it."""
        data = bytes(range(256)) * 64
        code = f"import sys; sys.stdout.buffer.write({data!r}); sys.stdout.flush()"
        sc = await run_sidecar(mode="run", command=[sys.executable, "-c", code], wait_ready=False)
        assert await sc.wait_exit(15) == 0
        assert sc.stdout() == data
