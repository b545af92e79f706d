"""sidecar.scanfind: where data URLs and bare base64 images may start in a window of text (SPEC 4.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import scanfind
from sidecar.scanfind import BARE_START, PAYLOAD, PAYLOAD_ESC, Window, header

# base64 of each image magic the bare search knows, as an encoder writes it (JSON may escape `/` as `\/`)
MAGIC = [b"iVBORw0KGgo", b"/9j/4AAQ", b"\\/9j\\/4AAQ", b"_9j_4AAQ", b"R0lGODlh", b"UklGRiQ", b"PHN2ZyB4"]


class TestHeader:
    @pytest.mark.parametrize(
        ("raw", "want"),
        [
            (b"image/png;base64", (True, "image/png", "image/png")),
            (b"IMAGE/PNG;BASE64", (True, "image/png", "image/png")),
            (b"image/svg+xml;charset=utf-8", (False, "image/svg+xml;charset=utf-8", "image/svg+xml")),
            (b"image\\/png;base64", (True, "image/png", "image/png")),  # in a JSON string
            (b";base64", (True, "text/plain;charset=US-ASCII", "text/plain")),
            (b";charset=utf-8", (False, "text/plain;charset=utf-8", "text/plain")),
            (b"", (False, "text/plain;charset=US-ASCII", "text/plain")),
            (b"not a type;base64", (True, "text/plain;charset=US-ASCII", "text/plain")),
            (b"image/png;base64x", (False, "image/png", "image/png")),  # a parameter without `=` is dropped
        ],
    )
    def test_as_the_fetch_data_url_processor_reads_it(self, raw: bytes, want: tuple[bool, str, str]) -> None:
        """`;base64` (any case) at the very end; an empty or invalid type is text/plain; JSON's `\\/` is `/`."""
        assert header(raw) == want


class TestClasses:
    def test_payload_characters(self) -> None:
        """Both base64 alphabets are payload (0); `=`, quotes, spaces and `\\` are not, except `\\` when escaped."""
        assert all(PAYLOAD[c] == 0 for c in b"AZaz09+/-_")
        assert all(PAYLOAD[c] == 1 for c in b"= \"'\\\n,:\x00\xff")
        assert PAYLOAD_ESC[ord("\\")] == 0
        assert [a == b for a, b in zip(PAYLOAD, PAYLOAD_ESC, strict=True)].count(False) == 1

    def test_a_window_translates_once(self) -> None:
        """The classes of a window are computed on first need and then kept."""
        w = Window(b'ab="c\\/d"')
        assert w.payload_class() == bytes([0, 0, 1, 1, 0, 1, 0, 0, 1])
        assert w.escape_class() == bytes([0, 0, 1, 1, 0, 0, 0, 0, 1])
        assert w.payload_class() is w.payload_class()


def payload_run(buf: bytes, quote: int) -> int:
    """How many payload characters (a `\\/` escape counted in) follow the quote."""
    n = quote + 1
    while n < len(buf) and PAYLOAD_ESC[buf[n]] == 0:
        n += 1
    return n - quote - 1


filler = st.sampled_from([b"x", b" ", b'"', b":", b",", b"\n", b'{"k": ', b"AAAA", b"=", b"\\"])
candidate = st.builds(
    lambda magic, n, close: b'"' + magic + b"A" * n + close,
    st.sampled_from(MAGIC),
    st.integers(0, 400),
    st.sampled_from([b'"', b"=", b'=="', b" "]),
)


