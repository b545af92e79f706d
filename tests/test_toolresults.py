"""sidecar.toolresults: files matching the glob under the tool-results roots have their data URLs
materialized once they settle, and the artifacts are published (SPEC 4); through a real daemon."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys

import pytest
from support.helpers import entry, get_manifest, names, wait_manifest
from support.images import b64, datauri_name, make_png
from support.machine import mount_tmpfs, umount

from sidecar.toolresults import compile_glob


def tool_result(png: bytes) -> str:
    """A tool result as Claude Code stores it: JSON holding an image as a data URL."""
    return json.dumps({"content": f"data:image/png;base64,{b64(png)}"})


class TestGlob:
    """compile_glob: the --tool-results-glob over POSIX paths relative to a root."""

    @pytest.mark.parametrize(
        ("path", "matches"),
        [
            ("p/s/tool-results/t.json", True),
            ("tool-results/t.json", True),  # `**/` spans no directory too
            ("a/b/c/d/tool-results/t.txt", True),
            ("p/tool-results/sub/t.json", False),  # `*` is one segment
            ("p/s/tool-results", False),
            ("p/s/other/t.json", False),
        ],
    )
    def test_default_glob(self, path: str, matches: bool) -> None:
        """The default `**/tool-results/*`: any file directly in a `tool-results` folder at any depth."""
        assert bool(compile_glob("**/tool-results/*").match(path)) is matches

    def test_question_mark_and_classes_stay_in_one_segment(self) -> None:
        """`?` is one character but never `/`; `[!x]` negates a class; a lone `[` is a literal."""
        assert compile_glob("a?c").match("abc") and not compile_glob("a?c").match("a/c")
        assert compile_glob("[!x]y").match("zy") and not compile_glob("[!x]y").match("xy")
        assert compile_glob("a[b").match("a[b") and not compile_glob("a[b").match("ab")

    def test_other_characters_are_literal(self) -> None:
        """Regular-expression characters in the glob match only themselves, and the whole path must match."""
        assert compile_glob("a.b(c)").match("a.b(c)") and not compile_glob("a.b(c)").match("axb(c)")
        assert not compile_glob("*.json").match("t.json.bak")

    def test_double_star_alone_spans_directories(self) -> None:
        """`**` not followed by `/` matches across segments."""
        assert compile_glob("x/**").match("x/a/b/c")


class TestRoots:
    async def test_a_settled_tool_result_is_materialized_and_published(self, run_sidecar, workspace, http):
        """A data URL in a matching file becomes a published artifact with its provenance, and the file
        points at it afterwards."""
        ws = workspace()
        sc = await run_sidecar()
        png = make_png(1)
        src = ws.tool_results / "p" / "s" / "tool-results" / "t.json"
        src.parent.mkdir(parents=True)
        src.write_text(tool_result(png))
        name = datauri_name(png, "png")
        doc = await wait_manifest(http, sc, lambda d: names(d) == [name])
        e = entry(doc, name)
        assert e is not None
        assert (e["source"], e["origin"], e["mime_type"]) == ("data-url", str(src), "image/png")
        async with http.get(sc.url(f"/artifacts/{name}")) as resp:
            assert await resp.read() == png
        assert f"/artifacts/{name}".encode() in src.read_bytes()

    async def test_a_file_outside_the_glob_is_left_alone(self, run_sidecar, workspace, http):
        """Only files matching the glob are read: the same payload elsewhere under the root stays as it is."""
        ws = workspace()
        sc = await run_sidecar()
        png, other = make_png(2), make_png(3)
        outside = ws.tool_results / "p" / "s" / "notes" / "t.json"
        outside.parent.mkdir(parents=True)
        outside.write_text(tool_result(other))
        inside = ws.tool_results / "p" / "s" / "tool-results" / "t.json"
        inside.parent.mkdir(parents=True)
        inside.write_text(tool_result(png))
        await wait_manifest(http, sc, lambda d: names(d) == [datauri_name(png, "png")])
        assert outside.read_text() == tool_result(other)
        assert names(await get_manifest(http, sc)) == [datauri_name(png, "png")]

    async def test_a_root_made_after_start_is_watched(self, run_sidecar, workspace, http):
        """A tool-results root that does not exist yet is looked for; once made, its files are processed."""
        ws = workspace()
        shutil.rmtree(ws.tool_results)
        sc = await run_sidecar()
        png = make_png(4)
        src = ws.tool_results / "p" / "tool-results" / "t.json"
        src.parent.mkdir(parents=True)
        src.write_text(tool_result(png))
        await wait_manifest(http, sc, lambda d: names(d) == [datauri_name(png, "png")], timeout=10)

    async def test_a_folder_moved_in_is_processed_without_waiting_for_the_rescan(self, run_sidecar, workspace, http):
        """A whole project folder moved into a root (one event) is walked at once: the periodic rescan is
        30 s here, so the watch saw it."""
        ws = workspace()
        sc = await run_sidecar()
        png = make_png(5)
        staged = ws.root / "staged"
        (staged / "s" / "tool-results").mkdir(parents=True)
        (staged / "s" / "tool-results" / "t.json").write_text(tool_result(png))
        staged.rename(ws.tool_results / "p")
        await wait_manifest(http, sc, lambda d: names(d) == [datauri_name(png, "png")])

    async def test_forced_polling_still_materializes(self, run_sidecar, workspace, http):
        """WATCHFILES_FORCE_POLLING=1 (no inotify): the roots are polled, the file is processed without
        waiting for the periodic rescan, and the watch never restarts."""
        ws = workspace()
        sc = await run_sidecar(env={"WATCHFILES_FORCE_POLLING": "1"})
        png = make_png(6)
        await get_manifest(http, sc)
        src = ws.tool_results / "p" / "s" / "tool-results" / "t.json"
        src.parent.mkdir(parents=True)
        src.write_text(tool_result(png))
        await wait_manifest(http, sc, lambda d: names(d) == [datauri_name(png, "png")])
        assert not sc.events("watch.restarted")


class TestFinalization:
    async def test_a_tool_result_written_just_before_exit_is_in_the_final_manifest(self, run_sidecar, workspace):
        """The finalization flush processes what the child wrote last: its image is in the final manifest."""
        ws = workspace()
        png = make_png(7)
        src = ws.tool_results / "p" / "s" / "tool-results" / "t.json"
        src.parent.mkdir(parents=True)
        code = f"import pathlib; pathlib.Path({str(src)!r}).write_text({tool_result(png)!r})"
        sc = await run_sidecar(
            "--settle-ms", "300", "--grace-period", "0.5", mode="run", command=[sys.executable, "-c", code],
            wait_ready=False,
        )  # fmt: skip
        assert await sc.wait_exit(10) == 0
        final = json.loads((ws.state / "manifest.json").read_bytes())
        assert final["state"] == "final"
        assert [e["name"] for e in final["entries"]] == [datauri_name(png, "png")]
        assert final["entries"][0]["origin"] == str(src)


class TestRetries:
    async def test_payloads_refused_for_a_full_disk_arrive_once_there_is_room(self, run_sidecar, workspace, http):
        """Artifacts dir on a full 1 MiB tmpfs: the payload is refused as write_failed and the text kept;
        once space is freed, the periodic rescan processes the file again and the image is published."""
        ws = workspace()
        if mount_tmpfs(ws.artifacts, "1m") is None:
            pytest.skip("no tmpfs here (needs root and mount)")
        try:
            filler = ws.artifacts / ".filler"
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            sc = await run_sidecar("--rescan-interval", "1")
            png = make_png(7, extra=200_000)
            src = ws.tool_results / "p" / "s" / "tool-results" / "t.txt"
            src.parent.mkdir(parents=True)
            text = json.dumps({"content": f"data:image/png;base64,{b64(png)}"}).encode()
            src.write_bytes(text)
            doc = await wait_manifest(http, sc, lambda d: any(r["reason"] == "write_failed" for r in d["rejected"]))
            assert doc["artifacts"] == []
            assert src.read_bytes() == text
            filler.unlink()
            await wait_manifest(
                http, sc, lambda d: names(d) == [datauri_name(png, "png")] and not d["rejected"], timeout=10
            )
            async with http.get(sc.url(f"/artifacts/{datauri_name(png, 'png')}")) as resp:
                assert await resp.read() == png
            assert f"/artifacts/{datauri_name(png, 'png')}".encode() in src.read_bytes()
            assert sc.events("datauri.retry_later")
        finally:
            umount(ws.artifacts)
