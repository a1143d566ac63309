"""End to end: sklearn InferenceServices on a live server, driven with real clients (tritonclient for Open
Inference v2, plain HTTP for KServe v1), through the gateway: bad input, a model that cannot load, canary and
rollback, kill -9 under load, scale to zero and back, the prediction log, CloudEvents and metrics."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import serving_fixtures  # noqa: E402
from kaip.cli.main import app as cli
from kaip.testing.live import LiveServer
from serving_fixtures import (
    apply_isvc,
    build_iris_model,
    condition,
    get_isvc,
    isvc_doc,
    replica_pods,
    wait_for,
    wait_ready,
)

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)
pytestmark = pytest.mark.slow
IRIS_ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6], [5.1, 3.5, 1.4, 0.2]]


class Sink:
    """A CloudEvents receiver: records each POST's headers and body."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"


@pytest.fixture(scope="module")
def iris(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = build_iris_model(tmp_path_factory.mktemp("models") / "iris")
    sink = Sink()
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("iris", {"minReplicas": 1, "logger": {"mode": "all", "url": sink.url},
                                        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": str(folder)}}))
        wait_ready(c, "iris")
    import joblib

    return {"folder": folder, "model": joblib.load(folder / "model.joblib"), "sink": sink}


def cli_run(server: LiveServer, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"KAIP_SERVER": server.url, "KAIP_TOKEN": server.token})
    assert result.exit_code == 0, result.output
    return result.output


def test_v1_predict_and_tritonclient_v2(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    import tritonclient.http as triton

    expected = iris["model"].predict(np.array(IRIS_ROWS)).tolist()
    with serving_server.client() as c:
        resp = c.post("/serving/default/iris/v1/models/iris:predict", json={"instances": IRIS_ROWS})
        assert resp.status_code == 200 and resp.json() == {"predictions": expected}
        assert c.get("/serving/default/iris/v1/models/iris").json() == {"name": "iris", "ready": True}
        status = get_isvc(c, "iris")["status"]
    assert status["url"].endswith("/serving/default/iris")
    assert status["components"]["predictor"]["traffic"][0]["percent"] == 100

    host = serving_server.url.removeprefix("http://")
    client = triton.InferenceServerClient(url=f"{host}/serving/default/iris")
    auth = {"Authorization": f"Bearer {serving_server.token}"}
    assert client.is_server_live(headers=auth) and client.is_model_ready("iris", headers=auth)
    meta = client.get_model_metadata("iris", headers=auth)
    assert meta["inputs"][0]["shape"] == [-1, 4]
    for binary in (True, False):
        x = triton.InferInput("input-0", [3, 4], "FP64")
        x.set_data_from_numpy(np.array(IRIS_ROWS, dtype=np.float64), binary_data=binary)
        out = triton.InferRequestedOutput("output-0", binary_data=binary)
        result = client.infer("iris", [x], outputs=[out], headers=dict(auth))  # infer() adds to the dict
        assert result.as_numpy("output-0").tolist() == expected
    client.close()


def test_bad_input_gets_precise_4xx(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    base = "/serving/default/iris"
    with serving_server.client() as c:
        cases = [
            ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                                    "data": [1, 2, 3]}]}, 400, "needs 8 elements"),
            ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32",
                                                    "data": [1, 2, 3]}]}, 400, "expected 4 features"),
            ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT32",
                                                    "data": [1.5, 2, 3, 4]}]}, 400, "not valid for datatype INT32"),
            ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES",
                                                    "data": ["x"]}]}, 400, "not numeric"),
            ("/v2/models/nope/infer", {"inputs": []}, 404, "Model with name nope does not exist"),
            ("/v1/models/iris:predict", {"instances": [[1, 2]]}, 400, "expected 4 features"),
            ("/v1/models/iris:predict", {"rows": []}, 400, "instances"),
        ]
        for path, body, code, text in cases:
            resp = c.post(base + path, json=body)
            assert resp.status_code == code and text in resp.json()["error"], (path, resp.text)
        resp = c.post(base + "/v1/models/iris:predict", content=b"{bad json",
                      headers={"content-type": "application/json"})
        assert resp.status_code == 400 and "Unrecognized request format" in resp.json()["error"]
        resp = c.post(base + "/v1/models/iris:predict", content=b"x" * (4 * 1024 * 1024))
        assert resp.status_code == 413
        assert c.post("/serving/default/missing/v1/models/missing:predict", json={}).status_code == 404
    anonymous = httpx.post(serving_server.url + base + "/v1/models/iris:predict", json={"instances": IRIS_ROWS})
    assert anonymous.status_code == 401


