"""The S3 protocol side of offload (SPEC 11): one bucket, one object at a time, failures sorted by what to do next.

aiobotocore and botocore are imported only here, and only when offload is on (in a thread: they take ~0.5 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from sidecar.manifest import Entry

__all__ = ("PART_SIZE", "Bucket", "Changed", "Down", "Failure", "Refused", "Rejected", "open_bucket")

PART_SIZE = 8 << 20  # multipart above this; also the most of one file held in memory at once
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days
MAX_KEY_BYTES = 1024
ABORT_S = 1.0  # a best-effort AbortMultipartUpload gets this long

# Error codes that say the store refuses us as a whole: every other upload would be refused the same way.
REFUSED = frozenset(
    {
        "AccessDenied", "AccountProblem", "AllAccessDisabled", "AuthorizationHeaderMalformed", "ExpiredToken",
        "InvalidAccessKeyId", "InvalidBucketName", "InvalidToken", "NoSuchBucket", "PermanentRedirect",
        "RequestTimeTooSkewed", "SignatureDoesNotMatch", "TokenRefreshRequired",
    }
)  # fmt: skip
BUSY = frozenset({"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown", "Throttling"})
CHANGED = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})  # the bytes were not the sha256 sent


class Failure(Exception):
    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Down(Failure):
    """The store did not answer, or is busy: back off for all uploads, then try again."""


class Refused(Failure):
    """The store refuses us as a whole (credentials, bucket): every upload would fail the same way."""


class Rejected(Failure):
    """This one object was refused."""


class Changed(Failure):
    """The file is no longer the published content (the watcher republishes it)."""


def classify(e: BaseException) -> Failure:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        reason = f"{code} (HTTP {status})" if code and code != str(status) else f"HTTP {status}"
        if code in CHANGED:
            return Changed(reason, status)
        if code in BUSY or status >= 500 or status in (408, 429):
            return Down(reason, status)
        if code in REFUSED or status in (401, 403):
            return Refused(reason, status)
        return Rejected(reason, status)
    if isinstance(e, NoCredentialsError | PartialCredentialsError):
        return Refused(type(e).__name__)
    return Down(type(e).__name__)  # connection refused or reset, timeouts


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _read(fd: int, offset: int, size: int, whole: Any) -> bytes:
    """Exactly `size` bytes at `offset`, feeding `whole` (run in a thread)."""
    chunks, left = [], size
    while left:
        chunk = os.pread(fd, min(left, 1 << 20), offset + size - left)
        if not chunk:
            raise Changed("the file is shorter than published")
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    whole.update(data)
    return data


def _read_part(fd: int, offset: int, size: int, whole: Any) -> tuple[bytes, bytes]:
    """`_read`, and the part's own SHA-256 (each part of a multipart upload carries its checksum)."""
    data = _read(fd, offset, size, whole)
    return data, hashlib.sha256(data).digest()


def _warm(session: Any) -> None:
    """Parse botocore's S3 model in a thread, so that creating the client does not stall the event loop."""
    loader = session.get_component("data_loader")
    for name in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("s3", name)
    for name in ("endpoints", "partitions", "sdk-default-configuration"):
        with contextlib.suppress(Exception):
            loader.load_data(name)


@contextlib.asynccontextmanager
async def open_bucket(name: str, endpoint: str | None, region: str, ttl: int) -> AsyncIterator[Bucket]:
    session_module = await asyncio.to_thread(importlib.import_module, "aiobotocore.session")
    from botocore.config import Config

    session = session_module.get_session()
    await asyncio.to_thread(_warm, session)
    config = Config(
        signature_version="s3v4",
        retries={"mode": "standard", "total_max_attempts": 1},  # ours instead: logged, counted, shared
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=16,
        request_checksum_calculation="when_required",  # we send SHA-256 ourselves, computed while reading
        response_checksum_validation="when_required",
        # Path style for MinIO and the like. No body hashing for the signature: the signed
        # x-amz-checksum-sha256 header already binds the body, and the store verifies it.
        s3={"addressing_style": "path" if endpoint else "auto", "payload_signing_enabled": False},
    )
    async with session.create_client("s3", region_name=region, endpoint_url=endpoint, config=config) as client:
        yield Bucket(client, name, ttl)


