"""Trigger: PipelineRuns started by events — a new model version, a dataset change, an alert Event. The matching
and dedup logic is pure; the reconciler is driven by hand against a real store (restart = a new reconciler)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaip.api import core  # noqa: F401
from kaip.api.core import EVENT, NAMESPACE
from kaip.api.errors import ApiError
from kaip.api.pipelines import PIPELINE, PIPELINE_RUN
from kaip.api.triggers import TRIGGER
from kaip.api.validation import validate_document
from kaip.controlplane.events import EventRecorder
from kaip.pipelines.triggers import (
    Observed,
    TriggerReconciler,
    alert_events,
    dataset_event,
    model_version_events,
    parse_time,
    remember,
    run_name,
    run_parameters,
    select_new,
)
from kaip.store import Store
from kaip.testing.live import LiveServer
from kaip.tracking.access import AllowAll
from kaip.tracking.registry import RegistryService

IR = {"pipelineInfo": {"name": "retrain"},
      "root": {"dag": {"tasks": {"noop": {"componentRef": {"name": "comp-noop"}, "taskInfo": {"name": "noop"}}}},
               "inputDefinitions": {"parameters": {
                   "model": {"parameterType": "STRING", "defaultValue": ""},
                   "version": {"parameterType": "NUMBER_INTEGER", "defaultValue": 0},
                   "data": {"parameterType": "STRING", "defaultValue": ""},
                   "reason": {"parameterType": "STRING", "defaultValue": ""}}}},
      "components": {"comp-noop": {"executorLabel": "exec-noop"}},
      "deploymentSpec": {"executors": {"exec-noop": {"container": {"image": "python:3.11",
                                                                    "command": ["python", "-c", "pass"]}}}},
      "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.17.3"}


# ---- pure logic -----------------------------------------------------------------------------------------


def test_select_new_keeps_events_since_the_watermark_not_yet_handled_oldest_first() -> None:
    evs = [Observed("b", 20.0), Observed("a", 20.0), Observed("old", 9.0), Observed("c", 15.0)]
    assert [e.id for e in select_new(evs, since=10.0, handled=set())] == ["c", "a", "b"]
    assert [e.id for e in select_new(evs, since=20.0, handled={"a"})] == ["b"]
    assert select_new(evs, since=20.0, handled={"a", "b"}) == []


def test_model_versions_alerts_and_datasets_become_events() -> None:
    versions = [{"name": "churn", "version": "3", "creation_timestamp": 1_700_000_000_500, "source": "s3://m/3",
                 "run_id": "r1"}, {"name": "other", "version": "1", "creation_timestamp": 1_700_000_001_000}]
    [mv] = model_version_events(versions, "churn")
    assert mv.id == "modelversion:churn/3" and mv.time == 1_700_000_000.5
    assert mv.fields == {"model": "churn", "version": 3, "source": "s3://m/3", "runId": "r1",
                         "registeredAt": "2023-11-14T22:13:20Z"}
    assert len(model_version_events(versions, None)) == 2

    event = {"metadata": {"name": "isvc.1", "uid": "u1"}, "reason": "DriftDetected", "message": "psi 0.4",
             "involvedObject": {"kind": "InferenceService", "name": "churn"}, "count": 2,
             "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:05:00Z"}
    other = {**event, "reason": "Scaled"}
    [alert] = alert_events([event, other], "DriftDetected", "InferenceService", None)
    assert alert.id == "alert:u1#2" and alert.time == parse_time("2026-01-01T00:05:00Z")
    assert alert.fields["message"] == "psi 0.4" and alert.fields["count"] == 2
    assert alert_events([event], "DriftDetected", None, "fraud") == []

    assert dataset_event("/d.csv", "sha256:aa", None, 0, 5.0) is None  # the baseline
    assert dataset_event("/d.csv", "sha256:aa", "sha256:aa", 0, 5.0) is None
    change = dataset_event("/d.csv", "sha256:bb", "sha256:aa", 2, 5.0)
    assert change is not None and change.id == "dataset:/d.csv#3:aa->bb"
    assert change.fields["previousDigest"] == "sha256:aa"


def test_run_parameters_name_and_bounded_memory() -> None:
    ev = Observed("modelversion:churn/3", 1.0, {"model": "churn", "version": 3})
    spec = {"parameters": {"data": "/d"}, "eventParameters": {"model": "model", "version": "version", "r": "eventId"}}
    assert run_parameters(spec, ev) == {"data": "/d", "model": "churn", "version": 3, "r": "modelversion:churn/3"}
    assert run_name("t", ev.id) == run_name("t", ev.id) != run_name("t", "modelversion:churn/4")
    assert len(remember([{"id": str(i)} for i in range(99)], [{"id": "x"}, {"id": "y"}])) == 100


# ---- schema ---------------------------------------------------------------------------------------------


def _doc(spec: dict[str, Any], name: str = "retrain") -> dict[str, Any]:
    return {"apiVersion": "kaip.dev/v1alpha1", "kind": "Trigger", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("spec, message", [
    ({"event": {"modelVersion": {}}, "pipelineRef": {"name": "p"}, "bogus": 1}, "spec.bogus"),
    ({"event": {"modelVersion": {"modle": "x"}}, "pipelineRef": {"name": "p"}}, "spec.event.modelVersion.modle"),
    ({"event": {}, "pipelineRef": {"name": "p"}}, "exactly one of modelVersion, dataset or alert"),
    ({"event": {"alert": {"reason": "Drift"}, "dataset": {"path": "/x"}}, "pipelineRef": {"name": "p"}},
     "exactly one of modelVersion, dataset or alert"),
    ({"event": {"dataset": {"path": "/x"}}, "pipelineRef": {"name": "p"}, "eventParameters": {"v": "version"}},
     "eventParameters.v: unknown field 'version' of a dataset event"),
    ({"event": {"dataset": {"path": "/x"}}}, "exactly one of pipelineSpec or pipelineRef"),
])
def test_bad_triggers_are_refused_with_their_path(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as exc:
        validate_document(TRIGGER, _doc(spec), namespace="default")
    assert exc.value.code == 422
    assert message in str(exc.value.to_status())


# ---- the reconciler -------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    s.create(NAMESPACE, validate_document(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": "default"}}, namespace=None))
    s.create(PIPELINE, validate_document(PIPELINE, {"apiVersion": "kaip.dev/v1alpha1", "kind": "Pipeline",
                                                    "metadata": {"name": "retrain"}, "spec": {"pipelineSpec": IR}},
                                         namespace="default"))
    yield s
    s.close()


def _trigger(store: Store, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    doc = _doc({"pipelineRef": {"name": "retrain"}, **spec})
    doc["metadata"]["labels"] = labels or {}
    return store.create(TRIGGER, validate_document(TRIGGER, doc, namespace="default"))


def _runs(store: Store) -> dict[str, dict[str, Any]]:
    items, _ = store.list(PIPELINE_RUN, "default")
    return {r["metadata"]["annotations"]["pipelines.kaip.dev/trigger-event"]: r for r in items}


def _reconciler(store: Store, clock: Clock | None = None) -> TriggerReconciler:
    return TriggerReconciler(store, EventRecorder(store, "test"), clock=clock or Clock(0.0))


def test_new_model_versions_start_one_run_each_even_across_restarts(store: Store) -> None:
    reg = RegistryService(store)
    reg.create_model(AllowAll(), "default", "churn")
    reg.create_model(AllowAll(), "default", "fraud")
    trig = _trigger(store, {"event": {"modelVersion": {"model": "churn"}},
                            "eventParameters": {"model": "model", "version": "version"}},
                    labels={"kueue.x-k8s.io/queue-name": "training", "team": "a"})
    rec = _reconciler(store)
    reg.create_version(AllowAll(), "default", {"name": "churn", "source": "/m/1"})
    reg.create_version(AllowAll(), "default", {"name": "fraud", "source": "/f/1"})
    result = rec.reconcile(("default", "retrain"))
    assert result is not None and result.requeue_after == 30.0
    runs = _runs(store)
    assert list(runs) == ["modelversion:churn/1"]
    assert runs["modelversion:churn/1"]["spec"]["parameters"] == {"model": "churn", "version": 1}
    assert runs["modelversion:churn/1"]["metadata"]["ownerReferences"][0]["uid"] == trig["metadata"]["uid"]
    assert runs["modelversion:churn/1"]["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "training",
                                                                  "pipelines.kaip.dev/trigger": "retrain"}

    # Nothing new: nothing started. A restart (a fresh reconciler) changes nothing either.
    rec.reconcile(("default", "retrain"))
    _reconciler(store).reconcile(("default", "retrain"))
    assert len(_runs(store)) == 1

    reg.create_version(AllowAll(), "default", {"name": "churn", "source": "/m/2"})
    _reconciler(store).reconcile(("default", "retrain"))
    assert sorted(_runs(store)) == ["modelversion:churn/1", "modelversion:churn/2"]
    status = store.get(TRIGGER, "default", "retrain")["status"]
    assert status["runsStarted"] == 2
    assert [h["id"] for h in status["handled"]] == ["modelversion:churn/1", "modelversion:churn/2"]
    assert all(h["run"] == run_name("retrain", h["id"]) for h in status["handled"])


def test_a_crash_between_starting_a_run_and_recording_it_starts_no_second_run(store: Store) -> None:
    reg = RegistryService(store)
    reg.create_model(AllowAll(), "default", "churn")
    _trigger(store, {"event": {"modelVersion": {}}})
    reg.create_version(AllowAll(), "default", {"name": "churn", "source": "/m/1"})
    rec = _reconciler(store)
    rec._write = lambda trig, status: None  # type: ignore[method-assign]  # the status write is lost
    rec.reconcile(("default", "retrain"))
    assert len(_runs(store)) == 1
    _reconciler(store).reconcile(("default", "retrain"))
    assert len(_runs(store)) == 1
    status = store.get(TRIGGER, "default", "retrain")["status"]
    assert status["handled"][0]["run"] == run_name("retrain", "modelversion:churn/1")


def test_dataset_changes_start_runs_and_the_baseline_does_not(store: Store, tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    _trigger(store, {"event": {"dataset": {"path": str(data)}}, "eventParameters": {"data": "path"}})
    trig = store.get(TRIGGER, "default", "retrain")
    clock = Clock((parse_time(trig["metadata"]["creationTimestamp"]) or 0.0) + 10)
    rec = _reconciler(store, clock)
    rec.reconcile(("default", "retrain"))
    assert _runs(store) == {}
    data.write_text("a,b\n1,2\n3,4\n")
    clock.now += 30
    rec.reconcile(("default", "retrain"))
    rec.reconcile(("default", "retrain"))
    [(event_id, run)] = _runs(store).items()
    assert event_id.startswith(f"dataset:{data}#1:")
    assert run["spec"]["parameters"] == {"data": str(data)}
    data.write_text("a,b\n1,2\n")  # back to the first content: a change too
    clock.now += 30
    _reconciler(store, clock).reconcile(("default", "retrain"))
    assert len(_runs(store)) == 2
    data.unlink()
    clock.now += 30
    rec.reconcile(("default", "retrain"))
    cond = store.get(TRIGGER, "default", "retrain")["status"]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "SourceUnavailable")


def test_alert_events_start_runs_once_per_occurrence(store: Store) -> None:
    _trigger(store, {"event": {"alert": {"reason": "DriftDetected", "involvedKind": "InferenceService"}},
                     "eventParameters": {"reason": "reason"}})
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "churn", "namespace": "default", "uid": "isvc-uid"}}
    monitor = EventRecorder(store, "kaip-monitoring")
    monitor.record(isvc, "Normal", "Ready", "ready")
    rec = _reconciler(store)
    rec.reconcile(("default", "retrain"))
    assert _runs(store) == {}
    monitor.record(isvc, "Warning", "DriftDetected", "psi 0.31 on feature age")
    rec.reconcile(("default", "retrain"))
    rec.reconcile(("default", "retrain"))
    assert len(_runs(store)) == 1
    monitor.record(isvc, "Warning", "DriftDetected", "psi 0.31 on feature age")  # the same alert again: count 2
    _reconciler(store).reconcile(("default", "retrain"))
    runs = _runs(store)
    assert len(runs) == 2 and all(r["spec"]["parameters"] == {"reason": "DriftDetected"} for r in runs.values())
    assert sorted(k.rsplit("#", 1)[1] for k in runs) == ["1", "2"]
    items, _ = store.list(EVENT, "default")
    assert any(e["reason"] == "RunCreated" for e in items)


def test_a_run_that_cannot_be_started_is_recorded_not_retried_forever(store: Store) -> None:
    reg = RegistryService(store)
    reg.create_model(AllowAll(), "default", "churn")
    store.create(TRIGGER, validate_document(TRIGGER, _doc({"pipelineSpec": IR, "event": {"modelVersion": {}},
                                                           "eventParameters": {"version": "model"}}),
                                            namespace="default"))
    reg.create_version(AllowAll(), "default", {"name": "churn", "source": "/m/1"})
    rec = _reconciler(store)
    rec.reconcile(("default", "retrain"))
    rec.reconcile(("default", "retrain"))
    status = store.get(TRIGGER, "default", "retrain")["status"]
    assert _runs(store) == {}
    assert len(status["handled"]) == 1 and "error" in status["handled"][0]
    assert status["runsStarted"] == 0


# ---- live -----------------------------------------------------------------------------------------------


def _wait(fetch: Any, what: str, limit: float = 40.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_live_a_registered_model_version_starts_the_pipeline(server: LiveServer) -> None:
    api = "/apis/kaip.dev/v1alpha1/namespaces/default"
    mlflow = "/namespaces/default/api/2.0/mlflow"
    with server.client() as c:
        assert c.post(f"{api}/pipelines", json={"apiVersion": "kaip.dev/v1alpha1", "kind": "Pipeline",
                                                "metadata": {"name": "retrain"},
                                                "spec": {"pipelineSpec": IR}}).status_code == 201
        bad = c.post(f"{api}/triggers", json=_doc({"pipelineRef": {"name": "retrain"},
                                                    "event": {"modelVersion": {"name": "churn"}}}))
        assert bad.status_code == 422 and "spec.event.modelVersion.name" in bad.text
        r = c.post(f"{api}/triggers", json=_doc({"pipelineRef": {"name": "retrain"}, "pollIntervalSeconds": 1,
                                                  "event": {"modelVersion": {"model": "churn"}},
                                                  "eventParameters": {"model": "model", "version": "version"}}))
        assert r.status_code == 201, r.text
        assert c.post(f"{mlflow}/registered-models/create", json={"name": "churn"}).status_code == 200
        mv = c.post(f"{mlflow}/model-versions/create", json={"name": "churn", "source": "/models/churn/1"})
        assert mv.status_code == 200, mv.text

        def finished() -> list[dict[str, Any]]:
            items = c.get(f"{api}/pipelineruns").json()["items"]
            return [r for r in items if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
        [run] = _wait(finished, "the triggered run to finish")
        assert run["status"]["phase"] == "Succeeded", run["status"]
        assert run["status"]["parameters"] == {"model": "churn", "version": 1, "data": "", "reason": ""}
        assert run["metadata"]["annotations"]["pipelines.kaip.dev/trigger-event"] == "modelversion:churn/1"
        trig = c.get(f"{api}/triggers/retrain").json()
        assert trig["status"]["runsStarted"] == 1
        assert trig["status"]["handled"] == [{"id": "modelversion:churn/1", "time": trig["status"]["lastEventTime"],
                                              "run": run["metadata"]["name"]}]
        assert c.get(f"{api}/triggers").json()["items"][0]["metadata"]["name"] == "retrain"
