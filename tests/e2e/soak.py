"""`make soak N=100 SEED=1`: the end-to-end scenario N times with seeded random faults, then a summary.

    python tests/e2e/soak.py --runs 100 --seed 1 [--burst 10000] [--workdir DIR] [--json FILE]

Prints one line per run and a table: runs, artifacts expected/delivered, lost, corrupt, broken published,
publish-to-delivery latency p50/p95/p99/max, the faults of each run. Exits 1 unless delivery is 100% with
no corrupt or broken artifact, the right exit status and the right final manifest in every run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e.scenario import Faults, Result, run_scenario


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summary(results: list[tuple[int, Faults, Result]]) -> str:
    lines = [
        f"{'run':>3} {'seed':>10} {'ok':>4} {'expected':>8} {'deliv':>6} {'lost':>5} {'corrupt':>7} {'broken':>6} "
        f"{'exit':>7} {'p50 s':>6} {'max s':>6} {'secs':>5}  faults"
    ]
    lat: list[float] = []
    for i, f, r in results:
        lat += r.latencies
        lines.append(
            f"{i:>3} {f.seed:>10} {'yes' if r.ok else 'NO':>4} {r.expected:>8} {r.delivered:>6} {len(r.lost):>5} "
            f"{len(r.corrupt):>7} {len(r.broken_published):>6} {f'{r.exit_got}/{r.exit_expected}':>7} "
            f"{pct(r.latencies, 50):>6.2f} {max(r.latencies or [float('nan')]):>6.2f} {r.seconds:>5.0f}  {r.faults}"
        )
    exp = sum(r.expected for _, _, r in results)
    got = sum(r.delivered for _, _, r in results)
    ok = sum(r.ok for _, _, r in results)
    lines += [
        "",
        f"runs {len(results)}, passed {ok}, failed {len(results) - ok}",
        f"artifacts expected {exp}, delivered {got}, delivery rate {100 * got / exp if exp else 0:.3f}%",
        f"lost {sum(len(r.lost) for _, _, r in results)}, corrupt {sum(len(r.corrupt) for _, _, r in results)}, "
        f"broken published {sum(len(r.broken_published) for _, _, r in results)}, "
        f"wrong final manifest entries {sum(len(r.manifest_diff) for _, _, r in results)}, "
        f"wrong exit status {sum(r.exit_got != r.exit_expected for _, _, r in results)}",
        f"publish-to-delivery latency (s, {len(lat)} artifacts): p50 {pct(lat, 50):.3f}  p95 {pct(lat, 95):.3f}  "
        f"p99 {pct(lat, 99):.3f}  max {max(lat or [float('nan')]):.3f}",
    ]
    return "\n".join(lines)


def describe_failure(r: Result) -> str:
    out = []
    for label, items in (("lost", r.lost), ("corrupt", r.corrupt), ("broken published", r.broken_published),
                         ("final manifest", r.manifest_diff), ("errors", r.errors)):  # fmt: skip
        if items:
            out.append(f"    {label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
    return "\n".join(out)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--burst", type=int, default=10_000, help="the burst size of the big runs (others use <= 1000)")
    p.add_argument("--grace", type=float, default=None, help="--grace-period (default: scaled to the run)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir (kept for failed runs)")
    p.add_argument("--json", type=Path, default=None, help="write every run's result here")
    p.add_argument("--max-seconds", type=float, default=6 * 3600, help="stop starting runs after this")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (most of a run with UI faults is waiting)")
    p.add_argument("--non-readers", type=float, default=0.3, metavar="P",
                   help="share of runs with manifest and event clients that never read (0 to 1)")  # fmt: skip
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
    results: list[tuple[int, Faults, Result]] = []
    started = time.monotonic()
    print(f"soak: {args.runs} runs, seed {args.seed}, burst {args.burst}, {args.jobs} at once, workdir {root}",
          flush=True)  # fmt: skip
    # the same runs whatever --jobs is
    plan = [Faults.random(rng, args.burst, args.non_readers) for _ in range(args.runs)]
    slots = asyncio.Semaphore(max(1, args.jobs))

    async def one(i: int, faults: Faults) -> None:
        async with slots:
            if time.monotonic() - started > args.max_seconds:
                return
            workdir = root / f"run-{i:03d}"
            res = await run_scenario(workdir, faults, grace=args.grace)
        results.append((i, faults, res))
        print(f"run {i}: {'ok' if res.ok else 'FAILED'} {res.delivered}/{res.expected} in {res.seconds:.0f} s "
              f"[{res.faults}] {json.dumps(res.notes, default=str)[:400]}", flush=True)  # fmt: skip
        if res.ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(describe_failure(res) + f"\n    kept: {workdir}", flush=True)

    await asyncio.gather(*(one(i, f) for i, f in enumerate(plan, 1)))
    if len(results) < args.runs:
        print(f"soak: stopped after {args.max_seconds:.0f} s ({len(results)} of {args.runs} runs)", flush=True)
    results.sort(key=lambda r: r[0])
    print("\n" + summary(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps([{"run": i, **dataclasses.asdict(r)} for i, _, r in results], indent=1))
    if args.workdir is None and all(r.ok for _, _, r in results):
        shutil.rmtree(root, ignore_errors=True)
    return 0 if results and all(r.ok for _, _, r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
