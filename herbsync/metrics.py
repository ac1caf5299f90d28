"""Prometheus metrics, served on a configured address (off by default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    """The daemon's counters and gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.images = Gauge(
            "herbsync_images", "Images by state: wanted, present, pending, failed.", ["state"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "herbsync_queue_depth", "Wanted images not yet present and due for a fetch.", registry=self.registry
        )
        self.fetched_objects = Counter(
            "herbsync_fetched_objects", "Images fetched and verified.", registry=self.registry
        )
        self.fetched_bytes = Counter("herbsync_fetched_bytes", "Bytes fetched and verified.", registry=self.registry)
        self.uploaded_objects = Counter("herbsync_uploaded_objects", "Images uploaded.", registry=self.registry)
        self.uploaded_bytes = Counter("herbsync_uploaded_bytes", "Bytes uploaded.", registry=self.registry)
        self.transfer_errors = Counter(
            "herbsync_transfer_errors", "Failed transfers by kind of error.", ["kind"], registry=self.registry
        )
        self.scrubbed_files = Counter("herbsync_scrubbed_files", "Stored files re-hashed by the scrub.", registry=self.registry)
        self.scrubbed_bytes = Counter("herbsync_scrubbed_bytes", "Bytes re-hashed by the scrub.", registry=self.registry)
        self.corrupt_files = Counter(
            "herbsync_corrupt_files", "Stored files that failed a check and were quarantined.", registry=self.registry
        )

    def set_totals(self, totals: dict[str, int]) -> None:
        """Update the image gauges from ``State.totals()``."""
        for state in ("wanted", "present", "pending", "failed"):
            self.images.labels(state=state).set(totals[state])
        self.queue_depth.set(totals["pending"])

    def serve(self, address: str) -> None:
        """Serve ``/metrics`` over HTTP on ``host:port`` in a background thread."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
