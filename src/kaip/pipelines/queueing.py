"""Pipeline tasks through the queues: each task of a run labelled `kueue.x-k8s.io/queue-name` is a job of the job
framework (`kaip.jobs.framework`), with one pod set holding the task's CPU / memory / accelerator requests from the
IR (`.set_cpu_request`, `.set_memory_request`, `.set_accelerator_type/limit` and their limits). Its Pod is created
only once the task's Workload is admitted; the Workload is marked finished when the task is, which gives the quota
back to the next task waiting.

The task is not a stored object: `TaskJob` presents the run's task record as a GenericJob (name
`<run>-<task>`, the run's uid, so the Workload is owned by — and garbage-collected with — the run), and
`TaskFramework` applies the framework's suspend / run changes to that record, which the run's reconciler writes
with the rest of its status.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kaip.api.kinds import KindInfo
from kaip.api.kueue import JOB_UID_LABEL, PRIORITY_CLASS_LABEL, QUEUE_LABEL
from kaip.api.pipelines import PIPELINE_RUN
from kaip.jobs.framework import Finished, GenericJob, JobFramework, PodSetInfo
from kaip.store.store import Change, Store


def _quantity(text: Any, number: Any, unit: str = "") -> str | None:
    if text not in (None, ""):
        return str(text)
    if number not in (None, "", 0, 0.0):
        value = float(number)
        return (str(int(value)) if value.is_integer() else repr(value)) + unit
    return None


def task_requests(container: dict[str, Any]) -> dict[str, str]:
    """The Kubernetes resource requests of a kfp task (`deploymentSpec.executors.<e>.container.resources`, as
    kfp 2.x compiles them: `resourceCpuRequest` "2", `resourceMemoryRequest` "1G", `accelerator{resourceType,
    resourceCount}`, or the older float fields). A limit without a request is the request, as in Kubernetes."""
    res = container.get("resources") or {}
    out: dict[str, str] = {}
    cpu = (_quantity(res.get("resourceCpuRequest"), res.get("cpuRequest"))
           or _quantity(res.get("resourceCpuLimit"), res.get("cpuLimit")))
    memory = (_quantity(res.get("resourceMemoryRequest"), res.get("memoryRequest"), "G")
              or _quantity(res.get("resourceMemoryLimit"), res.get("memoryLimit"), "G"))
    if cpu:
        out["cpu"] = cpu
    if memory:
        out["memory"] = memory
    acc = res.get("accelerator") or {}
    kind = acc.get("resourceType") or acc.get("type")
    count = acc.get("resourceCount") or acc.get("count")
    if kind and count not in (None, "", "0", 0):
        out[str(kind)] = str(count)
    return out


def queue_labels(meta: dict[str, Any]) -> dict[str, str]:
    """The queue and priority labels of an object (a Trigger or RecurringRun passes them to the runs it starts)."""
    return {k: v for k, v in (meta.get("labels") or {}).items() if k in (QUEUE_LABEL, PRIORITY_CLASS_LABEL)}


def task_job_name(run: str, task_id: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-")[:30].strip("-") or "t"
    return f"{run[:40]}-{slug}-{hashlib.sha1(task_id.encode()).hexdigest()[:6]}"


@dataclass
class TaskJob:
    """A pipeline task record as the job framework's GenericJob."""

    obj: dict[str, Any]
    record: dict[str, Any]
    requests: dict[str, str]
    pod_active: bool = False

    @property
    def kind(self) -> KindInfo:
        return PIPELINE_RUN

    @classmethod
    def of(cls, run: dict[str, Any], task_id: str, record: dict[str, Any], requests: dict[str, str], *,
           pod_active: bool = False) -> TaskJob:
        meta = run["metadata"]
        obj = {"metadata": {"name": task_job_name(meta["name"], task_id), "namespace": meta["namespace"],
                            "uid": meta["uid"], "labels": queue_labels(meta)},
               "spec": {"suspend": record.get("suspended", True)}}
        return cls(obj, record, requests, pod_active)

    def pod_sets(self) -> list[dict[str, Any]]:
        container: dict[str, Any] = {"name": "main", "image": "kaip-pipeline-task"}
        if self.requests:
            container["resources"] = {"requests": dict(self.requests)}
        return [{"name": "main", "count": 1, "template": {"spec": {"containers": [container]}}}]

    def is_suspended(self) -> bool:
        return bool(self.obj["spec"].get("suspend", True))

    def suspend(self) -> None:
        self.obj["spec"]["suspend"] = True

    def run_with(self, infos: list[PodSetInfo]) -> None:
        self.obj["spec"]["suspend"] = False  # locally every node is this machine: nothing to select

    def restore(self, pod_sets: list[dict[str, Any]]) -> None:
        return None

    def finished(self) -> Finished | None:
        phase = self.record.get("phase")
        if phase in ("Succeeded", "Failed"):
            return Finished(phase == "Succeeded", self.record.get("message") or f"task {phase.lower()}")
        return None

    def is_active(self) -> bool:
        return self.pod_active


class TaskFramework(JobFramework):
    """The job framework for pipeline tasks: queued only when the run names a LocalQueue (no default queue), and
    the job's changes are applied to the task record in memory (the run's status carries them)."""

    def queue_name(self, job: GenericJob) -> str | None:
        return (job.obj["metadata"].get("labels") or {}).get(QUEUE_LABEL) or None

    def _write_job(self, job: GenericJob, change: Any) -> None:
        change(job)
        if isinstance(job, TaskJob):
            job.record["suspended"] = job.is_suspended()


def runs_of_workload(store: Store) -> Any:
    """Map a Workload change to the PipelineRun that owns it (by the job uid label; its owner reference carries
    the task's name, not the run's)."""
    def mapper(change: Change) -> Iterable[tuple[str, str]]:
        meta = change.object["metadata"]
        if not any(r.get("kind") == PIPELINE_RUN.kind for r in meta.get("ownerReferences") or []):
            return
        uid = (meta.get("labels") or {}).get(JOB_UID_LABEL)
        located = store.locate_uid(uid) if uid else None
        if located is not None and located[0] == PIPELINE_RUN.key:
            yield (located[1], located[2])
    return mapper
