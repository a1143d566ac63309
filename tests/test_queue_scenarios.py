"""Kueue scenarios end to end: manifests from examples/queues applied to a live server, Jobs that really run
(tiny `python -c` sleeps), and the admissions, preemptions and evictions Kueue would make."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kaip.api.kinds import REGISTRY
from kaip.testing.live import LiveServer, live_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "queues"
LONG = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(60)"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module (each scenario has its own namespace and queues), with a roomy node so that
    the scenarios test quota, not the size of the machine running the tests."""
    with live_server(tmp_path_factory.mktemp("queues") / "home", bookmark_seconds=0.5) as server:
        server.server.queue_scheduler.capacity = {"cpu": 64_000}
        yield server


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


def path(doc: dict[str, Any], name: str | None = None) -> str:
    info, version = REGISTRY.for_api_version(doc["apiVersion"], doc["kind"])
    base = f"/apis/{info.group}/{version}" if info.group else f"/api/{version}"
    ns = (doc.get("metadata") or {}).get("namespace")
    if info.namespaced:
        base += f"/namespaces/{ns}"
    return f"{base}/{info.plural}" + (f"/{name}" if name else "")


def apply(api: httpx.Client, filename: str) -> None:
    for doc in yaml.safe_load_all((EXAMPLES / filename).read_text()):
        r = api.patch(path(doc, doc["metadata"]["name"]), content=json.dumps(doc),
                      headers={"Content-Type": "application/apply-patch+yaml"})
        assert r.status_code in (200, 201), r.text


