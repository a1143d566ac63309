"""InferenceService reconciler: revisions, replica Pods, traffic, and status, the way KServe on Knative does it.

Each reconcile reads the InferenceService and its Pods, then: makes a new revision when the predictor's process
changed (the revision records the spec it was made from, so a rollback can return to it), decides the traffic
split (`kaip.serving.traffic.plan`), sizes every revision with its autoscaler, creates or deletes replica Pods
(owned by the InferenceService, so they go with it), does the same for the transformer and the explainer (each
with its own revisions, no canary), tells the gateway the routes and endpoints, and writes status. It runs again
every second while the InferenceService exists: that is the autoscaler's pace.
"""

from __future__ import annotations

import copy
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from kaip import config
from kaip.api import errors
from kaip.api.core import POD
from kaip.api.serving import CLUSTER_SERVING_RUNTIME, INFERENCE_SERVICE, SERVING_RUNTIME, predictor_model
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.executor.local import LocalExecutor
from kaip.serving import render
from kaip.serving.autoscaler import policy_for
from kaip.serving.batcher import BatcherSettings
from kaip.serving.internal import explainer_route_name, internal_token, load_key, predictor_route_name
from kaip.serving.selection import SelectionError, select_runtime
from kaip.serving.storage import LORA_MODULES_FLAGS, StorageError, resolve_lora_module_args, resolve_storage_uri
from kaip.serving.system import Route, ServingSystem, free_port
from kaip.serving.traffic import Rollout, Target, plan

log = logging.getLogger(__name__)

RESYNC_SECONDS = 1.0
DEFAULT_TIMEOUT = 300.0  # Knative's default revision timeout
MAX_REVISIONS = 10
PROBE_PATHS = {"kaip-vllm": "/health"}
COMPONENTS = ("transformer", "explainer")  # beside the predictor, each with its own revisions and replicas


