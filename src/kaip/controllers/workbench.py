"""Workbench reconciler: run JupyterLab as a Pod the Workbench owns, behind the proxy at
`/workbenches/{namespace}/{name}/`, and cull it when idle.

Each pass: a stopped Workbench (Kubeflow's `kubeflow-resource-stopped` annotation) has no pod and no Workload, so
it holds no quota. Otherwise the job framework (Kueue's seam; the Workbench is a `GenericJob`) decides whether it
may run: queued, it stays suspended until its Workload is admitted, and is suspended again when evicted. A running
Workbench gets its pod, is asked `api/status` (and `api/kernels`) with JupyterLab's own token, is Ready once that
answers, and is stopped by the culler — the same annotation, with the time — once idle longer than
`spec.culling.idleSeconds`. What to render and when to cull are the pure `kaip.workbench.render` and
`kaip.workbench.culling`; this module reads, writes and probes.
"""

from __future__ import annotations

import copy
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kaip.api import errors
from kaip.api.core import POD, ROLE_BINDING, SERVICE_ACCOUNT
from kaip.api.kinds import KindInfo
from kaip.api.kueue import WORKLOAD
from kaip.api.validation import validate_document
from kaip.api.workbench import DEFAULT_SERVICE_ACCOUNT, STOP_ANNOTATION, WORKBENCH
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.jobs import workload as wls
from kaip.jobs.batch import pod_is_active
from kaip.jobs.framework import Finished, JobFramework, PodSetInfo
from kaip.scheduling import podsready
from kaip.scheduling.quantity import QuantityError, parse_quantity
from kaip.store.store import Store, now_rfc3339
from kaip.workbench import culling, render
from kaip.workbench.proxy import Routes, Upstream

STARTING_POLL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 3.0
MANAGED_BY = {"app.kubernetes.io/managed-by": "kaip-workbench"}


@dataclass
class WorkbenchJob:
    """A Workbench as the job framework's GenericJob. It never finishes: stopping it removes its Workload."""

    obj: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> KindInfo:
        return WORKBENCH

    def pod_sets(self) -> list[dict[str, Any]]:
        return render.pod_sets(self.obj)

    def is_suspended(self) -> bool:
        return bool(self.obj["spec"].get("suspend"))

    def suspend(self) -> None:
        self.obj["spec"]["suspend"] = True

    def run_with(self, infos: list[PodSetInfo]) -> None:
        # Locally every flavor is this machine: its node labels have nothing to select, so only unsuspend.
        self.obj["spec"]["suspend"] = False

    def restore(self, pod_sets: list[dict[str, Any]]) -> None:
        return None

    def finished(self) -> Finished | None:
        return None

    def is_active(self) -> bool:
        return any(pod_is_active(p) for p in self.pods)

    def pods_ready(self) -> bool:
        return podsready.all_ready(self.pods)


def requests_of(pod_sets: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, dict[str, int]]]]:
    """Pure: what quota pod sets ask for, quantities normalised (`1000m` is `1`), to compare a Workload with its
    Workbench as Kueue's equivalence check does."""
    out = []
    for ps in pod_sets:
        resources: dict[str, dict[str, int]] = {}
        for container in ps.get("template", {}).get("spec", {}).get("containers") or []:
            for part in ("requests", "limits"):
                for name, value in ((container.get("resources") or {}).get(part) or {}).items():
                    try:
                        resources.setdefault(part, {})[name] = parse_quantity(value)
                    except QuantityError:
                        resources.setdefault(part, {})[name] = -1
        out.append((ps["name"], int(ps.get("count", 1)), resources))
    return out


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    """A free loopback port for JupyterLab (the kernel's pick; JupyterLab binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_or_create_token(path: Path) -> str:
    """JupyterLab's own token, kept with the workbench's state (mode 0600) so that it survives restarts and never
    passes through the API (JupyterLab reads it from `JUPYTER_TOKEN_FILE`)."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)  # no newline: JupyterLab uses the file's content as it is
    os.replace(tmp, path)
    return token


