"""ClusterQueue and LocalQueue reconcilers: status (counts, flavor usage, the Active condition) and metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kaip.api.kueue import CLUSTER_QUEUE, LOCAL_QUEUE, RESOURCE_FLAVOR, WORKLOAD
from kaip.controllers.queue_metrics import ROLE, QueueMetrics
from kaip.controllers.queueing import missing_flavors
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.manager import Result
from kaip.scheduling.quantity import parse_quantity
from kaip.scheduling.usage import flavors_status, local_flavors_status, summarise
from kaip.store.store import Change, Store


def workload_cluster_queue(store: Store) -> Any:
    """A Workload change concerns the ClusterQueue it holds quota in, and the one its LocalQueue points at."""
    def mapper(change: Change) -> Iterable[tuple[str, str]]:
        wl = change.object
        admitted = ((wl.get("status") or {}).get("admission") or {}).get("clusterQueue")
        if admitted:
            yield ("", admitted)
        lq = store.try_get(LOCAL_QUEUE, change.namespace, (wl.get("spec") or {}).get("queueName") or "")
        target = (lq.get("spec") or {}).get("clusterQueue") if lq is not None else None
        if target and target != admitted:
            yield ("", target)
    return mapper


def workload_local_queue(change: Change) -> Iterable[tuple[str, str]]:
    queue = (change.object.get("spec") or {}).get("queueName")
    if queue:
        yield (change.namespace, queue)


def all_cluster_queues(store: Store) -> Any:
    def mapper(_change: Change) -> Iterable[tuple[str, str]]:
        return [("", o["metadata"]["name"]) for o in store.list(CLUSTER_QUEUE)[0]]
    return mapper


def local_queues_of(store: Store) -> Any:
    def mapper(change: Change) -> Iterable[tuple[str, str]]:
        return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in store.list(LOCAL_QUEUE)[0]
                if (o.get("spec") or {}).get("clusterQueue") == change.name]
    return mapper


class ClusterQueueReconciler:
    def __init__(self, store: Store, metrics: QueueMetrics) -> None:
        self.store = store
        self.metrics = metrics

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        name = key[1]
        cq = self.store.try_get(CLUSTER_QUEUE, None, name)
        if cq is None:
            self.metrics.forget_cluster_queue(name)
            return None
        lq_names = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in self.store.list(LOCAL_QUEUE)[0]
                    if (o.get("spec") or {}).get("clusterQueue") == name}
        mine = []
        for wl in self.store.list(WORKLOAD)[0]:
            admitted_in = ((wl.get("status") or {}).get("admission") or {}).get("clusterQueue")
            queued_in = (wl["metadata"]["namespace"], wl["spec"].get("queueName")) in lq_names
            if admitted_in == name or (admitted_in is None and queued_in):
                mine.append(wl)
        summary = summarise(mine)
        spec = cq.get("spec") or {}
        flavors = {o["metadata"]["name"]: o for o in self.store.list(RESOURCE_FLAVOR)[0]}
        missing = missing_flavors(cq, flavors)

        def write(status: dict[str, Any], _obj: dict[str, Any]) -> None:
            status["pendingWorkloads"] = summary.pending
            status["reservingWorkloads"] = summary.reserving
            status["admittedWorkloads"] = summary.admitted
            status["flavorsReservation"] = flavors_status(spec, summary.reserved, with_borrowed=True)
            status["flavorsUsage"] = flavors_status(spec, summary.used, with_borrowed=True)
            if missing:
                set_condition(status, "Active", False, "FlavorNotFound",
                              f"Can't admit new workloads: references missing ResourceFlavor(s): {', '.join(missing)}.",
                              generation=cq["metadata"].get("generation"))
            elif spec.get("stopPolicy", "None") != "None":
                set_condition(status, "Active", False, "Stopped", "Can't admit new workloads: is stopped.",
                              generation=cq["metadata"].get("generation"))
            else:
                set_condition(status, "Active", True, "Ready", "Can admit new workloads",
                              generation=cq["metadata"].get("generation"))
        self.store.update_status(CLUSTER_QUEUE, None, name, write)

        cohort = spec.get("cohortName") or ""
        self.metrics.pending.labels(name, "active", ROLE).set(summary.pending - summary.inadmissible)
        self.metrics.pending.labels(name, "inadmissible", ROLE).set(summary.inadmissible)
        self.metrics.admitted_active.labels(name, ROLE).set(summary.admitted)
        self.metrics.reserving_active.labels(name, ROLE).set(summary.reserving)
        for state in ("pending", "active", "terminated"):
            current = "pending" if missing or spec.get("stopPolicy", "None") != "None" else "active"
            self.metrics.status.labels(name, state, ROLE).set(1 if state == current else 0)
        for rg in spec.get("resourceGroups") or []:
            for f in rg.get("flavors") or []:
                for r in f.get("resources") or []:
                    used = summary.used.get(f["name"], {}).get(r["name"], 0)
                    self.metrics.resource_usage.labels(cohort, name, f["name"], r["name"], ROLE).set(used / 1000)
                    self.metrics.nominal_quota.labels(cohort, name, f["name"], r["name"], ROLE).set(
                        parse_quantity(r["nominalQuota"]) / 1000)
        return None


class LocalQueueReconciler:
    def __init__(self, store: Store) -> None:
        self.store = store

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        lq = self.store.try_get(LOCAL_QUEUE, namespace, name)
        if lq is None:
            return None
        mine = [wl for wl in self.store.list(WORKLOAD, namespace)[0] if wl["spec"].get("queueName") == name]
        summary = summarise(mine)
        cq_name = (lq.get("spec") or {}).get("clusterQueue") or ""
        cq = self.store.try_get(CLUSTER_QUEUE, None, cq_name)

        def write(status: dict[str, Any], _obj: dict[str, Any]) -> None:
            status["pendingWorkloads"] = summary.pending
            status["reservingWorkloads"] = summary.reserving
            status["admittedWorkloads"] = summary.admitted
            status["flavorsReservation"] = local_flavors_status(summary.reserved)
            status["flavorsUsage"] = local_flavors_status(summary.used)
            generation = lq["metadata"].get("generation")
            if cq is None:
                set_condition(status, "Active", False, "ClusterQueueDoesNotExist",
                              "Can't submit new workloads to clusterQueue", generation=generation)
            elif (lq.get("spec") or {}).get("stopPolicy", "None") != "None":
                set_condition(status, "Active", False, "Stopped", "LocalQueue is stopped", generation=generation)
            else:
                set_condition(status, "Active", True, "Ready", "Can submit new workloads to localQueue",
                              generation=generation)
        self.store.update_status(LOCAL_QUEUE, namespace, name, write)
        return None
