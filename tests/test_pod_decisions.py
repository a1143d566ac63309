"""The Pod reconciler's pure decisions: restart policies, back-off, deadlines and the pod phase."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kaip.controllers.pod import (
    BACKOFF_MAX,
    Decision,
    backoff_delay,
    decide,
    last_termination,
    past_deadline,
    pod_phase,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
T0_TEXT = "2025-01-02T03:04:05Z"
T0_SECS = T0.timestamp()


def running(restarts: int = 0) -> dict[str, Any]:
    return {"name": "main", "restartCount": restarts, "state": {"running": {"startedAt": T0_TEXT}}}


def terminated(code: int, restarts: int = 0, finished: str = T0_TEXT) -> dict[str, Any]:
    return {"name": "main", "restartCount": restarts,
            "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                     "finishedAt": finished}}}


def backing_off(code: int, restarts: int, finished: str = T0_TEXT) -> dict[str, Any]:
    """A container waiting in CrashLoopBackOff: its last termination lives in lastState."""
    return {"name": "main", "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": finished}}}


def creating() -> dict[str, Any]:
    return {"name": "main", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}


# ---- last_termination ---------------------------------------------------------------------------------

def test_last_termination_of_a_terminated_container_is_its_state() -> None:
    cs = terminated(3)
    assert last_termination(cs) == cs["state"]["terminated"]


def test_last_termination_while_backing_off_is_the_last_state() -> None:
    cs = backing_off(4, restarts=2)
    assert last_termination(cs) == {"exitCode": 4, "reason": "Error", "finishedAt": T0_TEXT}


@pytest.mark.parametrize("cs", [running(), creating(),
                                {"name": "main", "state": {"waiting": {"reason": "CreateContainerConfigError"}},
                                 "lastState": {"terminated": {"exitCode": 1}}}])
def test_no_last_termination_while_running_or_not_yet_started(cs: dict[str, Any]) -> None:
    # A waiting reason other than CrashLoopBackOff does not resurrect an old termination.
    assert last_termination(cs) is None


# ---- decide: restart policies -------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_running_container_is_kept_under_every_policy(policy: str) -> None:
    assert decide(policy, running(), T0_SECS + 1000) == Decision("keep")


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_container_not_yet_started_is_started(policy: str) -> None:
    assert decide(policy, creating(), T0_SECS) == Decision("start")


@pytest.mark.parametrize(("policy", "code", "action"), [
    ("Never", 0, "done"),
    ("Never", 1, "done"),
    ("Never", 137, "done"),
    ("OnFailure", 0, "done"),
    ("OnFailure", 1, "start"),
    ("OnFailure", 143, "start"),
    ("Always", 0, "start"),
    ("Always", 2, "start"),
])
def test_restart_policy_decides_whether_an_ended_container_runs_again(policy: str, code: int, action: str) -> None:
    # Long after it ended, so that no back-off is pending.
    assert decide(policy, terminated(code), T0_SECS + 3600).action == action


def test_missing_exit_code_counts_as_failure() -> None:
    cs = {"name": "main", "restartCount": 0, "state": {"terminated": {"finishedAt": T0_TEXT}}}
    assert decide("OnFailure", cs, T0_SECS + 3600).action == "start"
    assert pod_phase([cs], [Decision("done")]) == "Failed"


# ---- decide: back-off ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("restarts", "delay"), [(0, 1), (1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 60),
                                                 (7, 60), (30, 60)])
def test_backoff_doubles_from_one_second_and_is_capped_at_sixty(restarts: int, delay: float) -> None:
    assert backoff_delay(restarts) == delay
    cs = terminated(1, restarts=restarts)
    # Just before the delay has passed since finishedAt: wait for exactly what is left.
    before = decide("Always", cs, T0_SECS + delay - 0.25)
    assert before.action == "wait"
    assert before.delay == pytest.approx(0.25)
    # Once it has passed: start again.
    assert decide("Always", cs, T0_SECS + delay) == Decision("start")
    assert decide("Always", cs, T0_SECS + delay + 0.5) == Decision("start")


def test_backoff_is_measured_from_finished_at_not_from_now() -> None:
    cs = terminated(1, restarts=3, finished="2025-01-02T03:04:09Z")  # ended 4 s after T0; delay 8 s
    at_end = decide("OnFailure", cs, T0_SECS + 4)
    assert at_end == Decision("wait", 8.0)
    later = decide("OnFailure", cs, T0_SECS + 10)
    assert later == Decision("wait", 2.0)
    assert decide("OnFailure", cs, T0_SECS + 12) == Decision("start")


def test_backoff_continues_while_waiting_in_crash_loop() -> None:
    cs = backing_off(2, restarts=1)  # delay 2 s from the termination kept in lastState
    assert decide("OnFailure", cs, T0_SECS + 1) == Decision("wait", 1.0)
    assert decide("OnFailure", cs, T0_SECS + 2) == Decision("start")


def test_backoff_never_exceeds_the_cap() -> None:
    cs = terminated(1, restarts=1000)
    d = decide("Always", cs, T0_SECS)
    assert d.action == "wait"
    assert d.delay == BACKOFF_MAX == 60.0


# ---- decide: active deadline --------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_deadline_exceeded_ends_terminated_and_waiting_containers(policy: str) -> None:
    assert decide(policy, terminated(1), T0_SECS + 3600, deadline_exceeded=True) == Decision("done")
    assert decide(policy, backing_off(1, 2), T0_SECS, deadline_exceeded=True) == Decision("done")
    assert decide(policy, creating(), T0_SECS, deadline_exceeded=True) == Decision("done")


def test_no_deadline_is_never_exceeded() -> None:
    assert not past_deadline(T0_TEXT, None, T0_SECS + 10**6)
    assert not past_deadline(None, 5, T0_SECS + 10**6)


def test_deadline_is_never_exceeded_early() -> None:
    # startTime has whole seconds: the pod may have started as late as T0 + 0.999 s. Counting from there,
    # 5 s have certainly passed only at T0 + 6 s.
    assert not past_deadline(T0_TEXT, 5, T0_SECS + 5.0)
    assert not past_deadline(T0_TEXT, 5, T0_SECS + 5.99)
    assert past_deadline(T0_TEXT, 5, T0_SECS + 6.0)
    assert past_deadline(T0_TEXT, 5, T0_SECS + 600)


def test_deadline_exceeded_keeps_a_running_container_for_the_reconciler_to_kill() -> None:
    # The reconciler observes (and kills) a running process before deciding; `decide` never kills.
    assert decide("Always", running(), T0_SECS, deadline_exceeded=True) == Decision("keep")


# ---- pod_phase ----------------------------------------------------------------------------------------

def test_phase_running_while_any_container_runs_or_backs_off() -> None:
    assert pod_phase([running()], [Decision("keep")]) == "Running"
    assert pod_phase([backing_off(1, 0)], [Decision("wait", 1.0)]) == "Running"
    assert pod_phase([terminated(0), running()], [Decision("done"), Decision("keep")]) == "Running"


def test_phase_succeeded_only_when_every_container_exited_zero() -> None:
    assert pod_phase([terminated(0)], [Decision("done")]) == "Succeeded"
    assert pod_phase([terminated(0), terminated(0)], [Decision("done"), Decision("done")]) == "Succeeded"
    assert pod_phase([terminated(0), terminated(2)], [Decision("done"), Decision("done")]) == "Failed"


def test_phase_failed_when_a_never_started_container_is_given_up() -> None:
    assert pod_phase([creating()], [Decision("done")]) == "Failed"


def test_phase_pending_before_anything_was_decided() -> None:
    assert pod_phase([], []) == "Pending"
    assert pod_phase([creating()], [Decision("start")]) == "Pending"
