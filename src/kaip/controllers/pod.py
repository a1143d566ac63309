"""Pod reconciler: runs a Pod's containers as local processes, the way a kubelet runs them as containers.

The decision of what to do with a container (keep, restart now, back off, leave ended) is the pure
function `decide`; the reconciler only observes processes, applies the decision and writes status.
"""

from __future__ import annotations

import base64
import copy
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kaip.api import errors
from kaip.api.core import CONFIGMAP, POD, POD_FINALIZER, SECRET
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.executor.local import LocalExecutor, ProcessRef
from kaip.server.podcredentials import PodCredentials
from kaip.store.store import Store, now_rfc3339

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0
POLL_SECONDS = 0.5


def _parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def backoff_delay(restart_count: int) -> float:
    """Seconds to wait before restarting a container that has been restarted `restart_count` times."""
    return min(BACKOFF_BASE * (2 ** min(restart_count, 32)), BACKOFF_MAX)


@dataclass(frozen=True)
class Decision:
    action: str  # "keep", "start", "wait", "done"
    delay: float = 0.0


def last_termination(cs: dict[str, Any]) -> dict[str, Any] | None:
    """The termination that decides the next step: the current one, or the one being backed off from."""
    state = cs.get("state", {})
    if "terminated" in state:
        return state["terminated"]
    if state.get("waiting", {}).get("reason") == "CrashLoopBackOff":
        return cs.get("lastState", {}).get("terminated")
    return None


def decide(restart_policy: str, cs: dict[str, Any], now: float, deadline_exceeded: bool = False) -> Decision:
    """What to do with one container given its last observed status.

    Restart backoff doubles from 1 s up to 60 s, measured from when the container last ended.
    """
    if "running" in cs.get("state", {}):
        return Decision("keep")
    term = last_termination(cs)
    restart_count = int(cs.get("restartCount", 0))
    if term is None:
        return Decision("done") if deadline_exceeded else Decision("start")
    if deadline_exceeded:
        return Decision("done")
    code = int(term.get("exitCode", 1))
    if restart_policy == "Never" or (restart_policy == "OnFailure" and code == 0):
        return Decision("done")
    delay = backoff_delay(restart_count)
    remaining = _parse_time(term.get("finishedAt")) + delay - now
    return Decision("start") if remaining <= 0 else Decision("wait", remaining)


def past_deadline(start_time: str | None, deadline_seconds: int | None, now: float) -> bool:
    """Whether a pod started at `start_time` has been active longer than `activeDeadlineSeconds`.

    `startTime` has whole-second resolution, so the pod may really have started up to a second after it
    says; counting from the end of that second means a pod is never stopped before its deadline."""
    if not deadline_seconds or not start_time:
        return False
    return now - (_parse_time(start_time) + 1.0) >= deadline_seconds


def pod_phase(statuses: list[dict[str, Any]], decisions: list[Decision]) -> str:
    if any(d.action in ("keep", "wait") for d in decisions):
        return "Running"
    if decisions and all(d.action == "done" for d in decisions):
        codes = [int((last_termination(s) or {}).get("exitCode", 1)) for s in statuses]
        return "Succeeded" if statuses and all(c == 0 for c in codes) else "Failed"
    return "Pending"


