"""TrainJob and PyTorchJob reconcilers: run a distributed PyTorch job as worker Pods it owns, restart the whole
group from its latest checkpoint when a worker fails, and suspend it gracefully (SIGTERM, then the workers
checkpoint and exit).

Queues come first: each kind is a `GenericJob` of the job framework (Kueue's seam), so a job labelled
`kueue.x-k8s.io/queue-name` starts only once its Workload is admitted, and is suspended when evicted. What to do
with the pods is the pure `kaip.training.launch.plan`; this module observes pods and writes status.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaip.api import errors
from kaip.api.core import POD
from kaip.api.kinds import KindInfo
from kaip.api.kueue import WORKLOAD
from kaip.api.training import (
    CLUSTER_TRAINING_RUNTIME,
    PYTORCH_CONTAINER,
    PYTORCH_JOB,
    TRAIN_JOB,
    TRAINER_CONTAINER,
    TRAINING_RUNTIME,
    TRAINJOB_MODELS_PREFIX,
    registry_model_uri,
)
from kaip.api.validation import validate_document
from kaip.controlplane.conditions import is_true, set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller, Result, owner_keys
from kaip.executor.local import LocalExecutor
from kaip.jobs.batch import pod_is_active
from kaip.jobs.framework import Finished, JobFramework, PodSetInfo
from kaip.scheduling import podsready
from kaip.store.store import Store, now_rfc3339
from kaip.training.launch import (
    Group,
    JobState,
    LaunchError,
    ObservedPod,
    Plan,
    plan,
    pytorchjob_group,
    trainjob_group,
)

if TYPE_CHECKING:
    from kaip.server.runtime import KaipServer

REPLICA_LABEL = "trainer.kubeflow.org/replica"
ATTEMPT_LABEL = "kaip.dev/training-attempt"
JOB_NAME_LABEL = "trainer.kubeflow.org/trainjob-name"
PYTORCH_JOB_NAME_LABEL = "training.kubeflow.org/job-name"
PROGRESS_FILE = "progress.json"


# ---- the two kinds ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How a kind names things: its conditions and reasons (upstream's), its suspend field, its container."""

    kind: KindInfo
    complete: str
    complete_reason: str
    created_reason: str
    suspended_reason: str
    resumed_reason: str
    container: str
    name_label: str
    running: bool  # v1 keeps Running / Restarting conditions; v2 does not


TRAINJOB_PROFILE = Profile(TRAIN_JOB, "Complete", "JobSetCompleted", "JobSetCreated", "Suspended", "Resumed",
                           TRAINER_CONTAINER, JOB_NAME_LABEL, running=False)
PYTORCHJOB_PROFILE = Profile(PYTORCH_JOB, "Succeeded", "PyTorchJobSucceeded", "PyTorchJobCreated",
                             "PyTorchJobSuspended", "PyTorchJobResumed", PYTORCH_CONTAINER, PYTORCH_JOB_NAME_LABEL,
                             running=True)


def is_suspended(profile: Profile, obj: dict[str, Any]) -> bool:
    if profile is PYTORCHJOB_PROFILE:
        return bool((obj["spec"].get("runPolicy") or {}).get("suspend"))
    return bool(obj["spec"].get("suspend"))


def set_suspend(profile: Profile, obj: dict[str, Any], value: bool) -> None:
    if profile is PYTORCHJOB_PROFILE:
        obj["spec"].setdefault("runPolicy", {})["suspend"] = value
    else:
        obj["spec"]["suspend"] = value


