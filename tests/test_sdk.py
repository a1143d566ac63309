"""The Python SDK (`kaip.Client`) against a live server: the resource verbs, typed errors, a view token refused on
every write, functions and scripts as TrainJobs, pipelines and schedules, canary rollouts with promote and
rollback, knowledge bases and guardrails."""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kaip
from kaip.testing.live import LiveServer, live_server
from kaip.testing.tiny import SYSTEM, build_tiny_chat_model, faq_conversations, write_jsonl

NS = "default"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("sdk") / "home", bookmark_seconds=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[kaip.Client]:
    with kaip.Client(live.url, live.token, namespace=NS) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("sdk-models")
    return (build_tiny_chat_model(root / "a", seed=0), build_tiny_chat_model(root / "b", seed=1),
            write_jsonl(faq_conversations(), root / "faq.jsonl"))


def test_a_fine_tune_writes_registry_models_and_paths_as_trainjob_storage_uris(tmp_path: Path) -> None:
    """A TrainJob's storageUri is `scheme://...` (upstream's CEL rule): the SDK takes `models:/NAME/VERSION` from
    users and writes `models://NAME/VERSION`; a local path becomes `file:///...`; a name starts with a letter."""
    from kaip.sdk.training import _slug, _storage_uri

    assert _storage_uri("models:/faq-base@base", "base_model") == "models://faq-base@base"
    assert _storage_uri("models://faq-base/2", "base_model") == "models://faq-base/2"
    assert _storage_uri(tmp_path, "dataset") == f"file://{tmp_path}"
    assert _slug("2_train") == "train" and _slug("sft-Chat Bot") == "sft-chat-bot"


def test_the_package_exports_the_sdk() -> None:
    import kaip.sdk

    assert set(kaip.sdk.__all__) == set(kaip._SDK_NAMES)
    assert kaip.Client is kaip.sdk.Client
    assert issubclass(kaip.Forbidden, PermissionError) and issubclass(kaip.Unauthorized, PermissionError)
    assert issubclass(kaip.NotFound, LookupError) and issubclass(kaip.Invalid, ValueError)


def test_configuration_comes_from_the_environment(live: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("KAIP_HOME", str(tmp_path))
    monkeypatch.setenv("KAIP_SERVER", live.url)
    monkeypatch.setenv("KAIP_TOKEN", live.token)
    monkeypatch.setenv("KAIP_NAMESPACE", "kube-system")
    with kaip.Client() as c:
        assert (c.server, c.namespace) == (live.url, "kube-system")
        assert c.get("namespaces", "default").name == "default"


# ---- resources and errors ---------------------------------------------------------------------------------------

def test_apply_get_list_watch_wait_delete(client: kaip.Client) -> None:
    cm = client.apply(textwrap.dedent("""
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: sdk-settings, labels: {app: sdk}}
        data: {mode: a}
    """))
    assert isinstance(cm, kaip.Object) and cm.namespace == NS and cm["data"] == {"mode": "a"}
    assert [o.name for o in client.list("configmaps", selector="app=sdk")] == ["sdk-settings"]
    assert client.get("cm", "sdk-settings").labels == {"app": "sdk"}

    events = client.watch("configmaps", name="sdk-settings", timeout=5)
    first = next(events)
    assert first[0] == "ADDED" and first[1]["data"]["mode"] == "a"
    client.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sdk-settings"},
                  "data": {"mode": "b"}})
    kind, obj = next(events)
    assert (kind, obj["data"]["mode"]) == ("MODIFIED", "b")
    events.close()

    got = client.wait("configmaps", "sdk-settings", lambda o: o["data"]["mode"] == "b", timeout=5)
    assert got.metadata["resourceVersion"]
    client.delete("configmaps", "sdk-settings", wait=True)
    with pytest.raises(kaip.NotFound):
        client.get("configmaps", "sdk-settings")
    with pytest.raises(kaip.WaitTimeout):
        client.wait("configmaps", "sdk-settings", "Ready", timeout=0.5)


