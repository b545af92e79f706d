"""sidecar.watch, through a real daemon: events reach the watchers (inotify, or polling where it cannot), lost
ones are rescanned at once, and a hostile tree (a folder chain thousands deep) blocks nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from support.helpers import names, wait_manifest
from support.machine import INOTIFY_QUEUE

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


class TestEvents:
    """The inotify watch; the daemon's periodic rescan is 30 s here, so these see events."""

    async def test_directory_renamed_inside_the_tree_stays_watched(self, run_sidecar, workspace, http):
        """After `mv a b`, files under b are published under their new names, and new files there too."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("a/sub/one.txt", b"1")
        await wait_manifest(http, sc, lambda d: names(d) == ["a/sub/one.txt"])
        os.rename(ws.artifacts / "a", ws.artifacts / "b")
        await wait_manifest(http, sc, lambda d: names(d) == ["b/sub/one.txt"])
        ws.write("b/sub/two.txt", b"2")
        await wait_manifest(http, sc, lambda d: names(d) == ["b/sub/one.txt", "b/sub/two.txt"])
        ws.write("a/again.txt", b"3")  # a new directory under the old name is a new directory
        await wait_manifest(http, sc, lambda d: "a/again.txt" in names(d))

    async def test_nested_directories_made_at_once(self, run_sidecar, workspace, http):
        """`mkdir -p` and a file written at once: the watch on the new directories comes too late for the
        file's own events, and the listing made right after adding it finds the file."""
        ws = workspace()
        sc = await run_sidecar()
        for i in range(20):
            deep = ws.artifacts / f"n{i}" / "x" / "y"
            deep.mkdir(parents=True)
            (deep / "f.txt").write_bytes(b"%d" % i)
        want = [f"n{i}/x/y/f.txt" for i in range(20)]
        await wait_manifest(http, sc, lambda d: names(d) == sorted(want))

    async def test_artifacts_dir_removed_and_made_again(self, run_sidecar, workspace, http):
        """The whole artifacts dir removed: its entries go; made again, it is watched again."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("x.txt", b"x")
        await wait_manifest(http, sc, lambda d: names(d) == ["x.txt"])
        shutil.rmtree(ws.artifacts)
        await wait_manifest(http, sc, lambda d: names(d) == [])
        ws.artifacts.mkdir()
        await asyncio.sleep(1.5)
        ws.write("y.txt", b"y")
        await wait_manifest(http, sc, lambda d: names(d) == ["y.txt"])
        assert sc.events("watch.root_gone")

    async def test_artifacts_dir_moved_away_and_made_again(self, run_sidecar, workspace, http):
        """The artifacts dir moved away (`mv artifacts old`) and made again: the new folder is watched, and a
        file in it is published long before the periodic rescan (30 s); what moved away is gone."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("x.txt", b"x")
        await wait_manifest(http, sc, lambda d: names(d) == ["x.txt"])
        ws.artifacts.rename(ws.root / "moved-away")
        ws.artifacts.mkdir()
        ws.write("y.txt", b"y")
        await wait_manifest(http, sc, lambda d: names(d) == ["y.txt"], timeout=8)
        assert sc.events("watch.root_gone")

    async def test_queue_overflow_rescans_at_once(self, run_sidecar, workspace, http):
        """With an inotify queue of 16 events, a burst of 500 files overflows it: the overflow is noticed
        and answered by a rescan, so every file is published long before the periodic rescan (30 s)."""
        try:
            old = INOTIFY_QUEUE.read_text().strip()
            INOTIFY_QUEUE.write_text("16")
        except OSError as e:
            pytest.skip(f"cannot set {INOTIFY_QUEUE}: {e.strerror}")
        try:  # the value is read when an inotify instance is made: only while the daemon starts
            ws = workspace()
            sc = await run_sidecar()
        finally:
            INOTIFY_QUEUE.write_text(old)
        for i in range(500):
            (ws.artifacts / f"f{i:03d}.txt").write_bytes(b"%d" % i)
        await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 500, timeout=10)
        assert sc.events("watch.overflow")

    async def test_forced_polling_still_publishes(self, run_sidecar, workspace, http):
        """WATCHFILES_FORCE_POLLING=1 (filesystems without inotify): watchfiles polls; files, nested ones
        included, are published and removals seen, without waiting for the periodic rescan."""
        ws = workspace()
        sc = await run_sidecar(env={"WATCHFILES_FORCE_POLLING": "1"})
        ws.write("p.txt", b"p")
        ws.write("d/q.txt", b"q")
        ws.write(".hidden", b"h")
        await wait_manifest(http, sc, lambda d: names(d) == ["d/q.txt", "p.txt"])
        (ws.artifacts / "p.txt").unlink()
        await wait_manifest(http, sc, lambda d: names(d) == ["d/q.txt"])
        assert not sc.events("watch.restarted")
