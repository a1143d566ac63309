"""Trigger reconciler: start a PipelineRun for each new event (model version, dataset change, alert).

Level-triggered and idempotent. Each reconcile observes the event source (the registry's versions, the file's
digest, the namespace's Events) and `select_new` (pure) keeps the events that happened at or after the Trigger's
watermark (its creation, then the time of the last event handled) and are not in `status.handled`. Runs are named
after the event (`<trigger>-<hash of event id>`), so a reconcile repeated after a crash between creating the run
and recording it finds the run (409) and records it instead of starting a second one. Sources are polled every
`spec.pollIntervalSeconds`.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kaip.api import errors
from kaip.api.core import EVENT
from kaip.api.pipelines import PIPELINE_RUN, run_spec_from
from kaip.api.triggers import TRIGGER
from kaip.api.validation import validate_document
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Result
from kaip.pipelines.queueing import queue_labels
from kaip.store.store import Store

TRIGGER_LABEL = "pipelines.kaip.dev/trigger"
EVENT_ANNOTATION = "pipelines.kaip.dev/trigger-event"
KEEP_HANDLED = 100
FMT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Observed:
    """One event: a stable id, when it happened (unix seconds) and its fields (what `eventParameters` may use)."""

    id: str
    time: float
    fields: dict[str, Any] = field(default_factory=dict)


# ---- pure decisions -------------------------------------------------------------------------------------


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value[:19] + "Z", FMT).replace(tzinfo=UTC).timestamp()


def fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(FMT)


def select_new(observed: list[Observed], *, since: float, handled: set[str]) -> list[Observed]:
    """The events to start runs for: at or after `since`, not handled yet; oldest first."""
    return sorted((e for e in observed if e.time >= since and e.id not in handled), key=lambda e: (e.time, e.id))


def model_version_events(versions: list[dict[str, Any]], model: str | None) -> list[Observed]:
    """Registry versions (MLflow's JSON) as events."""
    out = []
    for mv in versions:
        if model and mv["name"] != model:
            continue
        t = int(mv["creation_timestamp"]) / 1000.0
        out.append(Observed(f"modelversion:{mv['name']}/{mv['version']}", t, {
            "model": mv["name"], "version": int(mv["version"]), "source": mv.get("source") or "",
            "runId": mv.get("run_id") or "", "registeredAt": fmt_time(t)}))
    return out


def alert_events(events: list[dict[str, Any]], reason: str, kind: str | None, name: str | None) -> list[Observed]:
    """`v1` Events with the reason (and involved object) as alerts; each increment of `count` is a new alert."""
    out = []
    for ev in events:
        inv = ev.get("involvedObject") or {}
        if ev.get("reason") != reason or (kind and inv.get("kind") != kind) or (name and inv.get("name") != name):
            continue
        meta = ev["metadata"]
        count = int(ev.get("count") or 1)
        last = parse_time(ev.get("lastTimestamp") or meta.get("creationTimestamp")) or 0.0
        out.append(Observed(f"alert:{meta.get('uid') or meta['name']}#{count}", last, {
            "reason": reason, "message": ev.get("message") or "", "involvedKind": inv.get("kind") or "",
            "involvedName": inv.get("name") or "", "count": count, "alert": meta["name"],
            "firstSeen": ev.get("firstTimestamp") or "", "lastSeen": ev.get("lastTimestamp") or ""}))
    return out


def dataset_event(path: str, digest: str, previous: str | None, changes: int, now: float) -> Observed | None:
    """A change of the file's digest; the first digest seen is the baseline, not an event. The id numbers the
    change (`changes` handled before it), so A -> B -> A -> B starts three runs, and a reconcile repeated after a
    crash (status not yet written) computes the same id again."""
    if previous is None or previous == digest:
        return None
    return Observed(f"dataset:{path}#{changes + 1}:{previous.removeprefix('sha256:')[:12]}->"
                    f"{digest.removeprefix('sha256:')[:12]}", now, {
        "path": path, "digest": digest, "previousDigest": previous, "observedAt": fmt_time(now)})


def run_parameters(spec: dict[str, Any], event: Observed) -> dict[str, Any]:
    fields = {**event.fields, "eventId": event.id}
    return {**(spec.get("parameters") or {}), **{p: fields[f] for p, f in (spec.get("eventParameters") or {}).items()}}


def run_name(trigger: str, event_id: str) -> str:
    return f"{trigger[:48]}-{hashlib.sha1(event_id.encode()).hexdigest()[:10]}"


def remember(handled: list[dict[str, Any]], records: list[dict[str, Any]], keep: int = KEEP_HANDLED) -> \
        list[dict[str, Any]]:
    """The handled list, newest last, bounded: the watermark excludes anything older than what it forgets."""
    return (handled + records)[-keep:]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---- the reconciler --------------------------------------------------------------------------------------


class TriggerReconciler:
    def __init__(self, store: Store, recorder: EventRecorder, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.recorder = recorder
        self.clock = clock

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        namespace, name = key
        trig = self.store.try_get(TRIGGER, namespace, name)
        if trig is None or trig["metadata"].get("deletionTimestamp"):
            return None
        spec, meta = trig["spec"], trig["metadata"]
        status = copy.deepcopy(trig.get("status") or {})
        poll = Result(requeue_after=float(spec.get("pollIntervalSeconds", 30)))
        if spec.get("suspend"):
            set_condition(status, "Ready", False, "Suspended", "the trigger is suspended",
                          generation=meta.get("generation"))
            self._write(trig, status)
            return None
        try:
            observed = self._observe(namespace, spec["event"], status)
        except OSError as err:
            set_condition(status, "Ready", False, "SourceUnavailable", str(err), generation=meta.get("generation"))
            self._write(trig, status)
            return poll
        created = parse_time(meta.get("creationTimestamp")) or 0.0
        since = max(created, float(status.get("watermark") or 0.0))
        handled = {h["id"] for h in status.get("handled") or []}
        new = select_new(observed, since=since, handled=handled)
        records = [self._start(trig, ev) for ev in new]
        if new:
            status["watermark"] = max(since, new[-1].time)
            status["lastEventTime"] = fmt_time(new[-1].time)
            status["handled"] = remember(status.get("handled") or [], records)
            status["runsStarted"] = int(status.get("runsStarted") or 0) + sum(1 for r in records if "run" in r)
        status.setdefault("runsStarted", 0)
        set_condition(status, "Ready", True, "Watching", f"watching for {next(iter(spec['event']))} events",
                      generation=meta.get("generation"))
        self._write(trig, status)
        return poll

    def _observe(self, namespace: str, event: dict[str, Any], status: dict[str, Any]) -> list[Observed]:
        if "modelVersion" in event:
            from kaip.tracking.access import AllowAll
            from kaip.tracking.registry import RegistryService

            model = (event["modelVersion"] or {}).get("model")
            flt = f"name='{model}'" if model and "'" not in model else None
            versions = RegistryService(self.store).search_versions(AllowAll(), namespace, filter_string=flt)
            return model_version_events(versions["model_versions"], model)
        if "dataset" in event:
            path = event["dataset"]["path"]
            digest = file_digest(Path(path))
            ev = dataset_event(path, digest, status.get("datasetDigest"), int(status.get("datasetChanges") or 0),
                               self.clock())
            status["datasetDigest"] = digest
            if ev:
                status["datasetChanges"] = int(status.get("datasetChanges") or 0) + 1
            return [ev] if ev else []
        alert = event["alert"]
        items, _ = self.store.list(EVENT, namespace)
        return alert_events(items, alert["reason"], alert.get("involvedKind"), alert.get("involvedName"))

    def _start(self, trig: dict[str, Any], ev: Observed) -> dict[str, Any]:
        meta, spec = trig["metadata"], trig["spec"]
        record: dict[str, Any] = {"id": ev.id, "time": fmt_time(ev.time)}
        run_spec = run_spec_from(spec)
        run_spec["parameters"] = run_parameters(spec, ev)
        name = run_name(meta["name"], ev.id)
        doc = {"apiVersion": trig["apiVersion"], "kind": "PipelineRun",
               "metadata": {"name": name, "namespace": meta["namespace"],
                            "labels": {**queue_labels(meta), TRIGGER_LABEL: meta["name"][:63]},
                            "annotations": {EVENT_ANNOTATION: ev.id},
                            "ownerReferences": [{"apiVersion": trig["apiVersion"], "kind": trig["kind"],
                                                 "name": meta["name"], "uid": meta["uid"], "controller": True}]},
               "spec": run_spec}
        try:
            self.store.create(PIPELINE_RUN, validate_document(PIPELINE_RUN, doc, namespace=meta["namespace"]))
            self.recorder.record(trig, "Normal", "RunCreated", f"started {name} for {ev.id}")
        except errors.ApiError as err:
            if err.code != 409:  # 409: started before a crash, recorded now
                record["error"] = str(err)[:500]
                self.recorder.record(trig, "Warning", "RunFailed", f"could not start a run for {ev.id}: "
                                                                   f"{record['error']}")
                return record
        record["run"] = name
        return record

    def _write(self, trig: dict[str, Any], status: dict[str, Any]) -> None:
        if status == trig.get("status"):
            return

        def apply(s: dict[str, Any], _obj: dict[str, Any]) -> None:
            s.clear()
            s.update(status)
        meta = trig["metadata"]
        self.store.update_status(TRIGGER, meta["namespace"], meta["name"], apply)
