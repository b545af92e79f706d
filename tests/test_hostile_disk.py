"""What the agent can do to the disk under a real daemon: swap a published file's folder for a symlink, edit
the state file between runs. Serving stays beneath the root without links; stored entries are claims
checked against the disk (SPEC 9)."""

from __future__ import annotations

import json
import os

from support.helpers import entry, raw_request, sha256, wait_manifest

from sidecar.media import artifact_type

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


class TestTamperedState:
    async def test_stored_entries_cannot_rename_retype_or_forge(self, run_sidecar, workspace, http):
        """manifest.json edited between runs: a retyped entry (text/javascript, a fake sha256, a fake size) is
        hashed and typed again from the disk; entries under other names (a symlinked folder, a name
        that is not on disk, a dotfile) are dropped; the real files are served as they are."""
        ws = workspace()
        ws.write("notes.txt", b"plain text")
        ws.write("sub/x.txt", SECRET)
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: entry(d, "notes.txt") and entry(d, "sub/x.txt"))
        await sc.stop()

        state_file = ws.state / "manifest.json"
        doc = json.loads(state_file.read_bytes())
        by_name = {e["name"]: e for e in doc["entries"]}
        notes = by_name["notes.txt"]
        notes.update(mime_type="text/javascript", sha256="0" * 64, size_bytes=3)
        (ws.artifacts / "linked").symlink_to(ws.artifacts / "sub")
        forged = [
            {**by_name["sub/x.txt"], "name": "linked/x.txt", "mime_type": "text/html"},
            {**notes, "name": "evil.js", "mime_type": "text/javascript"},
            {**notes, "name": ".env"},
        ]
        doc["entries"] += forged
        state_file.write_text(json.dumps(doc))

        sc = await run_sidecar(ws=ws)
        want = sha256(b"plain text")
        doc = await wait_manifest(http, sc, lambda d: (entry(d, "notes.txt") or {}).get("sha256") == want)
        got = entry(doc, "notes.txt")
        assert got is not None
        assert (got["mime_type"], got["type"], got["size_bytes"]) == ("text/plain", artifact_type("text/plain"), 10)
        assert sorted(a["name"] for a in doc["artifacts"]) == ["notes.txt", "sub/x.txt"]
        async with http.get(sc.url("/artifacts/notes.txt")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert resp.headers["ETag"] == f'"{want}"'
            assert await resp.read() == b"plain text"
        for path in (b"/artifacts/linked/x.txt", b"/artifacts/evil.js"):
            status, answer = await raw_request(sc.port, get(path))
            assert status == 404 and SECRET not in answer, path
