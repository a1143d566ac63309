"""Workbenches end to end: JupyterLab started by the platform behind the token-checked proxy, its kernels'
websockets, files kept across stop/start, culling and a pod restart, queue admission — plus the pure decisions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client as wsclient
import yaml
from typer.testing import CliRunner
from websockets.exceptions import InvalidStatus

from kaip.api.workbench import STOP_ANNOTATION
from kaip.cli.main import app as cli
from kaip.cli.workbench import open_url
from kaip.controllers.workbench import requests_of
from kaip.testing.live import LiveServer, live_server
from kaip.testing.waiting import wait_for
from kaip.workbench import culling, render
from kaip.workbench.proxy import same_origin, split_cookies, split_path, take_token

WB = "/apis/kaip.dev/v1alpha1/namespaces/{ns}/workbenches"
KUEUE = "/apis/kueue.x-k8s.io/v1beta2"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notebooks"




@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("workbench") / "home", bookmark_seconds=0.5) as server:
        try:
            yield server
        finally:
            _delete_all(server)


def _delete_all(server: LiveServer) -> None:
    """JupyterLab processes outlive a server (as every pod does): stop them before it goes."""
    with server.client() as api:
        for wb in api.get("/apis/kaip.dev/v1alpha1/workbenches").json()["items"]:
            api.delete(f"{WB.format(ns=wb['metadata']['namespace'])}/{wb['metadata']['name']}")
        wait_for(lambda: not api.get("/api/v1/pods").json()["items"], "every pod to go", timeout=30)


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


def namespace(api: httpx.Client, name: str) -> str:
    r = api.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert r.status_code in (201, 409), r.text
    return name


def workbench(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kaip.dev/v1alpha1", "kind": "Workbench", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def create(api: httpx.Client, doc: dict[str, Any]) -> None:
    r = api.post(WB.format(ns=doc["metadata"]["namespace"]), json=doc)
    assert r.status_code == 201, r.text


def get(api: httpx.Client, name: str, ns: str) -> dict[str, Any]:
    r = api.get(f"{WB.format(ns=ns)}/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_phase(api: httpx.Client, name: str, ns: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
    return wait_for(lambda: (lambda o: o if (o.get("status") or {}).get("phase") == phase else None)(
        get(api, name, ns)), f"workbench {ns}/{name} {phase}", timeout)


def pods(api: httpx.Client, ns: str) -> list[dict[str, Any]]:
    return api.get(f"/api/v1/namespaces/{ns}/pods").json()["items"]


def user_token(live: LiveServer, api: httpx.Client, user: str, ns: str, role: str | None) -> str:
    if role:
        r = api.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", json={
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{user}-{role}", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": user}]})
        assert r.status_code == 201, r.text
    token, _ = live.server.authorizer.issue(user)
    return token


def kaip(live: LiveServer, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"KAIP_SERVER": live.url, "KAIP_TOKEN": live.token,
                                                      "KAIP_HOME": "/nonexistent"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def put_file(client: httpx.Client, base: str, name: str, text: str) -> None:
    r = client.put(f"{base}api/contents/{name}", json={"type": "file", "format": "text", "content": text})
    assert r.status_code in (200, 201), r.text


def read_file(client: httpx.Client, base: str, name: str) -> str:
    r = client.get(f"{base}api/contents/{name}", params={"content": "1"})
    assert r.status_code == 200, r.text
    return str(r.json()["content"])


# ---- validation ----------------------------------------------------------------------------------------------

def test_a_bad_spec_is_refused_with_its_field_paths(api: httpx.Client) -> None:
    doc = workbench("bad", "default", resources={"requests": {"cpu": "lots"}}, culling={"idleSeconds": -1},
                    serviceAcount="x")
    r = api.post(WB.format(ns="default"), json=doc)
    assert r.status_code == 422, r.text
    fields = {c["field"] for c in r.json()["details"]["causes"]}
    assert fields == {"spec.resources.requests.cpu", "spec.culling.idleSeconds", "spec.serviceAcount"}
    r = api.post(WB.format(ns="default"), json=workbench("bad", "default", resources={
        "requests": {"cpu": "lots", "memory": "2Gi"}, "limits": {"memory": "1Gi"}}))
    assert r.status_code == 422, r.text
    assert {c["field"] for c in r.json()["details"]["causes"]} == {"spec.resources.requests.cpu",
                                                                   "spec.resources.requests.memory"}
    assert api.get(f"{WB.format(ns='default')}/bad").status_code == 404


def test_the_example_manifest_is_accepted(api: httpx.Client) -> None:
    doc = yaml.safe_load((EXAMPLES / "workbench.yaml").read_text())
    r = api.post(WB.format(ns=doc["metadata"]["namespace"]), json=doc, params={"dryRun": "All"})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["culling"]["idleSeconds"] == 3600


# ---- URL, auth, SDK credentials, websockets ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(live: LiveServer, api: httpx.Client) -> dict[str, Any]:
    """A running workbench in its own namespace, shared by the tests that only use it."""
    ns = namespace(api, "wb-lab")
    create(api, workbench("lab", ns))
    obj = wait_phase(api, "lab", ns, "Running")
    return {"ns": ns, "name": "lab", "base": f"/workbenches/{ns}/lab/", "obj": obj}


def test_a_workbench_runs_jupyterlab_behind_the_kaip_token(live: LiveServer, api: httpx.Client,
                                                           lab: dict[str, Any]) -> None:
    ns, base = lab["ns"], lab["base"]
    status = lab["obj"]["status"]
    assert status["url"] == live.url + base and status["readyReplicas"] == 1
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == ["Running"]
    assert status["lastActivity"].endswith("Z")
    (pod,) = pods(api, ns)
    assert pod["metadata"]["name"] == "lab-0"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Workbench"
    assert pod["spec"]["serviceAccountName"] == "default-editor"

    r = api.get(f"{base}api/status")
    assert r.status_code == 200 and set(r.json()) >= {"last_activity", "kernels", "connections"}
    page = api.get(f"{base}lab")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # JupyterLab's own token never reaches the user: not in its page, not in the pod's spec.
    jupyter_token = (live.server.home / "workbenches" / ns / "lab" / "jupyter" / "token").read_text()
    assert len(jupyter_token) == 64 and jupyter_token not in page.text
    assert jupyter_token not in json.dumps(pod)
    assert not any(h.startswith("username-") for h in page.headers.get_list("set-cookie"))

    anonymous = httpx.Client(base_url=live.url)
    assert anonymous.get(f"{base}api/status").status_code == 401
    assert anonymous.get(f"{base}api/status", headers={"Authorization": "Bearer kaip_nope"}).status_code == 401
    assert anonymous.get(f"{base}api/status", params={"token": jupyter_token}).status_code == 401
    for user, role in (("wb-stranger", None), ("wb-viewer", "view")):
        token = user_token(live, api, user, ns, role)
        r = anonymous.get(f"{base}api/status", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403, (user, r.text)
    editor = user_token(live, api, "wb-editor", ns, "edit")
    assert anonymous.get(f"{base}api/status", headers={"Authorization": f"Bearer {editor}"}).status_code == 200
    assert api.get(f"/workbenches/{ns}/nothing/api/status").status_code == 404
    moved = api.get(f"/workbenches/{ns}/lab")
    assert moved.status_code == 307 and moved.headers["location"] == base


def test_a_browser_visit_with_token_sets_a_cookie_for_that_workbench_only(live: LiveServer,
                                                                          lab: dict[str, Any]) -> None:
    base = lab["base"]
    printed = kaip(live, "workbench", "open", "lab", "-n", lab["ns"])
    url = printed.stdout.strip()
    assert url == open_url(live.url + base, live.token) and "contains your Kaip token" in printed.stderr
    browser = httpx.Client()
    first = browser.get(url)
    assert first.status_code == 303 and first.headers["location"] == base
    cookie = first.headers["set-cookie"]
    assert f"Path={base}" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = browser.get(url, follow_redirects=True)
    assert page.status_code == 200 and "token" not in str(page.url) and str(page.url).endswith(f"{base}lab")
    assert browser.get(f"{live.url}{base}api/status").status_code == 200  # the cookie alone
    assert browser.get(f"{live.url}/workbenches/{lab['ns']}/other/api/status").status_code == 401  # not sent there
    # A write with the cookie must come from this server's own pages.
    body = {"type": "file", "format": "text", "content": "x"}
    forged = browser.put(f"{live.url}{base}api/contents/forged.txt", json=body,
                         headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403
    same = browser.put(f"{live.url}{base}api/contents/fine.txt", json=body, headers={"Origin": live.url})
    assert same.status_code == 201, same.text


def _send_execute(ws: Any, code: str) -> str:
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                   "session": uuid.uuid4().hex, "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    return msg_id


def _wait_for_iopub(ws: Any) -> None:
    """Until iopub messages flow on this connection (as JupyterLab does before running a cell): an execute sent
    earlier could have its result published before this websocket subscribed to them."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ws.send(json.dumps({"header": {"msg_id": uuid.uuid4().hex, "msg_type": "kernel_info_request",
                                       "username": "test", "session": uuid.uuid4().hex, "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [], "content": {}}))
        try:
            while True:
                if json.loads(ws.recv(timeout=1)).get("channel") == "iopub":
                    return
        except TimeoutError:
            continue
    raise AssertionError("no iopub message from the kernel")


