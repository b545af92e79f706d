"""`sidecar healthcheck`: GET /healthz of the daemon these settings describe; exit 0 if it answers 200, else 1."""

from __future__ import annotations

import http.client
import sys
from typing import TextIO

from sidecar.security import reachable_host

__all__ = ("check_health",)

TIMEOUT_S = 2.0  # under the image's HEALTHCHECK --timeout (3 s), so a hung daemon reads as unhealthy, not killed


def check_health(host: str, port: int, err: TextIO = sys.stderr, timeout: float = TIMEOUT_S) -> int:
    """0 on `200` from /healthz (and print nothing), 1 otherwise with one line saying why on `err`.

    http.client, not aiohttp: a probe that runs every few seconds should not import the server."""
    if port == 0:
        print("sidecar healthcheck: --port 0 (an ephemeral port) cannot be probed", file=err)
        return 1
    target = reachable_host(host)
    conn = http.client.HTTPConnection(target, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read(4096)
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        print(f"sidecar healthcheck: {target} port {port}: {e or type(e).__name__}", file=err)
        return 1
    finally:
        conn.close()
    if status != 200:
        print(f"sidecar healthcheck: {target} port {port}: /healthz answered {status}", file=err)
        return 1
    return 0
