"""The sidecar's own costs, beyond serving files: publish and push latency, data-URL materialization, idle
footprint, time to /readyz, and the manifest with 10,000 artifacts.

Every sidecar runs pinned to the server CPU, started with `servers.sidecar_argv` (the flags the issue names)
in its own process group, and is stopped (the group killed) on the way out whatever happens. The clients
(this process and its threads) stay on the client CPU.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import servers
from fixtures import ToolResults

SERVER_CPU = 0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- small helpers ------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(values_s: list[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in values_s]
    out: dict[str, float | None] = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)}
    out["max_ms"] = max(ms) if ms else None
    return {k: round(v, 2) if v is not None else None for k, v in out.items()}


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


@contextlib.contextmanager
def sidecar(
    python: str, artifacts: Path, scratch: Path, logs: Path, tag: str, extra: tuple[str, ...] = ()
) -> Iterator[tuple[servers.Running, int]]:
    """A pinned `sidecar serve` on a free port; ready (/readyz 200) when yielded; always stopped."""
    port = servers.free_port()
    state, tools = scratch / f"state-{tag}", scratch / f"tools-{tag}"
    tools.mkdir(parents=True, exist_ok=True)
    argv = servers.sidecar_argv(python, artifacts, state, tools, port, extra)
    proc = servers.Running(argv, servers.sidecar_env(), logs / f"sidecar-{tag}.log", SERVER_CPU)
    try:
        servers.poll(lambda: servers.http_status(port, "/readyz") == 200, 60, proc, f"sidecar ({tag}): /readyz")
        yield proc, port
    finally:
        proc.stop()


def manifest_names(port: int) -> set[str]:
    status, body = servers.http_get(port, "/v1/manifest", timeout=30)
    if status != 200:
        raise RuntimeError(f"/v1/manifest: status {status}")
    return {a["name"] for a in json.loads(body)["artifacts"]}


def published_total(port: int) -> float:
    status, body = servers.http_get(port, "/metrics")
    m = re.search(rb"^sidecar_artifacts_published_total(?:\{[^}]*\})? ([0-9.e+]+)$", body, re.M)
    if status != 200 or m is None:
        raise RuntimeError("no sidecar_artifacts_published_total in /metrics")
    return float(m.group(1))


def write_files(folder: Path, count: int, size: int, names: Callable[[int], str] | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        name = names(i) if names else f"a{i:05d}.bin"
        data = i.to_bytes(4, "big") + os.urandom(size - 4)
        (folder / name).write_bytes(data)
        out.append(name)
    return out


# ---- publish latency and pushes ----------------------------------------------------------------------


class _Receiver(http.server.ThreadingHTTPServer):
    """A UI that acknowledges every pushed manifest and notes when each artifact name first arrived."""

    daemon_threads = True

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.pushes = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the sidecar dropping its keep-alive connection at exit is no error worth a traceback


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        now = time.monotonic()
        try:
            names = [a["name"] for a in json.loads(body).get("artifacts", [])]
        except (ValueError, AttributeError, KeyError, TypeError):
            names = []
        with self.server.lock:
            self.server.pushes += 1
            for n in names:
                self.server.first_seen.setdefault(n, now)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EventReader(threading.Thread):
    """Reads /v1/events (SSE) and notes when each artifact name first became visible."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="sse-reader")
        self.first_seen: dict[str, float] = {}
        self.error: str | None = None
        self.closing = False
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.request("GET", "/v1/events", headers={"Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise RuntimeError(f"/v1/events: status {self.resp.status}")

    def run(self) -> None:
        event, data = "message", []
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                now = time.monotonic()
                text = line.decode().rstrip("\r\n")
                if text.startswith("event:"):
                    event = text[6:].strip()
                elif text.startswith("data:"):
                    data.append(text[5:].lstrip(" "))
                elif not text and data:
                    doc = json.loads("\n".join(data))
                    items = doc.get("upserted", []) if event == "artifacts" else doc.get("artifacts", [])
                    for a in items:
                        self.first_seen.setdefault(a["name"], now)
                    event, data = "message", []
        except Exception as e:  # after close(), http.client fails in odd ways (it is not thread-safe)
            if not self.closing:
                self.error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def publish_latency(python: str, scratch: Path, logs: Path, *, count: int, interval_s: float) -> dict[str, Any]:
    """`count` files of 20 KiB written one at a time, every `interval_s`: from each close() to the name's first
    appearance on /v1/events (visible in the manifest), and to its first arrival at a UI receiver (pushes)."""
    art = scratch / "publish-artifacts"
    art.mkdir()
    receiver = _Receiver()
    rthread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    rthread.start()
    push_url = f"http://127.0.0.1:{receiver.server_address[1]}/push"
    try:
        with sidecar(python, art, scratch, logs, "publish", ("--ui-push-url", push_url)) as (proc, port):
            reader = _EventReader(port)
            reader.start()
            try:
                time.sleep(0.3)  # the first (empty) manifest push and event are out of the way
                payloads = [os.urandom(20 * 1024) for _ in range(16)]
                closed: dict[str, float] = {}
                t_next = time.monotonic()
                for i in range(count):
                    name = f"p{i:04d}.bin"
                    with open(art / name, "wb") as f:
                        f.write(i.to_bytes(4, "big") + payloads[i % 16][4:])
                    closed[name] = time.monotonic()
                    t_next += interval_s
                    time.sleep(max(0.0, t_next - time.monotonic()))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    proc.check_alive()
                    with receiver.lock:
                        pushed_all = all(n in receiver.first_seen for n in closed)
                    if pushed_all and all(n in reader.first_seen for n in closed):
                        break
                    time.sleep(0.05)
                cpu_s = proc_cpu_s(proc.pid)
            finally:
                reader.close()
    finally:
        receiver.shutdown()
        receiver.server_close()
    visible = [reader.first_seen[n] - t for n, t in closed.items() if n in reader.first_seen]
    with receiver.lock:
        pushed = [receiver.first_seen[n] - t for n, t in closed.items() if n in receiver.first_seen]
        pushes = receiver.pushes
    return {
        "files": count,
        "interval_ms": interval_s * 1000,
        "settle_ms": servers.SETTLE_MS,
        "visible": summary_ms(visible) | {"missing": count - len(visible)},
        "pushed": summary_ms(pushed) | {"missing": count - len(pushed), "pushes": pushes},
        "sidecar_cpu_s": round(cpu_s, 2),
        "sse_error": reader.error,
    }


# ---- data URLs -------------------------------------------------------------------------------------


def _materialize(python: str, source: Path, artifacts: Path, scratch: Path, log: Path) -> dict[str, Any]:
    """`python -m sidecar materialize SOURCE`, pinned; wall time and the child's own rusage (os.wait4)."""
    argv = [
        "taskset",
        "-c",
        str(SERVER_CPU),
        python,
        "-m",
        "sidecar",
        "materialize",
        "--artifacts-dir",
        str(artifacts),
        "--state-dir",
        str(scratch / "state-materialize"),
        "--tool-results-dir",
        str(source.parent),
        "--log-format",
        "json",
        "--log-level",
        "warning",
        str(source),
    ]
    out_path = scratch / "materialize.jsonl"
    with open(out_path, "wb") as out, open(log, "ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=servers.sidecar_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        try:
            # taskset execs the interpreter in place: this pid is the sidecar process itself.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        wall = time.perf_counter() - t0
    materialized = rejected = 0
    with open(out_path, "rb") as f:
        for line in f:
            status_ = json.loads(line).get("status")
            materialized += status_ == "materialized"
            rejected += status_ == "rejected"
    return {
        "exit": proc.returncode,
        "seconds": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "materialized": materialized,
        "rejected": rejected,
    }


def data_urls(python: str, tr: ToolResults, scratch: Path, logs: Path) -> dict[str, Any]:
    """MB/s of input and peak RSS of `sidecar materialize` on the dense file and on the plain one (each a fresh
    copy, already in the page cache: this measures the sidecar, not the disk), and of an empty file (what the
    interpreter and imports alone take)."""
    out: dict[str, Any] = {"size_bytes": tr.size, "dense_images": tr.dense_images}
    src_dir = scratch / "claude" / "projects" / "p" / "tool-results"
    src_dir.mkdir(parents=True)
    empty = src_dir / "empty.txt"
    empty.write_bytes(b"")
    art = scratch / "datauri-artifacts"
    out["empty"] = _materialize(python, empty, art, scratch, logs / "materialize.log")
    for kind, pristine in (("dense", tr.dense), ("plain", tr.plain)):
        work = src_dir / f"{kind}.txt"
        shutil.copyfile(pristine, work)
        shutil.rmtree(art, ignore_errors=True)
        r = _materialize(python, work, art, scratch, logs / "materialize.log")
        r["mb_s"] = round(tr.size / r["seconds"] / 1e6, 1)
        want = tr.dense_images if kind == "dense" else 0
        r["check"] = (
            "ok"
            if r["exit"] == 0 and r["materialized"] == want and r["rejected"] == 0
            else f"FAIL: exit {r['exit']}, {r['materialized']} materialized (want {want}), {r['rejected']} rejected"
        )
        out[kind] = r
        work.unlink(missing_ok=True)
    shutil.rmtree(art, ignore_errors=True)
    out["floor"] = _file_floor(python, art, tr)
    shutil.rmtree(art, ignore_errors=True)
    return out


def _spawn(python: str, code: str, *args: str, timeout: float = 120) -> tuple[float, str]:
    """Seconds from spawn to exit of `python -c code args...` pinned like the sidecar, and what it printed."""
    t0 = time.monotonic()
    argv = ["taskset", "-c", str(SERVER_CPU), python, "-c", code, *args]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout).stdout
    return time.monotonic() - t0, out


_FLOOR = """
import os, sys, time
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(d, exist_ok=True)
data = [os.urandom(size) for _ in range(64)]
t = time.perf_counter()
for i in range(n):
    tmp = f"{d}/.f{i}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    os.write(fd, data[i % 64])
    os.close(fd)
    os.replace(tmp, f"{d}/f{i}.png")
print(time.perf_counter() - t)
"""


def _file_floor(python: str, art: Path, tr: ToolResults) -> dict[str, Any]:
    """The filesystem's floor for one file per payload, on the same CPU and the same dir: create, write,
    close, rename of as many files of the dense file's average decoded size, and nothing else (no scan, no
    decode, no hash, no fsync). Its input-equivalent MB/s is an upper bound for any one-file-per-image
    design on this machine."""
    size = int(tr.size / max(1, tr.dense_images) * 3 / 4)
    seconds = float(_spawn(python, _FLOOR, str(art), str(tr.dense_images), str(size), timeout=1800)[1])
    return {"files": tr.dense_images, "file_bytes": size, "seconds": round(seconds, 3),
            "us_per_file": round(seconds / max(1, tr.dense_images) * 1e6, 1),
            "input_mb_s": round(tr.size / seconds / 1e6, 1)}  # fmt: skip


# ---- idle, /readyz, the manifest with 10,000 artifacts ---------------------------------------------------


def _wait_published(port: int, want: int, proc: servers.Running, timeout_s: float) -> float:
    t0 = time.monotonic()
    servers.poll(lambda: published_total(port) >= want, timeout_s, proc, f"{want} artifacts published")
    return time.monotonic() - t0


# What the sidecar cannot go below while it uses the design's libraries: an interpreter that imports what
# `sidecar serve` imports at start (aiohttp's server, pydantic with pydantic-settings, structlog, asyncio)
# and validates one small settings model, then exits; nothing of the sidecar's own.
_LIBRARY_FLOOR = """
import asyncio, aiohttp.web, pydantic, pydantic_settings, structlog
class S(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="FLOOR_")
    port: int = 5173
    origins: list[str] = ["*"]
S(port=1)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS")))
"""


def library_rss_mib(python: str) -> float:
    return int(_spawn(python, _LIBRARY_FLOOR)[1]) / 1024


def idle(python: str, folder: Path, count: int, scratch: Path, logs: Path, seconds: float) -> dict[str, Any]:
    """With `count` published artifacts and nothing happening: CPU and RSS of the sidecar over `seconds`."""
    with sidecar(python, folder, scratch, logs, "idle") as (proc, port):
        _wait_published(port, count, proc, 120)
        if len(manifest_names(port)) != count:
            raise RuntimeError(f"the manifest does not list the {count} artifacts")
        time.sleep(2.0)  # let the publication's own work end (hash threads, the manifest write)
        cpu0, t0 = proc_cpu_s(proc.pid), time.monotonic()
        rss: list[float] = []
        end = t0 + seconds
        while time.monotonic() < end:
            proc.check_alive()
            rss.append(proc_mem_mib(proc.pid)["VmRSS"])
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        cpu1, t1 = proc_cpu_s(proc.pid), time.monotonic()
        mem = proc_mem_mib(proc.pid)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    return {
        "floor_rss_mib": round(library_rss_mib(python), 1),
        "artifacts": count,
        "seconds": round(t1 - t0, 1),
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "rss_mib_end": round(mem["VmRSS"], 1),
        "rss_mib_max": round(max(rss), 1),
        "peak_rss_mib": round(mem["VmHWM"], 1),
        "threads": threads,
    }


def _time_to_ready(python: str, folder: Path, state: Path, tools: Path, log: Path) -> dict[str, float]:
    port = servers.free_port()
    argv = servers.sidecar_argv(python, folder, state, tools, port)
    t0 = time.monotonic()
    proc = servers.Running(argv, servers.sidecar_env(), log, SERVER_CPU)
    listening: float | None = None
    try:
        deadline = t0 + 30
        while time.monotonic() < deadline:
            proc.check_alive()
            status = servers.http_status(port, "/readyz")
            if status is not None and listening is None:
                listening = time.monotonic() - t0
            if status == 200:
                ready = time.monotonic() - t0
                return {"listening_s": round(listening or ready, 3), "ready_s": round(ready, 3)}
            time.sleep(0.002)
        raise TimeoutError("/readyz not 200 after 30 s")
    finally:
        proc.stop()


def readyz(python: str, folder: Path, scratch: Path, logs: Path, runs: int) -> dict[str, Any]:
    """Seconds from the spawn of `sidecar serve` to /readyz 200: with an empty artifacts dir, with the
    1,000-artifact dir and a new state dir (the first scan lists them; hashing comes after readiness), and
    restarted on that dir with its state kept (the stored manifest is reconciled). Beside them, spawn -> exit
    of the interpreter alone and of `_LIBRARY_FLOOR`."""
    empty = scratch / "ready-empty"
    empty.mkdir()
    tools = scratch / "ready-tools"
    tools.mkdir()
    log = logs / "sidecar-readyz.log"
    cases: dict[str, Any] = {}
    interpreter: list[float] = []
    libraries: list[float] = []
    kept = scratch / "ready-state-kept"
    for case, dir_, state_of in (
        ("empty_dir", empty, "e"),
        ("1000_files_new_state", folder, "n"),
        ("1000_files_restart", folder, None),
    ):
        if case == "1000_files_restart":  # the state the restarts find: every artifact already published
            with sidecar(python, folder, scratch, logs, "ready-prime", ("--state-dir", str(kept))) as (proc, port):
                _wait_published(port, len(list(folder.iterdir())), proc, 120)
        states = [scratch / f"ready-state-{state_of}{i}" if state_of else kept for i in range(runs)]
        samples = []
        for state in states:  # each start beside a floor spawn, so that both see the machine in one state
            samples.append(_time_to_ready(python, dir_, state, tools, log))
            interpreter.append(_spawn(python, "pass")[0])
            libraries.append(_spawn(python, _LIBRARY_FLOOR)[0])
        ready = [s["ready_s"] for s in samples]
        cases[case] = {
            "ready_s_median": statistics.median_high(ready),
            "ready_s_max": max(ready),
            "listening_s_median": statistics.median_high(s["listening_s"] for s in samples),
            "runs": samples,
        }
    return {
        "cases": cases,
        "interpreter_s_median": round(statistics.median_high(interpreter), 3),
        "libraries_s_median": round(statistics.median_high(libraries), 3),
    }


def manifest_10k(python: str, scratch: Path, logs: Path, count: int, gets: int) -> dict[str, Any]:
    """A sidecar on an empty dir, then `count` files appear: time until all are published, RSS growth, and the
    response time of /v1/manifest (first, then cached while unchanged, and 304s), over one keep-alive connection."""
    art = scratch / "m10k-artifacts"
    art.mkdir()
    exts = (".png", ".json", ".txt", ".html", ".csv")
    with sidecar(python, art, scratch, logs, "manifest") as (proc, port):
        manifest_names(port)
        time.sleep(0.5)
        rss0 = proc_mem_mib(proc.pid)["VmRSS"]
        t0 = time.monotonic()
        write_files(art, count, 1024, lambda i: f"m{i:05d}{exts[i % len(exts)]}")
        written_s = time.monotonic() - t0
        publish_s = _wait_published(port, count, proc, 300) + written_s
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:

            def get(headers: dict[str, str] | None = None) -> tuple[float, int, bytes, str | None]:
                t = time.perf_counter()
                conn.request("GET", "/v1/manifest", headers=headers or {})
                resp = conn.getresponse()
                body = resp.read()
                return time.perf_counter() - t, resp.status, body, resp.getheader("ETag")

            first_s, status, body, etag = get()
            doc = json.loads(body)
            if status != 200 or len(doc["artifacts"]) != count:
                raise RuntimeError(f"/v1/manifest: status {status}, {len(doc['artifacts'])} artifacts")
            cached = [get()[0] for _ in range(gets)]
            not_modified = []
            for _ in range(gets):
                seconds, status, _, _ = get({"If-None-Match": etag or ""})
                if status != 304:
                    raise RuntimeError(f"If-None-Match on /v1/manifest: status {status}")
                not_modified.append(seconds)
        finally:
            conn.close()
        mem = proc_mem_mib(proc.pid)
    return {
        "artifacts": count,
        "publish_all_s": round(publish_s, 2),
        "body_bytes": len(body),
        "first_ms": round(first_s * 1000, 2),
        "cached": summary_ms(cached),
        "not_modified": summary_ms(not_modified),
        "rss_mib_before": round(rss0, 1),
        "rss_mib_after": round(mem["VmRSS"], 1),
        "rss_growth_mib": round(mem["VmRSS"] - rss0, 1),
        "peak_rss_mib": round(mem["VmHWM"], 1),
    }
