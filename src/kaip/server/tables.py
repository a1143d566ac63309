"""Server-side tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), as kubectl asks for them,
so that the columns of each kind are defined once, beside its schema."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from kaip.api.kinds import Column, KindInfo

_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the subset of JSONPath printer columns use: `.a.b`, `.a[0].b`."""
    cur = obj
    for part in path.strip(".").split("."):
        if cur is None:
            return None
        m = _INDEX.match(part)
        if m:
            cur = cur.get(m.group(1)) if isinstance(cur, dict) else None
            idx = int(m.group(2))
            cur = cur[idx] if isinstance(cur, list) and idx < len(cur) else None
        else:
            cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """Kubernetes' short duration: 45s, 3m12s, 5h, 2d3h, 40d."""
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    secs = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    return f"{days}d{hours % 24}h" if days < 8 else f"{days}d"


def _value(col: Column, obj: dict[str, Any]) -> Any:
    value = col.value(obj) if callable(col.value) else json_path(obj, col.value)
    if col.type == "date":
        return age(value)
    if value is None:
        return "<none>" if col.type == "string" else None
    return value


def table(info: KindInfo, objects: list[dict[str, Any]], resource_version: str) -> dict[str, Any]:
    columns = [Column("Name", ".metadata.name"), *info.columns]
    if not any(c.name == "Age" for c in info.columns):
        columns.append(Column("Age", ".metadata.creationTimestamp", "date"))
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": c.name, "type": c.type, "format": "name" if c.name == "Name" else "",
                               "description": "", "priority": c.priority} for c in columns],
        "rows": [{"cells": [_value(c, o) for c in columns],
                  "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": o["metadata"]}} for o in objects],
    }


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in accept
