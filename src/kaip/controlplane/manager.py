"""The controller manager: one informer thread tails the change log and feeds each controller's queue;
each controller's workers call its reconciler.

Level-triggered: on start every object of every watched kind is queued, so a restarted server
reconciles everything from stored state; a periodic resync queues everything again; a change that
arrives while a key is being reconciled queues it once more afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kaip.api import errors
from kaip.api.kinds import KindInfo
from kaip.controlplane.workqueue import WorkQueue
from kaip.store.store import Change, Store

log = logging.getLogger(__name__)

Key = Hashable
Mapper = Callable[[Change], Iterable[Key]]


@dataclass
class Result:
    """What a reconcile asks for next: nothing (wait for the next change), or another look after a delay."""

    requeue_after: float | None = None


class Reconciler(Protocol):
    def reconcile(self, key: Key) -> Result | None: ...


def object_key(change: Change) -> Iterable[Key]:
    return [(change.namespace, change.name)]


def owner_keys(owner_kind: KindInfo) -> Mapper:
    """Map a change of a dependent to its controlling owner of `owner_kind` (as `Owns()` does)."""
    def mapper(change: Change) -> Iterable[Key]:
        for ref in change.object["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == owner_kind.kind and ref.get("controller", True):
                yield (change.namespace if owner_kind.namespaced else "", ref["name"])
    return mapper


class Controller:
    def __init__(self, name: str, reconciler: Reconciler, *, for_kind: KindInfo | None = None,
                 watches: list[tuple[str | None, Mapper]] | None = None, workers: int = 2,
                 initial_keys: Callable[[], Iterable[Key]] | None = None) -> None:
        self.name = name
        self.reconciler = reconciler
        self.for_kind = for_kind
        self.watches: list[tuple[str | None, Mapper]] = list(watches or [])
        if for_kind is not None:
            self.watches.insert(0, (for_kind.key, object_key))
        self.workers = workers
        self.initial_keys = initial_keys
        self.queue = WorkQueue()
        self._threads: list[threading.Thread] = []
        self.metrics: _ControllerMetrics | None = None

    def kind_keys(self) -> set[str] | None:
        """The kinds this controller listens to, or None for all of them."""
        keys = {k for k, _ in self.watches}
        return None if None in keys else {k for k in keys if k is not None}

    def dispatch(self, change: Change) -> None:
        for kind_key, mapper in self.watches:
            if kind_key is None or kind_key == change.kind_key:
                for key in mapper(change):
                    self.queue.add(key)

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"{self.name}-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            started = time.perf_counter()
            outcome = "success"
            try:
                result = self.reconciler.reconcile(key)
                self.queue.forget(key)
                if result and result.requeue_after is not None:
                    outcome = "requeue_after"
                    self.queue.add_after(key, result.requeue_after)
            except errors.ApiError as err:
                outcome = "error"
                delay = self.queue.add_rate_limited(key)
                level = logging.DEBUG if err.code in (404, 409) else logging.WARNING
                log.log(level, "%s: reconcile %s failed (retry in %.2fs): %s", self.name, key, delay, err)
            except Exception:
                outcome = "error"
                delay = self.queue.add_rate_limited(key)
                log.exception("%s: reconcile %s failed (retry in %.2fs)", self.name, key, delay)
            finally:
                self.queue.done(key)
                if self.metrics:
                    self.metrics.observe(self.name, outcome, time.perf_counter() - started)

    def stop(self) -> None:
        self.queue.shutdown()


class _ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter("controller_runtime_reconcile_total", "Reconciliations per controller and result",
                             ["controller", "result"], registry=registry)
        self.errors = Counter("controller_runtime_reconcile_errors_total", "Reconciliation errors per controller",
                              ["controller"], registry=registry)
        self.time = Histogram("controller_runtime_reconcile_time_seconds", "Time per reconciliation",
                              ["controller"], registry=registry)

    def observe(self, controller: str, result: str, seconds: float) -> None:
        self.total.labels(controller, result).inc()
        if result == "error":
            self.errors.labels(controller).inc()
        self.time.labels(controller).observe(seconds)


class _QueueCollector(Collector):
    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def collect(self) -> Iterable[Any]:
        depth = GaugeMetricFamily("workqueue_depth", "Current depth of the work queue", labels=["name"])
        adds = CounterMetricFamily("workqueue_adds", "Keys added to the work queue", labels=["name"])
        retries = CounterMetricFamily("workqueue_retries", "Rate-limited requeues", labels=["name"])
        for c in self.manager.controllers:
            depth.add_metric([c.name], len(c.queue))
            adds.add_metric([c.name], c.queue.adds)
            retries.add_metric([c.name], c.queue.retries)
        return [depth, adds, retries]


class Manager:
    def __init__(self, store: Store, *, registry: CollectorRegistry | None = None,
                 resync_seconds: float = 300.0) -> None:
        self.store = store
        self.controllers: list[Controller] = []
        self.resync_seconds = resync_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metrics = _ControllerMetrics(registry) if registry is not None else None
        if registry is not None:
            registry.register(_QueueCollector(self))
        self.last_rv = 0
        store.add_listener(lambda _rv, _kind: self._wake.set())

    def add(self, controller: Controller) -> Controller:
        controller.metrics = self._metrics
        self.controllers.append(controller)
        return controller

    def _enqueue_everything(self) -> None:
        for c in self.controllers:
            if c.for_kind is not None:
                items, _ = self.store.list(c.for_kind)
                for obj in items:
                    c.queue.add((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
            if c.initial_keys is not None:
                for key in c.initial_keys():
                    c.queue.add(key)

    def start(self) -> None:
        # Take the version before listing: changes after it are replayed, at worst a second time (harmless).
        self.last_rv = self.store.current_rv()
        self._enqueue_everything()
        for c in self.controllers:
            c.start()
        for target, name in ((self._inform, "informer"), (self._resync, "resync")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _watched_kinds(self) -> set[str] | None:
        kinds: set[str] = set()
        for c in self.controllers:
            keys = c.kind_keys()
            if keys is None:
                return None
            kinds |= keys
        return kinds

    def _inform(self) -> None:
        kinds = self._watched_kinds()
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                while True:
                    batch = self.store.changes_since(self.last_rv, kind_keys=kinds, limit=500)
                    for change in batch:
                        for c in self.controllers:
                            c.dispatch(change)
                    if batch:
                        self.last_rv = batch[-1].rv
                    if len(batch) < 500:
                        break
            except errors.ApiError as err:
                if err.code == 410:  # fell behind compaction: relist, as an informer does
                    self.last_rv = self.store.current_rv()
                    self._enqueue_everything()
                else:
                    log.exception("informer failed")
            except Exception:
                if not self._stop.is_set():
                    log.exception("informer failed")
                    time.sleep(0.5)

    def _resync(self) -> None:
        while not self._stop.wait(self.resync_seconds):
            try:
                self._enqueue_everything()
            except Exception:
                log.exception("resync failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for c in self.controllers:
            c.stop()
