"""RecurringRun reconciler: start a PipelineRun at each fire time of the schedule.

The decision is `decide` (pure): given the schedule, what was last scheduled, the clock and how many runs are
still active, which fire times to start now and when to look again. Runs are named after their fire time, so a
reconcile repeated after a crash creates nothing twice. The clock is injected: tests drive it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kaip.api import errors
from kaip.api.pipelines import PIPELINE_RUN, RECURRING_RUN, run_spec_from
from kaip.api.validation import validate_document
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.pipelines.cron import Cron, due_times, next_after, parse_cron
from kaip.pipelines.queueing import queue_labels
from kaip.store.store import Store

OWNER_LABEL = "pipelines.kaip.dev/recurringrun"
FMT = "%Y-%m-%dT%H:%M:%SZ"


def _parse(value: str | None) -> datetime | None:
    return datetime.strptime(value, FMT).replace(tzinfo=UTC) if value else None


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime(FMT)


@dataclass
class Decision:
    start: list[datetime]
    last: datetime
    next: datetime | None
    skipped: int = 0  # fire times dropped because maxConcurrency was reached


def schedule_of(spec: dict[str, Any]) -> tuple[Cron, datetime | None, datetime | None]:
    trigger = spec["trigger"]
    if trigger.get("cronSchedule"):
        s = trigger["cronSchedule"]
        return parse_cron(s["cron"]), _parse(s.get("startTime")), _parse(s.get("endTime"))
    s = trigger["periodicSchedule"]
    return parse_cron(f"@every {s['intervalSecond']}s"), _parse(s.get("startTime")), _parse(s.get("endTime"))


def decide(cron: Cron, *, created: datetime, last: datetime | None, now: datetime, start: datetime | None,
           end: datetime | None, catchup: bool, active: int, max_concurrency: int, enabled: bool) -> Decision:
    """Which fire times to start now. Missed times are caught up (or only the latest, with noCatchup);
    never more runs at once than `max_concurrency`; a time not started for that reason waits (KFP's behaviour)."""
    anchor = start or created
    since = last or ((start - timedelta(seconds=1)) if start else created)
    if not enabled:
        return Decision([], since, None)
    horizon = min(now, end) if end else now
    due = due_times(cron, since, horizon, catchup=catchup, anchor=anchor)
    chosen = due[:max(max_concurrency - active, 0)]
    new_last = chosen[-1] if chosen else since
    if len(chosen) < len(due):
        nxt: datetime | None = due[len(chosen)]  # overdue: starts when a run finishes (its change wakes us)
    else:
        nxt = next_after(cron, max(now, since), anchor=anchor)
    if end and nxt and nxt > end:
        nxt = None
    return Decision(chosen, new_last, nxt, skipped=len(due) - len(chosen))


class RecurringRunReconciler:
    def __init__(self, store: Store, recorder: EventRecorder, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.recorder = recorder
        self.clock = clock

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        rr = self.store.try_get(RECURRING_RUN, namespace, name)
        if rr is None or rr["metadata"].get("deletionTimestamp"):
            return None
        spec, meta = rr["spec"], rr["metadata"]
        status = copy.deepcopy(rr.get("status") or {})
        now = datetime.fromtimestamp(self.clock(), UTC).replace(microsecond=0)
        cron, start, end = schedule_of(spec)
        runs, _ = self.store.list(PIPELINE_RUN, namespace)
        mine = [r for r in runs if any(o.get("uid") == meta["uid"] for o in r["metadata"].get("ownerReferences") or [])]
        active = sum(1 for r in mine if (r.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        created = _parse(meta.get("creationTimestamp")) or now
        decision = decide(cron, created=created, last=_parse(status.get("lastScheduledTime")), now=now, start=start,
                          end=end, catchup=not spec.get("noCatchup", False), active=active,
                          max_concurrency=int(spec.get("maxConcurrency", 1)), enabled=spec.get("mode") != "DISABLE")
        for t in decision.start:
            self._create_run(rr, t)
        status["lastScheduledTime"] = _fmt(decision.last)
        status["nextScheduledTime"] = _fmt(decision.next) if decision.next else None
        status["status"] = "ENABLED" if spec.get("mode") != "DISABLE" else "DISABLED"
        status["activeRuns"] = active + len(decision.start)
        set_condition(status, "Ready", True, "Scheduled" if status["status"] == "ENABLED" else "Disabled",
                      f"next run at {status['nextScheduledTime']}" if decision.next else "no further runs scheduled",
                      generation=meta.get("generation"))
        if status != rr.get("status"):
            self.store.replace_status(RECURRING_RUN, namespace, name, status)
        if decision.next is None:
            return None
        return Result(requeue_after=max((decision.next - now).total_seconds(), 1.0))

    def _create_run(self, rr: dict[str, Any], fire: datetime) -> None:
        meta, spec = rr["metadata"], rr["spec"]
        run_spec = run_spec_from(spec)
        doc = {"apiVersion": rr["apiVersion"], "kind": "PipelineRun",
               "metadata": {"name": f"{meta['name'][:40]}-{int(fire.timestamp())}", "namespace": meta["namespace"],
                            "labels": {**queue_labels(meta), OWNER_LABEL: meta["name"][:63]},
                            "annotations": {"pipelines.kaip.dev/scheduled-time": _fmt(fire)},
                            "ownerReferences": [{"apiVersion": rr["apiVersion"], "kind": rr["kind"],
                                                 "name": meta["name"], "uid": meta["uid"], "controller": True}]},
               "spec": run_spec}
        try:
            self.store.create(PIPELINE_RUN, validate_document(PIPELINE_RUN, doc, namespace=meta["namespace"]))
            self.recorder.record(rr, "Normal", "RunCreated", f"started {doc['metadata']['name']} for {_fmt(fire)}")
        except errors.ApiError as err:
            if err.code != 409:
                raise
