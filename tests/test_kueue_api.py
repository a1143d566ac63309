"""Kueue and batch/v1 kinds: strict schemas, upstream validation messages, v1beta1 conversion, Job planning."""

from __future__ import annotations

from typing import Any

import pytest

from kaip.api.batch import JOB, job_status
from kaip.api.errors import ApiError
from kaip.api.kueue import CLUSTER_QUEUE, COHORT, LOCAL_QUEUE, RESOURCE_FLAVOR, WORKLOAD, cq_v1beta1_to_v1beta2
from kaip.api.validation import validate_document
from kaip.controllers.job import plan
from kaip.jobs.framework import workload_name
from kaip.scheduling.quantity import parse_quantity


def causes(info: Any, doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ApiError) as err:
        validate_document(info, doc, namespace="default")
    assert err.value.code == 422
    return {c.field: c.message for c in err.value.causes}


def cq(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": "q"}, "spec": spec}


def rg(resources: list[dict[str, Any]], covered: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"coveredResources": covered or [r["name"] for r in resources],
             "flavors": [{"name": "f", "resources": resources}]}]


def test_cluster_queue_defaults_as_upstream() -> None:
    out = validate_document(CLUSTER_QUEUE, cq({"resourceGroups": rg([{"name": "cpu", "nominalQuota": 4}])}),
                            namespace=None)
    spec = out["spec"]
    assert spec["queueingStrategy"] == "BestEffortFIFO" and spec["stopPolicy"] == "None"
    assert spec["flavorFungibility"] == {"whenCanBorrow": "MayStopSearch", "whenCanPreempt": "TryNextFlavor"}
    assert spec["preemption"] == {"reclaimWithinCohort": "Never", "withinClusterQueue": "Never",
                                  "borrowWithinCohort": {"policy": "Never"}}  # upstream: default {} then Never
    assert "namespaceSelector" not in spec  # null: no namespace, as upstream


@pytest.mark.parametrize("info", [CLUSTER_QUEUE, COHORT, RESOURCE_FLAVOR])
def test_no_spec_is_stored_without_one_as_upstream(info: Any) -> None:
    doc = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": info.kind, "metadata": {"name": "x"}}
    assert "spec" not in validate_document(info, doc, namespace=None)


def test_every_quantity_form_is_accepted_and_others_refused_with_kubernetes_message() -> None:
    for value in ("5Ei", "5E", "1Pi", "3P", "500m", "1n", "2u", "1k", "1e3", "1E-2", "1e1.5", ".5", "+2Gi", 7):
        doc = cq({"resourceGroups": rg([{"name": "cpu", "nominalQuota": value}])})
        validate_document(CLUSTER_QUEUE, doc, namespace=None)
    assert parse_quantity("5Ei") == 5 * 2 ** 60 * 1000 and parse_quantity("1e1.5") == 31623  # milli, rounded up
    path = "spec.resourceGroups[0].flavors[0].resources[0].nominalQuota"
    for value in ("5Eix", "1.2.3", "e3", "5 Gi", "1e"):
        got = causes(CLUSTER_QUEUE, cq({"resourceGroups": rg([{"name": "cpu", "nominalQuota": value}])}))
        assert "quantities must match the regular expression" in got[path], (value, got)
    got = causes(CLUSTER_QUEUE, cq({"resourceGroups": rg([{"name": "cpu", "nominalQuota": "1e65"}])}))
    assert "quantity out of range" in got[path]


def test_cluster_queue_rules_with_upstream_messages_at_their_paths() -> None:
    got = causes(CLUSTER_QUEUE, cq({"resourceGroups": rg([{"name": "cpu", "nominalQuota": 4, "lendingLimit": 1}])}))
    assert got == {"spec.resourceGroups[0].flavors[0].resources[0].lendingLimit":
                   'Invalid value: "1": must be nil when cohort is empty'}
    got = causes(CLUSTER_QUEUE, cq({"cohortName": "c", "resourceGroups": rg(
        [{"name": "cpu", "nominalQuota": 1, "lendingLimit": 2}])}))
    assert got["spec.resourceGroups[0].flavors[0].resources[0].lendingLimit"] == \
        'Invalid value: "2": must be less than or equal to the nominalQuota'
    got = causes(CLUSTER_QUEUE, cq({"resourceGroups": rg([{"name": "memory", "nominalQuota": "1Gi"}], ["cpu"])}))
    assert got["spec.resourceGroups[0].flavors[0].resources[0].name"] == \
        'Invalid value: "memory": must match the name in coveredResources'
    got = causes(CLUSTER_QUEUE, cq({"preemption": {"reclaimWithinCohort": "Never",
                                                   "borrowWithinCohort": {"policy": "LowerPriority"}}}))
    assert got["spec.preemption"] == "reclaimWithinCohort=Never and borrowWithinCohort.Policy!=Never"
    got = causes(CLUSTER_QUEUE, cq({"queueingStrategy": "LIFO", "resourceGroups": rg(
        [{"name": "cpu", "nominalQuota": "lots"}])}))
    assert set(got) == {"spec.queueingStrategy", "spec.resourceGroups[0].flavors[0].resources[0].nominalQuota"}


