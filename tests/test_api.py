"""The resource API over HTTP, against a live server (SQLite, and PostgreSQL where the database matters).

Requests are what kubectl and client libraries send; responses are checked for the codes and Kubernetes
`Status` bodies those clients act on. Watch tests check the list-then-watch contract: every change after the
list's resourceVersion arrives exactly once, in order. Bad input must be refused and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaip.api.core import CONFIGMAP
from kaip.testing.live import LiveServer

Obj = dict[str, Any]
CM = "/api/v1/namespaces/default/configmaps"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
APPLY = {"content-type": "application/apply-patch+yaml"}
MERGE = {"content-type": "application/merge-patch+json"}
JSON_PATCH = {"content-type": "application/json-patch+json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request: pytest.FixtureRequest) -> LiveServer:
    """A live server on each backend."""
    return request.getfixturevalue("server" if request.param == "sqlite" else "pg_server")


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def cm(name: str, data: dict[str, str] | None = None, **meta: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": data or {}}


def names(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [o["metadata"]["name"] for o in resp.json()["items"]]


def status_of(resp: httpx.Response, code: int, reason: str) -> Obj:
    """Assert a Kubernetes Status failure body with this code and reason; return it."""
    assert resp.status_code == code, resp.text
    body = resp.json()
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure", body
    assert body["code"] == code and body["reason"] == reason, body
    assert body["message"]
    return body


def causes(body: Obj) -> dict[str, str]:
    return {c["field"]: c["reason"] for c in body["details"]["causes"]}


def create_namespace(c: httpx.Client, name: str) -> None:
    r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert r.status_code == 201, r.text


# ---- CRUD -------------------------------------------------------------------------------------------------


def test_crud_at_kubernetes_paths(any_server: LiveServer) -> None:
    with any_server.client() as c:
        r = c.post(CM, json=cm("app", {"k": "v"}, labels={"tier": "web"}))
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["apiVersion"] == "v1" and created["kind"] == "ConfigMap"
        assert created["metadata"]["namespace"] == "default" and created["metadata"]["uid"]
        assert created["metadata"]["resourceVersion"] and created["metadata"]["generation"] == 1

        r = c.get(f"{CM}/app")
        assert r.status_code == 200 and r.json() == created

        lst = c.get(CM).json()
        assert lst["kind"] == "ConfigMapList" and lst["apiVersion"] == "v1"
        assert [o["metadata"]["name"] for o in lst["items"]] == ["app"]
        assert int(lst["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])

        created["data"] = {"k": "v2"}
        r = c.put(f"{CM}/app", json=created)
        assert r.status_code == 200, r.text
        updated = r.json()
        assert updated["data"] == {"k": "v2"} and updated["metadata"]["generation"] == 2
        assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

        r = c.delete(f"{CM}/app")
        assert r.status_code == 200 and r.json()["metadata"]["name"] == "app"
        body = status_of(c.get(f"{CM}/app"), 404, "NotFound")
        assert body["details"] == {"name": "app", "kind": "configmaps"}
        status_of(c.delete(f"{CM}/app"), 404, "NotFound")
        status_of(c.put(f"{CM}/app", json=cm("app")), 404, "NotFound")


def test_cluster_scoped_namespaces(client: httpx.Client) -> None:
    create_namespace(client, "team-x")
    r = client.get("/api/v1/namespaces/team-x")
    assert r.status_code == 200 and "namespace" not in r.json()["metadata"]
    assert "team-x" in names(client.get("/api/v1/namespaces"))
    assert client.post("/api/v1/namespaces/team-x/configmaps", json=cm("c")).status_code == 201
    assert names(client.get("/api/v1/namespaces/team-x/configmaps")) == ["c"]
    # A cluster-scoped kind has no namespaced path, and a namespaced kind needs one to write.
    status_of(client.get("/api/v1/namespaces/default/namespaces/team-x"), 404, "NotFound")
    status_of(client.post("/api/v1/configmaps", json=cm("c")), 404, "NotFound")
    status_of(client.get("/api/v1/configmaps/c"), 404, "NotFound")


def test_list_across_namespaces(client: httpx.Client) -> None:
    create_namespace(client, "other")
    client.post(CM, json=cm("a"))
    client.post("/api/v1/namespaces/other/configmaps", json=cm("b"))
    items = client.get("/api/v1/configmaps").json()["items"]
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items} == {("default", "a"), ("other", "b")}


def test_duplicate_create_is_409_already_exists(client: httpx.Client) -> None:
    assert client.post(CM, json=cm("dup", {"n": "1"})).status_code == 201
    body = status_of(client.post(CM, json=cm("dup", {"n": "2"})), 409, "AlreadyExists")
    assert body["details"]["name"] == "dup"
    assert client.get(f"{CM}/dup").json()["data"] == {"n": "1"}


def test_put_with_a_stale_resource_version_is_409(any_server: LiveServer) -> None:
    with any_server.client() as c:
        first = c.post(CM, json=cm("app", {"n": "1"})).json()
        second = c.put(f"{CM}/app", json=dict(first, data={"n": "2"})).json()
        status_of(c.put(f"{CM}/app", json=dict(first, data={"n": "3"})), 409, "Conflict")
        assert c.get(f"{CM}/app").json() == second


def test_concurrent_puts_with_one_resource_version_exactly_one_wins(any_server: LiveServer) -> None:
    with any_server.client() as setup:
        base = setup.post(CM, json=cm("race", {"n": "0"})).json()
    barrier = threading.Barrier(4)
    codes: dict[int, int] = {}

    def put(i: int) -> None:
        with any_server.client() as c:
            barrier.wait()
            codes[i] = c.put(f"{CM}/race", json=dict(base, data={"n": f"writer-{i}"})).status_code

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes.values()) == [200, 409, 409, 409]
    winner = next(i for i, code in codes.items() if code == 200)
    with any_server.client() as c:
        assert c.get(f"{CM}/race").json()["data"] == {"n": f"writer-{winner}"}


def test_put_name_must_match_the_path(client: httpx.Client) -> None:
    client.post(CM, json=cm("a"))
    status_of(client.put(f"{CM}/a", json=cm("b")), 400, "BadRequest")


def test_status_subresource_over_http(client: httpx.Client) -> None:
    obj = client.post(CM, json=cm("a", {"k": "v"})).json()
    r = client.put(f"{CM}/a/status", json=dict(obj, data={"k": "ignored"}, status={"phase": "Ready"}))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == {"phase": "Ready"} and r.json()["data"] == {"k": "v"}
    r = client.patch(f"{CM}/a/status", json={"status": {"phase": "Done"}}, headers=MERGE)
    assert r.status_code == 200 and r.json()["status"] == {"phase": "Done"}
    # The main resource ignores status.
    r = client.put(f"{CM}/a", json=dict(r.json(), status={"phase": "Forged"}))
    assert r.json()["status"] == {"phase": "Done"}
    assert client.get(f"{CM}/a/status").json()["status"] == {"phase": "Done"}


# ---- patch and apply ----------------------------------------------------------------------------------


def test_merge_patch(client: httpx.Client) -> None:
    client.post(CM, json=cm("a", {"keep": "1", "drop": "2"}, labels={"x": "1"}))
    r = client.patch(f"{CM}/a", json={"metadata": {"labels": {"y": "2"}}, "data": {"drop": None, "new": "3"}},
                     headers=MERGE)
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["data"] == {"keep": "1", "new": "3"}
    assert obj["metadata"]["labels"] == {"x": "1", "y": "2"}
    assert client.get(f"{CM}/a").json() == obj


def test_patch_with_a_stale_resource_version_is_409(client: httpx.Client) -> None:
    old = client.post(CM, json=cm("a", {"n": "1"})).json()
    client.patch(f"{CM}/a", json={"data": {"n": "2"}}, headers=MERGE)
    patch = {"metadata": {"resourceVersion": old["metadata"]["resourceVersion"]}, "data": {"n": "3"}}
    status_of(client.patch(f"{CM}/a", json=patch, headers=MERGE), 409, "Conflict")
    assert client.get(f"{CM}/a").json()["data"] == {"n": "2"}


def test_json_patch(client: httpx.Client) -> None:
    client.post(CM, json=cm("a", {"a": "1", "b": "2"}))
    ops = [{"op": "replace", "path": "/data/a", "value": "x"}, {"op": "remove", "path": "/data/b"},
           {"op": "add", "path": "/metadata/labels", "value": {"l": "v"}}]
    r = client.patch(f"{CM}/a", json=ops, headers=JSON_PATCH)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"a": "x"} and r.json()["metadata"]["labels"] == {"l": "v"}
    before = client.get(f"{CM}/a").json()
    status_of(client.patch(f"{CM}/a", json=[{"op": "remove", "path": "/data/missing"}], headers=JSON_PATCH),
              400, "BadRequest")
    status_of(client.patch(f"{CM}/a", json={"not": "a list"}, headers=JSON_PATCH), 400, "BadRequest")
    assert client.get(f"{CM}/a").json() == before


def test_patch_that_makes_the_object_invalid_is_422(client: httpx.Client) -> None:
    client.post(CM, json=cm("a", {"k": "v"}))
    body = status_of(client.patch(f"{CM}/a", json={"dataa": {"x": "y"}}, headers=MERGE), 422, "Invalid")
    assert causes(body) == {"dataa": "FieldValueUnknown"}
    body = status_of(client.patch(f"{CM}/a", json={"metadata": {"labels": {"k": "bad value"}}}, headers=MERGE),
                     422, "Invalid")
    assert "metadata.labels" in causes(body)


def test_patch_with_an_unsupported_content_type_is_415(client: httpx.Client) -> None:
    client.post(CM, json=cm("a"))
    status_of(client.patch(f"{CM}/a", content=b"{}", headers={"content-type": "text/plain"}),
              415, "UnsupportedMediaType")


def test_server_side_apply_creates_updates_and_prunes_only_its_own_fields(any_server: LiveServer) -> None:
    v1 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  labels:\n    team: a\ndata:\n  a: '1'\n  b: '2'\n"
    v2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  labels:\n    team: a\ndata:\n  a: '10'\n"
    with any_server.client() as c:
        r = c.patch(f"{CM}/app", content=v1, headers=APPLY)
        assert r.status_code == 201, r.text
        assert r.json()["data"] == {"a": "1", "b": "2"}
        # Another writer sets a field the applied configuration never mentioned.
        c.patch(f"{CM}/app", json={"data": {"other": "x"}, "metadata": {"labels": {"by": "other"}}}, headers=MERGE)
        r = c.patch(f"{CM}/app", content=v2, headers=APPLY)
        assert r.status_code == 200, r.text
        obj = r.json()
        assert obj["data"] == {"a": "10", "other": "x"}  # b was dropped from the config, so it is removed
        assert obj["metadata"]["labels"] == {"team": "a", "by": "other"}
        assert obj["metadata"]["generation"] == 3
        # Applying the same configuration again changes nothing.
        again = c.patch(f"{CM}/app", content=v2, headers=APPLY).json()
        assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_apply_of_an_invalid_configuration_is_422_and_writes_nothing(client: httpx.Client) -> None:
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndatta:\n  a: '1'\n"
    body = status_of(client.patch(f"{CM}/app", content=doc, headers=APPLY), 422, "Invalid")
    assert causes(body) == {"datta": "FieldValueUnknown"}
    status_of(client.get(f"{CM}/app"), 404, "NotFound")


def test_dry_run_writes_nothing(any_server: LiveServer) -> None:
    with any_server.client() as c:
        store = any_server.server.store
        r = c.post(CM, params={"dryRun": "All"}, json=cm("ghost", {"k": "v"}))
        assert r.status_code == 201 and r.json()["metadata"]["name"] == "ghost"
        status_of(c.get(f"{CM}/ghost"), 404, "NotFound")
        real = c.post(CM, json=cm("real", {"k": "v"})).json()
        rv = store.current_rv()
        r = c.put(f"{CM}/real", params={"dryRun": "All"}, json=dict(real, data={"k": "dry"}))
        assert r.status_code == 200 and r.json()["data"] == {"k": "dry"}
        r = c.patch(f"{CM}/real", params={"dryRun": "All"}, json={"data": {"k": "dry"}}, headers=MERGE)
        assert r.status_code == 200 and r.json()["data"] == {"k": "dry"}
        apply = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: real\ndata:\n  k: dry\n"
        assert c.patch(f"{CM}/real", params={"dryRun": "All"}, content=apply, headers=APPLY).status_code == 200
        assert c.delete(f"{CM}/real", params={"dryRun": "All"}).status_code == 200
        assert c.get(f"{CM}/real").json() == real
        assert store.changes_since(rv, kind_keys=[CONFIGMAP.key]) == []


# ---- lists: selectors, pages, tables -------------------------------------------------------------------


def test_label_selector_on_list(client: httpx.Client) -> None:
    client.post(CM, json=cm("web-prod", labels={"app": "web", "env": "prod"}))
    client.post(CM, json=cm("web-dev", labels={"app": "web", "env": "dev"}))
    client.post(CM, json=cm("db", labels={"app": "db"}))
    sel = lambda s: sorted(names(client.get(CM, params={"labelSelector": s})))  # noqa: E731
    assert sel("app=web") == ["web-dev", "web-prod"]
    assert sel("app=web,env!=dev") == ["web-prod"]
    assert sel("env in (prod,dev)") == ["web-dev", "web-prod"]
    assert sel("!env") == ["db"]
    assert sel("env") == ["web-dev", "web-prod"]
    body = status_of(client.get(CM, params={"labelSelector": "app in (web"}), 400, "BadRequest")
    assert "app in (web" in body["message"]


def test_paged_list_visits_every_object_once(client: httpx.Client) -> None:
    for i in range(5):
        client.post(CM, json=cm(f"c{i}"))
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(10):
        page = client.get(CM, params=params).json()
        seen += [o["metadata"]["name"] for o in page["items"]]
        if not page["metadata"].get("continue"):
            break
        params = {"limit": "2", "continue": page["metadata"]["continue"]}
    assert seen == [f"c{i}" for i in range(5)]
    status_of(client.get(CM, params={"limit": "x"}), 400, "BadRequest")
    status_of(client.get(CM, params={"continue": "garbage!"}), 400, "BadRequest")


def test_server_side_table(client: httpx.Client) -> None:
    client.post(CM, json=cm("a", {"x": "1", "y": "2"}))
    client.post(CM, json=cm("b"))
    r = client.get(CM, headers={"accept": TABLE})
    assert r.status_code == 200, r.text
    table = r.json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [col["name"] for col in table["columnDefinitions"]]
    assert columns[0] == "Name" and "Data" in columns and "Age" in columns
    rows = {row["cells"][0]: row for row in table["rows"]}
    assert rows["a"]["cells"][columns.index("Data")] == 2
    assert rows["b"]["cells"][columns.index("Data")] == 0
    assert rows["a"]["object"]["kind"] == "PartialObjectMetadata"
    assert rows["a"]["object"]["metadata"]["name"] == "a"
    one = client.get(f"{CM}/a", headers={"accept": TABLE}).json()
    assert one["kind"] == "Table" and [row["cells"][0] for row in one["rows"]] == ["a"]


# ---- discovery, health, metrics ------------------------------------------------------------------------


def test_discovery(client: httpx.Client) -> None:
    assert client.get("/api").json()["versions"] == ["v1"]
    core = client.get("/api/v1").json()
    assert core["kind"] == "APIResourceList" and core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["namespaced"] is True and "po" in by_name["pods"]["shortNames"]
    assert by_name["pods"]["kind"] == "Pod" and "watch" in by_name["pods"]["verbs"]
    assert by_name["namespaces"]["namespaced"] is False
    assert {"pods/status", "pods/log", "configmaps", "secrets", "serviceaccounts"} <= set(by_name)
    groups = client.get("/apis").json()
    assert groups["kind"] == "APIGroupList"
    rbac = next(g for g in groups["groups"] if g["name"] == "rbac.authorization.k8s.io")
    assert rbac["preferredVersion"] == {"groupVersion": "rbac.authorization.k8s.io/v1", "version": "v1"}
    assert all(g["name"] for g in groups["groups"])  # the core group is served at /api, not /apis
    r = client.get("/apis/rbac.authorization.k8s.io/v1").json()
    assert r["groupVersion"] == "rbac.authorization.k8s.io/v1"
    kinds = {x["name"]: x for x in r["resources"]}
    assert kinds["rolebindings"]["namespaced"] is True and kinds["clusterrolebindings"]["namespaced"] is False
    status_of(client.get("/apis/nothing.example.com/v1"), 404, "NotFound")


def test_health_readiness_metrics_and_openapi(client: httpx.Client, server: LiveServer) -> None:
    bare = httpx.Client(base_url=server.url)  # no token: probes must not need one
    try:
        assert bare.get("/healthz").text == "ok"
        assert bare.get("/readyz").text == "ok"
    finally:
        bare.close()
    client.post(CM, json=cm("m"))
    client.get(f"{CM}/m")
    client.get(f"{CM}/missing")
    text = client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}

    def count(verb: str, code: str) -> float:
        key = ("apiserver_request_total", tuple(sorted({"verb": verb, "group": "", "resource": "configmaps",
                                                        "code": code}.items())))
        return samples.get(key, 0)

    assert count("create", "201") == 1
    assert count("get", "200") == 1
    assert count("get", "404") == 1
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/healthz" in doc["paths"]


# ---- watch --------------------------------------------------------------------------------------------


class Watch:
    """A watch stream read on a background thread, so that the test can write while it runs."""

    def __init__(self, client: httpx.Client, path: str, **params: str) -> None:
        self.events: list[Obj] = []
        self.status_code = 0
        self._opened = threading.Event()
        self._changed = threading.Condition()
        self._client = client
        self._path = path
        self._params = {"watch": "true", "timeoutSeconds": "20", **params}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._socket: socket.socket | None = None
        self._thread.start()
        assert self._opened.wait(10), "the watch did not open"

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self._path, params=self._params) as r:
                self.status_code = r.status_code
                self._socket = r.extensions["network_stream"].get_extra_info("socket")
                self._opened.set()
                if r.status_code != 200:
                    r.read()
                    return
                for line in r.iter_lines():
                    if line.strip():
                        with self._changed:
                            self.events.append(json.loads(line))
                            self._changed.notify_all()
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test
        finally:
            self._opened.set()

    def wait_for(self, done: Callable[[list[Obj]], bool], timeout: float = 15) -> list[Obj]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.events) and time.monotonic() < deadline:
                self._changed.wait(0.1)
            return list(self.events)

    def changes(self) -> list[Obj]:
        return [e for e in self.events if e["type"] != "BOOKMARK"]

    def close(self) -> None:
        """Hang up: shutting the socket down wakes the reader at once, as a client going away would."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()


