"""Smoke test of the built images (make image-test): PID 1, serving, reaping, exit status, SIGTERM, health, privileges.

Run through `image/build.sh exec -- pytest image/test_image.py`, which builds the images into a temp podman
store and names them in SIDECAR_IMAGES; without it every test is skipped. Each container runs on the host
network (no bridge) on a free 127.0.0.1 port and is removed at the end of its test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IMAGES = dict(item.split("=", 1) for item in os.environ.get("SIDECAR_IMAGES", "").split() if "=" in item)
pytestmark = pytest.mark.skipif(
    not IMAGES or shutil.which("podman") is None, reason="run by `make image-test` (image/build.sh exec)"
)
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0
# How much later than the grace period a SIGTERMed container may be gone: startup of `podman wait` and
# finalization on a loaded 2-core machine, not a speed target.
STOP_SLACK_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["podman", *args], capture_output=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return proc


class Container:
    """One detached container of an image, reached on 127.0.0.1:port."""

    def __init__(self, name: str, port: int, token: str | None) -> None:
        self.name = name
        self.port = port
        self.token = token

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.get("/readyz", timeout=2.0)[0] == 200:
                    return
            if self.state() not in ("running", "created", "configured"):
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready: {self.state()}\n{self.logs()}")

    def state(self) -> str:
        out = podman("inspect", "--format", "{{.State.Status}}", self.name, check=False)
        return out.stdout.decode().strip() or "gone"

    def logs(self) -> str:
        return podman("logs", self.name, check=False).stderr.decode(errors="replace")[-4000:]

    def exec(self, script: str) -> bytes:
        return podman("exec", self.name, "sh", "-c", script).stdout

    def wait_artifact(self, name: str) -> bytes:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = self.get(f"/artifacts/{name}")
            if status == 200:
                return body
            time.sleep(0.1)
        raise AssertionError(f"{name} never served: {status} {body[:200]!r}\n{self.logs()}")

    def wait_manifest(self, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status, body = self.get("/v1/manifest")
            if status == 200 and name in [e["name"] for e in json.loads(body)["artifacts"]]:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} never published\n{self.logs()}")

    def processes(self) -> list[tuple[int, int, str]]:
        """(pid, ppid, state) of every process in the container, from /proc (there may be no ps)."""
        out = self.exec("cat /proc/[0-9]*/stat 2>/dev/null; true").decode(errors="replace")
        procs = []
        for line in out.splitlines():
            head, _, rest = line.rpartition(")")
            fields = rest.split()
            if head and len(fields) > 2:
                procs.append((int(head.split(" (", 1)[0]), int(fields[1]), fields[0]))
        return procs


@pytest.fixture(params=sorted(IMAGES) or ["none"])
def image(request: pytest.FixtureRequest) -> str:
    return IMAGES.get(request.param, "")


@pytest.fixture
def run(image: str) -> Iterator[Callable[..., Container]]:
    """Factory: a detached container of `image` running CMD as the agent; always removed at teardown."""
    names: list[str] = []

    def start(
        *cmd: str, env: dict[str, str] | None = None, volumes: tuple[str, ...] = (), health: bool = False, **kw: str
    ) -> Container:
        name = f"sidecar-smoke-{secrets.token_hex(4)}"
        port = free_port()
        # No systemd here to time health checks: none at all, or (health) defined but only run by hand
        # (podman then logs that it found no systemd for a timer, and starts the container all the same).
        health_args = ["--health-interval", "disable"] if health else ["--no-healthcheck"]
        args = ["run", "-d", "--name", name, *health_args, "--network", "host"]
        for key, value in {"SIDECAR_HOST": "127.0.0.1", "SIDECAR_PORT": str(port), **(env or {})}.items():
            args += ["-e", f"{key}={value}"]
        for volume in volumes:
            args += ["-v", volume]
        names.append(name)
        podman(*args, image, *cmd)
        c = Container(name, port, kw.get("token"))
        c.wait_ready()
        return c

    yield start
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_sidecar_is_pid1_and_serves_the_agents_artifact_byte_exact(run: Callable[..., Container]) -> None:
    c = run("sh", "-c", "head -c 300001 /dev/urandom > artifacts/blob.bin && exec sleep infinity")
    served = c.wait_artifact("blob.bin")
    on_disk = c.exec("cat /workspace/artifacts/blob.bin")
    assert len(on_disk) == 300001
    assert hashlib.sha256(served).hexdigest() == hashlib.sha256(on_disk).hexdigest()
    cmdline = c.exec("tr '\\0' ' ' < /proc/1/cmdline").decode()
    assert "sidecar" in cmdline and " run " in f"{cmdline} ", cmdline
    manifest = json.loads(c.get("/v1/manifest")[1])
    assert [e["name"] for e in manifest["artifacts"]] == ["blob.bin"]


def test_orphans_are_reaped(run: Callable[..., Container]) -> None:
    # Each `( sleep & )` leaves an orphan that the sidecar, as PID 1, inherits; they end a moment later.
    c = run("sh", "-c", "for i in 1 2 3 4 5; do (sleep 1 &); done; exec sleep infinity")
    orphans = [p for p in c.processes() if p[1] == 1 and p[0] != 1]
    assert len(orphans) >= 5, c.processes()  # the agent (sleep infinity) and the five sleeps
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        procs = c.processes()
        if len([p for p in procs if p[1] == 1]) == 1 and not [p for p in procs if p[2] == "Z"]:
            break
        time.sleep(0.2)
    procs = c.processes()
    assert not [p for p in procs if p[2] == "Z"], procs
    assert len([p for p in procs if p[1] == 1]) == 1, procs  # only the agent is left


def test_exit_status_of_the_agent_is_the_containers(image: str) -> None:
    port = free_port()
    proc = podman(
        "run", "--rm", "--no-healthcheck", "--network", "host", "-e", "SIDECAR_HOST=127.0.0.1",
        "-e", f"SIDECAR_PORT={port}", "-e", "SIDECAR_GRACE_PERIOD=0", image, "sh", "-c", "exit 7",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 7, proc.stderr.decode()[-2000:]


def test_sigterm_stops_it_within_the_grace_period(run: Callable[..., Container]) -> None:
    c = run(
        "sh", "-c", "echo never-downloaded > artifacts/a.txt; exec sleep infinity",
        env={"SIDECAR_GRACE_PERIOD": str(STOP_GRACE_S)},
    )  # fmt: skip
    # Published but never downloaded: the sidecar holds the whole grace period for it, then exits.
    c.wait_manifest("a.txt")
    start = time.monotonic()
    podman("kill", "--signal", "TERM", c.name)
    code = podman("wait", c.name, timeout=STOP_GRACE_S + STOP_SLACK_S).stdout.decode().strip()
    elapsed = time.monotonic() - start
    assert code == "143", c.logs()  # 128 + SIGTERM: the agent was stopped by the forwarded signal
    assert elapsed < STOP_GRACE_S + STOP_SLACK_S


def test_healthcheck_passes_on_a_non_default_port(run: Callable[..., Container]) -> None:
    # Bound to 0.0.0.0 (the image's default host) on a port that is not 5173.
    c = run("sleep", "infinity", env={"SIDECAR_HOST": "0.0.0.0"}, health=True)
    assert c.port != 5173
    proc = podman("healthcheck", "run", c.name, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    inspect = json.loads(
        podman("image", "inspect", podman("inspect", "--format", "{{.Image}}", c.name).stdout.decode().strip()).stdout
    )
    test = inspect[0]["Healthcheck"]["Test"]
    assert "healthcheck" in " ".join(test) and "5173" not in " ".join(test), test


def test_agent_is_unprivileged_and_cannot_read_the_sidecars_secrets(run: Callable[..., Container]) -> None:
    token = secrets.token_urlsafe(24)
    ui_token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="sidecar-smoke-") as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        # The agent tries what a prompt-injected one would, and writes down what it got.
        probe = (
            "{ echo uid=$(id -u); cat /proc/1/environ; echo; ls -a /workspace/.sidecar; "
            "cat /run/secrets/sidecar-token; env; } > artifacts/probe.txt 2>&1; exec sleep infinity"
        )
        c = run(
            "sh", "-c", probe,
            env={"SIDECAR_AUTH_TOKEN_FILE": "/run/secrets/sidecar-token", "SIDECAR_UI_TOKEN": ui_token},
            volumes=(f"{token_file}:/run/secrets/sidecar-token:ro",), token=token,
        )  # fmt: skip
        report = c.wait_artifact("probe.txt").decode(errors="replace")
    assert "uid=0" not in report and "uid=" in report, report
    assert token not in report and ui_token not in report, report
    assert "SIDECAR_" not in report, report
    assert "manifest.json" not in report, report  # the state dir's listing
    assert report.count("Permission denied") >= 3, report
    # The sidecar itself is root and asks for the token it read from the file.
    assert c.get("/v1/manifest")[0] == 200
    assert Container(c.name, c.port, None).get("/v1/manifest")[0] == 401


def test_image_leaves_no_build_tools_or_build_config(image: str) -> None:
    script = (
        "test ! -e /etc/pip.conf || echo pip.conf; "
        "test ! -e /opt/sidecar/bin/pip || echo venv-pip; "
        "ls /opt/sidecar/lib/python3*/site-packages 2>/dev/null | grep -E '^(pip|setuptools)' || true; "
        "command -v python3 >/dev/null && echo python3; true"
    )
    out = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "sh", image, "-c", script).stdout.decode()
    found = set(out.split())
    if "selfcontained" in image:
        assert found == set(), found  # no Python at all beside the folder
    else:
        assert found == {"python3"}, found


def test_the_venv_holds_exactly_the_locked_versions(image: str) -> None:
    if "selfcontained" in image:
        pytest.skip("PyInstaller keeps no complete package metadata; its build installs the same lock")
    lock = Path(__file__).resolve().parent / "requirements.txt"
    pinned = {line.lower().replace("_", "-") for line in lock.read_text().splitlines() if "==" in line}
    code = (
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(f\"{d.metadata['Name']}=={d.version}\".lower().replace('_', '-'))"
    )
    out = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "/opt/sidecar/bin/python", image, "-c", code)
    installed = set(out.stdout.decode().split())
    assert {item.split("==")[0] for item in installed - pinned} == {"artifact-sidecar"}, installed - pinned
    assert pinned - installed == set(), pinned - installed


def test_offload_to_s3_works_in_the_image(run: Callable[..., Container]) -> None:
    # aiobotocore is imported by name only with --s3-bucket: the frozen build must still carry it and
    # botocore's S3 model. moto serves S3 on 127.0.0.1 (the container shares the host's network).
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    c: Container | None = None
    try:
        creds = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "smoke-test-key"}
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        )
        # moto keeps its buckets per process, across servers: each image gets a bucket of its own
        bucket = f"smoke-{secrets.token_hex(4)}"
        s3.create_bucket(Bucket=bucket)
        env = {
            "SIDECAR_S3_BUCKET": bucket,
            "SIDECAR_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "SIDECAR_S3_PREFIX": "",
            "AWS_EC2_METADATA_DISABLED": "true",
            **creds,
        }
        c = run("sh", "-c", "head -c 70000 /dev/urandom > artifacts/up.bin && exec sleep infinity", env=env)
        on_disk = c.exec("cat /workspace/artifacts/up.bin")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0):
                break
            time.sleep(0.2)
        assert s3.get_object(Bucket=bucket, Key="up.bin")["Body"].read() == on_disk, c.logs()
    finally:
        # The container first: the sidecar's kept-alive connection to moto would hold one of its request
        # threads, and moto's stop() waits for them all (it hung a CI run).
        if c is not None:
            podman("rm", "-f", "-t", "0", c.name, check=False)
        server.stop()
