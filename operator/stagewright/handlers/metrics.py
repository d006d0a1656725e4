"""Prometheus metrics: builds finished, build duration, the queue, API and registry requests,
and whether this replica leads.

One ``Metrics`` object per operator with its own registry (no module globals), served on
STAGEWRIGHT_METRICS_PORT when set. Queue depth and running builds are read at scrape time from
the queue and the pod index, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Request latencies: API calls take milliseconds, registry look-ups up to the timeout.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Builds take seconds (cached) to an hour.
_BUILD_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class _QueueCollector(Collector):
    """Waiting and running builds per namespace, computed when Prometheus scrapes."""

    def __init__(self, waiting: Callable[[], Iterable[tuple[str, str]]],
                 running: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._waiting = waiting
        self._running = running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("stagewright_queue_depth",
                                  "ImageBuilds waiting for a build slot", labels=["namespace"])
        for namespace, count in sorted(Counter(ns for ns, _ in self._waiting()).items()):
            depth.add_metric([namespace], count)
        running = GaugeMetricFamily("stagewright_running_builds",
                                    "Unfinished build pods", labels=["namespace"])
        for namespace, count in sorted(Counter(ns for ns, _ in set(self._running())).items()):
            running.add_metric([namespace], count)
        yield depth
        yield running


class Metrics:
    """The operator's metrics; ``serve`` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.builds_finished = PromCounter(
            "stagewright_builds_finished", "Builds that finished, by phase and reason",
            ["phase", "reason"], registry=self.registry)
        self.build_duration = Histogram(
            "stagewright_build_duration_seconds", "Build pod start to finished status",
            ["phase"], buckets=_BUILD_BUCKETS, registry=self.registry)
        self.api_latency = Histogram(
            "stagewright_api_request_duration_seconds", "Kubernetes API requests",
            ["method", "code"], buckets=_REQUEST_BUCKETS, registry=self.registry)
        self.api_errors = PromCounter(
            "stagewright_api_request_errors", "Kubernetes API requests that failed "
            "(unreachable, or an error status other than 404 and 409)", ["method", "code"],
            registry=self.registry)
        self.registry_latency = Histogram(
            "stagewright_registry_request_duration_seconds", "Container registry requests",
            ["code"], buckets=_REQUEST_BUCKETS, registry=self.registry)
        self.leader = Gauge(
            "stagewright_leader", "1 while this replica leads (acts), 0 while it stands by",
            registry=self.registry)
        self.registry_errors = PromCounter(
            "stagewright_registry_request_errors", "Container registry requests that failed "
            "(unreachable, or a 5xx)", ["code"], registry=self.registry)

    def watch_queue(self, waiting: Callable[[], Iterable[tuple[str, str]]],
                    running: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Report queue depth and running builds per namespace from these sources."""
        self.registry.register(_QueueCollector(waiting, running))

    def set_leader(self, leading: bool) -> None:
        """This replica started (True) or stopped (False) acting."""
        self.leader.set(1 if leading else 0)

    def api_request(self, method: str, code: str, seconds: float) -> None:
        """Observer for KubeApi."""
        self.api_latency.labels(method, code).observe(seconds)
        if code == "error" or (int(code) >= 400 and code not in ("404", "409")):
            self.api_errors.labels(method, code).inc()

    def registry_request(self, code: str, seconds: float) -> None:
        """Observer for RegistryClient."""
        self.registry_latency.labels(code).observe(seconds)
        if code == "error" or int(code) >= 500:
            self.registry_errors.labels(code).inc()

    def build_finished(self, phase: str, reason: str, seconds: float | None) -> None:
        """A build reached Succeeded or Failed (``seconds`` from pod start, if it started)."""
        self.builds_finished.labels(phase, reason).inc()
        if seconds is not None:
            self.build_duration.labels(phase).observe(seconds)

    def serve(self, port: int, address: str) -> None:
        """Serve /metrics from a background thread (prometheus-client's own server)."""
        start_http_server(port, addr=address, registry=self.registry)
