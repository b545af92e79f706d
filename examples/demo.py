"""The demos.

`make demo` (`python examples/demo.py`): the whole life. `sidecar run -- python examples/demo_agent.py`
with a demo chat UI (examples/demo_ui.py) receiving the pushes in cache mode and downloading every
artifact; prints the pushes, the manifest, the grace period ending early and the exit status.

`make demo-serve` (`python examples/demo.py serve`): `sidecar serve` on a demo workspace with a few real
images; prints the manifest and an artifact URL, and keeps serving until Ctrl-C (or for DEMO_SECONDS
seconds) so that the URL can be fetched with curl.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from demo_ui import DemoUI
from images import bar_chart_svg, gradient_png, tiny_gif

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / "demo-workspace"
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


def serve_demo() -> int:
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
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
    try:
        if not wait_for(lambda: get("/readyz"), 15):
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
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(BASE + "/v1/release", method="POST"), timeout=2)  # noqa: S310
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print(f"sidecar exited with {proc.returncode}")
    return 0


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
        events.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ui.stop()
    say(f"ui: {len(ui.verified)} artifacts received and verified: {sorted(ui.verified.values())}")
    say(f"sidecar exited with status {proc.returncode} after {time.monotonic() - started:.1f} s")
    return 0 if proc.returncode == 0 and ui.verified else 1


async def follow_events(base: str, say: Callable[[str], None]) -> None:
    """Keep a manifest from GET /v1/events (as an orchestrator would) and print it once it is final."""
    import aiohttp

    manifest: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        for _ in range(100):  # until the sidecar listens
            try:
                resp = await http.get(base + "/v1/events")
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        else:
            return
        kind, data = "", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                doc = json.loads(data)
                if kind == "manifest":
                    manifest = doc
                elif kind == "artifacts":
                    arts = {a["name"]: a for a in manifest.get("artifacts", [])}
                    arts.update({a["name"]: a for a in doc["upserted"]})
                    for name in doc["removed"]:
                        arts.pop(name, None)
                    manifest.update(version=doc["version"], artifacts=sorted(arts.values(), key=lambda a: a["name"]))
                elif kind == "state":
                    manifest.update(version=doc["version"], state=doc["state"])
                    say(f"events: state {doc['state']} (version {doc['version']})")
                    if doc["state"] == "final":
                        say("events: the final manifest:\n" + json.dumps(manifest, indent=2))
                kind, data = "", ""


if __name__ == "__main__":
    sys.exit(serve_demo() if sys.argv[1:] == ["serve"] else asyncio.run(whole_life()))
