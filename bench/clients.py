"""The client side: correctness probes, wrk runs (small files, ranges), whole big-file downloads."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fixtures import BIG_NAME, SMALL_TEMPLATE, Fixtures

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk" / "random_files.lua"
WRK_RANGE_SCRIPT = BENCH_DIR / "wrk" / "range.lua"
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


RANGE_HEADER = "bytes=1000000-1999999"
RANGE_START, RANGE_LEN = 1_000_000, 1_000_000


def _file_slice(fx: Fixtures, name: str, start: int, length: int) -> bytes:
    with open(fx.files_dir / name, "rb") as f:
        f.seek(start)
        return f.read(length)


def probe(port: int, prefix: str, fx: Fixtures) -> dict[str, str]:
    """Before anything is timed. Each check is "ok", "unsupported: ..." (a missing feature, reported) or
    "FAIL: ..." (wrong bytes or status): a small and a 2 MiB file's sha256, a Range on a small file and the
    timed Range on the big file (206, Content-Range, bytes), and a 304 for If-None-Match with the ETag (or for
    If-Modified-Since with the Last-Modified date, for a server that sends no ETag)."""
    out: dict[str, str] = {}
    name = fx.small[7]
    path = prefix + name
    status, headers, body = _request(port, path)
    for key, file in (("sha256_small", name), ("sha256_2mib", fx.medium[2])):
        st, _, data = (status, headers, body) if file == name else _request(port, prefix + file)
        got = hashlib.sha256(data).hexdigest()
        if st != 200:
            out[key] = f"FAIL: status {st}"
        elif got != fx.sha256[file]:
            out[key] = f"FAIL: sha256 {got[:12]}... != {fx.sha256[file][:12]}..."
        else:
            out[key] = "ok"

    for key, file, rng, start, length in (
        ("range_small", name, "bytes=100-1099", 100, 1000),
        ("range_big", BIG_NAME, RANGE_HEADER, RANGE_START, RANGE_LEN),
    ):
        want = _file_slice(fx, file, start, length)
        want_cr = f"bytes {start}-{start + length - 1}/{fx.sizes[file]}"
        if file == BIG_NAME:  # never read a 200 MiB body by mistake: stream, look at the head only
            r_status, r_headers, r_body = _request_head_and(port, prefix + file, {"Range": rng}, length)
        else:
            r_status, r_headers, r_body = _request(port, prefix + file, {"Range": rng})
        if r_status == 200:
            out[key] = "unsupported: 200 with the whole body"
        elif r_status != 206:
            out[key] = f"FAIL: status {r_status}"
        elif r_body != want or r_headers.get("content-range") != want_cr:
            out[key] = f"FAIL: wrong bytes or Content-Range {r_headers.get('content-range')!r}"
        else:
            out[key] = "ok"

    etag, last_modified = headers.get("etag"), headers.get("last-modified")
    if etag:
        cond, how = {"If-None-Match": etag}, "If-None-Match"
    elif last_modified:
        cond, how = {"If-Modified-Since": last_modified}, "If-Modified-Since (no ETag)"
    else:
        out["304"] = "unsupported: neither ETag nor Last-Modified"
        return out
    e_status, _, e_body = _request(port, path, cond)
    if e_status == 304 and not e_body:
        out["304"] = "ok" if etag else f"ok: {how}"
    elif e_status == 200:
        out["304"] = f"unsupported: {how} ignored (200)"
    else:
        out["304"] = f"FAIL: {how}: status {e_status}, {len(e_body)} body bytes"
    return out


def _request_head_and(port: int, path: str, headers: dict[str, str], limit: int) -> tuple[int, dict[str, str], bytes]:
    """Like _request, but reads at most `limit` body bytes (then drops the connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(limit + 1)
    finally:
        conn.close()


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


def run_wrk(
    wrk: str,
    port: int,
    script: Path,
    script_args: list[str],
    *,
    duration_s: float,
    connections: int,
    threads: int = 1,
    cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """One wrk run, pinned to the client CPU by inheritance; its Lua script prints one BENCH_RESULT line.
    `cpu()`, read before and after, is the server's CPU seconds: it gives the server's CPU per request."""
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
        "--",
        *script_args,
    ]
    cpu0 = cpu() if cpu else None
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30)
    cpu_s = cpu() - cpu0 if cpu and cpu0 is not None else None
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    errors = {k.removeprefix("err_"): v for k, v in r.items() if k.startswith("err_") and v}
    seconds = r["duration_us"] / 1e6
    return {
        "connections": connections,
        "seconds": round(seconds, 3),
        "requests": r["requests"],
        "req_s": r["requests"] / seconds,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "mb_s": r["bytes"] / seconds / 1e6,
        "bytes_per_response": r["bytes"] / r["requests"] if r["requests"] else None,
        "server_cpu_us_per_req": cpu_s / r["requests"] * 1e6 if cpu_s is not None and r["requests"] else None,
        "server_cpu_share": cpu_s / seconds if cpu_s is not None else None,
        "errors": errors,
    }


def run_wrk_small(wrk: str, port: int, prefix: str, count: int, **kw: Any) -> dict[str, Any]:
    return run_wrk(wrk, port, WRK_SCRIPT, [prefix + SMALL_TEMPLATE, str(count)], **kw)


def run_wrk_range(wrk: str, port: int, prefix: str, **kw: Any) -> dict[str, Any]:
    r = run_wrk(wrk, port, WRK_RANGE_SCRIPT, [prefix + BIG_NAME, RANGE_HEADER], **kw)
    per = r["bytes_per_response"]
    if per is not None and not RANGE_LEN <= per < RANGE_LEN + 4096:
        r["errors"]["not_206"] = f"{per:.0f} bytes a response, expected {RANGE_LEN} + headers"
    return r


def pin_self(cpu: int) -> bool:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})
        return True
    return False
