"""Cascading deletion by ownerReferences, and namespace deletion, through the live API."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.testing.live import LiveServer
from kaip.testing.waiting import wait_for


def cm_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def configmap(name: str, owner: dict[str, Any] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": owner["kind"], "name": owner["metadata"]["name"],
                                    "uid": owner["metadata"]["uid"]}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def create(c: httpx.Client, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    r = c.post(path, json=doc)
    assert r.status_code == 201, r.text
    return r.json()


def exists(c: httpx.Client, path: str) -> bool:
    r = c.get(path)
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


@pytest.fixture
def c(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
    for pid_file in (server.server.home / "pods").rglob("pid"):
        ref = server.server.executor.adopt(pid_file.parent)
        if ref is not None:
            server.server.executor.signal(ref, signal.SIGKILL)


# ---- garbage collection -------------------------------------------------------------------------------

def test_deleting_an_owner_deletes_its_dependents(c: httpx.Client) -> None:
    owner = create(c, cm_path("default"), configmap("owner", a="1"))
    create(c, cm_path("default"), configmap("child-a", owner))
    create(c, cm_path("default"), configmap("child-b", owner))
    bystander = create(c, cm_path("default"), configmap("bystander"))
    assert c.delete(cm_path("default", "owner")).status_code == 200
    wait_for(lambda: not exists(c, cm_path("default", "child-a")) and not exists(c, cm_path("default", "child-b")),
             "dependents of owner to be collected", timeout=10)
    # Objects without the owner are untouched.
    still = c.get(cm_path("default", "bystander")).json()
    assert still["metadata"]["uid"] == bystander["metadata"]["uid"]


def test_cascading_deletion_follows_a_chain_of_owners(c: httpx.Client) -> None:
    root = create(c, cm_path("default"), configmap("root"))
    middle = create(c, cm_path("default"), configmap("middle", root))
    create(c, cm_path("default"), configmap("leaf", middle))
    assert c.delete(cm_path("default", "root")).status_code == 200
    wait_for(lambda: not exists(c, cm_path("default", "middle")), "middle to be collected", timeout=10)
    wait_for(lambda: not exists(c, cm_path("default", "leaf")), "leaf to be collected", timeout=10)


def test_a_dependent_created_after_its_owner_was_deleted_is_collected(c: httpx.Client) -> None:
    # The race of a controller creating a dependent just as its owner goes: the dependent is not leaked.
    owner = create(c, cm_path("default"), configmap("short-lived"))
    assert c.delete(cm_path("default", "short-lived")).status_code == 200
    create(c, cm_path("default"), configmap("late-child", owner))
    wait_for(lambda: not exists(c, cm_path("default", "late-child")), "late-child to be collected", timeout=10)


def test_ownership_is_by_uid_not_by_name(c: httpx.Client) -> None:
    create(c, cm_path("default"), configmap("named-owner"))
    real = create(c, cm_path("default"), configmap("real-owner"))
    # Names the first object but carries the uid of the second: only the uid counts.
    doc = configmap("dependent", real)
    doc["metadata"]["ownerReferences"][0]["name"] = "named-owner"
    dependent = create(c, cm_path("default"), doc)
    assert c.delete(cm_path("default", "named-owner")).status_code == 200
    time.sleep(1.0)
    still = c.get(cm_path("default", "dependent"))
    assert still.status_code == 200
    assert still.json()["metadata"]["uid"] == dependent["metadata"]["uid"]
    assert c.delete(cm_path("default", "real-owner")).status_code == 200
    wait_for(lambda: not exists(c, cm_path("default", "dependent")), "dependent to be collected", timeout=10)


def test_dependents_in_another_kind_are_collected(c: httpx.Client) -> None:
    owner = create(c, cm_path("default"), configmap("owner-of-secret"))
    secret = {"apiVersion": "v1", "kind": "Secret", "stringData": {"k": "v"},
              "metadata": {"name": "owned-secret", "ownerReferences": [
                  {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner-of-secret",
                   "uid": owner["metadata"]["uid"], "controller": True}]}}
    create(c, "/api/v1/namespaces/default/secrets", secret)
    assert c.delete(cm_path("default", "owner-of-secret")).status_code == 200
    wait_for(lambda: not exists(c, "/api/v1/namespaces/default/secrets/owned-secret"), "secret to be collected",
             timeout=10)


# ---- namespaces ---------------------------------------------------------------------------------------

def namespace(c: httpx.Client, name: str) -> dict[str, Any]:
    return create(c, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def test_new_namespace_becomes_active(c: httpx.Client) -> None:
    created = namespace(c, "fresh")
    assert created["metadata"]["finalizers"] == ["kaip.dev/namespace"]
    wait_for(lambda: c.get("/api/v1/namespaces/fresh").json().get("status", {}).get("phase") == "Active",
             "namespace fresh to be Active")


def test_deleting_a_namespace_empties_it_then_removes_it(c: httpx.Client) -> None:
    namespace(c, "doomed")
    namespace(c, "survivor")
    create(c, cm_path("doomed"), configmap("settings", a="1"))
    create(c, "/api/v1/namespaces/doomed/secrets",
           {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"p": "x"}})
    create(c, cm_path("survivor"), configmap("settings", a="2"))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
           "spec": {"containers": [{"name": "main", "command": [
               "python", "-c", "import os, time; print('ready', os.getpid(), flush=True); time.sleep(60)"]}]}}
    create(c, "/api/v1/namespaces/doomed/pods", pod)

    def pid() -> int | None:
        r = c.get("/api/v1/namespaces/doomed/pods/sleeper/log")
        return int(r.text.split()[1]) if r.status_code == 200 and r.text.startswith("ready") else None

    sleeper_pid = wait_for(pid, "the pod in doomed to run")

    r = c.delete("/api/v1/namespaces/doomed")
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["deletionTimestamp"]
    phases: set[str] = set()

    def gone() -> bool:
        r = c.get("/api/v1/namespaces/doomed")
        if r.status_code == 200:
            phases.add(r.json().get("status", {}).get("phase"))
            return False
        return r.status_code == 404

    wait_for(gone, "namespace doomed to disappear", timeout=20)
    assert "Terminating" in phases
    # Its contents went with it; the running process was stopped; other namespaces are untouched.
    assert process_gone(sleeper_pid) or wait_for(lambda: process_gone(sleeper_pid), "sleeper to end", timeout=5)
    for kind in ("configmaps", "secrets", "pods"):
        listed = c.get(f"/api/v1/namespaces/doomed/{kind}").json()["items"]
        assert listed == [], kind
    assert c.get(cm_path("survivor", "settings")).json()["data"] == {"a": "2"}


def test_terminating_namespace_refuses_new_content(c: httpx.Client) -> None:
    namespace(c, "closing")
    # A pod that takes its time to stop keeps the namespace Terminating long enough to look at it.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lingering"},
           "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "main", "command": [
               "python", "-c",
               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
               "time.sleep(60)"]}]}}
    create(c, "/api/v1/namespaces/closing/pods", pod)
    wait_for(lambda: c.get("/api/v1/namespaces/closing/pods/lingering/log").text.startswith("ready"),
             "the pod in closing to run")
    assert c.delete("/api/v1/namespaces/closing").status_code == 200
    wait_for(lambda: c.get("/api/v1/namespaces/closing").json().get("status", {}).get("phase") == "Terminating",
             "namespace closing to be Terminating")
    r = c.post(cm_path("closing"), json=configmap("late"))
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == "Forbidden"
    assert "being terminated" in r.json()["message"]
    wait_for(lambda: c.get("/api/v1/namespaces/closing").status_code == 404, "namespace closing to go", timeout=20)
    assert c.post(cm_path("closing"), json=configmap("later")).status_code == 404


def test_a_namespace_can_be_recreated_after_deletion(c: httpx.Client) -> None:
    first = namespace(c, "phoenix")
    create(c, cm_path("phoenix"), configmap("old"))
    assert c.delete("/api/v1/namespaces/phoenix").status_code == 200
    wait_for(lambda: c.get("/api/v1/namespaces/phoenix").status_code == 404, "namespace phoenix to go", timeout=20)
    second = namespace(c, "phoenix")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert c.get(cm_path("phoenix")).json()["items"] == []
