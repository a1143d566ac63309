"""Requeue backoff for evicted workloads: Kueue's `waitForPodsReady.requeuingStrategy`, as a pure decision.

Upstream (pkg/controller/core/workload_controller.go, apis/config/v1beta2/defaults.go): on an eviction that
backs off, `status.requeueState.count` grows by one; past `backoffLimitCount` (null: no limit) the workload is
deactivated instead (`spec.active: false`, reason RequeuingLimitExceeded). Otherwise it waits
`backoffBaseSeconds * 2^(count-1)` seconds, capped at `backoffMaxSeconds` (defaults 60 and 3600; upstream adds a
1e-4 jitter, left out so that the decision is exact), until `status.requeueState.requeueAt`, when it is requeued
with `Requeued=True, reason BackoffFinished`.

Which evictions back off: upstream, those by `PodsReadyTimeout` (the only evictions waitForPodsReady makes).
Kaip takes the set of reasons as a setting (default upstream's) so that a deployment can extend it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PODS_READY_TIMEOUT = "PodsReadyTimeout"
BACKOFF_FINISHED = "BackoffFinished"
REQUEUING_LIMIT_EXCEEDED = "RequeuingLimitExceeded"


@dataclass(frozen=True)
class RequeuingStrategy:
    backoff_base_seconds: int = 60
    backoff_max_seconds: int = 3600
    backoff_limit_count: int | None = None
    reasons: frozenset[str] = frozenset({PODS_READY_TIMEOUT})


@dataclass(frozen=True)
class RequeueDecision:
    count: int
    requeue_at: float | None  # None: deactivate instead
    deactivate: bool


def delay_seconds(strategy: RequeuingStrategy, count: int) -> float:
    """The wait before the `count`-th requeue (count ≥ 1)."""
    delay = float(strategy.backoff_base_seconds)
    for _ in range(count - 1):
        delay *= 2
        if delay >= strategy.backoff_max_seconds:
            break
    return min(delay, float(strategy.backoff_max_seconds))


def decide(strategy: RequeuingStrategy, previous_count: int, now: float) -> RequeueDecision:
    count = previous_count + 1
    if strategy.backoff_limit_count is not None and count > strategy.backoff_limit_count:
        return RequeueDecision(previous_count, None, True)
    return RequeueDecision(count, now + delay_seconds(strategy, count), False)


def format_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def requeue_at(status: dict[str, Any] | None) -> float | None:
    """When a backing-off workload may queue again, or None if it is not backing off."""
    state = (status or {}).get("requeueState") or {}
    at = state.get("requeueAt")
    if not at:
        return None
    return datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
