"""`make bench`: the sidecar against nginx, aiohttp web.static, express res.sendFile and http.server on the same
files, then the sidecar's own costs, with PASS/FAIL against the performance targets (docs/benchmarks.md).

    python bench/run.py            # everything, ~8-10 min on 2 cores
    python bench/run.py --quick    # ~3 min: 1 round, short loads, 256 MiB data-URL files, 15 s idle
    make bench BENCH_ARGS=--quick  # BENCH_ARGS (environment) is read as extra arguments

Setup (bounded, reported): nginx and wrk from apt-get, express from npm into bench/node_modules
(bench/package.json), when missing. A peer that cannot be had is skipped and said so.

Static files (section `static`), servers on CPU 0 (taskset), every client on CPU 1; per server, per round:
  * fixtures (bench/.fixtures/files, made once): 200 x 20 KiB, 5 x 2 MiB, one 200 MiB file, random bytes;
  * probes first: sha256 of a small and a 2 MiB file, Range on a small file and on the big one (206, bytes,
    Content-Range), 304 for If-None-Match (If-Modified-Since for a server without ETags);
  * small files: wrk, 1 thread, a random file of the 200 per request (wrk/random_files.lua), 1 s warm-up, then
    64 connections and 1 connection -> req/s, p50, p99, MB/s;
  * ranges: wrk, `Range: bytes=1000000-1999999` on the big file (wrk/range.lua), 8 connections -> req/s;
  * the whole 200 MiB file: a Python client reading with recv_into() in 1 MiB chunks (wrk caps near 3 GB/s),
    one untimed download checking the sha256, then 3 timed -> MB/s, best of 3.
  The whole set runs twice (rounds interleave servers); tables show both rounds, the spread, and ratios to
  nginx and to aiohttp web.static (mean of the per-round ratios; the targets use these).
The sidecar alone: publish latency and pushes (`publish`), `sidecar materialize` on a 1 GiB tool-results file
dense with ~27 KiB PNG data URLs and on one without any (`datauri`), idle CPU and RSS with 1,000 artifacts
(`idle`), spawn -> /readyz (`readyz`), /v1/manifest with 10,000 artifacts (`manifest`); clients that never read:
40 `GET /v1/manifest` at 50,000 artifacts (`stalled_manifest`), 1,000 event subscribers at 5,000
artifacts (`stalled_events`), each with RSS and /healthz meanwhile and RSS after they closed. One section alone:
`python bench/run.py --sections stalled_manifest,stalled_events --no-install`.
The images (`image`, bench/image_checks.py): size, idle RSS and start -> /readyz in a container, for the pip
image and the self-contained build; skipped, with a note, where podman is missing.

Every process it starts runs in its own process group and is killed on exit, failure, Ctrl-C or SIGTERM.
Results: bench/results/latest.json; server logs: bench/results/logs/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import clients
import deps
import fixtures
import image_checks
import memory_checks
import servers
import sidecar_checks

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SERVER_CPU, CLIENT_CPU = 0, 1
SECTIONS = (
    "static",
    "publish",
    "datauri",
    "idle",
    "readyz",
    "manifest",
    "stalled_manifest",
    "stalled_events",
    "image",
)
RANGE_CONNECTIONS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="make bench: the sidecar against nginx, aiohttp, express, http.server.")
    p.add_argument("--quick", action="store_true", help="1 round, 2 s loads, 256 MiB data-URL files, 15 s idle")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    p.add_argument("--servers", default=",".join(servers.SERVERS), help="comma list of: " + ", ".join(servers.SERVERS))
    p.add_argument("--rounds", type=int, default=None, help="static-file rounds (default 2, --quick 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk load (default 5, --quick 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of small-file load before measuring")
    p.add_argument("--connections", type=int, default=64, help="the many-connections small-file load")
    p.add_argument("--downloads", type=int, default=3, help="timed 200 MiB downloads per server and round")
    p.add_argument("--datauri-mib", type=int, default=None, help="tool-results file size (default 1024, quick 256)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle window (default 60, --quick 15)")
    p.add_argument("--publish-files", type=int, default=500)
    p.add_argument("--readyz-runs", type=int, default=None, help="starts per /readyz case (default 5, --quick 3)")
    p.add_argument("--no-install", action="store_true", help="never apt-get or npm install")
    p.add_argument("--python", default=sys.executable, help="interpreter for Python servers (default: this one)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json")
    argv = shlex.split(os.environ.get("BENCH_ARGS", "")) + sys.argv[1:]
    a = p.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 2)
    a.duration = a.duration if a.duration is not None else (2.0 if q else 5.0)
    a.datauri_mib = a.datauri_mib if a.datauri_mib is not None else (256 if q else 1024)
    a.idle_seconds = a.idle_seconds if a.idle_seconds is not None else (15.0 if q else 60.0)
    a.readyz_runs = a.readyz_runs if a.readyz_runs is not None else (3 if q else 5)
    a.sections = [s for s in a.sections.split(",") if s]
    a.servers = [s for s in a.servers.split(",") if s]
    for kind, given, known in (("section", a.sections, SECTIONS), ("server", a.servers, tuple(servers.SERVERS))):
        unknown = [s for s in given if s not in known]
        if unknown:
            p.error(f"unknown {kind}(s) {unknown}; known: {list(known)}")
    if not (
        1 <= a.rounds <= 5
        and 1 <= a.duration <= 60
        and 0 <= a.warmup <= 10
        and 1 <= a.downloads <= 10
        and 16 <= a.datauri_mib <= 4096
        and 1 <= a.idle_seconds <= 600
        and 10 <= a.publish_files <= 5000
        and 1 <= a.readyz_runs <= 20
        and 1 <= a.connections <= 1024
    ):
        p.error("a bound is out of range: see --help")
    return a


# ---- the host, and how busy it is with other work ---------------------------------------------------


def host_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
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


class OtherLoad:
    """CPU time that other processes took while we measured: the machine's user+nice+system time (/proc/stat)
    minus ours (this process and every child it has reaped, their own children included). Read it only when
    no child of ours is running, so that all of our time has been counted."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (fields[0] + fields[1] + fields[2]) / CLK_TCK
        ours = sum(
            r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )
        return time.monotonic(), busy, ours

    def cpus(self) -> float:
        """Average number of CPUs other processes kept busy since this was made."""
        t1, busy1, ours1 = self._sample()
        return max(0.0, (busy1 - self.busy0) - (ours1 - self.ours0)) / max(1e-9, t1 - self.t0)