def test_model_that_cannot_load_reports_why_and_backs_off(serving_server: LiveServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"this is not a model")
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("broken", {"sklearn": {"storageUri": str(broken)}}))
        cond = wait_for(lambda: (lambda x: x if x.get("reason") == "RevisionFailed" else None)(
            condition(get_isvc(c, "broken"), "PredictorReady")), 30, what="RevisionFailed")
        assert "cannot load model 'broken'" in cond["message"] and cond["status"] == "False"
        assert condition(get_isvc(c, "broken"), "Ready")["status"] == "False"
        pod = replica_pods(c, "broken")[0]
        cs = pod["status"]["containerStatuses"][0]
        assert cs["restartCount"] <= 3  # exponential back-off, not a tight crash loop
        apply_isvc(c, isvc_doc("remote", {"sklearn": {"storageUri": "s3://bucket/iris"}}))
        cond = wait_for(lambda: condition(get_isvc(c, "remote"), "PredictorReady") or None, 15)
        assert cond["reason"] == "InvalidStorageURI" and "Kaip serves offline" in cond["message"]
        assert replica_pods(c, "remote") == []
        for name in ("broken", "remote"):
            c.delete(f"/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices/{name}")


def _load(c: httpx.Client, path: str, body: dict[str, Any], n: int, workers: int = 8) -> tuple[Counter[str], list[Any]]:
    seen: Counter[str] = Counter()
    failures: list[Any] = []

    def one(_: int) -> None:
        try:
            r = c.post(path, json=body)
        except httpx.HTTPError as err:
            failures.append(repr(err))
            return
        if r.status_code != 200:
            failures.append((r.status_code, r.text))
        else:
            seen[r.headers["x-kaip-revision"]] += 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return seen, failures


