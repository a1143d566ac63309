"""Kueue's `waitForPodsReady`, as pure decisions: the Workload's `PodsReady` condition from what its job's pods are
doing, and whether an admitted Workload has waited too long for them.

Upstream (pkg/controller/core/workload_controller.go, pkg/controller/jobframework/reconciler.go): an admitted
workload whose pods are not all ready (or succeeded) has `PodsReady=False` with reason `WaitForStart` until they
first are, and `WaitForRecovery` when they were and one stopped being; `PodsReady=True` with reason `Started` (or
`Recovered`) once they are. Past `timeout` since admission while waiting to start — or past `recoveryTimeout`
since the condition turned False while waiting to recover — the workload is evicted with reason
`PodsReadyTimeout` ("Exceeded the PodsReady timeout NS/NAME"), the wait's reason as the underlying cause; the
requeuing strategy (backoff, limit) then applies as to any eviction that backs off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PODS_READY = "PodsReady"
STARTED = "Started"
RECOVERED = "Recovered"
WAIT_FOR_START = "WaitForStart"
WAIT_FOR_RECOVERY = "WaitForRecovery"

MESSAGES = {STARTED: "All pods reached readiness and the workload is running",
            RECOVERED: "All pods reached readiness and the workload has recovered",
            WAIT_FOR_START: "Not all pods are ready or succeeded",
            WAIT_FOR_RECOVERY: "At least one pod has failed, waiting for recovery"}


@dataclass(frozen=True)
class PodsReadySettings:
    timeout_seconds: float
    recovery_timeout_seconds: float | None = None


def condition_for(ready: bool, previous: dict[str, Any] | None) -> tuple[bool, str]:
    """The `PodsReady` status and reason now, given whether all pods are ready and the condition before."""
    was = previous or {}
    started_before = was.get("status") == "True" or was.get("reason") == WAIT_FOR_RECOVERY
    if ready:
        if was.get("status") == "True":
            return True, str(was.get("reason") or STARTED)
        return True, RECOVERED if was.get("reason") == WAIT_FOR_RECOVERY else STARTED
    return False, WAIT_FOR_RECOVERY if started_before else WAIT_FOR_START


@dataclass(frozen=True)
class Verdict:
    evict: bool
    cause: str = ""  # the underlying cause of an eviction: WaitForStart or WaitForRecovery
    recheck_after: float | None = None  # seconds until the timeout, when not yet past it


def timeout_verdict(settings: PodsReadySettings, now: float, admitted_at: float, condition: dict[str, Any] | None,
                    condition_since: float | None) -> Verdict:
    """Whether an admitted workload has waited past its timeout for its pods (and if not, how long it may)."""
    cond = condition or {}
    if cond.get("status") == "True":
        return Verdict(False)
    reason = cond.get("reason")
    if reason is None or reason in (WAIT_FOR_START, PODS_READY):
        left = settings.timeout_seconds - (now - admitted_at)
        return Verdict(True, WAIT_FOR_START) if left <= 0 else Verdict(False, WAIT_FOR_START, left)
    if reason == WAIT_FOR_RECOVERY and settings.recovery_timeout_seconds is not None and condition_since is not None:
        left = settings.recovery_timeout_seconds - (now - condition_since)
        return Verdict(True, WAIT_FOR_RECOVERY) if left <= 0 else Verdict(False, WAIT_FOR_RECOVERY, left)
    return Verdict(False)


def all_ready(pods: list[dict[str, Any]]) -> bool:
    """A job's pods are ready when there are some, none is being deleted or failed, and each is Ready or done."""
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if not live:
        return False
    for pod in live:
        status = pod.get("status") or {}
        if status.get("phase") == "Succeeded":
            continue
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        if status.get("phase") != "Running" or ready.get("status") != "True":
            return False
    return True