def test_list_then_watch_sees_every_change_exactly_once_in_order(any_server: LiveServer) -> None:
    with any_server.client() as setup:
        create_namespace(setup, "elsewhere")
        setup.post(CM, json=cm("before-1"))
        setup.post(CM, json=cm("before-2"))
        listed = setup.get(CM).json()
    rv = listed["metadata"]["resourceVersion"]
    assert [o["metadata"]["name"] for o in listed["items"]] == ["before-1", "before-2"]
    expected: list[tuple[str, str, str]] = []  # (type, name, resourceVersion) in the order they were written

    def writer() -> None:
        with any_server.client() as c:
            for i in range(6):
                o = c.post(CM, json=cm(f"w{i}", {"i": str(i)})).json()
                expected.append(("ADDED", f"w{i}", o["metadata"]["resourceVersion"]))
                # Noise the watch must not deliver: another namespace.
                c.post("/api/v1/namespaces/elsewhere/configmaps", json=cm(f"x{i}"))
            for i in range(0, 6, 2):
                o = c.patch(f"{CM}/w{i}", json={"data": {"i": "changed"}}, headers=MERGE).json()
                expected.append(("MODIFIED", f"w{i}", o["metadata"]["resourceVersion"]))
            o = c.patch(f"{CM}/before-1", json={"data": {"x": "y"}}, headers=MERGE).json()
            expected.append(("MODIFIED", "before-1", o["metadata"]["resourceVersion"]))
            for name in ("w1", "before-2"):
                o = c.delete(f"{CM}/{name}").json()
                expected.append(("DELETED", name, o["metadata"]["resourceVersion"]))

    with any_server.client() as wc:
        # The writer starts before the watch connects: changes between the list and the watch must not be lost.
        t = threading.Thread(target=writer)
        t.start()
        watch = Watch(wc, CM, resourceVersion=rv)
        try:
            t.join()
            assert watch.status_code == 200
            watch.wait_for(lambda evs: len([e for e in evs if e["type"] != "BOOKMARK"]) >= len(expected))
            time.sleep(0.3)  # anything extra (a duplicate) would arrive now
        finally:
            watch.close()
    got = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
           for e in watch.changes()]
    assert len(expected) == 12
    assert got == expected
    assert all(e["object"]["metadata"]["namespace"] == "default" for e in watch.changes())
    assert watch.changes()[0]["object"]["data"] == {"i": "0"}