def test_canary_split_promotion_and_rollback(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": str(iris["folder"])}
    path = "/serving/default/canary/v1/models/canary:predict"
    body = {"instances": IRIS_ROWS}
    with serving_server.client(limits=httpx.Limits(max_connections=16)) as c:
        apply_isvc(c, isvc_doc("canary", {"model": model}))
        first = wait_ready(c, "canary")["status"]["components"]["predictor"]["latestRolledoutRevision"]
        apply_isvc(c, isvc_doc("canary", {"canaryTrafficPercent": 20, "model": {**model, "args": ["--variant=b"]}}))
        status = wait_for(lambda: (lambda s: s if any(t["percent"] == 20 for t in s["components"]["predictor"].get(
            "traffic", [])) else None)(get_isvc(c, "canary")["status"]), 30, what="a 20% canary")
        second = next(t["revisionName"] for t in status["components"]["predictor"]["traffic"] if t["latestRevision"])
        assert second != first
        seen, failures = _load(c, path, body, 2000)
        assert not failures
        assert abs(seen[second] / 2000 - 0.20) <= 0.03, seen

        # Promotion and rollback under load: no request fails.
        stop = threading.Event()
        results: list[tuple[Counter[str], list[Any]]] = []

        def background() -> None:
            while not stop.is_set():
                results.append(_load(c, path, body, 40, workers=4))

        loader = threading.Thread(target=background)
        loader.start()
        try:
            apply_isvc(c, isvc_doc("canary", {"model": {**model, "args": ["--variant=b"]}}))
            wait_for(lambda: get_isvc(c, "canary")["status"]["components"]["predictor"].get(
                "latestRolledoutRevision") == second, 30, what="promotion")
            cli_run(serving_server, "rollout", "undo", "isvc/canary")
            final = wait_for(lambda: (lambda p: p if p.get("latestRolledoutRevision") == first and
                                      p["traffic"] == [{"revisionName": first, "percent": 100, "latestRevision": True}]
                                      else None)(get_isvc(c, "canary")["status"]["components"]["predictor"]), 30,
                             what="rollback")
            time.sleep(1.0)
        finally:
            stop.set()
            loader.join()
        assert final["previousRolledoutRevision"] == second
        assert not [f for _, fails in results for f in fails]
        assert sum(sum(s.values()) for s, _ in results) > 40


def _runtime_pids(pod: dict[str, Any]) -> list[int]:
    shim = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://").split("@")[0])
    children = Path(f"/proc/{shim}/task/{shim}/children").read_text().split()
    return [int(p) for p in children] + [shim]


def test_kill_9_under_load_is_retried_and_replaced(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": str(iris["folder"])}
    path = "/serving/default/sturdy/v1/models/sturdy:predict"
    with serving_server.client(limits=httpx.Limits(max_connections=16)) as c:
        apply_isvc(c, isvc_doc("sturdy", {"minReplicas": 2, "maxReplicas": 2, "model": model}))
        wait_for(lambda: len([p for p in replica_pods(c, "sturdy") if p.get("status", {}).get("phase") == "Running"])
                 == 2 and wait_ready(c, "sturdy"), 30, what="two replicas")
        wait_for(lambda: len(serving_server.server.serving.ready_pods("default", get_isvc(c, "sturdy")["status"][
            "components"]["predictor"]["latestRolledoutRevision"])) == 2, 30, what="two ready replicas")
        victim = replica_pods(c, "sturdy")[0]
        stop = threading.Event()
        results: list[tuple[Counter[str], list[Any]]] = []

        def background() -> None:
            while not stop.is_set():
                results.append(_load(c, path, {"instances": IRIS_ROWS}, 40, workers=6))

        loader = threading.Thread(target=background)
        loader.start()
        try:
            time.sleep(0.5)
            for pid in _runtime_pids(victim):
                os.kill(pid, signal.SIGKILL)
            restarted = wait_for(lambda: next((p for p in replica_pods(c, "sturdy") if p["metadata"]["name"] ==
                                               victim["metadata"]["name"] and p["status"]["containerStatuses"][0][
                                                   "restartCount"] >= 1), None), 30, what="the replica replaced")
            wait_for(lambda: victim["metadata"]["name"] in serving_server.server.serving.ready_pods(
                "default", victim["metadata"]["labels"]["serving.knative.dev/revision"]), 30, what="ready again")
            time.sleep(0.5)
        finally:
            stop.set()
            loader.join()
        assert restarted["status"]["containerStatuses"][0]["restartCount"] >= 1
        assert not [f for _, fails in results for f in fails]
        assert sum(sum(s.values()) for s, _ in results) > 100


def test_scale_to_zero_then_cold_start_holds_the_request(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": str(iris["folder"])}
    path = "/serving/default/sleepy/v1/models/sleepy:predict"
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("sleepy", {"minReplicas": 0, "maxReplicas": 2, "model": model},
                               annotations={"autoscaling.knative.dev/window": "6s"}))
        wait_ready(c, "sleepy")
        assert c.post(path, json={"instances": IRIS_ROWS}).status_code == 200
        wait_for(lambda: replica_pods(c, "sleepy") == [], 30, what="scale to zero")
        assert condition(get_isvc(c, "sleepy"), "Ready")["status"] == "True"  # scaled to zero is still Ready
        started = time.monotonic()
        resp = c.post(path, json={"instances": IRIS_ROWS})
        cold = time.monotonic() - started
        assert resp.status_code == 200 and resp.json()["predictions"] == iris["model"].predict(
            np.array(IRIS_ROWS)).tolist()
        assert cold > 0.3  # it really waited for a replica to start
        assert len(replica_pods(c, "sleepy")) == 1


def test_prediction_log_cloudevents_and_metrics(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    with serving_server.client() as c:
        resp = c.post("/serving/default/iris/v1/models/iris:predict", json={"instances": IRIS_ROWS[:1]},
                      headers={"x-request-id": "req-42"})
        assert resp.status_code == 200
        revision = resp.headers["x-kaip-revision"]
        records = wait_for(lambda: [r for r in c.get("/serving/-/predictions/default/iris",
                                                       params={"since": "1h"}).json()["items"] if r["id"] == "req-42"],
                           10)
        assert records[0]["request"] == {"instances": IRIS_ROWS[:1]}
        assert records[0]["response"] == resp.json() and records[0]["revision"] == revision
        metrics = c.get("/metrics").text
    out = cli_run(serving_server, "predictions", "isvc/iris", "--since", "1h")
    assert "req-42" in out and revision in out
    events = wait_for(lambda: [e for e in iris["sink"].events if e[0].get("ce-id") == "req-42"] if len(
        [e for e in iris["sink"].events if e[0].get("ce-id") == "req-42"]) == 2 else None, 10)
    kinds = {h["ce-type"]: body for h, body in events}
    assert json.loads(kinds["org.kubeflow.serving.inference.request"]) == {"instances": IRIS_ROWS[:1]}
    assert json.loads(kinds["org.kubeflow.serving.inference.response"]) == resp.json()
    assert all(h["ce-inferenceservicename"] == "iris" and h["ce-namespace"] == "default" and
               h["ce-specversion"] == "1.0" for h, _ in events)
    line = f'kaip_serving_requests_total{{code="200",inferenceservice="iris",namespace="default",protocol="v1",' \
           f'revision="{revision}"}}'
    assert line in metrics
    assert 'kaip_serving_replicas{inferenceservice="iris"' in metrics
    assert 'request_predict_seconds_count{' in metrics  # the runtime's own metrics, federated


def test_host_header_routing_as_kserves_ingress(serving_server: LiveServer, iris: dict[str, Any]) -> None:
    """`Host: {name}.{namespace}.example.com` reaches the InferenceService as its `/serving/...` path does."""
    expected = iris["model"].predict(np.array(IRIS_ROWS)).tolist()
    with serving_server.client() as c:
        for host in ("iris.default.example.com", "iris-predictor.default.example.com:8080"):
            r = c.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS}, headers={"Host": host})
            assert r.status_code == 200 and r.json() == {"predictions": expected}, r.text
        r = c.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS},
                   headers={"Host": "nope.default.example.com"})
        assert r.status_code == 404 and "default/nope not found" in r.text
        assert c.get("/healthz").status_code == 200  # other hosts are the API as before
    with httpx.Client(base_url=serving_server.url) as anonymous:
        r = anonymous.post("/v1/models/iris:predict", json={"instances": IRIS_ROWS},
                           headers={"Host": "iris.default.example.com"})
        assert r.status_code == 401