class PodReconciler:
    def __init__(self, store: Store, executor: LocalExecutor, recorder: EventRecorder,
                 credentials: PodCredentials | None = None) -> None:
        self.store = store
        self.credentials = credentials
        self.executor = executor
        self.recorder = recorder
        self._terminating: dict[str, float] = {}  # pod uid -> when SIGTERM was first sent

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        pod = self.store.try_get(POD, namespace, name)
        if pod is None:
            return None
        if pod["metadata"].get("deletionTimestamp"):
            return self._finalize(pod)
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return None
        try:
            env = self._env(pod)
        except errors.ApiError as err:
            self._write(pod, self._waiting_status(pod, "CreateContainerConfigError", err.message))
            return Result(requeue_after=2.0)
        return self._run(pod, env)

    # ---- running ------------------------------------------------------------------------------------

    def _attempt_dir(self, pod: dict[str, Any], container: str, attempt: int) -> Path:
        meta = pod["metadata"]
        return self.executor.attempt_dir(meta["namespace"], meta["name"], meta["uid"], container, attempt)

    def _run(self, pod: dict[str, Any], env: dict[str, str]) -> Result | None:
        meta, spec = pod["metadata"], pod["spec"]
        status = copy.deepcopy(pod.get("status") or {})
        now = time.time()
        status.setdefault("startTime", now_rfc3339())
        deadline = spec.get("activeDeadlineSeconds")
        deadline_exceeded = past_deadline(status["startTime"], deadline, now)
        old = {s["name"]: s for s in status.get("containerStatuses") or []}
        statuses, decisions = [], []
        requeue: float | None = None
        for container in spec["containers"]:
            cs = copy.deepcopy(old.get(container["name"]) or {
                "name": container["name"], "image": container.get("image", ""), "restartCount": 0,
                "ready": False, "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}})
            self._observe(pod, cs, deadline_exceeded)
            decision = decide(spec["restartPolicy"], cs, now, deadline_exceeded)
            if decision.action == "start":
                self._start(pod, container, cs, env)
                decision = Decision("keep")
            elif decision.action == "wait":
                if "terminated" in cs["state"]:
                    cs["lastState"] = {"terminated": cs["state"]["terminated"]}
                    self.recorder.record(pod, "Warning", "BackOff",
                                         f"Back-off restarting failed container {container['name']}")
                cs["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                           "message": f"back-off {backoff_delay(cs['restartCount']):.0f}s "
                                                      f"restarting failed container={container['name']} "
                                                      f"pod={meta['name']}"}}
                requeue = decision.delay if requeue is None else min(requeue, decision.delay)
            statuses.append(cs)
            decisions.append(decision)
        status["containerStatuses"] = statuses
        status["phase"] = pod_phase(statuses, decisions)
        if deadline_exceeded:
            status.update(phase="Failed", reason="DeadlineExceeded",
                          message=f"Pod was active on the node longer than the specified deadline ({deadline}s)")
        status["hostIP"] = status["podIP"] = "127.0.0.1"
        ready = status["phase"] == "Running" and all(s.get("ready") for s in statuses)
        set_condition(status, "PodScheduled", True, "Scheduled")
        set_condition(status, "Initialized", True, "Initialized")
        set_condition(status, "ContainersReady", ready, "ContainersReady" if ready else "ContainersNotReady")
        set_condition(status, "Ready", ready, "PodReady" if ready else "ContainersNotReady")
        previous_phase = (pod.get("status") or {}).get("phase")
        self._write(pod, status)
        if status["phase"] != previous_phase and status["phase"] in ("Succeeded", "Failed"):
            kind = "Normal" if status["phase"] == "Succeeded" else "Warning"
            self.recorder.record(pod, kind, status["phase"], f"Pod {status['phase'].lower()}")
        if status["phase"] in ("Succeeded", "Failed"):
            return None
        if any(d.action == "keep" for d in decisions):
            requeue = POLL_SECONDS if requeue is None else min(requeue, POLL_SECONDS)
        return Result(requeue_after=requeue) if requeue is not None else None

    def _observe(self, pod: dict[str, Any], cs: dict[str, Any], deadline_exceeded: bool) -> None:
        """Turn a running container whose process ended into a terminated one."""
        running = cs["state"].get("running")
        if running is None:
            return
        ref = ProcessRef.parse(cs.get("containerID"))
        if ref is not None and self.executor.alive(ref):
            if deadline_exceeded:
                self.executor.signal(ref, signal.SIGKILL)
            else:
                return
        adir = self._attempt_dir(pod, cs["name"], cs["restartCount"])
        code = self.executor.exit_code(adir)
        reason = "Completed" if code == 0 else "Error"
        if code is None:
            code, reason = 137, "DeadlineExceeded" if deadline_exceeded else "Lost"
        cs["state"] = {"terminated": {"exitCode": code, "reason": reason, "startedAt": running.get("startedAt"),
                                      "finishedAt": now_rfc3339(), "containerID": cs.get("containerID")}}
        cs["ready"] = False
        cs["started"] = False
        if code != 0:
            self.recorder.record(pod, "Warning", "Lost" if reason == "Lost" else "Failed",
                                 f"Container {cs['name']} exited with code {code}")

    def _start(self, pod: dict[str, Any], container: dict[str, Any], cs: dict[str, Any], env: dict[str, str]) -> None:
        meta = pod["metadata"]
        term = last_termination(cs)
        if term is not None:
            cs["lastState"] = {"terminated": term}
            cs["restartCount"] += 1
        adir = self._attempt_dir(pod, container["name"], cs["restartCount"])
        workdir = Path(container["workingDir"]) if container.get("workingDir") else \
            self.executor.pod_dir(meta["namespace"], meta["name"], meta["uid"]) / "workdir"
        command = list(container.get("command") or []) + list(container.get("args") or [])
        container_env = dict(env)
        if self.credentials is not None:
            container_env.update(self.credentials.env(pod))
        for item in container.get("env") or []:
            container_env[item["name"]] = self._env_value(meta["namespace"], item)
        ref = self.executor.start(adir, command, container_env, workdir)
        cs["containerID"] = ref.container_id()
        cs["state"] = {"running": {"startedAt": now_rfc3339()}}
        cs["started"] = True
        cs["ready"] = True
        self.recorder.record(pod, "Normal", "Started", f"Started container {container['name']} (pid {ref.pid})")

    def _env(self, pod: dict[str, Any]) -> dict[str, str]:
        """Environment shared by all containers; also checks every referenced key exists, before starting."""
        meta = pod["metadata"]
        for container in pod["spec"]["containers"]:
            for item in container.get("env") or []:
                self._env_value(meta["namespace"], item)
        return {"KAIP_POD_NAME": meta["name"], "KAIP_POD_NAMESPACE": meta["namespace"],
                "KAIP_POD_UID": meta["uid"], "HOSTNAME": meta["name"],
                # Where relative paths in manifests resolve (as for KnowledgeBase sources): the server's directory.
                "KAIP_WORKSPACE": os.getcwd()}

    def _env_value(self, namespace: str, item: dict[str, Any]) -> str:
        if "value" in item or not item.get("valueFrom"):
            return str(item.get("value", ""))
        source = item["valueFrom"]
        for field, info in (("configMapKeyRef", CONFIGMAP), ("secretKeyRef", SECRET)):
            ref = source.get(field)
            if not ref:
                continue
            obj = self.store.try_get(info, namespace, ref["name"])
            data = (obj or {}).get("data") or {}
            if ref["key"] not in data:
                if ref.get("optional"):
                    return ""
                raise errors.ApiError(404, "NotFound", f'{info.kind.lower()} "{ref["name"]}" key "{ref["key"]}" '
                                                       f"not found for env {item['name']}")
            value = data[ref["key"]]
            return base64.b64decode(value).decode() if info is SECRET else value
        return ""

    def _waiting_status(self, pod: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
        status = copy.deepcopy(pod.get("status") or {})
        status["phase"] = status.get("phase") or "Pending"
        status["containerStatuses"] = [
            {"name": c["name"], "image": c.get("image", ""), "restartCount": 0, "ready": False, "started": False,
             "state": {"waiting": {"reason": reason, "message": message}}} for c in pod["spec"]["containers"]]
        return status

    def _write(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        if status == pod.get("status"):
            return
        meta = pod["metadata"]
        self.store.replace_status(POD, meta["namespace"], meta["name"], status)

    # ---- deletion -----------------------------------------------------------------------------------

    def _finalize(self, pod: dict[str, Any]) -> Result | None:
        meta = pod["metadata"]
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        refs = [ProcessRef.parse(cs.get("containerID")) for cs in statuses if "running" in cs.get("state", {})]
        alive = [r for r in refs if r is not None and self.executor.alive(r)]
        if alive:
            first = self._terminating.setdefault(meta["uid"], time.monotonic())
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            if first == self._terminating[meta["uid"]] and time.monotonic() - first < 0.01:
                self.recorder.record(pod, "Normal", "Killing", "Stopping container processes")
            sig = signal.SIGKILL if time.monotonic() - first >= grace else signal.SIGTERM
            for ref in alive:
                self.executor.signal(ref, sig)
            return Result(requeue_after=0.2)
        self._terminating.pop(meta["uid"], None)
        if POD_FINALIZER in (meta.get("finalizers") or []):
            def drop(obj: dict[str, Any]) -> dict[str, Any]:
                obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or []
                                                 if f != POD_FINALIZER]
                return obj
            try:
                self.store.mutate(POD, meta["namespace"], meta["name"], drop)
            except errors.ApiError as err:
                if err.code != 404:
                    raise
        return None
