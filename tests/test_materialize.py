"""sidecar.materialize: data URLs in text files become artifact files, and the text is rewritten (SPEC 4.3)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support.helpers import source_writer
from support.images import b64, datauri_name, make_jpeg, make_png

import sidecar.materialize as materialize
import sidecar.sink as sink
from sidecar.config import Settings
from sidecar.materialize import NotARegularFile, Outcome, materialize_file, run_materialize


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**kw: object) -> Settings:
        values: dict[str, object] = {
            "artifacts_dir": tmp_path / "artifacts",
            "state_dir": tmp_path / "state",
            "tool_results_dirs": [tmp_path / "results"],
        }
        values.update(kw)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def source(tmp_path: Path) -> Callable[[str | bytes], Path]:
    return source_writer(tmp_path / "results")


def artifacts(settings: Settings) -> list[str]:
    return sorted(os.listdir(settings.artifacts_dir)) if settings.artifacts_dir.exists() else []


class TestMaterialized:
    def test_data_url_becomes_an_artifact_and_the_text_is_rewritten(
        self, settings: Settings, source: Callable[..., Path]
    ) -> None:
        """The decoded bytes are written under their hash name and the data URL is replaced by its path."""
        png = make_png(1)
        src = source(f'{{"text": "see data:image/png;base64,{b64(png)}", "n": 1}}\n')
        (o,) = materialize_file(src, settings)
        name = datauri_name(png, "png")
        assert o == Outcome(
            src,
            14,
            "materialized",
            name=name,
            sha256=hashlib.sha256(png).hexdigest(),
            mime_type="image/png",
            size_bytes=len(png),
        )
        assert (settings.artifacts_dir / name).read_bytes() == png
        assert json.loads(src.read_text()) == {"text": f"see /artifacts/{name}", "n": 1}
        assert artifacts(settings) == [name]

    def test_record_has_every_field(self, settings: Settings, source: Callable[..., Path]) -> None:
        """to_record() carries the SPEC 1 fields, null where they do not apply."""
        src = source('"data:image/png;base64,"')
        (o,) = materialize_file(src, settings)
        rec = o.to_record()
        assert {k: rec[k] for k in ("source", "offset", "status", "name", "sha256", "reason")} == {
            "source": str(src),
            "offset": 1,
            "status": "rejected",
            "name": None,
            "sha256": None,
            "reason": "empty",
        }
        json.dumps(rec)

    def test_detected_type_wins_and_declared_is_kept(self, settings: Settings, source: Callable[..., Path]) -> None:
        """A JPEG declared as PNG is written as .jpg, image/jpeg, with declared_mime_type image/png."""
        jpg = make_jpeg(2, comment=700)
        (o,) = materialize_file(source(f"![x](data:image/png;base64,{b64(jpg)})"), settings)
        assert (o.name, o.mime_type, o.declared_mime_type) == (datauri_name(jpg, "jpg"), "image/jpeg", "image/png")

    def test_aliases_of_the_same_type_do_not_differ(self, settings: Settings, source: Callable[..., Path]) -> None:
        """image/jpg is image/jpeg: no declared_mime_type."""
        (o,) = materialize_file(source(f"data:image/jpg;base64,{b64(make_jpeg(comment=700))} "), settings)
        assert (o.mime_type, o.declared_mime_type) == ("image/jpeg", None)

    def test_declared_non_image_is_written_as_bin(
        self, make_settings: Callable[..., Settings], source: Callable[..., Path]
    ) -> None:
        """A PDF (with --data-url-types application/pdf) is written as .bin with the declared type."""
        s = make_settings(data_url_types=["application/pdf", "text/*"])
        pdf = b"%PDF-1.4\n" + b"x" * 1000
        text = b"hi " * 300
        outs = materialize_file(source(f'"data:application/pdf;base64,{b64(pdf)}" data:text/plain,{"hi%20" * 300}'), s)
        assert [(o.name, o.mime_type) for o in outs] == [
            (datauri_name(pdf, "bin"), "application/pdf"),
            (datauri_name(text, "bin"), "text/plain"),
        ]

    def test_bare_base64_image_content_is_replaced(self, settings: Settings, source: Callable[..., Path]) -> None:
        """An MCP image block's base64 string is materialized and its content replaced."""
        png = make_png(3)
        doc = {"content": [{"type": "image", "data": b64(png), "mimeType": "image/png"}]}
        text = json.dumps(doc)
        src = source(text)
        (o,) = materialize_file(src, settings)
        assert (o.offset, o.name, o.declared_mime_type) == (text.index(b64(png)), datauri_name(png, "png"), None)
        doc["content"][0]["data"] = f"/artifacts/{o.name}"
        assert json.loads(src.read_text()) == doc

    def test_identical_payloads_give_one_file(self, settings: Settings, source: Callable[..., Path]) -> None:
        """The same payload twice (and in another file) is one artifact, every occurrence rewritten."""
        url = f"data:image/png;base64,{b64(make_png(4))}"
        a = source(f'"{url}" and "{url}"', "a.txt")
        b = source(f"({url})", "b.txt")
        names = [o.name for o in materialize_file(a, settings) + materialize_file(b, settings)]
        assert len(names) == 3 and len(set(names)) == 1 and artifacts(settings) == names[:1]
        assert a.read_text() == f'"/artifacts/{names[0]}" and "/artifacts/{names[0]}"'
        assert b.read_text() == f"(/artifacts/{names[0]})"

    def test_large_payload_spills_to_a_temp_file(self, settings: Settings, source: Callable[..., Path]) -> None:
        """A payload larger than the in-memory threshold is materialized exactly, via a hidden temp file."""
        png = make_png(5, extra=6 << 20)
        src = source(f'"data:image/png;base64,{b64(png)}"')
        (o,) = materialize_file(src, settings)
        assert o.status == "materialized" and (settings.artifacts_dir / datauri_name(png, "png")).read_bytes() == png
        assert artifacts(settings) == [datauri_name(png, "png")]

    def test_artifacts_dir_is_created(
        self, make_settings: Callable[..., Settings], source: Callable[..., Path], tmp_path: Path
    ) -> None:
        """A missing artifacts dir is created."""
        s = make_settings(artifacts_dir=tmp_path / "a" / "b")
        (o,) = materialize_file(source(f"data:image/png;base64,{b64(make_png(6))} "), s)
        assert (s.artifacts_dir / str(o.name)).is_file()


