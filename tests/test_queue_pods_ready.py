"""Kueue's waitForPodsReady: the PodsReady condition and the timeout as pure decisions, then on a live server a
Job whose pod never stays ready is evicted (PodsReadyTimeout), backs off, is readmitted, and is deactivated past
the requeuing limit, while a healthy Job's pods are ready and it is left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import kaip
from kaip.controllers.kueue import queue_settings
from kaip.scheduling.podsready import (
    RECOVERED,
    STARTED,
    WAIT_FOR_RECOVERY,
    WAIT_FOR_START,
    PodsReadySettings,
    all_ready,
    condition_for,
    timeout_verdict,
)
from kaip.testing.live import LiveServer, live_server


def test_the_condition_follows_the_pods() -> None:
    assert condition_for(False, None) == (False, WAIT_FOR_START)
    assert condition_for(True, {"status": "False", "reason": WAIT_FOR_START}) == (True, STARTED)
    assert condition_for(False, {"status": "True", "reason": STARTED}) == (False, WAIT_FOR_RECOVERY)
    assert condition_for(False, {"status": "False", "reason": WAIT_FOR_RECOVERY}) == (False, WAIT_FOR_RECOVERY)
    assert condition_for(True, {"status": "False", "reason": WAIT_FOR_RECOVERY}) == (True, RECOVERED)
    assert condition_for(True, {"status": "True", "reason": RECOVERED}) == (True, RECOVERED)


def test_the_timeout_counts_from_admission_and_recovery_from_the_condition() -> None:
    s = PodsReadySettings(timeout_seconds=60, recovery_timeout_seconds=10)
    waiting = {"status": "False", "reason": WAIT_FOR_START}
    assert timeout_verdict(s, 1030, 1000, waiting, 1000) == timeout_verdict(s, 1030, 1000, None, None)
    assert timeout_verdict(s, 1030, 1000, waiting, 1000).recheck_after == 30
    assert timeout_verdict(s, 1060, 1000, waiting, 1000).evict
    assert timeout_verdict(s, 1060, 1000, waiting, 1000).cause == WAIT_FOR_START
    assert not timeout_verdict(s, 9999, 1000, {"status": "True", "reason": STARTED}, 1001).evict
    recovering = {"status": "False", "reason": WAIT_FOR_RECOVERY}
    assert timeout_verdict(s, 5005, 1000, recovering, 5000).recheck_after == 5
    assert timeout_verdict(s, 5010, 1000, recovering, 5000).cause == WAIT_FOR_RECOVERY
    assert not timeout_verdict(PodsReadySettings(60), 9999, 1000, recovering, 5000).evict  # no recoveryTimeout


def pod(phase: str, ready: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_all_pods_ready_or_succeeded() -> None:
    assert not all_ready([])
    assert all_ready([pod("Running", True), pod("Succeeded", False)])
    assert not all_ready([pod("Running", True), pod("Pending", False)])
    assert not all_ready([pod("Running", False)])
    assert all_ready([pod("Running", True), pod("Running", False, deleting=True)])
    assert not all_ready([pod("Failed", False)])


def test_settings_from_the_environment() -> None:
    assert queue_settings({}).pods_ready is None
    s = queue_settings({"KAIP_KUEUE_PODS_READY_TIMEOUT_SECONDS": "300",
                        "KAIP_KUEUE_PODS_READY_RECOVERY_TIMEOUT_SECONDS": "60"})
    assert s.pods_ready == PodsReadySettings(300, 60)
    with pytest.raises(ValueError, match="needs KAIP_KUEUE_PODS_READY_TIMEOUT_SECONDS"):
        queue_settings({"KAIP_KUEUE_PODS_READY_RECOVERY_TIMEOUT_SECONDS": "60"})


# ---- on a live server -------------------------------------------------------------------------------------------

NS = "ready-team"
QUEUES = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {{name: ready-flavor}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {{name: ready-cq}}
spec:
  namespaceSelector: {{}}
  resourceGroups:
  - coveredResources: [cpu]
    flavors:
    - name: ready-flavor
      resources: [{{name: cpu, nominalQuota: "4"}}]
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {{name: ready-lq, namespace: {NS}}}
spec: {{clusterQueue: ready-cq}}
"""