def job(name: str, namespace: str, cpu: str, *, queue: str | None = None, priority: str | None = None,
        script: str = LONG) -> dict[str, Any]:
    labels = {}
    if queue:
        labels["kueue.x-k8s.io/queue-name"] = queue
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"template": {"spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 3,
                "containers": [{"name": "main", "command": ["python", "-c", script],
                                "resources": {"requests": {"cpu": cpu}}}]}}}}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def get_job(api: httpx.Client, namespace: str, name: str) -> dict[str, Any]:
    r = api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def workload_of(api: httpx.Client, namespace: str, job_name: str) -> dict[str, Any] | None:
    items = api.get(f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads").json()["items"]
    return next((w for w in items if w["metadata"]["ownerReferences"][0]["name"] == job_name), None)


def submit(api: httpx.Client, doc: dict[str, Any]) -> None:
    """Create a Job and wait for its Workload, so that queue order is submission order."""
    r = api.post(path(doc), json=doc)
    assert r.status_code == 201, r.text
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    wait_for(f"workload of {name}", lambda: workload_of(api, ns, name))


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return {}


def running(api: httpx.Client, namespace: str, name: str) -> bool:
    """Admitted, unsuspended, and its pod has started."""
    j = get_job(api, namespace, name)
    return not j["spec"]["suspend"] and (j.get("status") or {}).get("ready", 0) >= 1


def admitted(api: httpx.Client, namespace: str, name: str) -> bool:
    return condition(workload_of(api, namespace, name), "Admitted").get("status") == "True"


def pending_message(api: httpx.Client, namespace: str, name: str) -> str:
    cond = condition(workload_of(api, namespace, name), "QuotaReserved")
    return cond.get("message", "") if cond.get("status") == "False" else ""


def delete_jobs(api: httpx.Client, namespace: str) -> None:
    for j in api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs").json()["items"]:
        api.delete(f"/apis/batch/v1/namespaces/{namespace}/jobs/{j['metadata']['name']}")


def events(api: httpx.Client, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.get(f"/api/v1/namespaces/{namespace}/events").json()["items"] if e["reason"] == reason]


# ---- scenarios ----------------------------------------------------------------------------------------

def test_strict_fifo_blocks_head_of_line_and_best_effort_does_not(api: httpx.Client) -> None:
    apply(api, "fifo.yaml")
    ns = "queues-fifo"
    for queue in ("strict", "best-effort"):
        submit(api, job(f"{queue}-first", ns, "600m", queue=queue))
        wait_for("first job running", lambda q=queue: running(api, ns, f"{q}-first"))
        submit(api, job(f"{queue}-big", ns, "600m", queue=queue))
        submit(api, job(f"{queue}-small", ns, "300m", queue=queue))
    wait_for("best-effort small admitted past the blocked head", lambda: admitted(api, ns, "best-effort-small"))
    wait_for("strict head told why it waits", lambda: "insufficient unused quota for cpu in flavor default-flavor"
             in pending_message(api, ns, "strict-big"))
    assert not admitted(api, ns, "strict-small")  # blocked behind strict-big, although it would fit
    assert not admitted(api, ns, "best-effort-big")
    assert get_job(api, ns, "strict-small")["spec"]["suspend"] is True
    wait_for("strict queue status", lambda: api.get("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/fifo-strict")
             .json()["status"].get("pendingWorkloads") == 2)
    cq = api.get("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/fifo-strict").json()
    assert cq["status"]["admittedWorkloads"] == 1
    assert cq["status"]["flavorsUsage"][0]["resources"][0] == {"name": "cpu", "total": "600m", "borrowed": "0"}
    text = api.get("/metrics").text
    for name in ("kueue_pending_workloads", "kueue_admitted_workloads_total", "kueue_admission_wait_time_seconds",
                 "kueue_cluster_queue_resource_usage"):
        assert f"# TYPE {name}" in text
    admitted_total = [line for line in text.splitlines()
                      if line.startswith("kueue_admitted_workloads_total{") and 'cluster_queue="fifo-strict"' in line]
    assert admitted_total and float(admitted_total[0].split()[-1]) == 1
    delete_jobs(api, ns)


def test_borrowing_idle_quota_and_reclaiming_it(api: httpx.Client) -> None:
    apply(api, "cohort.yaml")
    ns = "queues-cohort"
    # team-b borrows team-a's idle CPU: 2 jobs of 1 CPU with a nominal quota of 1.
    submit(api, job("b-1", ns, "1", queue="team-b"))
    submit(api, job("b-2", ns, "1", queue="team-b"))
    wait_for("team-b borrows", lambda: running(api, ns, "b-1") and running(api, ns, "b-2"))
    cq = wait_for("borrowed shows in status", lambda: (api.get(
        "/apis/kueue.x-k8s.io/v1beta2/clusterqueues/cohort-team-b").json()["status"].get("flavorsUsage") or [{}])[0]
        .get("resources", [{}])[0].get("borrowed") == "1")
    assert cq
    # team-a wants its quota back: reclaimWithinCohort Any preempts the newest borrowing workload.
    submit(api, job("a-1", ns, "1", queue="team-a"))
    wait_for("team-a admitted after reclaiming", lambda: running(api, ns, "a-1"), timeout=40)
    preempted = [n for n in ("b-1", "b-2") if condition(workload_of(api, ns, n), "Preempted")]
    assert len(preempted) == 1
    victim = workload_of(api, ns, preempted[0])
    assert condition(victim, "Preempted")["reason"] == "InCohortReclamation"
    assert condition(victim, "Evicted")["reason"] == "Preempted"
    assert condition(victim, "Requeued")["status"] == "True"  # requeued once its pod had stopped
    assert get_job(api, ns, preempted[0])["spec"]["suspend"] is True
    assert events(api, ns, "Preempted") and events(api, ns, "Stopped")
    # The survivor keeps running; the victim waits for quota again.
    survivor = "b-2" if preempted[0] == "b-1" else "b-1"
    assert running(api, ns, survivor)
    delete_jobs(api, ns)


def test_priority_preemption_within_a_cluster_queue(api: httpx.Client) -> None:
    apply(api, "priority.yaml")  # v1beta1 manifests, converted
    cq = api.get("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/priority-cq").json()
    assert cq["spec"]["cohortName"] == "priority-only"
    ns = "queues-priority"
    # No queue label: the namespace's LocalQueue named "default" catches the job.
    submit(api, job("low", ns, "1", priority="low-priority"))
    wait_for("low running", lambda: running(api, ns, "low"))
    assert workload_of(api, ns, "low")["spec"]["priority"] == 100  # type: ignore[index]
    submit(api, job("high", ns, "1", priority="high-priority"))
    wait_for("high preempts low and runs", lambda: running(api, ns, "high"), timeout=40)
    low = workload_of(api, ns, "low")
    assert condition(low, "Preempted")["reason"] == "InClusterQueue"
    assert not admitted(api, ns, "low")
    pods = api.get(f"/api/v1/namespaces/{ns}/pods").json()["items"]
    assert all(p["metadata"]["ownerReferences"][0]["name"] == "high" for p in pods)  # low's pod was stopped
    # Low resumes when high is gone.
    api.delete(f"/apis/batch/v1/namespaces/{ns}/jobs/high")
    wait_for("low resumes", lambda: running(api, ns, "low"), timeout=40)
    delete_jobs(api, ns)


def test_lending_and_borrowing_limits_are_honoured(api: httpx.Client) -> None:
    apply(api, "limits.yaml")
    ns = "queues-limits"
    # The lender (3 CPU, lends at most 2) is idle; the borrower (1 CPU) may borrow at most 1 more.
    for i in range(3):
        submit(api, job(f"borrow-{i}", ns, "1", queue="borrower"))
    wait_for("two admitted", lambda: admitted(api, ns, "borrow-0") and admitted(api, ns, "borrow-1"))
    wait_for("third refused", lambda: pending_message(api, ns, "borrow-2"))
    assert not admitted(api, ns, "borrow-2")
    # The lender still has what it did not lend: 1 CPU of its own, plus 1 lendable left unused.
    submit(api, job("lend-0", ns, "2", queue="lender"))
    wait_for("lender uses its own quota", lambda: admitted(api, ns, "lend-0"))
    submit(api, job("lend-1", ns, "1", queue="lender"))
    wait_for("lender out of quota", lambda: pending_message(api, ns, "lend-1"))
    delete_jobs(api, ns)


def test_two_flavors_with_fungibility(api: httpx.Client) -> None:
    apply(api, "flavors.yaml")
    ns = "queues-flavors"
    submit(api, job("one", ns, "1", queue="main"))
    wait_for("first on spot", lambda: admitted(api, ns, "one"))
    submit(api, job("two", ns, "1", queue="main"))
    wait_for("second admitted", lambda: admitted(api, ns, "two"))
    flavors = [workload_of(api, ns, n)["status"]["admission"]["podSetAssignments"][0]["flavors"]["cpu"]  # type: ignore
               for n in ("one", "two")]
    # Spot is full; borrowing more spot is possible, but whenCanBorrow: TryNextFlavor takes on-demand.
    assert flavors == ["spot", "on-demand"]
    two = get_job(api, ns, "two")
    assert two["spec"]["template"]["spec"]["nodeSelector"] == {"instance-type": "on-demand"}
    submit(api, job("three", ns, "1", queue="main"))
    wait_for("third borrows spot", lambda: admitted(api, ns, "three"))
    three = workload_of(api, ns, "three")["status"]["admission"]["podSetAssignments"][0]  # type: ignore[index]
    assert three["flavors"]["cpu"] == "spot"
    delete_jobs(api, ns)


def test_hold_and_drain_evicts_and_resumes(api: httpx.Client) -> None:
    apply(api, "hold-and-drain.yaml")
    ns = "queues-drain"
    submit(api, job("work", ns, "500m", queue="main"))
    wait_for("running", lambda: running(api, ns, "work"))
    r = api.patch("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/drain-cq", content=json.dumps(
        {"spec": {"stopPolicy": "HoldAndDrain"}}), headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    wait_for("evicted and suspended", lambda: condition(workload_of(api, ns, "work"), "Evicted").get("reason")
             == "ClusterQueueStopped" and get_job(api, ns, "work")["spec"]["suspend"])
    wait_for("pods gone", lambda: not api.get(f"/api/v1/namespaces/{ns}/pods").json()["items"])
    submit(api, job("later", ns, "100m", queue="main"))
    wait_for("later waits on the stopped queue", lambda: "ClusterQueue drain-cq is inactive"
             in pending_message(api, ns, "later"))
    cq = wait_for("queue reports Stopped", lambda: condition(
        api.get("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/drain-cq").json(), "Active").get("reason") == "Stopped")
    assert cq
    api.patch("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/drain-cq", content=json.dumps(
        {"spec": {"stopPolicy": "None"}}), headers={"Content-Type": "application/merge-patch+json"})
    wait_for("both run again", lambda: running(api, ns, "work") and running(api, ns, "later"), timeout=40)
    delete_jobs(api, ns)


def test_invalid_cluster_queue_is_refused_with_upstream_messages(api: httpx.Client) -> None:
    doc = yaml.safe_load((EXAMPLES / "invalid-clusterqueue.yaml").read_text())
    r = api.post(path(doc), json=doc)
    assert r.status_code == 422
    causes = {c["field"]: c["message"] for c in r.json()["details"]["causes"]}
    assert causes["spec.resourceGroups[0].flavors[0].resources[0].borrowingLimit"] == \
        "borrowingLimit must be nil when cohort is empty"
    assert causes["spec.resourceGroups[1]"] == \
        "flavors must have the same number of resources as the coveredResources"
    assert api.get("/apis/kueue.x-k8s.io/v1beta2/clusterqueues/invalid-cq").status_code == 404


def test_top_queues_and_report_usage(api: httpx.Client, live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kaip.cli.main import app

    apply(api, "fifo.yaml")
    ns = "queues-fifo"
    quick = "import time; time.sleep(1.2)"
    submit(api, job("report-me", ns, "250m", queue="best-effort", script=quick))
    wait_for("report-me finished", lambda: condition(workload_of(api, ns, "report-me"), "Finished"))
    monkeypatch.setenv("KAIP_SERVER", live.url)
    monkeypatch.setenv("KAIP_TOKEN", live.token)
    runner = CliRunner()
    top = runner.invoke(app, ["top", "queues"])
    assert top.exit_code == 0, top.output
    row = next(line for line in top.output.splitlines() if line.startswith("fifo-best-effort"))
    assert "default-flavor/cpu=" in row and "/1" in row
    assert any(line.startswith("queues-fifo") and "best-effort" in line for line in top.output.splitlines())
    report = runner.invoke(app, ["report", "usage", "--since", "1h", "--by", "job"])
    assert report.exit_code == 0, report.output
    line = next(line for line in report.output.splitlines() if "job/report-me" in line)
    cpu_hours = float(line.split()[2])
    assert 0.25 * 0.9 / 3600 <= cpu_hours <= 0.25 * 10 / 3600  # 250m for the (whole) seconds it held quota
    bad = runner.invoke(app, ["report", "usage", "--since", "soon"])
    assert bad.exit_code == 1 and "invalid duration" in bad.output


def test_plain_job_without_a_queue_runs_to_completion(api: httpx.Client) -> None:
    r = api.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": "queues-plain"}})
    assert r.status_code == 201, r.text
    doc = job("plain", "queues-plain", "100m", script="print('done')")
    doc["spec"].update(completions=2, parallelism=2)
    assert api.post(path(doc), json=doc).status_code == 201
    done = wait_for("complete", lambda: condition(get_job(api, "queues-plain", "plain"), "Complete"))
    assert done["reason"] == "CompletionsReached"
    j = get_job(api, "queues-plain", "plain")
    assert j["status"]["succeeded"] == 2 and j["status"]["completionTime"]
    assert workload_of(api, "queues-plain", "plain") is None  # not queued: no Workload
    pods = api.get("/api/v1/namespaces/queues-plain/pods").json()["items"]
    assert len(pods) == 2 and all(p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "plain" for p in pods)
