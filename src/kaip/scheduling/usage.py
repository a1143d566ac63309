"""Queue status from workloads: counts and per-flavor usage, as ClusterQueue/LocalQueue status report them.

Pure: given stored objects (dicts), returns upstream-shaped status fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kaip.scheduling.quantity import format_quantity, parse_quantity
from kaip.scheduling.snapshot import admission_from_status, holds_quota, total_usage


def _true(obj: dict[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


@dataclass
class QueueSummary:
    pending: int = 0
    inadmissible: int = 0
    reserving: int = 0
    admitted: int = 0
    reserved: dict[str, dict[str, int]] = field(default_factory=dict)  # flavor -> resource -> amount
    used: dict[str, dict[str, int]] = field(default_factory=dict)


def summarise(workloads: Iterable[dict[str, Any]]) -> QueueSummary:
    out = QueueSummary()
    for wl in workloads:
        if _true(wl, "Finished"):
            continue
        if holds_quota(wl):
            out.reserving += 1
            admission = admission_from_status(wl["status"])
            admitted = _true(wl, "Admitted")
            out.admitted += int(admitted)
            assert admission is not None
            for flavor, resources in total_usage(admission).items():
                for r, q in resources.items():
                    bucket = out.reserved.setdefault(flavor, {})
                    bucket[r] = bucket.get(r, 0) + q
                    if admitted:
                        used = out.used.setdefault(flavor, {})
                        used[r] = used.get(r, 0) + q
        elif wl["spec"].get("active", True):
            out.pending += 1
            reserved = next((c for c in (wl.get("status") or {}).get("conditions") or []
                             if c.get("type") == "QuotaReserved"), None)
            if reserved is not None and reserved.get("reason") == "Inadmissible":
                out.inadmissible += 1
    return out


def flavors_status(spec: dict[str, Any], amounts: dict[str, dict[str, int]], *,
                   with_borrowed: bool) -> list[dict[str, Any]]:
    """`flavorsUsage`/`flavorsReservation`: every flavor and resource the queue lists, with totals."""
    out = []
    for rg in spec.get("resourceGroups") or []:
        for f in rg.get("flavors") or []:
            resources = []
            for r in f.get("resources") or []:
                total = amounts.get(f["name"], {}).get(r["name"], 0)
                item: dict[str, Any] = {"name": r["name"], "total": format_quantity(total, r["name"])}
                if with_borrowed:
                    borrowed = max(0, total - parse_quantity(r["nominalQuota"]))
                    item["borrowed"] = format_quantity(borrowed, r["name"])
                resources.append(item)
            out.append({"name": f["name"], "resources": resources})
    return out


def local_flavors_status(amounts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    return [{"name": flavor, "resources": [{"name": r, "total": format_quantity(q, r)}
                                           for r, q in sorted(resources.items())]}
            for flavor, resources in sorted(amounts.items())]
