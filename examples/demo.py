"""`make demo`: `sidecar serve` on a demo workspace with a few real images; prints the manifest and a URL.

It keeps serving until Ctrl-C (or for DEMO_SECONDS seconds), so the printed URL can be fetched with curl.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from images import bar_chart_svg, gradient_png, tiny_gif  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / "demo-workspace"
PORT = int(os.environ.get("DEMO_PORT", "5173"))
BASE = f"http://127.0.0.1:{PORT}"


def get(path: str) -> bytes:
    with urllib.request.urlopen(BASE + path, timeout=5) as resp:  # noqa: S310 - loopback only
        return bytes(resp.read())


def wait_for(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():  # type: ignore[operator]
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def make_workspace() -> Path:
    shutil.rmtree(WORKSPACE, ignore_errors=True)
    artifacts = WORKSPACE / "artifacts"
    (artifacts / "charts").mkdir(parents=True)
    (artifacts / "waves.png").write_bytes(gradient_png())
    (artifacts / "charts" / "q3.svg").write_bytes(bar_chart_svg([3.1, 4.7, 4.2, 6.8]))
    (artifacts / "dots.gif").write_bytes(tiny_gif())
    (artifacts / "table.csv").write_text("quarter,revenue\nQ1,3.1\nQ2,4.7\nQ3,4.2\nQ4,6.8\n")
    (artifacts / "draft.png.part").write_bytes(b"a temp name: never published")
    return artifacts


def main() -> int:
    artifacts = make_workspace()
    argv = [
        sys.executable, "-m", "sidecar", "serve",
        "--artifacts-dir", str(artifacts),
        "--state-dir", str(WORKSPACE / "state"),
        "--tool-results-dir", str(WORKSPACE / "projects"),
        "--host", "127.0.0.1", "--port", str(PORT),
        "--public-base-url", BASE,
        "--grace-period", "2",
        "--log-format", "console",
        "--log-file", str(WORKSPACE / "sidecar.log"),
    ]  # fmt: skip
    print(f"$ {' '.join(argv[2:])}", flush=True)
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
    try:
        if not wait_for(lambda: get("/readyz"), 15):
            print(f"the sidecar did not become ready; see {WORKSPACE / 'sidecar.log'}", file=sys.stderr)
            return 1
        wanted = {"waves.png", "charts/q3.svg", "dots.gif", "table.csv"}
        wait_for(lambda: wanted <= {e["name"] for e in json.loads(get("/v1/manifest"))["artifacts"]}, 10)
        manifest = json.loads(get("/v1/manifest"))
        print("\nGET /v1/manifest\n" + json.dumps(manifest, indent=2))
        url = next(e["url"] for e in manifest["artifacts"] if e["name"] == "waves.png")
        print(f"\nan artifact: {url}\n  curl -sS {url} | file -\n")
        print(f"serving {artifacts} on {BASE} (logs: {WORKSPACE / 'sidecar.log'}); Ctrl-C to stop", flush=True)
        seconds = float(os.environ.get("DEMO_SECONDS", "inf"))
        deadline = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(BASE + "/v1/release", method="POST"), timeout=2)  # noqa: S310
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print(f"sidecar exited with {proc.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
