"""Prometheus metrics of SPEC section 10, in a registry of their own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ("CONTENT_TYPE", "Metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.published = Counter("sidecar_artifacts_published", "Artifacts published (files and data URLs)", registry=r)
        self.removed = Counter("sidecar_artifacts_removed", "Artifacts removed", registry=r)
        self.materialized = Counter("sidecar_datauri_materialized", "Data URLs written as artifacts", registry=r)
        self.rejected = Counter("sidecar_datauri_rejected", "Data URLs refused", ["reason"], registry=r)
        self.push_attempts = Counter("sidecar_push_attempts", "Pushes to the UI by outcome", ["outcome"], registry=r)
        self.response_bytes = Counter("sidecar_http_response_bytes", "HTTP response body bytes sent", registry=r)
        self.downloads = Counter(
            "sidecar_downloads",
            "Artifact bodies and ranges sent to their end (a 200, a 206 range, an archive member)",
            registry=r,
        )
        # Object-storage offload (SPEC 11): ok = uploaded, found = already in the store (HeadObject after a
        # restart), retry = the store was down or busy, failed = it refused, changed = the file moved on.
        self.uploads = Counter("sidecar_uploads", "Uploads to object storage by outcome", ["outcome"], registry=r)
        self.upload_bytes = Counter("sidecar_upload_bytes", "Bytes of confirmed uploads to object storage", registry=r)
        self.publish_latency = Histogram(
            "sidecar_publish_latency_seconds",
            "From a file's last change to its publication",
            buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )

    def totals(self) -> dict[str, int]:
        """This run's counts for the shutdown summary (`lifecycle.exit`)."""

        def total(name: str, **labels: str) -> int:
            return int(self.registry.get_sample_value(f"sidecar_{name}_total", labels) or 0)

        return {
            "published": total("artifacts_published"),
            "pushed": total("push_attempts", outcome="ok"),
            "uploaded": total("uploads", outcome="ok"),
            "downloads": total("downloads"),
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)