def pod_sets(profile: Profile, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """What a queue reserves quota for: one pod set per node (TrainJob: `node` × numNodes with resourcesPerNode;
    PyTorchJob: `master` and `worker`, as Kueue's kubeflow integrations name them)."""
    spec = obj["spec"]
    if profile is PYTORCHJOB_PROFILE:
        out = []
        for role, rs in spec["pytorchReplicaSpecs"].items():
            if int(rs.get("replicas", 1)):
                out.append({"name": role.lower(), "count": int(rs.get("replicas", 1)),
                            "template": copy.deepcopy(rs["template"])})
        return out
    trainer = spec.get("trainer") or {}
    container: dict[str, Any] = {"name": TRAINER_CONTAINER}
    if trainer.get("resourcesPerNode"):
        container["resources"] = {k: v for k, v in trainer["resourcesPerNode"].items() if k != "claims"}
    return [{"name": "node", "count": int(trainer.get("numNodes") or 1),
             "template": {"spec": {"containers": [container]}}}]


@dataclass
class TrainingJobAdapter:
    """Both kinds as the job framework's GenericJob."""

    obj: dict[str, Any]
    profile: Profile
    pods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> KindInfo:
        return self.profile.kind

    def pod_sets(self) -> list[dict[str, Any]]:
        return pod_sets(self.profile, self.obj)

    def is_suspended(self) -> bool:
        return is_suspended(self.profile, self.obj)

    def suspend(self) -> None:
        set_suspend(self.profile, self.obj, True)

    def run_with(self, infos: list[PodSetInfo]) -> None:
        # Locally every node is this machine: flavors' node labels have nothing to select, so only unsuspend.
        set_suspend(self.profile, self.obj, False)

    def restore(self, pod_sets: list[dict[str, Any]]) -> None:
        return None

    def finished(self) -> Finished | None:
        status = self.obj.get("status")
        if is_true(status, self.profile.complete):
            return Finished(True, "Job finished successfully")
        if is_true(status, "Failed"):
            cond = next(c for c in status["conditions"] if c["type"] == "Failed")  # type: ignore[index]
            return Finished(False, cond.get("message") or "Job failed")
        return None

    def is_active(self) -> bool:
        return any(pod_is_active(p) for p in self.pods)

    def pods_ready(self) -> bool:
        return podsready.all_ready(self.pods)


# ---- the reconciler ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port for the group's rendezvous (MASTER_PORT); rank 0's TCP store binds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    from kaip.scheduling.snapshot import parse_time
    return parse_time(value)


class TrainingJobReconciler:
    def __init__(self, store: Store, executor: LocalExecutor, recorder: EventRecorder, framework: JobFramework,
                 profile: Profile, root: Path, *, artifacts_root: Path | None = None,
                 port_source: Callable[[], int] = free_port) -> None:
        self.store = store
        self.executor = executor
        self.recorder = recorder
        self.framework = framework
        self.profile = profile
        self.root = root
        self.artifacts_root = artifacts_root
        self.port_source = port_source

    def job_dir(self, obj: dict[str, Any]) -> Path:
        meta = obj["metadata"]
        return self.root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    def _pods(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        return self.store.owned(POD, obj["metadata"]["uid"])

    def _group(self, obj: dict[str, Any]) -> Group:
        if self.profile is PYTORCHJOB_PROFILE:
            return pytorchjob_group(obj)
        ref = obj["spec"]["runtimeRef"]
        if ref.get("kind") == "TrainingRuntime":
            runtime = self.store.try_get(TRAINING_RUNTIME, obj["metadata"]["namespace"], ref["name"])
        else:
            runtime = self.store.try_get(CLUSTER_TRAINING_RUNTIME, None, ref["name"])
        if runtime is None:
            where = f" in namespace {obj['metadata']['namespace']}" if ref.get("kind") == "TrainingRuntime" else ""
            raise LaunchError("TrainingRuntimeNotFound", f'{ref.get("kind")} "{ref["name"]}" not found{where}')
        return trainjob_group(obj, runtime)

    def _initializer_env(self, obj: dict[str, Any]) -> dict[str, str]:
        """Local paths of the TrainJob's dataset and model (nothing is downloaded: Kaip runs offline)."""
        init = (obj["spec"].get("initializer") or {}) if self.profile is TRAINJOB_PROFILE else {}
        out: dict[str, str] = {}
        for what in ("dataset", "model"):
            uri = (init.get(what) or {}).get("storageUri")
            if not uri:
                continue
            reason = f"{what.capitalize()}NotFound"
            if uri.startswith(TRAINJOB_MODELS_PREFIX):
                from kaip.tracking.uris import resolve_model_uri
                try:  # models://NAME/VERSION names the registry's models:/NAME/VERSION
                    resolved = resolve_model_uri(self.store, registry_model_uri(uri), obj["metadata"]["namespace"],
                                                 artifacts_root=self.artifacts_root)
                except Exception as err:  # the registry's own errors say what is missing
                    raise LaunchError(reason, f"{what} {uri}: {getattr(err, 'message', None) or err}") from err
                if resolved.local_path is None:
                    raise LaunchError(reason, f"{what} {uri}: its files are not in Kaip's artifact store")
                path = resolved.local_path
            elif uri.startswith("file://"):
                path = Path(uri.removeprefix("file://"))
            else:
                raise LaunchError(reason, f"{what} {uri}: only file:// paths and models:// URIs are available "
                                          "offline")
            if not path.exists():
                raise LaunchError(reason, f"{what} {uri}: {path} does not exist")
            out[f"KAIP_{what.upper()}_PATH"] = str(path)
        return out

    def _observe(self, pod: dict[str, Any]) -> ObservedPod:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        status = pod.get("status") or {}
        cs = next(iter(status.get("containerStatuses") or []), {})
        term = (cs.get("state") or {}).get("terminated") or {}
        tail = ""
        if status.get("phase") == "Failed":
            path = self.executor.log_path(meta["namespace"], meta["name"], meta["uid"], cs.get("name", ""),
                                          int(cs.get("restartCount", 0)))
            tail = _last_line(path)
        return ObservedPod(meta["name"], labels.get(REPLICA_LABEL, ""), int(labels.get(ATTEMPT_LABEL, "0")),
                           status.get("phase"), bool(meta.get("deletionTimestamp")), term.get("exitCode"), tail)

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        info = self.profile.kind
        obj = self.store.try_get(info, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        pods = self._pods(obj)
        adapter = TrainingJobAdapter(obj, self.profile, pods)
        may_run = self.framework.reconcile(adapter)
        obj = adapter.obj
        if not may_run and not is_suspended(self.profile, obj):
            return Result(requeue_after=1.0)
        status = copy.deepcopy(obj.get("status") or {})
        kaip = status.setdefault("kaip", {})
        finished = is_true(status, self.profile.complete) or is_true(status, "Failed")
        try:
            group = self._group(obj)
            init_env = self._initializer_env(obj) if not finished else {}
        except LaunchError as err:
            if not finished:
                self._fail(obj, status, err.reason, err.message)
                self._write(obj, status)
            return None
        state = JobState(suspend=is_suspended(self.profile, obj), finished=finished,
                         attempt=int(kaip.get("attempt", 0)), restarts=int(kaip.get("restarts", 0)),
                         started_at=_parse_time(kaip.get("startTime")), suspended=is_true(status, "Suspended"))
        p = plan(state, group, [self._observe(pod) for pod in pods], time.time())
        for pod_name in p.delete:
            try:
                self.store.delete(POD, namespace, pod_name)
            except errors.ApiError as err:
                if err.code != 404:
                    raise
        self._apply(obj, status, group, p, init_env)
        self._write(obj, status)
        requeue = p.requeue_after
        if p.outcome in ("running", "complete"):
            self._progress(obj, status)
            self._write(obj, status)
        if p.outcome == "running":
            requeue = 2.0 if requeue is None else min(requeue, 2.0)
        return Result(requeue_after=requeue) if requeue is not None else None

    # ---- applying a plan -----------------------------------------------------------------------------------

    def _apply(self, obj: dict[str, Any], status: dict[str, Any], group: Group, p: Plan,
               init_env: dict[str, str]) -> None:
        kaip = status["kaip"]
        kaip.update(attempt=p.attempt, restarts=p.restarts)
        pr = self.profile
        if p.outcome == "suspended":
            kaip.pop("startTime", None)
            if set_condition(status, "Suspended", True, pr.suspended_reason, f"{pr.kind.kind} is suspended"):
                self.recorder.record(obj, "Normal", "Suspended", f"{pr.kind.kind} suspended: stopping its workers")
            if pr.running:
                set_condition(status, "Running", False, pr.suspended_reason, f"{pr.kind.kind} is suspended")
        elif p.outcome == "failed":
            self._fail(obj, status, p.reason, p.message)
        elif p.outcome == "complete":
            self._publish(obj, status)
            status["completionTime"] = now_rfc3339()
            set_condition(status, pr.complete, True, pr.complete_reason, f"{pr.kind.kind} completed successfully")
            if pr.running:
                set_condition(status, "Running", False, pr.complete_reason, f"{pr.kind.kind} completed")
            self.recorder.record(obj, "Normal", "Completed", f"{pr.kind.kind} completed successfully")
        elif p.outcome == "restarting":
            self.recorder.record(obj, "Warning", "Restarting", p.message)
            if pr.running:
                set_condition(status, "Restarting", True, "PyTorchJobRestarting", p.message)
        if p.outcome == "running" and is_true(status, "Suspended"):
            set_condition(status, "Suspended", False, pr.resumed_reason, f"{pr.kind.kind} is resumed")
            self.recorder.record(obj, "Normal", "Resumed", f"{pr.kind.kind} resumed")
        if p.create:
            if p.new_port or "masterPort" not in kaip:
                kaip["masterPort"] = self.port_source()
            kaip.setdefault("startTime", now_rfc3339())
            kaip["checkpointDir"] = str(self.job_dir(obj) / "checkpoints")
            workers = {w.replica: w for w in group.workers(int(kaip["masterPort"]), p.restarts)}
            for replica in p.create:
                self._create_pod(obj, group, {**workers[replica].env, **init_env}, replica, p.attempt)
            if set_condition(status, "Created", True, pr.created_reason, f"{pr.kind.kind} workers are created"):
                self.recorder.record(obj, "Normal", "Created",
                                     f"Created {len(group.replicas)} worker pods (attempt {p.attempt})")
            if pr.running:
                set_condition(status, "Running", True, "PyTorchJobRunning", f"{pr.kind.kind} is running")
                set_condition(status, "Restarting", False, "PyTorchJobRunning", f"{pr.kind.kind} is running")
        self._summary(status, obj, group, p)

    def _publish(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """A trainer that left `publish.json` (the built-in LoRA SFT) gets its run and model version recorded."""
        job_dir = self.job_dir(obj)
        if self.artifacts_root is None or "published" in status["kaip"] or not (job_dir / "publish.json").exists():
            return
        from kaip.training.publish import publish
        try:
            status["kaip"]["published"] = publish(self.store, self.artifacts_root, obj, job_dir)
        except Exception as err:  # the job still completed; say why nothing was recorded
            status["kaip"]["published"] = {"error": str(err)}
            self.recorder.record(obj, "Warning", "PublishFailed", f"could not record the run: {err}")
            return
        published = status["kaip"]["published"]
        self.recorder.record(obj, "Normal", "Published", f"recorded run {published['runId']}" + (
            f" and model version {published['modelVersion']}" if published.get("modelVersion") else ""))

    def _fail(self, obj: dict[str, Any], status: dict[str, Any], reason: str, message: str) -> None:
        pr = self.profile
        status["completionTime"] = now_rfc3339()
        if set_condition(status, "Failed", True, reason, message):
            self.recorder.record(obj, "Warning", reason, message)
        if pr.running:
            set_condition(status, "Running", False, reason, message)

    def _summary(self, status: dict[str, Any], obj: dict[str, Any], group: Group, p: Plan) -> None:
        """Per-replicated-job counts, as upstream reports them (jobsStatus / replicaStatuses)."""
        pods = [pod for pod in self._pods(obj)
                if (pod["metadata"].get("labels") or {}).get(ATTEMPT_LABEL) == str(p.attempt)]
        phases = [(pod.get("status") or {}).get("phase") for pod in pods]
        counts = {"active": sum(1 for ph in phases if ph not in ("Succeeded", "Failed")),
                  "succeeded": phases.count("Succeeded"), "failed": phases.count("Failed")}
        if self.profile is PYTORCHJOB_PROFILE:
            out: dict[str, Any] = {}
            for pod in pods:
                role = "Master" if pod["metadata"]["labels"][REPLICA_LABEL].startswith("master") else "Worker"
                ph = (pod.get("status") or {}).get("phase")
                entry = out.setdefault(role, {"active": 0, "succeeded": 0, "failed": 0})
                entry["active" if ph not in ("Succeeded", "Failed") else ph.lower()] += 1
            status["replicaStatuses"] = out
        else:
            ready = sum(1 for pod in pods if is_true(pod.get("status"), "Ready"))
            status["jobsStatus"] = [{"name": "node", "ready": ready, **counts,
                                     "suspended": len(group.replicas) if p.outcome == "suspended" else 0}]

    def _progress(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """The workers' last progress report (written by `kaip.training.checkpoint.report_progress`)."""
        try:
            report = json.loads((self.job_dir(obj) / PROGRESS_FILE).read_text())
        except (OSError, ValueError):
            return
        step, total = int(report.get("step", 0)), int(report.get("total_steps", 0) or 0)
        metrics = [{"name": "step", "value": str(step)}]
        if total:
            metrics.append({"name": "total_steps", "value": str(total)})
        for key in ("loss", "learning_rate", "tokens_per_second"):
            if report.get(key) is not None:
                metrics.append({"name": key, "value": f"{float(report[key]):.4g}"})
        ts: dict[str, Any] = {"metrics": metrics, "lastUpdatedTime": report.get("time") or now_rfc3339()}
        if total:
            ts["progressPercentage"] = min(100, int(100 * step / total))
        if report.get("eta_seconds") is not None:
            ts["estimatedRemainingSeconds"] = int(report["eta_seconds"])
        status["trainerStatus"] = ts

    def _create_pod(self, obj: dict[str, Any], group: Group, env: dict[str, str], replica: str,
                    attempt: int) -> None:
        meta = obj["metadata"]
        info = self.profile.kind
        container = copy.deepcopy(group.container)
        job_dir = self.job_dir(obj)
        env = {**env, "KAIP_TRAIN_DIR": str(job_dir), "KAIP_CHECKPOINT_DIR": str(job_dir / "checkpoints"),
               "KAIP_TRAINING_ATTEMPT": str(attempt), "KAIP_JOB_NAME": meta["name"]}
        user = {e["name"] for e in container.get("env") or []}
        container["env"] = [*(container.get("env") or []),
                            *({"name": k, "value": v} for k, v in env.items() if k not in user)]
        pod_name = f"{meta['name']}-{replica}" + (f"-a{attempt}" if attempt else "")
        doc = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": meta["namespace"],
                            "labels": {self.profile.name_label: meta["name"], REPLICA_LABEL: replica,
                                       ATTEMPT_LABEL: str(attempt)},
                            "ownerReferences": [{"apiVersion": info.api_version, "kind": info.kind,
                                                 "name": meta["name"], "uid": meta["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": {**copy.deepcopy(group.pod_options), "restartPolicy": "Never", "containers": [container]}}
        try:
            self.store.create(POD, validate_document(POD, doc, namespace=meta["namespace"]))
        except errors.ApiError as err:
            if err.code != 409:
                raise

    def _write(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if status == (obj.get("status") or {}):
            return
        meta = obj["metadata"]
        obj["status"] = copy.deepcopy(status)
        self.store.replace_status(self.profile.kind, meta["namespace"], meta["name"], status)


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


LORA_SFT_RUNTIME: dict[str, Any] = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "kaip-lora-sft", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {"mlPolicy": {"numNodes": 1, "torch": {}}, "template": {"spec": {
        "failurePolicy": {"maxRestarts": 3},
        "replicatedJobs": [{"name": "node", "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"template": {"spec": {"containers": [{
                "name": "node", "image": "kaip/lora-sft",
                "command": ["python", "-m", "kaip.training.lora_sft"]}]}}}}}]}}},
}


# Kubeflow Trainer's own default runtime for PyTorch: the TrainJob's trainer.command runs in every worker with
# torchrun's environment. The SDK's `Client.train(function)` uses it.
TORCH_DISTRIBUTED_RUNTIME: dict[str, Any] = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed", "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {"mlPolicy": {"numNodes": 1, "torch": {}}, "template": {"spec": {
        "replicatedJobs": [{"name": "node", "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"template": {"spec": {"containers": [{
                "name": "node", "image": "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"}]}}}}}]}}},
}


