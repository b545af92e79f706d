"""sidecar.metrics: the SPEC 10 series under their exposition names, in a registry of each daemon's own.

The daemon's /metrics route counting real work is tested in test_server (`test_health_and_metrics`)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.metrics import CONTENT_TYPE, Metrics

SPEC_SERIES = {
    "sidecar_artifacts_published_total",
    "sidecar_datauri_materialized_total",
    "sidecar_datauri_rejected_total",
    "sidecar_push_attempts_total",
    "sidecar_http_response_bytes_total",
    "sidecar_publish_latency_seconds_bucket",
    "sidecar_publish_latency_seconds_count",
    "sidecar_publish_latency_seconds_sum",
}


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed back: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


class TestExposition:
    def test_the_spec_series_are_exposed_under_their_names(self) -> None:
        """Counters end in `_total`; the latency histogram has buckets, count and sum (SPEC 10)."""
        m = Metrics()
        m.rejected.labels(reason="corrupt").inc()
        m.push_attempts.labels(outcome="ok").inc()
        assert {name for name, _ in samples(m)} >= SPEC_SERIES

    def test_counters_count_with_their_labels(self) -> None:
        """Each increment shows up under its own label value."""
        m = Metrics()
        m.published.inc(3)
        m.response_bytes.inc(1234)
        m.rejected.labels(reason="too_large").inc()
        m.rejected.labels(reason="truncated").inc(2)
        m.uploads.labels(outcome="found").inc()
        got = samples(m)
        assert got["sidecar_artifacts_published_total", ()] == 3
        assert got["sidecar_http_response_bytes_total", ()] == 1234
        assert got["sidecar_datauri_rejected_total", (("reason", "too_large"),)] == 1
        assert got["sidecar_datauri_rejected_total", (("reason", "truncated"),)] == 2
        assert got["sidecar_uploads_total", (("outcome", "found"),)] == 1

    def test_publish_latency_buckets_are_cumulative(self) -> None:
        """A 0.12 s publication falls in the 0.15 s bucket and every larger one, not in 0.1 s."""
        m = Metrics()
        m.publish_latency.observe(0.12)
        got = samples(m)
        bucket = "sidecar_publish_latency_seconds_bucket"
        assert got[bucket, (("le", "0.1"),)] == 0
        assert got[bucket, (("le", "0.15"),)] == 1
        assert got[bucket, (("le", "+Inf"),)] == 1
        assert got["sidecar_publish_latency_seconds_count", ()] == 1

    def test_the_content_type_is_the_text_format(self) -> None:
        """What /metrics is served as: Prometheus text format 0.0.4, UTF-8."""
        assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
        assert Metrics().render().startswith(b"# HELP ")


class TestRegistry:
    def test_two_instances_share_nothing(self) -> None:
        """No process-global registry: two daemons' metrics in one process (the tests) do not add up,
        and creating a second set does not raise for duplicate names."""
        a, b = Metrics(), Metrics()
        a.published.inc(5)
        assert samples(a)["sidecar_artifacts_published_total", ()] == 5
        assert samples(b)["sidecar_artifacts_published_total", ()] == 0

    def test_nothing_but_the_sidecars_series(self) -> None:
        """No process or platform collectors: every series is the sidecar's own."""
        assert all(name.startswith("sidecar_") for name, _ in samples(Metrics()))
