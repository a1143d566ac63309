"""Restart safety: a `kaip up` killed with SIGKILL and started again on the same home loses nothing, adopts the
processes it started, and lets watches resume exactly where they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.api.core import CONFIGMAP, NAMESPACE, POD
from kaip.api.validation import validate_document
from kaip.controllers.pod import PodReconciler
from kaip.controlplane.events import EventRecorder
from kaip.executor.local import LocalExecutor
from kaip.store import Store
from kaip.testing.live import free_port, live_server
from kaip.testing.waiting import wait_for

KAIP = Path(sys.executable).with_name("kaip")




class ServerProcess:
    """`kaip up` as a separate process on a fixed port and home, started and SIGKILLed at will."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("KAIP_HOME", "KAIP_SERVER", "KAIP_TOKEN", "KAIP_DATABASE_URL")}
        env["KAIP_LOG_LEVEL"] = "WARNING"
        return env

    def spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        out = open(self.home.parent / f"server-{self.port}-{self.starts}.log", "wb")
        return subprocess.Popen([str(KAIP), "up", "--port", str(self.port), "--home", str(self.home)],
                                stdout=out, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = self.spawn()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"kaip up exited with {self.proc.returncode}: {self.output()}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(ready, "kaip up to be ready", timeout=30)

    def output(self) -> str:
        return (self.home.parent / f"server-{self.port}-{self.starts}.log").read_text(errors="replace")

    @property
    def token(self) -> str:
        return json.loads((self.home / "credentials").read_text())["token"]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        executor = LocalExecutor(self.home / "pods")
        for pid_file in (self.home / "pods").rglob("pid"):
            ref = executor.adopt(pid_file.parent)
            if ref is not None:
                executor.signal(ref, signal.SIGKILL)


@pytest.fixture
def kaip_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "home", free_port())
    try:
        yield server
    finally:
        server.cleanup()