def test_watch_sees_concurrent_writers_in_resource_version_order(any_server: LiveServer) -> None:
    """Several clients write at once; the watch delivers every change once, ordered by resourceVersion."""
    with any_server.client() as c:
        rv = c.get(CM).json()["metadata"]["resourceVersion"]
    written: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        with any_server.client() as c:
            for i in range(4):
                o = c.post(CM, json=cm(f"w{w}-{i}")).json()
                p = c.patch(f"{CM}/w{w}-{i}", json={"data": {"v": "2"}}, headers=MERGE).json()
                with lock:
                    written.append(("ADDED", o["metadata"]["name"], o["metadata"]["resourceVersion"]))
                    written.append(("MODIFIED", p["metadata"]["name"], p["metadata"]["resourceVersion"]))

    with any_server.client() as wc:
        watch = Watch(wc, CM, resourceVersion=rv)
        try:
            threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            watch.wait_for(lambda evs: len(evs) >= len(written))
            time.sleep(0.3)
        finally:
            watch.close()
    got = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
           for e in watch.changes()]
    assert len(written) == 24
    assert got == sorted(written, key=lambda x: int(x[2]))


def test_watch_without_a_version_starts_with_the_current_state(client: httpx.Client) -> None:
    client.post(CM, json=cm("a", labels={"app": "x"}))
    client.post(CM, json=cm("b", labels={"app": "y"}))
    watch = Watch(client, CM, labelSelector="app=x")
    try:
        watch.wait_for(lambda evs: len(evs) >= 1)
        client.post(CM, json=cm("c", labels={"app": "x"}))
        client.post(CM, json=cm("d", labels={"app": "y"}))
        watch.wait_for(lambda evs: len(evs) >= 2)
        time.sleep(0.3)
    finally:
        watch.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in watch.changes()] == [("ADDED", "a"), ("ADDED", "c")]


