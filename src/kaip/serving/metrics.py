"""Serving metrics on the server's Prometheus registry: per InferenceService, revision and protocol from the
gateway, plus the runtimes' own metrics (vLLM's names) federated from every ready replica at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from kaip.serving.system import ServingSystem

log = logging.getLogger(__name__)

LABELS = ["namespace", "inferenceservice", "revision", "protocol"]
FEDERATED_PREFIXES = ("vllm:", "request_")


def protocol_of(path: str) -> str:
    if path.startswith("/openai/"):
        return "openai"
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1/"):
        return "v1"
    return "other"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("kaip_serving_requests", "Requests through the gateway", [*LABELS, "code"],
                                registry=registry)
        self.errors = Counter("kaip_serving_request_errors", "Requests answered with 5xx or not answered",
                              LABELS, registry=registry)
        self.latency = Histogram("kaip_serving_request_duration_seconds", "Gateway request latency to the last byte",
                                 LABELS, registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.inflight = Gauge("kaip_serving_requests_in_flight", "Requests in flight (held ones included)",
                              LABELS, registry=registry)
        self.retries = Counter("kaip_serving_retries", "Requests retried on another replica",
                               ["namespace", "inferenceservice", "revision"], registry=registry)
        self._children: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}
        self._codes: dict[tuple[tuple[str, ...], int], Any] = {}

    def series(self, labels: tuple[str, ...]) -> tuple[Any, Any, Any]:
        """(in-flight gauge, latency histogram, error counter) for one label set: prometheus_client's `labels()`
        costs a lock and a tuple build per call, which the gateway would pay four times a request."""
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = (self.inflight.labels(*labels), self.latency.labels(*labels),
                                              self.errors.labels(*labels))
        return found

    def requests_for(self, labels: tuple[str, ...], code: int) -> Any:
        found = self._codes.get((labels, code))
        if found is None:
            found = self._codes[(labels, code)] = self.requests.labels(*labels, str(code))
        return found


class FederatedCollector(Collector):
    """Scrapes each ready replica's /metrics when Prometheus scrapes Kaip, and re-labels its samples."""

    def __init__(self, system: ServingSystem, timeout: float = 0.5) -> None:
        self.system = system
        self.timeout = timeout

    def collect(self) -> Iterable[Metric]:
        replicas = GaugeMetricFamily("kaip_serving_replicas", "Replicas per revision by readiness",
                                     labels=["namespace", "inferenceservice", "revision", "state"])
        merged: dict[str, Metric] = {}
        with httpx.Client(timeout=self.timeout) as client:
            for (namespace, revision), eps in list(self.system.endpoints.items()):
                owner = self.system.owners.get((namespace, revision), (namespace, ""))[1]
                ready = [ep for ep in eps if ep.ready]
                replicas.add_metric([namespace, owner, revision, "ready"], len(ready))
                replicas.add_metric([namespace, owner, revision, "total"], len(eps))
                for ep in ready:
                    try:
                        text = client.get(ep.url + "/metrics").text
                    except httpx.HTTPError:
                        continue
                    extra = {"namespace": namespace, "inferenceservice": owner, "revision": revision, "pod": ep.pod}
                    self._merge(merged, text, extra)
        yield replicas
        yield from merged.values()

    @staticmethod
    def _merge(merged: dict[str, Metric], text: str, extra: dict[str, str]) -> None:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            return
        for fam in families:
            if not fam.name.startswith(FEDERATED_PREFIXES):
                continue
            out = merged.get(fam.name)
            if out is None:
                out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                labels: dict[str, Any] = {**s.labels, **extra}
                out.add_sample(s.name, labels, s.value, s.timestamp)
