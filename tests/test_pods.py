"""Pods on the local executor, through the live API: processes, logs, restarts, env, deletion, deadlines, events."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.api.core import POD
from kaip.executor.local import ProcessRef
from kaip.testing.live import LiveServer
from kaip.testing.waiting import wait_for

NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"


# ---- helpers ------------------------------------------------------------------------------------------



def pod_doc(name: str, code: str, *, restart: str = "Never", **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "python:3.11",
                                 "command": ["python", "-c", textwrap.dedent(code)]}
    if "env" in spec:
        container["env"] = spec.pop("env")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "containers": [container], **spec}}


def create(c: httpx.Client, doc: dict[str, Any], path: str = PODS) -> dict[str, Any]:
    r = c.post(path, json=doc)
    assert r.status_code == 201, r.text
    return r.json()


def get_pod(c: httpx.Client, name: str) -> dict[str, Any] | None:
    r = c.get(f"{PODS}/{name}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def phase(c: httpx.Client, name: str) -> str | None:
    return ((get_pod(c, name) or {}).get("status") or {}).get("phase")


def wait_phase(c: httpx.Client, name: str, want: str, timeout: float = 20.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = get_pod(c, name)
        return pod if pod and (pod.get("status") or {}).get("phase") == want else None
    return wait_for(check, f"pod {name} to reach {want}", timeout)


def log(c: httpx.Client, name: str, **params: str) -> str:
    r = c.get(f"{PODS}/{name}/log", params=params)
    assert r.status_code == 200, r.text
    return r.text


def wait_log(c: httpx.Client, name: str, text: str, timeout: float = 20.0) -> str:
    return wait_for(lambda: (lambda s: s if text in s else None)(log(c, name)), f"{text!r} in the log of {name}",
                    timeout)


def events_for(c: httpx.Client, uid: str) -> list[dict[str, Any]]:
    r = c.get(f"/api/v1/namespaces/{NS}/events")
    assert r.status_code == 200, r.text
    return [e for e in r.json()["items"] if e["involvedObject"].get("uid") == uid]


def reasons(c: httpx.Client, uid: str) -> set[str]:
    return {e["reason"] for e in events_for(c, uid)}


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def main_status(pod: dict[str, Any]) -> dict[str, Any]:
    [cs] = pod["status"]["containerStatuses"]
    return cs


@pytest.fixture
def live(server: LiveServer) -> Iterator[LiveServer]:
    """The live server; afterwards every container process a test left behind is killed."""
    yield server
    for pid_file in (server.server.home / "pods").rglob("pid"):
        ref = server.server.executor.adopt(pid_file.parent)
        if ref is not None:
            server.server.executor.signal(ref, signal.SIGKILL)


@pytest.fixture
def c(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


# ---- running and logs ---------------------------------------------------------------------------------

def test_pod_runs_to_success_with_the_project_interpreter(c: httpx.Client) -> None:
    created = create(c, pod_doc("hello", """
        import os, sys
        print("hello from", os.environ["KAIP_POD_NAME"])
        print("interpreter", sys.executable)
        print("cwd", os.getcwd())
    """))
    assert created["metadata"]["finalizers"] == ["kaip.dev/pod-process"]
    pod = wait_phase(c, "hello", "Succeeded")
    cs = main_status(pod)
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert cs["state"]["terminated"]["reason"] == "Completed"
    assert cs["restartCount"] == 0
    assert cs["containerID"].startswith("process://")
    text = log(c, "hello")
    assert "hello from hello\n" in text
    # `python` in a command is the project's own interpreter, as an image's python would be.
    assert f"interpreter {sys.executable}\n" in text
    # Without a workingDir the process runs in a directory of the pod's own.
    cwd = next(line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("cwd "))
    assert Path(cwd).name == "workdir" and Path(cwd).is_dir()
    # The table shows what kubectl shows for a finished pod.
    table = c.get(f"{PODS}/hello", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    cols = [col["name"] for col in table["columnDefinitions"]]
    row = dict(zip(cols, table["rows"][0]["cells"], strict=True))
    assert (row["Ready"], row["Status"], row["Restarts"]) == ("0/1", "Completed", 0)


def test_log_tail_lines(c: httpx.Client) -> None:
    create(c, pod_doc("lines", "for i in range(10): print(f'line {i}')"))
    wait_phase(c, "lines", "Succeeded")
    assert log(c, "lines") == "".join(f"line {i}\n" for i in range(10))
    assert log(c, "lines", tailLines="3") == "line 7\nline 8\nline 9\n"
    assert log(c, "lines", tailLines="0") == ""


def test_log_of_unknown_pod_is_404_and_previous_without_restart_is_400(c: httpx.Client) -> None:
    assert c.get(f"{PODS}/nobody/log").status_code == 404
    create(c, pod_doc("once", "print('x')"))
    wait_phase(c, "once", "Succeeded")
    r = c.get(f"{PODS}/once/log", params={"previous": "true"})
    assert r.status_code == 400
    assert "previous terminated container" in r.json()["message"]


def test_follow_streams_until_the_container_ends(c: httpx.Client) -> None:
    create(c, pod_doc("follow", """
        import time
        print("first", flush=True)
        time.sleep(1.5)
        print("second", flush=True)
    """))
    wait_for(lambda: phase(c, "follow") == "Running", "pod follow to run")
    received: list[tuple[float, str]] = []
    started = time.monotonic()
    with c.stream("GET", f"{PODS}/follow/log", params={"follow": "true"}) as r:
        assert r.status_code == 200
        for chunk in r.iter_text():
            received.append((time.monotonic() - started, chunk))
    text = "".join(chunk for _, chunk in received)
    assert text == "first\nsecond\n"
    # Streamed as it was written: "first" arrived well before the stream ended with the container.
    first_at = next(t for t, chunk in received if "first" in chunk)
    end_at = received[-1][0]
    assert end_at - first_at >= 1.0
    assert phase(c, "follow") == "Succeeded"


def test_follow_right_after_create_waits_for_the_container(c: httpx.Client) -> None:
    # `kaip apply -f pod.yaml && kaip logs -f pod`: the log is followed from the first line, not skipped.
    create(c, pod_doc("eager", "import time; time.sleep(0.3); print('one'); print('two')"))
    with c.stream("GET", f"{PODS}/eager/log", params={"follow": "true"}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert text == "one\ntwo\n"


def test_follow_of_a_finished_pod_returns_its_log(c: httpx.Client) -> None:
    create(c, pod_doc("finished", "print('all done')"))
    wait_phase(c, "finished", "Succeeded")
    with c.stream("GET", f"{PODS}/finished/log", params={"follow": "true"}) as r:
        assert "".join(r.iter_text()) == "all done\n"


# ---- restarts -----------------------------------------------------------------------------------------

COUNTING = """
    import pathlib, sys, time
    counter = pathlib.Path("attempts")
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    with open("times", "a") as fh:
        fh.write(f"{n} {time.time()}\\n")
    print(f"attempt {n}")
    sys.exit(0 if n >= 2 else 3)