def test_bookmarks_arrive_when_asked_for(client: httpx.Client) -> None:
    created = client.post(CM, json=cm("a")).json()
    rv = created["metadata"]["resourceVersion"]
    watch = Watch(client, CM, resourceVersion=str(int(rv) - 1), allowWatchBookmarks="true")
    try:
        events = watch.wait_for(lambda evs: any(e["type"] == "BOOKMARK" for e in evs), timeout=5)
    finally:
        watch.close()
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "a"
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert bookmark["object"]["kind"] == "ConfigMap"
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(rv)
    # A watch resumed from the bookmark continues exactly after it.
    client.post(CM, json=cm("after"))
    resumed = Watch(client, CM, resourceVersion=bookmark["object"]["metadata"]["resourceVersion"])
    try:
        resumed.wait_for(lambda evs: len(evs) >= 1)
        time.sleep(0.2)
    finally:
        resumed.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed.changes()] == [("ADDED", "after")]


def test_no_bookmarks_unless_asked_for(client: httpx.Client) -> None:
    watch = Watch(client, CM, resourceVersion=str(client.get(CM).json()["metadata"]["resourceVersion"]))
    try:
        time.sleep(1.2)
    finally:
        watch.close()
    assert watch.events == []


def test_watch_from_a_compacted_version_is_410(any_server: LiveServer) -> None:
    with any_server.client() as c:
        old = c.get(CM).json()["metadata"]["resourceVersion"]
        for i in range(3):
            c.post(CM, json=cm(f"c{i}"))
        any_server.server.store.compact(0)
        r = c.get(CM, params={"watch": "true", "resourceVersion": old})
        body = status_of(r, 410, "Expired")
        assert old in body["message"]
        # A fresh list gives a version that can be watched from again.
        rv = c.get(CM).json()["metadata"]["resourceVersion"]
        watch = Watch(c, CM, resourceVersion=rv)
        try:
            c.post(CM, json=cm("fresh"))
            watch.wait_for(lambda evs: len(evs) >= 1)
        finally:
            watch.close()
        assert watch.status_code == 200
        assert [e["object"]["metadata"]["name"] for e in watch.changes()] == ["fresh"]


