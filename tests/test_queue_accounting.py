"""Resource-hours from recorded admissions (`kaip report usage`), and `kaip top queues` rows."""

from __future__ import annotations

from typing import Any

import pytest

from kaip.cli.queues import top_queue_rows
from kaip.scheduling.accounting import parse_duration, usage_report

T0 = 1_800_000_000.0


def stamp(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def workload(name: str, ns: str, *, reserved_at: float | None, finished_at: float | None = None,
             past: int = 0, cpu: str = "2") -> dict[str, Any]:
    conditions = []
    status: dict[str, Any] = {"conditions": conditions}
    if reserved_at is not None:
        conditions.append({"type": "QuotaReserved", "status": "True", "lastTransitionTime": stamp(reserved_at)})
        status["admission"] = {"clusterQueue": "cq", "podSetAssignments": [
            {"name": "main", "flavors": {"cpu": "f"}, "resourceUsage": {"cpu": cpu}, "count": 1}]}
    if finished_at is not None:
        conditions.append({"type": "Finished", "status": "True", "lastTransitionTime": stamp(finished_at)})
    if past:
        status["accumulatedPastExecutionTimeSeconds"] = past
    return {"metadata": {"name": name, "namespace": ns, "ownerReferences": [
        {"kind": "Job", "name": name, "controller": True}]},
        "spec": {"queueName": "q", "podSets": [{"name": "main", "count": 1, "template": {"spec": {
            "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}}]}, "status": status}


def test_resource_hours_by_team_queue_and_job() -> None:
    wls = [workload("a", "team-a", reserved_at=T0, finished_at=T0 + 3600),  # 2 CPU for 1 h
           workload("b", "team-a", reserved_at=T0 + 1800),  # still running at T0 + 2h: 1.5 h
           workload("c", "team-b", reserved_at=None, past=1800, cpu="4"),  # evicted after 30 min of 4 CPU
           workload("d", "team-b", reserved_at=None)]  # never ran
    rows = {r.key: r for r in usage_report(wls, since=T0 - 10, now=T0 + 7200, by="team")}
    assert rows["team-a"].hours("cpu") == pytest.approx(2 * 1 + 2 * 1.5)
    assert rows["team-a"].workloads == 2
    assert rows["team-b"].hours("cpu") == pytest.approx(4 * 0.5) and rows["team-b"].workloads == 1
    by_job = {r.key: r for r in usage_report(wls, since=T0 - 10, now=T0 + 7200, by="job")}
    assert set(by_job) == {"team-a/job/a", "team-a/job/b", "team-b/job/c"}
    assert [r.key for r in usage_report(wls, since=T0, now=T0 + 7200, by="queue")] == ["team-a/q", "team-b/q"]


def test_window_clips_what_started_before_it() -> None:
    rows = usage_report([workload("a", "t", reserved_at=T0, finished_at=T0 + 3600)], since=T0 + 2700,
                        now=T0 + 7200)
    assert rows[0].hours("cpu") == pytest.approx(2 * 0.25)


def test_durations_and_groupings_are_checked() -> None:
    assert parse_duration("7d") == 7 * 86400 and parse_duration("30m") == 1800
    with pytest.raises(ValueError):
        parse_duration("7 days")
    with pytest.raises(ValueError):
        usage_report([], since=0, now=1, by="colour")


def test_top_rows_show_usage_against_nominal_and_borrowing() -> None:
    cq = {"metadata": {"name": "cq"}, "spec": {"cohortName": "org", "resourceGroups": [
        {"coveredResources": ["cpu"], "flavors": [{"name": "f", "resources": [{"name": "cpu", "nominalQuota": 4}]}]}]},
        "status": {"pendingWorkloads": 3, "reservingWorkloads": 2, "admittedWorkloads": 2,
                   "flavorsUsage": [{"name": "f", "resources": [{"name": "cpu", "total": "6", "borrowed": "2"}]}]}}
    lq = {"metadata": {"name": "lq", "namespace": "team"}, "spec": {"clusterQueue": "cq"}, "status": {}}
    cq_lines, lq_lines = top_queue_rows([cq], [lq])
    assert cq_lines[1].split()[:5] == ["cq", "org", "3", "2", "2"]
    assert "f/cpu=6/4 (borrowed 2)" in cq_lines[1]
    assert lq_lines[1].split()[:3] == ["team", "lq", "cq"]
