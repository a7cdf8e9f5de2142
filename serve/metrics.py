"""Prometheus metrics of one app (its own registry: no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "convtune_requests",
            "Requests by route, status and tenant",
            ["route", "status", "tenant"],
            registry=r,
        )
        self.latency = Histogram(
            "convtune_request_seconds",
            "Request latency by route",
            ["route"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter(
            "convtune_tokens",
            "Tokens processed by kind (prompt, completion, embedding)",
            ["kind", "tenant"],
            registry=r,
        )
        self.rejections = Counter(
            "convtune_rejections", "Requests refused by reason", ["reason", "tenant"], registry=r
        )
        self.queue = Gauge("convtune_queue_depth", "Requests and jobs waiting for the engine", registry=r)
        self.inflight = Gauge("convtune_inflight", "Requests admitted and not finished", registry=r)
        self.batch_rows = Histogram(
            "convtune_batch_rows",
            "Sequences per decoding batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
