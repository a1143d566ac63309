"""Knative-style autoscaling (the KPA), as a pure decision: observations in, desired replica count out.

Each tick the gateway's meter reports the average concurrency (time-weighted in-flight requests) or the
request rate of a revision over the tick. The desired count is the stable-window average divided by the
per-replica target; when the short panic-window average says the ready replicas are overwhelmed (by
`panic_threshold` of their capacity), the autoscaler panics: it scales on the panic average and never scales
down until a whole stable window has passed calmly. A revision with `min_replicas` 0 goes to zero only after
a stable window plus the retention period with no traffic at all.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

DEFAULT_TARGET = 100.0  # Knative's container-concurrency-target-default
DEFAULT_UTILIZATION = 0.7
LOCAL_MAX_REPLICAS = 8  # maxReplicas 0 means "no limit"; one machine has one


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 1
    max_replicas: int = 0
    target: float = DEFAULT_TARGET * DEFAULT_UTILIZATION
    stable_window: float = 60.0
    panic_window_fraction: float = 0.1
    panic_threshold: float = 2.0
    retention: float = 0.0
    max_scale_down_rate: float = 2.0

    @property
    def upper(self) -> int:
        return self.max_replicas or LOCAL_MAX_REPLICAS


def policy_for(component: dict[str, object], annotations: dict[str, str]) -> Policy:
    """The policy of a component spec, with Knative's autoscaling annotations as KServe passes them through."""
    def ann(key: str, default: float) -> float:
        raw = annotations.get(f"autoscaling.knative.dev/{key}")
        if raw is None:
            return default
        try:
            return float(str(raw).rstrip("s%"))
        except ValueError:
            return default

    concurrency = component.get("containerConcurrency") or 0
    scale_target = component.get("scaleTarget")
    utilization = ann("target-utilization-percentage", DEFAULT_UTILIZATION * 100) / 100
    if scale_target:
        target = float(scale_target)  # type: ignore[arg-type]
    elif concurrency:
        target = max(float(concurrency) * utilization, 0.01)  # type: ignore[arg-type]
    else:
        target = ann("target", DEFAULT_TARGET) * utilization
    min_r = component.get("minReplicas")
    return Policy(
        min_replicas=1 if min_r is None else int(min_r),  # type: ignore[call-overload]
        max_replicas=int(component.get("maxReplicas") or 0),  # type: ignore[call-overload]
        target=target,
        stable_window=ann("window", 60.0),
        panic_window_fraction=ann("panic-window-percentage", 10.0) / 100,
        panic_threshold=ann("panic-threshold-percentage", 200.0) / 100,
        retention=ann("scale-to-zero-pod-retention-period", 0.0),
    )


class Autoscaler:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_since: float | None = None
        self._last_active: float | None = None
        self._last_desired = 0
        self._started: float | None = None

    def record(self, now: float, value: float) -> None:
        """One observation: the average concurrency (or requests per second) since the previous one."""
        if self._started is None:
            self._started = now
        self._samples.append((now, value))
        if value > 0:
            self._last_active = now
        while self._samples and self._samples[0][0] <= now - self.policy.stable_window:
            self._samples.popleft()

    def _average(self, now: float, window: float) -> float:
        values = [v for t, v in self._samples if t > now - window]
        return sum(values) / len(values) if values else 0.0

    def desired(self, now: float, ready: int, *, inflight: int = 0) -> int:
        """Replicas wanted now. `inflight` counts the requests in flight or held (waiting for a replica) right now:
        while there is one the revision is not idle, whatever the last tick's average says — a replica that has
        just become ready for a held request must not be scaled away before the request reaches it."""
        p = self.policy
        if self._started is None:  # a new autoscaler has seen no idle window yet: it starts now
            self._started = now
        if inflight:
            self._last_active = now
        stable = self._average(now, p.stable_window)
        panic = self._average(now, p.stable_window * p.panic_window_fraction)
        want_stable = math.ceil(stable / p.target - 1e-9)
        want_panic = math.ceil(panic / p.target - 1e-9)
        if ready and panic / (ready * p.target) >= p.panic_threshold:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since >= p.stable_window:
            self._panic_since = None
        if self._panic_since is not None:
            want = max(want_panic, self._last_desired, want_stable)
        else:
            want = want_stable
            if ready and want:  # scale down gradually (to zero only through the idle rule below)
                want = max(want, math.ceil(ready / p.max_scale_down_rate))
        if inflight:
            want = max(want, 1)
        if want == 0 and ready:
            idle_since = self._last_active if self._last_active is not None else self._started
            if idle_since is not None and now - idle_since < p.stable_window + p.retention:
                want = 1  # scale to zero only after a whole window (plus retention) without traffic
        want = max(p.min_replicas, min(want, p.upper))
        self._last_desired = want
        return want

    @property
    def panicking(self) -> bool:
        return self._panic_since is not None


class ConcurrencyMeter:
    """Time-weighted in-flight requests of one revision, read out once per autoscaler tick."""

    def __init__(self, now: float) -> None:
        self.inflight = 0
        self._area = 0.0
        self._requests = 0
        self._last = now
        self._tick_start = now

    def _advance(self, now: float) -> None:
        self._area += self.inflight * max(now - self._last, 0.0)
        self._last = now

    def start(self, now: float) -> None:
        self._advance(now)
        self.inflight += 1
        self._requests += 1

    def end(self, now: float) -> None:
        self._advance(now)
        self.inflight = max(self.inflight - 1, 0)

    def sample(self, now: float) -> tuple[float, float]:
        """(average concurrency, requests per second) since the previous sample."""
        self._advance(now)
        span = max(now - self._tick_start, 1e-6)
        out = (self._area / span, self._requests / span)
        self._area, self._requests, self._tick_start = 0.0, 0, now
        return out
