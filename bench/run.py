"""Static-file benchmark: the sidecar against plain peers serving the same folder.

Run it from the repository root, with a Python that has the sidecar's dependencies (aiohttp...):

    python bench/run.py                      # all servers, ~20 s (+ a few s the first time: fixtures)
    python bench/run.py --servers aiohttp    # a subset; see --help for durations and connection counts

What it does, per server, one server at a time:
  * fixtures (made once, reused): bench/.fixtures/files/ = 200 files of 20 KiB random bytes + one 200 MiB file;
  * the server runs pinned to CPU 0 (`taskset -c 0`), every client (this process, wrk) to CPU 1;
  * probes first: a small file's sha256, a Range request (206 + bytes), If-None-Match with the ETag (304);
    a missing feature is reported as "unsupported", wrong bytes as "FAIL";
  * small files: wrk, 1 thread, 64 connections, 5 s (after a 1 s warm-up), each request a random file of
    the 200 (bench/wrk/random_files.lua) -> req/s, p50, p99. Without wrk (installed with apt-get when
    possible), an aiohttp client does the load instead, and the output says so;
  * big file: one warm-up download checking the sha256, then 3 timed downloads of the 200 MiB file, read
    with recv_into() in 1 MiB chunks over a fresh connection -> MB/s (10^6 bytes/s), best of 3 (a
    download lasts ~50 ms, so the best resists noise from other work; the median is in the JSON too).
It prints a table with sidecar/<peer> ratios and writes bench/results/latest.json. Every process it starts
runs in its own process group and is killed on exit, Ctrl-C or failure. Server logs: bench/results/logs/.

Adding a peer: see bench/servers.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import clients
import fixtures
import servers

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SERVER_CPU, CLIENT_CPU = 0, 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Static-file benchmark: sidecar vs peers.")
    p.add_argument("--servers", default=",".join(servers.SERVERS), help="comma list, of: " + ", ".join(servers.SERVERS))
    p.add_argument("--duration", type=float, default=5.0, help="seconds of small-file load per server")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of small-file load before measuring")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--downloads", type=int, default=3, help="timed 200 MiB downloads per server")
    p.add_argument("--no-install-wrk", action="store_true", help="do not try apt-get when wrk is missing")
    p.add_argument("--python", default=sys.executable, help="interpreter for Python servers (default: this one)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json")
    args = p.parse_args()
    unknown = [s for s in args.servers.split(",") if s not in servers.SERVERS]
    if unknown:
        p.error(f"unknown server(s) {unknown}; known: {list(servers.SERVERS)}")
    if not (0 < args.duration <= 60 and 0 <= args.warmup <= 10 and 1 <= args.downloads <= 10):
        p.error("keep --duration in (0, 60], --warmup in [0, 10], --downloads in [1, 10]")
    return args


def host_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        aiohttp_version = metadata.version("aiohttp")
    except metadata.PackageNotFoundError:
        aiohttp_version = None
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp_version,
        "busy_at_start": round(cpu_busy(), 2),
    }


def cpu_busy(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat): other work skews the numbers."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (i1 - i0) / max(1, t1 - t0)


def bench_one(
    name: str, fx: fixtures.Fixtures, args: argparse.Namespace, wrk: str | None, pin: bool, logs: Path
) -> dict[str, Any]:
    server = servers.SERVERS[name]()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        ctx = servers.Context(fx, servers.free_port(), Path(scratch), args.python)
        log_path = logs / f"{name}.log"
        print(f"[{name}] starting on port {ctx.port} ...", flush=True)
        with servers.started(server, ctx, log_path, SERVER_CPU if pin else None) as proc:
            result["pid"] = proc.pid
            result["probes"] = clients.probe(ctx.port, server.prefix, fx)
            print(f"[{name}] probes: {result['probes']}", flush=True)
            count = len(fx.small)
            if wrk is not None:

                def load(seconds: float) -> dict[str, Any]:
                    return clients.run_wrk(
                        wrk,
                        ctx.port,
                        server.prefix,
                        count,
                        duration_s=seconds,
                        connections=args.connections,
                        threads=args.threads,
                    )

                if args.warmup > 0:
                    load(args.warmup)
                small = load(args.duration)
            else:
                small = clients.run_aiohttp_load(
                    ctx.port, server.prefix, fx.small, duration_s=args.duration, connections=args.connections
                )
            result["small"] = small
            print(f"[{name}] small: {small['req_s']:.0f} req/s, p50 {small['p50_ms']:.2f} ms", flush=True)
            big = clients.downloads(ctx.port, server.prefix, fx, args.downloads)
            result["probes"]["big_sha256"] = big.pop("big_sha256")
            result["download"] = big
            print(f"[{name}] download: {big['mb_s_runs']} MB/s", flush=True)
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, dict[str, float | None]]]:
    def metrics(r: dict[str, Any]) -> dict[str, float | None]:
        small, dl = r.get("small") or {}, r.get("download") or {}
        return {
            "req_s": small.get("req_s"),
            "p50_ms": small.get("p50_ms"),
            "p99_ms": small.get("p99_ms"),
            "mb_s": dl.get("mb_s_best"),
        }

    rows = [("server", "req/s", "p50 ms", "p99 ms", "MB/s")]
    for name, r in results.items():
        m = metrics(r)
        rows.append(
            (name, _fmt(m["req_s"], ".0f"), _fmt(m["p50_ms"], ".2f"), _fmt(m["p99_ms"], ".2f"), _fmt(m["mb_s"], ".0f"))
        )
    ratios: dict[str, dict[str, float | None]] = {}
    base = results.get(servers.BASELINE)
    if base is not None:
        b = metrics(base)
        for name, r in results.items():
            if name == servers.BASELINE:
                continue
            m = metrics(r)
            ratio = {k: _ratio(b[k], m[k]) for k in b}
            ratios[f"{servers.BASELINE}/{name}"] = ratio
            rows.append(
                (f"{servers.BASELINE}/{name}", *(_fmt(ratio[k], ".2f") + "x" if ratio[k] else "-" for k in ratio))
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines), ratios


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    args = parse_args()
    if importlib.util.find_spec("aiohttp") is None:
        sys.exit(f"{sys.executable} cannot import aiohttp: run this with the sidecar's virtualenv's python")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` blocks stop the servers on kill too
    signal.signal(signal.SIGHUP, _raise_interrupt)
    started_at = dt.datetime.now(dt.UTC)
    info = host_info()
    notes: list[str] = []
    if info["busy_at_start"] > 0.1:
        notes.append(f"CPUs {info['busy_at_start']:.0%} busy before the run: numbers may be noisy")
    pin = bool(shutil.which("taskset")) and {SERVER_CPU, CLIENT_CPU} <= set(info["cpus_allowed"])
    if pin:
        clients.pin_self(CLIENT_CPU)
    else:
        notes.append("NOT pinned: needs taskset and CPUs 0 and 1; server and client share the CPUs")

    print("fixtures ...", flush=True)
    fx = fixtures.ensure(BENCH_DIR / ".fixtures")
    print(f"fixtures: {fx.files_dir} ({'reused' if fx.reused else 'created'})", flush=True)

    wrk, how = clients.find_wrk(install=not args.no_install_wrk)
    if wrk is None:
        client = f"aiohttp client (FALLBACK: {how}; Python-bound, not comparable with wrk numbers)"
        notes.append(client)
    else:
        client = f"{clients.wrk_version(wrk)} ({how})"

    logs = RESULTS_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in args.servers.split(","):
        try:
            results[name] = bench_one(name, fx, args, wrk, pin, logs)
        except Exception as e:  # one server failing must not hide the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}

    text, ratios = table(results)
    print()
    print(f"date     {started_at:%Y-%m-%d %H:%M:%S} UTC")
    print(f"host     nproc {info['nproc']}, {info['cpu_model']}, Linux {info['kernel']}")
    print(f"software Python {info['python']}, aiohttp {info['aiohttp']}; load client: {client}")
    print(
        f"setup    servers on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}; small: {len(fx.small)} files x 20 KiB, "
        f"{args.connections} conns, {args.threads} thread, {args.duration:g} s; "
        f"MB/s: 200 MiB file, best of {args.downloads} (median in the JSON), 1 MiB reads"
    )
    for note in notes:
        print(f"NOTE     {note}")
    print()
    print(text)
    print()
    failed = False
    for name, r in results.items():
        if "error" in r:
            failed = True
            print(f"{name}: ERROR {r['error']}")
            continue
        probes = ", ".join(f"{k} {v}" for k, v in r["probes"].items())
        errors = r["small"]["errors"]
        print(f"{name}: probes: {probes}" + (f"; load errors: {errors}" if errors else ""))
        failed |= any(v.startswith("FAIL") for v in r["probes"].values()) or bool(errors)

    doc = {
        "date": started_at.isoformat(timespec="seconds"),
        "host": info,
        "client": client,
        "pinned": pin,
        "notes": notes,
        "config": {
            "small_files": len(fx.small),
            "small_size": fixtures.SMALL_SIZE,
            "big_size": fixtures.BIG_SIZE,
            "connections": args.connections,
            "threads": args.threads,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "downloads": args.downloads,
            "server_cpu": SERVER_CPU if pin else None,
            "client_cpu": CLIENT_CPU if pin else None,
        },
        "servers": results,
        "ratios": ratios,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        sys.exit(130)
