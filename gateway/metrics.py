"""Prometheus metrics: one registry per application, multiprocess-aware for `server.workers > 1`.

The domain never imports this module: `Accounts` reports events through a plain callback
(`Metrics.event`), and the HTTP layer records requests and latencies. With several workers the
supervisor sets PROMETHEUS_MULTIPROC_DIR before starting them, so each worker writes its values
to shared files and any worker's /metrics answer aggregates all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# event kind -> the counter it feeds (label: outcome or reason)
EVENT_KINDS = ("login", "refresh", "revocation")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gateway_requests", "Requests answered", ["route", "status"], registry=r)
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself per proxied request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "gateway_upstream_seconds",
            "Time until the upstream's response head arrived",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures by kind", ["route", "kind"], registry=r
        )
        self.logins = Counter("gateway_logins", "Login attempts by outcome", ["outcome"], registry=r)
        self.refreshes = Counter("gateway_refreshes", "Refreshes by outcome", ["outcome"], registry=r)
        self.revocations = Counter(
            "gateway_revocations", "Sessions revoked by reason", ["reason"], registry=r
        )
        self.throttled = Counter("gateway_throttled", "Login attempts refused by throttling", registry=r)
        self.websockets = Gauge(
            "gateway_websockets_open", "Open proxied websockets", registry=r, multiprocess_mode="livesum"
        )
        self._counters = {"login": self.logins, "refresh": self.refreshes, "revocation": self.revocations}

    def event(self, kind: str, label: str, amount: int = 1) -> None:
        """The domain's callback: login/refresh outcomes and revocations."""
        counter = self._counters.get(kind)
        if counter is not None:
            counter.labels(label).inc(amount)
        if kind == "login" and label == "throttled":
            self.throttled.inc()

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
