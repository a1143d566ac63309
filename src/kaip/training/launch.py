"""The distributed launcher's decisions, with no I/O: which worker processes a job has, the environment each one
gets (what Kubeflow Trainer, the Training Operator and torchrun set), and what to do next given the pods observed.

A job runs in *attempts*. Every worker of an attempt starts together, on one fresh rendezvous port; when any of
them fails, the whole group is stopped and a new attempt starts (torchrun's elastic agent semantics: "if k <= n
workers fail, all workers are stopped and restarted"), up to the restart limit. Suspension ends the attempt too,
but does not count as a restart. Workers resume from their latest checkpoint (`kaip.training.checkpoint`).
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from typing import Any

from kaip.api.training import PYTORCH_CONTAINER, TRAINER_CONTAINER, is_trainer_job, registry_model_uri

MASTER_ADDR = "127.0.0.1"


class LaunchError(Exception):
    """A job that cannot run as declared; `reason` becomes its Failed condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Worker:
    """One worker pod of an attempt: its replica name (`node-0-1`, `master-0`) and its distributed environment."""

    replica: str
    env: dict[str, str]


@dataclass(frozen=True)
class Group:
    """Everything one attempt needs: the container every worker runs, the pod options, and the workers."""

    container: dict[str, Any]
    pod_options: dict[str, Any]
    replicas: list[str]
    restart_limit: int
    deadline_seconds: int | None
    torchrun: bool = False
    env_for: Any = None  # Callable[[str, int, int], dict[str, str]]: (replica, port, restarts) -> env

    def workers(self, port: int, restarts: int) -> list[Worker]:
        return [Worker(r, self.env_for(r, port, restarts)) for r in self.replicas]


def uses_torchrun(argv: list[str]) -> bool:
    """A command that starts torchrun spawns its own per-node processes: give it one pod per node."""
    if not argv:
        return False
    head = argv[0].rsplit("/", 1)[-1]
    if head == "torchrun":
        return True
    return head.startswith("python") and argv[1:3] == ["-m", "torch.distributed.run"]