"""


def test_failing_container_restarts_with_backoff_under_on_failure(c: httpx.Client, live: LiveServer) -> None:
    uid = create(c, pod_doc("flaky", COUNTING, restart="OnFailure"))["metadata"]["uid"]
    seen_counts: list[int] = []
    backoff_messages: set[str] = set()

    def finished() -> dict[str, Any] | None:
        pod = get_pod(c, "flaky") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if statuses:
            seen_counts.append(statuses[0]["restartCount"])
            waiting = statuses[0]["state"].get("waiting", {})
            if waiting.get("reason") == "CrashLoopBackOff":
                backoff_messages.add(waiting["message"])
                assert pod["status"]["phase"] == "Running"
                assert statuses[0]["lastState"]["terminated"]["exitCode"] == 3
        return pod if (pod.get("status") or {}).get("phase") == "Succeeded" else None

    pod = wait_for(finished, "pod flaky to succeed after two restarts", timeout=30)
    cs = main_status(pod)
    assert cs["restartCount"] == 2
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    # The second back-off lasts two seconds: long enough to be seen, and said so.
    assert "back-off 2s restarting failed container=main pod=flaky" in backoff_messages
    assert seen_counts == sorted(seen_counts) and seen_counts[-1] == 2
    # Each attempt ran exactly once, in its own log.
    workdir = next((live.server.home / "pods" / NS).glob("flaky-*")) / "workdir"
    times = [float(line.split()[1]) for line in (workdir / "times").read_text().splitlines()]
    assert len(times) == 3
    # The second back-off (2 s, measured from a finishedAt with whole-second resolution) is respected.
    assert times[2] - times[1] >= 1.0
    assert log(c, "flaky") == "attempt 2\n"
    assert log(c, "flaky", previous="true") == "attempt 1\n"
    assert {"Started", "BackOff", "Succeeded"} <= reasons(c, uid)


def test_never_policy_fails_with_the_exit_code(c: httpx.Client) -> None:
    uid = create(c, pod_doc("broken", "import sys; print('oops'); sys.exit(7)"))["metadata"]["uid"]
    pod = wait_phase(c, "broken", "Failed")
    cs = main_status(pod)
    assert cs["restartCount"] == 0
    assert cs["state"]["terminated"]["exitCode"] == 7
    assert cs["state"]["terminated"]["reason"] == "Error"
    assert log(c, "broken") == "oops\n"
    time.sleep(1.2)  # longer than the first back-off: a finished pod under Never is never started again
    assert main_status(get_pod(c, "broken") or {})["restartCount"] == 0
    evs = {e["reason"]: e for e in events_for(c, uid)}
    assert {"Started", "Failed"} <= set(evs)
    assert "BackOff" not in evs  # nothing is restarted under Never, so nothing is said to back off
    assert evs["Failed"]["type"] == "Warning"
    assert evs["Started"]["type"] == "Normal"
    assert evs["Started"]["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "broken",
                                                "namespace": NS, "uid": uid}


def test_command_not_found_fails_with_127(c: httpx.Client) -> None:
    doc = pod_doc("missing", "")
    doc["spec"]["containers"][0]["command"] = ["/no/such/program"]
    create(c, doc)
    pod = wait_phase(c, "missing", "Failed")
    assert main_status(pod)["state"]["terminated"]["exitCode"] == 127
    assert "/no/such/program" in log(c, "missing")


# ---- environment --------------------------------------------------------------------------------------

ENV_DUMP = "import json, os; print(json.dumps(dict(os.environ)))"


def test_env_values_and_references_reach_the_process(c: httpx.Client) -> None:
    create(c, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
               "data": {"mode": "fast"}}, f"/api/v1/namespaces/{NS}/configmaps")
    create(c, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
               "stringData": {"password": "s3cr3t: with spaces"}}, f"/api/v1/namespaces/{NS}/secrets")
    create(c, pod_doc("envy", ENV_DUMP, env=[
        {"name": "PLAIN", "value": "literal"},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope",
                                                                "optional": True}}},
    ]))
    wait_phase(c, "envy", "Succeeded")
    env = json.loads(log(c, "envy"))
    assert env["PLAIN"] == "literal"
    assert env["MODE"] == "fast"
    assert env["PASSWORD"] == "s3cr3t: with spaces"  # decoded from the secret's base64
    assert env["OPTIONAL"] == ""
    assert env["KAIP_POD_NAME"] == "envy"
    assert env["KAIP_POD_NAMESPACE"] == NS
    assert env["HF_HUB_OFFLINE"] == "1"


def test_server_secrets_do_not_leak_into_pods(c: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # Set in the server's own process environment after it started, as a deployment would have them.
    monkeypatch.setenv("KAIP_DATABASE_URL", "postgresql://kaip:hunter2@db.internal/kaip")
    monkeypatch.setenv("KAIP_TOKEN", "server-admin-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-aws-secret")
    monkeypatch.setenv("MY_API_KEY", "fake-api-key")
    create(c, pod_doc("nosy", ENV_DUMP))
    wait_phase(c, "nosy", "Succeeded")
    text = log(c, "nosy")
    env = json.loads(text)
    for name in ("KAIP_DATABASE_URL", "KAIP_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_KEY"):
        assert name not in env
    for value in ("hunter2", "server-admin-token", "fake-aws-secret", "fake-api-key"):
        assert value not in text
    assert "PATH" in env


def test_missing_key_leaves_the_pod_waiting_until_it_exists(c: httpx.Client) -> None:
    create(c, pod_doc("waiter", "import os; print(os.environ['FLAVOUR'])", env=[
        {"name": "FLAVOUR", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "flavour"}}}]))

    def config_error() -> dict[str, Any] | None:
        pod = get_pod(c, "waiter") or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = wait_for(config_error, "CreateContainerConfigError")
    assert "flavour" in waiting["message"] and "later" in waiting["message"]
    pod = get_pod(c, "waiter") or {}
    assert pod["status"]["phase"] == "Pending"
    assert "containerID" not in main_status(pod)
    # Once the key exists the pod starts on its own.
    create(c, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"},
               "data": {"flavour": "mint"}}, f"/api/v1/namespaces/{NS}/configmaps")
    wait_phase(c, "waiter", "Succeeded", timeout=20)
    assert log(c, "waiter") == "mint\n"


# ---- deletion -----------------------------------------------------------------------------------------

def test_deleting_a_running_pod_sends_sigterm(c: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    uid = create(c, pod_doc("graceful", f"""
        import os, signal, sys, time
        def stop(signum, frame):
            open({str(marker)!r}, "w").write(f"signal {{signum}}")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", os.getpid(), flush=True)
        time.sleep(60)
    """))["metadata"]["uid"]
    ready = wait_log(c, "graceful", "ready")
    pid = int(ready.split()[1])
    started = time.monotonic()
    r = c.delete(f"{PODS}/graceful")
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["deletionTimestamp"]
    wait_for(lambda: get_pod(c, "graceful") is None, "pod graceful to disappear", timeout=15)
    # Well inside the default 30 s grace period: the process stopped on SIGTERM, not on a later SIGKILL.
    assert time.monotonic() - started < 15
    assert marker.read_text() == f"signal {signal.SIGTERM.value}"
    wait_for(lambda: process_gone(pid), f"process {pid} to end", timeout=5)
    assert "Killing" in reasons(c, uid)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(c: httpx.Client, live: LiveServer) -> None:
    create(c, pod_doc("stubborn", """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", os.getpid(), flush=True)
        time.sleep(60)
    """, terminationGracePeriodSeconds=1))
    ready = wait_log(c, "stubborn", "ready")
    pid = int(ready.split()[1])
    shim = ProcessRef.parse(main_status(get_pod(c, "stubborn") or {})["containerID"])
    assert shim is not None
    started = time.monotonic()
    assert c.delete(f"{PODS}/stubborn").status_code == 200
    # Still there during the grace period: SIGTERM alone does not stop it.
    time.sleep(0.5)
    assert not process_gone(pid)
    assert get_pod(c, "stubborn") is not None
    wait_for(lambda: get_pod(c, "stubborn") is None, "pod stubborn to disappear", timeout=15)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 10
    wait_for(lambda: process_gone(pid), f"process {pid} to end", timeout=5)
    assert not live.server.executor.alive(shim)


def test_deleting_a_finished_pod_removes_it_at_once(c: httpx.Client) -> None:
    create(c, pod_doc("done", "print('bye')"))
    wait_phase(c, "done", "Succeeded")
    assert c.delete(f"{PODS}/done").status_code == 200
    wait_for(lambda: get_pod(c, "done") is None, "pod done to disappear", timeout=5)


# ---- deadline -----------------------------------------------------------------------------------------

def test_active_deadline_fails_the_pod(c: httpx.Client) -> None:
    started = time.monotonic()
    uid = create(c, pod_doc("slowpoke", "import os, time; print('ready', os.getpid(), flush=True); time.sleep(60)",
                            restart="OnFailure", activeDeadlineSeconds=1))["metadata"]["uid"]
    pid = int(wait_log(c, "slowpoke", "ready").split()[1])
    pod = wait_phase(c, "slowpoke", "Failed", timeout=15)
    # Not before its deadline, and not long after it either.
    assert 1.0 <= time.monotonic() - started < 8
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert "deadline" in pod["status"]["message"]
    cs = main_status(pod)
    assert "terminated" in cs["state"]
    assert cs["restartCount"] == 0  # OnFailure does not restart a container killed for the deadline
    wait_for(lambda: process_gone(pid), f"process {pid} to be killed", timeout=5)
    assert "Failed" in reasons(c, uid)
    table = c.get(f"{PODS}/slowpoke", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert "DeadlineExceeded" in table["rows"][0]["cells"]


# ---- events -------------------------------------------------------------------------------------------

def test_events_are_listable_and_pods_are_stored_with_status(c: httpx.Client, live: LiveServer) -> None:
    uid = create(c, pod_doc("eventful", "print('hi')"))["metadata"]["uid"]
    wait_phase(c, "eventful", "Succeeded")
    evs = wait_for(lambda: (lambda e: e if {"Started", "Succeeded"} <= {x["reason"] for x in e} else None)(
        events_for(c, uid)), "Started and Succeeded events")
    for e in evs:
        assert e["kind"] == "Event"
        assert e["count"] >= 1
        assert e["source"]["component"] == "kaip-pod"
        assert e["firstTimestamp"] and e["lastTimestamp"]
    # Also readable one by one, and in the store the API serves from.
    name = next(e["metadata"]["name"] for e in evs if e["reason"] == "Succeeded")
    r = c.get(f"/api/v1/namespaces/{NS}/events/{name}")
    assert r.status_code == 200 and r.json()["message"] == "Pod succeeded"
    stored = live.server.store.get(POD, NS, "eventful")
    assert stored["status"]["phase"] == "Succeeded"


# ---- service-account credentials ------------------------------------------------------------------------

WHOAMI = """
    import os, urllib.request, urllib.error
    if "KAIP_TOKEN" not in os.environ:
        print("no-token"); raise SystemExit(0)
    print("mlflow", os.environ["MLFLOW_TRACKING_URI"] == os.environ["KAIP_SERVER"],
          os.environ["MLFLOW_TRACKING_TOKEN"] == os.environ["KAIP_TOKEN"])
    for ns in ("default", "other"):
        req = urllib.request.Request(os.environ["KAIP_SERVER"] + f"/api/v1/namespaces/{ns}/configmaps",
                                     headers={"Authorization": "Bearer " + os.environ["KAIP_TOKEN"]})
        try:
            print(ns, urllib.request.urlopen(req).status)
        except urllib.error.HTTPError as err:
            print(ns, err.code)
"""


def test_pod_calls_the_api_as_its_service_account(server: LiveServer) -> None:
    """A pod's process gets a token for its service account: it may do what that account's RoleBindings allow
    (here: read in its namespace) and nothing else; opting out, or an account that does not exist, gets none."""
    with server.client() as c:
        assert c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": "other"}}).status_code == 201
        create(c, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}},
               f"/api/v1/namespaces/{NS}/serviceaccounts")
        create(c, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "runner-view"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                   "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": NS}]},
               f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings")
        create(c, pod_doc("as-runner", WHOAMI, serviceAccountName="runner"))
        create(c, pod_doc("opted-out", WHOAMI, serviceAccountName="runner", automountServiceAccountToken=False))
        create(c, pod_doc("no-account", WHOAMI, serviceAccountName="missing"))
        for name in ("as-runner", "opted-out", "no-account"):
            wait_phase(c, name, "Succeeded")
        assert log(c, "as-runner").split("\n")[:3] == ["mlflow True True", "default 200", "other 403"]
        assert log(c, "opted-out").strip() == "no-token"
        assert log(c, "no-account").strip() == "no-token"
