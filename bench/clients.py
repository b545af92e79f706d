"""The client side: correctness probes, the small-file load (wrk, or an aiohttp fallback), big downloads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from fixtures import BIG_NAME, SMALL_TEMPLATE, Fixtures

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk" / "random_files.lua"
READ_CHUNK = 1024 * 1024

# ---- correctness probes ---------------------------------------------------------------------------


def _request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def probe(port: int, prefix: str, fx: Fixtures) -> dict[str, str]:
    """Each check is "ok", "unsupported: ..." (a missing feature, reported) or "FAIL: ..." (wrong bytes)."""
    name = fx.small[7]
    path = prefix + name
    out: dict[str, str] = {}
    status, headers, body = _request(port, path)
    got = hashlib.sha256(body).hexdigest()
    if status != 200:
        out["sha256"] = f"FAIL: status {status}"
    elif got != fx.sha256[name]:
        out["sha256"] = f"FAIL: sha256 {got[:12]}... != {fx.sha256[name][:12]}..."
    else:
        out["sha256"] = "ok"

    want = (fx.files_dir / name).read_bytes()[100:1100]
    r_status, r_headers, r_body = _request(port, path, {"Range": "bytes=100-1099"})
    if r_status == 200:
        out["range"] = "unsupported: 200 with the whole body"
    elif r_status != 206:
        out["range"] = f"FAIL: status {r_status}"
    elif r_body != want or r_headers.get("content-range") != f"bytes 100-1099/{len(body)}":
        out["range"] = f"FAIL: wrong bytes or Content-Range {r_headers.get('content-range')!r}"
    else:
        out["range"] = "ok"

    etag = headers.get("etag")
    if not etag:
        out["etag_304"] = "unsupported: no ETag header"
    else:
        e_status, _, e_body = _request(port, path, {"If-None-Match": etag})
        if e_status == 304 and not e_body:
            out["etag_304"] = "ok"
        elif e_status == 200:
            out["etag_304"] = "unsupported: If-None-Match ignored (200)"
        else:
            out["etag_304"] = f"FAIL: status {e_status}, {len(e_body)} body bytes"
    return out


# ---- big downloads ---------------------------------------------------------------------------------


def download(port: int, path: str, *, verify: bool = False, timeout_s: float = 60.0) -> dict[str, Any]:
    """One GET over a fresh connection, read with recv_into() in 1 MiB chunks; timed from connect to last byte."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    h = hashlib.sha256() if verify else None
    deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            n = s.recv_into(buf)
            if not n or len(head) > 65536:
                raise ConnectionError("no complete response head")
            head += bytes(view[:n])
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if status != 200 or "content-length" not in fields:
            raise ConnectionError(f"status {status}, headers {fields}")
        length = int(fields["content-length"])
        got = len(rest)
        if h is not None:
            h.update(rest)
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError(f"download of {path} took over {timeout_s:.0f} s")
            n = s.recv_into(buf, min(READ_CHUNK, length - got))
            if not n:
                break
            got += n
            if h is not None:
                h.update(view[:n])
    elapsed = time.perf_counter() - t0
    if got != length:
        raise ConnectionError(f"short body: {got} of {length} bytes")
    return {"bytes": got, "seconds": elapsed, "sha256": h.hexdigest() if h is not None else None}


def downloads(port: int, prefix: str, fx: Fixtures, runs: int) -> dict[str, Any]:
    """One untimed warm-up download that checks the sha256, then `runs` timed ones (MB = 10^6 bytes)."""
    path = prefix + BIG_NAME
    first = download(port, path, verify=True)
    ok = first["sha256"] == fx.sha256[BIG_NAME]
    speeds = [d["bytes"] / d["seconds"] / 1e6 for d in (download(port, path) for _ in range(runs))]
    return {
        "big_sha256": "ok" if ok else f"FAIL: {first['sha256'][:12]}...",
        "mb_s_runs": [round(v, 1) for v in speeds],
        "mb_s_median": round(statistics.median(speeds), 1),
        "mb_s_best": round(max(speeds), 1),
    }


# ---- small-file load -----------------------------------------------------------------------------


def find_wrk(install: bool) -> tuple[str | None, str]:
    """The wrk binary and how it was had; with `install`, try `apt-get install wrk` (as root, bounded)."""
    found = shutil.which("wrk")
    if found:
        return found, "found"
    if not install:
        return None, "wrk not found (install not attempted: --no-install-wrk)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "wrk not found, and apt-get is not usable here (not root or not Debian)"
    print("wrk not found: apt-get update && apt-get install -y wrk ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=120, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True, timeout=120, capture_output=True
        )
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"wrk not found and apt-get failed: {e}"
    found = shutil.which("wrk")
    return found, "installed with apt-get" if found else "apt-get ran but wrk is still missing"


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0] if (out.stdout + out.stderr) else "?"


def run_wrk(
    wrk: str, port: int, prefix: str, count: int, *, duration_s: float, connections: int, threads: int
) -> dict[str, Any]:
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}/",
        "--",
        prefix + SMALL_TEMPLATE,
        str(count),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    errors = {k.removeprefix("err_"): v for k, v in r.items() if k.startswith("err_") and v}
    return {
        "requests": r["requests"],
        "req_s": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "mb_s": r["bytes"] / (r["duration_us"] / 1e6) / 1e6,
        "errors": errors,
    }


def run_aiohttp_load(
    port: int, prefix: str, names: list[str], *, duration_s: float, connections: int
) -> dict[str, Any]:
    """Fallback when wrk cannot be had: `connections` keep-alive workers for `duration_s`. The Python client
    tops out far below wrk, so these numbers measure the client as much as the server."""
    import aiohttp  # only needed here

    async def main() -> dict[str, Any]:
        lat: list[float] = []
        errors = 0
        nbytes = 0
        stop = time.perf_counter() + duration_s
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector, timeout=timeout) as sess:

            async def worker() -> None:
                nonlocal errors, nbytes
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    try:
                        async with sess.get(prefix + random.choice(names)) as resp:
                            body = await resp.read()
                            if resp.status != 200:
                                errors += 1
                            nbytes += len(body)
                    except (aiohttp.ClientError, TimeoutError):
                        errors += 1
                        continue
                    lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - t0
        qs = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
        return {
            "requests": len(lat),
            "req_s": len(lat) / elapsed,
            "p50_ms": qs[49] * 1000,
            "p90_ms": qs[89] * 1000,
            "p99_ms": qs[98] * 1000,
            "max_ms": max(lat, default=float("nan")) * 1000,
            "mb_s": nbytes / elapsed / 1e6,
            "errors": {"status_or_io": errors} if errors else {},
        }

    return asyncio.run(main())


def pin_self(cpu: int) -> bool:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})
        return True
    return False
