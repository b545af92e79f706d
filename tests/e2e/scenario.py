"""One end-to-end run: the scripted agent under the sidecar, a Janus-like cache receiver, seeded faults.

`run_scenario(workdir, faults)` returns a `Result`; nothing of it outlives the call (every process group
is killed, every mount unmounted, in `finally`). Used by tests/test_e2e.py and tests/e2e/soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from support.machine import INOTIFY_QUEUE, mount_tmpfs, umount
from support.squeeze import idle_flood, low_nofile
from support.stalled import RCVBUF

REPO = Path(__file__).resolve().parents[2]
AGENT = Path(__file__).with_name("agent.py")
SETTLE_S = 0.4
SLOW_UI_WINDOW_S = 12.0  # the 5 s-per-request UI: during the first seconds of a run (10,000 pushes would take 14 h)


@dataclasses.dataclass
class Faults:
    burst: int = 10_000
    ui_down_s: float = 0.0  # the UI refuses connections for the first seconds
    ui_error_rate: float = 0.0  # 503 / 429 at random
    ui_delay_s: float = 0.0  # each request takes this long (during SLOW_UI_WINDOW_S)
    kill_restart_at: float = 0.0  # > 0: `serve` + separate agent; SIGKILL serve at that second, restart it
    full_disk: bool = False  # artifacts dir on a small tmpfs, filled by the agent
    polling: bool = False  # WATCHFILES_FORCE_POLLING=1
    overflow: bool = False  # the sidecar's inotify queues hold 64 events: the burst overflows them
    exit_status: int = 0
    seed: int = 0
    offload: bool = False  # upload to object storage (moto); the UI downloads from storage_url after the exit
    fd_squeeze_s: float = 0.0  # > 0: the sidecar at 256 descriptors, 400 idle connections that long (squeeze.py)
    non_readers: bool = False  # manifest and event clients that never read, connected all along

    def label(self) -> str:
        parts = [f"burst={self.burst}"]
        if self.ui_down_s:
            parts.append(f"ui_down={self.ui_down_s:.1f}s")
        if self.ui_error_rate:
            parts.append(f"503/429={self.ui_error_rate:.0%}")
        if self.ui_delay_s:
            parts.append(f"ui_slow={self.ui_delay_s:.0f}s")
        if self.kill_restart_at:
            parts.append(f"sigkill@{self.kill_restart_at:.1f}s")
        if self.full_disk:
            parts.append("full_disk")
        if self.polling:
            parts.append("polling")
        if self.overflow:
            parts.append("queue_overflow")
        if self.offload:
            parts.append("offload")
        if self.fd_squeeze_s:
            parts.append(f"fd_squeeze={self.fd_squeeze_s:.0f}s")
        if self.non_readers:
            parts.append("non_readers")
        parts.append(f"exit={self.exit_status}")
        return " ".join(parts)

    @classmethod
    def random(cls, rng: random.Random, burst: int, non_readers: float = 0.0) -> Faults:
        f = cls(seed=rng.randrange(1 << 30), exit_status=rng.choice([0, 0, 3, 7]))
        big = rng.random() < 0.35
        f.burst = burst if big else min(burst, rng.choice([100, 300, 1000]))
        if rng.random() < 0.5:
            f.ui_down_s = rng.uniform(1.0, 5.0)
        # pushes go one at a time: 503/429 or a 5 s UI on 10,000 pushes would take hours, so only on small runs
        if rng.random() < 0.5 and (not big or burst <= 1000):
            f.ui_error_rate = rng.uniform(0.1, 0.3)
        if rng.random() < 0.25 and (not big or burst <= 1000):
            f.ui_delay_s = 5.0
        if rng.random() < 0.35:
            f.kill_restart_at = rng.uniform(1.0, 6.0)
        if rng.random() < 0.3:
            f.full_disk = True
        if rng.random() < 0.3:
            f.polling = True
        elif rng.random() < 0.3:
            f.overflow = True
        if rng.random() < 0.35:  # drawn last: the other faults of a seed stay what they were
            f.fd_squeeze_s = rng.uniform(5.0, 20.0)
        if non_readers:  # drawn only when asked for, so that the other faults of a seed stay as they were
            f.non_readers = rng.random() < non_readers
        return f


@dataclasses.dataclass
class Result:
    faults: str
    ok: bool = False
    expected: int = 0
    delivered: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[str] = dataclasses.field(default_factory=list)
    broken_published: list[str] = dataclasses.field(default_factory=list)
    manifest_diff: list[str] = dataclasses.field(default_factory=list)
    exit_expected: int | None = None
    exit_got: int | None = None
    latencies: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """Like the Janus cache route: POST {chatId, artifact} -> download artifact.url, check sha256, keep it.

    With offload, it only takes note of each push and downloads every `url` after the sidecar has exited:
    the bytes then come from object storage or not at all."""

    def __init__(self, faults: Faults, t0: float) -> None:
        self.f = faults
        self.t0 = t0
        self.rng = random.Random(faults.seed ^ 0x5EED)
        self.held: dict[str, tuple[str, float]] = {}  # name -> (sha256, wall time verified)
        self.pushed: set[tuple[str, str]] = set()
        self.downloads: list[tuple[str, str, str, int]] = []  # name, pushed sha, got sha, status
        self.answers: dict[str, int] = {}
        self.deferred: dict[str, tuple[str, str]] = {}  # offload: name -> (sha256, url) of its latest push
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None

    def _count(self, what: str) -> None:
        self.answers[what] = self.answers.get(what, 0) + 1

    async def handle(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except (ConnectionError, ValueError):  # the sidecar was SIGKILLed mid-request
            return web.json_response({"ok": False}, status=400)
        if self.f.ui_delay_s and time.monotonic() - self.t0 < SLOW_UI_WINDOW_S:
            await asyncio.sleep(self.f.ui_delay_s)
        if self.f.ui_error_rate and self.rng.random() < self.f.ui_error_rate:
            status = self.rng.choice([503, 429])
            self._count(str(status))
            headers = {"Retry-After": "1"} if self.rng.random() < 0.3 else {}
            return web.json_response({"ok": False}, status=status, headers=headers)
        art = doc["artifact"]
        name, want = art["name"], art["sha256"]
        self.pushed.add((name, want))
        if self.f.offload:
            self.deferred[name] = (want, art["url"])
            self._count("noted")
            return web.json_response({"ok": True})
        ok = await self.download(name, want, art["url"])
        return web.json_response({"ok": ok}, status=200 if ok else 502)

    async def download(self, name: str, want: str, url: str) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(url) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            self._count(type(e).__name__)
            return False
        got = hashlib.sha256(body).hexdigest()
        self.downloads.append((name, want, got, status))
        if status != 200 or got != want:
            self._count(f"download {status} {'ok' if got == want else 'sha mismatch'}")
            return False
        self.held[name] = (got, time.time())
        self._count("200")
        return True

    async def download_deferred(self, store_url: str) -> None:
        """After the sidecar has exited: every pushed url must be the store's, and download byte-exact."""
        for name, (want, url) in sorted(self.deferred.items()):
            if not url.startswith(store_url + "/"):
                self._count("url not in the store")
                continue
            await self.download(name, want, url)

    async def start(self, port: int) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        app = web.Application(client_max_size=16 << 20)
        app.router.add_post("/api/artifacts/cache", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await asyncio.sleep(self.f.ui_down_s)
        for _ in range(50):
            try:
                await web.TCPSite(self.runner, "127.0.0.1", port).start()
                return
            except OSError:
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()


async def follow_events(base: str, seen: dict[tuple[str, str], float], stop: asyncio.Event) -> None:
    """Record every (name, sha256) the sidecar ever publishes (first wall time seen); reconnects across restarts."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=2)) as http:
        while not stop.is_set():
            try:
                async with http.get(base + "/v1/events") as resp:
                    kind, data, buf = "", "", b""
                    async for chunk in resp.content.iter_any():  # one event can be megabytes on one line
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for raw in lines:
                            kind, data = _sse_line(raw.decode().rstrip("\r"), kind, data, seen)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def _sse_line(line: str, kind: str, data: str, seen: dict[tuple[str, str], float]) -> tuple[str, str]:
    if line.startswith("event:"):
        return line[6:].strip(), data
    if line.startswith("data:"):
        return kind, data + line[5:].strip()
    if not line and data:
        doc = json.loads(data)
        arts = doc.get("artifacts") if kind == "manifest" else doc.get("upserted")
        now = time.time()
        for a in arts or []:
            seen.setdefault((a["name"], a["sha256"]), now)
        return "", ""
    return kind, data


NON_READING = (("/v1/manifest", 10), ("/v1/events", 100))  # (path, clients) of each batch
NON_READER_BATCH_S = 5.0


async def non_reading_clients(
    port: int, pid: Callable[[], int | None], stop: asyncio.Event, notes: dict[str, Any]
) -> None:
    """The non-reader fault: batches of clients that ask for the manifest or the event stream with a 4 KiB
    receive buffer and never read, a new batch every few seconds (the sidecar may cut or restart them
    meanwhile). Notes how many were opened and the highest RSS of the sidecar (`pid()`) seen meanwhile."""
    loop = asyncio.get_running_loop()
    opened = 0
    peak_kib = 0
    while not stop.is_set():
        batch: list[socket.socket] = []
        try:
            for path, count in NON_READING:
                for _ in range(count):
                    s = socket.socket()
                    batch.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                    s.setblocking(False)
                    await loop.sock_connect(s, ("127.0.0.1", port))
                    await loop.sock_sendall(s, f"GET {path} HTTP/1.1\r\nHost: e2e\r\n\r\n".encode())
                    opened += 1
        except OSError:
            pass  # the sidecar is restarting or gone: the next batch tries again
        try:
            end = time.monotonic() + NON_READER_BATCH_S
            while time.monotonic() < end and not stop.is_set():
                with contextlib.suppress(OSError, TypeError, ValueError):
                    status = Path(f"/proc/{pid()}/status").read_text()
                    peak_kib = max(peak_kib, int(status.split("VmRSS:")[1].split()[0]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            for s in batch:
                s.close()
            notes["non_readers"] = {"opened": opened, "sidecar_peak_rss_mib": round(peak_kib / 1024, 1)}


def kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


async def wait_proc(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.05)
    return False


SMALL_QUEUE = 64


_QUEUE_LOCK = asyncio.Lock()


@contextlib.asynccontextmanager
async def small_inotify_queue(enabled: bool, notes: dict[str, Any]) -> AsyncIterator[None]:
    """Shrink the inotify queue of instances created meanwhile (the sidecar's, read at inotify_init), then
    restore it. A machine-wide setting, so only for the moment the sidecar starts; needs root. Runs side by
    side (soak --jobs) take turns, so each restores the value it found."""
    if not enabled:
        yield
        return
    async with _QUEUE_LOCK:
        old: str | None = None
        try:
            old = INOTIFY_QUEUE.read_text().strip()
            INOTIFY_QUEUE.write_text(str(SMALL_QUEUE))
        except OSError as e:
            old = None
            notes["queue_overflow"] = f"unavailable ({e.strerror}): skipped"
        else:
            notes["queue_overflow"] = f"max_queued_events {SMALL_QUEUE} (was {old})"
        try:
            yield
        finally:
            if old is not None:
                INOTIFY_QUEUE.write_text(old)


def default_grace(faults: Faults) -> float:
    """Long enough for every push (one at a time, ~20/s here with other runs beside it) and the faults' retries
    (a refused push waits its backoff, or the 1 s Retry-After of 30 % of them); an upper bound only, not
    part of the verdict: the grace period ends as soon as everything was downloaded."""
    retries = faults.burst * faults.ui_error_rate * 0.6
    return 45.0 + faults.burst * 0.06 + (60.0 + retries if faults.ui_error_rate else 0.0)


async def run_scenario(workdir: Path, faults: Faults, *, grace: float | None = None) -> Result:
    grace = default_grace(faults) if grace is None else grace
    run_timeout = grace + 120.0
    t_start = time.monotonic()
    res = Result(faults=faults.label())
    shutil.rmtree(workdir, ignore_errors=True)
    artifacts, state, tool_results = workdir / "artifacts", workdir / "state", workdir / "claude" / "projects"
    for d in (artifacts, state, tool_results):
        d.mkdir(parents=True)
    port, ui_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    store = None
    if faults.offload:  # first: if it cannot start, nothing else was set up yet
        from support.s3server import BUCKET, S3Server, s3_env

        store = S3Server(free_port())
        store.start()
        try:
            store.create_bucket()
        except BaseException:
            store.stop()
            raise
    mounted = None
    if faults.full_disk:
        # 10,000 small files take a 4 KiB page each on tmpfs
        mounted = mount_tmpfs(artifacts, "64m" if faults.burst > 2000 else "16m")
        res.notes["full_disk"] = mounted or "unavailable (no tmpfs mount): skipped"
    expect_path = workdir / "expect.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "WATCHFILES_"))}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HOME"] = str(workdir)
    if faults.polling:
        env["WATCHFILES_FORCE_POLLING"] = "1"
    sidecar_flags = [
        "--artifacts-dir", str(artifacts), "--state-dir", str(state), "--tool-results-dir", str(tool_results),
        "--host", "127.0.0.1", "--port", str(port), "--public-base-url", base, "--chat-id", "c",
        "--ui-push-url", f"http://127.0.0.1:{ui_port}/api/artifacts/cache", "--ui-push-mode", "cache",
        "--settle-ms", str(int(SETTLE_S * 1000)), "--grace-period", f"{grace:.0f}", "--rescan-interval", "5",
        "--log-format", "json",
    ]  # fmt: skip
    if store is not None:
        env.update(s3_env())
        sidecar_flags += ["--s3-bucket", BUCKET, "--s3-endpoint-url", store.url]
    agent_argv = [
        sys.executable, str(AGENT), "--artifacts", str(artifacts), "--tool-results", str(tool_results),
        "--out", str(expect_path), "--seed", str(faults.seed), "--burst", str(faults.burst),
        "--settle", str(SETTLE_S), "--exit-status", str(faults.exit_status),
    ] + (["--fill-disk"] if mounted else []) + (["--big-mib", "12"] if store else [])  # fmt: skip

    t0 = time.monotonic()
    ui = Receiver(faults, t0)
    ui_task = asyncio.create_task(ui.start(ui_port))
    seen: dict[tuple[str, str], float] = {}
    stop = asyncio.Event()
    follower = asyncio.create_task(follow_events(base, seen, stop))
    procs: list[subprocess.Popen[bytes]] = []

    def sidecar_pid() -> int | None:
        return next((p.pid for p in reversed(procs) if p.args[1:3] == ["-m", "sidecar"]), None)

    stalled = None
    if faults.non_readers:
        stalled = asyncio.create_task(non_reading_clients(port, sidecar_pid, stop, res.notes))
    logs: list[Path] = []
    squeezer: asyncio.Task[None] | None = None

    def squeeze() -> None:  # once the first sidecar is ready; it outlives a SIGKILL and restart
        nonlocal squeezer
        if faults.fd_squeeze_s and squeezer is None:
            squeezer = asyncio.create_task(idle_flood(port, faults.fd_squeeze_s, res.notes))

    def start(mode: str, extra: list[str]) -> subprocess.Popen[bytes]:
        log = workdir / f"sidecar-{len(logs)}.log"
        logs.append(log)
        with open(log, "wb") as err, open(workdir / f"agent-{len(logs)}.out", "wb") as out:
            argv = [sys.executable, "-m", "sidecar", mode, *sidecar_flags, *extra]
            p = subprocess.Popen(
                argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                preexec_fn=low_nofile if faults.fd_squeeze_s else None,
            )  # fmt: skip
        procs.append(p)
        return p

    try:
        res.exit_expected = faults.exit_status
        if not faults.kill_restart_at:
            async with small_inotify_queue(faults.overflow, res.notes):
                sc = start("run", ["--", *agent_argv])
                await wait_ready(base, sc)
            squeeze()
            res.exit_got = await wait_proc(sc, run_timeout)
            if res.exit_got is None:
                res.errors.append(f"sidecar run did not exit within {run_timeout:.0f} s")
        else:
            # SIGKILL of `run` would orphan the agent (own process group) and a restarted `run` would start a
            # second agent: so this fault uses `serve` with the agent started by this driver, as an orchestrator
            # would, restarts `serve` on the same state dir and port, then finalizes with POST /v1/finalize.
            async with small_inotify_queue(faults.overflow, res.notes):
                sc = start("serve", [])
                await wait_ready(base, sc)
            squeeze()
            with open(workdir / "agent.out", "wb") as out:
                agent = subprocess.Popen(agent_argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            procs.append(agent)
            await asyncio.sleep(max(0.0, faults.kill_restart_at - (time.monotonic() - t0)))
            kill_group(sc)
            res.notes["killed_at_s"] = round(time.monotonic() - t0, 2)
            await asyncio.sleep(0.3)
            async with small_inotify_queue(faults.overflow, res.notes):
                sc = start("serve", [])
                ready = await wait_ready(base, sc)
            if not ready:
                res.errors.append("restarted serve never became ready")
            agent_rc = await wait_proc(agent, run_timeout)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                for _ in range(20):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with http.post(base + "/v1/finalize") as resp:
                            if resp.status == 202:
                                break
                    await asyncio.sleep(0.25)
            serve_rc = await wait_proc(sc, run_timeout)
            res.exit_got = agent_rc
            res.notes["serve_exit"] = serve_rc
            if serve_rc != 0:
                res.errors.append(f"serve exited with {serve_rc}")
    finally:
        for p in procs:
            kill_group(p)
        if store is not None:
            with contextlib.suppress(Exception):
                await ui.download_deferred(store.url)
            store.stop()
            res.notes["store_requests"] = len(store.calls)
        stop.set()
        for task in (follower, ui_task, *([squeezer] if squeezer else []), *([stalled] if stalled else [])):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await ui.stop()
        if mounted:
            # keep what the verdict needs (the final manifest is in the state dir, outside the mount)
            umount(artifacts)
    res.seconds = round(time.monotonic() - t_start, 1)
    res.notes["ui_answers"] = ui.answers
    res.notes["grace_s"] = round(grace)
    verdict(res, expect_path, state / "manifest.json", ui, seen, logs)
    return res


def verdict(
    res: Result,
    expect_path: Path,
    manifest_path: Path,
    ui: Receiver,
    seen: dict[tuple[str, str], float],
    logs: list[Path],
) -> None:
    try:
        exp = json.loads(expect_path.read_text())
    except (OSError, ValueError) as e:
        res.errors.append(f"the agent wrote no expectations: {e}")
        return
    try:
        man = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        res.errors.append(f"no final manifest in the state dir: {e}")
        man = {"entries": [], "state": None}
    res.notes.update(exp["notes"])
    res.notes["final_state"] = man.get("state")
    reasons: dict[str, int] = {}
    for r in man.get("rejected", []):
        reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    res.notes["rejected"] = reasons
    final_manifest = {e["name"]: e["sha256"] for e in man.get("entries", [])}
    created = {e["name"]: e["created_at"] for e in man.get("entries", [])}
    allowed = {k: set(v) for k, v in exp["allowed"].items()}
    forbidden = set(exp["forbidden"])
    want = dict(exp["final"])
    for name, digest in exp["optional"].items():
        if name in final_manifest:
            want[name] = digest
    res.expected = len(want)
    for name, digest in sorted(want.items()):
        if final_manifest.get(name) != digest:
            res.manifest_diff.append(f"{name}: manifest has {str(final_manifest.get(name))[:12]}")
    for name in sorted(set(final_manifest) - set(want)):
        res.manifest_diff.append(f"{name}: not expected in the final manifest")
    for name, digest in sorted(want.items()):
        held = ui.held.get(name)
        if held and held[0] == digest:
            res.delivered += 1
            published = seen.get((name, digest), created.get(name))
            if published is not None:
                res.latencies.append(max(0.0, held[1] - published))
        else:
            res.lost.append(name)
    for name, pushed, got, status in ui.downloads:
        if status == 200 and (got not in allowed.get(name, set()) or got in forbidden):
            res.corrupt.append(f"{name}: served {got[:12]} (pushed {pushed[:12]})")
    published = set(seen) | ui.pushed | set(final_manifest.items())
    for name, digest in sorted(published):
        if digest in forbidden or digest not in allowed.get(name, set()):
            res.broken_published.append(f"{name} {digest[:12]}")
    if res.exit_got != res.exit_expected:
        res.errors.append(f"exit status {res.exit_got}, expected {res.exit_expected}")
    warnings = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if '"lifecycle.grace_expired"' in line:
                    res.notes["grace_expired"] = json.loads(line).get("undelivered", [])[:5]
                if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line:
                    warnings.append(line[:300])
    if warnings:
        res.notes["sidecar_errors"] = warnings[:5]
    res.ok = not (res.lost or res.corrupt or res.broken_published or res.manifest_diff or res.errors)
