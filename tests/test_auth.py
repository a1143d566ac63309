"""Authentication and authorization over HTTP: bearer tokens (stored hashed), ServiceAccount tokens issued by
TokenRequest, and roles bound per namespace, so that a team sees and changes only its own namespaces."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from kaip.server.auth import hash_token
from kaip.store.tables import tokens
from kaip.testing.live import LiveServer

Obj = dict[str, Any]
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def ns_path(ns: str, plural: str = "configmaps") -> str:
    return f"/api/v1/namespaces/{ns}/{plural}"


def cm(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def pod(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "command": ["true"]}]}}


def binding(name: str, role: str, sa: str, namespace: str) -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}


def ok(r: httpx.Response, code: int = 200) -> Obj:
    assert r.status_code == code, r.text
    return r.json()


def denied(r: httpx.Response, code: int = 403) -> Obj:
    assert r.status_code == code, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["code"] == code
    assert body["reason"] == {401: "Unauthorized", 403: "Forbidden"}[code]
    return body


def names(r: httpx.Response) -> set[str]:
    return {o["metadata"]["name"] for o in ok(r)["items"]}


def issue_token(admin: httpx.Client, namespace: str, sa: str, role: str | None) -> str:
    """A ServiceAccount, optionally bound to a ClusterRole in its namespace, and a token for it (as kubectl
    create serviceaccount / create rolebinding / create token do)."""
    ok(admin.post(ns_path(namespace, "serviceaccounts"),
                  json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}), 201)
    if role:
        ok(admin.post(f"{RBAC}/namespaces/{namespace}/rolebindings", json=binding(f"{sa}-{role}", role, sa, namespace)),
           201)
    req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    body = ok(admin.post(f"{ns_path(namespace, 'serviceaccounts')}/{sa}/token", json=req), 201)
    assert body["kind"] == "TokenRequest" and body["metadata"] == {"name": sa, "namespace": namespace}
    token = body["status"]["token"]
    assert isinstance(token, str) and len(token) >= 32
    return token


@pytest.fixture
def admin(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        for ns in ("team-a", "team-b"):
            ok(c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
               201)
            ok(c.post(ns_path(ns), json=cm(f"{ns}-config")), 201)
        yield c


@pytest.fixture
def editor(server: LiveServer, admin: httpx.Client) -> Iterator[httpx.Client]:
    """A client whose token has the `edit` role in team-a only."""
    with server.client(issue_token(admin, "team-a", "deployer", "edit")) as c:
        yield c


# ---- authentication ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-real-token", "Basic YWRtaW46YWRtaW4=",
                                    "bearer {admin}", "{admin}"])
def test_requests_without_a_valid_token_are_401(server: LiveServer, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header.format(admin=server.token)}
    with httpx.Client(base_url=server.url, headers=headers) as c:
        for r in (c.get("/api/v1/namespaces"), c.get(ns_path("default")), c.post(ns_path("default"), json=cm("x")),
                  c.get(ns_path("default"), params={"watch": "true"})):
            body = denied(r, 401)
            assert body["status"] == "Failure"
    with server.client() as c:
        assert names(c.get(ns_path("default"))) == set()


def test_the_admin_token_works(server: LiveServer) -> None:
    with server.client() as c:
        assert "default" in names(c.get("/api/v1/namespaces"))


def test_expired_token_is_401(server: LiveServer) -> None:
    expired, fresh = "kaip_expired-token-for-test", "kaip_fresh-token-for-test"
    server.server.store.add_token(hash_token(expired), "admin", "", expires_at=time.time() - 1)
    server.server.store.add_token(hash_token(fresh), "admin", "", expires_at=time.time() + 3600)
    with server.client(expired) as c:
        denied(c.get("/api/v1/namespaces"), 401)
    with server.client(fresh) as c:
        ok(c.get("/api/v1/namespaces"))


def test_a_token_that_expires_stops_working(server: LiveServer) -> None:
    token = "kaip_short-lived-token-for-test"
    expires = time.time() + 1.5
    server.server.store.add_token(hash_token(token), "admin", "", expires_at=expires)
    with server.client(token) as c:
        ok(c.get("/api/v1/namespaces"))  # looked up and cached while valid...
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        denied(c.get("/api/v1/namespaces"), 401)  # ...and refused once expired, cache or not


def test_token_request_checks(server: LiveServer, admin: httpx.Client) -> None:
    ok(admin.post(ns_path("team-a", "serviceaccounts"),
                  json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot"}}), 201)
    url = f"{ns_path('team-a', 'serviceaccounts')}/bot/token"
    r = admin.post(url, json={"spec": {"expirationSeconds": 60}})
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "spec.expirationSeconds"
    body = ok(admin.post(url, json={"spec": {"expirationSeconds": 3600}}), 201)
    assert body["status"]["expirationTimestamp"].endswith("Z")
    assert admin.post(f"{ns_path('team-a', 'serviceaccounts')}/ghost/token", json={}).status_code == 404
    assert admin.post(url, content=b"[1]", headers={"content-type": "application/json"}).status_code == 400


def test_deleting_the_service_account_revokes_its_tokens(server: LiveServer, admin: httpx.Client) -> None:
    token = issue_token(admin, "team-a", "temp", "edit")
    with server.client(token) as c:
        ok(c.get(ns_path("team-a")))
        ok(admin.delete(f"{ns_path('team-a', 'serviceaccounts')}/temp"))
        denied(c.get(ns_path("team-a")), 401)


# ---- a team's view ----------------------------------------------------------------------------------------


def test_edit_token_reads_and_writes_its_namespace_only(editor: httpx.Client) -> None:
    assert names(editor.get(ns_path("team-a"))) == {"team-a-config"}
    ok(editor.get(f"{ns_path('team-a')}/team-a-config"))
    ok(editor.post(ns_path("team-a"), json=cm("mine")), 201)
    ok(editor.patch(f"{ns_path('team-a')}/mine", json={"data": {"k": "2"}},
                    headers={"content-type": "application/merge-patch+json"}))
    ok(editor.delete(f"{ns_path('team-a')}/mine"))

    body = denied(editor.get(f"{ns_path('team-b')}/team-b-config"))
    assert "system:serviceaccount:team-a:deployer" in body["message"]
    denied(editor.get(ns_path("team-b")))
    denied(editor.post(ns_path("team-b"), json=cm("intruder")))
    denied(editor.put(f"{ns_path('team-b')}/team-b-config", json=cm("team-b-config")))
    denied(editor.delete(f"{ns_path('team-b')}/team-b-config"))
    denied(editor.get(ns_path("team-b"), params={"watch": "true"}))
    denied(editor.get("/api/v1/namespaces/team-b"))
    denied(editor.get("/api/v1/namespaces/default"))


def test_nothing_is_written_by_refused_requests(editor: httpx.Client, admin: httpx.Client) -> None:
    denied(editor.post(ns_path("team-b"), json=cm("intruder")))
    denied(editor.delete(f"{ns_path('team-b')}/team-b-config"))
    assert names(admin.get(ns_path("team-b"))) == {"team-b-config"}


def test_lists_across_namespaces_show_only_the_teams(server: LiveServer, admin: httpx.Client,
                                                      editor: httpx.Client) -> None:
    ok(admin.post(ns_path("team-a", "pods"), json=pod("a-pod")), 201)
    ok(admin.post(ns_path("team-b", "pods"), json=pod("b-pod")), 201)
    assert names(admin.get("/api/v1/pods")) == {"a-pod", "b-pod"}
    pods = ok(editor.get("/api/v1/pods"))["items"]
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods] == [("team-a", "a-pod")]
    assert names(editor.get("/api/v1/configmaps")) == {"team-a-config"}
    assert names(editor.get("/api/v1/namespaces")) == {"team-a"}
    ok(editor.get("/api/v1/namespaces/team-a"))
    # Writing across namespaces is still refused.
    denied(editor.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": "mine"}}))


def test_a_watch_across_namespaces_delivers_only_the_teams_events(server: LiveServer, admin: httpx.Client,
                                                                   editor: httpx.Client) -> None:
    rv = ok(admin.get("/api/v1/configmaps"))["metadata"]["resourceVersion"]
    events: list[Obj] = []
    opened = threading.Event()
    sock: list[Any] = []

    def watch() -> None:
        try:
            with editor.stream("GET", "/api/v1/configmaps",
                               params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "15"}) as r:
                assert r.status_code == 200
                sock.append(r.extensions["network_stream"].get_extra_info("socket"))
                opened.set()
                for line in r.iter_lines():
                    if line.strip():
                        events.append(json.loads(line))
        except httpx.HTTPError:
            pass
        finally:
            opened.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    assert opened.wait(10)
    for i in range(3):
        ok(admin.post(ns_path("team-b"), json=cm(f"b{i}")), 201)
        ok(admin.post(ns_path("team-a"), json=cm(f"a{i}")), 201)
    ok(admin.delete(f"{ns_path('team-b')}/b0"))
    ok(admin.delete(f"{ns_path('team-a')}/a0"))
    deadline = time.monotonic() + 10
    while len(events) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    sock[0].shutdown(socket.SHUT_RDWR)
    t.join(timeout=5)
    assert [(e["type"], e["object"]["metadata"]["namespace"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "team-a", "a0"), ("ADDED", "team-a", "a1"), ("ADDED", "team-a", "a2"),
        ("DELETED", "team-a", "a0")]


# ---- roles ------------------------------------------------------------------------------------------------


def test_view_token_reads_but_cannot_write(server: LiveServer, admin: httpx.Client) -> None:
    with server.client(issue_token(admin, "team-a", "reader", "view")) as viewer:
        assert names(viewer.get(ns_path("team-a"))) == {"team-a-config"}
        ok(viewer.get(f"{ns_path('team-a')}/team-a-config"))
        denied(viewer.post(ns_path("team-a"), json=cm("nope")))
        denied(viewer.put(f"{ns_path('team-a')}/team-a-config", json=cm("team-a-config")))
        denied(viewer.patch(f"{ns_path('team-a')}/team-a-config", json={"data": {}},
                            headers={"content-type": "application/merge-patch+json"}))
        denied(viewer.patch(f"{ns_path('team-a')}/applied", content="apiVersion: v1\nkind: ConfigMap\n",
                            headers={"content-type": "application/apply-patch+yaml"}))
        denied(viewer.delete(f"{ns_path('team-a')}/team-a-config"))
        denied(viewer.get(ns_path("team-b")))
    assert names(admin.get(ns_path("team-a"))) == {"team-a-config"}


def test_view_token_cannot_read_secrets_but_edit_can(server: LiveServer, admin: httpx.Client,
                                                     editor: httpx.Client) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "pw"}}
    ok(admin.post(ns_path("team-a", "secrets"), json=secret), 201)
    with server.client(issue_token(admin, "team-a", "reader", "view")) as viewer:
        denied(viewer.get(f"{ns_path('team-a', 'secrets')}/db"))
        denied(viewer.get(ns_path("team-a", "secrets")))
        denied(viewer.get(ns_path("team-a", "secrets"), params={"watch": "true"}))
        denied(viewer.get("/api/v1/secrets"))
        ok(viewer.get(ns_path("team-a")))  # other kinds stay readable
    assert ok(editor.get(f"{ns_path('team-a', 'secrets')}/db"))["data"] == {"password": "cHc="}
    assert names(editor.get("/api/v1/secrets")) == {"db"}


def test_edit_token_cannot_manage_access_or_write_status(server: LiveServer, admin: httpx.Client,
                                                          editor: httpx.Client) -> None:
    rb = binding("escalate", "admin", "deployer", "team-a")
    denied(editor.post(f"{RBAC}/namespaces/team-a/rolebindings", json=rb))
    crb = dict(rb, kind="ClusterRoleBinding")
    denied(editor.post(f"{RBAC}/clusterrolebindings", json=crb))
    denied(editor.delete(f"{RBAC}/namespaces/team-a/rolebindings/deployer-edit"))
    denied(editor.post(f"{ns_path('team-a', 'serviceaccounts')}/deployer/token", json={}))
    denied(editor.post(ns_path("team-a", "serviceaccounts"),
                       json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sneaky"}}))
    obj = ok(editor.get(f"{ns_path('team-a')}/team-a-config"))
    denied(editor.put(f"{ns_path('team-a')}/team-a-config/status", json=dict(obj, status={"phase": "Forged"})))
    denied(editor.patch(f"{ns_path('team-a')}/team-a-config/status", json={"status": {"phase": "Forged"}},
                        headers={"content-type": "application/merge-patch+json"}))
    ok(editor.get(f"{ns_path('team-a')}/team-a-config/status"))
    assert "status" not in ok(admin.get(f"{ns_path('team-a')}/team-a-config"))
    assert names(admin.get(f"{RBAC}/namespaces/team-a/rolebindings")) == {"deployer-edit"}
    assert names(admin.get(f"{RBAC}/clusterrolebindings")) == {"kaip-admin"}


def test_namespace_admin_manages_access_in_its_namespace_only(server: LiveServer, admin: httpx.Client) -> None:
    with server.client(issue_token(admin, "team-a", "lead", "admin")) as lead:
        ok(lead.post(ns_path("team-a", "serviceaccounts"),
                     json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "helper"}}), 201)
        ok(lead.post(f"{RBAC}/namespaces/team-a/rolebindings", json=binding("helper-view", "view", "helper",
                                                                            "team-a")), 201)
        ok(lead.post(f"{ns_path('team-a', 'serviceaccounts')}/helper/token", json={}), 201)
        denied(lead.post(f"{RBAC}/namespaces/team-b/rolebindings", json=binding("x", "view", "helper", "team-a")))
        denied(lead.post(f"{RBAC}/clusterrolebindings",
                         json=dict(binding("x", "admin", "lead", "team-a"), kind="ClusterRoleBinding")))


def test_deleting_the_role_binding_revokes_access_at_once(server: LiveServer, admin: httpx.Client,
                                                           editor: httpx.Client) -> None:
    ok(editor.get(ns_path("team-a")))
    ok(admin.delete(f"{RBAC}/namespaces/team-a/rolebindings/deployer-edit"))
    denied(editor.get(ns_path("team-a")))
    denied(editor.post(ns_path("team-a"), json=cm("late")))
    assert names(editor.get("/api/v1/namespaces")) == set()
    # Binding again restores it, also at once.
    ok(admin.post(f"{RBAC}/namespaces/team-a/rolebindings", json=binding("again", "view", "deployer", "team-a")), 201)
    ok(editor.get(ns_path("team-a")))
    denied(editor.post(ns_path("team-a"), json=cm("still-no")))


def test_a_token_without_any_role_sees_nothing(server: LiveServer, admin: httpx.Client) -> None:
    with server.client(issue_token(admin, "team-a", "nobody", None)) as c:
        denied(c.get(ns_path("team-a")))
        assert names(c.get("/api/v1/namespaces")) == set()
        denied(c.get("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"))


# ---- credentials at rest ----------------------------------------------------------------------------------


def test_tokens_are_stored_as_sha256_hashes_only(server: LiveServer, admin: httpx.Client, tmp_path: Path) -> None:
    token = issue_token(admin, "team-a", "secretive", "view")
    with server.server.store.engine.connect() as conn:
        rows = conn.execute(select(tokens)).mappings().all()
    stored = [dict(r) for r in rows]
    assert hash_token(token) in {r["token_hash"] for r in stored}
    assert hash_token(server.token) in {r["token_hash"] for r in stored}
    assert all(len(r["token_hash"]) == 64 and int(r["token_hash"], 16) >= 0 for r in stored)
    for r in stored:
        for value in r.values():
            assert token not in str(value) and server.token not in str(value)
    # Nor anywhere in the database files (SQLite keeps recent writes in its WAL).
    for f in (tmp_path / "home").rglob("*.db*"):
        data = f.read_bytes()
        assert token.encode() not in data and server.token.encode() not in data
    assert any((tmp_path / "home").rglob("*.db*"))