def test_the_async_client_watches_and_reads_logs(client: kaip.Client, tmp_path: Path) -> None:
    job = client.train(ranks, args={"out_dir": str(tmp_path), "greeting": "hi"}, name="async-logs")

    async def go() -> tuple[list[str], list[str]]:
        async with kaip.AsyncClient(client.server, client.token) as aclient:
            seen = []
            async for kind, obj in aclient.watch("trainjobs", name="async-logs", timeout=120):
                seen.append(kind)
                if obj.is_true("Complete") or obj.is_true("Failed"):
                    break
            pod = (await aclient.list("pods", selector="trainer.kubeflow.org/trainjob-name=async-logs"))[0]
            lines = [line async for line in aclient.logs(pod.name, follow=True)]
            with pytest.raises(kaip.NotFound):
                await aclient.get("trainjobs", "no-such-job")
            return seen, lines

    seen, lines = asyncio.run(go())
    assert seen[0] == "ADDED" and "MODIFIED" in seen and job.refresh().is_true("Complete")
    assert any("hi from rank 0 of 1, sum 1" in line for line in lines), lines


def test_typed_objects_use_the_servers_schemas(client: kaip.Client) -> None:
    queue = client.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                          "metadata": {"name": "sdk-flavor"}, "spec": {"nodeLabels": {"pool": "cpu"}}})
    assert isinstance(queue, kaip.Object)
    model = queue.model()
    assert type(model).__module__.startswith("kaip.api") and model.spec.nodeLabels == {"pool": "cpu"}


def test_errors_are_typed_and_carry_the_servers_status(client: kaip.Client, live: LiveServer) -> None:
    with pytest.raises(kaip.Invalid) as invalid:
        client.apply({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                      "metadata": {"name": "broken"},
                      "spec": {"predictor": {"minReplicas": -1, "model": {"modelFormat": {"name": "sklearn"},
                                                                          "storageUri": "/nowhere"}}}})
    assert invalid.value.code == 422 and "spec.predictor.minReplicas" in invalid.value.fields
    assert invalid.value.status["kind"] == "Status"
    with pytest.raises(kaip.AlreadyExists):
        for _ in range(2):
            client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "twice"}})
    with pytest.raises(kaip.NotFound, match="not found"):
        client.models("no-such-model")
    with kaip.Client(live.url, "not-a-token") as stranger, pytest.raises(kaip.Unauthorized):
        stranger.list("configmaps")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with kaip.Client(dead, "x") as nowhere, pytest.raises(kaip.Unreachable):
        nowhere.get("configmaps", "x")


def test_a_view_token_reads_but_every_write_is_a_permission_error(client: kaip.Client, live: LiveServer,
                                                                  tiny_models: tuple[Path, Path, Path]) -> None:
    client.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sdk-team"}}])
    client.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": "sdk-team"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "reader-view", "namespace": "sdk-team"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "sdk-team"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visible", "namespace": "sdk-team"}}])
    token = client.rest.request_token("sdk-team", "reader")
    model_dir, _, data = tiny_models

    def step() -> None:
        print("x")

    with kaip.Client(live.url, token, namespace="sdk-team") as viewer:
        assert [o.name for o in viewer.list("configmaps")] == ["visible"]  # reads work
        assert viewer.models() == []
        writes: list[tuple[str, Any]] = [
            ("apply", lambda: viewer.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}})),
            ("create", lambda: viewer.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}})),
            ("delete", lambda: viewer.delete("configmaps", "visible")),
            ("train", lambda: viewer.train(step)),
            ("fine_tune", lambda: viewer.fine_tune(base_model=model_dir, dataset=data)),
            ("register_model", lambda: viewer.register_model("m", model_dir)),
            ("run_pipeline", lambda: viewer.run_pipeline({"pipelineInfo": {"name": "p"}, "root": {}})),
            ("schedule_pipeline", lambda: viewer.schedule_pipeline("p", cron="0 0 * * *", name="p")),
            ("deploy", lambda: viewer.deploy(str(model_dir), name="bot", wait=False)),
            ("knowledge_base", lambda: viewer.knowledge_base("kb", sources=[str(data)], wait=False)),
            ("guardrails", lambda: viewer.guardrails("g", inference_service="bot", input={"pii": "redact"})),
        ]
        for what, write in writes:
            with pytest.raises(PermissionError):
                write()
                pytest.fail(f"{what} was not refused")
    # Nothing was written by the refused calls.
    assert [o.name for o in client.list("configmaps", "sdk-team")] == ["visible"]
    assert client.list("trainjobs", "sdk-team") == [] and client.list("inferenceservices", "sdk-team") == []
    assert client.models(namespace="sdk-team") == []