def _execute(ws: Any, code: str) -> dict[str, Any]:
    """Run `code` on a kernel over the channels websocket (Jupyter's JSON protocol); its outputs by type."""
    _wait_for_iopub(ws)
    msg_id = _send_execute(ws, code)
    out: dict[str, Any] = {"stream": ""}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv(timeout=60))
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            out["stream"] += msg["content"]["text"]
        elif kind in ("execute_result", "error"):
            out[kind] = msg["content"]
        elif kind == "status" and msg["content"].get("execution_state") == "idle":
            # The end of a request's outputs is iopub's idle status, not the shell reply: the two channels are
            # not ordered with each other, so the reply can come before the result.
            return out
    raise AssertionError("the kernel did not go idle")


def test_a_kernel_websocket_works_through_the_proxy(live: LiveServer, api: httpx.Client, lab: dict[str, Any]) -> None:
    base, ns = lab["base"], lab["ns"]
    r = api.post(f"{base}api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    ws_url = live.url.replace("http://", "ws://") + f"{base}api/kernels/{kernel}/channels"
    auth = {"Authorization": f"Bearer {live.token}"}
    with wsclient.connect(ws_url, additional_headers=auth, proxy=None, open_timeout=30) as ws:
        assert _execute(ws, "1+1")["execute_result"]["data"]["text/plain"] == "2"
        # The SDK's settings: the namespace's default-editor account, which may use the API in its namespace.
        out = _execute(ws, "import os, httpx\n"
                           "print(os.environ['KAIP_NAMESPACE'], os.environ['KAIP_SERVER'] == "
                           f"{live.url!r}, os.getcwd().endswith('/workbenches/{ns}/lab/work'))\n"
                           "r = httpx.get(os.environ['KAIP_SERVER'] + '/apis/kaip.dev/v1alpha1/namespaces/' + "
                           "os.environ['KAIP_NAMESPACE'] + '/workbenches', "
                           "headers={'Authorization': 'Bearer ' + os.environ['KAIP_TOKEN']})\n"
                           "print(r.status_code, [w['metadata']['name'] for w in r.json()['items']])")
        assert out["stream"].split("\n")[:2] == [f"{ns} True True", "200 ['lab']"], out
        # ... and so the SDK needs no arguments there.
        out = _execute(ws, "import kaip\nclient = kaip.Client()\n"
                           "print(client.namespace, [w.name for w in client.list('workbenches')])")
        assert out["stream"].strip() == f"{ns} ['lab']", out
    # JupyterLab's own protocol (binary frames) is negotiated through the proxy too.
    with wsclient.connect(ws_url, additional_headers=auth, proxy=None,
                          subprotocols=["v1.kernel.websocket.jupyter.org"]) as ws:
        assert ws.subprotocol == "v1.kernel.websocket.jupyter.org"
    with pytest.raises(InvalidStatus) as refused:
        wsclient.connect(ws_url, proxy=None)
    assert refused.value.response.status_code == 401
    # A browser's websocket (cookie) from another site is refused; from this server's page it connects.
    browser = httpx.Client()
    browser.get(open_url(live.url + base, live.token))
    cookie = {"Cookie": f"kaip-workbench-token={browser.cookies['kaip-workbench-token']}"}
    with pytest.raises(InvalidStatus) as forged:
        wsclient.connect(ws_url, additional_headers=cookie, origin="http://evil.example", proxy=None)
    assert forged.value.response.status_code == 403
    with wsclient.connect(ws_url, additional_headers=cookie, origin=live.url, proxy=None) as ws:
        assert _execute(ws, "2*21")["execute_result"]["data"]["text/plain"] == "42"
    assert api.delete(f"{base}api/kernels/{kernel}").status_code == 204
    account = api.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/default-editor").json()
    assert account["roleRef"]["name"] == "edit"


def test_tables_list_workbenches_with_ready_status_and_url(live: LiveServer, api: httpx.Client,
                                                          lab: dict[str, Any]) -> None:
    r = api.get(WB.format(ns=lab["ns"]), headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    table = r.json()
    names = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Name", "Ready", "Status", "URL", "Age"]
    cells = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"], strict=True))
    assert (cells["Ready"], cells["Status"], cells["URL"]) == ("True", "Running", live.url + lab["base"])


# ---- files kept: stop/start, pod restart, culling ----------------------------------------------------------------

def test_files_survive_stop_start_and_a_pod_restart(live: LiveServer, api: httpx.Client) -> None:
    ns = namespace(api, "wb-files")
    create(api, workbench("notes", ns))
    wait_phase(api, "notes", ns, "Running")
    base = f"/workbenches/{ns}/notes/"
    put_file(api, base, "notes.txt", "kept across restarts")
    big = "x" * (4 * 1024 * 1024)  # over the API's 3 MiB body limit: the proxy streams it to JupyterLab
    put_file(api, base, "big.txt", big)
    assert (live.server.home / "workbenches" / ns / "notes" / "work" / "notes.txt").read_text() == \
        "kept across restarts"

    assert "stopped" in kaip(live, "workbench", "stop", "notes", "-n", ns).stdout
    stopped = wait_phase(api, "notes", ns, "Stopped")
    assert STOP_ANNOTATION in stopped["metadata"]["annotations"]
    assert stopped["status"]["readyReplicas"] == 0 and pods(api, ns) == []
    gone = api.get(f"{base}api/status")
    assert gone.status_code == 503 and "kaip workbench start" in gone.json()["message"]

    kaip(live, "workbench", "start", "notes", "-n", ns)
    wait_phase(api, "notes", ns, "Running")
    assert read_file(api, base, "notes.txt") == "kept across restarts"
    assert read_file(api, base, "big.txt") == big

    (pod,) = pods(api, ns)
    assert api.delete(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}").status_code == 200
    wait_for(lambda: [p for p in pods(api, ns) if p["metadata"]["uid"] != pod["metadata"]["uid"]],
             "a new pod")
    wait_phase(api, "notes", ns, "Running")
    assert read_file(api, base, "notes.txt") == "kept across restarts"


def test_an_idle_workbench_is_culled_and_keeps_its_files(live: LiveServer, api: httpx.Client) -> None:
    ns = namespace(api, "wb-cull")
    create(api, workbench("sleepy", ns, culling={"idleSeconds": 3}))
    wait_phase(api, "sleepy", ns, "Running")
    base = f"/workbenches/{ns}/sleepy/"
    put_file(api, base, "draft.txt", "before the culler")
    # A kernel busy with a silent computation is activity, though JupyterLab's last_activity stands still.
    kernel = api.post(f"{base}api/kernels", json={"name": "python3"}).json()["id"]
    ws_url = live.url.replace("http://", "ws://") + f"{base}api/kernels/{kernel}/channels"
    with wsclient.connect(ws_url, additional_headers={"Authorization": f"Bearer {live.token}"}, proxy=None) as ws:
        _execute(ws, "1")
        busy_since = time.monotonic()
        _send_execute(ws, "import time; time.sleep(5)")
        time.sleep(4.5)
        assert get(api, "sleepy", ns)["status"]["phase"] == "Running"
    culled = wait_phase(api, "sleepy", ns, "Culled", timeout=30)
    assert time.monotonic() - busy_since >= 5 + 3
    stamp = culled["metadata"]["annotations"][STOP_ANNOTATION]
    assert culled["status"]["culledAt"] == stamp and stamp.endswith("Z")
    ready = next(c for c in culled["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Culled"
    assert pods(api, ns) == []
    events = api.get(f"/api/v1/namespaces/{ns}/events").json()["items"]
    assert any(e["reason"] == "Culled" for e in events)
    # Started again (with culling off, so that it stays up for the check), its files are there.
    r = api.patch(f"{WB.format(ns=ns)}/sleepy", content=json.dumps(
        {"metadata": {"annotations": {STOP_ANNOTATION: None}}, "spec": {"culling": {"idleSeconds": 0}}}),
        headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    started = wait_phase(api, "sleepy", ns, "Running")
    assert "culledAt" not in started["status"]
    assert read_file(api, base, "draft.txt") == "before the culler"


# ---- queues ---------------------------------------------------------------------------------------------------

def test_a_queued_workbench_starts_only_once_admitted(live: LiveServer, api: httpx.Client) -> None:
    ns = namespace(api, "wb-queue")
    for path, doc in (
            (f"{KUEUE}/resourceflavors", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                                          "metadata": {"name": "wb-flavor"}}),
            (f"{KUEUE}/clusterqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
                                        "metadata": {"name": "wb-cq"},
                                        "spec": {"namespaceSelector": {}, "resourceGroups": [{
                                            "coveredResources": ["cpu"], "flavors": [{
                                                "name": "wb-flavor",
                                                "resources": [{"name": "cpu", "nominalQuota": "250m"}]}]}]}}),
            (f"{KUEUE}/namespaces/{ns}/localqueues", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                                                      "metadata": {"name": "default", "namespace": ns},
                                                      "spec": {"clusterQueue": "wb-cq"}})):
        r = api.post(path, json=doc)
        assert r.status_code == 201, r.text
    # Caught by the namespace's `default` LocalQueue, too big for its quota: a Workload, suspended, no pod.
    create(api, workbench("big", ns, resources={"requests": {"cpu": "500m"}}))
    queued = wait_phase(api, "big", ns, "Queued")
    assert queued["spec"]["suspend"] is True
    (wl,) = api.get(f"{KUEUE}/namespaces/{ns}/workloads").json()["items"]
    assert wl["spec"]["queueName"] == "default" and wl["metadata"]["ownerReferences"][0]["kind"] == "Workbench"
    assert wl["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "500m"}
    time.sleep(1.5)
    assert pods(api, ns) == [] and get(api, "big", ns)["status"]["phase"] == "Queued"
    # More quota: admitted, unsuspended, running.
    cq = api.get(f"{KUEUE}/clusterqueues/wb-cq").json()
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "1"
    assert api.put(f"{KUEUE}/clusterqueues/wb-cq", json=cq).status_code == 200
    running = wait_phase(api, "big", ns, "Running")
    assert running["spec"]["suspend"] is False and len(pods(api, ns)) == 1
    # Stopped, it gives its quota back: no Workload until it starts again.
    kaip(live, "workbench", "stop", "big", "-n", ns)
    wait_phase(api, "big", ns, "Stopped")
    assert api.get(f"{KUEUE}/namespaces/{ns}/workloads").json()["items"] == []


# ---- a server restart ----------------------------------------------------------------------------------------

def test_a_workbench_and_its_files_outlive_a_server_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with live_server(home, bookmark_seconds=0.5, stop_workloads=False) as first, first.client() as api:
        create(api, workbench("keep", "default"))
        wait_phase(api, "keep", "default", "Running")
        put_file(api, "/workbenches/default/keep/", "keep.txt", "still here")
        (pod,) = pods(api, "default")
    with live_server(home, bookmark_seconds=0.5) as second, second.client() as api:
        try:
            wait_phase(api, "keep", "default", "Running")
            assert pods(api, "default")[0]["metadata"]["uid"] == pod["metadata"]["uid"]  # adopted, not restarted
            assert read_file(api, "/workbenches/default/keep/", "keep.txt") == "still here"
        finally:
            _delete_all(second)


# ---- pure decisions ------------------------------------------------------------------------------------------

def test_culling_decisions() -> None:
    now = 10_000.0
    quiet = culling.Activity(last_activity=now - 100, kernels=1, connections=1)
    assert culling.should_cull(quiet, now, 60) and not culling.should_cull(quiet, now, 120)
    assert not culling.should_cull(quiet, now, 0)  # 0: never
    busy = culling.Activity(last_activity=now - 100, kernels=1, connections=0, busy_kernels=1)
    assert not culling.should_cull(busy, now, 60) and culling.last_active(busy, now) == now
    assert culling.check_interval(0) == 60 and culling.check_interval(3600) == 60 and culling.check_interval(3) == 1
    assert culling.check_interval(3600, culling.Activity(now - 3590, 0, 0), now) == pytest.approx(10)
    doc = {"last_activity": "2025-01-02T03:04:05.500000Z", "kernels": 2, "connections": 1, "started": "x"}
    parsed = culling.parse_status(doc, [{"execution_state": "busy"}, {"execution_state": "idle"}])
    assert parsed == culling.Activity(1735787045.5, 2, 1, 1)
    with pytest.raises(ValueError):
        culling.parse_status({"kernels": 0})


def test_proxy_path_token_cookie_and_origin_rules() -> None:
    assert split_path("/workbenches/ns/wb/lab/tree") == ("ns", "wb", "lab/tree")
    assert split_path("/workbenches/ns/wb/") == ("ns", "wb", "")
    assert split_path("/workbenches/ns/wb") == ("ns", "wb", None)
    assert split_path("/workbenches/ns") is None and split_path("/serving/ns/wb/") is None
    assert take_token("token=abc&path=x%20y") == ("abc", "path=x+y")
    assert take_token("a=1") == (None, "a=1")
    assert split_cookies("_xsrf=1; kaip-workbench-token=kaip_x; theme=dark") == ("kaip_x", "_xsrf=1; theme=dark")
    assert split_cookies(None) == (None, "")
    assert same_origin(None, "127.0.0.1:8080") and same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not same_origin("http://evil.example", "127.0.0.1:8080") and not same_origin("null", "127.0.0.1:8080")
    assert open_url("http://h/workbenches/a/b/", "kaip_x/y") == "http://h/workbenches/a/b/?token=kaip_x%2Fy"


def test_rendered_pod_and_pod_set() -> None:
    wb = {"metadata": {"name": "wb", "namespace": "team", "uid": "u-1"},
          "spec": {"resources": {"requests": {"cpu": "1"}}, "env": [{"name": "A", "value": "1"}],
                   "serviceAccountName": "default-editor", "culling": {"idleSeconds": 10}}}
    where = render.paths(Path("/state"), "team", "wb")
    pod = render.render_pod(wb, 4242, where)
    (container,) = pod["spec"]["containers"]
    assert "--ServerApp.base_url=/workbenches/team/wb/" in container["args"]
    assert "--ServerApp.ip=127.0.0.1" in container["args"] and "--ServerApp.port=4242" in container["args"]
    assert "--LabApp.news_url=None" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JUPYTER_RUNTIME_DIR"] == "/state/team/wb/jupyter/runtime" and env["A"] == "1"
    assert env["JUPYTER_TOKEN_FILE"] == "/state/team/wb/jupyter/token" and "JUPYTER_TOKEN" not in env
    assert container["workingDir"] == "/state/team/wb/work"
    assert pod["metadata"]["annotations"][render.PORT_ANNOTATION] == "4242"
    (ps,) = render.pod_sets(wb)
    assert ps["name"] == "main" and ps["count"] == 1
    same = [{**ps, "template": {"spec": {"containers": [{"name": "x", "resources": {"requests": {"cpu": "1000m"}}}]}}}]
    assert requests_of([ps]) == requests_of(same)
    culling_only = {**wb, "spec": {**wb["spec"], "culling": {"idleSeconds": 0}}}
    assert render.spec_hash(culling_only) == render.spec_hash(wb)  # culling does not restart the pod