class ResolveError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InferenceServiceReconciler:
    def __init__(self, store: Any, executor: LocalExecutor, system: ServingSystem, recorder: EventRecorder,
                 home: Path) -> None:
        self.store = store
        self.executor = executor
        self.system = system
        self.recorder = recorder
        self.home = home
        self._key: bytes | None = None

    # ---- resolution --------------------------------------------------------------------------------------

    def _resolve(self, isvc: dict[str, Any], spec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any],
                                                                          str | None, str]:
        """(runtime container or None for a custom container, model container, model dir, probe path)."""
        namespace = isvc["metadata"]["namespace"]
        if spec.get("containers"):
            return None, spec["containers"][0], None, "/v2/health/ready"
        model, fmt = predictor_model(spec)
        protocol = model.get("protocolVersion") or "v1"
        namespaced, _ = self.store.list(SERVING_RUNTIME, namespace)
        cluster, _ = self.store.list(CLUSTER_SERVING_RUNTIME)
        stored = {rt["metadata"]["name"] for rt in cluster}
        cluster += [rt for rt in copy.deepcopy(render.BUILTIN_RUNTIMES) if rt["metadata"]["name"] not in stored]
        try:
            selected = select_runtime(model_format=fmt, format_version=(model.get("modelFormat") or {}).get("version"),
                                      protocol=protocol, explicit=model.get("runtime"), namespaced=namespaced,
                                      cluster=cluster)
        except SelectionError as err:
            raise ResolveError("NoSupportingRuntime", str(err)) from err
        model_dir = None
        if model.get("storageUri"):
            try:
                model_dir = str(resolve_storage_uri(model["storageUri"], namespace=namespace, home=self.home,
                                                    store=self.store))
            except StorageError as err:
                raise ResolveError("InvalidStorageURI", str(err)) from err
        if any(a.partition("=")[0] in LORA_MODULES_FLAGS for a in model.get("args") or []):
            try:  # LoRA adapters' URIs, as storageUri: the replica gets local folders
                model = {**model, "args": resolve_lora_module_args(model["args"], namespace=namespace,
                                                                   home=self.home, store=self.store)}
            except StorageError as err:
                raise ResolveError("InvalidStorageURI", str(err)) from err
        containers = selected.runtime["spec"]["containers"]
        main = next((c for c in containers if c["name"] == "kserve-container"), containers[0])
        return main, model, model_dir, PROBE_PATHS.get(selected.name, "/v2/health/ready")

    # ---- reconcile ---------------------------------------------------------------------------------------

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        isvc = self.store.try_get(INFERENCE_SERVICE, namespace, name)
        if isvc is None or isvc["metadata"].get("deletionTimestamp"):
            revisions = [rev for (ns, rev), owner in list(self.system.owners.items()) if owner == key]
            self.system.drop(namespace, name, revisions)
            return None
        status = copy.deepcopy(isvc.get("status") or {})
        comp = status.setdefault("components", {}).setdefault("predictor", {})
        predictor = isvc["spec"]["predictor"]
        revisions: list[dict[str, Any]] = comp.setdefault("revisions", [])
        generation = isvc["metadata"].get("generation", 1)

        # 1. The revision the spec describes (a new one if the process changed and it can be resolved).
        want_hash = render.revision_hash(predictor)
        latest = next((r for r in revisions if r["hash"] == want_hash), None)
        problem: ResolveError | None = None
        try:
            self._resolve(isvc, predictor)
        except ResolveError as err:
            problem = err
        if latest is None and problem is None:
            number = max((int(r["name"].rsplit("-", 1)[1]) for r in revisions), default=0) + 1
            latest = {"name": f"{name}-predictor-{number:05d}", "hash": want_hash,
                      "spec": render.revision_spec(predictor), "everReady": False}
            revisions.append(latest)
            self.recorder.record(isvc, "Normal", "RevisionCreated", f"Created revision {latest['name']}")
        rollout = Rollout(comp.get("latestRolledoutRevision"), comp.get("previousRolledoutRevision"))
        latest_name = latest["name"] if latest else rollout.rolled_out
        if problem is not None and latest is not None and latest["name"] != rollout.rolled_out \
                and not latest.get("everReady"):
            latest_name = rollout.rolled_out  # a revision that cannot start never takes traffic
        pods = self._pods(namespace, name)

        # 2. Traffic.
        by_name = {r["name"]: r for r in revisions}
        if latest_name is None:
            traffic_plan = None
        else:
            latest_ready = bool(self.system.ready_pods(namespace, latest_name))
            traffic_plan = plan(latest_name, latest_ready, rollout, predictor.get("canaryTrafficPercent"))
            if latest_ready and not by_name[latest_name].get("everReady"):
                by_name[latest_name]["everReady"] = True
            if traffic_plan.rollout.rolled_out != rollout.rolled_out and traffic_plan.rollout.rolled_out:
                self.recorder.record(isvc, "Normal", "RolledOut",
                                     f"Revision {traffic_plan.rollout.rolled_out} takes all the traffic")
        routed = {t.revision: t.percent for t in traffic_plan.targets} if traffic_plan else {}

        # 3. Replicas per revision, and the endpoints the gateway may use.
        policy = policy_for(predictor, isvc["metadata"].get("annotations") or {})
        now = time.monotonic()
        failures: dict[str, str] = {}
        for rev in revisions:
            rev_name = rev["name"]
            rev_pods = pods.get(rev_name, [])
            ready = len(self.system.ready_pods(namespace, rev_name))
            if routed.get(rev_name, 0) > 0:
                scaler = self.system.autoscaler(namespace, rev_name, policy)
                want = scaler.desired(now, ready, inflight=self.system.inflight(namespace, rev_name))
                if not rev.get("everReady"):
                    want = max(want, 1)
            elif rev_name == latest_name:
                want = max(1, policy.min_replicas)
            else:
                want = 0
            rev["replicas"] = want
            if failure := self._failure(rev_pods):
                failures[rev_name] = failure
            self._scale(isvc, rev, rev_pods, want)
        known = {r["name"] for r in revisions}
        components: dict[str, tuple[list[Target], bool]] = {}  # component -> (traffic, serving)
        for component in COMPONENTS:
            c_spec = isvc["spec"].get(component)
            if c_spec:
                c_comp = status["components"].setdefault(component, {})
                c_targets, c_serving, c_failure = self._component(isvc, component, c_spec, c_comp, pods, now)
                components[component] = (c_targets, c_serving)
                known |= {r["name"] for r in c_comp["revisions"]}
                if c_failure:
                    failures[component] = c_failure
            else:
                status["components"].pop(component, None)
                if status.get("conditions"):  # a removed component's condition goes with it
                    status["conditions"] = [c for c in status["conditions"]
                                            if c.get("type") != f"{component.capitalize()}Ready"]
                self.system.forget(namespace, [rev for (ns, rev), owner in list(self.system.owners.items())
                                               if owner == key and rev.startswith(f"{name}-{component}-")])
        transformer = isvc["spec"].get("transformer")
        explainer = isvc["spec"].get("explainer")
        for rev_name, rev_pods in pods.items():
            if rev_name not in known:
                for pod in rev_pods:
                    self._delete_pod(pod)
        # Forget old revisions that serve nothing (keep the rolled-out pair and the latest for rollbacks).
        keep = {latest_name, rollout.rolled_out, rollout.previous}
        if traffic_plan is not None:
            keep |= {traffic_plan.rollout.rolled_out, traffic_plan.rollout.previous}
        while len(revisions) > MAX_REVISIONS:
            old = next((r for r in revisions if r["name"] not in keep and not pods.get(r["name"])), None)
            if old is None:
                break
            revisions.remove(old)

        # 4. Routes for the gateway.
        annotations = isvc["metadata"].get("annotations") or {}
        public = annotations.get(render.PUBLIC_ANNOTATION, "").lower() == "true"
        if traffic_plan is not None:
            # The public route, unless a transformer takes it; and what a transformer or an explainer calls, an
            # internal route that the InferenceService's token opens (not logged: the user's request is logged on
            # the route it came in by).
            for route_name, wanted in ((name, not transformer), (predictor_route_name(name), transformer or explainer)):
                if wanted:
                    internal = route_name != name
                    self.system.set_route(Route(
                        namespace, route_name, traffic_plan.targets,
                        timeout=float(predictor.get("timeout") or DEFAULT_TIMEOUT),
                        concurrency=int(predictor.get("containerConcurrency") or 0), public=public and not internal,
                        logger=None if internal else predictor.get("logger"), annotations=annotations,
                        scale_metric=predictor.get("scaleMetric") or "concurrency",
                        batcher=BatcherSettings.from_spec(predictor.get("batcher"))))
        if not (transformer or explainer):
            self.system.routes.pop((namespace, predictor_route_name(name)), None)
        for component, route_name in (("transformer", name), ("explainer", explainer_route_name(name))):
            c_spec = isvc["spec"].get(component)
            if c_spec and components[component][0]:
                self.system.set_route(Route(
                    namespace, route_name, components[component][0],
                    timeout=float(c_spec.get("timeout") or DEFAULT_TIMEOUT),
                    concurrency=int(c_spec.get("containerConcurrency") or 0), public=public,
                    logger=c_spec.get("logger") or predictor.get("logger"), annotations=annotations,
                    scale_metric=c_spec.get("scaleMetric") or "concurrency",
                    batcher=BatcherSettings.from_spec(c_spec.get("batcher"))))
        if not explainer:
            self.system.routes.pop((namespace, explainer_route_name(name)), None)

        # 5. Status.
        self._status(isvc, status, comp, traffic_plan, latest_name, problem, failures, generation, routed,
                     created=latest["name"] if latest else None)
        for component, (_, c_serving) in components.items():
            self._component_status(status, component, c_serving, failures.get(component), generation)
        if status != (isvc.get("status") or {}):
            self.store.replace_status(INFERENCE_SERVICE, namespace, name, status)
        return Result(requeue_after=RESYNC_SECONDS)

    # ---- pods --------------------------------------------------------------------------------------------

    def _pods(self, namespace: str, name: str) -> dict[str, list[dict[str, Any]]]:
        items, _ = self.store.list(POD, namespace)
        out: dict[str, list[dict[str, Any]]] = {}
        for pod in items:
            labels = pod["metadata"].get("labels") or {}
            if labels.get(render.ISVC_LABEL) == name and render.REVISION_LABEL in labels:
                out.setdefault(labels[render.REVISION_LABEL], []).append(pod)
        return out

    def _scale(self, isvc: dict[str, Any], rev: dict[str, Any], pods: list[dict[str, Any]], want: int,
               component: str = "predictor") -> None:
        namespace = isvc["metadata"]["namespace"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ready = set(self.system.ready_pods(namespace, rev["name"]))
        victims: list[dict[str, Any]] = []
        if len(live) > want:
            # Unready replicas go first, then the newest.
            order = sorted(live, key=lambda p: (p["metadata"]["name"] in ready, p["metadata"]["creationTimestamp"]))
            victims = order[:len(live) - want]
        keep = [p for p in live if p not in victims]
        endpoints = []
        for pod in keep:
            cs = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
            if "running" in (cs.get("state") or {}):
                port = int(pod["metadata"]["annotations"][render.PORT_ANNOTATION])
                endpoints.append((pod["metadata"]["name"], port, int(cs.get("restartCount", 0))))
        isvc_key = (namespace, isvc["metadata"]["name"])
        probe = "/v2/health/ready"
        if component == "predictor":
            try:
                _, _, _, probe = self._resolve(isvc, {**isvc["spec"]["predictor"], **rev["spec"]})
            except ResolveError:
                pass
        self.system.set_endpoints(isvc_key, rev["name"], endpoints, probe)
        inflight = {ep.pod: ep.inflight for ep in self.system.endpoints.get((namespace, rev["name"]), [])}
        for pod in victims:
            if self.system.inflight(namespace, rev["name"]) == 0 or inflight.get(pod["metadata"]["name"], 0) == 0:
                self._delete_pod(pod)
        if len(live) < want:
            for _ in range(want - len(live)):
                if component == "predictor":
                    self._create_pod(isvc, rev)
                else:
                    self._create_component_pod(isvc, rev, component)
            self.recorder.record(isvc, "Normal", "ScaledUp", f"Scaled revision {rev['name']} to {want}")

    def _create_pod(self, isvc: dict[str, Any], rev: dict[str, Any]) -> None:
        spec = {**isvc["spec"]["predictor"], **rev["spec"]}
        for key in render.REVISION_FIELDS:
            if key not in rev["spec"]:
                spec.pop(key, None)
        try:
            runtime, model, model_dir, _ = self._resolve(isvc, spec)
        except ResolveError as err:
            log.info("cannot create a replica of %s: %s", rev["name"], err)
            return
        port = free_port()
        name = isvc["metadata"]["name"]
        container = render.render_container(runtime, model, name=name, model_dir=model_dir, port=port) \
            if runtime is not None else render.render_container(None, model, name=name, model_dir=None, port=port)
        pod_name = f"{rev['name']}-{secrets.token_hex(3)}"
        pod = render.render_pod(isvc, "predictor", rev["name"], pod_name, container, spec, port)
        try:
            self.store.create(POD, pod)
        except errors.ApiError as err:
            if err.code not in (404, 409):
                raise

    def _create_component_pod(self, isvc: dict[str, Any], rev: dict[str, Any], component: str) -> None:
        """A replica of the transformer or the explainer: both reach the predictor through its internal route."""
        meta = isvc["metadata"]
        spec = rev["spec"]
        port = free_port()
        server = ((config.read_credentials(self.home) or {}).get("server") or "").rstrip("/")
        predictor_url = f"{server}/serving/{meta['namespace']}/{predictor_route_name(meta['name'])}"
        if component == "explainer":
            # KServe gives an explainer a host, to which it adds `http://` and the protocol's path.
            container = render.render_explainer_container(
                spec["containers"][0], name=meta["name"], port=port, token=self._token(isvc),
                predictor_host=predictor_url.split("://", 1)[-1])
        else:
            container = render.render_transformer_container(spec["containers"][0], name=meta["name"], port=port,
                                                            predictor_url=predictor_url, token=self._token(isvc))
        pod = render.render_pod(isvc, component, rev["name"], f"{rev['name']}-{secrets.token_hex(3)}",
                                container, spec, port)
        try:
            self.store.create(POD, pod)
        except errors.ApiError as err:
            if err.code not in (404, 409):
                raise

    def _token(self, isvc: dict[str, Any]) -> str:
        """The InferenceService's internal token, registered with the gateway's authorizer."""
        meta = isvc["metadata"]
        if self._key is None:
            self._key = load_key(self.home)
        token = internal_token(self._key, meta["namespace"], meta["name"], meta["uid"])
        self.system.internal_tokens[token] = (meta["namespace"], meta["name"])
        return token

    # ---- transformer and explainer -------------------------------------------------------------------------

    def _component(self, isvc: dict[str, Any], component: str, c_spec: dict[str, Any], comp: dict[str, Any],
                   pods: dict[str, list[dict[str, Any]]], now: float) -> tuple[list[Target], bool, str | None]:
        """Revisions and replicas of the transformer or the explainer: the latest revision takes all the traffic
        once ready (the last ready one serves until then). Returns the traffic, whether it is serving, and a
        failure if any."""
        meta = isvc["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self._token(isvc)
        revisions: list[dict[str, Any]] = comp.setdefault("revisions", [])
        want_hash = render.component_hash(c_spec)
        latest = next((r for r in revisions if r["hash"] == want_hash), None)
        if latest is None:
            number = max((int(r["name"].rsplit("-", 1)[1]) for r in revisions), default=0) + 1
            latest = {"name": f"{name}-{component}-{number:05d}", "hash": want_hash,
                      "spec": {k: copy.deepcopy(c_spec[k]) for k in render.COMPONENT_FIELDS if k in c_spec},
                      "everReady": False}
            revisions.append(latest)
            self.recorder.record(isvc, "Normal", "RevisionCreated", f"Created revision {latest['name']}")
        if self.system.ready_pods(namespace, latest["name"]):
            latest["everReady"] = True
        serving_rev = latest if latest["everReady"] else \
            next((r for r in reversed(revisions) if r.get("everReady")), latest)
        policy = policy_for(c_spec, meta.get("annotations") or {})
        failure = None
        for rev in revisions:
            rev_pods = pods.get(rev["name"], [])
            ready = len(self.system.ready_pods(namespace, rev["name"]))
            if rev is serving_rev:
                scaler = self.system.autoscaler(namespace, rev["name"], policy)
                want = scaler.desired(now, ready, inflight=self.system.inflight(namespace, rev["name"]))
                if not rev.get("everReady"):
                    want = max(want, 1)
            elif rev is latest:
                want = max(1, policy.min_replicas)
            else:
                want = 0
            rev["replicas"] = want
            if rev is latest:
                failure = self._failure(rev_pods)
            self._scale(isvc, rev, rev_pods, want, component=component)
        while len(revisions) > MAX_REVISIONS:
            old = next((r for r in revisions if r is not latest and r is not serving_rev
                        and not pods.get(r["name"])), None)
            if old is None:
                break
            revisions.remove(old)
        comp["latestCreatedRevision"] = latest["name"]
        ready_revs = [r["name"] for r in revisions if r.get("everReady")]
        if ready_revs:
            comp["latestReadyRevision"] = ready_revs[-1]
        targets = [Target(serving_rev["name"], 100, serving_rev is latest)]
        comp["traffic"] = [t.to_status() for t in targets]
        server = ((config.read_credentials(self.home) or {}).get("server") or "").rstrip("/")
        # The component's own address, as upstream's: the explainer's route also answers `…/{name}:explain`.
        comp["url"] = f"{server}/serving/{namespace}/" + (explainer_route_name(name) if component == "explainer"
                                                          else name)
        serving = bool(self.system.ready_pods(namespace, serving_rev["name"])) or \
            bool(serving_rev.get("everReady") and serving_rev["replicas"] == 0)
        return targets, serving, failure

    def _component_status(self, status: dict[str, Any], component: str, serving: bool, failure: str | None,
                          generation: int) -> None:
        """`TransformerReady` / `ExplainerReady`; `Ready` (and `IngressReady`, as KServe's ingress waits for every
        component) needs it."""
        kind = component.capitalize()
        if serving:
            set_condition(status, f"{kind}Ready", True, "RevisionReady", "", generation=generation)
        elif failure:
            set_condition(status, f"{kind}Ready", False, "RevisionFailed", failure, generation=generation)
        else:
            set_condition(status, f"{kind}Ready", False, "RevisionMissing",
                          f"waiting for the {component} to become ready", generation=generation)
        if not serving:
            set_condition(status, "IngressReady", False, "NoReadyRevision", f"the {component} is not ready",
                          generation=generation)
            set_condition(status, "Ready", False, f"{kind}NotReady", f"the {component} is not ready",
                          generation=generation)

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        try:
            self.store.delete(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
        except errors.ApiError as err:
            if err.code != 404:
                raise

    def _failure(self, pods: list[dict[str, Any]]) -> str | None:
        """Why a revision's replicas keep failing (the last lines of the failed process's log), or None."""
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated")
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if not term or (waiting.get("reason") != "CrashLoopBackOff" and "terminated" not in cs["state"]):
                    continue
                meta = pod["metadata"]
                attempt = int(cs.get("restartCount", 0)) - (0 if "terminated" in cs["state"] else 1)
                path = self.executor.log_path(meta["namespace"], meta["name"], meta["uid"], cs["name"],
                                              max(attempt, 0))
                try:
                    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
                except OSError:
                    lines = []
                tail = lines[-1] if lines else ""
                return (f"replica {meta['name']} exited with code {term.get('exitCode')} "
                        f"({waiting.get('reason') or term.get('reason')}): {tail}").strip()
        return None

    # ---- status ------------------------------------------------------------------------------------------

    def _status(self, isvc: dict[str, Any], status: dict[str, Any], comp: dict[str, Any], traffic_plan: Any,
                latest_name: str | None, problem: ResolveError | None, failures: dict[str, str], generation: int,
                routed: dict[str, int], created: str | None = None) -> None:
        meta = isvc["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        server = ((config.read_credentials(self.home) or {}).get("server") or "").rstrip("/")
        url = f"{server}/serving/{namespace}/{name}"
        status["url"] = url
        status["address"] = {"url": url}
        status["observedGeneration"] = generation
        revisions = comp["revisions"]
        # The revision of the current spec: a rollback to an earlier spec reuses that revision, which is then the
        # latest one (not the last one made).
        latest = created or (revisions[-1]["name"] if revisions else None)
        if latest:
            comp["latestCreatedRevision"] = latest
        ready_revs = [r["name"] for r in revisions if r.get("everReady")]
        if ready_revs:
            comp["latestReadyRevision"] = latest if latest in ready_revs else ready_revs[-1]
        if traffic_plan is not None:
            if traffic_plan.rollout.rolled_out:
                comp["latestRolledoutRevision"] = traffic_plan.rollout.rolled_out
            if traffic_plan.rollout.previous:
                comp["previousRolledoutRevision"] = traffic_plan.rollout.previous
            comp["traffic"] = [t.to_status() for t in traffic_plan.targets]
        comp["url"] = url
        # Serving: a routed revision has a ready replica, or was scaled to zero after having been ready.
        serving = False
        for rev in revisions:
            scaled_to_zero = rev.get("everReady") and rev["replicas"] == 0
            if routed.get(rev["name"], 0) > 0 and (self.system.ready_pods(namespace, rev["name"]) or scaled_to_zero):
                serving = True
        latest_failure = failures.get(latest_name or "")
        if problem is not None and (latest_name is None or latest_name == comp.get("latestRolledoutRevision")) \
                and not serving:
            set_condition(status, "PredictorReady", False, problem.reason, problem.message, generation=generation)
        elif serving:
            set_condition(status, "PredictorReady", True, "RevisionReady",
                          f"revision {comp.get('latestRolledoutRevision')} is serving", generation=generation)
        elif latest_failure:
            set_condition(status, "PredictorReady", False, "RevisionFailed", latest_failure, generation=generation)
        else:
            set_condition(status, "PredictorReady", False, "RevisionMissing",
                          f"waiting for revision {latest_name} to become ready", generation=generation)
        if problem is not None:
            set_condition(status, "LatestDeploymentReady", False, problem.reason, problem.message,
                          generation=generation)
        elif latest_failure:
            set_condition(status, "LatestDeploymentReady", False, "RevisionFailed", latest_failure,
                          generation=generation)
        elif latest_name and self.system.ready_pods(namespace, latest_name):
            set_condition(status, "LatestDeploymentReady", True, "RevisionReady", "", generation=generation)
        else:
            set_condition(status, "LatestDeploymentReady", False, "Deploying",
                          f"waiting for revision {latest_name} to become ready", generation=generation)
        set_condition(status, "IngressReady", serving, "IngressReady" if serving else "NoReadyRevision",
                      f"/serving/{namespace}/{name}" if serving else "no routed revision is ready",
                      generation=generation)
        set_condition(status, "Ready", serving, "Ready" if serving else "PredictorNotReady",
                      "" if serving else "the predictor is not ready", generation=generation)
        failure = problem.message if problem else latest_failure
        model_status: dict[str, Any] = {
            "transitionStatus": "UpToDate" if serving and not failure else
            ("InvalidSpec" if problem else ("BlockedByFailedLoad" if failure else "InProgress")),
            "states": {"activeModelState": "Loaded" if serving else "Pending",
                       "targetModelState": "FailedToLoad" if failure else ("Loaded" if serving else "Loading")},
        }
        if failure:
            model_status["lastFailureInfo"] = {"reason": problem.reason if problem else "ModelLoadFailed",
                                               "message": failure}
        status["modelStatus"] = model_status
