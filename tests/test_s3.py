"""sidecar.s3: one bucket over the real S3 protocol (moto on 127.0.0.1), failures sorted by what to do next."""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.helpers import free_port
from support.s3server import S3Server, s3_env

from sidecar.manifest import Entry, Identity
from sidecar.s3 import PART_SIZE, Bucket, Changed, Down, Refused, Rejected, open_bucket

MiB = 1 << 20


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    for k, v in s3_env().items():
        monkeypatch.setenv(k, v)
    server = S3Server(free_port(), bucket=f"b-{uuid.uuid4().hex[:12]}")  # moto keeps buckets per process
    server.start()
    server.create_bucket()
    try:
        yield server
    finally:
        server.stop()


def entry(path: Path, name: str) -> Entry:
    st = path.stat()
    return Entry(
        name=name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size_bytes=st.st_size,
        mime_type="image/png",
        mtime=st.st_mtime,
        created_at=st.st_mtime,
        identity=Identity.of(st),
    )


async def upload(bucket: Bucket, path: Path, e: Entry, key: str) -> tuple[int, int]:
    started: list[str] = []
    ended: list[str] = []

    async def on_start(upload_id: str, _key: str) -> None:
        started.append(upload_id)

    fd = os.open(path, os.O_RDONLY)
    try:
        result = await bucket.upload(fd, e, key, on_start, ended.append)
    finally:
        os.close(fd)
    assert started == ended  # a multipart upload is always completed or aborted
    return result


def run(srv: S3Server, work: object) -> object:
    async def go() -> object:
        async with open_bucket(srv.bucket, srv.url, "us-east-1", 600) as bucket:
            return await work(bucket)  # type: ignore[operator]

    return asyncio.run(go())


@pytest.mark.parametrize("size", [1000, PART_SIZE + 3 * MiB])
def test_upload_has_and_presigned_url_give_the_exact_bytes(srv: S3Server, tmp_path: Path, size: int) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(os.urandom(size))
    e = entry(path, "dir/a b.png")

    async def work(bucket: Bucket) -> tuple[tuple[int, int], bool, bool, str]:
        done = await upload(bucket, path, e, "k/a.png")
        return (
            done,
            await bucket.has("k/a.png", e.sha256),
            await bucket.has("k/a.png", "0" * 64),
            await bucket.presign("k/a.png"),
        )

    (parts, sent), has, has_other, url = run(srv, work)  # type: ignore[misc]
    assert (parts, sent) == ((1 if size <= PART_SIZE else 2), size)
    assert has and not has_other
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback moto
        assert resp.read() == path.read_bytes()
        assert resp.headers["Content-Disposition"] == "inline; filename*=UTF-8''a%20b.png"
    assert srv.object("k/a.png") is not None


@pytest.mark.parametrize("size", [1000, PART_SIZE + 1])
def test_other_bytes_than_published_never_land(srv: S3Server, tmp_path: Path, size: int) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"a" * size)
    e = entry(path, "a.png")
    path.write_bytes(b"b" * size)  # changed after it was hashed

    async def work(bucket: Bucket) -> None:
        await upload(bucket, path, e, "k/a.png")

    with pytest.raises(Changed):
        run(srv, work)
    assert srv.object("k/a.png") is None


def test_a_key_too_long_is_rejected_without_a_request(srv: S3Server, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    e = entry(path, "a.png")

    async def work(bucket: Bucket) -> None:
        await upload(bucket, path, e, "k" * 1025)

    with pytest.raises(Rejected):
        run(srv, work)
    assert [c.key for c in srv.calls if c.key] == []  # only the bucket was made


def test_a_missing_bucket_is_refused_and_a_dead_store_is_down(srv: S3Server, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x" * 10)
    e = entry(path, "a.png")

    async def missing() -> None:
        async with open_bucket("no-such-bucket", srv.url, "us-east-1", 600) as bucket:
            await upload(bucket, path, e, "k")

    with pytest.raises(Refused):
        asyncio.run(missing())

    async def dead() -> None:
        async with open_bucket(srv.bucket, f"http://127.0.0.1:{free_port()}", "us-east-1", 600) as bucket:
            await upload(bucket, path, e, "k")

    with pytest.raises(Down):
        asyncio.run(dead())
