"""The queue scheduler: reads queues and workloads from the store, runs the pure scheduler, writes decisions.

One key (`cycle`) for the whole cluster, as Kueue has one scheduler: any change to a Workload, queue, cohort,
flavor or priority class queues it. Each pass rebuilds the scheduler's input from stored state (so a
restarted server carries on from the truth in the store), runs cycles until nothing more can move, and
writes admissions (status.admission + QuotaReserved/Admitted), preemptions (Evicted + Preempted) and the
reason each workload still waits (QuotaReserved=False), with an Event for every admission and preemption.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kaip.api import errors
from kaip.api.core import NAMESPACE
from kaip.api.kueue import CLUSTER_QUEUE, COHORT, LOCAL_QUEUE, RESOURCE_FLAVOR, WORKLOAD
from kaip.api.selectors import Requirement
from kaip.controllers.queue_metrics import ROLE, QueueMetrics
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.jobs import workload as wls
from kaip.scheduling import backoff, snapshot
from kaip.scheduling.model import Workload
from kaip.scheduling.scheduler import Scheduler
from kaip.store.store import Change, Store

log = logging.getLogger(__name__)

CYCLE_KEY = "cycle"


MAX_INT64 = 9_223_372_036_854_775_807  # upstream's weighted share of a borrowing queue with weight 0


def cycle_key(_change: Change) -> Iterable[str]:
    return [CYCLE_KEY]


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A ClusterQueue's namespaceSelector: null selects no namespace, `{}` every one."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        if not Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())).matches(labels):
            return False
    return True


def missing_flavors(cq: dict[str, Any], flavors: dict[str, Any]) -> list[str]:
    return [name for name in snapshot.flavor_names(cq) if name not in flavors]


class QueueSchedulerReconciler:
    def __init__(self, store: Store, recorder: EventRecorder, metrics: QueueMetrics,
                 capacity: dict[str, int] | None = None, *, fair_sharing: bool = False) -> None:
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.capacity = capacity
        self.fair_sharing = fair_sharing  # Kueue's Configuration `fairSharing` (KAIP_KUEUE_FAIR_SHARING)

    def reconcile(self, _key: str) -> Result | None:
        cqs = {o["metadata"]["name"]: o for o in self.store.list(CLUSTER_QUEUE)[0]}
        flavors = {o["metadata"]["name"]: o for o in self.store.list(RESOURCE_FLAVOR)[0]}
        cohorts = [snapshot.cohort(o) for o in self.store.list(COHORT)[0]]
        lqs = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in self.store.list(LOCAL_QUEUE)[0]}
        namespaces = {o["metadata"]["name"]: o["metadata"].get("labels") or {} for o in self.store.list(NAMESPACE)[0]}
        workloads = self.store.list(WORKLOAD)[0]

        models = [snapshot.cluster_queue(o, active=not missing_flavors(o, flavors)
                                         and not o["metadata"].get("deletionTimestamp")) for o in cqs.values()]
        active = {m.name for m in models if m.active}
        sched = Scheduler(models, cohorts, [snapshot.flavor(o) for o in flavors.values()], capacity=self.capacity,
                          fair_sharing=self.fair_sharing)
        by_key: dict[str, dict[str, Any]] = {}
        waiting: dict[str, tuple[str, str]] = {}  # key -> (reason, message) for workloads that cannot queue
        for wl in workloads:
            meta = wl["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            by_key[key] = wl
            if wls.is_finished(wl) or meta.get("deletionTimestamp"):
                continue
            if snapshot.holds_quota(wl):
                cq_name = wl["status"]["admission"]["clusterQueue"]
                if cq_name in cqs:
                    sched.add(snapshot.workload(wl, cq_name))
                continue
            if not wl["spec"].get("active", True) or backoff.requeue_at(wl.get("status")) is not None:
                continue  # deactivated, or backing off after an eviction (the workload controller requeues it)
            problem = self._inadmissible(wl, lqs, cqs, active, namespaces)
            if problem:
                waiting[key] = ("Inadmissible", problem)
                continue
            lq = lqs[(meta["namespace"], wl["spec"]["queueName"])]
            sched.add(snapshot.workload(wl, (lq.get("spec") or {})["clusterQueue"]))

        result = sched.run()
        now = time.time()
        for item in result.preempted:
            self._preempt(by_key[item.target.key], item.preemptor, item.reason)
        for item in result.admitted:
            self._admit(by_key[item.workload.key], item.workload, now)
        self.metrics.attempts_total.labels("success", ROLE).inc(len(result.admitted))
        admitted = {item.workload.key for item in result.admitted}
        for key, message in sched.messages.items():
            if key not in admitted:
                waiting[key] = ("Pending", message)
        self.metrics.attempts_total.labels("inadmissible", ROLE).inc(len(waiting))
        for key, (reason, message) in waiting.items():
            wl = by_key[key]
            if self._pending_differs(wl, reason, message):
                self._write(wl, lambda s, r=reason, m=message: wls.set_pending(s, m, reason=r))
        if self.fair_sharing:
            self._weighted_shares(sched, cqs, {o["metadata"]["name"]: o for o in self.store.list(COHORT)[0]})
        return None

    def _weighted_shares(self, sched: Scheduler, cqs: dict[str, Any], cohorts: dict[str, Any]) -> None:
        """Fair sharing's view of who borrows how much: `status.fairSharing.weightedShare` on ClusterQueues and
        Cohorts, and the `kueue_cluster_queue_weighted_share` / `kueue_cohort_weighted_share` gauges."""
        queue_shares, cohort_shares = sched.weighted_shares()
        for kind, objs, shares in ((CLUSTER_QUEUE, cqs, queue_shares), (COHORT, cohorts, cohort_shares)):
            for name, share in shares.items():
                value = MAX_INT64 if share == float("inf") else int(share)
                if kind is CLUSTER_QUEUE:
                    cohort = ((objs.get(name) or {}).get("spec") or {}).get("cohortName") or ""
                    self.metrics.cq_weighted_share.labels(name, cohort, ROLE).set(value)
                else:
                    self.metrics.cohort_weighted_share.labels(name, ROLE).set(value)
                obj = objs.get(name)
                if obj is None or ((obj.get("status") or {}).get("fairSharing") or {}).get("weightedShare") == value:
                    continue

                def write(status: dict[str, Any], _o: dict[str, Any], v: int = value) -> None:
                    status.setdefault("fairSharing", {})["weightedShare"] = v
                try:
                    self.store.update_status(kind, None, name, write)
                except errors.ApiError as err:
                    if err.code != 404:
                        raise

    @staticmethod
    def _inadmissible(wl: dict[str, Any], lqs: dict[tuple[str, str], Any], cqs: dict[str, Any],
                      active: set[str], namespaces: dict[str, dict[str, str]]) -> str | None:
        ns = wl["metadata"]["namespace"]
        queue = wl["spec"].get("queueName")
        if not queue:
            return "Workload has no queue name"
        lq = lqs.get((ns, queue))
        if lq is None:
            return f"LocalQueue {queue} doesn't exist"
        if (lq.get("spec") or {}).get("stopPolicy", "None") != "None":
            return f"LocalQueue {queue} is stopped"
        cq_name = (lq.get("spec") or {}).get("clusterQueue")
        cq = cqs.get(cq_name or "")
        if cq is None:
            return f"ClusterQueue {cq_name} doesn't exist"
        if cq_name not in active:
            return f"ClusterQueue {cq_name} is inactive"
        if not selector_matches((cq.get("spec") or {}).get("namespaceSelector"), namespaces.get(ns, {})):
            return "Workload namespace doesn't match ClusterQueue selector"
        return None

    @staticmethod
    def _pending_differs(wl: dict[str, Any], reason: str, message: str) -> bool:
        for cond in (wl.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "QuotaReserved":
                return not (cond.get("status") == "False" and cond.get("reason") == reason
                            and cond.get("message") == message)
        return True

    def _write(self, wl: dict[str, Any], fn: Any) -> dict[str, Any] | None:
        meta = wl["metadata"]
        try:
            return self.store.update_status(WORKLOAD, meta["namespace"], meta["name"], lambda s, _o: fn(s))
        except errors.ApiError as err:
            if err.code == 404:
                return None
            raise

    def _admit(self, wl: dict[str, Any], model: Workload, now: float) -> None:
        assert model.admission is not None
        admission = snapshot.admission_to_status(model.admission)
        cq = admission["clusterQueue"]
        state: dict[str, bool] = {}

        def apply(status: dict[str, Any]) -> None:
            if status.get("admission") or any(c.get("type") == "Finished" and c.get("status") == "True"
                                              for c in status.get("conditions") or []):
                state["skipped"] = True  # changed under us: the next pass sees the new state
                return
            wls.set_admitted(status, admission)
        written = self._write(wl, apply)
        if written is None or state.get("skipped"):
            return
        waited = max(0.0, now - model.timestamp)
        priority_class = (wl["spec"].get("priorityClassRef") or {}).get("name", "")
        self.metrics.quota_reserved_total.labels(cq, priority_class, ROLE).inc()
        self.metrics.admitted_total.labels(cq, priority_class, ROLE).inc()
        self.metrics.admission_wait.labels(cq, priority_class, ROLE).observe(waited)
        self.recorder.record(written, "Normal", "QuotaReserved",
                             f"Quota reserved in ClusterQueue {cq}, wait time since queued was {waited:.0f}s")
        self.recorder.record(written, "Normal", "Admitted",
                             f"Admitted by ClusterQueue {cq}, wait time since reservation was 0s")

    def _preempt(self, wl: dict[str, Any], preemptor: Workload, reason: str) -> None:
        where = {"InClusterQueue": "prioritization in the ClusterQueue",
                 "InCohortReclamation": "reclamation within the cohort",
                 "InCohortReclaimWhileBorrowing": "reclamation within the cohort while borrowing",
                 "InCohortFairSharing": "Fair Sharing within the cohort"}[reason]
        message = f"Preempted to accommodate a workload (UID: {preemptor.uid}) due to {where}"
        written = self._write(wl, lambda s: wls.set_evicted(s, wls.EVICTED_BY_PREEMPTION, message,
                                                            preemption_reason=reason))
        if written is None:
            return
        cq = (wl.get("status") or {}).get("admission", {}).get("clusterQueue", "")
        self.metrics.evicted_total.labels(cq, "Preempted", reason, ROLE).inc()
        self.metrics.preempted_total.labels(preemptor.cluster_queue, reason, ROLE).inc()
        self.recorder.record(written, "Normal", "Preempted", message)