def test_watch_with_a_bad_resource_version_is_400(client: httpx.Client) -> None:
    status_of(client.get(CM, params={"watch": "true", "resourceVersion": "abc"}), 400, "BadRequest")


# ---- bad input: refused, and nothing written ----------------------------------------------------------


@pytest.fixture
def unchanged(server: LiveServer, client: httpx.Client) -> Iterator[None]:
    """Asserts, after the test, that no configmap or namespace was written while it ran."""
    client.post(CM, json=cm("existing", {"k": "v"}))
    before = client.get(CM).json()["items"]
    namespaces = names(client.get("/api/v1/namespaces"))
    rv = server.server.store.current_rv()
    yield
    assert client.get(CM).json()["items"] == before
    assert names(client.get("/api/v1/namespaces")) == namespaces
    assert server.server.store.changes_since(rv, kind_keys=[CONFIGMAP.key, "/Namespace"]) == []


def test_malformed_json_is_400_naming_the_line(client: httpx.Client, unchanged: None) -> None:
    bad = b'{\n  "apiVersion": "v1",\n  "kind": "ConfigMap",\n  "metadata": {"name": "x"},,\n}'
    body = status_of(client.post(CM, content=bad, headers={"content-type": "application/json"}), 400, "BadRequest")
    assert "line 4" in body["message"]
    status_of(client.post(CM, content=b"", headers={"content-type": "application/json"}), 400, "BadRequest")
    status_of(client.post(CM, content=b"[1, 2]", headers={"content-type": "application/json"}), 400, "BadRequest")
    status_of(client.post(CM, content=b'"text"', headers={"content-type": "application/json"}), 400, "BadRequest")