# ---- training ---------------------------------------------------------------------------------------------------

def ranks(out_dir: str, greeting: str) -> None:
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = [dist.get_rank() + 1]
    import torch

    t = torch.tensor(total)
    dist.all_reduce(t)
    print(f"{greeting} from rank {dist.get_rank()} of {dist.get_world_size()}, sum {int(t)}", flush=True)
    with open(os.path.join(out_dir, f"rank-{dist.get_rank()}"), "w") as f:
        f.write(os.environ["LOCAL_RANK"])
    dist.destroy_process_group()


def test_a_function_runs_as_a_distributed_trainjob(client: kaip.Client, tmp_path: Path) -> None:
    job = client.train(ranks, args={"out_dir": str(tmp_path), "greeting": "hello"}, procs_per_node=2,
                       resources={"cpu": "500m"})
    assert isinstance(job, kaip.TrainJob) and job.name.startswith("ranks-")
    job.wait(timeout=180, progress=False)
    assert job.phase == "Complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-0", "rank-1"]
    assert any("hello from rank 0 of 2, sum 3" in line for line in job.logs())
    assert any("hello from rank 1 of 2" in line for line in job.logs(replica="node-0-1"))
    spec = client.get("trainjobs", job.name).spec
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    assert spec["trainer"]["resourcesPerNode"] == {"requests": {"cpu": "500m"}}


def fit_line(steps: int) -> None:
    import torch

    import kaip

    kaip.autolog()
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - (3 * x + 1)) ** 2).mean()
        loss.backward()
        opt.step()
    kaip.log_model(model)


def test_autolog_in_a_function_job_records_a_run_that_registers(client: kaip.Client) -> None:
    job = client.train(fit_line, args={"steps": 6}, experiment="sdk-autolog").wait(timeout=180, progress=False)
    run = job.run
    losses = [v for _, v in run.history("loss")]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    assert (run.params["optimizer"], run.params["lr"]) == ("SGD", "0.1"), run.params
    version = client.register_model("line", job, alias="candidate")
    assert version["source"].endswith(f"/{run.id}/artifacts/model") and version.aliases == ["candidate"]
    assert client.models("line").aliases == {"candidate": "1"}