def install_builtin_runtimes(store: Store) -> None:
    """Create the built-in runtimes once; a user's edits to them (or their deletion) are theirs to keep."""
    for doc in (LORA_SFT_RUNTIME, TORCH_DISTRIBUTED_RUNTIME):
        if store.try_get(CLUSTER_TRAINING_RUNTIME, None, doc["metadata"]["name"]) is None:
            try:
                store.create(CLUSTER_TRAINING_RUNTIME, validate_document(CLUSTER_TRAINING_RUNTIME, doc,
                                                                         namespace=None))
            except errors.ApiError as err:
                if err.code != 409:
                    raise


def install(server: KaipServer) -> None:
    """Register the TrainJob and PyTorchJob controllers and the built-in runtimes (issue 5)."""
    store, manager = server.store, server.manager
    install_builtin_runtimes(store)
    from kaip.controllers.kueue import job_framework

    framework = job_framework(store)
    root = server.home / "training"
    for name, profile in (("trainjob", TRAINJOB_PROFILE), ("pytorchjob", PYTORCHJOB_PROFILE)):
        reconciler = TrainingJobReconciler(store, server.executor, EventRecorder(store, f"{name}-controller"),
                                           framework, profile, root, artifacts_root=server.home / "artifacts")
        manager.add(Controller(name, reconciler, for_kind=profile.kind, workers=2,
                               watches=[(POD.key, owner_keys(profile.kind)),
                                        (WORKLOAD.key, owner_keys(profile.kind))]))
