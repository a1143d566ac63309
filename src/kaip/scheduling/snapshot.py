"""Translation between stored Kueue objects (dicts, as the API holds them) and the scheduler's model.

Pure functions: the controllers read the store, these build the scheduler's input, and turn its decisions back
into upstream-shaped status (`status.admission.podSetAssignments[].flavors / resourceUsage / count`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kaip.scheduling.model import (
    Admission,
    ClusterQueue,
    Cohort,
    Flavor,
    FlavorQuotas,
    Fungibility,
    PodSet,
    PodSetAssignment,
    Preemption,
    Quota,
    ResourceGroup,
    Taint,
    Toleration,
    Workload,
)
from kaip.scheduling.quantity import format_quantity, parse_quantity

QUEUED_AT_ANNOTATION = "kaip.dev/queued-at"


def parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _groups(spec: dict[str, Any]) -> tuple[ResourceGroup, ...]:
    out = []
    for rg in spec.get("resourceGroups") or []:
        flavors = []
        for f in rg.get("flavors") or []:
            resources = {}
            for r in f.get("resources") or []:
                resources[r["name"]] = Quota(
                    parse_quantity(r["nominalQuota"]),
                    None if r.get("borrowingLimit") is None else parse_quantity(r["borrowingLimit"]),
                    None if r.get("lendingLimit") is None else parse_quantity(r["lendingLimit"]))
            flavors.append(FlavorQuotas(f["name"], resources))
        out.append(ResourceGroup(tuple(rg.get("coveredResources") or ()), tuple(flavors)))
    return tuple(out)


def _weight(spec: dict[str, Any]) -> float:
    fs = spec.get("fairSharing") or {}
    return parse_quantity(fs.get("weight", 1)) / 1000


def flavor_names(cq: dict[str, Any]) -> list[str]:
    return [f["name"] for rg in (cq.get("spec") or {}).get("resourceGroups") or [] for f in rg.get("flavors") or []]


def cluster_queue(obj: dict[str, Any], *, active: bool = True) -> ClusterQueue:
    spec = obj.get("spec") or {}
    pre = spec.get("preemption") or {}
    bwc = pre.get("borrowWithinCohort") or {}
    fung = spec.get("flavorFungibility") or {}
    return ClusterQueue(
        name=obj["metadata"]["name"], cohort=spec.get("cohortName"), resource_groups=_groups(spec),
        queueing_strategy=spec.get("queueingStrategy", "BestEffortFIFO"),
        preemption=Preemption(pre.get("withinClusterQueue", "Never"), pre.get("reclaimWithinCohort", "Never"),
                              bwc.get("policy", "Never"), bwc.get("maxPriorityThreshold")),
        fungibility=Fungibility(fung.get("whenCanBorrow", "MayStopSearch"), fung.get("whenCanPreempt", "TryNextFlavor"),
                                fung.get("preference") or "BorrowingOverPreemption"),
        fair_weight=_weight(spec), active=active and spec.get("stopPolicy", "None") == "None")


def cohort(obj: dict[str, Any]) -> Cohort:
    spec = obj.get("spec") or {}
    return Cohort(obj["metadata"]["name"], spec.get("parentName"), _groups(spec), _weight(spec))


def flavor(obj: dict[str, Any]) -> Flavor:
    spec = obj.get("spec") or {}
    taints = tuple(Taint(t["key"], t.get("value") or "", t["effect"]) for t in spec.get("nodeTaints") or [])
    return Flavor(obj["metadata"]["name"], dict(spec.get("nodeLabels") or {}), taints)


def pod_requests(pod_spec: dict[str, Any]) -> dict[str, int]:
    """A pod's requests: the sum over its containers (requests, else limits, as Kubernetes defaults them)."""
    out: dict[str, int] = {}
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        values = dict(res.get("limits") or {})
        values.update(res.get("requests") or {})
        for name, q in values.items():
            out[name] = out.get(name, 0) + parse_quantity(q)
    return out


def pod_set(ps: dict[str, Any]) -> PodSet:
    spec = ps["template"]["spec"]
    tolerations = tuple(Toleration(t.get("key"), t.get("operator") or "Equal", t.get("value"), t.get("effect"))
                        for t in spec.get("tolerations") or [])
    return PodSet(ps.get("name", "main"), int(ps.get("count", 1)), pod_requests(spec),
                  dict(spec.get("nodeSelector") or {}), tolerations)


def queue_timestamp(wl: dict[str, Any]) -> float:
    """Queue order: when it was last evicted and requeued, else when it was queued (Kueue's default,
    requeuingTimestamp: Eviction)."""
    for cond in (wl.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Requeued" and cond.get("status") == "True":
            return parse_time(cond.get("lastTransitionTime"))
    meta = wl["metadata"]
    queued = (meta.get("annotations") or {}).get(QUEUED_AT_ANNOTATION)
    if queued:
        try:
            return float(queued)
        except ValueError:
            pass
    return parse_time(meta.get("creationTimestamp"))


def admission_from_status(status: dict[str, Any]) -> Admission | None:
    adm = status.get("admission")
    if not adm:
        return None
    pod_sets = tuple(PodSetAssignment(p["name"], dict(p.get("flavors") or {}),
                                      {r: parse_quantity(q) for r, q in (p.get("resourceUsage") or {}).items()},
                                      int(p.get("count", 1))) for p in adm.get("podSetAssignments") or [])
    return Admission(adm["clusterQueue"], pod_sets)


def admission_to_status(admission: Admission) -> dict[str, Any]:
    return {"clusterQueue": admission.cluster_queue, "podSetAssignments": [
        {"name": p.name, "flavors": dict(p.flavors),
         "resourceUsage": {r: format_quantity(q, r) for r, q in p.usage.items()}, "count": p.count}
        for p in admission.pod_sets]}


def workload(obj: dict[str, Any], cluster_queue_name: str) -> Workload:
    spec, status = obj["spec"], obj.get("status") or {}
    admission = admission_from_status(status) if _holds_quota(status) else None
    reserved = next((c for c in status.get("conditions") or [] if c.get("type") == "QuotaReserved"), None)
    evicted = any(c.get("type") == "Evicted" and c.get("status") == "True" for c in status.get("conditions") or [])
    meta = obj["metadata"]
    return Workload(
        key=f"{meta['namespace']}/{meta['name']}", cluster_queue=cluster_queue_name,
        pod_sets=tuple(pod_set(ps) for ps in spec["podSets"]), priority=int(spec.get("priority") or 0),
        timestamp=queue_timestamp(obj), uid=meta.get("uid", ""), admission=admission,
        reserved_at=parse_time(reserved.get("lastTransitionTime")) if reserved else 0.0,
        evicted=evicted and admission is not None)


def _holds_quota(status: dict[str, Any]) -> bool:
    return bool(status.get("admission")) and any(
        c.get("type") == "QuotaReserved" and c.get("status") == "True" for c in status.get("conditions") or [])


def holds_quota(obj: dict[str, Any]) -> bool:
    return _holds_quota(obj.get("status") or {})


def total_usage(admission: Admission) -> dict[str, dict[str, int]]:
    """flavor -> resource -> amount."""
    out: dict[str, dict[str, int]] = {}
    for (flavor_name, resource), q in admission.usage().items():
        out.setdefault(flavor_name, {})[resource] = out.setdefault(flavor_name, {}).get(resource, 0) + q
    return out
