"""A real S3-protocol server for the tests: moto in server mode on 127.0.0.1, with a log of what it was sent.

`S3Server` is moto's `ThreadedMotoServer` with its WSGI app wrapped: every request is recorded (method, key,
query, the x-amz-checksum-sha256 it claimed and the SHA-256 of the body it actually carried), and UploadPart
can be slowed down to catch a multipart upload in the middle. moto keeps its state per process, so a server
stopped and started again on the same port still has its buckets: that is "the store was down".
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

__all__ = ("ACCESS_KEY", "BUCKET", "SECRET_KEY", "Call", "S3Server", "s3_env")

BUCKET = "sidecar-artifacts"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # noqa: S105 - AWS documentation's example key

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise


def s3_env(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
    """Credentials the standard AWS way (environment); no instance-metadata probing on this machine."""
    return {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


@dataclasses.dataclass(frozen=True)
class Call:
    method: str
    key: str  # the object key (no bucket), "" for bucket or API calls
    query: dict[str, list[str]]
    checksum: str | None  # the x-amz-checksum-sha256 header sent
    body_sha256: str  # base64, like the header, of what the body really was
    size: int
    status: int

    @property
    def op(self) -> str:
        q = self.query
        if self.method == "PUT":
            return "UploadPart" if "partNumber" in q else "PutObject"
        if self.method == "POST":
            return "CreateMultipartUpload" if "uploads" in q else "CompleteMultipartUpload"
        if self.method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return {"HEAD": "HeadObject", "GET": "GetObject"}.get(self.method, self.method)


class S3Server(ThreadedMotoServer):
    def __init__(self, port: int, bucket: str = BUCKET, part_delay: float = 0.0) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.port = port
        self.bucket = bucket
        self.url = f"http://127.0.0.1:{port}"
        self.part_delay = part_delay  # seconds each UploadPart takes (a slow link)
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, self._recorded(app), True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    def _recorded(self, app: Any) -> Any:
        prefix = f"/{self.bucket}/"

        def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size) if size else b""
            environ["wsgi.input"] = io.BytesIO(body)
            query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            if "partNumber" in query and self.part_delay:
                time.sleep(self.part_delay)
            status: list[int] = []

            def start(line: str, headers: Any, *exc: Any) -> Any:
                status.append(int(line.split()[0]))
                return start_response(line, headers, *exc)

            result = app(environ, start)
            path = unquote(environ.get("PATH_INFO", ""))
            call = Call(
                method=environ["REQUEST_METHOD"],
                key=path[len(prefix) :] if path.startswith(prefix) else "",
                query=query,
                checksum=environ.get("HTTP_X_AMZ_CHECKSUM_SHA256"),
                body_sha256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
                size=len(body),
                status=status[0] if status else 0,
            )
            with self._lock:
                self.calls.append(call)
            return result

        return wsgi

    def stop(self) -> None:
        super().stop()
        if self._server is not None:
            self._server.server_close()  # ThreadedMotoServer leaves the listening socket open

    # ---- control and inspection ----------------------------------------------------------

    @contextlib.contextmanager
    def client(self, service: str = "s3") -> Iterator[Any]:
        import boto3

        client = boto3.client(
            service, endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )  # fmt: skip
        try:
            yield client
        finally:
            client.close()

    def create_bucket(self) -> None:
        with self.client() as s3:
            s3.create_bucket(Bucket=self.bucket)

    def api(self, path: str, body: bytes = b"") -> None:
        """moto's own control API (reset state, switch authentication on and off)."""
        headers = {"Content-Type": "text/plain"}  # not a form: moto reads the raw body
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310
            pass

    def require_auth(self) -> tuple[str, str]:
        """From now on requests must be signed with a real key: make one (3 unauthenticated calls), return it."""
        self.api("/moto-api/reset-auth", b"3")
        with self.client("iam") as iam:
            iam.create_user(UserName="sidecar")
            iam.put_user_policy(
                UserName="sidecar", PolicyName="all",
                PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
            )  # fmt: skip
            key = iam.create_access_key(UserName="sidecar")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def ops(self, key: str | None = None) -> list[str]:
        with self._lock:
            return [c.op for c in self.calls if key is None or c.key == key]

    def object(self, key: str) -> dict[str, Any] | None:
        with self.client() as s3:
            try:
                return s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")  # type: ignore[no-any-return]
            except s3.exceptions.ClientError:
                return None
