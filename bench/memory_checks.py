"""Clients that never read (issue 12): the sidecar's RSS with 40 stalled `GET /v1/manifest` clients at 50,000
artifacts, and with 1,000 event subscribers that never read, with /healthz timed meanwhile; then RSS again
after they closed.

Each client is a raw socket with a 4 KiB receive buffer that sends its request and reads nothing. The
artifacts are published before the sidecar starts (small files plus the state dir's manifest listing them),
so a run takes seconds, not the minutes 50,000 hashes would.
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
from pathlib import Path
from typing import Any

from servers import http_get
from sidecar_checks import percentile, proc_mem_mib, sidecar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.bulk import write_published  # the tests' generator, one copy
from support.stalled import stalled_clients  # the tests' clients that never read, one copy

HOLD_S = 8.0  # how long the clients stay connected once all are (RSS and /healthz are sampled throughout)
AFTER_S = 8.0  # how long RSS may take to come back once they closed


def _healthz_ms(conn: http.client.HTTPConnection) -> float:
    t = time.perf_counter()
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"/healthz: status {resp.status}")
    return (time.perf_counter() - t) * 1000


class Sampler:
    """RSS every 100 ms, and one /healthz after another (its own keep-alive connection, 20 ms apart), each in
    its own thread so that a slow /healthz does not hide the RSS meanwhile; until stopped."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.rss: list[float] = []
        self.health: list[float] = []
        self.error: str | None = None
        self.done = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._rss, self._health)]
        for t in self.threads:
            t.start()

    def _rss(self) -> None:
        while not self.done.is_set():
            self.rss.append(proc_mem_mib(self.pid)["VmRSS"])
            self.done.wait(0.1)

    def _health(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while not self.done.is_set():
                self.health.append(_healthz_ms(conn))
                self.done.wait(0.02)
        except (OSError, http.client.HTTPException, RuntimeError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(90)


def _settle_rss(pid: int, target: float, seconds: float) -> float:
    """RSS once it is within 10 % of `target`, or after `seconds` (whichever comes first)."""
    end = time.monotonic() + seconds
    rss = proc_mem_mib(pid)["VmRSS"]
    while rss > target * 1.1 and time.monotonic() < end:
        time.sleep(0.25)
        rss = proc_mem_mib(pid)["VmRSS"]
    return rss


def _run(python: str, scratch: Path, logs: Path, tag: str, artifacts: int, clients: int, path: str) -> dict[str, Any]:
    art = scratch / f"{tag}-artifacts"
    write_published(art, scratch / f"state-{tag}", artifacts)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    with sidecar(python, art, scratch, logs, tag) as (proc, port):
        status, body = http_get(port, "/v1/manifest", timeout=60)
        if status != 200:
            raise RuntimeError(f"/v1/manifest: status {status}")
        time.sleep(1.0)
        idle = proc_mem_mib(proc.pid)["VmRSS"]
        sampler = Sampler(proc.pid, port)
        try:
            t0 = time.monotonic()
            with stalled_clients(port, request, clients):
                connect_s = time.monotonic() - t0
                time.sleep(HOLD_S)
                proc.check_alive()
        finally:
            sampler.stop()
        if sampler.error:
            raise RuntimeError(f"/healthz while the clients were connected: {sampler.error}")
        after = _settle_rss(proc.pid, idle, AFTER_S)
        peak = max(sampler.rss)
        health = sampler.health
    return {
        "artifacts": artifacts,
        "clients": clients,
        "manifest_bytes": len(body),
        "connect_s": round(connect_s, 2),
        "rss_mib_idle": round(idle, 1),
        "rss_mib_peak": round(peak, 1),
        "rss_growth_mib": round(peak - idle, 1),
        "rss_mib_after": round(after, 1),
        "after_vs_idle_pct": round(100 * (after - idle) / idle, 1),
        "healthz": {
            "requests": len(health),
            "p50_ms": round(percentile(health, 50) or 0, 2),
            "p99_ms": round(percentile(health, 99) or 0, 2),
            "max_ms": round(max(health), 2),
        },
    }


def stalled_manifest(python: str, scratch: Path, logs: Path, artifacts: int, clients: int) -> dict[str, Any]:
    """`clients` connections send `GET /v1/manifest` and never read."""
    return _run(python, scratch, logs, "stalled-manifest", artifacts, clients, "/v1/manifest")


def stalled_events(python: str, scratch: Path, logs: Path, artifacts: int, clients: int) -> dict[str, Any]:
    """`clients` event subscribers (`GET /v1/events`) that never read."""
    return _run(python, scratch, logs, "stalled-events", artifacts, clients, "/v1/events")
