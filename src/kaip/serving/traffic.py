"""Traffic between revisions: the rollout decision (which revision gets what percent) and the per-request pick.

Knative's semantics, as KServe uses them: with `canaryTrafficPercent: N` the latest revision gets N% once it is
ready and the last fully rolled-out revision the rest; without it (or at 100) the latest revision takes all the
traffic as soon as it is ready, and until then the rolled-out one keeps serving, so no request is dropped.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kaip.serving import render


@dataclass(frozen=True)
class Target:
    revision: str
    percent: int
    latest: bool
    tag: str | None = None

    def to_status(self) -> dict[str, object]:
        out: dict[str, object] = {"revisionName": self.revision, "percent": self.percent,
                                  "latestRevision": self.latest}
        if self.tag:
            out["tag"] = self.tag
        return out


@dataclass(frozen=True)
class Rollout:
    """What the status records: the revision fully rolled out now and the one before it."""

    rolled_out: str | None = None
    previous: str | None = None


@dataclass(frozen=True)
class Plan:
    rollout: Rollout
    targets: list[Target] = field(default_factory=list)

    def percent(self, revision: str) -> int:
        return sum(t.percent for t in self.targets if t.revision == revision)


def plan(latest: str, latest_ready: bool, rollout: Rollout, canary_percent: int | None) -> Plan:
    """The next rollout state and traffic split, given the latest revision (the one the spec describes)."""
    rolled = rollout.rolled_out
    if rolled is None or rolled == latest:
        new = Rollout(latest, rollout.previous) if latest_ready or rolled == latest else rollout
        return Plan(new, [Target(latest, 100, True)])
    full = canary_percent is None or canary_percent >= 100
    if full:
        if latest_ready:
            return Plan(Rollout(latest, rolled), [Target(latest, 100, True)])
        return Plan(rollout, [Target(rolled, 100, False, "prev"), Target(latest, 0, True, "latest")])
    canary = canary_percent if latest_ready else 0
    return Plan(rollout, [Target(rolled, 100 - canary, False, "prev"), Target(latest, canary, True, "latest")])


class WeightedPicker:
    """Smooth weighted round robin (as nginx does it): over every run of `sum(weights)` picks each target is
    chosen exactly its weight's number of times, interleaved rather than in bursts."""

    def __init__(self, weights: dict[str, int]) -> None:
        self.weights = {k: w for k, w in weights.items() if w > 0}
        self._current = dict.fromkeys(self.weights, 0)
        self._total = sum(self.weights.values())

    def pick(self) -> str | None:
        if not self.weights:
            return None
        best = None
        for key, weight in self.weights.items():
            self._current[key] += weight
            if best is None or self._current[key] > self._current[best]:
                best = key
        assert best is not None
        self._current[best] -= self._total
        return best


def undo_spec(isvc: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The predictor spec that rolls back, and the revision it returns to: while a canary is in progress, the
    last rolled-out revision (the canary is abandoned); otherwise the one rolled out before it."""
    comp = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    revisions = {r["name"]: r for r in comp.get("revisions") or []}
    latest = comp.get("latestCreatedRevision")
    current = next((t["revisionName"] for t in comp.get("traffic") or [] if t.get("latestRevision")), latest)
    rolled, previous = comp.get("latestRolledoutRevision"), comp.get("previousRolledoutRevision")
    target = rolled if current and current != rolled else previous
    if not target or target not in revisions:
        raise ValueError("there is no earlier rolled-out revision to go back to")
    predictor = {k: v for k, v in isvc["spec"]["predictor"].items()
                 if k not in render.REVISION_FIELDS and k != "canaryTrafficPercent"}
    predictor.update(revisions[target]["spec"])
    return predictor, target
