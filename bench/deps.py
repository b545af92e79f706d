"""What the benchmark needs besides the virtualenv: nginx and wrk (Debian packages), express (npm, into
bench/node_modules). Each is installed when missing, bounded in time; what could not be had is reported and
the peers that need it are skipped, never silently replaced."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
APT_TIMEOUT_S = 300
NPM_TIMEOUT_S = 300

# Debian package for each command the benchmark runs.
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "node": "nodejs", "npm": "npm", "taskset": "util-linux"}


def _nginx_running() -> set[int]:
    out: set[int] = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "nginx":
                    out.add(int(p.name))
            except OSError:
                continue
    return out


def ensure_commands(commands: list[str], *, install: bool) -> dict[str, str]:
    """{command: how it was had, or why not} for each of `commands`; missing ones are installed with one
    `apt-get update` + `apt-get install` when `install` and root. Debian's nginx package starts the system
    nginx on port 80 where services may start: such an nginx, started by this install, is stopped again."""
    status = {c: "found" for c in commands if shutil.which(c)}
    missing = [c for c in commands if c not in status]
    if not missing:
        return status
    if not install:
        return status | {c: "missing (install not attempted: --no-install)" for c in missing}
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return status | {c: "missing, and apt-get is not usable here (not root or not Debian)" for c in missing}
    packages = sorted({APT_PACKAGES.get(c, c) for c in missing})
    print(f"installing with apt-get: {' '.join(packages)} ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    nginx_before = _nginx_running()
    error = None
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=APT_TIMEOUT_S, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            check=True,
            timeout=APT_TIMEOUT_S,
            capture_output=True,
        )
    except subprocess.CalledProcessError as e:
        error = f"apt-get failed: {(e.stderr or b'').decode(errors='replace').strip()[-300:]}"
    except (subprocess.SubprocessError, OSError) as e:
        error = f"apt-get failed: {e}"
    if _nginx_running() - nginx_before and shutil.which("nginx"):
        subprocess.run(["nginx", "-s", "quit"], capture_output=True, timeout=30, check=False)
    for c in missing:
        if shutil.which(c):
            status[c] = "installed with apt-get"
        else:
            status[c] = f"missing ({error or 'apt-get ran but it is still missing'})"
    return status


def express_dir() -> Path:
    return BENCH_DIR / "node_modules" / "express"


def ensure_express(*, install: bool) -> str | None:
    """None when bench/node_modules has express (installing it from bench/package-lock.json if needed),
    else why not."""
    if (express_dir() / "package.json").is_file():
        return None
    if not install:
        return "express is not in bench/node_modules (install not attempted: --no-install)"
    npm = shutil.which("npm")
    if npm is None:
        return "npm is missing"
    lock = (BENCH_DIR / "package-lock.json").is_file()
    argv = [npm, "ci" if lock else "install", "--no-audit", "--no-fund", "--omit=dev"]
    print(f"installing express: {' '.join(argv[1:])} (in bench/) ...", flush=True)
    try:
        subprocess.run(argv, cwd=BENCH_DIR, check=True, timeout=NPM_TIMEOUT_S, capture_output=True)
    except subprocess.CalledProcessError as e:
        return f"npm failed: {(e.stderr or b'').decode(errors='replace').strip()[-300:]}"
    except (subprocess.SubprocessError, OSError) as e:
        return f"npm failed: {e}"
    return None if (express_dir() / "package.json").is_file() else "npm ran but express is still missing"


def versions() -> dict[str, str | None]:
    def first_line(argv: list[str]) -> str | None:
        if not shutil.which(argv[0]):
            return None
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (subprocess.SubprocessError, OSError):
            return None
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else None

    express = None
    try:
        import json

        express = json.loads((express_dir() / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        pass
    wrk = first_line(["wrk", "-v"])
    return {
        "nginx": first_line(["nginx", "-v"]),
        "wrk": wrk.split(" Copyright")[0] if wrk else None,
        "node": first_line(["node", "--version"]),
        "express": express,
    }