def test_malformed_yaml_is_400_naming_the_line(client: httpx.Client, unchanged: None) -> None:
    bad = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: [\n"
    body = status_of(client.post(CM, content=bad, headers={"content-type": "application/yaml"}), 400, "BadRequest")
    assert "line 5" in body["message"]


def test_valid_yaml_is_accepted_and_read_as_kubernetes_reads_it(client: httpx.Client) -> None:
    doc = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n  annotations:\n    released: 2024-05-01\n" \
          b"data:\n  k: v\n  day: 2020-01-01\n"
    r = client.post(CM, content=doc, headers={"content-type": "application/yaml"})
    assert r.status_code == 201, r.text
    # An unquoted date is a string, as kubectl and sigs.k8s.io/yaml read it.
    assert r.json()["data"] == {"k": "v", "day": "2020-01-01"}
    assert r.json()["metadata"]["annotations"] == {"released": "2024-05-01"}


def test_values_json_cannot_carry_are_400(client: httpx.Client, unchanged: None) -> None:
    for raw in (b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"n"},"status":{"x":NaN}}',
                b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"n"},"status":{"x":Infinity}}'):
        status_of(client.post(CM, content=raw, headers={"content-type": "application/json"}), 400, "BadRequest")
        status_of(client.put(f"{CM}/existing/status", content=raw.replace(b'"n"', b'"existing"'),
                             headers={"content-type": "application/json"}), 400, "BadRequest")
    yml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: n\nstatus:\n  x: .nan\n  b: !!binary aGk=\n"
    status_of(client.post(CM, content=yml, headers={"content-type": "application/yaml"}), 400, "BadRequest")
    status_of(client.post(CM, content=b"\xff\xfe{}", headers={"content-type": "application/json"}), 400, "BadRequest")
    # The server still answers normally afterwards.
    assert client.get(f"{CM}/existing").status_code == 200


