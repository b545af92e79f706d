"""`make bench` section `image`: each image's size, the sidecar's idle RSS and its start -> /readyz in a container.

bench/run.py calls footprint(), which runs `image/build.sh exec pip selfcontained -- python THIS --measure OUT`:
the build script makes the images in a temp podman store and removes it afterwards; this file, run inside it,
starts each image a few times on the host network (a free 127.0.0.1 port) and writes what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servers import free_port, http_status

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_S = 5.0  # settle after /readyz before RSS is read
READY_TIMEOUT_S = 60.0


def _podman(*args: str, timeout: float = 120) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True, timeout=timeout).stdout


def _readyz(port: int) -> bool:
    return http_status(port, "/readyz") == 200


def _one_start(image: str) -> dict[str, float]:
    """`podman run -d` -> /readyz seen from the host, and the sidecar's own exec -> /readyz (PID 1's start time
    against CLOCK_BOOTTIME: the container shares the host's kernel clock), then PID 1's RSS after IDLE_S."""
    name = f"sidecar-bench-{secrets.token_hex(4)}"
    port = free_port()
    t0 = time.monotonic()
    _podman(
        "run", "-d", "--name", name, "--no-healthcheck", "--network", "host",
        "-e", "SIDECAR_HOST=127.0.0.1", "-e", f"SIDECAR_PORT={port}", image, "sleep", "infinity",
    )  # fmt: skip
    try:
        while not _readyz(port):
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise RuntimeError(f"{image}: no /readyz within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.005)
        ready_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        ready_s = time.monotonic() - t0
        stat = _podman("exec", name, "cat", "/proc/1/stat")
        started = int(stat.rsplit(")", 1)[1].split()[19]) / CLK_TCK
        time.sleep(IDLE_S)
        status = _podman("exec", name, "cat", "/proc/1/status")
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return {"run_to_ready_s": ready_s, "exec_to_ready_s": ready_boot - started, "idle_rss_mib": rss_kib / 1024}
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, check=False, timeout=60)


def measure(images: dict[str, str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, image in images.items():
        size = int(_podman("image", "inspect", "--format", "{{.Size}}", image).strip())
        starts = [_one_start(image) for _ in range(runs)]
        folder = _podman("run", "--rm", "--no-healthcheck", "--entrypoint", "du", image, "-sk", "/opt/sidecar")
        out[kind] = {
            "image_mib": round(size / 2**20, 1),
            "sidecar_folder_mib": round(int(folder.split()[0]) / 1024, 1),
            "runs": runs,
            **{
                f"{key}_median": round(statistics.median(s[key] for s in starts), 3)
                for key in ("run_to_ready_s", "exec_to_ready_s", "idle_rss_mib")
            },
        }
    return out


def footprint(logs: Path, runs: int) -> dict[str, Any]:
    """Build both images and measure them; {"skipped": why} where podman or root (for debootstrap) is missing."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        return {"skipped": "podman or debootstrap is not installed (`make image` installs them as root)"}
    if os.geteuid() != 0:
        return {"skipped": "the images are built as root (debootstrap, podman's storage)"}
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / "image-footprint.json"
    result.unlink(missing_ok=True)
    t0 = time.monotonic()
    with (logs / "image-build.log").open("wb") as log:
        subprocess.run(
            [str(REPO / "image/build.sh"), "exec", "pip", "selfcontained", "--",
             sys.executable, __file__, "--measure", str(result), "--runs", str(runs)],
            stdout=log, stderr=subprocess.STDOUT, check=True, timeout=1800,
        )  # fmt: skip
    doc: dict[str, Any] = json.loads(result.read_text())
    doc["build_and_measure_s"] = round(time.monotonic() - t0, 1)
    return doc


def lines(doc: dict[str, Any]) -> list[str]:
    if "skipped" in doc:
        return [f"image    skipped: {doc['skipped']}"]
    out = []
    for kind in ("pip", "selfcontained"):
        r = doc.get(kind)
        if r:
            out.append(
                f"image    {kind}: {r['image_mib']} MiB (/opt/sidecar {r['sidecar_folder_mib']} MiB); idle RSS "
                f"{r['idle_rss_mib_median']:.1f} MiB; exec -> /readyz {r['exec_to_ready_s_median']} s, podman run "
                f"-> /readyz {r['run_to_ready_s_median']} s (medians of {r['runs']})"
            )
    out.append(f"image    built and measured in {doc.get('build_and_measure_s')} s (image/build.sh, cached bases)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--measure", type=Path, required=True, help="write the numbers here (run by image/build.sh)")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    images = dict(item.split("=", 1) for item in os.environ.get("SIDECAR_IMAGES", "").split())
    a.measure.write_text(json.dumps(measure(images, a.runs), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
