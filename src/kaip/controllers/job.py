"""Job reconciler: runs a `batch/v1` Job as Pods it owns, the way Kubernetes' job controller does.

It first asks the job framework (queues): a queued Job runs only once its Workload is admitted, and is
suspended when evicted. What to do with the pods is the pure function `plan`: how many to create, which to
delete, and the status (active/succeeded/failed/ready, startTime/completionTime, and upstream's conditions
Suspended, Complete, SuccessCriteriaMet, Failed, FailureTarget).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from kaip.api import errors
from kaip.api.batch import COMPLETION_INDEX_ANNOTATION, CONTROLLER_UID_LABEL, JOB, JOB_NAME_LABEL
from kaip.api.core import POD
from kaip.api.validation import _random_suffix, validate_document
from kaip.controlplane.conditions import is_true, set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.jobs.batch import BatchJob, pod_is_active
from kaip.jobs.framework import JobFramework
from kaip.scheduling.snapshot import parse_time
from kaip.store.store import Store, now_rfc3339

POD_SPEC_FIELDS = ("containers", "restartPolicy", "terminationGracePeriodSeconds", "activeDeadlineSeconds",
                   "serviceAccountName", "priorityClassName", "schedulerName")


@dataclass
class JobPlan:
    create: list[int | None] = field(default_factory=list)  # one entry per pod to create: its index, if Indexed
    delete: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def _phase(pod: dict[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _index(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None else None


def _finish(status: dict[str, Any], type_: str, reason: str, message: str) -> None:
    if type_ == "Complete":
        set_condition(status, "SuccessCriteriaMet", True, reason, message)
    else:
        set_condition(status, "FailureTarget", True, reason, message)
    set_condition(status, type_, True, reason, message)
    status["completionTime"] = now_rfc3339()


def plan(job: dict[str, Any], pods: list[dict[str, Any]], now: float) -> JobPlan:
    spec = job["spec"]
    status = copy.deepcopy(job.get("status") or {})
    out = JobPlan(status=status)
    running = [p for p in pods if pod_is_active(p) and not p["metadata"].get("deletionTimestamp")]
    succeeded = [p for p in pods if _phase(p) == "Succeeded"]
    failed = [p for p in pods if _phase(p) == "Failed"]
    status["succeeded"] = len(succeeded)
    status["failed"] = len(failed)
    status["terminating"] = sum(1 for p in pods if p["metadata"].get("deletionTimestamp"))
    status["ready"] = sum(1 for p in running if is_true(p.get("status"), "Ready"))

    if is_true(status, "Complete") or is_true(status, "Failed"):
        out.delete = [p["metadata"]["name"] for p in running]
        status["active"] = 0
        return out
    if spec.get("suspend"):
        out.delete = [p["metadata"]["name"] for p in running]
        status["active"] = 0
        if set_condition(status, "Suspended", True, "JobSuspended", "Job suspended"):
            out.events.append(("Normal", "Suspended", "Job suspended"))
        status.pop("startTime", None)
        return out
    if is_true(status, "Suspended"):
        set_condition(status, "Suspended", False, "JobResumed", "Job resumed")
        out.events.append(("Normal", "Resumed", "Job resumed"))
    status.setdefault("startTime", now_rfc3339())

    completions = spec.get("completions")
    parallelism = int(spec.get("parallelism") or 0)
    deadline = spec.get("activeDeadlineSeconds")
    elapsed = now - parse_time(status["startTime"])
    if len(failed) > int(spec.get("backoffLimit", 6)):
        _finish(status, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    elif deadline and elapsed >= deadline:
        _finish(status, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    elif (completions is not None and len(succeeded) >= completions) or \
            (completions is None and succeeded and not running):
        _finish(status, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
    if is_true(status, "Complete") or is_true(status, "Failed"):
        out.delete = [p["metadata"]["name"] for p in running]
        status["active"] = 0
        kind = "Normal" if is_true(status, "Complete") else "Warning"
        reason = "Completed" if kind == "Normal" else next(c["reason"] for c in status["conditions"]
                                                           if c["type"] == "Failed")
        out.events.append((kind, reason, "Job completed" if kind == "Normal" else "Job failed"))
        return out

    if spec.get("completionMode") == "Indexed":
        done = {_index(p) for p in succeeded}
        busy = {_index(p) for p in running}
        free = [i for i in range(int(completions or 0)) if i not in done and i not in busy]
        out.create = list(free[:max(0, parallelism - len(running))])
    else:
        want = parallelism if completions is None else min(parallelism, int(completions) - len(succeeded))
        if completions is None and succeeded:
            want = 0  # a work queue: once one pod succeeded, no new ones start
        out.create = [None] * max(0, want - len(running))
    status["active"] = len(running) + len(out.create)
    if deadline:
        out.requeue_after = max(0.1, deadline - elapsed)
    return out


class JobReconciler:
    def __init__(self, store: Store, recorder: EventRecorder, framework: JobFramework) -> None:
        self.store = store
        self.recorder = recorder
        self.framework = framework

    def _pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        return self.store.owned(POD, job["metadata"]["uid"])

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        job = self.store.try_get(JOB, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None
        pods = self._pods(job)
        adapter = BatchJob(job, pods)
        may_run = self.framework.reconcile(adapter)
        job = adapter.obj
        if not may_run and not job["spec"].get("suspend"):
            return Result(requeue_after=1.0)
        p = plan(job, pods, time.time())
        for pod_name in p.delete:
            try:
                self.store.delete(POD, namespace, pod_name)
            except errors.ApiError as err:
                if err.code != 404:
                    raise
        for index in p.create:
            self._create_pod(job, index)
        if p.status != (job.get("status") or {}):
            self.store.replace_status(JOB, namespace, name, p.status)
        for type_, reason, message in p.events:
            self.recorder.record(job, type_, reason, message)
        return Result(requeue_after=p.requeue_after) if p.requeue_after else None

    def _create_pod(self, job: dict[str, Any], index: int | None) -> None:
        meta = job["metadata"]
        template = job["spec"]["template"]
        pod_spec = {k: copy.deepcopy(v) for k, v in template["spec"].items() if k in POD_SPEC_FIELDS}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({JOB_NAME_LABEL: meta["name"], CONTROLLER_UID_LABEL: meta["uid"],
                       "job-name": meta["name"], "controller-uid": meta["uid"]})
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        if index is not None:
            annotations[COMPLETION_INDEX_ANNOTATION] = str(index)
            for c in pod_spec["containers"]:
                c["env"] = [*(c.get("env") or []), {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
        prefix = f"{meta['name']}-{index}-" if index is not None else f"{meta['name']}-"
        doc = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": prefix + _random_suffix(), "namespace": meta["namespace"], "labels": labels,
                            "annotations": annotations or None,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
               "spec": pod_spec}
        if not annotations:
            doc["metadata"].pop("annotations")
        self.store.create(POD, validate_document(POD, doc, namespace=meta["namespace"]))
        self.recorder.record(job, "Normal", "SuccessfulCreate", f"Created pod: {doc['metadata']['name']}")
