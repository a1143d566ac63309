"""Fair sharing through the queue scheduler's controller: stored ClusterQueues with weights, Workloads admitted and
preempted (reason InCohortFairSharing, upstream's message) when the server runs with fair sharing on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kaip.api.core import NAMESPACE
from kaip.api.kueue import CLUSTER_QUEUE, LOCAL_QUEUE, RESOURCE_FLAVOR, WORKLOAD
from kaip.controllers.queue_metrics import QueueMetrics
from kaip.controllers.queueing import QueueSchedulerReconciler
from kaip.controllers.workload import WorkloadReconciler
from kaip.controlplane.conditions import get_condition
from kaip.controlplane.events import EventRecorder
from kaip.jobs import workload as wls
from kaip.store.store import Store

V = "kueue.x-k8s.io/v1beta2"


def cluster_queue(name: str, nominal: int) -> dict[str, Any]:
    return {"apiVersion": V, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": {
        "namespaceSelector": {}, "cohortName": "org", "preemption": {"reclaimWithinCohort": "Any"},
        "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
            {"name": "f", "resources": [{"name": "cpu", "nominalQuota": nominal}]}]}]}}


def workload(name: str, queue: str, cpu: int, at: float) -> dict[str, Any]:
    return {"apiVersion": V, "kind": "Workload", "metadata": {
        "name": name, "namespace": "team", "annotations": {"kaip.dev/queued-at": str(at)}},
        "spec": {"queueName": queue, "podSets": [{"name": "main", "count": 1, "template": {"spec": {"containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"cpu": str(cpu)}}}]}}}]}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    s.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    s.create(RESOURCE_FLAVOR, {"apiVersion": V, "kind": "ResourceFlavor", "metadata": {"name": "f"}})
    for name in ("a", "b", "c"):
        s.create(CLUSTER_QUEUE, cluster_queue(name, 2))
        s.create(LOCAL_QUEUE, {"apiVersion": V, "kind": "LocalQueue", "metadata": {"name": name, "namespace": "team"},
                               "spec": {"clusterQueue": name}})
    yield s
    s.close()


def holds(store: Store, name: str) -> bool:
    wl = store.try_get(WORKLOAD, "team", name)
    return wl is not None and wls.has_quota_reservation(wl) and not wls.is_evicted(wl)


@pytest.mark.parametrize("fair", [True, False])
def test_a_queue_borrows_back_its_fair_share_only_with_fair_sharing(store: Store, fair: bool) -> None:
    registry = CollectorRegistry()
    scheduler = QueueSchedulerReconciler(store, EventRecorder(store, "test"), QueueMetrics(registry),
                                         fair_sharing=fair)
    for i in range(5):  # a borrows 3 of the cohort's 6 CPUs
        store.create(WORKLOAD, workload(f"a{i}", "a", 1, at=i))
    store.create(WORKLOAD, workload("b0", "b", 1, at=10))
    scheduler.reconcile("cycle")
    assert all(holds(store, f"a{i}") for i in range(5)) and holds(store, "b0")
    shares = {name: ((store.get(CLUSTER_QUEUE, None, name).get("status") or {}).get("fairSharing") or {}).get(
        "weightedShare") for name in ("a", "b", "c")}
    gauge = {name: registry.get_sample_value("kueue_cluster_queue_weighted_share", {
        "cluster_queue": name, "cohort": "org", "replica_role": "standalone"}) for name in ("a", "b")}
    if fair:  # a borrows 3 of the 6 the cohort can lend: 3 * 1000 / 6, weight 1
        assert shares == {"a": 500, "b": 0, "c": 0} and gauge == {"a": 500.0, "b": 0.0}
        assert registry.get_sample_value("kueue_cohort_weighted_share", {"cohort": "org",
                                                                        "replica_role": "standalone"}) == 0.0
    else:  # reported only with fair sharing on, as upstream
        assert shares == {"a": None, "b": None, "c": None} and gauge == {"a": None, "b": None}
    store.create(WORKLOAD, workload("b-big", "b", 2, at=20))  # b would borrow 1
    scheduler.reconcile("cycle")
    evicted = sorted(w["metadata"]["name"] for w in store.list(WORKLOAD, "team")[0] if wls.is_evicted(w))
    if not fair:
        assert evicted == []  # classic preemption does not preempt so that a queue can borrow
        return
    assert len(evicted) == 2 and all(name.startswith("a") for name in evicted)
    for name in evicted:
        wl = store.try_get(WORKLOAD, "team", name)
        assert wl is not None
        preempted = get_condition(wl["status"], "Preempted") or {}
        assert preempted.get("reason") == "InCohortFairSharing"
        assert "due to Fair Sharing within the cohort" in preempted.get("message", "")
    assert not holds(store, "b-big")  # waits for the evictions to finish
    controller = WorkloadReconciler(store, EventRecorder(store, "test"), QueueMetrics(None))
    for name in evicted:  # bare Workloads: no pods to stop, the quota goes back at once and they queue again
        controller.reconcile(("team", name))
    scheduler.reconcile("cycle")
    assert holds(store, "b-big")  # b's share with it (1/6) is below a's with a requeued head (2/6)
    assert not any(holds(store, name) for name in evicted)
