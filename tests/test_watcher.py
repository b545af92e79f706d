"""sidecar.watcher, through a real daemon: what gets published from the artifacts dir, and when."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from support.helpers import entry, get_manifest, names, sha256, wait_manifest


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TestPublication:
    async def test_file_is_published_once_it_settles(self, run_sidecar, workspace, http, write_soon):
        """A file still being appended to is published once, with its final content, after it stops changing."""
        ws = workspace()
        sc = await run_sidecar("--settle-ms", "250")
        start = (await get_manifest(http, sc))["version"]
        chunks = [os.urandom(2048) for _ in range(8)]
        writer = write_soon(ws.artifacts / "out.bin", *chunks, every=0.04)
        await writer
        doc = await wait_manifest(http, sc, lambda d: "out.bin" in names(d))
        full = b"".join(chunks)
        assert entry(doc, "out.bin")["sha256"] == sha256(full)
        assert doc["version"] == start + 1
        assert [e["sha256"] for e in sc.events("artifact.published", name="out.bin")] == [sha256(full)]

    async def test_entry_describes_the_file(self, run_sidecar, workspace, http):
        """An entry carries the relative name, basename, encoded path, type, size, hash and the file's mtime."""
        ws = workspace()
        sc = await run_sidecar()
        data = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
        path = ws.write("charts/q 3.png", data)
        doc = await wait_manifest(http, sc, lambda d: "charts/q 3.png" in names(d))
        e = entry(doc, "charts/q 3.png")
        assert e["id"] == "artf_" + sha256(data)[:16]
        assert (e["display_name"], e["path"], e["url"]) == ("q 3.png", "/artifacts/charts/q%203.png", None)
        assert (e["type"], e["mime_type"], e["size_bytes"], e["sha256"]) == ("image", "image/png", 72, sha256(data))
        assert (e["source"], e["origin"]) == ("file", None)
        assert e["modified_at"] == rfc3339(path.stat().st_mtime)

    async def test_temp_names_and_dotfiles_are_ignored(self, run_sidecar, workspace, http):
        """Temp suffixes and any dot component are never published nor listed as rejected."""
        ws = workspace()
        sc = await run_sidecar()
        for name in (
            "a.tmp",
            "b.part",
            "c.partial",
            "d.crdownload",
            ".e.swp",
            "f.swp",
            "g~",
            ".env",
            ".cache/blob.bin",
            "sub/.git/config",
        ):
            ws.write(name, b"ignored")
        ws.write("real.txt", b"real")
        doc = await wait_manifest(http, sc, lambda d: "real.txt" in names(d))
        later = await get_manifest(http, sc, f"?since={doc['version']}&wait=0.4")
        assert names(later) == ["real.txt"]
        assert later["rejected"] == []

    async def test_temp_file_renamed_into_place_is_published(self, run_sidecar, workspace, http):
        """The usual write-then-rename publishes the final name with the full content, never the temp name."""
        ws = workspace()
        sc = await run_sidecar()
        data = os.urandom(100_000)
        ws.write("img.png.part", data)
        os.rename(ws.artifacts / "img.png.part", ws.artifacts / "img.png")
        doc = await wait_manifest(http, sc, lambda d: "img.png" in names(d))
        assert names(doc) == ["img.png"]
        assert entry(doc, "img.png")["sha256"] == sha256(data)

    async def test_symlink_is_rejected_with_reason_symlink(self, run_sidecar, workspace, http):
        """A symlink is listed in `rejected` with reason `symlink` and never published; removing it clears that."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("target.txt", b"target")
        (ws.root / "outside.txt").write_bytes(b"outside")
        (ws.artifacts / "link.txt").symlink_to("target.txt")
        (ws.artifacts / "escape.txt").symlink_to(ws.root / "outside.txt")
        links = {str(ws.artifacts / "link.txt"), str(ws.artifacts / "escape.txt")}
        doc = await wait_manifest(
            http, sc, lambda d: "target.txt" in names(d) and {r["origin"] for r in d["rejected"]} == links
        )
        assert names(doc) == ["target.txt"]
        assert {r["reason"] for r in doc["rejected"]} == {"symlink"}
        (ws.artifacts / "link.txt").unlink()
        (ws.artifacts / "escape.txt").unlink()
        doc = await wait_manifest(http, sc, lambda d: d["rejected"] == [])
        assert names(doc) == ["target.txt"]

    async def test_symlinked_directory_is_not_followed(self, run_sidecar, workspace, http):
        """Files reached through a symlinked directory are never published, and writes there cost no CPU."""
        ws = workspace()
        elsewhere = ws.root / "elsewhere"
        elsewhere.mkdir()
        (ws.artifacts / "linkdir").symlink_to(elsewhere)
        sc = await run_sidecar()
        await wait_manifest(http, sc, lambda d: [r["reason"] for r in d["rejected"]] == ["symlink"])
        (elsewhere / "secret.txt").write_bytes(b"outside the artifacts dir")
        ws.write("inside.txt", b"inside")
        await wait_manifest(http, sc, lambda d: "inside.txt" in names(d))
        before = cpu_seconds(sc.pid)
        await asyncio.sleep(0.5)
        busy = cpu_seconds(sc.pid) - before
        doc = await get_manifest(http, sc)
        assert names(doc) == ["inside.txt"]
        assert busy < 0.15, f"the daemon used {busy:.2f} s of CPU in 0.5 s while idle"

    async def test_fifo_is_never_published_nor_blocks(self, run_sidecar, workspace, http):
        """A named pipe in the artifacts dir is skipped; files next to it are still published."""
        ws = workspace()
        os.mkfifo(ws.artifacts / "pipe.txt")
        sc = await run_sidecar()
        ws.write("after.txt", b"after")
        doc = await wait_manifest(http, sc, lambda d: "after.txt" in names(d))
        assert names(doc) == ["after.txt"]


class TestChanges:
    async def test_change_republishes_with_one_new_version(self, run_sidecar, workspace, http):
        """Rewriting a published file gives exactly one new version, a new sha256 and the same created_at."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("a.txt", b"first")
        before = await wait_manifest(http, sc, lambda d: "a.txt" in names(d))
        await asyncio.sleep(0.02)
        path = ws.write("a.txt", b"second, longer")
        after = await wait_manifest(http, sc, lambda d: entry(d, "a.txt")["sha256"] == sha256(b"second, longer"))
        assert after["version"] == before["version"] + 1
        old, new = entry(before, "a.txt"), entry(after, "a.txt")
        assert new["created_at"] == old["created_at"]
        assert new["modified_at"] == rfc3339(path.stat().st_mtime)
        assert new["size_bytes"] == 14

    async def test_deletion_removes_the_entry(self, run_sidecar, workspace, http):
        """Deleting a published file removes it in exactly one new version."""
        ws = workspace()
        sc = await run_sidecar()
        ws.write("keep.txt", b"keep")
        ws.write("gone.txt", b"gone")
        before = await wait_manifest(http, sc, lambda d: names(d) == ["gone.txt", "keep.txt"])
        (ws.artifacts / "gone.txt").unlink()
        after = await wait_manifest(http, sc, lambda d: "gone.txt" not in names(d))
        assert names(after) == ["keep.txt"]
        assert after["version"] == before["version"] + 1
        assert sc.events("artifact.removed", name="gone.txt")

    async def test_directory_moved_in_is_published_whole(self, run_sidecar, workspace, http):
        """A directory tree renamed into the artifacts dir publishes every file in it; removing it removes them."""
        ws = workspace()
        sc = await run_sidecar()
        staging = ws.root / "staging"
        (staging / "deep" / "deeper").mkdir(parents=True)
        (staging / "a.txt").write_bytes(b"a")
        (staging / "deep" / "b.csv").write_bytes(b"x,y\n")
        (staging / "deep" / "deeper" / "c.json").write_bytes(b"{}")
        (staging / "deep" / ".hidden").write_bytes(b"h")
        os.rename(staging, ws.artifacts / "moved")
        want = ["moved/a.txt", "moved/deep/b.csv", "moved/deep/deeper/c.json"]
        doc = await wait_manifest(http, sc, lambda d: names(d) == want)
        assert entry(doc, "moved/deep/b.csv")["type"] == "dataset"
        shutil.rmtree(ws.artifacts / "moved")
        await wait_manifest(http, sc, lambda d: names(d) == [])

    async def test_non_utf8_name_does_not_stop_publishing(self, run_sidecar, workspace, http):
        """A file whose name is not UTF-8 is skipped, and files written before and after it are still published."""
        ws = workspace()
        sc = await run_sidecar()
        fd = os.open(os.fsencode(ws.artifacts) + b"/bad-\xff\xfe.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"bad")
        os.close(fd)
        ws.write("good1.txt", b"1")
        await wait_manifest(http, sc, lambda d: "good1.txt" in names(d))
        await asyncio.sleep(0.3)
        ws.write("good2.txt", b"2")
        doc = await wait_manifest(http, sc, lambda d: "good2.txt" in names(d), timeout=5)
        assert names(doc) == ["good1.txt", "good2.txt"]
        assert sc.proc.poll() is None
