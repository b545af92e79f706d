"""GET /v1/archive.zip (SPEC 12), through a real daemon on 127.0.0.1: every published artifact byte-exact,
read back by Python's zipfile and Debian's `unzip -t`; stored for compressed types; the prefix filter;
auth; ZIP64 past 4 GiB; and a file that changes while the archive is written is never sent mixed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.helpers import Sidecar, wait_for, wait_manifest
from support.stalled import stalled_clients

from sidecar.security import sign

UNZIP = shutil.which("unzip")
TOKEN = "archive-token"  # noqa: S105 - a test token
FILES = {
    "charts/q3.png": b"\x89PNG\r\n\x1a\n" + os.urandom(200_000),
    "charts/sub/deep.txt": b"deep text\n" * 5000,
    "reports/caf\u00e9 r\u00e9sum\u00e9.md": "# r\u00e9sum\u00e9\n".encode() * 300,
    "data.json": json.dumps({"rows": list(range(3000))}).encode(),
    "clip.webm": b"\x1a\x45\xdf\xa3" + os.urandom(100_000),
    "one.bin": b"\x00",
}


def unzip_t(path: Path) -> str:
    """`unzip -t`: every member's CRC checked; fails the test on any error."""
    if UNZIP is None:
        pytest.skip("unzip is missing: apt-get install -y unzip (make sysdeps)")
    done = subprocess.run([UNZIP, "-t", str(path)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No errors detected" in done.stdout, done.stdout
    return done.stdout


async def download(http: aiohttp.ClientSession, sc: Sidecar, query: str = "", **kw: Any) -> tuple[int, Any, bytes]:
    async with http.get(sc.url("/v1/archive.zip" + query), **kw) as resp:
        return resp.status, resp.headers, await resp.read()


@pytest.fixture
async def published(run_sidecar, workspace, http):
    """A daemon with FILES (or the given files) published."""

    async def start(*flags: str, files: dict[str, bytes] = FILES) -> Sidecar:
        ws = workspace()
        for name, data in files.items():
            ws.write(name, data)
        sc = await run_sidecar(*flags)
        await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == len(files), timeout=60)
        return sc

    return start


class TestArchive:
    async def test_every_artifact_byte_exact_under_its_manifest_name(self, published, http, tmp_path):
        """zipfile reads every member byte-exact under its manifest name, and `unzip -t` passes."""
        sc = await published()
        status, headers, body = await download(http, sc, headers=sc.auth_headers())
        assert status == 200, body[:300]
        assert headers["Content-Type"] == "application/zip"
        assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''artifacts.zip"
        assert "Content-Length" not in headers  # streamed while it is built
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.testzip() is None
            assert zf.namelist() == sorted(FILES)
            for name, data in FILES.items():
                assert zf.read(name) == data, name
            kinds = {i.filename: i.compress_type for i in zf.infolist()}
        assert kinds["charts/q3.png"] == kinds["clip.webm"] == zipfile.ZIP_STORED
        assert kinds["charts/sub/deep.txt"] == kinds["data.json"] == zipfile.ZIP_DEFLATED
        assert len(body) < sum(map(len, FILES.values()))  # the text really was deflated
        (tmp_path / "a.zip").write_bytes(body)
        out = unzip_t(tmp_path / "a.zip")
        assert out.count(" OK") == len(FILES)
        # the download counted as one: every member's sha256 went out whole
        assert sc.events("archive.sent", members=len(FILES))

    async def test_prefix_takes_the_names_under_it(self, published, http, tmp_path):
        """`?prefix=charts` (or `charts/`) holds only `charts/…`, named as in the manifest; `char` holds nothing."""
        sc = await published()
        for query in ("?prefix=charts", "?prefix=charts/", "?prefix=/charts/"):
            status, headers, body = await download(http, sc, query)
            assert status == 200
            assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''charts.zip"
            with zipfile.ZipFile(io.BytesIO(body)) as zf:
                assert zf.namelist() == ["charts/q3.png", "charts/sub/deep.txt"], query
                assert zf.read("charts/sub/deep.txt") == FILES["charts/sub/deep.txt"]
        status, _, body = await download(http, sc, "?prefix=charts/sub")
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.namelist() == ["charts/sub/deep.txt"]
        for query in ("?prefix=char", "?prefix=nothing"):
            status, _, body = await download(http, sc, query)
            assert status == 200
            with zipfile.ZipFile(io.BytesIO(body)) as zf:
                assert zf.namelist() == [], query

    async def test_the_same_auth_as_the_v1_routes(self, published, http):
        """With --auth-token: 401 without a bearer token (a signed URL does not open it), 200 with one."""
        sc = await published("--auth-token", TOKEN)
        status, headers, body = await download(http, sc)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(body)["error"] == "unauthorized"
        exp = 4_000_000_000
        signed = f"?expires={exp}&signature={sign(TOKEN, '/v1/archive.zip', exp)}"
        assert (await download(http, sc, signed))[0] == 401
        status, _, body = await download(http, sc, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.namelist() == sorted(FILES)


# --------------------------------------------------------------------------------------
# consistency: a reader that stalls while the files change under the archive
# --------------------------------------------------------------------------------------


class StalledReader:
    """A raw HTTP/1.1 client with a tiny receive buffer: when it stops reading, the daemon soon stops
    writing (a few MB ahead at most), so the test knows which part of the archive is still to be made."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.raw = b""

    async def start(self, target: str, first: int = 65536) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=16384)
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await self.writer.drain()
        while len(self.raw) < first:
            chunk = await asyncio.wait_for(self.reader.read(16384), 10)
            assert chunk, self.raw[:300]
            self.raw += chunk

    async def finish(self) -> tuple[int, bytes, bool]:
        """Read to the end: (status, body de-chunked, whether the chunked body was complete)."""
        self.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.reader._limit = 1 << 20  # the rest at full speed (asyncio has no public setter)
        try:
            while chunk := await asyncio.wait_for(self.reader.read(1 << 20), 30):
                self.raw += chunk
        except ConnectionResetError:
            pass  # an aborted archive may end with a reset
        finally:
            self.writer.close()
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower(), head
        body, complete = dechunk(rest)
        return int(head.split(b" ", 2)[1]), body, complete


def dechunk(data: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out), True
        if eol + 2 + size + 2 > len(data):
            out += data[eol + 2 : eol + 2 + size]
            return bytes(out), False
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


BIG = 24 << 20  # far more than the socket buffers hold: the end of it is still unread when the reader stalls


class TestConsistency:
    async def test_a_file_changed_while_it_is_sent_breaks_the_archive_visibly(self, published, http, tmp_path):
        """The tail of a member rewritten in place mid-stream: the connection is cut before that member's
        CRC, so no reader accepts a mixed file (zipfile and `unzip -t` both refuse what arrived)."""
        big = os.urandom(BIG)
        sc = await published(files={"a.webm": big, "b.txt": b"after\n" * 100})
        client = StalledReader(sc.port)
        await client.start("/v1/archive.zip")
        await asyncio.sleep(0.5)  # the daemon fills the buffers and waits
        with open(sc.workspace.artifacts / "a.webm", "r+b") as f:
            f.seek(BIG - (1 << 20))
            f.write(b"\xff" * 4096)
        status, body, complete = await client.finish()
        assert status == 200
        assert not complete  # no last chunk: the client sees an error, not a short archive
        assert b"PK\x01\x02" not in body  # no central directory: nothing of it can be taken as whole
        assert len(body) > BIG - (1 << 20)  # it broke where the change was seen, not at the start
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(body))
        (tmp_path / "broken.zip").write_bytes(body)
        if UNZIP is not None:
            assert subprocess.run([UNZIP, "-t", str(tmp_path / "broken.zip")], capture_output=True).returncode != 0
        await wait_for(lambda: sc.events("archive.failed"), timeout=5)

    async def test_a_file_replaced_before_its_turn_is_sent_as_its_new_publication(self, published, http):
        """A later member replaced while an earlier one streams: the archive holds its new version whole."""
        big = os.urandom(BIG)
        sc = await published(files={"a.webm": big, "b.txt": b"old\n" * 1000})
        client = StalledReader(sc.port)
        await client.start("/v1/archive.zip")
        new = b"new version\n" * 3000
        tmp = sc.workspace.artifacts / "b.txt.tmp"
        tmp.write_bytes(new)
        os.replace(tmp, sc.workspace.artifacts / "b.txt")
        status, body, complete = await client.finish()
        assert (status, complete) == (200, True)
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            assert zf.testzip() is None
            assert zf.read("a.webm") == big
            assert zf.read("b.txt") == new

    async def test_a_file_that_keeps_changing_ends_the_archive_with_an_error_before_any_byte(
        self, published, http, write_soon
    ):
        """A member rewritten and never published again within 5 s: a 409 JSON error, not a stale or mixed file."""
        sc = await published(files={"a.txt": b"first\n" * 100})
        path = sc.workspace.artifacts / "a.txt"
        write_soon(path, *[b"more\n"] * 400, every=0.02)  # 8 s of appends: it never settles
        await wait_for(lambda: path.stat().st_size > 600, timeout=5)
        status, headers, body = await download(http, sc)
        assert status == 409, body[:300]
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["error"] == "conflict" and "a.txt" in json.loads(body)["detail"]
        assert sc.events("archive.failed")

    async def test_a_client_that_goes_away_leaves_no_file_open(self, published, http):
        """Closing the connection mid-archive: the daemon closes every member it opened, and answers again."""
        sc = await published(files={"a.webm": os.urandom(BIG), "b.txt": b"b\n" * 1000})
        a_path = str(sc.workspace.artifacts / "a.webm")

        def a_open() -> bool:
            fd_dir = f"/proc/{sc.pid}/fd"
            links = []
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):  # closed while listed
                    links.append(os.readlink(f"{fd_dir}/{fd}"))
            return a_path in links

        assert not a_open()
        client = StalledReader(sc.port)
        await client.start("/v1/archive.zip")
        assert a_open()  # held while it streams
        client.writer.transport.abort()
        await wait_for(lambda: not a_open(), timeout=10)
        status, _, body = await download(http, sc)
        assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None


# --------------------------------------------------------------------------------------
# ZIP64: more than 65,535 members; a sparse file over 4 GiB
# --------------------------------------------------------------------------------------


@pytest.mark.slow  # 66,000 files published, archived and removed: ~30 s
async def test_more_than_65535_members_is_zip64(run_sidecar, workspace, http):
    """66,000 members: the count does not fit the classic end record, so the archive carries ZIP64's."""
    ws = workspace()
    for d in range(66):
        (ws.artifacts / f"d{d:02d}").mkdir(parents=True)
        for i in range(1000):
            (ws.artifacts / f"d{d:02d}" / f"{i:04d}.txt").write_bytes(b"%d" % (d * 1000 + i))
    sc = await run_sidecar()
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 66_000, timeout=120)
    async with http.get(sc.url("/v1/archive.zip"), timeout=aiohttp.ClientTimeout(total=120)) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert b"PK\x06\x06" in body[-200:]  # the ZIP64 end of central directory record
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        infos = zf.infolist()
        assert len(infos) == 66_000
        assert zf.read("d65/0999.txt") == b"65999" and zf.read("d00/0000.txt") == b"0"
    (ws.root / "many.zip").write_bytes(body)  # under the workspace: removed with it
    assert unzip_t(ws.root / "many.zip").count(" OK") == 66_000


@pytest.mark.slow  # 4.2 GB hashed twice (publication, archive), CRC'd twice, sent over loopback: 40-60 s
async def test_over_4_gib_is_zip64_and_verifies(run_sidecar, workspace, http):
    """A 4200 MiB sparse file, then a small one whose offset is past 4 GiB: the archive is ZIP64, zipfile
    reads the big member through its CRC, the small one reads back byte-exact (also by `unzip -t`). The
    download is written sparse (runs of zeros are seeked over), so 4 GiB never reach the disk."""
    ws = workspace()
    big = ws.artifacts / "big.mp4"  # video: stored, so the archive itself passes 4 GiB
    ws.artifacts.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:
        f.truncate(4200 << 20)
    tail = os.urandom(5000)
    ws.write("z.png", tail)
    sc = await run_sidecar()
    await wait_manifest(http, sc, lambda d: len(d["artifacts"]) == 2, timeout=120)

    out = ws.root / "big.zip"  # under the workspace: removed with it
    async with http.get(sc.url("/v1/archive.zip"), timeout=aiohttp.ClientTimeout(total=300)) as resp:
        assert resp.status == 200
        with open(out, "wb") as f:
            async for chunk in resp.content.iter_chunked(1 << 20):
                if not chunk.strip(b"\0"):
                    f.seek(len(chunk), os.SEEK_CUR)
                else:
                    f.write(chunk)
            f.truncate()
    assert out.stat().st_size > 4200 << 20
    assert out.stat().st_blocks * 512 < 64 << 20  # written sparse: the zeros never reached the disk

    with zipfile.ZipFile(out) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert infos["big.mp4"].file_size == 4200 << 20
        assert infos["big.mp4"].compress_type == zipfile.ZIP_STORED
        assert infos["z.png"].header_offset > 0xFFFFFFFF  # needs ZIP64 in the central directory
        assert zf.read("z.png") == tail
        with zf.open("big.mp4") as member:  # zipfile checks the CRC at the end (BadZipFile if wrong)
            n = 0
            while chunk := member.read(8 << 20):
                n += len(chunk)
        assert n == 4200 << 20
    with open(out, "rb") as f:
        f.seek(-200, os.SEEK_END)
        assert b"PK\x06\x06" in f.read()  # the ZIP64 end of central directory record
    if UNZIP is not None:  # Debian's unzip reads the ZIP64 records too (its CRC of 4 GiB would take ~30 s more)
        listed = subprocess.run([UNZIP, "-l", str(out)], capture_output=True, text=True, timeout=60, check=True)
        assert f"{4200 << 20}" in listed.stdout and "z.png" in listed.stdout, listed.stdout
        unzip_t_member = subprocess.run([UNZIP, "-t", str(out), "z.png"], capture_output=True, text=True, timeout=60)
        assert unzip_t_member.returncode == 0 and "No errors detected" in unzip_t_member.stdout, unzip_t_member


class TestStalled:
    async def test_a_client_that_reads_nothing_is_cut_after_the_write_timeout(self, published, http):
        """An archive of 24 MB of incompressible data to a client that sends its request and never reads:
        cut after --write-timeout like any big body (SPEC 9), while /healthz answers."""
        files = {f"big{i}.png": b"\x89PNG\r\n\x1a\n" + os.urandom(6 << 20) for i in range(4)}
        sc = await published("--write-timeout", "1", files=files)
        request = b"GET /v1/archive.zip HTTP/1.1\r\nHost: x\r\n\r\n"
        with stalled_clients(sc.port, request, 1) as (sock,):
            await wait_for(lambda: sc.events("http.stalled_reader_cut"), timeout=20)
            async with http.get(sc.url("/healthz")) as resp:
                assert resp.status == 200
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # what the kernel held, then the end of the stream
                while sock.recv(1 << 20):
                    pass
            sock.setblocking(True)
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
