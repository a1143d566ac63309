"""Wiring of the queueing controllers (Kueue's semantics) into a server's controller manager."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kaip.api import batch, kueue  # noqa: F401  (registers the kinds)
from kaip.api.batch import JOB
from kaip.api.core import NAMESPACE, POD
from kaip.api.kueue import (
    CLUSTER_QUEUE,
    COHORT,
    LOCAL_QUEUE,
    RESOURCE_FLAVOR,
    WORKLOAD,
)
from kaip.controllers.job import JobReconciler
from kaip.controllers.queue_metrics import QueueMetrics
from kaip.controllers.queue_status import (
    ClusterQueueReconciler,
    LocalQueueReconciler,
    all_cluster_queues,
    local_queues_of,
    workload_cluster_queue,
    workload_local_queue,
)
from kaip.controllers.queueing import CYCLE_KEY, QueueSchedulerReconciler, cycle_key
from kaip.controllers.workload import WorkloadReconciler, workloads_of_cluster_queue, workloads_of_local_queue
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller, owner_keys
from kaip.executor.node import NodeCapacity, detect
from kaip.jobs.framework import JobFramework
from kaip.scheduling.backoff import RequeuingStrategy
from kaip.scheduling.podsready import PodsReadySettings

if TYPE_CHECKING:
    from kaip.server.runtime import KaipServer
    from kaip.store.store import Store


def node_capacity(node: NodeCapacity) -> dict[str, int]:
    """The machine as quota, in milli-units: what the scheduler treats as a hard limit on top of quotas."""
    out = {"cpu": node.cpu * 1000, "memory": node.memory_bytes * 1000}
    if node.gpus:
        out["nvidia.com/gpu"] = node.gpus * 1000
    return out


@dataclass(frozen=True)
class QueueSettings:
    """Kaip's equivalent of Kueue's Configuration for the queueing features it has: `fairSharing` (on or off; the
    preemption strategies are upstream's defaults) and `waitForPodsReady.requeuingStrategy`."""
    fair_sharing: bool = False
    requeuing: RequeuingStrategy = RequeuingStrategy()
    pods_ready: PodsReadySettings | None = None  # waitForPodsReady; None: off, as upstream's default


def queue_settings(env: Mapping[str, str]) -> QueueSettings:
    """From the server's environment: KAIP_KUEUE_FAIR_SHARING=true, KAIP_KUEUE_BACKOFF_BASE_SECONDS (60),
    KAIP_KUEUE_BACKOFF_MAX_SECONDS (3600), KAIP_KUEUE_BACKOFF_LIMIT_COUNT (unset: no limit) and
    KAIP_KUEUE_BACKOFF_REASONS (comma-separated eviction reasons that back off; default PodsReadyTimeout),
    KAIP_KUEUE_PODS_READY_TIMEOUT_SECONDS (waitForPodsReady.timeout; unset: waitForPodsReady off) and
    KAIP_KUEUE_PODS_READY_RECOVERY_TIMEOUT_SECONDS (waitForPodsReady.recoveryTimeout; unset: none)."""
    def number(name: str) -> int | None:
        value = env.get(name, "").strip()
        if not value:
            return None
        if not value.isdigit():
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        return int(value)
    default = RequeuingStrategy()
    base, cap, limit = (number("KAIP_KUEUE_BACKOFF_BASE_SECONDS"), number("KAIP_KUEUE_BACKOFF_MAX_SECONDS"),
                        number("KAIP_KUEUE_BACKOFF_LIMIT_COUNT"))
    reasons = frozenset(r.strip() for r in env.get("KAIP_KUEUE_BACKOFF_REASONS", "").split(",") if r.strip())
    requeuing = RequeuingStrategy(default.backoff_base_seconds if base is None else base,
                                  default.backoff_max_seconds if cap is None else cap, limit,
                                  reasons or default.reasons)
    fair = env.get("KAIP_KUEUE_FAIR_SHARING", "").strip().lower()
    if fair not in ("", "true", "false", "1", "0"):
        raise ValueError(f"KAIP_KUEUE_FAIR_SHARING must be true or false, got {fair!r}")
    timeout = number("KAIP_KUEUE_PODS_READY_TIMEOUT_SECONDS")
    recovery = number("KAIP_KUEUE_PODS_READY_RECOVERY_TIMEOUT_SECONDS")
    if recovery is not None and not timeout:
        raise ValueError("KAIP_KUEUE_PODS_READY_RECOVERY_TIMEOUT_SECONDS needs KAIP_KUEUE_PODS_READY_TIMEOUT_SECONDS")
    pods_ready = PodsReadySettings(float(timeout), None if recovery is None else float(recovery)) if timeout else None
    return QueueSettings(fair in ("true", "1"), requeuing, pods_ready)


def job_framework(store: Store) -> JobFramework:
    """The job framework every queued kind (Jobs, TrainJobs, PyTorchJobs, Workbenches) reconciles through, with
    the server's requeuing settings, so that backoff after an eviction is the same whatever the kind."""
    settings = queue_settings(os.environ)
    return JobFramework(store, EventRecorder(store, "kueue-job"), settings.requeuing, settings.pods_ready)


def add_queue_controllers(server: KaipServer) -> QueueSchedulerReconciler:
    store, manager = server.store, server.manager
    settings = queue_settings(os.environ)
    metrics = QueueMetrics(server.metrics_registry)
    recorder = EventRecorder(store, "kueue-admission")
    scheduler = QueueSchedulerReconciler(store, recorder, metrics, node_capacity(detect()),
                                         fair_sharing=settings.fair_sharing)
    manager.add(Controller("kueue-scheduler", scheduler, workers=1, initial_keys=lambda: [CYCLE_KEY], watches=[
        (WORKLOAD.key, cycle_key), (CLUSTER_QUEUE.key, cycle_key), (LOCAL_QUEUE.key, cycle_key),
        (COHORT.key, cycle_key), (RESOURCE_FLAVOR.key, cycle_key), (NAMESPACE.key, cycle_key)]))
    workload = WorkloadReconciler(store, recorder, metrics, settings.requeuing, pods_ready=settings.pods_ready)
    manager.add(Controller("kueue-workload", workload, for_kind=WORKLOAD,
                           watches=[(CLUSTER_QUEUE.key, workloads_of_cluster_queue(store)),
                                    (LOCAL_QUEUE.key, workloads_of_local_queue(store))]))
    manager.add(Controller("kueue-clusterqueue", ClusterQueueReconciler(store, metrics), for_kind=CLUSTER_QUEUE,
                           workers=1, watches=[(WORKLOAD.key, workload_cluster_queue(store)),
                                               (RESOURCE_FLAVOR.key, all_cluster_queues(store)),
                                               (LOCAL_QUEUE.key, all_cluster_queues(store))]))
    manager.add(Controller("kueue-localqueue", LocalQueueReconciler(store), for_kind=LOCAL_QUEUE, workers=1,
                           watches=[(WORKLOAD.key, workload_local_queue),
                                    (CLUSTER_QUEUE.key, local_queues_of(store))]))
    manager.add(Controller("job", JobReconciler(store, EventRecorder(store, "job-controller"), job_framework(store)),
                           for_kind=JOB, workers=2,
                           watches=[(POD.key, owner_keys(JOB)), (WORKLOAD.key, owner_keys(JOB))]))
    return scheduler


install = add_queue_controllers  # the name every subsystem module offers to KaipServer