def test_bad_watch_parameters_are_400(client: httpx.Client) -> None:
    for params in ({"timeoutSeconds": "abc"}, {"resourceVersion": "abc"}, {"resourceVersion": "-1"},
                   {"resourceVersion": "9" * 30}, {"labelSelector": "a in (b"}):
        status_of(client.get(CM, params={"watch": "true", **params}), 400, "BadRequest")


def test_status_sent_on_create_is_dropped(client: httpx.Client) -> None:
    r = client.post(CM, json=dict(cm("forged"), status={"phase": "Succeeded"}))
    assert r.status_code == 201 and "status" not in r.json()
    assert "status" not in client.get(f"{CM}/forged").json()
    applied = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\nstatus:\n  phase: Succeeded\n"
    r = client.patch(f"{CM}/applied", content=applied, headers=APPLY)
    assert r.status_code == 201 and "status" not in r.json()


def test_status_put_for_another_object_is_400(client: httpx.Client) -> None:
    a = client.post(CM, json=cm("a")).json()
    client.post(CM, json=cm("b"))
    other = dict(a, metadata=dict(a["metadata"], name="b"), status={"phase": "Wrong"})
    status_of(client.put(f"{CM}/a/status", json=other), 400, "BadRequest")
    assert "status" not in client.get(f"{CM}/b").json()
    status_of(client.put(f"{CM}/a/status", json=dict(a, metadata="x")), 422, "Invalid")