def apply(c: httpx.Client, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    r = c.post(path, json=doc)
    assert r.status_code == 201, r.text
    return r.json()


# ---- 1: objects, status, events and processes survive a SIGKILL ---------------------------------------

@pytest.mark.slow
def test_state_survives_sigkill_and_running_process_is_adopted(kaip_server: ServerProcess) -> None:
    kaip_server.start()
    with kaip_server.client() as c:
        apply(c, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
        apply(c, "/api/v1/namespaces/team-a/configmaps",
              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": {"app": "x"}},
               "data": {"a": "1"}})
        r = c.patch("/api/v1/namespaces/team-a/configmaps/settings", json={"data": {"b": "2"}},
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
        apply(c, "/api/v1/namespaces/team-a/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quick"},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "command": ["python", "-c", "print(1)"]}]}})
        apply(c, "/api/v1/namespaces/team-a/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "command": [
                "python", "-c", "import os, time; print('start', os.getpid(), flush=True); time.sleep(4); "
                                "print('finished', flush=True)"]}]}})
        trigger = kaip_server.home.parent / "let-crasher-exit"
        apply(c, "/api/v1/namespaces/team-a/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "command": [
                "python", "-c", f"import os, sys, time; print('start', flush=True)\n"
                                f"while not os.path.exists({str(trigger)!r}): time.sleep(0.05)\nsys.exit(3)"]}]}})
        wait_for(lambda: "start" in c.get("/api/v1/namespaces/team-a/pods/crasher/log").text, "crasher to start")
        wait_for(lambda: c.get("/api/v1/namespaces/team-a/pods/quick").json().get("status", {}).get("phase")
                 == "Succeeded", "pod quick to succeed")
        wait_for(lambda: "start" in c.get("/api/v1/namespaces/team-a/pods/sleeper/log").text, "sleeper to start")
        wait_for(lambda: {"Started", "Succeeded"} <= {e["reason"] for e in c.get(
            "/api/v1/namespaces/team-a/events").json()["items"]}, "events of pod quick")
        before = {kind: c.get(f"/api/v1/namespaces/team-a/{kind}").json()["items"]
                  for kind in ("configmaps", "pods", "events")}
        namespaces_before = c.get("/api/v1/namespaces").json()["items"]
        sleeper = next(p for p in before["pods"] if p["metadata"]["name"] == "sleeper")
        assert sleeper["status"]["phase"] == "Running"
        container_id = sleeper["status"]["containerStatuses"][0]["containerID"]

    kaip_server.kill9()
    # While no server runs, the crasher ends: only its shim's exit file records how.
    trigger.touch()
    crasher_dir = next((kaip_server.home / "pods" / "team-a").glob("crasher-*")) / "main" / "0"
    wait_for(lambda: (crasher_dir / "exit").exists(), "the crasher to end while the server is down")
    kaip_server.start()

    with kaip_server.client() as c:
        after = {kind: c.get(f"/api/v1/namespaces/team-a/{kind}").json()["items"]
                 for kind in ("configmaps", "pods", "events")}
        # Objects are exactly as they were (configmaps byte for byte, including resourceVersion).
        assert after["configmaps"] == before["configmaps"]
        assert after["configmaps"][0]["data"] == {"a": "1", "b": "2"}
        ns_after = {n["metadata"]["name"]: n for n in c.get("/api/v1/namespaces").json()["items"]}
        for ns in namespaces_before:
            assert ns_after[ns["metadata"]["name"]]["metadata"]["uid"] == ns["metadata"]["uid"]
            assert ns_after[ns["metadata"]["name"]]["status"] == ns["status"]
        pods_after = {p["metadata"]["name"]: p for p in after["pods"]}
        quick = next(p for p in before["pods"] if p["metadata"]["name"] == "quick")
        assert pods_after["quick"] == quick  # a finished pod is left exactly as it was: not run again
        # The crasher's end, while no server watched it, is learned from its exit file: not "lost".
        crasher = wait_for(lambda: (lambda p: p if p.get("status", {}).get("phase") == "Failed" else None)(
            c.get("/api/v1/namespaces/team-a/pods/crasher").json()), "the crasher to be Failed")
        assert crasher["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
        assert crasher["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"
        assert crasher["status"]["containerStatuses"][0]["restartCount"] == 0
        assert pods_after["sleeper"]["spec"] == sleeper["spec"]
        assert pods_after["sleeper"]["metadata"]["uid"] == sleeper["metadata"]["uid"]
        assert pods_after["sleeper"]["status"]["startTime"] == sleeper["status"]["startTime"]
        assert pods_after["sleeper"]["status"]["containerStatuses"][0]["containerID"] == container_id
        # Every recorded event is still there.
        events_after = {e["metadata"]["uid"]: e for e in after["events"]}
        for ev in before["events"]:
            assert events_after[ev["metadata"]["uid"]]["reason"] == ev["reason"]

        # The process that ran through the restart is adopted, not started again, and its end is observed.
        def succeeded() -> dict[str, Any] | None:
            pod = c.get("/api/v1/namespaces/team-a/pods/sleeper").json()
            return pod if pod.get("status", {}).get("phase") == "Succeeded" else None

        pod = wait_for(succeeded, "the adopted sleeper to succeed", timeout=20)
        cs = pod["status"]["containerStatuses"][0]
        assert cs["containerID"] == container_id
        assert cs["restartCount"] == 0
        assert cs["state"]["terminated"]["exitCode"] == 0
        text = c.get("/api/v1/namespaces/team-a/pods/sleeper/log").text
        assert text.count("start ") == 1, text
        assert text.endswith("finished\n")
        sleeper_events = [e for e in c.get("/api/v1/namespaces/team-a/events").json()["items"]
                          if e["involvedObject"]["name"] == "sleeper"]
        started = [e for e in sleeper_events if e["reason"] == "Started"]
        assert len(started) == 1 and started[0]["count"] == 1
        assert "Succeeded" in {e["reason"] for e in sleeper_events}


# ---- 2: a watch resumes across a restart --------------------------------------------------------------

def _watch(url: str, token: str, rv: str, sink: list[dict[str, Any]], timeout: int | None = None) -> None:
    params = {"watch": "true", "resourceVersion": rv}
    if timeout:
        params["timeoutSeconds"] = str(timeout)
    try:
        with httpx.stream("GET", f"{url}/api/v1/namespaces/default/configmaps", params=params,
                          headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(10, read=None)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.strip():
                    sink.append(json.loads(line))
    except httpx.HTTPError:
        pass  # the server was killed under the stream


@pytest.mark.slow
def test_watch_resumes_across_a_restart_seeing_each_change_once(kaip_server: ServerProcess) -> None:
    kaip_server.start()
    cms = "/api/v1/namespaces/default/configmaps"
    expected: list[tuple[str, str, str]] = []  # (type, name, resourceVersion) of every write, in order

    def write(c: httpx.Client, method: str, name: str, data: dict[str, str] | None = None) -> None:
        if method == "create":
            obj = apply(c, cms, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
            expected.append(("ADDED", name, obj["metadata"]["resourceVersion"]))
        elif method == "update":
            r = c.patch(f"{cms}/{name}", json={"data": data},
                        headers={"Content-Type": "application/merge-patch+json"})
            assert r.status_code == 200, r.text
            expected.append(("MODIFIED", name, r.json()["metadata"]["resourceVersion"]))
        else:
            r = c.delete(f"{cms}/{name}")
            assert r.status_code == 200, r.text
            expected.append(("DELETED", name, r.json()["metadata"]["resourceVersion"]))

    with kaip_server.client() as c:
        write(c, "create", "existing", {"v": "0"})
        listed = c.get(cms).json()
        rv = listed["metadata"]["resourceVersion"]
        assert [o["metadata"]["name"] for o in listed["items"]] == ["existing"]
        del expected[:]  # the list covered it
        first: list[dict[str, Any]] = []
        watcher = threading.Thread(target=_watch, args=(kaip_server.url, kaip_server.token, rv, first), daemon=True)
        watcher.start()  # from `rv`: it replays whatever is written before it connects
        write(c, "create", "a", {"v": "1"})
        write(c, "update", "existing", {"v": "2"})
        write(c, "create", "b", {"v": "1"})
        wait_for(lambda: len(first) >= 1, "the first watch to see a change")
        write(c, "update", "a", {"v": "3"})
        write(c, "delete", "b")
    # Killed right after the last writes: the first watch may or may not have delivered them.
    kaip_server.kill9()
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    kaip_server.start()
    with kaip_server.client() as c:
        write(c, "create", "c", {"v": "1"})
        write(c, "delete", "existing")
        write(c, "update", "c", {"v": "2"})
    last_seen = first[-1]["object"]["metadata"]["resourceVersion"]
    second: list[dict[str, Any]] = []
    _watch(kaip_server.url, kaip_server.token, last_seen, second, timeout=2)
    seen = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
            for e in first + second if e["type"] != "BOOKMARK"]
    assert seen == expected
    # The objects a watcher reconstructs match what the server lists.
    with kaip_server.client() as c:
        now = {o["metadata"]["name"]: o["data"] for o in c.get(cms).json()["items"]}
    assert now == {"a": {"v": "3"}, "c": {"v": "2"}}


# ---- 3: one server per home ---------------------------------------------------------------------------

@pytest.mark.slow
def test_second_server_on_the_same_home_refuses_to_start(kaip_server: ServerProcess) -> None:
    kaip_server.start()
    assert kaip_server.proc is not None
    other = subprocess.run([str(KAIP), "up", "--port", str(free_port()), "--home", str(kaip_server.home)],
                           capture_output=True, text=True, timeout=60, env=kaip_server._env())
    assert other.returncode != 0
    message = other.stderr.strip()
    assert "another Kaip server" in message
    assert f"pid {kaip_server.proc.pid}" in message
    assert str(kaip_server.home) in message
    assert "Traceback" not in other.stderr
    # The first server is unharmed.
    assert kaip_server.proc.poll() is None
    assert httpx.get(f"{kaip_server.url}/readyz").status_code == 200


# ---- 4: no committed write is lost ---------------------------------------------------------------------

@pytest.mark.slow
def test_every_acknowledged_create_survives_sigkill(kaip_server: ServerProcess) -> None:
    kaip_server.start()
    acknowledged: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def create(i: int) -> None:
        if stop.is_set():
            return
        try:
            with kaip_server.client() as c:
                r = c.post("/api/v1/namespaces/default/configmaps",
                           json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i}"},
                                 "data": {"i": str(i)}})
        except httpx.HTTPError:
            return  # in flight when the server died: either outcome is allowed
        if r.status_code == 201:
            with lock:
                acknowledged[f"cm-{i}"] = r.json()["metadata"]["uid"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(create, i) for i in range(400)]
        wait_for(lambda: len(acknowledged) >= 60, "60 creates to be acknowledged")
        kaip_server.kill9()  # with creates still in flight
        stop.set()
        for f in futures:
            f.result()
    assert len(acknowledged) >= 60
    kaip_server.start()
    with kaip_server.client() as c:
        items = c.get("/api/v1/namespaces/default/configmaps").json()["items"]
    stored = {o["metadata"]["name"]: o for o in items}
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"acknowledged but lost: {missing}"
    for name, uid in acknowledged.items():
        assert stored[name]["metadata"]["uid"] == uid
        assert stored[name]["data"] == {"i": name.removeprefix("cm-")}
    # Resource versions stay unique and keep growing after the restart.
    rvs = [int(o["metadata"]["resourceVersion"]) for o in items]
    assert len(set(rvs)) == len(rvs)
    with kaip_server.client() as c:
        after = apply(c, "/api/v1/namespaces/default/configmaps",
                      {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after-restart"}})
    assert int(after["metadata"]["resourceVersion"]) > max(rvs)


# ---- the crash window between starting a process and recording it ------------------------------------

def test_a_process_started_but_not_recorded_is_adopted_not_started_twice(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'kaip.db'}")
    executor = LocalExecutor(tmp_path / "pods")
    try:
        store.create(NAMESPACE, validate_document(
            NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}, namespace=None))
        pod = store.create(POD, validate_document(POD, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "once"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "command": [
                "python", "-c", "import time; print('start', flush=True); time.sleep(0.5)"]}]}},
            namespace="default"))
        # A server started the process and died before writing the pod's status.
        meta = pod["metadata"]
        adir = executor.attempt_dir("default", "once", meta["uid"], "main", 0)
        ref = executor.start(adir, ["python", "-c", "import time; print('start', flush=True); time.sleep(0.5)"],
                             {}, tmp_path / "work")
        # The restarted server's reconciler picks the pod up from stored state.
        reconciler = PodReconciler(store, executor, EventRecorder(store, "test"))

        def done() -> dict[str, Any] | None:
            reconciler.reconcile(("default", "once"))
            obj = store.get(POD, "default", "once")
            return obj if obj.get("status", {}).get("phase") == "Succeeded" else None

        obj = wait_for(done, "pod once to succeed", timeout=15, interval=0.1)
        cs = obj["status"]["containerStatuses"][0]
        assert cs["containerID"] == ref.container_id()
        assert cs["restartCount"] == 0
        assert (adir / "log").read_text() == "start\n"
        assert list(adir.parent.iterdir()) == [adir]  # no second attempt directory
    finally:
        executor.shutdown()
        store.close()


