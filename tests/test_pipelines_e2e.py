"""End to end with the real kfp SDK: `kaip run` on a live server runs a compiled training pipeline as Pods (kfp's
own executor in each), serves a rerun from cache, retries a failing task and fails the run with its log, and
refuses bad IR with a 422 that names the task and field."""

from __future__ import annotations

import hashlib
import json
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from kaip.cli.main import app
from kaip.cli.pipelines import compile_python
from kaip.store.tables import lineage_edges, lineage_nodes
from kaip.testing.live import LiveServer

pytestmark = pytest.mark.slow

RUNS = "/apis/kaip.dev/v1alpha1/namespaces/default/pipelineruns"

TRAIN = textwrap.dedent('''
    from kfp import dsl
    from kfp.dsl import Dataset, Input, Metrics, Model, Output

    IMAGE = "python:3.11"


    @dsl.component(base_image=IMAGE)
    def prepare(n: int, seed: int, data: Output[Dataset]):
        import numpy as np
        from sklearn.datasets import make_classification
        x, y = make_classification(n_samples=n, n_features=6, random_state=seed)
        with open(data.path, "wb") as f:
            np.savez(f, x=x, y=y)
        data.metadata["rows"] = n


    @dsl.component(base_image=IMAGE)
    def train(data: Input[Dataset], c: float, model: Output[Model]):
        import joblib
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        d = np.load(data.path)
        half = len(d["y"]) // 2
        joblib.dump(LogisticRegression(C=c).fit(d["x"][:half], d["y"][:half]), model.path)
        model.metadata["framework"] = "sklearn"


    @dsl.component(base_image=IMAGE)
    def evaluate(data: Input[Dataset], model: Input[Model], metrics: Output[Metrics]) -> float:
        import joblib
        import numpy as np
        d = np.load(data.path)
        half = len(d["y"]) // 2
        accuracy = float(joblib.load(model.path).score(d["x"][half:], d["y"][half:]))
        metrics.log_metric("accuracy", accuracy)
        return accuracy


    @dsl.component(base_image=IMAGE)
    def register(model: Input[Model], accuracy: float, registered: Output[Model]) -> str:
        import shutil
        shutil.copy(model.path, registered.path)
        registered.metadata["accuracy"] = accuracy
        return registered.uri


    @dsl.pipeline(name="train-and-register")
    def train_and_register(n: int = 200, seed: int = 0, c: float = 1.0, threshold: float = 0.5):
        data = prepare(n=n, seed=seed)
        model = train(data=data.outputs["data"], c=c)
        ev = evaluate(data=data.outputs["data"], model=model.outputs["model"])
        with dsl.If(ev.outputs["Output"] > threshold):
            register(model=model.outputs["model"], accuracy=ev.outputs["Output"])
''')

FLAKY = textwrap.dedent('''
    from kfp import dsl


    @dsl.component(base_image="python:3.11")
    def load(path: str) -> int:
        import sys
        print(f"cannot read {path}: the file is not there", file=sys.stderr)
        raise SystemExit(4)


    @dsl.component(base_image="python:3.11")
    def report(rows: int):
        print(rows)


    @dsl.pipeline(name="flaky")
    def flaky(path: str = "/nonexistent/data.csv"):
        rows = load(path=path).set_retry(num_retries=2, backoff_duration="0s")
        report(rows=rows.output)
''')


CONTAINERS = textwrap.dedent('''
    from kfp import dsl


    @dsl.container_component
    def shout(text: str, loud: dsl.OutputPath(str)):
        return dsl.ContainerSpec(image="alpine:3.20", command=["sh", "-c", 'printf "%s!" "$0" > "$1"'],
                                 args=[text, loud])


    @dsl.component(base_image="python:3.11")
    def length(s: str) -> int:
        return len(s)


    @dsl.container_component
    def proprietary(text: str):
        return dsl.ContainerSpec(image="registry.example/tool:1", command=["/opt/tool/bin/run"], args=[text])


    @dsl.pipeline(name="containers")
    def containers(text: str = "hello"):
        loud = shout(text=text)
        length(s=loud.outputs["loud"])
        proprietary(text=text)
''')