def test_unknown_and_unsupported_fields_are_refused_with_their_path() -> None:
    got = causes(CLUSTER_QUEUE, cq({"cohrt": "x", "admissionChecksStrategy": {"admissionChecks": [{"name": "p"}]}}))
    assert got["spec.cohrt"] == "unknown field"
    assert "admission checks" in got["spec.admissionChecksStrategy"]
    got = causes(RESOURCE_FLAVOR, {"metadata": {"name": "f"}, "spec": {"topologyName": "t"}})
    assert "topology-aware scheduling" in got["spec.topologyName"]
    wl = {"metadata": {"name": "w"}, "spec": {"podSets": [{"name": "main", "count": 2, "minCount": 1, "template": {
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}]}}
    assert "partial admission" in causes(WORKLOAD, wl)["spec.podSets[0].minCount"]


def test_local_queue_and_workload_rules() -> None:
    assert causes(LOCAL_QUEUE, {"metadata": {"name": "q"}, "spec": {"clusterQueue": "Bad_Name"}})
    wl = {"metadata": {"name": "w"}, "spec": {
        "priorityClassRef": {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "high"},
        "podSets": [{"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}]}}
    assert causes(WORKLOAD, wl) == {"spec": "priority should not be nil when priorityClassRef is set"}


def test_v1beta1_cluster_queue_is_converted() -> None:
    doc = cq_v1beta1_to_v1beta2({"spec": {"cohort": "org", "flavorFungibility": {"whenCanBorrow": "Borrow",
                                                                                "whenCanPreempt": "Preempt"}}})
    assert doc["spec"] == {"cohortName": "org", "flavorFungibility": {"whenCanBorrow": "MayStopSearch",
                                                                      "whenCanPreempt": "MayStopSearch"}}


def job_doc(**spec: Any) -> dict[str, Any]:
    doc = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "default", "uid": "u"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "c", "command": ["true"]}]}}, **spec}}
    return validate_document(JOB, doc, namespace="default")


def pod(phase: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{phase}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase}}


def test_job_validation_matches_kubernetes() -> None:
    doc = job_doc()
    assert doc["spec"]["parallelism"] == 1 and doc["spec"]["completions"] == 1 and doc["spec"]["backoffLimit"] == 6
    bad = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "command": ["x"]}]}}}}
    assert causes(JOB, bad)["spec.template.spec.restartPolicy"] == \
        'Unsupported value: "Always": supported values: "OnFailure", "Never"'


def test_job_plan_creates_completes_fails_and_suspends() -> None:
    now = 1e9
    p = plan(job_doc(parallelism=3, completions=4), [], now)
    assert len(p.create) == 3 and p.status["active"] == 3
    p = plan(job_doc(parallelism=3, completions=4), [pod("Succeeded")] * 3 + [pod("Running")], now)
    assert p.create == [] and p.status["succeeded"] == 3
    done = plan(job_doc(completions=2), [pod("Succeeded")] * 2, now)
    assert job_status({"status": done.status}) == "Complete"
    assert {c["type"] for c in done.status["conditions"]} == {"SuccessCriteriaMet", "Complete"}
    failed = plan(job_doc(backoffLimit=1), [pod("Failed")] * 2, now)
    cond = next(c for c in failed.status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    suspended = plan(job_doc(suspend=True), [pod("Running"), pod("Running", deleting=True)], now)
    assert suspended.delete == ["p-Running"] and suspended.status["terminating"] == 1
    assert next(c for c in suspended.status["conditions"] if c["type"] == "Suspended")["reason"] == "JobSuspended"
    indexed = plan(job_doc(completionMode="Indexed", completions=3, parallelism=2), [], now)
    assert indexed.create == [0, 1]


def test_workload_names_follow_kueue() -> None:
    name = workload_name(JOB, "train", "uid-1")
    assert name.startswith("job-train-") and len(name) == len("job-train-") + 5
    assert name == workload_name(JOB, "train", "uid-1") != workload_name(JOB, "train", "uid-2")
