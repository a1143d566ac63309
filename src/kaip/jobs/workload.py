"""A Workload's status transitions, with upstream's condition types and reasons (kueue workload_types.go).

Functions edit a `status` dict in place, so that a controller can apply several in one status write.
"""

from __future__ import annotations

import time
from typing import Any

from kaip.controlplane.conditions import get_condition, is_true, set_condition
from kaip.scheduling import backoff
from kaip.scheduling.snapshot import parse_time

QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
PREEMPTED = "Preempted"
REQUEUED = "Requeued"
FINISHED = "Finished"

# Evicted reasons
EVICTED_BY_PREEMPTION = "Preempted"
EVICTED_CLUSTER_QUEUE_STOPPED = "ClusterQueueStopped"
EVICTED_LOCAL_QUEUE_STOPPED = "LocalQueueStopped"
EVICTED_DEACTIVATED = "Deactivated"


def is_finished(wl: dict[str, Any]) -> bool:
    return is_true(wl.get("status"), FINISHED)


def is_admitted(wl: dict[str, Any]) -> bool:
    return is_true(wl.get("status"), ADMITTED)


def is_evicted(wl: dict[str, Any]) -> bool:
    return is_true(wl.get("status"), EVICTED)


def has_quota_reservation(wl: dict[str, Any]) -> bool:
    status = wl.get("status") or {}
    return bool(status.get("admission")) and is_true(status, QUOTA_RESERVED)


def set_pending(status: dict[str, Any], message: str, reason: str = "Pending") -> bool:
    changed = set_condition(status, QUOTA_RESERVED, False, reason, message)
    return set_condition(status, ADMITTED, False, "NoReservation", "The workload has no reservation") or changed


def set_admitted(status: dict[str, Any], admission: dict[str, Any]) -> None:
    status["admission"] = admission
    cq = admission["clusterQueue"]
    set_condition(status, QUOTA_RESERVED, True, "QuotaReserved", f"Quota reserved in ClusterQueue {cq}")
    set_condition(status, ADMITTED, True, "Admitted", "The workload is admitted")
    status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] not in (EVICTED, PREEMPTED)]


def set_evicted(status: dict[str, Any], reason: str, message: str, *, preemption_reason: str | None = None,
                underlying_cause: str | None = None) -> None:
    """Evicted=True; `underlying_cause` is the preemption reason, or PodsReadyTimeout's wait (WaitForStart /
    WaitForRecovery), as schedulingStats.evictions records it."""
    set_condition(status, EVICTED, True, reason, message)
    if preemption_reason:
        set_condition(status, PREEMPTED, True, preemption_reason, message)
    set_condition(status, REQUEUED, False, reason, message)
    cause = preemption_reason or underlying_cause or ""
    stats = status.setdefault("schedulingStats", {}).setdefault("evictions", [])
    for item in stats:
        if item.get("reason") == reason and item.get("underlyingCause", "") == cause:
            item["count"] = int(item.get("count", 0)) + 1
            break
    else:
        stats.append({"reason": reason, "underlyingCause": cause, "count": 1})


def unset_quota_reservation(status: dict[str, Any], *, requeue: bool, now: float | None = None,
                            strategy: backoff.RequeuingStrategy | None = None) -> bool:
    """The evicted workload's pods are gone: it gives its quota back and, unless deactivated, queues again;
    after an eviction whose reason backs off, only once `requeueState.requeueAt` has passed. True when the
    requeuing limit is exceeded: the caller deactivates the workload (`spec.active: false`)."""
    now = time.time() if now is None else now
    reserved = get_condition(status, QUOTA_RESERVED)
    if reserved and reserved.get("status") == "True":
        ran = max(0, int(now - parse_time(reserved.get("lastTransitionTime"))))
        status["accumulatedPastExecutionTimeSeconds"] = int(status.get("accumulatedPastExecutionTimeSeconds", 0)) + ran
    evicted = get_condition(status, EVICTED) or {}
    reason = evicted.get("reason", "Pending")
    status.pop("admission", None)
    if requeue and strategy is not None and reason in strategy.reasons:
        state = status.get("requeueState") or {}
        decision = backoff.decide(strategy, int(state.get("count") or 0), now)
        if decision.deactivate:
            set_pending(status, f"The workload is deactivated ({backoff.REQUEUING_LIMIT_EXCEEDED}): it was requeued "
                        f"{decision.count} time(s), the backoff limit", reason="Inadmissible")
            return True
        assert decision.requeue_at is not None
        at = backoff.format_time(decision.requeue_at)
        status["requeueState"] = {"count": decision.count, "requeueAt": at}
        set_pending(status, f"The workload was evicted ({reason}) and backs off until {at}", reason="Pending")
        set_condition(status, REQUEUED, False, reason, f"The workload backs off until {at}")
        return False
    set_pending(status, f"The workload was evicted ({reason}) and is pending again" if requeue else
                f"The workload is deactivated ({reason})", reason="Pending" if requeue else "Inadmissible")
    if requeue:
        set_condition(status, REQUEUED, True, reason, "The workload was requeued after its eviction")
    return False


def exceeds_requeuing_limit(status: dict[str, Any] | None, strategy: backoff.RequeuingStrategy) -> bool:
    """Whether giving the quota back now would pass the backoff limit: the workload must then be deactivated
    before its status says it is pending, or the scheduler could admit it again in between."""
    status = status or {}
    reason = (get_condition(status, EVICTED) or {}).get("reason", "")
    if reason not in strategy.reasons:
        return False
    return backoff.decide(strategy, int((status.get("requeueState") or {}).get("count") or 0), 0.0).deactivate


def deactivate(store: Any, wl: dict[str, Any]) -> None:
    """`spec.active: false` (the requeuing limit was exceeded): the workload is not queued again."""
    def apply(obj: dict[str, Any]) -> dict[str, Any]:
        obj["spec"]["active"] = False
        return obj
    from kaip.api.kueue import WORKLOAD

    meta = wl["metadata"]
    store.mutate(WORKLOAD, meta["namespace"], meta["name"], apply)


def finish_backoff(status: dict[str, Any]) -> None:
    """The backoff is over: the workload queues again (Requeued=True, BackoffFinished); the count stays."""
    state = status.get("requeueState") or {}
    state.pop("requeueAt", None)
    status["requeueState"] = state
    set_condition(status, REQUEUED, True, backoff.BACKOFF_FINISHED, "The workload backoff was finished")


def set_finished(status: dict[str, Any], succeeded: bool, message: str) -> bool:
    return set_condition(status, FINISHED, True, "Succeeded" if succeeded else "Failed", message)


def get_condition_message(wl: dict[str, Any], type_: str) -> str:
    cond = get_condition(wl.get("status"), type_) or {}
    return str(cond.get("message") or cond.get("reason") or "")
