"""When an idle workbench is culled, as Kubeflow's notebook culler decides it — pure functions of what JupyterLab
reports (`GET {base}api/status` and, when kernels exist, `GET {base}api/kernels`).

JupyterLab's `last_activity` moves with API requests, kernel messages and terminal input. A kernel busy with a long
computation sends nothing, so its silence is not idleness: a busy kernel counts as activity now (Kubeflow does the
same). Open connections alone do not: a tab left open on a quiet notebook is still idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_CHECK_SECONDS = 60.0
MIN_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Activity:
    last_activity: float  # epoch seconds
    kernels: int
    connections: int
    busy_kernels: int = 0


def parse_time(value: str) -> float:
    """JupyterLab's ISO 8601 times (`2025-01-02T03:04:05.678901Z`) as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_status(doc: Any, kernels: Any = None) -> Activity:
    """An `api/status` document (and the `api/kernels` list, if fetched) as Activity; ValueError if malformed."""
    if not isinstance(doc, dict) or not isinstance(doc.get("last_activity"), str):
        raise ValueError("not a JupyterLab api/status document")
    busy = sum(1 for k in kernels or [] if isinstance(k, dict) and k.get("execution_state") == "busy")
    return Activity(parse_time(doc["last_activity"]), int(doc.get("kernels") or 0),
                    int(doc.get("connections") or 0), busy)


def last_active(activity: Activity, now: float) -> float:
    """When the workbench was last active: now while a kernel is busy, else JupyterLab's own last activity."""
    return now if activity.busy_kernels else min(activity.last_activity, now)


def should_cull(activity: Activity, now: float, idle_seconds: int) -> bool:
    """Whether it has been idle for `idle_seconds` (0: never cull)."""
    return idle_seconds > 0 and now - last_active(activity, now) >= idle_seconds


def check_interval(idle_seconds: int, activity: Activity | None = None, now: float | None = None) -> float:
    """How long until the next look: a quarter of the limit (1 s to 60 s), and no later than when the limit would
    be reached if nothing happens meanwhile."""
    if idle_seconds <= 0:
        return MAX_CHECK_SECONDS
    interval = min(max(idle_seconds / 4, MIN_CHECK_SECONDS), MAX_CHECK_SECONDS)
    if activity is not None and now is not None:
        due = last_active(activity, now) + idle_seconds - now
        interval = min(interval, max(due, MIN_CHECK_SECONDS / 4))
    return interval