class Bucket:
    def __init__(self, client: Any, name: str, ttl: int) -> None:
        self.client = client
        self.name = name
        self.ttl = ttl

    async def call(self, op: str, **kw: Any) -> Any:
        """One S3 request; any failure comes out as a Failure subclass."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await getattr(self.client, op)(Bucket=self.name, **kw)
        except (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError) as e:
            raise classify(e) from None

    async def has(self, key: str, sha256: str) -> bool:
        """HeadObject: the object at key is this content (its metadata says so)."""
        try:
            head = await self.call("head_object", Key=key)
        except (Refused, Rejected) as f:
            if f.status in (403, 404):  # 403: we may lack s3:ListBucket; the upload will tell
                return False
            raise
        return bool(head.get("Metadata", {}).get("sha256") == sha256)

    async def presign(self, key: str) -> str:
        url = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=self.ttl
        )
        return str(url)

    async def upload(
        self, fd: int, e: Entry, key: str, started: Callable[[str, str], Awaitable[None]], ended: Callable[[str], None]
    ) -> tuple[int, int]:
        """Upload e's content from fd under key: (parts, bytes). The store checks a SHA-256 per request; the
        whole file's is checked here while it streams, so other bytes than the published ones never land."""
        if len(key.encode()) > MAX_KEY_BYTES:
            raise Rejected(f"key longer than {MAX_KEY_BYTES} bytes")
        basename = e.name.rsplit("/", 1)[-1]
        headers = {
            "ContentType": e.mime_type,
            "ContentDisposition": f"inline; filename*=UTF-8''{quote(basename, safe='')}",
            "Metadata": {"sha256": e.sha256},
            "ChecksumAlgorithm": "SHA256",
        }
        whole = hashlib.sha256()
        if e.size_bytes <= PART_SIZE:
            data = await asyncio.to_thread(_read, fd, 0, e.size_bytes, whole)
            if whole.hexdigest() != e.sha256:
                raise Changed("content differs from the published sha256")
            await self.call("put_object", Key=key, Body=data, ChecksumSHA256=_b64(whole.digest()), **headers)
            return 1, e.size_bytes
        upload_id = str((await self.call("create_multipart_upload", Key=key, **headers))["UploadId"])
        await started(upload_id, key)  # persisted: a restart after a SIGKILL aborts it
        try:
            parts = []
            for number, offset in enumerate(range(0, e.size_bytes, PART_SIZE), 1):
                size = min(PART_SIZE, e.size_bytes - offset)
                data, digest = await asyncio.to_thread(_read_part, fd, offset, size, whole)
                part = {"PartNumber": number, "ChecksumSHA256": _b64(digest)}
                done = await self.call("upload_part", Key=key, UploadId=upload_id, Body=data, **part)
                parts.append({**part, "ETag": done["ETag"]})
                del data
            if whole.hexdigest() != e.sha256:  # before the object exists: S3 only checked each part
                raise Changed("content differs from the published sha256")
            await self.call("complete_multipart_upload", Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(asyncio.CancelledError):  # stopping: the next start aborts it instead
                if await self.abort(upload_id, key):
                    ended(upload_id)
            raise
        ended(upload_id)
        return len(parts), e.size_bytes

    async def abort(self, upload_id: str, key: str) -> bool:
        """Best effort, within ABORT_S: True when the upload is gone."""
        try:
            await asyncio.wait_for(self.call("abort_multipart_upload", Key=key, UploadId=upload_id), ABORT_S)
        except Failure as f:
            return "NoSuchUpload" in f.reason
        except TimeoutError:
            return False
        return True
