"""sidecar.dirwatch, through a real daemon: a hostile tree (a folder chain thousands deep) blocks nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from helpers import names, wait_manifest

DEPTH = 3000  # past PATH_MAX (~2,000 levels of "d/"): only relative names reach the bottom
MAX_GAP_S = 2.0  # loose on purpose (a busy machine): the walk on the loop stalled it 3.5-5 s here

# Made and removed by relative names in a child process: no path is ever longer than a name, and the
# test process keeps its working directory.
MAKE_CHAIN = """
import os, sys
os.chdir(sys.argv[1])
for _ in range(int(sys.argv[2])):
    os.mkdir("d")
    os.chdir("d")
"""
REMOVE_TREE = """
import os, sys
os.chdir(sys.argv[1])
down = []
while True:
    dirs = []
    for e in os.scandir("."):
        if e.is_dir(follow_symlinks=False):
            dirs.append(e.name)
        else:
            os.unlink(e.name)
    if dirs:
        down.append(dirs[0])
        os.chdir(dirs[0])
    elif down:
        os.chdir("..")
        os.rmdir(down.pop())
    else:
        break
"""


def remove_tree(top: Path) -> None:
    """Empty a tree of any depth (shutil.rmtree recurses, and gives up past ~1,000 levels)."""
    subprocess.run([sys.executable, "-c", REMOVE_TREE, str(top)], check=True, timeout=120)


class TestHostileTree:
    async def test_deep_chain_does_not_block_the_loop(self, run_sidecar, workspace, http):
        """While a 3,000-deep chain is created, /healthz keeps answering and a sibling file is published."""
        ws = workspace()
        sc = await run_sidecar()
        chain = ws.artifacts / "deep"
        chain.mkdir()
        try:
            maker = await asyncio.create_subprocess_exec(sys.executable, "-c", MAKE_CHAIN, str(chain), str(DEPTH))
            started = last = time.monotonic()
            max_gap = 0.0
            written = seen = None
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as probe:
                while time.monotonic() - started < 4.0:
                    async with probe.get(sc.url("/healthz")) as resp:
                        assert resp.status == 200
                    now = time.monotonic()
                    max_gap, last = max(max_gap, now - last), now
                    if written is None and now - started > 0.3:
                        ws.write("sibling.txt", b"an ordinary file\n")
                        written = now
                    elif written is not None and seen is None:
                        async with probe.get(sc.url("/v1/manifest")) as resp:
                            if "sibling.txt" in names(await resp.json()):
                                seen = now
                    await asyncio.sleep(0.01)
            assert await maker.wait() == 0
            assert max_gap < MAX_GAP_S, f"/healthz went unanswered for {max_gap:.2f} s"
            assert written is not None and seen is not None, "the sibling was not published within 4 s"
            assert seen - written < MAX_GAP_S
        finally:
            remove_tree(chain)

    async def test_files_deep_in_a_chain_are_published(self, run_sidecar, workspace, http):
        """A file at the bottom of a chain 40 levels deep (below the watcher's shallow limit) is published."""
        ws = workspace()
        sc = await run_sidecar()
        name = "/".join(["d"] * 40) + "/leaf.txt"
        ws.write(name, b"deep\n")
        await wait_manifest(http, sc, lambda d: name in names(d))