class TestRejected:
    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            ("", "empty"),
            (b64(make_png(7)) + "A", "invalid_base64"),
            (b64(make_png(7)[:-20]), "truncated"),
            (b64(b"\x13\x37" + bytes(900)), "truncated"),
        ],
        ids=["empty", "invalid", "cut", "no-signature"],
    )
    def test_rejected_payload_leaves_text_and_writes_nothing(
        self, settings: Settings, source: Callable[..., Path], payload: str, reason: str
    ) -> None:
        """A rejected data URL has a reason, writes nothing and leaves the text byte for byte."""
        text = f'{{"image": "data:image/png;base64,{payload}"}}\n'
        src = source(text)
        (o,) = materialize_file(src, settings)
        assert (o.status, o.reason, o.name, o.sha256, o.offset) == ("rejected", reason, None, None, 11)
        assert isinstance(o.detail, str) and o.detail
        assert src.read_text() == text and artifacts(settings) == []

    def test_too_large(self, make_settings: Callable[..., Settings], source: Callable[..., Path]) -> None:
        """A payload above --max-data-url-bytes is rejected too_large."""
        s = make_settings(max_data_url_bytes=1000)
        (o,) = materialize_file(source(f"data:image/png;base64,{b64(make_png(8, extra=2000))} "), s)
        assert (o.status, o.reason) == ("rejected", "too_large")
        assert artifacts(s) == []

    def test_unclosed_svg_is_truncated(self, settings: Settings, source: Callable[..., Path]) -> None:
        """An SVG whose closing tag never comes is rejected truncated."""
        svg = "%3Csvg%20xmlns%3D%22x%22%3E" + "%3Crect%2F%3E" * 100
        (o,) = materialize_file(source(f'"data:image/svg+xml,{svg}"'), settings)
        assert (o.status, o.reason) == ("rejected", "truncated")

    def test_small_payloads_are_skipped_silently(
        self, make_settings: Callable[..., Settings], source: Callable[..., Path]
    ) -> None:
        """Below --min-data-url-bytes there is no outcome at all, and nothing changes."""
        text = "data:image/png;base64,iVBORw0KGgo= " + json.dumps({"data": b64(make_png(9))})
        src = source(text)
        assert materialize_file(src, make_settings(min_data_url_bytes=4096)) == []
        assert src.read_text() == text

    def test_bare_strings_that_are_not_whole_images_are_left_alone(
        self, settings: Settings, source: Callable[..., Path]
    ) -> None:
        """Truncated or non-image base64 strings give no outcome (neither materialized nor rejected)."""
        text = json.dumps(
            {"a": b64(make_png(10)[:-30]), "b": b64(random.Random(1).randbytes(900)), "c": b64(make_png(10)) + "A"}
        )
        src = source(text)
        assert materialize_file(src, settings) == []
        assert src.read_text() == text

    def test_artifact_that_cannot_be_written(self, settings: Settings, source: Callable[..., Path]) -> None:
        """A payload whose file cannot be written is rejected write_failed; the other payloads go on."""
        bad, good = make_png(20), make_png(21)
        (settings.artifacts_dir / datauri_name(bad, "png")).mkdir(parents=True)
        text = f"data:image/png;base64,{b64(bad)} data:image/png;base64,{b64(good)} "
        src = source(text)
        first, second = materialize_file(src, settings)
        assert (first.status, first.reason, second.status) == ("rejected", "write_failed", "materialized")
        assert src.read_text() == text.replace(f"data:image/png;base64,{b64(good)}", f"/artifacts/{second.name}")
        assert not [n for n in artifacts(settings) if n.startswith(".")]


