"""Prometheus metrics, kept in a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge("huddle_connections", "Socket.IO connections open now", registry=self.registry)
        self.events = Counter(
            "huddle_events_total",
            "Client events received, by event and outcome",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.messages_stored = Counter("huddle_messages_stored_total", "Chat messages stored", registry=self.registry)
        self.commit_seconds = Histogram(
            "huddle_store_commit_seconds",
            "Time to commit one group of writes, by writer",
            ["writer"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.commit_batch_size = Histogram(
            "huddle_store_commit_batch_size",
            "Writes in one group commit, by writer",
            ["writer"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.runs_started = Counter(
            "huddle_runs_started_total", "Agent runs created through this process", registry=self.registry
        )
        self.runs_finished = Counter(
            "huddle_runs_finished_total",
            "Agent runs this process ended, by final status",
            ["status"],
            registry=self.registry,
        )
        self.sse_streams = Gauge("huddle_sse_streams", "Server-sent event streams open now", registry=self.registry)

    def observe_commit(self, writer: str, size: int, seconds: float) -> None:
        self.commit_seconds.labels(writer).observe(seconds)
        self.commit_batch_size.labels(writer).observe(size)

    def run_started(self) -> None:
        self.runs_started.inc()

    def run_finished(self, status: str) -> None:
        self.runs_finished.labels(status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
