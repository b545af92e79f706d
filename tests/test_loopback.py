"""Safe defaults without --auth-token (SPEC 9), through a real daemon bound on 0.0.0.0: only loopback
clients may finalize or release, and the open port is announced at start (`security.open`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from support.helpers import REPO_ROOT, get_manifest

TOKEN = "loopback-test-token"  # noqa: S105 - a test token
ANY = "0.0.0.0"


def local_non_loopback_ipv4() -> str | None:
    """An address of this machine that is not 127.x (traffic to it stays on this machine), if any."""
    if shutil.which("ip") is None:
        return None
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "up"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "inet" and not fields[3].startswith("127."):
            return fields[3].split("/")[0]
    return None


async def post(host: str, port: int, path: str, *headers: str) -> tuple[int, bytes]:
    """POST over a raw socket to host (the connection's source is then that address too)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n".encode()
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class TestLoopbackOnlyLifecycle:
    async def test_other_clients_get_403_and_loopback_ones_202(self, run_sidecar, http):
        """Bound on 0.0.0.0 without a token: finalize and release from the machine's own non-loopback
        address are 403 JSON and change nothing; from 127.0.0.1 they work; `security.open` is logged."""
        outside = local_non_loopback_ipv4()
        if outside is None:
            pytest.skip("no non-loopback IPv4 address on this machine (the predicate has unit tests)")
        sc = await run_sidecar("--host", ANY)
        for path in ("/v1/release", "/v1/finalize"):
            status, body = await post(outside, sc.port, path)
            assert status == 403, body
            assert json.loads(body)["error"] == "forbidden"
        assert (await get_manifest(http, sc))["state"] == "running"
        assert not sc.events("lifecycle.released") and not sc.events("lifecycle.finalizing")
        status, body = await post("127.0.0.1", sc.port, "/v1/release")
        assert status == 202, body
        await sc.wait_log("lifecycle.released")
        status, body = await post("127.0.0.1", sc.port, "/v1/finalize")
        assert status == 202, body
        await sc.wait_log("lifecycle.final")
        event = await sc.wait_log("security.open")
        assert (event["host"], event["port"], event["level"]) == (ANY, sc.port, "warning")

    async def test_a_token_opens_them_to_any_client_that_has_it(self, run_sidecar):
        """With --auth-token the bearer decides, not the address; no `security.open` warning."""
        outside = local_non_loopback_ipv4()
        if outside is None:
            pytest.skip("no non-loopback IPv4 address on this machine")
        sc = await run_sidecar("--host", ANY, "--auth-token", TOKEN)
        status, _ = await post(outside, sc.port, "/v1/release")
        assert status == 401
        status, body = await post(outside, sc.port, "/v1/release", f"Authorization: Bearer {TOKEN}")
        assert status == 202, body
        await sc.wait_log("lifecycle.released")
        assert not sc.events("security.open")

    async def test_loopback_host_is_not_announced_as_open(self, run_sidecar):
        """--host 127.0.0.1 without a token: no warning, and loopback clients finalize as before."""
        sc = await run_sidecar("--host", "127.0.0.1")
        status, body = await post("127.0.0.1", sc.port, "/v1/finalize")
        assert status == 202, body
        await sc.wait_log("lifecycle.final")
        assert not sc.events("security.open")


# Run inside a fresh network namespace (nothing on the host changes): lo up, plus 10.77.0.1 on lo, which
# is this namespace's own address but not a loopback one. The daemon binds 0.0.0.0; the answers are printed.
_IN_NETNS = r"""
import json, os, socket, subprocess, sys, time
root, port = sys.argv[1], int(sys.argv[2])
argv = [sys.executable, "-m", "sidecar", "serve", "--host", "0.0.0.0", "--port", str(port),
        "--artifacts-dir", root + "/artifacts", "--state-dir", root + "/state",
        "--tool-results-dir", root + "/tool-results", "--log-format", "json", "--grace-period", "1"]
with open(root + "/netns.stderr", "wb") as err:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
def request(host, path):
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"{'GET' if path == '/readyz' else 'POST'} {path} HTTP/1.1\r\nHost: x\r\n"
                  "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])
try:
    deadline = time.monotonic() + 15
    while True:
        try:
            if request("127.0.0.1", "/readyz") == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the sidecar did not start")
        time.sleep(0.05)
    out = {p + "@" + h: request(h, p) for h in ("10.77.0.1", "127.0.0.1") for p in ("/v1/release", "/v1/finalize")}
    print(json.dumps(out))
finally:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
"""


class TestInANetworkNamespace:
    def test_a_non_loopback_client_in_a_namespace_of_its_own(self, workspace):
        """Where the machine has no other address: the same check in a new network namespace, with a
        non-loopback address added there (the host's network is not touched)."""
        if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
            pytest.skip("needs root, unshare and ip")
        ws = workspace()
        setup = 'ip link set lo up && ip addr add 10.77.0.1/32 dev lo && exec "$0" -c "$1" "$2" "$3"'
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env = {k: v for k, v in env.items() if not k.startswith("SIDECAR_")}
        run = subprocess.run(
            ["unshare", "--net", "sh", "-c", setup, sys.executable, _IN_NETNS, str(ws.root), "5173"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        if run.returncode != 0 and "unshare" in run.stderr and "Operation not permitted" in run.stderr:
            pytest.skip("no network namespaces here")
        assert run.returncode == 0, run.stderr + (ws.root / "netns.stderr").read_text(errors="replace")
        got = json.loads(run.stdout.strip().splitlines()[-1])
        assert got == {
            "/v1/release@10.77.0.1": 403,
            "/v1/finalize@10.77.0.1": 403,
            "/v1/release@127.0.0.1": 202,
            "/v1/finalize@127.0.0.1": 202,
        }
