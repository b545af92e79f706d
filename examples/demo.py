"""The demos.

`make demo` (`python examples/demo.py`): the whole life. `sidecar run -- python examples/demo_agent.py`
with a demo chat UI (examples/demo_ui.py) receiving the pushes in cache mode and downloading every
artifact; prints the pushes, the manifest, the grace period ending early and the exit status.

`make demo-serve` (`python examples/demo.py serve`): `sidecar serve` on a demo workspace with a few real
images; prints the manifest and an artifact URL, and keeps serving until Ctrl-C (or for DEMO_SECONDS
seconds) so that the URL can be fetched with curl. It refuses a port already in use (DEMO_PORT, 5173 by
default), and stops its sidecar on Ctrl-C, SIGTERM or a hangup; the sidecar is also sent SIGTERM by the
kernel should the demo die without cleaning up.

DEMO_WORKSPACE moves the demo's files (default: demo-workspace/ in the repository).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).parent))
from demo_ui import DemoUI
from images import bar_chart_svg, gradient_png, tiny_gif

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = Path(os.environ.get("DEMO_WORKSPACE", ROOT / "demo-workspace"))
PORT = int(os.environ.get("DEMO_PORT", "5173"))
BASE = f"http://127.0.0.1:{PORT}"


def get(path: str) -> bytes:
    with urllib.request.urlopen(BASE + path, timeout=5) as resp:  # noqa: S310 - loopback only
        return bytes(resp.read())


def wait_for(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():  # type: ignore[operator]
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def make_workspace() -> Path:
    shutil.rmtree(WORKSPACE, ignore_errors=True)
    artifacts = WORKSPACE / "artifacts"
    (artifacts / "charts").mkdir(parents=True)
    (artifacts / "waves.png").write_bytes(gradient_png())
    (artifacts / "charts" / "q3.svg").write_bytes(bar_chart_svg([3.1, 4.7, 4.2, 6.8]))
    (artifacts / "dots.gif").write_bytes(tiny_gif())
    (artifacts / "table.csv").write_text("quarter,revenue\nQ1,3.1\nQ2,4.7\nQ3,4.2\nQ4,6.8\n")
    (artifacts / "draft.png.part").write_bytes(b"a temp name: never published")
    return artifacts


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop the sidecar as Ctrl-C would."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (SO_REUSEADDR: connections closing do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when the demo dies, however it dies (Linux)."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before prctl: nobody would stop us
            os._exit(1)

    return preexec


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Release the grace period, SIGTERM, and SIGKILL the sidecar's group after 10 s."""
    with contextlib.suppress(OSError):
        urllib.request.urlopen(urllib.request.Request(BASE + "/v1/release", method="POST"), timeout=2)  # noqa: S310
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def serve_demo() -> int:
    if port_in_use(PORT):
        # Before the workspace is touched: it may be the one of a demo still serving on that port.
        print(
            f"port {PORT} on 127.0.0.1 is already in use (another demo still serving?): "
            f"stop that, or choose another port with DEMO_PORT=...",
            file=sys.stderr,
        )
        return 1
    artifacts = make_workspace()
    argv = [
        sys.executable, "-m", "sidecar", "serve",
        "--artifacts-dir", str(artifacts),
        "--state-dir", str(WORKSPACE / "state"),
        "--tool-results-dir", str(WORKSPACE / "projects"),
        "--host", "127.0.0.1", "--port", str(PORT),
        "--public-base-url", BASE,
        "--grace-period", "2",
        "--log-format", "console",
        "--log-file", str(WORKSPACE / "sidecar.log"),
    ]  # fmt: skip
    print(f"$ {' '.join(argv[2:])}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    proc: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        # Its own process group, so that Ctrl-C reaches only the demo, which stops it in order (below).
        proc = subprocess.Popen(argv, cwd=ROOT, process_group=0, preexec_fn=die_with_parent())
        if not wait_for(lambda: proc.poll() is not None or get("/readyz"), 15) or proc.poll() is not None:
            print(f"the sidecar did not become ready; see {WORKSPACE / 'sidecar.log'}", file=sys.stderr)
            return 1
        wanted = {"waves.png", "charts/q3.svg", "dots.gif", "table.csv"}
        wait_for(lambda: wanted <= {e["name"] for e in json.loads(get("/v1/manifest"))["artifacts"]}, 10)
        manifest = json.loads(get("/v1/manifest"))
        print("\nGET /v1/manifest\n" + json.dumps(manifest, indent=2))
        url = next(e["url"] for e in manifest["artifacts"] if e["name"] == "waves.png")
        print(f"\nan artifact: {url}\n  curl -sS {url} | file -\n")
        print(f"serving {artifacts} on {BASE} (logs: {WORKSPACE / 'sidecar.log'}); Ctrl-C to stop", flush=True)
        seconds = float(os.environ.get("DEMO_SECONDS", "inf"))
        deadline = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.returncode:  # it stopped on its own, and not well
            print(f"the sidecar exited with {proc.returncode}; see {WORKSPACE / 'sidecar.log'}", file=sys.stderr)
            status = 128 - proc.returncode if proc.returncode < 0 else proc.returncode
    except KeyboardInterrupt:
        pass
    except Stopped as e:
        status = 128 + e.signum
    finally:
        # A second signal must not cut the stop short: it is bounded (10 s, then SIGKILL).
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        if proc is not None and proc.poll() is None:
            stop(proc)
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        print(f"sidecar exited with {proc.returncode if proc else None}", flush=True)
    return status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def whole_life() -> int:
    shutil.rmtree(WORKSPACE, ignore_errors=True)
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:5.2f}s] {line}", flush=True)

    ui = DemoUI(WORKSPACE / "ui-cache", say)
    push_url = await ui.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        SIDECAR_ARTIFACTS_DIR=str(WORKSPACE / "artifacts"),
        SIDECAR_TOOL_RESULTS_DIRS=str(WORKSPACE / "claude" / "projects"),
        SIDECAR_STATE_DIR=str(WORKSPACE / "state"),
    )
    argv = [
        sys.executable, "-m", "sidecar", "run",
        "--host", "127.0.0.1", "--port", str(port),
        "--public-base-url", base, "--chat-id", "demo-chat",
        "--ui-push-url", push_url, "--ui-push-mode", "cache",
        "--grace-period", "20", "--settle-ms", "300",
        "--log-format", "json", "--log-file", str(WORKSPACE / "sidecar.log"),
        "--", sys.executable, str(Path(__file__).parent / "demo_agent.py"),
        str(WORKSPACE / "artifacts"), str(WORKSPACE / "claude" / "projects"),
    ]  # fmt: skip
    say("$ sidecar run --ui-push-mode cache --grace-period 20 ... -- python examples/demo_agent.py")
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=ROOT)
    events = asyncio.create_task(follow_events(base, say))
    log_path = WORKSPACE / "sidecar.log"
    offset = 0
    try:
        while proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.2)
            if log_path.exists():
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                for line in chunk.decode(errors="replace").splitlines():
                    rec = json.loads(line) if line.startswith("{") else {}
                    ev = rec.get("event", "")
                    if ev.startswith(("lifecycle.", "datauri.", "push.")) or ev == "artifact.published":
                        detail = {k: v for k, v in rec.items() if k not in ("event", "level", "logger", "timestamp")}
                        say(f"sidecar: {ev} {json.dumps(detail)[:120]}")
    finally:
        # The final state reaches every event stream before the sidecar exits: let it be printed.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(events, 2 if proc.returncode is not None else 0)
        events.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ui.stop()
    say(f"ui: {len(ui.verified)} artifacts received and verified: {sorted(ui.verified.values())}")
    say(f"sidecar exited with status {proc.returncode} after {time.monotonic() - started:.1f} s")
    return 0 if proc.returncode == 0 and ui.verified else 1


async def follow_events(base: str, say: Callable[[str], None]) -> None:
    """Follow the manifest as an orchestrator would (sidecar.client.watch: GET /v1/events, deltas applied)
    and print it once it is final."""
    from sidecar.client import watch

    state = ""
    async for manifest in watch(base, retry_for=30):
        if manifest["state"] != state:
            state = manifest["state"]
            say(f"events: state {state} (version {manifest['version']})")
    say("events: the final manifest:\n" + json.dumps(manifest, indent=2))


if __name__ == "__main__":
    sys.exit(serve_demo() if sys.argv[1:] == ["serve"] else asyncio.run(whole_life()))
