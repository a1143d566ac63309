"""Resource-hours consumed, from the admissions Workloads record (who used what, for `kaip report usage`).

A Workload holding quota has used its admitted resources since its QuotaReserved transition (until it finished,
or until now); executions that ended in an eviction are in `accumulatedPastExecutionTimeSeconds`, charged at
the same requests. Pure: stored objects in, totals out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kaip.scheduling.quantity import parse_quantity
from kaip.scheduling.snapshot import admission_from_status, parse_time, pod_set

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `7d`, `2w` in seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number and one of s, m, h, d, w (e.g. 7d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class UsageRow:
    key: str
    workloads: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # resource -> unit-seconds

    def hours(self, resource: str) -> float:
        return self.seconds.get(resource, 0.0) / 3600


def _condition(wl: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (wl.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _requests(wl: dict[str, Any]) -> dict[str, float]:
    """Units (not milli-units) of each resource the workload holds when it runs."""
    status = wl.get("status") or {}
    admission = admission_from_status(status) if status.get("admission") else None
    out: dict[str, float] = {}
    if admission is not None:
        for ps in admission.pod_sets:
            for r, q in ps.usage.items():
                out[r] = out.get(r, 0.0) + q / 1000
        return out
    for ps in wl["spec"]["podSets"]:
        for r, q in pod_set(ps).total().items():
            out[r] = out.get(r, 0.0) + q / 1000
    return out


def _group(wl: dict[str, Any], by: str) -> str:
    meta = wl["metadata"]
    if by == "team":
        return meta["namespace"]
    if by == "queue":
        return f"{meta['namespace']}/{wl['spec'].get('queueName') or '-'}"
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if owner is None:
        return f"{meta['namespace']}/{meta['name']}"
    return f"{meta['namespace']}/{owner['kind'].lower()}/{owner['name']}"


def usage_report(workloads: Iterable[dict[str, Any]], *, since: float, now: float, by: str = "team") -> list[UsageRow]:
    if by not in ("team", "queue", "job"):
        raise ValueError(f"unknown grouping {by!r}: use team, queue or job")
    rows: dict[str, UsageRow] = {}
    for wl in workloads:
        requests = _requests(wl)
        seconds = 0.0
        reserved = _condition(wl, "QuotaReserved")
        if reserved and reserved.get("status") == "True":
            start = parse_time(reserved.get("lastTransitionTime"))
            finished = _condition(wl, "Finished")
            end = parse_time(finished.get("lastTransitionTime")) if finished and finished.get("status") == "True" \
                else now
            seconds += max(0.0, min(end, now) - max(start, since))
        past = float((wl.get("status") or {}).get("accumulatedPastExecutionTimeSeconds") or 0)
        evicted = _condition(wl, "Requeued") or _condition(wl, "Evicted")
        if past and (evicted is None or parse_time(evicted.get("lastTransitionTime")) >= since):
            seconds += past
        if seconds <= 0:
            continue
        row = rows.setdefault(_group(wl, by), UsageRow(_group(wl, by)))
        row.workloads += 1
        for r, units in requests.items():
            row.seconds[r] = row.seconds.get(r, 0.0) + units * seconds
    return sorted(rows.values(), key=lambda r: r.key)


def resource_label(resource: str) -> str:
    return "MEMORY-GIB-HOURS" if resource == "memory" else f"{resource.upper()}-HOURS"


def resource_hours(resource: str, row: UsageRow) -> float:
    hours = row.hours(resource)
    return hours / 2 ** 30 if resource == "memory" else hours


__all__ = ["UsageRow", "parse_duration", "parse_quantity", "resource_hours", "resource_label", "usage_report"]
