"""The sidecar against a Node stand-in of the Janus UI's cache route (tests/support/janus_ui.mjs): the
pre-release gate, the "download failed" answer, one id for the same bytes under two names."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.helpers import REPO_ROOT, Workspace, daemon_env, free_port, sha256, wait_for

STAND_IN = REPO_ROOT / "tests" / "support" / "janus_ui.mjs"
EXAMPLES = REPO_ROOT / "examples" / "janus"
CHAT = "chat-1"
TOKEN = "sandbox-token"  # noqa: S105 - a test value
PASSWORD = "pre release, with a comma"  # noqa: S105 - a test value; a comma must survive the list rules
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="the Janus stand-in needs node")


@dataclasses.dataclass
class JanusUI:
    proc: asyncio.subprocess.Process
    root: Path
    port: int
    calls: list[dict[str, Any]]

    @property
    def cache_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/artifacts/cache"

    def cached(self, data: bytes) -> bytes | None:
        """The bytes the UI stored for this content's id, if it did."""
        folder = self.root / CHAT
        art_id = "artf_" + sha256(data)[:16]
        if not folder.is_dir():
            return None
        for meta in folder.glob(f"{art_id}*.json"):
            return (folder / meta.name.removesuffix(".json")).read_bytes()
        return None

    def outcomes(self, outcome: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c.get("outcome") == outcome]