# ---- static files -------------------------------------------------------------------------------


def bench_server(
    name: str, fx: fixtures.Fixtures, args: argparse.Namespace, wrk: str, pin: bool, logs: Path, round_no: int
) -> dict[str, Any]:
    server = servers.SERVERS[name]()
    result: dict[str, Any] = {}
    load = OtherLoad()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        ctx = servers.Context(fx, servers.free_port(), Path(scratch), args.python)
        log_path = logs / f"{name}.log"
        print(f"[{name} r{round_no}] starting on port {ctx.port} ...", flush=True)
        with servers.started(server, ctx, log_path, SERVER_CPU if pin else None) as proc:
            result["probes"] = probes = clients.probe(ctx.port, server.prefix, fx)
            print(f"[{name} r{round_no}] probes: {probes}", flush=True)
            kw: dict[str, Any] = {"duration_s": args.duration, "cpu": proc.cpu_seconds}
            count = len(fx.small)
            if args.warmup > 0:
                clients.run_wrk_small(wrk, ctx.port, server.prefix, count, duration_s=args.warmup, connections=16)
            result["small_c64"] = clients.run_wrk_small(
                wrk, ctx.port, server.prefix, count, connections=args.connections, **kw
            )
            result["small_c1"] = clients.run_wrk_small(wrk, ctx.port, server.prefix, count, connections=1, **kw)
            if probes["range_big"] == "ok":
                result["range"] = clients.run_wrk_range(
                    wrk, ctx.port, server.prefix, connections=RANGE_CONNECTIONS, **kw
                )
            else:
                result["range"] = {"skipped": f"range probe: {probes['range_big']}"}
            big = clients.downloads(ctx.port, server.prefix, fx, args.downloads)
            probes["sha256_200mib"] = big.pop("big_sha256")
            result["download"] = big
            s64, s1, rg = result["small_c64"], result["small_c1"], result["range"]
            print(
                f"[{name} r{round_no}] small@{args.connections} {s64['req_s']:.0f} req/s, small@1 {s1['req_s']:.0f} "
                f"req/s, range {rg.get('req_s', float('nan')):.0f} req/s, 200 MiB {big['mb_s_best']:.0f} MB/s",
                flush=True,
            )
    result["other_load_cpus"] = round(load.cpus(), 2)
    return result


