"""The baseline side of Janus: follow the sandbox's sidecar and forward its artifacts as Janus chunks.

Instead of `find /workspace/artifacts` and reading every file out of the sandbox when the agent is done,
the baseline watches the sidecar (`sidecar.client.watch`: its event stream, else long polls) and emits a
`janus` `artifacts` chunk for every artifact as soon as it is published; Janus's UI then caches each
one from its `url`. `artifact_chunks` is what a baseline merges into its chat-completion stream; run as
a script it prints the chunks as SSE `data:` lines until the sandbox's manifest is final:

    SANDBOX_TOKEN=... python examples/janus/baseline.py https://<sandbox-public-url>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from sidecar.client import janus_event, watch


async def artifact_chunks(sandbox_url: str, token: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """One Janus chunk per batch of new artifacts (each id once), until the sandbox's manifest is final."""
    sent: set[str] = set()
    async for manifest in watch(sandbox_url, token):
        chunk = janus_event(manifest, skip=sent)
        items = chunk["choices"][0]["delta"]["janus"]["payload"]["items"]
        if items:
            sent.update(item["id"] for item in items)
            yield chunk


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("sandbox_url", help="the sidecar's base URL, e.g. https://<sandbox>:5173")
    args = parser.parse_args()
    token = os.environ.get("SANDBOX_TOKEN") or None  # the sidecar's --auth-token, kept out of argv
    async for chunk in artifact_chunks(args.sandbox_url, token):
        sys.stdout.write(f"data: {json.dumps(chunk)}\n\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