class WorkbenchReconciler:
    def __init__(self, store: Store, framework: JobFramework, recorder: EventRecorder, routes: Routes,
                 state_root: Path, server_url: Callable[[], str | None] = lambda: None,
                 port_source: Callable[[], int] = free_port) -> None:
        self.store = store
        self.framework = framework
        self.recorder = recorder
        self.routes = routes
        self.state_root = state_root
        self.server_url = server_url
        self.port_source = port_source
        self.http = httpx.Client(timeout=PROBE_TIMEOUT_SECONDS, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        obj = self.store.try_get(WORKBENCH, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self.routes.drop(namespace, name)  # its pod, Workload and token go with it (owner references)
            return None
        pods = self.store.owned(POD, obj["metadata"]["uid"])
        status = copy.deepcopy(obj.get("status") or {})
        status["url"] = render.url(self.server_url(), namespace, name)
        stopped_at = (obj["metadata"].get("annotations") or {}).get(STOP_ANNOTATION)
        if stopped_at is not None:
            self._delete_workload(obj)
            culled = status.get("culledAt") == stopped_at
            return self._down(obj, status, pods, "Culled" if culled else "Stopped",
                              f"culled after {obj['spec']['culling']['idleSeconds']}s without activity" if culled
                              else f"stopped by the {STOP_ANNOTATION} annotation ({stopped_at})")
        status.pop("culledAt", None)
        job = WorkbenchJob(obj, pods)
        wl = self.framework.workload_of(job)
        if wl is not None and requests_of(wl["spec"]["podSets"]) != requests_of(job.pod_sets()):
            # Resized: queue again for the new requests (Kueue replaces a Workload that no longer matches its job).
            self._delete_workload(obj)
        may_run = self.framework.reconcile(job)
        obj = job.obj
        if not may_run or job.is_suspended():
            wl = self.framework.workload_of(job)
            if wl is not None and wls.is_evicted(wl):
                return self._down(obj, status, pods, "Evicted", wls.get_condition_message(wl, wls.EVICTED))
            if wl is not None:
                return self._down(obj, status, pods, "Queued",
                                  f"waiting for LocalQueue {wl['spec'].get('queueName')} to admit its Workload")
            return self._down(obj, status, pods, "Suspended", "spec.suspend is true")
        return self._up(obj, status, pods)

    # ---- running ----------------------------------------------------------------------------------------------

    def _up(self, obj: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]]) -> Result | None:
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        where = render.paths(self.state_root, namespace, name)
        where.work.mkdir(parents=True, exist_ok=True)
        token = read_or_create_token(where.token)
        self._ensure_account(obj)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        pod = next((p for p in live if p["metadata"]["name"] == render.pod_name(name)), None)
        for other in live:
            if other is not pod:
                self._delete_pod(other)
        if pod is not None and (pod["metadata"].get("annotations") or {}).get(render.SPEC_HASH_ANNOTATION) \
                != render.spec_hash(obj):
            self._delete_pod(pod)  # its spec changed: replace it, as a StatefulSet rolls its pod
            self.recorder.record(obj, "Normal", "Restarting", "the spec changed: replacing the JupyterLab pod")
            pod = None
        if pod is None:
            self.routes.drop(namespace, name)
            if not any(p["metadata"]["name"] == render.pod_name(name) for p in pods):  # the old one has gone
                self._create_pod(obj, where)
            return self._starting(obj, status, "starting JupyterLab")
        port = int(pod["metadata"]["annotations"][render.PORT_ANNOTATION])
        base = f"http://127.0.0.1:{port}{render.base_path(namespace, name)}"
        activity = self._probe(base, token)
        status["containerState"] = next(iter((pod.get("status") or {}).get("containerStatuses") or []),
                                        {}).get("state", {})
        if activity is None:
            self.routes.drop(namespace, name)
            return self._starting(obj, status, "waiting for JupyterLab to answer")
        self.routes.set(namespace, name, Upstream(f"http://127.0.0.1:{port}", token))
        now = time.time()
        idle_limit = int(obj["spec"]["culling"]["idleSeconds"])
        status["lastActivity"] = rfc3339(culling.last_active(activity, now))
        status["readyReplicas"] = 1
        status["phase"] = "Running"
        if set_condition(status, "Ready", True, "Running", "JupyterLab is answering",
                         generation=meta.get("generation")):
            self.recorder.record(obj, "Normal", "Ready", f"JupyterLab is ready at {status['url']}")
        if culling.should_cull(activity, now, idle_limit):
            stamp = now_rfc3339()
            status["culledAt"] = stamp
            self._write(obj, status)
            self._annotate(obj, stamp)
            self.recorder.record(obj, "Normal", "Culled",
                                 f"no activity since {status['lastActivity']} (idleSeconds {idle_limit}): stopping")
            return None  # the annotation's change brings the next pass, which stops it
        self._write(obj, status)
        return Result(requeue_after=culling.check_interval(idle_limit, activity, now))

    def _starting(self, obj: dict[str, Any], status: dict[str, Any], message: str) -> Result:
        status.update(phase="Starting", readyReplicas=0)
        set_condition(status, "Ready", False, "Starting", message, generation=obj["metadata"].get("generation"))
        self._write(obj, status)
        return Result(requeue_after=STARTING_POLL_SECONDS)

    def _probe(self, base: str, token: str) -> culling.Activity | None:
        """What JupyterLab says about its activity, or None while it does not answer."""
        headers = {"Authorization": f"token {token}"}
        try:
            resp = self.http.get(base + "api/status", headers=headers)
            if resp.status_code != 200:
                return None
            doc = resp.json()
            kernels = None
            if doc.get("kernels"):
                # Listing kernels is an API request, which JupyterLab counts as activity unless told otherwise.
                answer = self.http.get(base + "api/kernels", params={"no_track_activity": "1"}, headers=headers)
                kernels = answer.json() if answer.status_code == 200 else None
            return culling.parse_status(doc, kernels)
        except (httpx.HTTPError, ValueError):
            return None

    def _create_pod(self, obj: dict[str, Any], where: render.Paths) -> None:
        doc = render.render_pod(obj, self.port_source(), where)
        try:
            self.store.create(POD, validate_document(POD, doc, namespace=obj["metadata"]["namespace"]))
        except errors.ApiError as err:
            if err.code != 409:
                raise
            return
        self.recorder.record(obj, "Normal", "Started", f"Started JupyterLab in pod {doc['metadata']['name']}")

    def _ensure_account(self, obj: dict[str, Any]) -> None:
        """Kubeflow's profile gives each namespace `default-editor` (the edit role), which notebooks run as; here
        it is created when a Workbench first needs it. An account named explicitly is used as it is."""
        namespace = obj["metadata"]["namespace"]
        if obj["spec"].get("serviceAccountName") != DEFAULT_SERVICE_ACCOUNT or \
                self.store.try_get(SERVICE_ACCOUNT, namespace, DEFAULT_SERVICE_ACCOUNT) is not None:
            return
        docs = [(ROLE_BINDING, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                                "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": namespace,
                                             "labels": dict(MANAGED_BY)},
                                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                            "name": "edit"},
                                "subjects": [{"kind": "ServiceAccount", "name": DEFAULT_SERVICE_ACCOUNT,
                                              "namespace": namespace}]}),
                (SERVICE_ACCOUNT, {"apiVersion": "v1", "kind": "ServiceAccount",
                                   "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": namespace,
                                                "labels": dict(MANAGED_BY)}})]
        for info, doc in docs:  # the binding first: the account exists only once it can do what it is for
            try:
                self.store.create(info, validate_document(info, doc, namespace=namespace))
            except errors.ApiError as err:
                if err.code != 409:
                    raise
        self.recorder.record(obj, "Normal", "CreatedServiceAccount",
                             f"created ServiceAccount {DEFAULT_SERVICE_ACCOUNT} with the edit role in {namespace}")

    # ---- not running ------------------------------------------------------------------------------------------

    def _down(self, obj: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]], reason: str,
              message: str) -> Result | None:
        """No pod: stopped, culled, queued, evicted or suspended (`reason`). While its pod is still stopping the
        phase says so."""
        meta = obj["metadata"]
        self.routes.drop(meta["namespace"], meta["name"])
        for pod in pods:
            if not pod["metadata"].get("deletionTimestamp"):
                self._delete_pod(pod)
                if reason in ("Stopped", "Culled"):
                    self.recorder.record(obj, "Normal", "Stopping", f"{message}: stopping JupyterLab")
        stopping = bool(pods)
        status.update(phase="Stopping" if stopping else reason, readyReplicas=0)
        status.pop("containerState", None)
        set_condition(status, "Ready", False, reason, message, generation=meta.get("generation"))
        self._write(obj, status)
        return Result(requeue_after=STARTING_POLL_SECONDS) if stopping else None

    # ---- writes -----------------------------------------------------------------------------------------------

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        try:
            self.store.delete(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
        except errors.ApiError as err:
            if err.code != 404:
                raise

    def _delete_workload(self, obj: dict[str, Any]) -> None:
        """A stopped Workbench gives its quota back: its Workload goes, and a new one queues when it starts."""
        wl = self.framework.workload_of(WorkbenchJob(obj))
        if wl is None:
            return
        try:
            self.store.delete(WORKLOAD, wl["metadata"]["namespace"], wl["metadata"]["name"])
        except errors.ApiError as err:
            if err.code != 404:
                raise

    def _annotate(self, obj: dict[str, Any], stamp: str) -> None:
        def stop(current: dict[str, Any]) -> dict[str, Any] | None:
            annotations = current["metadata"].setdefault("annotations", {})
            if STOP_ANNOTATION in annotations:
                return None
            annotations[STOP_ANNOTATION] = stamp
            return current
        self.store.mutate(WORKBENCH, obj["metadata"]["namespace"], obj["metadata"]["name"], stop)

    def _write(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if status == (obj.get("status") or {}):
            return
        meta = obj["metadata"]
        obj["status"] = copy.deepcopy(status)
        self.store.replace_status(WORKBENCH, meta["namespace"], meta["name"], status)
