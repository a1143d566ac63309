"""DeleteOptions.propagationPolicy: Background (default), Foreground and Orphan, as Kubernetes does them."""

from __future__ import annotations

import time
from typing import Any

import httpx

from kaip.testing.live import LiveServer

CM = "/api/v1/namespaces/default/configmaps"


def _cm(c: httpx.Client, name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
                                    "uid": owner["metadata"]["uid"]}]
    r = c.post(CM, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    assert r.status_code == 201, r.text
    return r.json()


def _gone(c: httpx.Client, name: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get(f"{CM}/{name}").status_code == 404:
            return True
        time.sleep(0.05)
    return False


def test_orphan_keeps_dependents_and_drops_their_reference(server: LiveServer) -> None:
    with server.client() as c:
        owner = _cm(c, "owner")
        _cm(c, "child", owner)
        r = c.request("DELETE", f"{CM}/owner", json={"propagationPolicy": "Orphan"})
        assert r.status_code == 200
        assert _gone(c, "owner")
        time.sleep(0.5)  # give the collector time to act, were it going to
        child = c.get(f"{CM}/child")
        assert child.status_code == 200
        assert "ownerReferences" not in child.json()["metadata"]


def test_foreground_waits_for_dependents_then_goes(server: LiveServer) -> None:
    with server.client() as c:
        owner = _cm(c, "fg-owner")
        child = _cm(c, "fg-child", owner)
        _cm(c, "fg-grandchild", child)
        r = c.delete(f"{CM}/fg-owner", params={"propagationPolicy": "Foreground"})
        assert r.status_code == 200
        meta = r.json()["metadata"]
        assert meta["deletionTimestamp"] and "foregroundDeletion" in meta["finalizers"]
        assert _gone(c, "fg-owner")
        assert c.get(f"{CM}/fg-child").status_code == 404
        assert _gone(c, "fg-grandchild")


def test_background_is_the_default_and_unknown_policies_are_refused(server: LiveServer) -> None:
    with server.client() as c:
        owner = _cm(c, "bg-owner")
        _cm(c, "bg-child", owner)
        bad = c.delete(f"{CM}/bg-owner", params={"propagationPolicy": "Sometimes"})
        assert bad.status_code == 422
        assert bad.json()["details"]["causes"][0]["field"] == "propagationPolicy"
        assert c.get(f"{CM}/bg-owner").status_code == 200  # a refused delete deletes nothing
        assert c.delete(f"{CM}/bg-owner").status_code == 200
        assert _gone(c, "bg-owner") and _gone(c, "bg-child")


def test_a_replace_that_omits_finalizers_keeps_the_servers_own(server: LiveServer) -> None:
    """A PUT without metadata.finalizers must not strip the pod finalizer (the process would be left running)."""
    with server.client() as c:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "keep", "namespace": "default"},
               "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "command": ["true"]}]}}
        created = c.post("/api/v1/namespaces/default/pods", json=pod).json()
        assert created["metadata"]["finalizers"] == ["kaip.dev/pod-process"]
        pod["metadata"]["labels"] = {"x": "y"}
        replaced = c.put("/api/v1/namespaces/default/pods/keep", json=pod)
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["metadata"]["finalizers"] == ["kaip.dev/pod-process"]
        # Saying so explicitly still removes them, as Kubernetes allows.
        pod["metadata"]["finalizers"] = []
        assert "finalizers" not in c.put("/api/v1/namespaces/default/pods/keep", json=pod).json()["metadata"]
