"""RecurringRun: KFP's 6-field cron, and the reconciler starting PipelineRuns as a driven clock passes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kaip.api import core  # noqa: F401
from kaip.api.core import NAMESPACE
from kaip.api.errors import ApiError
from kaip.api.pipelines import PIPELINE_RUN, RECURRING_RUN
from kaip.api.validation import validate_document
from kaip.controlplane.events import EventRecorder
from kaip.pipelines.cron import CronError, due_times, next_after, parse_cron
from kaip.pipelines.recurring import RecurringRunReconciler
from kaip.store import Store

IR = {"pipelineInfo": {"name": "tick"},
      "components": {"comp-noop": {"executorLabel": "exec-noop"}},
      "deploymentSpec": {"executors": {"exec-noop": {"container": {"image": "python:3.11",
                                                                    "command": ["python", "-c", "pass"]}}}},
      "root": {"dag": {"tasks": {"noop": {"componentRef": {"name": "comp-noop"}, "taskInfo": {"name": "noop"}}}}},
      "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.17.3"}


def t(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def test_six_field_cron_seconds_first() -> None:
    weekdays_nine = parse_cron("0 0 9 ? * 2-6")  # KFP's docstring example: Tue-Sat (robfig: 0 = Sunday)
    assert next_after(weekdays_nine, t("2026-11-27 10:00:00")) == t("2026-11-28 09:00:00")  # Fri -> Sat
    assert next_after(weekdays_nine, t("2026-11-28 09:00:00")) == t("2026-12-01 09:00:00")  # Sat -> Tue
    every_15s = parse_cron("*/15 * * * * *")
    assert due_times(every_15s, t("2026-01-01 00:00:00"), t("2026-01-01 00:01:00")) == [
        t("2026-01-01 00:00:15"), t("2026-01-01 00:00:30"), t("2026-01-01 00:00:45"), t("2026-01-01 00:01:00")]
    assert due_times(every_15s, t("2026-01-01 00:00:00"), t("2026-01-01 00:01:00"), catchup=False) == [
        t("2026-01-01 00:01:00")]
    assert next_after(parse_cron("@every 90s"), t("2026-01-01 00:00:10"), anchor=t("2026-01-01 00:00:00")) == \
        t("2026-01-01 00:01:30")
    assert next_after(parse_cron("0 30 1 1,15 JAN-MAR *"), t("2026-01-15 02:00:00")) == t("2026-02-01 01:30:00")


@pytest.mark.parametrize("expr, message", [
    ("0 9 * * *", "has 5 fields; KFP uses 6"),
    ("0 61 * * * *", "minute: 61 is outside 0-59"),
    ("0 0 0 ? * 5-2", "day of week: range '5-2' runs backwards"),
    ("0 0 0 * * */0", "day of week: invalid step '0'"),
])
def test_bad_cron_is_refused_precisely(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        parse_cron(expr)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    s.create(NAMESPACE, validate_document(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": "default"}}, namespace=None))
    yield s
    s.close()


def _recurring(store: Store, spec: dict[str, Any]) -> dict[str, Any]:
    doc = {"apiVersion": "kaip.dev/v1alpha1", "kind": "RecurringRun", "metadata": {"name": "nightly"},
           "spec": {"pipelineSpec": IR, **spec}}
    return store.create(RECURRING_RUN, validate_document(RECURRING_RUN, doc, namespace="default"))


def _runs(store: Store) -> list[str]:
    return sorted(r["metadata"]["name"] for r in store.list(PIPELINE_RUN, "default")[0])


def _finish_all(store: Store) -> None:
    for r in store.list(PIPELINE_RUN, "default")[0]:
        store.update_status(PIPELINE_RUN, "default", r["metadata"]["name"],
                            lambda s, _o: s.update(phase="Succeeded"))


def test_recurring_run_fires_on_schedule_with_a_driven_clock(store: Store) -> None:
    _recurring(store, {"trigger": {"cronSchedule": {"cron": "0 */10 * * * *", "startTime": "2026-01-01T00:00:00Z"}},
                       "maxConcurrency": 2})
    clock = Clock(t("2026-01-01 00:05:00"))
    rec = RecurringRunReconciler(store, EventRecorder(store, "test"), clock=clock)
    result = rec.reconcile(("default", "nightly"))
    start = int(t("2026-01-01 00:00:00").timestamp())
    assert _runs(store) == [f"nightly-{start}"]  # startTime is inclusive: 00:00:00 fires
    assert result is not None and result.requeue_after == 300.0  # the next fire time, 00:10:00
    status = store.get(RECURRING_RUN, "default", "nightly")["status"]
    assert status["nextScheduledTime"] == "2026-01-01T00:10:00Z"

    rec.reconcile(("default", "nightly"))  # nothing new is due: nothing created twice
    assert len(_runs(store)) == 1

    clock.now = t("2026-01-01 00:35:00").timestamp()  # 00:10, 00:20, 00:30 missed; one run still active
    rec.reconcile(("default", "nightly"))
    assert len(_runs(store)) == 2  # maxConcurrency 2: only one more may start
    _finish_all(store)
    rec.reconcile(("default", "nightly"))
    assert _runs(store) == [f"nightly-{start + 600 * i}" for i in range(4)]  # caught up in order
    run = store.get(PIPELINE_RUN, "default", f"nightly-{start + 1800}")
    assert run["spec"]["pipelineSpec"] == IR
    assert run["metadata"]["ownerReferences"][0]["kind"] == "RecurringRun"


def test_no_catchup_and_disable(store: Store) -> None:
    _recurring(store, {"trigger": {"periodicSchedule": {"intervalSecond": 60, "startTime": "2026-01-01T00:00:00Z"}},
                       "noCatchup": True})
    clock = Clock(t("2026-01-01 00:10:30"))
    rec = RecurringRunReconciler(store, EventRecorder(store, "test"), clock=clock)
    rec.reconcile(("default", "nightly"))
    assert _runs(store) == [f"nightly-{int(t('2026-01-01 00:10:00').timestamp())}"]  # only the latest
    _finish_all(store)
    store.mutate(RECURRING_RUN, "default", "nightly", lambda o: {**o, "spec": {**o["spec"], "mode": "DISABLE"}})
    clock.now += 3600
    assert rec.reconcile(("default", "nightly")) is None
    assert len(_runs(store)) == 1
    assert store.get(RECURRING_RUN, "default", "nightly")["status"]["status"] == "DISABLED"


def test_bad_schedule_is_a_422_naming_the_field(store: Store) -> None:
    with pytest.raises(ApiError) as err:
        _recurring(store, {"trigger": {"cronSchedule": {"cron": "0 9 * * *"}}})
    assert err.value.code == 422
    causes = err.value.to_status()["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.trigger.cronSchedule.cron"]
    assert "has 5 fields; KFP uses 6" in causes[0]["message"]