class Kaip:
    def __init__(self, server: LiveServer) -> None:
        self.env = {"KAIP_SERVER": server.url, "KAIP_TOKEN": server.token, "KAIP_HOME": "/nonexistent"}
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(app, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == code, f"kaip {' '.join(args)}: {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr


@pytest.fixture
def kaip(server: LiveServer) -> Iterator[Kaip]:
    yield Kaip(server)
    for pid_file in (server.server.home / "pods").rglob("pid"):
        ref = server.server.executor.adopt(pid_file.parent)
        if ref is not None:
            server.server.executor.signal(ref, signal.SIGKILL)


def _run_name(output: str) -> str:
    return next(line.split()[0].removeprefix("pipelinerun/") for line in output.splitlines()
                if line.startswith("pipelinerun/") and line.rstrip().endswith("created"))


def _get(server: LiveServer, name: str) -> dict[str, Any]:
    with server.client() as c:
        return c.get(f"{RUNS}/{name}").json()


def test_train_evaluate_register_then_cached_rerun(server: LiveServer, kaip: Kaip, tmp_path: Path) -> None:
    source = tmp_path / "train.py"
    source.write_text(TRAIN)
    out = kaip("run", "-f", str(source), "-p", "n=300", "-p", "threshold=0.6", "--wait")
    first = _run_name(out)
    assert f"pipelinerun/{first} Succeeded" in out
    run = _get(server, first)
    tasks = run["status"]["tasks"]
    assert {k: v["phase"] for k, v in tasks.items()} == {
        "prepare": "Succeeded", "train": "Succeeded", "evaluate": "Succeeded", "condition-1/register": "Succeeded"}
    assert not any(v.get("cached") for v in tasks.values())
    accuracy = tasks["evaluate"]["outputs"]["parameters"]["Output"]
    assert 0.6 < accuracy <= 1.0
    assert tasks["evaluate"]["outputs"]["artifacts"]["metrics"][0]["metadata"] == {"accuracy": accuracy}
    registered = tasks["condition-1/register"]["outputs"]
    assert registered["artifacts"]["registered"][0]["metadata"]["accuracy"] == accuracy
    model_uri = tasks["train"]["outputs"]["artifacts"]["model"][0]["uri"]
    assert Path(registered["parameters"]["Output"]).read_bytes() == Path(model_uri).read_bytes()
    assert "Wrote executor output file" in tasks["train"]["log"]  # kfp's own executor ran it
    assert run["status"]["parameters"] == {"n": 300, "seed": 0, "c": 1.0, "threshold": 0.6}

    # Lineage: the train task consumed prepare's dataset and produced the model register consumed.
    with server.server.store.engine.connect() as conn:
        edges = {(r.src, r.dst, r.relation) for r in conn.execute(select(lineage_edges))}
    data_uri = tasks["prepare"]["outputs"]["artifacts"]["data"][0]["uri"]
    task = f"pipelinetask:default/{first}"
    assert (f"artifact:{data_uri}", f"{task}/train", "consumed_by") in edges
    assert (f"{task}/train", f"artifact:{model_uri}", "produced") in edges
    assert (f"artifact:{model_uri}", f"{task}/condition-1/register", "consumed_by") in edges
    with server.server.store.engine.connect() as conn:
        attrs = json.loads(conn.execute(select(lineage_nodes.c.attrs).where(
            lineage_nodes.c.key == f"artifact:{model_uri}")).scalar_one())
    assert attrs == {"schemaTitle": "system.Model", "output": "model", "size": Path(model_uri).stat().st_size,
                     "sha256": hashlib.sha256(Path(model_uri).read_bytes()).hexdigest()}

    # The same inputs again, from the compiled IR YAML: every task is served from the cache.
    ir_file = tmp_path / "train.yaml"
    ir_file.write_text(yaml.safe_dump(compile_python(source)))
    out = kaip("run", "-f", str(ir_file), "-p", "n=300", "-p", "threshold=0.6", "--wait")
    second = _get(server, _run_name(out))
    assert second["status"]["phase"] == "Succeeded"
    assert all(v.get("cached") and v["cachedFrom"] == f"default/{first}" for v in second["status"]["tasks"].values())
    assert second["status"]["tasks"]["evaluate"]["outputs"] == tasks["evaluate"]["outputs"]
    assert not [p for p in server.client().get("/api/v1/namespaces/default/pods").json()["items"]
                if p["metadata"]["ownerReferences"][0]["name"] == second["metadata"]["name"]]

    # A higher threshold: the cached steps are reused and the condition skips register (no Pod runs at all).
    out = kaip("run", "-f", str(ir_file), "-p", "n=300", "-p", "threshold=1.01", "--wait")
    third = _get(server, _run_name(out))["status"]
    assert third["phase"] == "Succeeded"
    assert third["nodes"]["condition-1"]["phase"] == "Skipped"
    assert third["nodes"]["condition-1"]["message"].startswith("condition false: inputs.parameter_values[")
    assert sorted(third["tasks"]) == ["evaluate", "prepare", "train"]


def test_failing_task_is_retried_then_fails_the_run_with_its_log(server: LiveServer, kaip: Kaip,
                                                                 tmp_path: Path) -> None:
    source = tmp_path / "flaky.py"
    source.write_text(FLAKY)
    out = kaip("run", "-f", str(source), "--wait", code=1)
    name = _run_name(out)
    status = _get(server, name)["status"]
    load = status["tasks"]["load"]
    assert load["phase"] == "Failed" and load["attempts"] == 3
    assert "failed after 3 attempt(s): exit code 4" in load["message"]
    assert "cannot read /nonexistent/data.csv: the file is not there" in load["message"]
    assert status["tasks"]["report"] == {"phase": "Skipped", "message": "upstream task load failed"}
    assert status["phase"] == "Failed" and "load: failed after 3 attempt(s)" in status["message"]
    assert f"pipelinerun/{name} Failed" in out
    with server.client() as c:
        pods = [p["metadata"]["name"] for p in c.get("/api/v1/namespaces/default/pods").json()["items"]]
        events = [e["reason"] for e in c.get("/api/v1/namespaces/default/events").json()["items"]
                  if e["involvedObject"]["name"] == name]
    assert len([p for p in pods if "-load-" in p]) == 3
    assert "TaskRetry" in events and "TaskFailed" in events


def test_bad_input_is_refused_precisely(server: LiveServer, kaip: Kaip, tmp_path: Path) -> None:
    source = tmp_path / "flaky.py"
    source.write_text(FLAKY)
    ir = compile_python(source)

    def post(spec: dict[str, Any]) -> Any:
        body = {"apiVersion": "kaip.dev/v1alpha1", "kind": "PipelineRun", "metadata": {"name": "bad"}, "spec": spec}
        with server.client() as c:
            return c.post(RUNS, json=body)

    unknown_input = json.loads(json.dumps(ir))
    unknown_input["root"]["dag"]["tasks"]["report"]["inputs"]["parameters"]["count"] = {
        "runtimeValue": {"constant": 1}}
    resp = post({"pipelineSpec": unknown_input})
    assert resp.status_code == 422
    cause = resp.json()["details"]["causes"][0]
    assert cause["field"] == "spec.pipelineSpec"
    assert ("root.dag.tasks.report.inputs.parameters.count: unknown input 'count' of component 'comp-report' "
            "(its parameters: rows)") in cause["message"]

    cycle = json.loads(json.dumps(ir))
    cycle["root"]["dag"]["tasks"]["load"]["dependentTasks"] = ["report"]
    resp = post({"pipelineSpec": cycle})
    assert resp.status_code == 422 and "dependency cycle load -> report -> load" in resp.text

    resp = post({"pipelineSpec": ir, "parameters": {"paht": "/x"}})
    assert resp.status_code == 422
    assert "parameters.paht: unknown parameter (the pipeline's parameters: path)" in resp.text

    resp = post({"pipelineSpec": ir, "retries": 1})
    assert resp.status_code == 422
    assert resp.json()["details"]["causes"][0] == {"field": "spec.retries", "message": "unknown field",
                                                   "reason": "FieldValueUnknown"}

    # A run of a Pipeline that does not exist is accepted, then fails with a condition that says why.
    with server.client() as c:
        assert c.post(RUNS, json={"apiVersion": "kaip.dev/v1alpha1", "kind": "PipelineRun",
                                  "metadata": {"name": "orphan"}, "spec": {"pipelineRef": {"name": "nope"}}}
                      ).status_code == 201
    deadline = time.monotonic() + 20
    while (status := _get(server, "orphan").get("status") or {}).get("phase") != "Failed":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    cond = status["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Succeeded", "False", "InvalidPipeline")
    assert cond["message"] == "spec.pipelineRef.name: pipeline 'nope' not found in namespace 'default'"

    # A Pipeline is checked on admission too; a run by reference records the version it ran.
    pipelines = "/apis/kaip.dev/v1alpha1/namespaces/default/pipelines"
    with server.client() as c:
        resp = c.post(pipelines, json={"apiVersion": "kaip.dev/v1alpha1", "kind": "Pipeline",
                                       "metadata": {"name": "flaky"}, "spec": {"pipelineSpec": cycle}})
        assert resp.status_code == 422 and "dependency cycle load -> report -> load" in resp.text
        assert c.post(pipelines, json={"apiVersion": "kaip.dev/v1alpha1", "kind": "Pipeline",
                                       "metadata": {"name": "flaky"}, "spec": {"pipelineSpec": ir}}).status_code == 201
        assert c.post(RUNS, json={"apiVersion": "kaip.dev/v1alpha1", "kind": "PipelineRun",
                                  "metadata": {"name": "by-ref"},
                                  "spec": {"pipelineRef": {"name": "flaky"}, "parameters": {"paht": "/x"}}}
                      ).status_code == 201
    deadline = time.monotonic() + 20
    while (status := _get(server, "by-ref").get("status") or {}).get("phase") != "Failed":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["message"] == "parameters.paht: unknown parameter (the pipeline's parameters: path)"

    # `kaip run` on something that is no pipeline at all.
    junk = tmp_path / "junk.yaml"
    junk.write_text("kind: ConfigMap\n")
    assert "neither Kubeflow Pipelines IR" in kaip("run", "-f", str(junk), code=1)


def test_container_components_run_their_command_or_are_refused_clearly(server: LiveServer, kaip: Kaip,
                                                                        tmp_path: Path) -> None:
    source = tmp_path / "containers.py"
    source.write_text(CONTAINERS)
    out = kaip("run", "-f", str(source), "-p", "text=kaip", "--wait", code=1)
    tasks = _get(server, _run_name(out))["status"]["tasks"]
    assert tasks["shout"]["phase"] == "Succeeded"
    assert tasks["shout"]["outputs"]["parameters"] == {"loud": "kaip!"}  # the placeholders were substituted
    assert tasks["length"]["outputs"]["parameters"] == {"Output": 5}
    assert tasks["proprietary"]["phase"] == "Failed"
    assert tasks["proprietary"]["message"] == (
        "task proprietary: container command '/opt/tool/bin/run' (image 'registry.example/tool:1') is not "
        "available on this machine; the local executor runs commands, not images")


SLOW = textwrap.dedent('''
    from kfp import dsl


    @dsl.component(base_image="python:3.11")
    def slow(x: int) -> int:
        import time
        time.sleep(2)
        return x * 2


    @dsl.component(base_image="python:3.11")
    def plus_one(x: int) -> int:
        return x + 1


    @dsl.pipeline(name="slow")
    def slow_pipeline(x: int = 20):
        plus_one(x=slow(x=x).output)
''')


def test_a_restarted_server_finishes_the_run(tmp_path: Path) -> None:
    """No truth only in memory: the server stops while a task's Pod runs; the next one adopts it and finishes."""
    from kaip.testing.live import live_server

    source = tmp_path / "slow.py"
    source.write_text(SLOW)
    body = {"apiVersion": "kaip.dev/v1alpha1", "kind": "PipelineRun", "metadata": {"name": "survivor"},
            "spec": {"pipelineSpec": compile_python(source)}}
    home = tmp_path / "home"
    with live_server(home, bookmark_seconds=0.5, stop_workloads=False) as first, first.client() as c:
        assert c.post(RUNS, json=body).status_code == 201
        deadline = time.monotonic() + 20
        while ((c.get(f"{RUNS}/survivor").json().get("status") or {}).get("tasks") or {}).get(
                "slow", {}).get("phase") != "Running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with live_server(home, bookmark_seconds=0.5) as second:
        deadline = time.monotonic() + 30
        while (status := _get(second, "survivor").get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    assert status["phase"] == "Succeeded", status
    assert status["tasks"]["slow"]["attempts"] == 1  # adopted, not started again
    assert status["tasks"]["plus-one"]["outputs"]["parameters"] == {"Output": 41}