def test_a_failing_script_raises_failed_with_the_reason(client: kaip.Client, tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("import sys\nprint('about to fail', sys.argv[1:])\nraise SystemExit(3)\n")
    job = client.train(script, args=["--lr", "0.1"], name="boom")
    with pytest.raises(kaip.Failed, match="boom failed"):
        job.wait(timeout=120, progress=False)
    assert any("about to fail ['--lr', '0.1']" in line for line in job.logs())


def test_what_cannot_run_is_refused_before_anything_is_created(client: kaip.Client) -> None:
    before = len(client.list("trainjobs"))

    def outer() -> Any:
        secret = 1

        def inner() -> int:
            return secret
        return inner

    with pytest.raises(ValueError, match="self-contained"):
        client.train(outer())
    with pytest.raises(ValueError, match="lambda"):
        client.train(lambda: None)
    with pytest.raises(ValueError, match="no-such-distribution-xyz"):
        client.train(ranks, packages=["torch", "no-such-distribution-xyz"])
    with pytest.raises(ValueError, match="JSON"):
        client.train(ranks, args={"out_dir": object(), "greeting": "x"})
    with pytest.raises(ValueError, match="lora.rank"):
        client.fine_tune(base_model="models:/x/1", dataset=[{"messages": []}], lora={"rank": 8})
    assert len(client.list("trainjobs")) == before


# ---- pipelines --------------------------------------------------------------------------------------------------

# Components are compiled from their annotations, which `from __future__ import annotations` (above) would turn
# into strings: the pipelines live in a file of their own, as they would in a project.
COMPONENTS = textwrap.dedent('''
    from kfp import dsl


    @dsl.component(base_image="python:3.11")
    def add(a: int, b: int) -> int:
        print(f"adding {a} and {b}")
        return a + b


    @dsl.component(base_image="python:3.11")
    def fail(why: str):
        raise RuntimeError(why)
''')
SUM = textwrap.dedent('''
    @dsl.pipeline(name="sdk-sum")
    def total(x: int = 1, y: int = 2) -> int:
        first = add(a=x, b=y)
        return add(a=first.output, b=10).output
''')
PUBLISH = textwrap.dedent('''
    @dsl.component(base_image="python:3.11")
    def publish(folder: str) -> str:
        import kaip

        return kaip.Client().register_model("from-pipeline", folder).uri


    @dsl.pipeline(name="sdk-publish")
    def publishing(folder: str):
        publish(folder=folder)
''')
FAILS = textwrap.dedent('''
    @dsl.pipeline(name="sdk-fails")
    def fails():
        fail(why="on purpose")
''')


@pytest.mark.slow
def test_pipelines_run_and_schedule_from_python(client: kaip.Client, tmp_path: Path) -> None:
    import runpy

    source = tmp_path / "pipelines.py"
    source.write_text(COMPONENTS + SUM)
    total = runpy.run_path(str(source))["total"]
    run = client.run_pipeline(total, params={"x": 5, "y": 6}, experiment="sdk-exp")
    assert isinstance(run, kaip.PipelineRun)
    run.wait(timeout=240, progress=False)
    assert run.phase == "Succeeded"
    tasks = run.tasks
    assert {t["phase"] for t in tasks.values()} == {"Succeeded"} and len(tasks) == 2
    outputs = [run.outputs(name)["parameters"]["Output"] for name in sorted(tasks)]
    assert sorted(outputs) == [11, 21]
    assert any("adding 5 and 6" in line for name in tasks for line in run.logs(name))
    assert [r.name for r in client.pipeline_runs(experiment="sdk-exp")] == [run.name]

    failing = tmp_path / "fails.py"
    failing.write_text(COMPONENTS + FAILS)
    bad = client.run_pipeline(failing)  # a Python file, compiled with kfp as `kaip run -f` does
    with pytest.raises(kaip.Failed, match="on purpose|fail"):
        bad.wait(timeout=240, progress=False)

    # A task that registers a model (with the SDK, as its namespace's pipeline-runner) is its origin in lineage.
    client.apply([{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "pipeline-runner"}},
                  {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "pipeline-runner-edit"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                   "subjects": [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": NS}]}])
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"\x01")
    publishing = tmp_path / "publish.py"
    publishing.write_text(COMPONENTS + PUBLISH)
    published = client.run_pipeline(publishing, params={"folder": str(tmp_path / "weights")}).wait(timeout=240)
    assert published.outputs("publish")["parameters"]["Output"] == "models:/from-pipeline/1"
    graph = client.lineage("models:/from-pipeline/1")
    tasks = [n for n in graph["nodes"] if n["kind"] == "pipelinetask"]
    assert [t["name"] for t in tasks] == ["publish"] and tasks[0]["attributes"]["run"] == published.name
    assert {"source": tasks[0]["id"], "target": graph["root"], "relation": "registered"} in graph["edges"]

    schedule = client.schedule_pipeline(total, cron="0 0 3 * * 1", params={"x": 1}, name="weekly-sum")
    assert schedule.kind == "RecurringRun" and schedule.spec["trigger"] == {"cronSchedule": {"cron": "0 0 3 * * 1"}}
    assert client.get("recurringruns", "weekly-sum").spec["parameters"] == {"x": 1}


# ---- serving, knowledge bases, guardrails -----------------------------------------------------------------------

@pytest.mark.slow
def test_deploy_canary_promote_and_rollback(client: kaip.Client, tiny_models: tuple[Path, Path, Path]) -> None:
    first, second, _ = tiny_models
    v1 = client.register_model("sdk-bot", first, alias="champion")
    v2 = client.register_model("sdk-bot", second, tags={"note": "second"})
    assert (v1.version, v2.version, v1.aliases, v2.tags["note"]) == ("1", "2", ["champion"], "second")
    bot = client.deploy("models:/sdk-bot@champion", name="sdk-bot", args=["--max_model_len=128"], progress=False)
    assert [(t["percent"], t["latestRevision"]) for t in bot.traffic] == [(100, True)]
    answer = bot.chat("when does the lab open on monday ?", system=SYSTEM, max_tokens=6)
    pieces = list(bot.stream("when does the lab open on monday ?", system=SYSTEM, max_tokens=6))
    assert len(pieces) > 1 and "".join(pieces) == answer  # greedy: the streamed answer is the same answer

    async def streamed() -> list[str]:
        async with kaip.AsyncClient(client.server, client.token) as aclient:
            return [p async for p in aclient.chat_stream("sdk-bot", [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "when does the lab open on monday ?"}], max_tokens=6)]

    assert "".join(asyncio.run(streamed())) == answer
    assert isinstance(bot.complete("the lab opens", max_tokens=3), str)
    assert any(line.strip() for line in bot.logs())  # the replica's log
    assert bot.openai().models.list().data[0].id == "sdk-bot"
    with pytest.raises(ValueError, match="instances"):
        bot.predict()

    bot = client.deploy(v2.uri, name="sdk-bot", canary_percent=30, args=["--max_model_len=128"], progress=False)
    split = {t["revisionName"]: t["percent"] for t in bot.traffic}
    assert sorted(split.values()) == [30, 70], split
    bot.promote()
    assert [t["percent"] for t in bot.traffic] == [100]
    latest = bot.traffic[0]["revisionName"]
    bot.rollback()
    serving = [t["revisionName"] for t in bot.traffic if t["percent"]]
    assert len(serving) == 1 and serving[0] != latest, bot.traffic
    assert bot.object.spec["predictor"]["model"]["storageUri"] == "models:/sdk-bot@champion"
    assert "sdk-bot" in bot._repr_html_()


def test_predict_speaks_kserve_v1_and_open_inference_v2(client: kaip.Client, tmp_path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    (tmp_path / "iris").mkdir()
    joblib.dump(LogisticRegression(max_iter=300).fit(x, y), tmp_path / "iris" / "model.joblib")
    iris = client.deploy(str(tmp_path / "iris"), name="sdk-iris", model_format="sklearn", progress=False)
    rows = [[6.8, 2.8, 4.8, 1.4], [5.1, 3.5, 1.4, 0.2]]
    assert iris.predict(rows)["predictions"] == [1, 0]
    v2 = iris.predict(inputs=[{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": rows}])
    assert v2["outputs"][0]["data"] == [1, 0]


@pytest.mark.slow
def test_knowledge_base_and_guardrails(client: kaip.Client, tmp_path: Path,
                                       tiny_models: tuple[Path, Path, Path]) -> None:
    (tmp_path / "hours.md").write_text("# Opening hours\n\nThe pharmacy opens at 9 on saturdays.\n")
    (tmp_path / "parking.md").write_text("# Parking\n\nVisitors park in garage B, level 2.\n")
    kb = client.knowledge_base("sdk-docs", sources=[str(tmp_path / "*.md")], top_k=1)
    passages = kb.query("where do visitors park?")
    assert len(passages) == 1 and "garage B" in passages[0]["text"]

    guard = client.guardrails("sdk-guard", inference_service="sdk-guarded", input={"pii": "redact"},
                              output={"hap": {"action": "block"}})
    assert sorted(guard.detectors()) == ["hap", "pii"]
    found = guard.detect("my social security number is 123-45-6789", detectors=["pii"])
    assert any("123-45-6789" in d.get("text", "") for d in found), found
    with pytest.raises(kaip.ApiError):
        client.guardrails("sdk-guard-bad", inference_service="x", input={"no-such-detector": "block"}).detect("hi")

    # A chatbot deployed with both: retrieval from the knowledge base and PII redacted on the way in.
    bot = client.deploy(str(tiny_models[0]), name="sdk-rag", knowledge_bases=[kb], args=["--max_model_len=128"],
                        guardrails={"input": {"pii": "redact"}}, progress=False)
    assert bot.object.annotations["kaip.dev/knowledge-bases"] == "sdk-docs"
    assert client.get("guardrailsorchestrators", "sdk-rag-guardrails").spec["orchestratorConfig"] == \
        "sdk-rag-guardrails"
    reply = bot.openai().chat.completions.create(model="sdk-rag", max_tokens=4, messages=[
        {"role": "user", "content": "where do visitors park? my ssn is 123-45-6789"}])
    sources = (reply.model_extra or {}).get("sources")
    assert sources and "parking.md" in json.dumps(sources), reply.model_extra