def test_unknown_kinds_and_paths_are_404(client: httpx.Client, unchanged: None) -> None:
    status_of(client.post("/api/v1/namespaces/default/widgets", json=cm("x")), 404, "NotFound")
    status_of(client.get("/api/v1/widgets"), 404, "NotFound")
    status_of(client.get("/apis/nothing.example.com/v1/namespaces/default/things"), 404, "NotFound")
    status_of(client.get("/api/v2/namespaces/default/configmaps"), 404, "NotFound")
    status_of(client.get(f"{CM}/a/b/c/d"), 404, "NotFound")


def test_unknown_field_is_422_with_its_path(client: httpx.Client, unchanged: None) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "imag": "python", "command": ["true"]}]}}
    body = status_of(client.post("/api/v1/namespaces/default/pods", json=pod), 422, "Invalid")
    assert causes(body) == {"spec.containers[0].imag": "FieldValueUnknown"}
    assert body["details"]["kind"] == "Pod" and body["details"]["name"] == "p"
    assert names(client.get("/api/v1/namespaces/default/pods")) == []
    body = status_of(client.put(f"{CM}/existing", json=dict(cm("existing"), extra=1)), 422, "Invalid")
    assert causes(body) == {"extra": "FieldValueUnknown"}


def test_invalid_names_are_422(client: httpx.Client, unchanged: None) -> None:
    body = status_of(client.post(CM, json=cm("Not_Valid")), 422, "Invalid")
    assert causes(body) == {"metadata.name": "FieldValueInvalid"}
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "has.dot"}}
    body = status_of(client.post("/api/v1/namespaces", json=ns), 422, "Invalid")
    assert causes(body) == {"metadata.name": "FieldValueInvalid"}
    body = status_of(client.post(CM, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}), 422, "Invalid")
    assert causes(body) == {"metadata.name": "FieldValueRequired"}


def test_malformed_metadata_is_422_not_500(client: httpx.Client, unchanged: None) -> None:
    for meta in (["x"], "x", 5):
        r = client.post(CM, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
        status_of(r, 422, "Invalid")
    r = client.post(CM, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}})
    assert "metadata.name" in causes(status_of(r, 422, "Invalid"))


def test_body_over_3_mib_is_413(client: httpx.Client, unchanged: None) -> None:
    big = json.dumps(cm("big", {"blob": "x" * (3 * 1024 * 1024)})).encode()
    body = status_of(client.post(CM, content=big, headers={"content-type": "application/json"}),
                     413, "RequestEntityTooLarge")
    assert "3145728" in body["message"]

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 256 * 1024):
            yield big[i:i + 256 * 1024]

    r = client.post(CM, content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    status_of(r, 413, "RequestEntityTooLarge")


def test_a_body_under_the_limit_is_accepted(client: httpx.Client) -> None:
    doc = json.dumps(cm("fits", {"blob": "x" * (3 * 1024 * 1024 - 200)})).encode()
    assert len(doc) < 3 * 1024 * 1024
    r = client.post(CM, content=doc, headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text[:300]


def test_api_version_or_kind_mismatching_the_path_is_400(client: httpx.Client, unchanged: None) -> None:
    status_of(client.post(CM, json=dict(cm("x"), kind="Secret")), 400, "BadRequest")
    status_of(client.post(CM, json=dict(cm("x"), apiVersion="v2")), 400, "BadRequest")
    status_of(client.post(CM, json=dict(cm("x"), apiVersion="apps/v1")), 400, "BadRequest")
    status_of(client.put(f"{CM}/existing", json=dict(cm("existing"), kind="Pod")), 400, "BadRequest")


def test_namespace_in_body_mismatching_the_path_is_refused(client: httpx.Client, unchanged: None) -> None:
    create = client.post(CM, json=cm("x", namespace="kaip-system"))
    assert "metadata.namespace" in causes(status_of(create, 422, "Invalid"))


def test_creating_in_a_missing_namespace_is_404(client: httpx.Client, unchanged: None) -> None:
    body = status_of(client.post("/api/v1/namespaces/ghost/configmaps", json=cm("x")), 404, "NotFound")
    assert "ghost" in body["message"]


def test_malformed_delete_options_are_400(client: httpx.Client, unchanged: None) -> None:
    for raw in (b"{not json", b"[1]", b'"x"'):
        r = client.request("DELETE", f"{CM}/existing", content=raw, headers={"content-type": "application/json"})
        status_of(r, 400, "BadRequest")