class TestFindBare:
    @given(
        st.lists(st.one_of(filler, candidate), max_size=40),
        st.integers(0, 60),
        st.sampled_from([0, 64, 160, 300]),
        st.sampled_from([b"", b", " * 1000]),
    )
    @settings(max_examples=300, deadline=None)
    def test_no_long_candidate_is_skipped(self, parts: list[bytes], pos: int, run: int, rest: bytes) -> None:
        """Whatever shortcut the sampling takes, the answer is a candidate, and no candidate with at least
        `run` payload characters starts before it (`rest`: text after them, so that the sampled search is
        the one that runs and not the exact one kept for a window's last bytes)."""
        buf = b"".join(parts) + rest
        pos = min(pos, len(buf))
        limit = len(buf)
        starts = [c for c in range(pos, limit) if BARE_START.match(buf, c)]
        long = [c for c in starts if payload_run(buf, c) >= run]
        got = Window(buf).find_bare(pos, limit, run)
        if got < 0:
            assert long == []
        else:
            assert got in starts
            assert not long or got <= long[0]

    @given(st.lists(st.one_of(filler, candidate), max_size=30), st.lists(st.integers(0, 80), max_size=6))
    @settings(max_examples=200, deadline=None)
    def test_remembered_searches_agree_with_fresh_ones(self, parts: list[bytes], steps: list[int]) -> None:
        """`bare` over one window, with the position moving on and the limit changing, answers what a fresh
        `find_bare` would."""
        buf = b"".join(parts)
        w, pos = Window(buf), 0
        for i, step in enumerate(steps):
            pos = min(pos + step, len(buf))
            upto = len(buf) if i % 2 == 0 else min(len(buf), pos + 40)
            assert w.bare(pos, upto, 0) == Window(buf).find_bare(pos, upto, 0)

    @pytest.mark.parametrize("run", [160, 300, 1000])
    def test_a_string_just_long_enough_is_found_at_any_alignment(self, run: int) -> None:
        """A candidate of `run` to `run + 40` payload characters is found wherever it falls against the
        16-byte samples, with text after it (the sampled search, not the exact one at a window's end)."""
        for length in range(run, run + 40, 3):
            for off in range(16):
                buf = b"x" * off + b'"iVBORw0KGgo' + b"A" * (length - 11) + b'"' + b", " * 1200
                assert Window(buf).find_bare(0, len(buf), run) == off, (length, off)

    def test_only_image_magic_starts_a_candidate(self) -> None:
        """A JSON string of base64 that does not start like an image is no candidate."""
        buf = b'{"a": "QUJDREVGR0hJSktMTU5PUA==", "b": "iVBORw0KGgoAAAANSUhEUg=="}'
        assert Window(buf).find_bare(0, len(buf), 0) == buf.index(b'"iVBOR')


class TestFindData:
    """The two ways `data:` (and a Jupyter `"image/png":` key) is searched for past the colon budget
    (Hyperscan where installed, sre everywhere) find the same first occurrence, wherever the window starts
    and ends."""

    @given(
        st.lists(
            st.sampled_from(
                [
                    b"d",
                    b"D",
                    b"a",
                    b"A",
                    b"t",
                    b"T",
                    b":",
                    b"x",
                    b"data:",
                    b"DaTa:",
                    b'"image/png"',
                    b'"image/jpeg"',
                    b'"',
                ]
            ),
            max_size=80,
        ),
        st.integers(0, 40),
        st.integers(0, 400),
    )
    @settings(max_examples=400, deadline=None)
    def test_hyperscan_and_sre_agree(self, parts: list[bytes], pos: int, limit: int) -> None:
        buf = b"".join(parts)
        pos, limit = min(pos, len(buf)), min(max(pos, limit), len(buf))
        keys = (b'"image/png":', b'"image/jpeg":', b'"image/gif":')
        want = next((i for i in range(pos, limit) if buf[i : i + 5].lower() == b"data:" or buf.startswith(keys, i)), -1)
        got = []
        for use_hyperscan in (True, False):
            w = Window(buf)
            w.colons = 0  # straight to the search that is not memchr
            if not use_hyperscan:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(scanfind, "hyperscan", lambda: None)
                    got.append(w.find_data(pos, limit))
            else:
                got.append(w.find_data(pos, limit))
        got.append(Window(buf).find_data(pos, limit))  # memchr for the colons first
        assert got == [want, want, want]

    def test_hyperscan_is_used_where_installed(self) -> None:
        pytest.importorskip("hyperscan")
        assert scanfind.hyperscan() is not None
