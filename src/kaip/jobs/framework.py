"""The job framework: how any workload kind plugs into queues, modelled on Kueue's jobframework.

A kind implements `GenericJob`: its pod sets (what to reserve quota for), whether it is suspended, how to
suspend it, how to run it with an admitted assignment (flavor node labels go into the pod templates), whether
it finished, and whether it still has pods. `JobFramework.reconcile(job)` then does the rest for every kind,
as Kueue's `ReconcileGenericJob`: it creates the job's Workload, keeps the job suspended until the Workload is
admitted, starts it when it is, stops it when the Workload is evicted, gives the quota back once the job's pods
are gone (the Workload then queues again), and marks the Workload finished when the job is.

The kind's own controller calls `reconcile` first and runs pods only when it answers True: the framework takes
the place of Kueue's suspending webhook, so a queued job never starts a pod before it is admitted.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from kaip.api import errors
from kaip.api.kinds import KindInfo
from kaip.api.kueue import (
    DEFAULT_LOCAL_QUEUE,
    GROUP,
    JOB_UID_LABEL,
    LOCAL_QUEUE,
    PRIORITY_CLASS_LABEL,
    QUEUE_LABEL,
    RESOURCE_FLAVOR,
    WORKLOAD,
    WORKLOAD_PRIORITY_CLASS,
)
from kaip.api.validation import validate_document
from kaip.controlplane.conditions import get_condition, set_condition
from kaip.controlplane.events import EventRecorder
from kaip.jobs import workload as wls
from kaip.scheduling import backoff, podsready
from kaip.scheduling.snapshot import QUEUED_AT_ANNOTATION
from kaip.store.store import Store


@dataclass(frozen=True)
class PodSetInfo:
    """What an admission changes in a pod set: the flavors' node labels and tolerations, and the count."""

    name: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    count: int


@dataclass(frozen=True)
class Finished:
    succeeded: bool
    message: str


class GenericJob(Protocol):
    """The required interface (Kueue's GenericJob). `obj` is the stored object; mutators edit it in place."""

    kind: KindInfo
    obj: dict[str, Any]

    def pod_sets(self) -> list[dict[str, Any]]:
        """Workload pod sets: `[{name, count, template}]`."""
        ...

    def is_suspended(self) -> bool: ...

    def suspend(self) -> None: ...

    def run_with(self, infos: list[PodSetInfo]) -> None:
        """Unsuspend, with the admitted pod sets' node selectors and tolerations injected."""
        ...

    def restore(self, pod_sets: list[dict[str, Any]]) -> None:
        """Undo `run_with` from the Workload's copy of the original pod sets (Kueue's RestorePodSetsInfo)."""
        ...

    def finished(self) -> Finished | None: ...

    def is_active(self) -> bool:
        """Whether any of its pods still exists (running or terminating)."""
        ...

    def pods_ready(self) -> bool:
        """Whether all its pods are ready or succeeded (Kueue's PodsReady; `podsready.all_ready` of its pods)."""
        ...


def workload_name(kind: KindInfo, name: str, uid: str) -> str:
    """Kueue's GetWorkloadNameForOwnerWithGVK: `<kind>-<name>-<hash>`."""
    digest = hashlib.sha1(f"{name}{uid}{kind.kind}{kind.group}".encode()).hexdigest()[:5]
    prefix = f"{kind.kind.lower()}-{name}"[:253 - 6]
    return f"{prefix}-{digest}"