def _merge_env(base: list[dict[str, Any]] | None, override: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = {e["name"]: e for e in base or []}
    for e in override or []:
        out[e["name"]] = e
    return list(out.values())


POD_OPTIONS = ("terminationGracePeriodSeconds", "serviceAccountName", "priorityClassName", "schedulerName")


def _pod_options(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in pod_spec.items() if k in POD_OPTIONS}


# ---- TrainJob (Trainer v2) -----------------------------------------------------------------------------------


def trainjob_group(job: dict[str, Any], runtime: dict[str, Any]) -> Group:
    """Resolve a TrainJob against its runtime: the TrainJob's trainer fields override the runtime's `node`
    container, as upstream's torch plugin does."""
    spec, rspec = job["spec"], runtime["spec"]
    ml = rspec.get("mlPolicy") or {}
    if ml and "torch" not in ml:
        raise LaunchError("TrainingRuntimeNotSupported", "the runtime has no torch mlPolicy; only torch runs locally")
    trainer_job = next(j for j in rspec["template"]["spec"]["replicatedJobs"]
                       if is_trainer_job(j["name"], ((j["template"].get("metadata") or {}).get("labels") or {})))
    pod_spec = trainer_job["template"]["spec"]["template"]["spec"]
    base = next((c for c in pod_spec["containers"] if c["name"] == TRAINER_CONTAINER), pod_spec["containers"][0])
    trainer = spec.get("trainer") or {}
    container: dict[str, Any] = {"name": TRAINER_CONTAINER}
    for key in ("image", "command", "args", "workingDir"):
        value = trainer.get(key) if trainer.get(key) is not None else base.get(key)
        if value is not None:
            container[key] = copy.deepcopy(value)
    if trainer.get("command") is not None and trainer.get("args") is None:
        container.pop("args", None)  # a new command does not inherit the runtime's arguments
    env = _merge_env(base.get("env"), trainer.get("env"))
    if env:
        container["env"] = env
    if not container.get("command") and not container.get("args"):
        raise LaunchError("TrainingRuntimeNotSupported",
                          "neither the TrainJob's trainer nor the runtime's node container has a command")
    resources = trainer.get("resourcesPerNode") or base.get("resources")
    nnodes = int(trainer.get("numNodes") or ml.get("numNodes") or 1)
    nproc = int(trainer.get("numProcPerNode") or 1)
    torchrun = uses_torchrun(list(container.get("command") or []))
    if torchrun and resources:
        container["resources"] = copy.deepcopy(resources)
    failure = rspec["template"]["spec"].get("failurePolicy") or {}
    limit = failure.get("maxRestarts")
    if limit is None:
        limit = trainer_job["template"]["spec"].get("backoffLimit")
    replicas = [f"node-{n}" for n in range(nnodes)] if torchrun else \
        [f"node-{n}-{p}" for n in range(nnodes) for p in range(nproc)]
    user_env = {e["name"] for e in env}
    run_id = job["metadata"]["uid"]
    init = spec.get("initializer") or {}

    def env_for(replica: str, port: int, restarts: int) -> dict[str, str]:
        parts = replica.split("-")
        node = int(parts[1])
        out = {"PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": str(nproc), "PET_NODE_RANK": str(node),
               "PET_MASTER_ADDR": MASTER_ADDR, "PET_MASTER_PORT": str(port),
               "MASTER_ADDR": MASTER_ADDR, "MASTER_PORT": str(port), "JOB_COMPLETION_INDEX": str(node),
               "PYTHONUNBUFFERED": "1"}
        if not torchrun:
            local = int(parts[2])
            rank = node * nproc + local
            world = nnodes * nproc
            out.update(RANK=str(rank), LOCAL_RANK=str(local), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(nproc),
                       GROUP_RANK=str(node), GROUP_WORLD_SIZE=str(nnodes), ROLE_RANK=str(rank), ROLE_NAME="default",
                       ROLE_WORLD_SIZE=str(world), TORCHELASTIC_RESTART_COUNT=str(restarts),
                       TORCHELASTIC_MAX_RESTARTS=str(limit or 0), TORCHELASTIC_RUN_ID=run_id)
            if nproc > 1 and "OMP_NUM_THREADS" not in user_env:
                out["OMP_NUM_THREADS"] = "1"  # as torchrun does for several processes per node
        for what, key in (("dataset", "KAIP_DATASET_URI"), ("model", "KAIP_MODEL_URI")):
            uri = (init.get(what) or {}).get("storageUri")
            if uri:
                out[key] = registry_model_uri(uri)  # models:/NAME/VERSION, as the registry and lineage name it
        return out

    return Group(container=container, pod_options=_pod_options(pod_spec), replicas=replicas,
                 restart_limit=int(limit or 0), deadline_seconds=spec.get("activeDeadlineSeconds"),
                 torchrun=torchrun, env_for=env_for)


# ---- PyTorchJob (Training Operator v1) -------------------------------------------------------------------------


def pytorchjob_group(job: dict[str, Any]) -> Group:
    """One pod per replica, Master first, with the Training Operator's variables: WORLD_SIZE = replicas ×
    nprocPerNode, RANK = replica index (+1 for Workers when there is a Master)."""
    spec = job["spec"]
    replica_specs = spec["pytorchReplicaSpecs"]
    master = replica_specs.get("Master")
    workers = replica_specs.get("Worker")
    template = (master or workers)["template"]["spec"]
    container = copy.deepcopy(next(c for c in template["containers"] if c["name"] == PYTORCH_CONTAINER))
    container.pop("ports", None)
    if not container.get("command") and not container.get("args"):
        raise LaunchError("InvalidSpec", "the pytorch container has no command (images are recorded, not run)")
    n_workers = int((workers or {}).get("replicas", 1)) if workers else 0  # the webhook defaults 1
    replicas = (["master-0"] if master else []) + [f"worker-{i}" for i in range(n_workers)]
    nproc_raw = spec.get("nprocPerNode")
    nproc = int(nproc_raw) if nproc_raw and nproc_raw.isdigit() else 1
    total = len(replicas)
    run_policy = spec.get("runPolicy") or {}
    on_failure = any(r.get("restartPolicy") == "OnFailure" for r in replica_specs.values())
    limit = int(run_policy.get("backoffLimit") if run_policy.get("backoffLimit") is not None else 6) \
        if on_failure else 0
    worker_container = copy.deepcopy(next(c for c in workers["template"]["spec"]["containers"]
                                          if c["name"] == PYTORCH_CONTAINER)) if workers else None
    worker_container_cmd = (worker_container or {}).get("command"), (worker_container or {}).get("args")

    def env_for(replica: str, port: int, restarts: int) -> dict[str, str]:
        index = replicas.index(replica)
        out = {"PYTHONUNBUFFERED": "1", "PET_NNODES": str(total), "MASTER_ADDR": MASTER_ADDR,
               "PET_MASTER_ADDR": MASTER_ADDR, "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port),
               "WORLD_SIZE": str(total * nproc), "RANK": str(index), "PET_NODE_RANK": str(index),
               "TORCHELASTIC_RESTART_COUNT": str(restarts)}
        if nproc_raw:
            out["PET_NPROC_PER_NODE"] = nproc_raw
        if nproc == 1:
            out.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        return out

    group = Group(container=container, pod_options=_pod_options(template), replicas=replicas, restart_limit=limit,
                  deadline_seconds=run_policy.get("activeDeadlineSeconds"), env_for=env_for)
    if worker_container is not None and master is not None and worker_container_cmd != (
            container.get("command"), container.get("args")):
        raise LaunchError("InvalidSpec", "Master and Worker must run the same command locally")
    return group


# ---- the decision ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservedPod:
    name: str
    replica: str
    attempt: int
    phase: str | None  # Pending, Running, Succeeded, Failed
    deleting: bool
    exit_code: int | None = None
    log_tail: str = ""

    @property
    def active(self) -> bool:
        return self.deleting or self.phase not in ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobState:
    suspend: bool
    finished: bool
    attempt: int
    restarts: int
    started_at: float | None  # when the current run began (not counting suspended time)
    suspended: bool  # the Suspended condition is already True


@dataclass
class Plan:
    create: list[str] = field(default_factory=list)  # replicas of the (new) current attempt to start
    delete: list[str] = field(default_factory=list)  # pod names
    attempt: int = 0
    restarts: int = 0
    new_port: bool = False
    outcome: str = "running"  # running, waiting, suspended, complete, failed, restarting, finished
    reason: str = ""
    message: str = ""
    requeue_after: float | None = None


def describe_failure(pod: ObservedPod) -> str:
    code = "was lost" if pod.exit_code is None else f"exited with code {pod.exit_code}"
    if pod.exit_code == 137:
        code += " (killed)"
    out = f"replica {pod.replica} (pod {pod.name}) {code}"
    return f"{out}: {pod.log_tail}" if pod.log_tail else out


def plan(state: JobState, group: Group, pods: list[ObservedPod], now: float) -> Plan:
    """The next step for a job, given its state and every pod it owns."""
    out = Plan(attempt=state.attempt, restarts=state.restarts)
    active = [p for p in pods if p.active and not p.deleting]
    if state.finished:
        out.outcome = "finished"
        out.delete = [p.name for p in active]
        return out
    if state.suspend:
        out.outcome = "suspended"
        out.delete = [p.name for p in active]
        if not state.suspended and any(p.attempt == state.attempt for p in pods):
            out.attempt = state.attempt + 1  # resuming starts a fresh group (not a restart)
        return out
    deadline = group.deadline_seconds
    if deadline and state.started_at is not None and now - state.started_at >= deadline:
        out.outcome, out.reason = "failed", "DeadlineExceeded"
        out.message = f"the job was active longer than activeDeadlineSeconds ({deadline}s)"
        out.delete = [p.name for p in active]
        return out
    stale = [p for p in pods if p.attempt != state.attempt and p.active]
    current = {p.replica: p for p in pods if p.attempt == state.attempt}
    failed = [current[r] for r in group.replicas if r in current and current[r].phase == "Failed"]
    if failed:
        first = failed[0]
        out.delete = [p.name for p in active]
        if state.restarts >= group.restart_limit:
            out.outcome, out.reason = "failed", "BackoffLimitExceeded"
            out.message = (f"{describe_failure(first)}; restarts used: {state.restarts} of "
                           f"{group.restart_limit}")
            return out
        out.outcome, out.reason = "restarting", "WorkerFailed"
        out.message = (f"{describe_failure(first)}; restarting the whole group from the latest checkpoint "
                       f"(restart {state.restarts + 1} of {group.restart_limit})")
        out.attempt, out.restarts, out.new_port = state.attempt + 1, state.restarts + 1, True
        out.requeue_after = 0.2
        return out
    if stale:
        out.outcome = "waiting"  # the previous group is still stopping: never run two groups at once
        out.delete = [p.name for p in stale if not p.deleting]
        out.requeue_after = 0.2
        return out
    if all(r in current and current[r].phase == "Succeeded" for r in group.replicas):
        out.outcome = "complete"
        return out
    out.create = [r for r in group.replicas if r not in current]
    out.new_port = bool(out.create) and len(out.create) == len(group.replicas)
    if deadline and state.started_at is not None:
        out.requeue_after = max(0.1, state.started_at + deadline - now)
    return out


def format_command(container: dict[str, Any]) -> str:
    return shlex.join([*(container.get("command") or []), *(container.get("args") or [])])
