"""Requeue backoff after an eviction (Kueue's waitForPodsReady.requeuingStrategy): the pure decision, the settings,
and the controllers: requeueState written on eviction, no admission before requeueAt, BackoffFinished after it,
deactivation past the backoff limit."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaip.api.core import NAMESPACE
from kaip.api.kueue import CLUSTER_QUEUE, LOCAL_QUEUE, RESOURCE_FLAVOR, WORKLOAD
from kaip.controllers.kueue import job_framework, queue_settings
from kaip.controllers.queue_metrics import QueueMetrics
from kaip.controllers.queueing import QueueSchedulerReconciler
from kaip.controllers.workload import WorkloadReconciler
from kaip.controlplane.conditions import get_condition
from kaip.controlplane.events import EventRecorder
from kaip.jobs import workload as wls
from kaip.scheduling.backoff import RequeuingStrategy, decide, delay_seconds, format_time
from kaip.store.store import Store


def test_backoff_doubles_from_the_base_up_to_the_maximum() -> None:
    s = RequeuingStrategy()
    assert [delay_seconds(s, n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert delay_seconds(RequeuingStrategy(backoff_base_seconds=10, backoff_max_seconds=25), 3) == 25
    assert decide(s, 0, 1000.0).requeue_at == 1060.0 and decide(s, 0, 1000.0).count == 1
    limited = RequeuingStrategy(backoff_limit_count=2)
    assert decide(limited, 1, 0.0).count == 2 and not decide(limited, 1, 0.0).deactivate
    assert decide(limited, 2, 0.0).deactivate and decide(limited, 2, 0.0).requeue_at is None


def test_settings_from_the_environment() -> None:
    default = queue_settings({})
    assert not default.fair_sharing and default.requeuing == RequeuingStrategy()
    s = queue_settings({"KAIP_KUEUE_FAIR_SHARING": "true", "KAIP_KUEUE_BACKOFF_BASE_SECONDS": "5",
                        "KAIP_KUEUE_BACKOFF_LIMIT_COUNT": "3",
                        "KAIP_KUEUE_BACKOFF_REASONS": "PodsReadyTimeout,Preempted"})
    assert s.fair_sharing and s.requeuing.backoff_base_seconds == 5 and s.requeuing.backoff_max_seconds == 3600
    assert s.requeuing.backoff_limit_count == 3 and s.requeuing.reasons == {"PodsReadyTimeout", "Preempted"}
    with pytest.raises(ValueError, match="KAIP_KUEUE_BACKOFF_BASE_SECONDS"):
        queue_settings({"KAIP_KUEUE_BACKOFF_BASE_SECONDS": "-1"})
    with pytest.raises(ValueError, match="KAIP_KUEUE_FAIR_SHARING"):
        queue_settings({"KAIP_KUEUE_FAIR_SHARING": "maybe"})


def test_every_queued_kind_backs_off_with_the_servers_settings(monkeypatch: pytest.MonkeyPatch,
                                                             store: Store) -> None:
    """Jobs, TrainJobs, PyTorchJobs and Workbenches get their job framework from one place, with these settings."""
    import kaip.controllers.trainjob as trainjob
    import kaip.workbench.install as workbench

    monkeypatch.setenv("KAIP_KUEUE_BACKOFF_BASE_SECONDS", "7")
    monkeypatch.setenv("KAIP_KUEUE_BACKOFF_REASONS", "Preempted")
    framework = job_framework(store)
    assert framework.requeuing.backoff_base_seconds == 7 and framework.requeuing.reasons == {"Preempted"}
    for module in (trainjob, workbench):
        assert "job_framework(store)" in inspect.getsource(module.install)


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds, as requeueAt is stored

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    s.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    s.create(RESOURCE_FLAVOR, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                               "metadata": {"name": "f"}})
    s.create(CLUSTER_QUEUE, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                             "metadata": {"name": "cq"}, "spec": {"namespaceSelector": {}, "resourceGroups": [
                                 {"coveredResources": ["cpu"], "flavors": [
                                     {"name": "f", "resources": [{"name": "cpu", "nominalQuota": "2"}]}]}]}})
    s.create(LOCAL_QUEUE, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                           "metadata": {"name": "q", "namespace": "team"}, "spec": {"clusterQueue": "cq"}})
    s.create(WORKLOAD, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                        "metadata": {"name": "w", "namespace": "team"}, "spec": {"queueName": "q", "podSets": [
                            {"name": "main", "count": 1, "template": {"spec": {"containers": [
                                {"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}}}]}})
    yield s
    s.close()


def get(store: Store) -> dict[str, Any]:
    wl = store.try_get(WORKLOAD, "team", "w")
    assert wl is not None
    return wl


def evict(store: Store) -> None:
    store.update_status(WORKLOAD, "team", "w", lambda s, _o: wls.set_evicted(s, "PodsReadyTimeout", "not ready"))


def test_an_evicted_workload_backs_off_then_is_requeued_and_deactivated_past_the_limit(store: Store) -> None:
    clock = Clock()
    metrics = QueueMetrics(None)
    recorder = EventRecorder(store, "test")
    scheduler = QueueSchedulerReconciler(store, recorder, metrics)
    controller = WorkloadReconciler(store, recorder, metrics, RequeuingStrategy(backoff_limit_count=2), clock)
    scheduler.reconcile("cycle")
    assert wls.has_quota_reservation(get(store))

    evict(store)
    result = controller.reconcile(("team", "w"))
    wl = get(store)
    assert not wls.has_quota_reservation(wl)
    assert wl["status"]["requeueState"] == {"count": 1, "requeueAt": format_time(clock.now + 60)}
    assert get_condition(wl["status"], "Requeued")["status"] == "False"  # type: ignore[index]
    assert result is not None and result.requeue_after == pytest.approx(60)
    scheduler.reconcile("cycle")
    assert not wls.has_quota_reservation(get(store))  # still backing off
    clock.now += 30
    assert controller.reconcile(("team", "w")).requeue_after == pytest.approx(30)  # type: ignore[union-attr]
    clock.now += 31
    assert controller.reconcile(("team", "w")) is None
    requeued = get_condition(get(store)["status"], "Requeued") or {}
    assert (requeued.get("status"), requeued.get("reason")) == ("True", "BackoffFinished")
    assert get(store)["status"]["requeueState"] == {"count": 1}
    scheduler.reconcile("cycle")
    assert wls.has_quota_reservation(get(store))

    evict(store)  # the second eviction waits twice as long
    controller.reconcile(("team", "w"))
    assert get(store)["status"]["requeueState"] == {"count": 2, "requeueAt": format_time(clock.now + 120)}
    clock.now += 121
    controller.reconcile(("team", "w"))
    scheduler.reconcile("cycle")
    assert wls.has_quota_reservation(get(store))

    evict(store)  # a third would exceed backoffLimitCount 2: deactivated, not queued
    controller.reconcile(("team", "w"))
    wl = get(store)
    assert wl["spec"]["active"] is False and "RequeuingLimitExceeded" in \
        (get_condition(wl["status"], "QuotaReserved") or {}).get("message", "")
    scheduler.reconcile("cycle")
    assert not wls.has_quota_reservation(get(store))


def test_evictions_that_do_not_back_off_requeue_at_once(store: Store) -> None:
    metrics = QueueMetrics(None)
    recorder = EventRecorder(store, "test")
    scheduler = QueueSchedulerReconciler(store, recorder, metrics)
    controller = WorkloadReconciler(store, recorder, metrics, RequeuingStrategy(), Clock())
    scheduler.reconcile("cycle")
    store.update_status(WORKLOAD, "team", "w", lambda s, _o: wls.set_evicted(s, "Preempted", "preempted"))
    controller.reconcile(("team", "w"))
    assert "requeueState" not in get(store)["status"]
    scheduler.reconcile("cycle")
    assert wls.has_quota_reservation(get(store))
