"""Workload reconciler: evictions that are not preemptions, and the end of an eviction for bare Workloads.

- `spec.active: false` evicts an admitted workload (reason Deactivated); it is not requeued.
- `maximumExecutionTimeSeconds` exceeded deactivates it (Kueue's MaximumExecutionTimeExceeded).
- A ClusterQueue or LocalQueue with `stopPolicy: HoldAndDrain` evicts its admitted workloads
  (ClusterQueueStopped / LocalQueueStopped).
- After an eviction whose reason backs off (`RequeuingStrategy.reasons`), a workload waits until
  `status.requeueState.requeueAt`, then is requeued (Requeued=True, BackoffFinished); past the backoff limit it is
  deactivated instead.
- A Workload that no job owns has no pods to stop: once evicted it gives its quota back at once.
  Workloads owned by a job are released by the job framework, after the job's pods are gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from kaip.api import errors
from kaip.api.kueue import CLUSTER_QUEUE, LOCAL_QUEUE, WORKLOAD
from kaip.controllers.queue_metrics import ROLE, QueueMetrics
from kaip.controlplane.conditions import get_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.jobs import workload as wls
from kaip.scheduling import backoff, podsready
from kaip.scheduling.snapshot import parse_time
from kaip.store.store import Change, Store


def workloads_of_cluster_queue(store: Store) -> Any:
    def mapper(change: Change) -> Iterable[tuple[str, str]]:
        name = change.name
        for wl in store.list(WORKLOAD)[0]:
            if ((wl.get("status") or {}).get("admission") or {}).get("clusterQueue") == name:
                yield (wl["metadata"]["namespace"], wl["metadata"]["name"])
    return mapper


def workloads_of_local_queue(store: Store) -> Any:
    def mapper(change: Change) -> Iterable[tuple[str, str]]:
        for wl in store.list(WORKLOAD, change.namespace)[0]:
            if wl["spec"].get("queueName") == change.name:
                yield (wl["metadata"]["namespace"], wl["metadata"]["name"])
    return mapper


class WorkloadReconciler:
    def __init__(self, store: Store, recorder: EventRecorder, metrics: QueueMetrics,
                 requeuing: backoff.RequeuingStrategy | None = None,
                 clock: Callable[[], float] = time.time, *,
                 pods_ready: podsready.PodsReadySettings | None = None) -> None:
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.requeuing = requeuing or backoff.RequeuingStrategy()
        self.clock = clock
        self.pods_ready = pods_ready
        self._ready_seen: set[tuple[str, str]] = set()  # (uid, PodsReady transition time) already measured

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        wl = self.store.try_get(WORKLOAD, namespace, name)
        if wl is None or wls.is_finished(wl):
            return None
        if not wls.has_quota_reservation(wl):
            return self._backoff(wl)
        if wls.is_evicted(wl):
            owned = any(r.get("controller") for r in wl["metadata"].get("ownerReferences") or [])
            if not owned:
                requeue = bool(wl["spec"].get("active", True))
                exceeded = requeue and wls.exceeds_requeuing_limit(wl.get("status"), self.requeuing)
                if exceeded:
                    wls.deactivate(self.store, wl)  # first: the scheduler never sees it pending and active
                now = self.clock()
                self._status(wl, lambda s: wls.unset_quota_reservation(s, requeue=requeue, now=now,
                                                                       strategy=self.requeuing))
                if exceeded:
                    return None
                return self._backoff(self.store.try_get(WORKLOAD, namespace, name))
            return None
        spec = wl["spec"]
        cq_name = wl["status"]["admission"]["clusterQueue"]
        if not spec.get("active", True):
            self._evict(wl, wls.EVICTED_DEACTIVATED, "The workload is deactivated")
            return None
        limit = spec.get("maximumExecutionTimeSeconds")
        if limit:
            reserved = get_condition(wl["status"], wls.QUOTA_RESERVED) or {}
            ran = int(wl["status"].get("accumulatedPastExecutionTimeSeconds", 0)) + \
                time.time() - parse_time(reserved.get("lastTransitionTime"))
            if ran >= limit:
                self._deactivate(wl)
                self._evict(wl, wls.EVICTED_DEACTIVATED,
                            "The workload exceeded its maximum execution time (MaximumExecutionTimeExceeded)")
                return None
        cq = self.store.try_get(CLUSTER_QUEUE, None, cq_name)
        if cq is not None and (cq.get("spec") or {}).get("stopPolicy") == "HoldAndDrain":
            self._evict(wl, wls.EVICTED_CLUSTER_QUEUE_STOPPED, "The ClusterQueue is stopped")
            return None
        lq = self.store.try_get(LOCAL_QUEUE, namespace, spec.get("queueName") or "")
        if lq is not None and (lq.get("spec") or {}).get("stopPolicy") == "HoldAndDrain":
            self._evict(wl, wls.EVICTED_LOCAL_QUEUE_STOPPED, "The LocalQueue is stopped")
            return None
        waits = [max(0.5, limit - ran)] if limit else []
        if self.pods_ready is not None:
            verdict = self._wait_for_pods_ready(wl)
            if verdict.evict:
                return None
            if verdict.recheck_after is not None:
                waits.append(max(0.5, verdict.recheck_after))
        return Result(requeue_after=min(waits)) if waits else None

    def _wait_for_pods_ready(self, wl: dict[str, Any]) -> podsready.Verdict:
        """Time the admitted workload's pods out (evicting it, reason PodsReadyTimeout), or measure when they
        became ready."""
        assert self.pods_ready is not None
        status = wl["status"]
        admitted = get_condition(status, wls.ADMITTED) or {}
        cond = get_condition(status, podsready.PODS_READY)
        since = parse_time(cond.get("lastTransitionTime")) if cond and cond.get("lastTransitionTime") else None
        now = self.clock()
        if cond and cond.get("status") == "True" and cond.get("reason") == podsready.STARTED:
            self._measure_ready(wl, cond, now=since or now, admitted_at=parse_time(admitted.get("lastTransitionTime")))
        verdict = podsready.timeout_verdict(self.pods_ready, now, parse_time(admitted.get("lastTransitionTime")),
                                            cond, since)
        if verdict.evict:
            meta = wl["metadata"]
            self._evict(wl, backoff.PODS_READY_TIMEOUT,
                        f"Exceeded the PodsReady timeout {meta['namespace']}/{meta['name']}", cause=verdict.cause)
        return verdict

    def _measure_ready(self, wl: dict[str, Any], cond: dict[str, Any], *, now: float, admitted_at: float) -> None:
        key = (wl["metadata"].get("uid", ""), str(cond.get("lastTransitionTime")))
        if key in self._ready_seen:
            return
        self._ready_seen.add(key)
        labels = (wl["status"]["admission"]["clusterQueue"],
                  (wl["spec"].get("priorityClassRef") or {}).get("name", ""), ROLE)
        requeued = get_condition(wl["status"], wls.REQUEUED)
        queued_at = parse_time(requeued["lastTransitionTime"]) if requeued and requeued.get("status") == "True" \
            else parse_time(wl["metadata"].get("creationTimestamp"))
        self.metrics.ready_wait.labels(*labels).observe(max(0.0, now - queued_at))
        self.metrics.admitted_until_ready.labels(*labels).observe(max(0.0, now - admitted_at))

    def _backoff(self, wl: dict[str, Any] | None) -> Result | None:
        """A workload backing off after an eviction: requeued (BackoffFinished) once `requeueAt` has passed."""
        if wl is None or wls.has_quota_reservation(wl):
            return None
        at = backoff.requeue_at(wl.get("status"))
        if at is None:
            return None
        wait = at - self.clock()
        if wait > 0:
            return Result(requeue_after=wait)
        self._status(wl, wls.finish_backoff)
        return None

    def _deactivate(self, wl: dict[str, Any]) -> None:
        def apply(obj: dict[str, Any]) -> dict[str, Any]:
            obj["spec"]["active"] = False
            return obj
        meta = wl["metadata"]
        self.store.mutate(WORKLOAD, meta["namespace"], meta["name"], apply)

    def _evict(self, wl: dict[str, Any], reason: str, message: str, *, cause: str = "") -> None:
        written = self._status(wl, lambda s: wls.set_evicted(s, reason, message, underlying_cause=cause))
        if written is not None:
            cq = wl["status"]["admission"]["clusterQueue"]
            self.metrics.evicted_total.labels(cq, reason, cause, ROLE).inc()
            event = "EvictedDueToPodsReadyTimeout" if reason == backoff.PODS_READY_TIMEOUT else "Evicted"
            self.recorder.record(written, "Normal", event, message)

    def _status(self, wl: dict[str, Any], fn: Any) -> dict[str, Any] | None:
        meta = wl["metadata"]
        try:
            return self.store.update_status(WORKLOAD, meta["namespace"], meta["name"], lambda s, _o: fn(s))
        except errors.ApiError as err:
            if err.code == 404:
                return None
            raise
