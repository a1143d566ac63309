"""Application reconciler: compare what git holds at the target revision with what is live, sync when Argo CD's
rules say so, and write `status.sync`, `status.health`, `status.resources`, `status.operationState`,
`status.history` and conditions.

A revision that does not resolve, or any manifest that does not validate, stops the reconcile before anything is
written (condition ComparisonError): a sync applies all of a revision or none of it. Changes to a managed
resource wake the reconciler through its tracking annotation, which is how selfHeal reverts a manual edit.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from kaip.api import errors
from kaip.api.core import NAMESPACE
from kaip.api.gitops import APPLICATION
from kaip.api.kinds import KindRegistry
from kaip.api.validation import validate_document
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Key as QueueKey
from kaip.controlplane.manager import Result
from kaip.gitops.git import GitError, manifest_files, resolve
from kaip.gitops.sync import TRACKING, Comparison, Desired, Key, app_of, compare, load_desired, should_sync, tracking_id
from kaip.pipelines.dag import parse_duration
from kaip.store.store import Change, Store, now_rfc3339

log = logging.getLogger(__name__)

REFRESH_ANNOTATION = "argocd.argoproj.io/refresh"
DEFAULT_HISTORY = 10


def refresh_seconds() -> float:
    return float(os.environ.get("KAIP_GITOPS_REFRESH_SECONDS", "180"))


def managed_app_keys(change: Change) -> Iterable[QueueKey]:
    """Map a change of any resource to the Application that manages it (its tracking annotation)."""
    app = app_of(change.object)
    if app is not None:
        yield app


class ApplicationReconciler:
    def __init__(self, store: Store, registry: KindRegistry, recorder: EventRecorder, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.registry = registry
        self.recorder = recorder
        self.clock = clock

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        app = self.store.try_get(APPLICATION, namespace, name)
        if app is None or app["metadata"].get("deletionTimestamp"):
            return None
        spec = app["spec"]
        status = copy.deepcopy(app.get("status") or {})
        operation = app.get("operation")
        source = dict(spec["source"])
        if operation and (operation["sync"].get("source") or operation["sync"].get("revision")):
            source = {**source, **(operation["sync"].get("source") or {})}
            if operation["sync"].get("revision"):
                source["targetRevision"] = operation["sync"]["revision"]
        dest_ns = spec["destination"].get("namespace") or namespace
        status["reconciledAt"] = now_rfc3339()
        status["sourceType"] = "Directory"
        compared_to = {"source": spec["source"], "destination": spec["destination"]}
        try:
            revision = resolve(source["repoURL"], source.get("targetRevision"))
            directory = source.get("directory") or {}
            files = manifest_files(source["repoURL"], revision, source.get("path"), bool(directory.get("recurse")))
            desired, errs = load_desired(files, self.registry, dest_ns, directory.get("include"),
                                         directory.get("exclude"))
            if errs:
                raise GitError("; ".join(errs))
            allow_empty = bool(((spec.get("syncPolicy") or {}).get("automated") or {}).get("allowEmpty"))
            if not desired and not allow_empty and not operation:
                raise GitError(f"no manifests found at {source.get('path') or '/'} (revision {revision[:12]}); "
                               "set syncPolicy.automated.allowEmpty to allow an empty application")
        except GitError as err:
            status["sync"] = {"status": "Unknown", "comparedTo": compared_to}
            status.setdefault("health", {"status": "Unknown"})
            set_condition(status, "ComparisonError", True, "ComparisonError", str(err))
            self._write(app, status, clear_operation=bool(operation))
            self.recorder.record(app, "Warning", "ComparisonError", str(err)[:1000])
            return Result(requeue_after=refresh_seconds())
        self._drop_condition(status, "ComparisonError")
        for d in desired:
            self._track(app, d)
        managed = [self._key(r) for r in status.get("resources") or []]
        comparison = compare(desired, self._live(desired, managed), managed)
        policy = spec.get("syncPolicy") or {}
        automated = policy.get("automated")
        auto_on = automated is not None and automated.get("enabled", True) is not False
        last = ((status.get("operationState") or {}).get("syncResult") or {}).get("revision")
        requeue = refresh_seconds()
        if should_sync(automated=auto_on, self_heal=bool((automated or {}).get("selfHeal")), comparison=comparison,
                       revision=revision, last_synced_revision=last, operation=bool(operation)):
            prune = bool((operation or {}).get("sync", {}).get("prune")) if operation else \
                bool((automated or {}).get("prune"))
            initiated = (operation or {}).get("initiatedBy") or {"automated": True}
            ok = self._sync(app, status, desired, comparison, revision, source, prune, initiated)
            if not ok:
                requeue = self._retry_delay(policy, status)
            comparison = compare(desired, self._live(desired, managed), managed)
        status["sync"] = {"status": comparison.sync_status, "revision": revision, "comparedTo": compared_to}
        health, message = comparison.health
        if (status.get("health") or {}).get("status") != health:
            status["health"] = {"status": health, "lastTransitionTime": now_rfc3339()}
        if message:
            status["health"]["message"] = message
        else:
            status["health"].pop("message", None)
        status["resources"] = [r.as_dict() for r in comparison.resources]
        self._write(app, status, clear_operation=bool(operation))
        if health == "Progressing":
            requeue = min(requeue, 2.0)
        return Result(requeue_after=requeue)

    # ---- syncing ------------------------------------------------------------------------------------

    def _sync(self, app: dict[str, Any], status: dict[str, Any], desired: list[Desired], comparison: Comparison,
              revision: str, source: dict[str, Any], prune: bool, initiated: dict[str, Any]) -> bool:
        started = now_rfc3339()
        by_key = {d.key: d for d in desired}
        options = (app["spec"].get("syncPolicy") or {}).get("syncOptions") or []
        dest_ns = app["spec"]["destination"].get("namespace")
        if "CreateNamespace=true" in options and dest_ns and self.store.try_get(NAMESPACE, None, dest_ns) is None:
            try:
                self.store.create(NAMESPACE, validate_document(NAMESPACE, {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": dest_ns}}, namespace=None))
            except errors.ApiError as err:
                if err.code != 409:
                    raise
        results: list[dict[str, Any]] = []
        failed = ""
        for r in comparison.resources:
            group, kind, ns, name = r.key
            entry = {"group": group, "version": r.version, "kind": kind, "namespace": ns, "name": name}
            try:
                if r.requires_pruning:
                    if not prune:
                        results.append({**entry, "status": "PruneSkipped", "message": "ignored (requires pruning)"})
                        continue
                    info = self.registry.by_key(f"{group}/{kind}")
                    self.store.delete(info, ns or None, name)
                    results.append({**entry, "status": "Pruned", "message": "pruned"})
                elif r.status == "OutOfSync":
                    verb = self._apply(by_key[r.key])
                    results.append({**entry, "status": "Synced", "message": f"{kind.lower()}/{name} {verb}"})
            except errors.ApiError as err:
                failed = f"{kind} {ns}/{name}: {err.message}"
                results.append({**entry, "status": "SyncFailed", "message": err.message})
                break
        phase = "Failed" if failed else "Succeeded"
        previous = status.get("operationState") or {}
        retry_count = int(previous.get("retryCount", 0)) + 1 if failed and previous.get("phase") == "Failed" else 0
        status["operationState"] = {
            "operation": {"sync": {"revision": revision, "prune": prune}, "initiatedBy": initiated},
            "phase": phase, "message": failed or "successfully synced (all tasks run)",
            "syncResult": {"revision": revision, "resources": results, "source": source},
            "startedAt": started, "finishedAt": now_rfc3339(), "retryCount": retry_count}
        if failed:
            set_condition(status, "SyncError", True, "SyncError", failed)
            self.recorder.record(app, "Warning", "SyncError", failed[:1000])
            return False
        self._drop_condition(status, "SyncError")
        history = status.setdefault("history", [])
        next_id = (history[-1]["id"] + 1) if history else 0
        history.append({"id": next_id, "revision": revision, "deployedAt": now_rfc3339(), "deployStartedAt": started,
                        "source": source, "initiatedBy": initiated})
        limit = app["spec"].get("revisionHistoryLimit")
        del history[:max(len(history) - (DEFAULT_HISTORY if limit is None else limit), 0)]
        self.recorder.record(app, "Normal", "OperationCompleted", f"sync to {revision[:12]} succeeded")
        return True

    def _apply(self, d: Desired) -> str:
        _, _, ns, name = d.key
        live = self.store.try_get(d.info, ns or None, name)
        if live is None:
            self.store.create(d.info, d.obj)
            return "created"

        def replace(obj: dict[str, Any]) -> dict[str, Any]:
            for k in [k for k in obj if k not in ("apiVersion", "kind", "metadata", "status")]:
                del obj[k]
            obj.update({k: v for k, v in d.obj.items() if k not in ("apiVersion", "kind", "metadata", "status")})
            for field_ in ("labels", "annotations"):
                merged = {**(obj["metadata"].get(field_) or {}), **(d.obj["metadata"].get(field_) or {})}
                if merged:
                    obj["metadata"][field_] = merged
            return obj
        self.store.mutate(d.info, ns or None, name, replace)
        return "configured"

    def _retry_delay(self, policy: dict[str, Any], status: dict[str, Any]) -> float:
        retry = policy.get("retry") or {}
        backoff = retry.get("backoff") or {}
        n = int((status.get("operationState") or {}).get("retryCount", 0))
        limit = retry.get("limit")
        if limit is not None and 0 <= int(limit) <= n:
            return refresh_seconds()
        base = parse_duration(backoff.get("duration"), 5.0)
        cap = parse_duration(backoff.get("maxDuration"), 180.0)
        return min(base * float(backoff.get("factor") or 2) ** n, cap)

    # ---- helpers ------------------------------------------------------------------------------------

    def _track(self, app: dict[str, Any], d: Desired) -> None:
        meta = d.obj["metadata"]
        meta["annotations"] = {**(meta.get("annotations") or {}),
                               TRACKING: tracking_id(app["metadata"]["namespace"], app["metadata"]["name"], d.key)}

    @staticmethod
    def _key(r: dict[str, Any]) -> Key:
        return (r.get("group", ""), r["kind"], r.get("namespace", ""), r["name"])

    def _live(self, desired: list[Desired], managed: list[Key]) -> dict[Key, dict[str, Any] | None]:
        out: dict[Key, dict[str, Any] | None] = {}
        for d in desired:
            out[d.key] = self.store.try_get(d.info, d.key[2] or None, d.key[3])
        for key in managed:
            if key in out:
                continue
            try:
                info = self.registry.by_key(f"{key[0]}/{key[1]}")
            except KeyError:
                continue
            out[key] = self.store.try_get(info, key[2] or None, key[3])
        return out

    @staticmethod
    def _drop_condition(status: dict[str, Any], type_: str) -> None:
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != type_]
        if not status["conditions"]:
            status.pop("conditions")

    def _write(self, app: dict[str, Any], status: dict[str, Any], *, clear_operation: bool) -> None:
        meta = app["metadata"]
        if clear_operation or REFRESH_ANNOTATION in (meta.get("annotations") or {}):
            def clear(obj: dict[str, Any]) -> dict[str, Any]:
                obj.pop("operation", None)
                (obj["metadata"].get("annotations") or {}).pop(REFRESH_ANNOTATION, None)
                return obj
            self.store.mutate(APPLICATION, meta["namespace"], meta["name"], clear)
        compare_keys = ("reconciledAt",)
        old = {k: v for k, v in (app.get("status") or {}).items() if k not in compare_keys}
        new = {k: v for k, v in status.items() if k not in compare_keys}
        if old == new:
            return
        self.store.replace_status(APPLICATION, meta["namespace"], meta["name"], status)
