"""Prometheus metrics of one server: calls, latency, queue depth, busy workers."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from faceanonymixer.service.settings import split_address

#: protection takes seconds on a CPU and well under one on a GPU; key calls take milliseconds
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)


class ServiceMetrics:
    """A registry of its own, so several servers (tests) can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "faceanonymixer_calls",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "faceanonymixer_call_seconds",
            "Wall time of gRPC calls by method.",
            ["method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "faceanonymixer_queue_depth",
            "Protection jobs waiting for an engine worker.",
            registry=self.registry,
        )
        self.busy_workers = Gauge(
            "faceanonymixer_busy_workers", "Engine workers running a protection.", registry=self.registry
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.calls.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def watch(self, queue_depth: Callable[[], float], busy_workers: Callable[[], float]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.busy_workers.set_function(busy_workers)

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` over HTTP on ``listen``; return the bound port."""
        host, port = split_address(listen)
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