@pytest.fixture
async def janus_ui(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[JanusUI]]]:
    """Factory: `await janus_ui(password=..., fail_first=...)` starts the Node stand-in on 127.0.0.1."""
    started: list[tuple[JanusUI, asyncio.Task[None]]] = []

    async def start(*, password: str | None = None, fail_first: bool = False) -> JanusUI:
        assert NODE is not None
        root = tmp_path / f"janus-{len(started)}"
        env = {"PATH": "/usr/bin:/bin", "JANUS_UI_ROOT": str(root), "JANUS_UI_PORT": "0"}
        if password is not None:
            env["CHUTES_JANUS_PRE_RELEASE_PWD"] = password
        if fail_first:
            env["JANUS_UI_FAIL_FIRST_DOWNLOAD"] = "1"
        proc = await asyncio.create_subprocess_exec(
            NODE, str(STAND_IN), env=env, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        ui = JanusUI(proc, root, int(first["listening"]), [])

        async def follow() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                with contextlib.suppress(ValueError):
                    ui.calls.append(json.loads(line))

        started.append((ui, asyncio.create_task(follow())))
        return ui

    yield start
    for ui, task in started:
        if ui.proc.returncode is None:
            ui.proc.terminate()
            try:
                await asyncio.wait_for(ui.proc.wait(), 5)
            except TimeoutError:
                ui.proc.kill()
                await ui.proc.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cache_mode(ui: JanusUI, port: int, *extra: str) -> tuple[str, ...]:
    return (
        "--ui-push-url", ui.cache_url, "--ui-push-mode", "cache", "--chat-id", CHAT,
        "--public-base-url", f"http://127.0.0.1:{port}", *extra,
    )  # fmt: skip


def writer(files: dict[str, bytes], ws: Workspace) -> list[str]:
    """A child that copies these files into the artifacts dir one by one (as an agent writes), then exits 0."""
    src = ws.root / "agent-src"
    for i, data in enumerate(files.values()):
        src.mkdir(exist_ok=True)
        (src / str(i)).write_bytes(data)
    code = (
        "import json, sys, time, pathlib\n"
        "src, root = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "for i, name in enumerate(json.loads(sys.argv[3])):\n"
        "    p = root / name\n"
        "    p.parent.mkdir(parents=True, exist_ok=True)\n"
        "    p.write_bytes((src / str(i)).read_bytes())\n"
        "    time.sleep(0.05)\n"
    )
    return [sys.executable, "-c", code, str(src), str(ws.artifacts), json.dumps(list(files))]


def kinds() -> dict[str, bytes]:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    return {
        "chart.png": png,
        "data/table.csv": b"quarter,revenue\nQ1,3.1\nQ2,4.7\n",
        "data/result.json": b'{"ok": true, "values": [1, 2, 3]}',
        "blob.bin": bytes(range(256))[::-1] * 500,
        "notes.txt": "un texte accentué\n".encode(),
        "dir x/space name.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>',
    }


class TestGate:
    async def test_gated_ui_caches_every_artifact_and_the_grace_period_ends_by_downloads(
        self, janus_ui, run_sidecar, workspace
    ):
        """With `--ui-push-header "X-PreReleasePassword: ..."` a gated Janus caches every artifact byte-exact
        and the grace period ends because everything was downloaded; the password is never logged."""
        ui = await janus_ui(password=PASSWORD)
        ws = workspace()
        files = kinds()
        port = free_port()
        flags = cache_mode(ui, port, "--ui-push-header", f"X-PreReleasePassword: {PASSWORD}", "--grace-period", "60")
        sc = await run_sidecar(*flags, mode="run", command=writer(files, ws), port=port)
        assert await sc.wait_exit(30) == 0
        assert sc.events("lifecycle.delivered") and not sc.events("lifecycle.grace_expired")
        for name, data in files.items():
            assert ui.cached(data) == data, name
        assert not [c for c in ui.calls if c.get("status") == 401]
        assert PASSWORD not in sc.stderr()


class TestFailedDownload:
    async def test_the_url_echoed_back_is_retried_until_the_file_is_cached(self, janus_ui, run_sidecar, workspace):
        """A 200 whose `url` is the pushed one means the UI's download failed: pushed again until cached."""
        ui = await janus_ui(fail_first=True)
        ws = workspace()
        port = free_port()
        sc = await run_sidecar(*cache_mode(ui, port), port=port)
        a, b = b"first artifact " * 100, b"second artifact " * 100
        ws.write("a.txt", a)
        ws.write("b.txt", b)
        await wait_for(lambda: ui.cached(a) == a and ui.cached(b) == b, timeout=15)
        assert len(ui.outcomes("download_failed")) == 2
        assert len(sc.events("push.retry", reason="the UI could not download the artifact")) >= 2


class TestSameBytes:
    async def test_one_download_ends_the_grace_period_for_every_name(self, janus_ui, run_sidecar, workspace):
        """The same bytes under two names share an id; Janus downloads it once, and that is enough."""
        ui = await janus_ui()
        ws = workspace()
        shot = kinds()["chart.png"]
        files = {"shot.png": shot, "copies/shot-copy.png": shot, "other.csv": b"a,b\n1,2\n"}
        port = free_port()
        flags = cache_mode(ui, port, "--grace-period", "60")
        sc = await run_sidecar(*flags, mode="run", command=writer(files, ws), port=port)
        assert await sc.wait_exit(30) == 0
        assert sc.events("lifecycle.delivered") and not sc.events("lifecycle.grace_expired")
        assert len(ui.outcomes("cached")) == 2  # two contents, three names
        assert ui.cached(shot) == shot


class TestExamples:
    async def test_sandbox_and_baseline_sides_with_a_gated_janus(self, janus_ui, workspace, http):
        """examples/janus: sandbox.sh runs the agent under the sidecar pushing to the gated UI; baseline.py
        watches the sandbox until `final` and its chunks' items are Artifacts the UI's route accepts."""
        ui = await janus_ui(password=PASSWORD)
        ws = workspace()
        files = {**kinds(), "copy/chart.png": kinds()["chart.png"]}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = daemon_env(ws, None)
        env.update(
            SIDECAR=f"{sys.executable} -m sidecar", SANDBOX_HOST="127.0.0.1", SANDBOX_PORT=str(port),
            ARTIFACTS_DIR=str(ws.artifacts), SANDBOX_PUBLIC_URL=base, CHAT_ID=CHAT,
            JANUS_URL=f"http://127.0.0.1:{ui.port}/", SIDECAR_UI_PUSH_HEADERS=f"X-PreReleasePassword: {PASSWORD}",
            SIDECAR_AUTH_TOKEN=TOKEN, SIDECAR_STATE_DIR=str(ws.state),
            SIDECAR_TOOL_RESULTS_DIRS=str(ws.tool_results), SIDECAR_GRACE_PERIOD="60", SIDECAR_SETTLE_MS="50",
            SIDECAR_LOG_FORMAT="json",
        )  # fmt: skip
        agent = ["sh", "-c", 'sleep 1 && exec "$@"', "agent", *writer(files, ws)]
        with open(ws.root / "sandbox.stderr", "wb") as err:
            sandbox = subprocess.Popen(
                ["sh", str(EXAMPLES / "sandbox.sh"), *agent], env=env, cwd=ws.root, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        baseline_env = dict(daemon_env(ws, None), SANDBOX_TOKEN=TOKEN)
        baseline = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "baseline.py"), base, env=baseline_env, stdout=asyncio.subprocess.PIPE
        )
        try:
            out, _ = await asyncio.wait_for(baseline.communicate(), 40)
            assert baseline.returncode == 0  # it saw `final`
            await wait_for(lambda: sandbox.poll() is not None, timeout=20)
            assert sandbox.returncode == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sandbox.pid, signal.SIGKILL)  # nothing left if it exited (its children too)
            with contextlib.suppress(ProcessLookupError):
                baseline.kill()
            sandbox.wait()
            await baseline.wait()
        log = (ws.root / "sandbox.stderr").read_text()
        assert '"lifecycle.delivered"' in log and '"lifecycle.grace_expired"' not in log
        assert PASSWORD not in log and TOKEN not in log
        for data in files.values():
            assert ui.cached(data) == data
        chunks = [json.loads(line[len("data: ") :]) for line in out.decode().splitlines() if line.startswith("data: ")]
        items = [i for c in chunks for i in c["choices"][0]["delta"]["janus"]["payload"]["items"]]
        assert sorted(i["id"] for i in items) == sorted({"artf_" + sha256(d)[:16] for d in files.values()})
        gate = {"X-PreReleasePassword": PASSWORD}
        for item in items:
            async with http.post(ui.cache_url, json={"chatId": CHAT, "artifact": item}, headers=gate) as resp:
                assert resp.status == 200
                assert (await resp.json())["url"].startswith(f"/api/artifacts/{CHAT}/")
