"""What the agent can do to the disk under a real daemon: swap a published file's folder for a symlink, edit
the state file between runs. Serving stays beneath the root without links; stored entries are claims
checked against the disk (SPEC 9)."""

from __future__ import annotations

import os

from helpers import entry, raw_request, wait_manifest

SECRET = b"OUTSIDE-THE-ARTIFACTS-DIR"


def get(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class TestSymlinkedFolder:
    async def test_a_published_file_reached_through_a_symlinked_folder_is_never_served(
        self, run_sidecar, workspace, http
    ):
        """`sub/x.txt` is published; then `sub` becomes a symlink to a folder holding that very inode. Asked
        for at once, before the watcher has caught up, the name is 404, never served through the link."""
        ws = workspace()
        ws.write("sub/x.txt", SECRET)
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: entry(d, "sub/x.txt"))
        moved = ws.root / "moved"
        answers = []
        os.rename(ws.artifacts / "sub", moved)  # the same inode, now outside the artifacts dir
        os.symlink(moved, ws.artifacts / "sub")
        for _ in range(5):
            answers.append(await raw_request(sc.port, get(b"/artifacts/sub/x.txt")))
        assert [status for status, _ in answers] == [404] * 5
        assert not any(SECRET in answer for _, answer in answers)

