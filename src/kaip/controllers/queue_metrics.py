"""Kueue's Prometheus metrics, with upstream's names and labels (kueue site/content/en/docs/reference/metrics.md).

Every metric carries `replica_role`, as upstream's do; Kaip runs one scheduler, so it is always `standalone`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROLE = "standalone"
_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class QueueMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.pending = Gauge("kueue_pending_workloads", "Number of pending workloads, per cluster_queue and status",
                             ["cluster_queue", "status", "replica_role"], registry=r)
        self.admitted_total = Counter("kueue_admitted_workloads_total", "Total number of admitted workloads",
                                      ["cluster_queue", "priority_class", "replica_role"], registry=r)
        self.quota_reserved_total = Counter("kueue_quota_reserved_workloads_total",
                                            "Total number of quota reserved workloads",
                                            ["cluster_queue", "priority_class", "replica_role"], registry=r)
        self.admission_wait = Histogram("kueue_admission_wait_time_seconds",
                                        "Time from creation or requeue until admission",
                                        ["cluster_queue", "priority_class", "replica_role"],
                                        buckets=_WAIT_BUCKETS, registry=r)
        self.evicted_total = Counter("kueue_evicted_workloads_total", "Number of evicted workloads",
                                     ["cluster_queue", "reason", "underlying_cause", "replica_role"], registry=r)
        self.preempted_total = Counter("kueue_preempted_workloads_total", "Number of preempted workloads",
                                       ["preempting_cluster_queue", "reason", "replica_role"], registry=r)
        self.attempts_total = Counter("kueue_admission_attempts_total", "Scheduling attempts, by result",
                                      ["result", "replica_role"], registry=r)
        self.admitted_active = Gauge("kueue_admitted_active_workloads", "Admitted workloads that are not finished",
                                     ["cluster_queue", "replica_role"], registry=r)
        self.reserving_active = Gauge("kueue_reserving_active_workloads", "Workloads reserving quota",
                                      ["cluster_queue", "replica_role"], registry=r)
        self.resource_usage = Gauge("kueue_cluster_queue_resource_usage", "Resource usage of a cluster_queue",
                                    ["cohort", "cluster_queue", "flavor", "resource", "replica_role"], registry=r)
        self.nominal_quota = Gauge("kueue_cluster_queue_nominal_quota", "Nominal quota of a cluster_queue",
                                   ["cohort", "cluster_queue", "flavor", "resource", "replica_role"], registry=r)
        self.status = Gauge("kueue_cluster_queue_status", "Status of a cluster_queue",
                            ["cluster_queue", "status", "replica_role"], registry=r)
        # fair sharing (present when it is on)
        self.cq_weighted_share = Gauge("kueue_cluster_queue_weighted_share",
                                       "Max over resources of usage above nominal quota / lendable in the cohort, "
                                       "x1000, divided by the weight", ["cluster_queue", "cohort", "replica_role"],
                                       registry=r)
        self.cohort_weighted_share = Gauge("kueue_cohort_weighted_share", "The weighted share of a cohort",
                                           ["cohort", "replica_role"], registry=r)
        # waitForPodsReady's own metrics (present when it is on)
        self.ready_wait = Histogram("kueue_ready_wait_time_seconds",
                                    "Time from creation or requeue until the workload's pods are ready",
                                    ["cluster_queue", "priority_class", "replica_role"],
                                    buckets=_WAIT_BUCKETS, registry=r)
        self.admitted_until_ready = Histogram("kueue_admitted_until_ready_wait_time_seconds",
                                              "Time from admission until the workload's pods are ready",
                                              ["cluster_queue", "priority_class", "replica_role"],
                                              buckets=_WAIT_BUCKETS, registry=r)

    def forget_cluster_queue(self, name: str) -> None:
        for gauge in (self.pending, self.admitted_active, self.reserving_active, self.resource_usage,
                      self.nominal_quota, self.status, self.cq_weighted_share):
            for labels in list(gauge._metrics):  # noqa: SLF001  (prometheus_client has no public removal by prefix)
                names = gauge._labelnames  # noqa: SLF001
                values = dict(zip(names, labels, strict=True))
                if values.get("cluster_queue") == name:
                    gauge.remove(*labels)