SCENARIOS: tuple[tuple[str, str, str], ...] = (
    # key in a server's result, title, the metric ratios are taken on
    ("small_c64", "small files, {c} connections", "req_s"),
    ("small_c1", "small files, 1 connection", "req_s"),
    ("range", f"Range: bytes=1000000-1999999 on the 200 MiB file, {RANGE_CONNECTIONS} connections", "req_s"),
    ("download", "the whole 200 MiB file, 1 connection, 1 MiB reads", "mb_s_best"),
)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _metric(r: dict[str, Any] | None, key: str, metric: str) -> float | None:
    if not r or "error" in r:
        return None
    v = (r.get(key) or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def summarize_static(rounds: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    """Per scenario and server: each round's value, mean, spread ((max - min) / mean), and the mean of the
    per-round ratios to nginx and to aiohttp (and each round's ratio)."""
    out: dict[str, Any] = {}
    for key, _, metric in SCENARIOS:
        rows: dict[str, Any] = {}
        for name in names:
            vals = [_metric(r.get(name), key, metric) for r in rounds]
            got = [v for v in vals if v is not None]
            row: dict[str, Any] = {"rounds": vals, "mean": _mean(got)}
            row["spread"] = (max(got) - min(got)) / row["mean"] if len(got) > 1 and row["mean"] else None
            for extra in ("p50_ms", "p99_ms", "mb_s", "server_cpu_us_per_req"):
                e = [_metric(r.get(name), key, extra) for r in rounds]
                row[extra] = _mean([v for v in e if v is not None])
            cpu_aio = [_metric(r.get("aiohttp"), key, "server_cpu_us_per_req") for r in rounds]
            cpu_me = [_metric(r.get(name), key, "server_cpu_us_per_req") for r in rounds]
            per_cpu = [b / a if a and b else None for a, b in zip(cpu_me, cpu_aio, strict=True)]
            row["cpu_x_aiohttp"] = _mean([v for v in per_cpu if v is not None])  # aiohttp's CPU/req over this one's
            for base in ("nginx", "aiohttp"):
                per = []
                for r in rounds:
                    a, b = _metric(r.get(name), key, metric), _metric(r.get(base), key, metric)
                    per.append(a / b if a is not None and b else None)
                row[f"x_{base}_rounds"] = per
                row[f"x_{base}"] = _mean([v for v in per if v is not None])
            skipped = [(r.get(name) or {}).get(key, {}).get("skipped") for r in rounds]
            row["note"] = next((s for s in skipped if s), None) or next(
                ((r.get(name) or {}).get("error") for r in rounds if (r.get(name) or {}).get("error")), None
            )
            rows[name] = row
        out[key] = rows
    return out


def _sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec) + suffix


def render(rows: list[tuple[str, ...]], right_from: int = 1) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i < right_from else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines = [line.rstrip() for line in lines]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def static_tables(summary: dict[str, Any], names: list[str], n_rounds: int, connections: int) -> str:
    out = []
    for key, title, metric in SCENARIOS:
        unit = "MB/s" if metric == "mb_s_best" else "req/s"
        head = tuple(f"{unit} r{i + 1}" for i in range(n_rounds))
        rows: list[tuple[str, ...]] = [
            ("server", *head, "spread", "p50 ms", "p99 ms", "MB/s", "x nginx", "x aiohttp", "CPU us/req", "")
        ]
        for name in names:
            r = summary[key][name]
            rows.append(
                (
                    name,
                    *(_fmt(v, ".0f") for v in r["rounds"]),
                    _fmt(r["spread"] * 100 if r["spread"] is not None else None, ".1f", "%"),
                    _fmt(r["p50_ms"], ".2f"),
                    _fmt(r["p99_ms"], ".2f"),
                    _fmt(r["mb_s"] if metric != "mb_s_best" else r["mean"], ".0f"),
                    _fmt(r["x_nginx"], ".2f", "x"),
                    _fmt(r["x_aiohttp"], ".2f", "x"),
                    _fmt(r["server_cpu_us_per_req"], ".0f"),
                    r["note"] or "",
                )
            )
        out.append(title.format(c=connections) + "\n" + render(rows))
    return "\n\n".join(out)


# ---- targets ------------------------------------------------------------------------------------


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each performance target: the value, the per-round values for ratios, the bound, and the verdict."""
    out: list[dict[str, Any]] = []

    def add(what: str, value: float | None, op: str, bound: float, unit: str, rounds: list[Any] | None = None) -> None:
        if value is None:
            verdict = "n/a"
        else:
            ok = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
            verdict = "PASS" if ok else "FAIL"
            per = [v for v in (rounds or []) if v is not None]
            if len(per) > 1:
                per_ok = [v >= bound if op == ">=" else v <= bound if op == "<=" else v < bound for v in per]
                if any(per_ok) != all(per_ok):
                    verdict += " (rounds disagree)"
        out.append(
            {
                "target": what,
                "value": value,
                "rounds": rounds,
                "op": op,
                "bound": bound,
                "unit": unit,
                "verdict": verdict,
            }
        )

    st = (doc.get("static") or {}).get("summary")
    if st:
        side = {k: st[k].get("sidecar", {}) for k in st}
        c = doc["config"]["connections"]

        def ratio(what: str, key: str, base: str, bound: float) -> None:
            add(what, side[key].get(f"x_{base}"), ">=", bound, "x", side[key].get(f"x_{base}_rounds", []))

        ratio(f"small files @{c}: sidecar / aiohttp web.static", "small_c64", "aiohttp", 3.0)
        if "express" in st["small_c64"]:
            sc, ex = side["small_c64"].get("rounds", []), st["small_c64"]["express"].get("rounds", [])
            per = [a / b if a is not None and b else None for a, b in zip(sc, ex, strict=True)]
            add(f"small files @{c}: sidecar / express", _mean([v for v in per if v is not None]), ">=", 1.5, "x", per)
        ratio("range requests: sidecar / aiohttp web.static", "range", "aiohttp", 2.0)
        ratio("whole 200 MiB file: sidecar / nginx", "download", "nginx", 0.9)
    pub = doc.get("publish")
    if pub and "error" not in pub:
        settle = pub["settle_ms"]
        vis = pub["visible"]["p99_ms"] if not pub["visible"]["missing"] else None
        push = pub["pushed"]["p99_ms"] if not pub["pushed"]["missing"] else None
        add(f"publish latency p99 (close -> manifest), settle {settle} ms", vis, "<=", settle + 100, "ms")
        add("push latency p99 (close -> UI receiver)", push, "<=", settle + 150, "ms")
    idle = doc.get("idle")
    if idle and "error" not in idle:
        add(f"idle RSS, {idle['artifacts']} artifacts", idle["rss_mib_max"], "<=", 40, "MiB")
        add(f"idle CPU over {idle['seconds']:.0f} s", idle["cpu_pct"], "<", 0.5, "%")
    rz = doc.get("readyz")
    if rz and "error" not in rz:
        worst = max(v["ready_s_median"] for v in rz["cases"].values())
        add("spawn -> /readyz 200 (median; worst case of 3)", worst, "<=", 0.5, "s")
    man = doc.get("manifest")
    if man and "error" not in man:
        add(f"/v1/manifest, {man['artifacts']} artifacts, cached (p50)", man["cached"]["p50_ms"], "<=", 20, "ms")
        add(f"RSS growth with {man['artifacts']} artifacts", man["rss_growth_mib"], "<=", 30, "MiB")
    stalled = (("stalled_manifest", "non-reading /v1/manifest clients"), ("stalled_events", "event subscribers"))
    for key, what in stalled:
        st = doc.get(key)
        if st and "error" not in st:
            at = f"{st['clients']:,} {what} at {st['artifacts']:,} artifacts"
            add(f"RSS growth with {at}", st["rss_growth_mib"], "<", 64, "MiB")
            add(f"RSS after they closed, above idle ({at})", st["after_vs_idle_pct"], "<=", 10, "%")
            if key == "stalled_events":
                add(f"/healthz p99 with {at}", st["healthz"]["p99_ms"], "<", 50, "ms")
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    table: list[tuple[str, ...]] = [("target", "value", "per round", "bound", "verdict")]
    for t in rows:
        spec = ".2f" if t["unit"] in ("x", "%") else ".3f" if t["unit"] == "s" else ".1f"
        per = ", ".join(_fmt(v, spec) for v in t["rounds"]) if t["rounds"] and len(t["rounds"]) > 1 else ""
        table.append(
            (
                t["target"],
                _fmt(t["value"], spec, " " + t["unit"]),
                per,
                f"{t['op']} {t['bound']:g} {t['unit']}",
                t["verdict"],
            )
        )
    return render(table)


# ---- the sidecar's own numbers, printed -----------------------------------------------------------------


def _publish_lines(pub: dict[str, Any]) -> list[str]:
    v, p = pub["visible"], pub["pushed"]
    return [
        f"publish  {pub['files']} files x 20 KiB, one every {pub['interval_ms']:.0f} ms, --settle-ms "
        f"{pub['settle_ms']}: close -> manifest (SSE) p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms, max "
        f"{v['max_ms']} ms, {v['missing']} missing; close -> UI receiver p50 {p['p50_ms']} ms, p99 "
        f"{p['p99_ms']} ms, max {p['max_ms']} ms, {p['missing']} missing, {p['pushes']} pushes; sidecar CPU "
        f"{pub['sidecar_cpu_s']} s; push p99 - publish p99 = {_fmt(_sub(p['p99_ms'], v['p99_ms']), '.1f')} ms"
    ]


def _datauri_lines(du: dict[str, Any]) -> list[str]:
    mib = du["size_bytes"] / 2**20
    lines = []
    for kind, what in (("dense", f"{du['dense_images']} PNG data URLs of ~27 KiB"), ("plain", "no data URL")):
        r = du[kind]
        lines.append(
            f"datauri  {mib:.0f} MiB, {what}: {r['mb_s']} MB/s ({r['seconds']} s wall, {r['cpu_s']} s CPU), "
            f"peak RSS {r['peak_rss_mib']} MiB; {r['materialized']} materialized, check {r['check']}"
        )
    f = du["floor"]
    lines.append(
        f"datauri  the filesystem's floor, one file per image ({f['files']} x {f['file_bytes']} B: "
        f"create, write, close, rename; nothing else): {f['us_per_file']} us a file, "
        f"{f['input_mb_s']} MB/s of input at most"
    )
    e = du["empty"]
    lines.append(f"datauri  an empty file (interpreter + imports): {e['seconds']} s, peak RSS {e['peak_rss_mib']} MiB")
    return lines


def _idle_lines(idle: dict[str, Any]) -> list[str]:
    return [
        f"idle     {idle['artifacts']} artifacts, {idle['seconds']} s: CPU {idle['cpu_s']} s "
        f"({idle['cpu_pct']}%), RSS max {idle['rss_mib_max']} MiB (end {idle['rss_mib_end']}, peak since "
        f"start {idle['peak_rss_mib']}), {idle['threads']} threads",
        f"idle     the libraries' floor (an interpreter importing what the sidecar imports at start, one settings "
        f"model validated): RSS {idle['floor_rss_mib']} MiB",
    ]


def _readyz_lines(rz: dict[str, Any]) -> list[str]:
    parts = [
        f"{case}: median {v['ready_s_median']} s (max {v['ready_s_max']}, listening {v['listening_s_median']})"
        for case, v in rz["cases"].items()
    ]
    return [
        "readyz   spawn -> /readyz 200: " + "; ".join(parts),
        f"readyz   the floor, spawn -> exit (medians, runs interleaved with the starts above): the interpreter "
        f"alone {rz['interpreter_s_median']} s; importing what the sidecar imports at start and validating one "
        f"settings model {rz['libraries_s_median']} s",
    ]


def _manifest_lines(man: dict[str, Any]) -> list[str]:
    return [
        f"manifest {man['artifacts']} artifacts ({man['body_bytes'] / 1e6:.1f} MB of JSON) published in "
        f"{man['publish_all_s']} s; GET first {man['first_ms']} ms, cached p50 {man['cached']['p50_ms']} ms "
        f"p99 {man['cached']['p99_ms']} ms, 304 p50 {man['not_modified']['p50_ms']} ms; RSS "
        f"{man['rss_mib_before']} -> {man['rss_mib_after']} MiB (+{man['rss_growth_mib']}), "
        f"peak {man['peak_rss_mib']}"
    ]


def _stalled_lines(st: dict[str, Any]) -> list[str]:
    h = st["healthz"]
    return [
        f"stalled  {st['clients']:,} clients that never read, {st['artifacts']:,} artifacts "
        f"({st['manifest_bytes'] / 1e6:.1f} MB manifest): RSS idle {st['rss_mib_idle']} MiB, peak "
        f"{st['rss_mib_peak']} (+{st['rss_growth_mib']}), "
        f"after they closed {st['rss_mib_after']} ({st['after_vs_idle_pct']:+.1f} %); /healthz meanwhile p50 "
        f"{h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms ({h['requests']} requests)"
    ]


_SIDECAR_SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "publish": _publish_lines,
    "datauri": _datauri_lines,
    "idle": _idle_lines,
    "readyz": _readyz_lines,
    "manifest": _manifest_lines,
    "stalled_manifest": _stalled_lines,
    "stalled_events": _stalled_lines,
    "image": image_checks.lines,
}


def sidecar_report(doc: dict[str, Any]) -> str:
    """One or more lines a section that ran (its error, if it failed), in the order the sections run."""
    lines: list[str] = []
    for name, describe in _SIDECAR_SECTIONS.items():
        part = doc.get(name)
        if part:
            lines += [f"{name}: ERROR {part['error']}"] if "error" in part else describe(part)
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def section(doc: dict[str, Any], name: str, notes: list[str]) -> Iterator[dict[str, Any]]:
    """Runs a section; an exception is recorded as its error (the others still run); reports other load."""
    holder: dict[str, Any] = {}
    load = OtherLoad()
    t0 = time.monotonic()
    print(f"== {name} ...", flush=True)
    try:
        yield holder
    except Exception as e:  # one section failing must not hide the others' numbers
        traceback.print_exc()
        holder.clear()
        holder["error"] = f"{type(e).__name__}: {e}"
    other = load.cpus()
    holder["section_seconds"] = round(time.monotonic() - t0, 1)
    holder["other_load_cpus"] = round(other, 2)
    if other > 0.1:
        notes.append(f"{name}: other processes kept {other:.2f} CPUs busy meanwhile: numbers may be noisy")
    doc[name] = holder
    print(f"== {name}: {holder['section_seconds']} s", flush=True)


def main() -> int:
    args = parse_args()
    if importlib.util.find_spec("aiohttp") is None:
        sys.exit(f"{sys.executable} cannot import aiohttp: run this with the sidecar's virtualenv's python")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` blocks stop the servers on kill too
    signal.signal(signal.SIGHUP, _raise_interrupt)
    started_at = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    info = host_info()
    notes: list[str] = []
    if info["busy_at_start"] > 0.1:
        notes.append(f"CPUs {info['busy_at_start']:.0%} busy before the run: numbers may be noisy")

    commands = deps.ensure_commands(["taskset", "wrk", "nginx", "node", "npm"], install=not args.no_install)
    express = deps.ensure_express(install=not args.no_install) if "express" in args.servers else None
    setup = {"commands": commands, "express": express or "ok"}
    for c, how in commands.items():
        if how.startswith("missing"):
            notes.append(f"{c}: {how}")
    if express:
        notes.append(f"express: {express}")
    pin = bool(shutil.which("taskset")) and {SERVER_CPU, CLIENT_CPU} <= set(info["cpus_allowed"])
    if pin:
        clients.pin_self(CLIENT_CPU)
    else:
        notes.append("NOT pinned: needs taskset and CPUs 0 and 1; server and client share the CPUs")
    versions = deps.versions()
    logs = RESULTS_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "date": started_at.isoformat(timespec="seconds"),
        "host": info,
        "versions": versions,
        "setup": setup,
        "pinned": pin,
        "notes": notes,
        "config": {
            "quick": args.quick,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "range_connections": RANGE_CONNECTIONS,
            "downloads": args.downloads,
            "small": [fixtures.SMALL_COUNT, fixtures.SMALL_SIZE],
            "medium": [fixtures.MEDIUM_COUNT, fixtures.MEDIUM_SIZE],
            "big_size": fixtures.BIG_SIZE,
            "settle_ms": servers.SETTLE_MS,
            "datauri_bytes": args.datauri_mib * 2**20,
            "idle_seconds": args.idle_seconds,
            "publish_files": args.publish_files,
            "server_cpu": SERVER_CPU if pin else None,
            "client_cpu": CLIENT_CPU if pin else None,
        },
    }

    names: list[str] = []
    if "static" in args.sections:
        with section(doc, "static", notes) as st:
            wrk = shutil.which("wrk")
            if wrk is None:
                raise RuntimeError(f"wrk is needed for the static-file section: {commands.get('wrk')}")
            print("fixtures ...", flush=True)
            fx = fixtures.ensure(BENCH_DIR / ".fixtures")
            print(f"fixtures: {fx.files_dir} ({'reused' if fx.reused else 'created'})", flush=True)
            skipped: dict[str, str] = {}
            for name in args.servers:
                missing = [c for c in servers.SERVERS[name].needs if not shutil.which(c)]
                if missing:
                    skipped[name] = f"missing {', '.join(missing)}"
                elif name == "express" and express:
                    skipped[name] = express
                else:
                    names.append(name)
            for name, why in skipped.items():
                notes.append(f"{name} skipped: {why}")
            rounds: list[dict[str, dict[str, Any]]] = []
            for round_no in range(1, args.rounds + 1):
                results: dict[str, dict[str, Any]] = {}
                for name in names:
                    try:
                        results[name] = bench_server(name, fx, args, wrk, pin, logs, round_no)
                    except Exception as e:  # one server failing must not hide the others' numbers
                        traceback.print_exc()
                        results[name] = {"error": f"{type(e).__name__}: {e}"}
                rounds.append(results)
            loads = {n: "/".join(f"{r[n].get('other_load_cpus', 0):.2f}" for r in rounds if n in r) for n in names}
            if any(r[n].get("other_load_cpus", 0) > 0.1 for r in rounds for n in r):
                notes.append(
                    "static: CPUs kept busy by other processes while each server was measured (per round): "
                    + ", ".join(f"{n} {v}" for n, v in loads.items())
                )
            st["servers"] = names
            st["skipped"] = skipped
            st["labels"] = {n: servers.SERVERS[n].label for n in names}
            st["rounds"] = rounds
            st["summary"] = summarize_static(rounds, names)

    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        scratch = Path(tmp)
        idle_dir = scratch / "idle-artifacts"
        if {"idle", "readyz"} & set(args.sections):
            sidecar_checks.write_files(idle_dir, 1000, 4096)
        if "publish" in args.sections:
            with section(doc, "publish", notes) as h:
                h.update(
                    sidecar_checks.publish_latency(
                        args.python, scratch, logs, count=args.publish_files, interval_s=0.02
                    )
                )
        if "datauri" in args.sections:
            with section(doc, "datauri", notes) as h:
                print(f"tool-results fixtures ({args.datauri_mib} MiB) ...", flush=True)
                tr = fixtures.ensure_tool_results(BENCH_DIR / ".fixtures", args.datauri_mib * 2**20)
                h.update(sidecar_checks.data_urls(args.python, tr, scratch, logs))
        if "idle" in args.sections:
            with section(doc, "idle", notes) as h:
                h.update(sidecar_checks.idle(args.python, idle_dir, 1000, scratch, logs, args.idle_seconds))
        if "readyz" in args.sections:
            with section(doc, "readyz", notes) as h:
                h.update(sidecar_checks.readyz(args.python, idle_dir, scratch, logs, args.readyz_runs))
        if "manifest" in args.sections:
            with section(doc, "manifest", notes) as h:
                h.update(sidecar_checks.manifest_10k(args.python, scratch, logs, 10_000, 50))
        if "stalled_manifest" in args.sections:
            with section(doc, "stalled_manifest", notes) as h:
                h.update(memory_checks.stalled_manifest(args.python, scratch, logs, 50_000, 40))
        if "stalled_events" in args.sections:
            with section(doc, "stalled_events", notes) as h:
                h.update(memory_checks.stalled_events(args.python, scratch, logs, 5_000, 1_000))
    if "image" in args.sections:
        with section(doc, "image", notes) as h:
            h.update(image_checks.footprint(logs, args.readyz_runs))
            if "skipped" in h:
                notes.append(f"image skipped: {h['skipped']}")

    busy_end = cpu_busy()
    doc["host"]["busy_at_end"] = round(busy_end, 2)
    if busy_end > 0.1:
        notes.append(f"CPUs {busy_end:.0%} busy after the run: numbers may be noisy")
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    doc["targets"] = targets(doc)

    print()
    print(f"date     {started_at:%Y-%m-%d %H:%M:%S} UTC, {doc['seconds']:.0f} s{' (--quick)' if args.quick else ''}")
    print(f"host     nproc {info['nproc']}, {info['cpu_model']}, Linux {info['kernel']}")
    print(
        f"software Python {info['python']}, aiohttp {info['aiohttp']}, {versions['nginx']}, {versions['wrk']}, "
        f"node {versions['node']}, express {versions['express']}"
    )
    print(f"setup    servers on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}" if pin else "setup    NOT pinned")
    for note in notes:
        print(f"NOTE     {note}")
    static = doc.get("static")
    failed = False
    if static and "summary" in static:
        print()
        print(
            f"static files: {args.rounds} round(s), wrk 1 thread, {args.duration:g} s a load after a {args.warmup:g} s "
            f"warm-up; 200 MiB: best of {args.downloads}; ratios: mean of the per-round ratios"
        )
        for n in static["servers"]:
            print(f"  {n}: {static['labels'][n]}")
        print()
        print(static_tables(static["summary"], static["servers"], args.rounds, args.connections))
        print()
        for i, results in enumerate(static["rounds"], 1):
            for name, r in results.items():
                if "error" in r:
                    failed = True
                    print(f"r{i} {name}: ERROR {r['error']}")
                    continue
                bad = {k: v for k, v in r["probes"].items() if not v.startswith("ok")}
                errors = {k: r[k]["errors"] for k in ("small_c64", "small_c1", "range") if r[k].get("errors")}
                failed |= any(v.startswith("FAIL") for v in bad.values()) or bool(errors)
                if bad or errors or i == 1:
                    shown = ", ".join(f"{k} {v}" for k, v in (bad or {"all": "ok"}).items())
                    print(f"r{i} {name}: probes: {shown}" + (f"; load errors: {errors}" if errors else ""))
    elif static:
        print(f"\nstatic: ERROR {static.get('error')}")
        failed = True
    report = sidecar_report(doc)
    if report:
        print()
        print(report)
    print()
    print(targets_table(doc["targets"]))
    if static and "summary" in static and "sidecar" in static["servers"] and "aiohttp" in static["servers"]:
        sm = static["summary"]
        keys = ("small_c64", "small_c1", "range")
        cpu = ", ".join(f"{key} {_fmt(sm[key]['sidecar']['cpu_x_aiohttp'], '.2f', 'x')}" for key in keys)
        print(f"server CPU per request, aiohttp web.static / sidecar (steady under other load, unlike req/s): {cpu}")
    failed |= any(doc.get(s, {}).get("error") for s in SECTIONS)
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