class TestRewrite:
    def test_second_run_finds_nothing_and_changes_nothing(
        self, settings: Settings, source: Callable[..., Path]
    ) -> None:
        """A rewritten file is left exactly as it is: same bytes, inode and mtime."""
        src = source(f"![c](data:image/png;base64,{b64(make_png(11))})\n")
        materialize_file(src, settings)
        before, st = src.read_bytes(), os.stat(src)
        assert materialize_file(src, settings) == []
        after = os.stat(src)
        assert src.read_bytes() == before
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)

    def test_mode_is_kept_and_no_temp_file_is_left(self, settings: Settings, source: Callable[..., Path]) -> None:
        """The rewrite keeps the file's mode and leaves no temp file next to it or among the artifacts."""
        src = source(f'"data:image/png;base64,{b64(make_png(12))}"')
        os.chmod(src, 0o640)
        materialize_file(src, settings)
        assert stat.S_IMODE(os.stat(src).st_mode) == 0o640
        assert os.listdir(src.parent) == [src.name]
        assert not [n for n in artifacts(settings) if n.startswith(".")]

    def test_bytes_that_are_not_utf8_are_kept(self, settings: Settings, source: Callable[..., Path]) -> None:
        """Every byte outside the data URL stays as it was."""
        png = make_png(13)
        before, after = b"\xff\xfe\x00 junk \xc3(", b" \xe9t\xe9 \x00\xff\n"
        src = source(before + f"data:image/png;base64,{b64(png)}".encode() + after)
        (o,) = materialize_file(src, settings)
        assert src.read_bytes() == before + f"/artifacts/{o.name}".encode() + after

    def test_no_rewrite_option(self, make_settings: Callable[..., Settings], source: Callable[..., Path]) -> None:
        """With rewrite_tool_results off the artifact is written and the text left alone."""
        text = f"data:image/png;base64,{b64(make_png(14))} "
        src = source(text)
        (o,) = materialize_file(src, make_settings(rewrite_tool_results=False))
        assert o.status == "materialized" and src.read_text() == text

    def test_artifact_is_durable_before_the_rewrite(
        self, settings: Settings, source: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The source is only rewritten once every artifact file is complete under its name."""
        png = make_png(15)
        seen: list[bytes] = []
        real = materialize._rewrite

        def spy(*args: object) -> None:
            seen.append((settings.artifacts_dir / datauri_name(png, "png")).read_bytes())
            real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(materialize, "_rewrite", spy)
        materialize_file(source(f"data:image/png;base64,{b64(png)} "), settings)
        assert seen == [png]

    def test_file_changed_during_the_scan_is_not_rewritten(
        self, settings: Settings, source: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the file changes between the scan and the rewrite, the newer content wins."""
        src = source(f"data:image/png;base64,{b64(make_png(16))} ")
        real = materialize._scan

        def scan_then_append(*args: object) -> object:
            result = real(*args)  # type: ignore[arg-type]
            with open(src, "a") as f:
                f.write("appended\n")
            return result

        monkeypatch.setattr(materialize, "_scan", scan_then_append)
        (o,) = materialize_file(src, settings)
        assert o.status == "materialized"
        assert src.read_text().endswith(" appended\n") and "data:image/png" in src.read_text()

    def test_symlinked_source_keeps_its_link(
        self, settings: Settings, source: Callable[..., Path], tmp_path: Path
    ) -> None:
        """A source given through a symlink: the link stays, its target is rewritten."""
        target = source(f"data:image/png;base64,{b64(make_png(17))} ", "target.txt")
        link = tmp_path / "link.txt"
        link.symlink_to(target)
        (o,) = materialize_file(link, settings)
        assert link.is_symlink() and target.read_text() == f"/artifacts/{o.name} "


class TestSpecialFiles:
    def test_fifo_is_not_read(self, settings: Settings, tmp_path: Path) -> None:
        """A FIFO is refused at once (opened non-blocking, never read)."""
        fifo = tmp_path / "fifo.txt"
        os.mkfifo(fifo)
        with pytest.raises(NotARegularFile):
            materialize_file(fifo, settings)

    def test_directory_is_refused(self, settings: Settings, tmp_path: Path) -> None:
        """A directory is not a text file."""
        d = tmp_path / "dir.txt"
        d.mkdir()
        with pytest.raises(OSError):
            materialize_file(d, settings)

    def test_an_artifacts_dir_swapped_for_a_symlink_gets_nothing(
        self, settings: Settings, source: Callable[..., Path], tmp_path: Path
    ) -> None:
        """If the agent replaces the artifacts dir with a symlink (to /etc, say), nothing is written through
        it: the file is refused (ELOOP) and its text stays as it was, to be tried again later."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        settings.artifacts_dir.symlink_to(elsewhere)
        text = f'"data:image/png;base64,{b64(make_png(seed=5))}"'
        src = source(text)
        with pytest.raises(OSError):
            materialize_file(src, settings)
        assert list(elsewhere.iterdir()) == []
        assert src.read_text() == text


class TestRunMaterialize:
    def test_one_json_object_per_data_url_in_order(self, settings: Settings, source: Callable[..., Path]) -> None:
        """`sidecar materialize` prints one JSON line per data URL found, in order, and exits 0."""
        png, jpg = make_png(18), make_jpeg(18, comment=700)
        src = source(
            f"data:image/png;base64,{b64(png)} x data:image/png;base64, y ![j](data:image/jpeg;base64,{b64(jpg)})"
        )
        out = io.StringIO()
        assert run_materialize([src], settings, out) == 0
        recs = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(r["status"], r["name"], r["reason"]) for r in recs] == [
            ("materialized", datauri_name(png, "png"), None),
            ("rejected", None, "empty"),
            ("materialized", datauri_name(jpg, "jpg"), None),
        ]
        assert all(r["source"] == str(src) for r in recs)

    def test_unreadable_file_exits_1_and_the_others_are_processed(
        self, settings: Settings, source: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing FILE or a directory is reported on stderr, exit status 1, the other FILEs still done."""
        good = source(f"data:image/png;base64,{b64(make_png(19))} ")
        out = io.StringIO()
        assert run_materialize([tmp_path / "missing.txt", tmp_path, good], settings, out) == 1
        assert len(out.getvalue().splitlines()) == 1
        err = capsys.readouterr().err
        assert "missing.txt" in err and str(tmp_path) in err


class TestBatches:
    def test_more_payloads_than_one_batch_are_all_made_durable(
        self, settings: Settings, source: Callable[..., Path]
    ) -> None:
        """Payloads are synced and renamed in batches; a file with several batches' worth loses none."""
        images = [make_png(seed=1000 + i) for i in range(sink.BATCH_FILES + 20)]
        src = source("\n".join(f'"data:image/png;base64,{b64(png)}"' for png in images))
        outcomes = materialize_file(src, settings)
        assert [o.status for o in outcomes] == ["materialized"] * len(images)
        for png in images:
            assert (settings.artifacts_dir / datauri_name(png, "png")).read_bytes() == png
        assert not [p for p in settings.artifacts_dir.iterdir() if p.name.startswith(".")], "no temp file left"
        assert src.read_text().count("/artifacts/datauri-") == len(images)

    def test_a_failed_rename_becomes_write_failed_and_the_text_stays(
        self, settings: Settings, source: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If making an artifact durable fails, its outcome is `write_failed` and its data URL is not rewritten."""
        png = make_png(seed=77)
        text = f'"data:image/png;base64,{b64(png)}"'
        src = source(text)

        def refuse(tmp: object, target: object, **dir_fds: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(materialize.os, "replace", refuse)
        (o,) = materialize_file(src, settings)
        monkeypatch.undo()
        assert (o.status, o.reason) == ("rejected", "write_failed")
        assert src.read_text() == text
        assert not list(settings.artifacts_dir.iterdir()), "the temp file is removed"
