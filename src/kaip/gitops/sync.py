"""The decisions of a GitOps sync, pure: parse and validate what git holds, compare it with what is live, roll up
health, decide whether to sync. The controller does the reading and the writing."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import yaml

from kaip.api.errors import ApiError
from kaip.api.kinds import KindInfo, KindRegistry
from kaip.api.validation import ENVELOPE, validate_document

TRACKING = "argocd.argoproj.io/tracking-id"
HEALTH_ORDER = ["Healthy", "Suspended", "Progressing", "Missing", "Degraded", "Unknown"]

Key = tuple[str, str, str, str]  # group, kind, namespace, name


@dataclass
class Desired:
    key: Key
    info: KindInfo
    obj: dict[str, Any]
    where: str


@dataclass
class ResourceStatus:
    key: Key
    version: str
    status: str  # Synced / OutOfSync
    health: str
    message: str = ""
    requires_pruning: bool = False

    def as_dict(self) -> dict[str, Any]:
        group, kind, ns, name = self.key
        out: dict[str, Any] = {"group": group, "version": self.version, "kind": kind, "name": name,
                               "status": self.status, "health": {"status": self.health}}
        if ns:
            out["namespace"] = ns
        if self.message:
            out["health"]["message"] = self.message
        if self.requires_pruning:
            out["requiresPruning"] = True
        return out


@dataclass
class Comparison:
    resources: list[ResourceStatus] = field(default_factory=list)

    @property
    def sync_status(self) -> str:
        return "Synced" if all(r.status == "Synced" for r in self.resources) else "OutOfSync"

    @property
    def health(self) -> tuple[str, str]:
        worst, message = "Healthy", ""
        for r in self.resources:
            if r.requires_pruning:
                continue
            if HEALTH_ORDER.index(r.health) > HEALTH_ORDER.index(worst):
                worst, message = r.health, f"{r.key[1]}/{r.key[3]}: {r.message}" if r.message else ""
        return worst, message


def tracking_id(app_ns: str, app: str, key: Key) -> str:
    group, kind, ns, name = key
    return f"{app_ns}_{app}:{group}/{kind}:{ns}/{name}"


def app_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """The (namespace, name) of the Application that manages `obj`, from its tracking annotation."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(TRACKING, "")
    head, sep, _ = value.partition(":")
    ns, us, name = head.partition("_")
    return (ns, name) if sep and us else None


def load_desired(files: dict[str, str], registry: KindRegistry, default_ns: str | None,
                 include: str | None = None, exclude: str | None = None) -> tuple[list[Desired], list[str]]:
    """Every document of every file, validated as the API would validate it; errors name the file and document."""
    desired: list[Desired] = []
    errs: list[str] = []
    seen: dict[Key, str] = {}
    for path, text in files.items():
        base = path.rsplit("/", 1)[-1]
        if include and not any(fnmatch.fnmatch(base, p.strip()) for p in include.strip("{}").split(",")):
            continue
        if exclude and any(fnmatch.fnmatch(base, p.strip()) for p in exclude.strip("{}").split(",")):
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as err:
            errs.append(f"{path}: invalid YAML: {err}")
            continue
        for i, doc in enumerate(d for d in docs if d is not None):
            where = f"{path} (document {i + 1})"
            if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
                errs.append(f"{where}: apiVersion and kind are required")
                continue
            try:
                info, _ = registry.for_api_version(str(doc["apiVersion"]), str(doc["kind"]))
                ns = (doc.get("metadata") or {}).get("namespace") or default_ns if info.namespaced else None
                obj = validate_document(info, doc, namespace=ns)
            except ApiError as err:
                errs.append(f"{where}: {err.message}")
                continue
            obj.pop("status", None)
            key = (info.group, info.kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if key in seen:
                errs.append(f"{where}: {info.kind} {key[2]}/{key[3]} is also defined in {seen[key]}")
                continue
            seen[key] = where
            desired.append(Desired(key, info, obj, where))
    return desired, errs


def body(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ENVELOPE}


def matches(desired: dict[str, Any], live: dict[str, Any]) -> bool:
    """Live is in sync when its declared body equals git's and git's labels and annotations are on it."""
    if body(desired) != body(live):
        return False
    for field_ in ("labels", "annotations"):
        want = desired["metadata"].get(field_) or {}
        have = live["metadata"].get(field_) or {}
        if any(have.get(k) != v for k, v in want.items()):
            return False
    return True


def health_of(obj: dict[str, Any] | None) -> tuple[str, str]:
    """Argo CD's health states from a resource's status: conditions first, then phase."""
    if obj is None:
        return "Missing", "not found"
    if obj.get("kind") == "RecurringRun" and (obj.get("spec") or {}).get("mode") == "DISABLE":
        return "Suspended", "disabled"
    status = obj.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    for type_ in ("Ready", "Available", "Succeeded"):
        cond = conds.get(type_)
        if cond is None:
            continue
        if cond.get("status") == "True":
            return "Healthy", ""
        if cond.get("status") == "False" and (type_ == "Succeeded" or "fail" in str(cond.get("reason")).lower()
                                             or "error" in str(cond.get("reason")).lower()):
            return "Degraded", cond.get("message") or cond.get("reason") or ""
        return "Progressing", cond.get("message") or cond.get("reason") or ""
    phase = status.get("phase")
    if phase in ("Failed",):
        return "Degraded", status.get("message", "")
    if phase in ("Pending", "Running") and obj.get("kind") in ("Pod", "PipelineRun"):
        return "Progressing", ""
    return "Healthy", ""


def compare(desired: list[Desired], live: dict[Key, dict[str, Any] | None], managed: list[Key]) -> Comparison:
    """Per-resource sync and health. `managed` = what this app synced before: those no longer in git need pruning."""
    out = Comparison()
    wanted = {d.key for d in desired}
    for d in desired:
        obj = live.get(d.key)
        health, msg = health_of(obj)
        status = "Synced" if obj is not None and matches(d.obj, obj) else "OutOfSync"
        out.resources.append(ResourceStatus(d.key, d.info.version, status, health, msg))
    for key in managed:
        if key not in wanted and live.get(key) is not None:
            out.resources.append(ResourceStatus(key, "", "OutOfSync", health_of(live[key])[0], "",
                                                requires_pruning=True))
    return out


def should_sync(*, automated: bool, self_heal: bool, comparison: Comparison, revision: str,
                last_synced_revision: str | None, operation: bool) -> bool:
    """Argo CD's rule: an explicit operation always; automated sync only when OutOfSync, and once per revision
    unless selfHeal is on (then drift from the same revision is corrected too)."""
    if operation:
        return True
    if not automated or comparison.sync_status == "Synced":
        return False
    return revision != last_synced_revision or self_heal