class JobFramework:
    def __init__(self, store: Store, recorder: EventRecorder,
                 requeuing: backoff.RequeuingStrategy | None = None,
                 pods_ready: podsready.PodsReadySettings | None = None) -> None:
        self.store = store
        self.recorder = recorder
        self.requeuing = requeuing or backoff.RequeuingStrategy()
        self.pods_ready = pods_ready  # waitForPodsReady: None when off

    # ---- lookups ------------------------------------------------------------------------------------

    def queue_name(self, job: GenericJob) -> str | None:
        meta = job.obj["metadata"]
        label = (meta.get("labels") or {}).get(QUEUE_LABEL)
        if label:
            return label
        if self.store.try_get(LOCAL_QUEUE, meta["namespace"], DEFAULT_LOCAL_QUEUE) is not None:
            return DEFAULT_LOCAL_QUEUE
        return None

    def workload_of(self, job: GenericJob) -> dict[str, Any] | None:
        meta = job.obj["metadata"]
        return self.store.try_get(WORKLOAD, meta["namespace"], workload_name(job.kind, meta["name"], meta["uid"]))

    # ---- the reconcile ------------------------------------------------------------------------------

    def reconcile(self, job: GenericJob) -> bool:
        """Do the next queueing step for `job`; True when the job may run (admitted, or not queued at all)."""
        wl = self.workload_of(job)
        queue = self.queue_name(job) if wl is None else wl["spec"].get("queueName")
        if queue is None:
            return True
        done = job.finished()
        if done is not None:
            if wl is not None and not wls.is_finished(wl):
                self._status(wl, lambda s: wls.set_finished(s, done.succeeded, done.message))
            return True
        if wl is None:
            if not job.is_suspended():
                self._write_job(job, lambda j: j.suspend())
            self._create_workload(job, queue)
            return False
        if wls.is_finished(wl):
            return False
        admitted = wls.has_quota_reservation(wl) and wls.is_admitted(wl)
        if not admitted or wls.is_evicted(wl) or not wl["spec"].get("active", True):
            if not job.is_suspended():
                message = (wls.get_condition_message(wl, wls.EVICTED) if wls.is_evicted(wl)
                           else "The workload has no reservation")
                self._write_job(job, lambda j: (j.suspend(), j.restore(wl["spec"]["podSets"])))
                self.recorder.record(job.obj, "Normal", "Stopped", message)
                if self.pods_ready is not None:  # the next admission waits to start again
                    self._status(wl, lambda s: set_condition(s, podsready.PODS_READY, False, podsready.WAIT_FOR_START,
                                                             podsready.MESSAGES[podsready.WAIT_FOR_START]))
                return False
            if wls.has_quota_reservation(wl) and (wls.is_evicted(wl) or not wl["spec"].get("active", True)) \
                    and not job.is_active():
                requeue = bool(wl["spec"].get("active", True))
                if requeue and wls.exceeds_requeuing_limit(wl.get("status"), self.requeuing):
                    wls.deactivate(self.store, wl)  # first: the scheduler never sees it pending and active
                self._status(wl, lambda s: wls.unset_quota_reservation(s, requeue=requeue, strategy=self.requeuing))
            return False
        if job.is_suspended():
            infos = self._pod_set_infos(wl)
            self._write_job(job, lambda j: j.run_with(infos))
            self.recorder.record(job.obj, "Normal", "Started",
                                 f"Admitted by clusterQueue {wl['status']['admission']['clusterQueue']}")
        if self.pods_ready is not None:
            self._update_pods_ready(job, wl)
        return True

    def _update_pods_ready(self, job: GenericJob, wl: dict[str, Any]) -> None:
        """Keep the Workload's PodsReady condition in step with the job's pods (the workload controller times
        it out)."""
        previous = get_condition(wl.get("status"), podsready.PODS_READY)
        ready, reason = podsready.condition_for(job.pods_ready(), previous)
        if previous and previous.get("status") == ("True" if ready else "False") and previous.get("reason") == reason:
            return
        self._status(wl, lambda s: set_condition(s, podsready.PODS_READY, ready, reason, podsready.MESSAGES[reason]))

    def _pod_set_infos(self, wl: dict[str, Any]) -> list[PodSetInfo]:
        out = []
        templates = {ps["name"]: ps for ps in wl["spec"]["podSets"]}
        for psa in wl["status"]["admission"].get("podSetAssignments") or []:
            spec = templates[psa["name"]]["template"]["spec"]
            selector = dict(spec.get("nodeSelector") or {})
            tolerations = list(spec.get("tolerations") or [])
            for flavor_name in dict.fromkeys((psa.get("flavors") or {}).values()):
                flavor = self.store.try_get(RESOURCE_FLAVOR, None, flavor_name)
                fspec = (flavor or {}).get("spec") or {}
                selector.update(fspec.get("nodeLabels") or {})
                tolerations += [t for t in fspec.get("tolerations") or [] if t not in tolerations]
            out.append(PodSetInfo(psa["name"], selector, tolerations, int(psa.get("count", 1))))
        return out

    def _create_workload(self, job: GenericJob, queue: str) -> None:
        meta = job.obj["metadata"]
        priority, ref = 0, None
        wpc_name = (meta.get("labels") or {}).get(PRIORITY_CLASS_LABEL)
        if wpc_name:
            wpc = self.store.try_get(WORKLOAD_PRIORITY_CLASS, None, wpc_name)
            if wpc is None:
                self.recorder.record(job.obj, "Warning", "ErrWorkloadCompose",
                                     f'workloadPriorityClass "{wpc_name}" not found')
                raise errors.ApiError(404, "NotFound", f'workloadPriorityClass "{wpc_name}" not found')
            priority = int(wpc["value"])
            ref = {"group": GROUP, "kind": "WorkloadPriorityClass", "name": wpc_name}
        name = workload_name(job.kind, meta["name"], meta["uid"])
        doc: dict[str, Any] = {
            "apiVersion": WORKLOAD.api_version, "kind": "Workload",
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {JOB_UID_LABEL: meta["uid"]},
                         "annotations": {QUEUED_AT_ANNOTATION: f"{time.time():.6f}"},
                         "ownerReferences": [{"apiVersion": job.kind.api_version, "kind": job.kind.kind,
                                              "name": meta["name"], "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"podSets": job.pod_sets(), "queueName": queue, "priority": priority},
        }
        if ref:
            doc["spec"]["priorityClassRef"] = ref
        try:
            self.store.create(WORKLOAD, validate_document(WORKLOAD, doc, namespace=meta["namespace"]))
        except errors.ApiError as err:
            if err.code == 409:
                return
            raise
        self.recorder.record(job.obj, "Normal", "CreatedWorkload", f"Created Workload: {meta['namespace']}/{name}")

    # ---- writes -------------------------------------------------------------------------------------

    def _write_job(self, job: GenericJob, change: Any) -> None:
        meta = job.obj["metadata"]
        kind = job.kind

        def apply(obj: dict[str, Any]) -> dict[str, Any]:
            view = copy.copy(job)
            view.obj = obj
            change(view)
            return obj
        job.obj = self.store.mutate(kind, meta["namespace"], meta["name"], apply)

    def _status(self, wl: dict[str, Any], fn: Any) -> None:
        meta = wl["metadata"]
        self.store.update_status(WORKLOAD, meta["namespace"], meta["name"], lambda s, _o: fn(s))