def job(name: str, script: str, restart: str = "Never") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": NS, "labels": {"kueue.x-k8s.io/queue-name": "ready-lq"}},
            "spec": {"backoffLimit": 100, "template": {"spec": {
                "restartPolicy": restart, "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "command": ["python", "-c", script],
                                "resources": {"requests": {"cpu": "1"}}}]}}}}


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("KAIP_KUEUE_PODS_READY_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("KAIP_KUEUE_PODS_READY_RECOVERY_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("KAIP_KUEUE_BACKOFF_BASE_SECONDS", "1")
    monkeypatch.setenv("KAIP_KUEUE_BACKOFF_LIMIT_COUNT", "1")
    with live_server(tmp_path / "home", bookmark_seconds=0.5) as server:
        yield server


def workload_of(client: kaip.Client, job_name: str) -> kaip.Object | None:
    return next((w for w in client.list("workloads", NS) if w.name.startswith(f"job-{job_name}-")), None)


def test_pods_that_never_stay_ready_are_evicted_requeued_and_deactivated(live: LiveServer) -> None:
    with kaip.Client(live.url, live.token, namespace=NS) as client:
        client.apply(QUEUES)
        # A container that keeps crashing (restarted in place): never ready for long.
        client.create(job("crashes", "import sys, time; time.sleep(0.3); sys.exit(1)", restart="OnFailure"))
        client.create(job("healthy", "import time; time.sleep(8)"))

        def deactivated(_: Any) -> bool:
            wl = workload_of(client, "crashes")
            return wl is not None and wl.spec.get("active") is False

        client.wait("jobs", "crashes", deactivated, timeout=90)
        wl = workload_of(client, "crashes")
        assert wl is not None
        evictions = wl.status["schedulingStats"]["evictions"]
        assert sum(e["count"] for e in evictions if e["reason"] == "PodsReadyTimeout") == 2, evictions
        assert {e["underlyingCause"] for e in evictions} <= {"WaitForStart", "WaitForRecovery"}
        assert wl.status["requeueState"]["count"] == 1  # backed off once, then past the limit
        assert "RequeuingLimitExceeded" in wl.condition("QuotaReserved")["message"]
        evicted = wl.condition("Evicted")
        assert evicted["reason"] == "PodsReadyTimeout"
        assert evicted["message"] == f"Exceeded the PodsReady timeout {NS}/{wl.name}"
        reasons = {e["reason"] for e in client.list("events", NS) if e["involvedObject"]["name"] == wl.name}
        assert "EvictedDueToPodsReadyTimeout" in reasons
        assert not [p for p in client.list("pods", NS, selector="batch.kubernetes.io/job-name=crashes")
                    if p.status.get("phase") == "Running"]

        healthy = workload_of(client, "healthy")
        assert healthy is not None
        ready = healthy.condition("PodsReady")
        assert ready and (ready["status"], ready["reason"]) == ("True", "Started")
        assert not healthy.is_true("Evicted")
        client.wait("jobs", "healthy", "Complete", timeout=60)

        metrics = client.rest.http.get("/metrics").text
        counts = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                  if s.labels.get("cluster_queue") == "ready-cq"}
        assert counts["kueue_admitted_until_ready_wait_time_seconds_count"] >= 1
        assert counts["kueue_ready_wait_time_seconds_count"] >= 1
        evicted_total = [s for f in text_string_to_metric_families(metrics) for s in f.samples
                         if s.name == "kueue_evicted_workloads_total" and s.labels.get("reason") == "PodsReadyTimeout"]
        assert sum(s.value for s in evicted_total) == 2
