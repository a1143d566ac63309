"""PipelineRun reconciler: plan (pure, `kaip.pipelines.dag`), then launch each ready task as a Pod owned by the run.

Level-triggered. All truth is in the run's `status.tasks` (one record per leaf task execution) and in the Pods:
a Pod that ended becomes outputs (read from the ExecutorOutput the kfp executor wrote) or a failure, retried
with backoff as its `retryPolicy` says; a task whose cache key (component spec + resolved inputs) was seen
before is served from the cache without a Pod. Every execution goes into lineage: which run's task consumed
and produced which artifact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaip.api import errors
from kaip.api.core import POD
from kaip.api.kueue import QUEUE_LABEL
from kaip.api.pipelines import PIPELINE, PIPELINE_RUN
from kaip.api.validation import validate_document
from kaip.artifacts.store import ArtifactStore
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.executor.local import LocalExecutor
from kaip.jobs.framework import JobFramework, workload_name
from kaip.pipelines.dag import Launch, plan, resolve_parameters, retry_delay, validate_ir
from kaip.pipelines.launcher import LaunchError, collect_outputs, prepare
from kaip.pipelines.queueing import TaskJob, task_requests
from kaip.store.store import Store, now_rfc3339

log = logging.getLogger(__name__)

LOG_TAIL = 2000
CONTAINER = "main"
RUN_LABEL = "pipelines.kaip.dev/run"
TASK_ANNOTATION = "pipelines.kaip.dev/task"
# Task pods run as this service account unless the run names another (KFP's own default runner account).
DEFAULT_SERVICE_ACCOUNT = "pipeline-runner"


def _slug(text: str, n: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n].strip("-") or "t"


def pod_name(run: str, task_id: str, attempt: int) -> str:
    digest = hashlib.sha1(task_id.encode()).hexdigest()[:6]
    return f"{_slug(run, 40)}-{_slug(task_id.split('/')[-1], 30)}-{digest}-{attempt}"


def _digest(path: Path) -> dict[str, Any]:
    """sha256 and size of an artifact file, recorded in lineage (a folder or nothing written: no digest)."""
    if not path.is_file():
        return {}
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": path.stat().st_size}


class PipelineRunReconciler:
    def __init__(self, store: Store, executor: LocalExecutor, recorder: EventRecorder, home: Path, *,
                 clock: Callable[[], float] = time.time, queues: JobFramework | None = None) -> None:
        self.store = store
        self.queues = queues
        self.executor = executor
        self.recorder = recorder
        self.home = home
        self.artifacts = ArtifactStore(home / "artifacts")
        self.clock = clock
        self._lineage: Any = None

    # ---- the loop -----------------------------------------------------------------------------------

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        run = self.store.try_get(PIPELINE_RUN, namespace, name)
        if run is None or run["metadata"].get("deletionTimestamp"):
            return None
        status = copy.deepcopy(run.get("status") or {})
        if status.get("phase") in ("Succeeded", "Failed"):
            return None
        status.setdefault("startedAt", now_rfc3339())
        try:
            ir, version = self._pipeline(run)
            params, errs = resolve_parameters(ir, run["spec"].get("parameters") or {})
            if errs:
                raise ValueError("; ".join(errs))
        except ValueError as err:
            return self._finish(run, status, "Failed", "InvalidPipeline", str(err))
        status["parameters"] = params
        if version is not None:
            status["pipelineVersion"] = version
        tasks: dict[str, dict[str, Any]] = status.setdefault("tasks", {})
        requeue: float | None = None
        for task_id, rec in tasks.items():
            delay = self._observe(run, ir, task_id, rec)
            if delay is not None:
                requeue = delay if requeue is None else min(requeue, delay)
            self._release(run, task_id, rec)
        caching = bool(run["spec"].get("enableCaching", True))
        for _ in range(1000):  # cached tasks finish at once, and may make the next ones ready
            result = plan(ir, params, {k: v for k, v in tasks.items()}, caching=caching)
            served = False
            for launch in result.launches:
                rec = self._start(run, ir, launch)
                tasks[launch.id] = rec
                served = served or rec["phase"] in ("Succeeded", "Failed")
            if not served:
                break
        status["nodes"] = {nid: {"phase": n.phase, "kind": n.kind, **({"message": n.message} if n.message else {})}
                           for nid, n in result.nodes.items() if n.kind != "task"}
        for nid, n in result.nodes.items():
            if n.kind == "task" and n.phase in ("Skipped", "Failed") and nid not in tasks:
                tasks[nid] = {"phase": n.phase, "message": n.message}
        if result.phase in ("Succeeded", "Failed"):
            status["outputs"] = result.outputs
            return self._finish(run, status, result.phase, "Completed" if result.phase == "Succeeded" else
                                "TaskFailed", result.message or f"run {result.phase.lower()}")
        status["phase"] = "Running"
        set_condition(status, "Succeeded", "Unknown", "Running", "", generation=run["metadata"].get("generation"))
        self._write(run, status)
        running = any(r.get("phase") in ("Running", "Queued") for r in tasks.values())
        if running:
            requeue = 2.0 if requeue is None else min(requeue, 2.0)  # Pod changes wake us; this is a safety net
        return Result(requeue_after=requeue) if requeue is not None else None

    def _pipeline(self, run: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        spec = run["spec"]
        if spec.get("pipelineSpec") is not None:
            return spec["pipelineSpec"], None
        ref = spec["pipelineRef"]["name"]
        pipeline = self.store.try_get(PIPELINE, run["metadata"]["namespace"], ref)
        if pipeline is None:
            raise ValueError(f"spec.pipelineRef.name: pipeline {ref!r} not found in namespace "
                             f"{run['metadata']['namespace']!r}")
        errs = validate_ir(pipeline["spec"]["pipelineSpec"])
        if errs:
            raise ValueError("; ".join(errs))
        return pipeline["spec"]["pipelineSpec"], pipeline["metadata"].get("generation")

    def _finish(self, run: dict[str, Any], status: dict[str, Any], phase: str, reason: str,
                message: str) -> None:
        status["phase"] = phase
        status["message"] = message
        status.setdefault("finishedAt", now_rfc3339())
        set_condition(status, "Succeeded", phase == "Succeeded", reason, message,
                      generation=run["metadata"].get("generation"))
        self._write(run, status)
        self.recorder.record(run, "Normal" if phase == "Succeeded" else "Warning", reason, message[:1000])
        return None

    def _write(self, run: dict[str, Any], status: dict[str, Any]) -> None:
        if status == run.get("status"):
            return

        def apply(s: dict[str, Any], _obj: dict[str, Any]) -> None:
            s.clear()
            s.update(status)
        meta = run["metadata"]
        self.store.update_status(PIPELINE_RUN, meta["namespace"], meta["name"], apply)

    # ---- one task -----------------------------------------------------------------------------------

    def _dirs(self, run: dict[str, Any], task_id: str, attempt: int) -> tuple[Path, str]:
        meta = run["metadata"]
        safe = _slug(task_id, 80) + "-" + hashlib.sha1(task_id.encode()).hexdigest()[:6]
        task_dir = self.home / "pipelines" / meta["namespace"] / meta["name"] / meta["uid"][:8] / safe / str(attempt)
        rel = f"pipelines/{meta['namespace']}/{meta['name']}-{meta['uid'][:8]}/{safe}"
        return task_dir, rel

    def _start(self, run: dict[str, Any], ir: dict[str, Any], launch: Launch) -> dict[str, Any]:
        rec: dict[str, Any] = {"phase": "Pending", "component": launch.component, "attempts": 0,
                               "inputs": {"parameters": launch.parameters,
                                          "artifacts": {k: [a.get("uri") for a in v]
                                                        for k, v in launch.artifacts.items()}}}
        if launch.retry:
            rec["retryPolicy"] = launch.retry
        if launch.cache_key:
            rec["cacheKey"] = launch.cache_key
            hit = self._cache_get(launch.cache_key)
            if hit is not None:
                rec.update(phase="Succeeded", cached=True, outputs=hit["outputs"], cachedFrom=hit.get("run"),
                           startedAt=now_rfc3339(), finishedAt=now_rfc3339())
                self._lineage_record(run, launch.id, rec)
                return rec
        self._launch_attempt(run, ir, launch.id, rec, launch)
        return rec

    def _launch_attempt(self, run: dict[str, Any], ir: dict[str, Any], task_id: str, rec: dict[str, Any],
                        launch: Launch | None = None) -> None:
        meta = run["metadata"]
        attempt = int(rec.get("attempts", 0)) + 1
        task_dir, rel = self._dirs(run, task_id, attempt)
        if launch is None:
            launch = self._relaunch(ir, task_id, rec)
        component = ir["components"][launch.component]
        container = ((ir.get("deploymentSpec") or {}).get("executors") or {}).get(component["executorLabel"], {})
        try:
            if "importer" in container:
                raise LaunchError(f"task {task_id}: dsl.importer is not supported by the local executor yet")
            prepared = prepare(launch, container.get("container") or {}, task_dir, self.artifacts.local_path(rel))
        except LaunchError as err:
            rec.update(phase="Failed", message=str(err), finishedAt=now_rfc3339())
            return
        (task_dir / "executor_input.json").write_text(json.dumps(prepared.executor_input))
        requests = task_requests(container.get("container") or {})
        if not self._admitted(run, task_id, rec, requests):
            queue = (meta.get("labels") or {}).get(QUEUE_LABEL)
            rec.update(phase="Queued", taskDir=str(task_dir),
                       message=f"waiting for quota in LocalQueue {queue} (Workload {rec['workload']})")
            return
        if rec.get("phase") == "Queued":
            rec.pop("message", None)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name(meta["name"], task_id, attempt), "namespace": meta["namespace"],
                            "labels": {RUN_LABEL: _slug(meta["name"], 63)},
                            "annotations": {TASK_ANNOTATION: task_id},
                            "ownerReferences": [{"apiVersion": run["apiVersion"], "kind": run["kind"],
                                                 "name": meta["name"], "uid": meta["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": {"restartPolicy": "Never",
                        "serviceAccountName": run["spec"].get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT,
                        "containers": [{
                   "name": CONTAINER, "image": container.get("container", {}).get("image", ""),
                   "command": prepared.command, "workingDir": str(task_dir),
                   "env": [{"name": k, "value": v} for k, v in prepared.env.items()]
                   # Which task this is, for what the task records elsewhere (a model version it registers
                   # links back to it in lineage).
                   + [{"name": "KAIP_PIPELINE_RUN", "value": meta["name"]},
                      {"name": "KAIP_PIPELINE_TASK", "value": task_id}]}]}}
        if rec.get("workload") and requests:  # quota was reserved for these: the Pod carries them, as with Kueue
            pod["spec"]["containers"][0]["resources"] = {"requests": requests}
        try:
            self.store.create(POD, validate_document(POD, pod, namespace=meta["namespace"]))
        except errors.ApiError as err:
            if err.code != 409:  # 409: created before a crash, recorded now
                raise
        rec.update(phase="Running", attempts=attempt, pod=pod["metadata"]["name"], taskDir=str(task_dir),
                   startedAt=rec.get("startedAt") or now_rfc3339())
        rec.pop("nextAttemptAt", None)

    def _admitted(self, run: dict[str, Any], task_id: str, rec: dict[str, Any], requests: dict[str, str]) -> bool:
        """Whether the task may start its Pod: not queued (the run names no LocalQueue), or its Workload is
        admitted (the job framework creates it and waits for the queues)."""
        meta = run["metadata"]
        if self.queues is None or not (meta.get("labels") or {}).get(QUEUE_LABEL):
            return True
        job = TaskJob.of(run, task_id, rec, requests)
        rec["workload"] = workload_name(PIPELINE_RUN, job.obj["metadata"]["name"], meta["uid"])
        return self.queues.reconcile(job)

    def _release(self, run: dict[str, Any], task_id: str, rec: dict[str, Any]) -> None:
        """A finished task's Workload is marked finished: its quota goes to the next task waiting."""
        if self.queues is None or not rec.get("workload") or rec.get("workloadFinished") \
                or rec.get("phase") not in ("Succeeded", "Failed"):
            return
        self.queues.reconcile(TaskJob.of(run, task_id, rec, {}))
        rec["workloadFinished"] = True

    def _relaunch(self, ir: dict[str, Any], task_id: str, rec: dict[str, Any]) -> Launch:
        """A retry: the inputs are the ones the first attempt ran with (recorded in its executor input)."""
        first = Path(rec["taskDir"]) / "executor_input.json"
        doc = json.loads(first.read_text())
        comp = ir["components"][rec["component"]]
        return Launch(task_id, task_id.split("/")[-1], rec["component"], comp["executorLabel"],
                      doc["inputs"]["parameterValues"],
                      {k: v["artifacts"] for k, v in doc["inputs"]["artifacts"].items()},
                      comp.get("outputDefinitions") or {}, rec.get("cacheKey"), rec.get("retryPolicy") or {})

    def _observe(self, run: dict[str, Any], ir: dict[str, Any], task_id: str, rec: dict[str, Any]) -> float | None:
        """Advance one task record from what its Pod did; returns a requeue delay when waiting on a backoff."""
        now = self.clock()
        if rec.get("phase") == "Queued":
            self._launch_attempt(run, ir, task_id, rec)
            return 2.0 if rec.get("phase") == "Queued" else None  # a Workload change wakes us; a safety net
        if rec.get("phase") == "Retrying":
            if now >= float(rec.get("nextAttemptAt", 0)):
                self._launch_attempt(run, ir, task_id, rec)
                return None
            return max(float(rec["nextAttemptAt"]) - now, 0.05)
        if rec.get("phase") != "Running" or not rec.get("pod"):
            return None
        meta = run["metadata"]
        pod = self.store.try_get(POD, meta["namespace"], rec["pod"])
        phase = ((pod or {}).get("status") or {}).get("phase")
        if pod is not None and phase not in ("Succeeded", "Failed"):
            return None
        logs = self._log_tail(pod) if pod is not None else ""
        rec["log"] = logs
        task_dir = Path(rec["taskDir"])
        if phase == "Succeeded":
            try:
                doc = json.loads((task_dir / "executor_input.json").read_text())
                comp = ir["components"][rec["component"]]
                launch = Launch(task_id, task_id.split("/")[-1], rec["component"], comp["executorLabel"], {}, {},
                                comp.get("outputDefinitions") or {}, None, {})
                param_files = {k: Path(v["outputFile"]) for k, v in doc["outputs"]["parameters"].items()}
                rec["outputs"] = collect_outputs(launch, doc, Path(doc["outputs"]["outputFile"]), param_files)
            except (LaunchError, ValueError, OSError) as err:
                return self._failed(run, task_id, rec, f"outputs: {err}", now)
            rec.update(phase="Succeeded", finishedAt=now_rfc3339())
            rec.pop("message", None)
            if rec.get("cacheKey"):
                self._cache_put(rec["cacheKey"], run, task_id, rec["outputs"])
            self._lineage_record(run, task_id, rec)
            return None
        reason = "its pod was deleted" if pod is None else self._exit_reason(pod)
        return self._failed(run, task_id, rec, reason, now)

    def _failed(self, run: dict[str, Any], task_id: str, rec: dict[str, Any], reason: str, now: float) -> float | None:
        policy = rec.get("retryPolicy") or {}
        attempts = int(rec.get("attempts", 1))
        max_retries = int(policy.get("maxRetryCount") or 0)
        if attempts <= max_retries:
            delay = retry_delay(policy, attempts)
            rec.update(phase="Retrying", nextAttemptAt=now + delay,
                       message=f"attempt {attempts} failed ({reason}); retry {attempts}/{max_retries} "
                               f"in {delay:.1f}s")
            self.recorder.record(run, "Warning", "TaskRetry", f"task {task_id}: {rec['message']}")
            return max(delay, 0.05)
        tail = rec.get("log", "").strip().splitlines()[-5:]
        rec.update(phase="Failed", finishedAt=now_rfc3339(),
                   message=f"failed after {attempts} attempt(s): {reason}" + (f"; log: {' | '.join(tail)}"
                                                                              if tail else ""))
        return None

    def _exit_reason(self, pod: dict[str, Any]) -> str:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return f"exit code {term.get('exitCode')}"
        return (pod.get("status") or {}).get("reason") or "pod failed"

    def _log_tail(self, pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        path = self.executor.log_path(meta["namespace"], meta["name"], meta["uid"], CONTAINER, 0)
        try:
            data = path.read_bytes()[-LOG_TAIL:]
        except OSError:
            return ""
        return data.decode(errors="replace")

    # ---- cache and lineage --------------------------------------------------------------------------

    def _cache_path(self, key: str) -> str:
        return f"pipelines/.cache/{key[:2]}/{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        path = self.artifacts.local_path(self._cache_path(key))
        if not path.is_file():
            return None
        entry = json.loads(path.read_text())
        for group in entry["outputs"].get("artifacts", {}).values():
            for art in group:  # outputs removed since make a miss, not a broken input (a Metrics artifact
                if not Path(art["uri"]).parent.is_dir():  # may hold only metadata, so look at its folder)
                    return None
        return entry

    def _cache_put(self, key: str, run: dict[str, Any], task_id: str, outputs: dict[str, Any]) -> None:
        meta = run["metadata"]
        entry = {"outputs": outputs, "run": f"{meta['namespace']}/{meta['name']}", "task": task_id,
                 "createdAt": now_rfc3339()}
        self.artifacts.write_bytes(self._cache_path(key), json.dumps(entry).encode())

    def _lineage_record(self, run: dict[str, Any], task_id: str, rec: dict[str, Any]) -> None:
        try:
            from kaip.tracking.lineage import LineageStore

            if self._lineage is None:
                self._lineage = LineageStore(self.store)
            meta = run["metadata"]
            ns = meta["namespace"]
            run_key = f"pipelinerun:{ns}/{meta['name']}"
            task_key = f"pipelinetask:{ns}/{meta['name']}/{task_id}"
            self._lineage.record_node(run_key, "pipelinerun", ns, meta["name"], {"uid": meta["uid"]})
            self._lineage.record_node(task_key, "pipelinetask", ns, task_id,
                                      {"run": meta["name"], "component": rec.get("component"),
                                       "cached": bool(rec.get("cached"))})
            self._lineage.record_edge(run_key, task_key, "executed", ns)
            for uris in (rec.get("inputs") or {}).get("artifacts", {}).values():
                for uri in uris:  # its node was recorded by the task that produced it
                    self._lineage.record_edge(f"artifact:{uri}", task_key, "consumed_by", ns)
            for name, arts in (rec.get("outputs") or {}).get("artifacts", {}).items():
                for art in arts:
                    schema = (art.get("type") or {}).get("schemaTitle", "system.Artifact")
                    self._lineage.record_node(f"artifact:{art['uri']}", "artifact", ns, art["uri"],
                                              {"schemaTitle": schema, "output": name, **_digest(Path(art["uri"]))})
                    self._lineage.record_edge(task_key, f"artifact:{art['uri']}", "produced", ns)
        except Exception:  # lineage is a record of what happened, never a reason for a run to fail
            log.exception("could not record lineage for %s", task_id)