# ---- work left half-done by a killed server is finished on start --------------------------------------

def test_deletions_interrupted_by_a_crash_are_finished_on_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = Store(f"sqlite:///{home / 'kaip.db'}")

    def make(info: Any, doc: dict[str, Any], ns: str | None) -> dict[str, Any]:
        return store.create(info, validate_document(info, doc, namespace=ns))

    try:
        for name in ("default", "going"):
            make(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, None)
        owner = make(CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, "default")
        make(CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "dependent", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                                      "uid": owner["metadata"]["uid"]}]}}, "default")
        make(CONFIGMAP, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "inside"}}, "going")
        # What a server killed right after these writes leaves behind: an owner gone with its dependent still
        # there, and a namespace marked for deletion but not yet emptied.
        store.delete(CONFIGMAP, "default", "owner")
        store.delete(NAMESPACE, None, "going")
        assert store.try_get(CONFIGMAP, "default", "dependent") is not None
    finally:
        store.close()
    with live_server(home) as live, live.client() as c:
        wait_for(lambda: c.get("/api/v1/namespaces/default/configmaps/dependent").status_code == 404,
                 "the orphaned dependent to be collected", timeout=10)
        wait_for(lambda: c.get("/api/v1/namespaces/going").status_code == 404,
                 "the half-deleted namespace to be finished", timeout=10)
