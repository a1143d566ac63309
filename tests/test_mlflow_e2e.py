"""The real `mlflow` client against a live Kaip server: tracking, registry, artifacts, lineage, isolation, bad input."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.testing.live import LiveServer

MLMODEL = """artifact_path: model
flavors:
  python_function:
    loader_module: kaip.testing
    python_version: 3.11.7
mlflow_version: 3.17.2
model_uuid: 0f1e2d3c4b5a69788796a5b4c3d2e1f0
"""


def make_token(server: LiveServer, namespace: str, role: str = "edit", account: str = "ml") -> str:
    """A service-account token with `role` in `namespace` (both created as needed), through the resource API."""
    with server.client() as admin:
        r = admin.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": namespace}})
        assert r.status_code in (201, 409), r.text
        r = admin.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                       json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
        assert r.status_code == 201, r.text
        r = admin.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", json={
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{account}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                       json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
        assert r.status_code == 201, r.text
        return r.json()["status"]["token"]


@pytest.fixture
def mlflow_env(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The mlflow module pointed at the live server; `use(token)` switches identity."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    mlflow.set_tracking_uri(server.url)

    def use(token: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)

    yield use
    while mlflow.active_run():
        mlflow.end_run()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_script_search_register_alias_download_and_lineage(server: LiveServer, mlflow_env: Any,
                                                                      tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    token = make_token(server, "team-a")
    mlflow_env(token)
    experiment = mlflow.set_experiment("chatbot-finetune")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "answer": "a{i}"}}\n' for i in range(100)))
    digest = sha256(data)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text(MLMODEL)
    weights = os.urandom(4 * 1024 * 1024 + 17)  # over the API's 3 MiB body limit: uploads are streamed
    (model_dir / "weights.bin").write_bytes(weights)

    # A typical training script.
    with mlflow.start_run(run_name="lora-r8") as run:
        mlflow.log_params({"lr": "0.01", "epochs": 3, "base_model": "smollm2-135m"})
        for step in range(30):
            mlflow.log_metric("loss", 2.0 / (step + 1), step=step)
        mlflow.log_metrics({"eval_accuracy": 0.91, "eval_f1": 0.88}, step=29)
        mlflow.set_tag("team", "nlp")
        mlflow.set_tag("kaip.base_model", "hf://HuggingFaceTB/SmolLM2-135M-Instruct")
        mlflow.log_input(MetaDataset(HTTPDatasetSource("https://data.example/train.jsonl"), name="train",
                                     digest=digest), context="training")
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        mlflow.log_artifact(str(data), artifact_path="data")
    with mlflow.start_run(run_name="lora-r8-high-lr"):
        mlflow.log_params({"lr": "0.1", "epochs": 3})
        mlflow.log_metric("loss", 0.5, step=29)

    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.info.end_time is not None
    assert got.info.experiment_id == experiment.experiment_id
    assert got.data.params == {"lr": "0.01", "epochs": "3", "base_model": "smollm2-135m"}
    assert got.data.metrics == {"loss": pytest.approx(2.0 / 30), "eval_accuracy": 0.91, "eval_f1": 0.88}
    assert got.data.tags["team"] == "nlp" and got.data.tags["mlflow.runName"] == "lora-r8"
    assert [(d.dataset.name, d.dataset.digest) for d in got.inputs.dataset_inputs] == [("train", digest)]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(2.0 / (s + 1))) for s in range(30)]

    found = mlflow.search_runs(experiment_names=["chatbot-finetune"],
                               filter_string="metrics.loss < 0.1 and params.lr = '0.01' and tags.team = 'nlp'",
                               output_format="list")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    ordered = mlflow.search_runs(experiment_ids=[experiment.experiment_id], order_by=["metrics.loss DESC"],
                                 output_format="list")
    assert [r.data.params["lr"] for r in ordered] == ["0.1", "0.01"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["data", "model"]

    mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", "chatbot")
    assert mv.version == "1" and mv.run_id == run.info.run_id and mv.status == "READY"
    client.set_registered_model_alias("chatbot", "champion", mv.version)
    champion = client.get_model_version_by_alias("chatbot", "champion")
    assert (champion.version, champion.run_id, champion.aliases) == ("1", run.info.run_id, ["champion"])
    assert client.get_registered_model("chatbot").aliases == {"champion": "1"}

    downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/chatbot@champion",
                                                          dst_path=str(tmp_path / "download")))
    assert (downloaded / "weights.bin").read_bytes() == weights
    assert (downloaded / "MLmodel").read_text() == MLMODEL
    assert Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="data/train.jsonl",
                                                    dst_path=str(tmp_path / "d2"))).read_bytes() == data.read_bytes()

    # Lineage: the version, the run that made it, its dataset (with digest) and base model.
    with server.client(token) as c:
        r = c.get("/apis/kaip.dev/v1alpha1/lineage", params={"uri": "models:/chatbot@champion"})
    assert r.status_code == 200, r.text
    graph = r.json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    mv_key, run_key = "modelversion:team-a/chatbot/1", f"run:{run.info.run_id}"
    ds_key = f"dataset:team-a/{digest}"
    assert graph["root"] == mv_key
    assert nodes[ds_key]["attributes"]["digest"] == digest and nodes[ds_key]["name"] == "train"
    assert nodes[run_key]["attributes"]["params"]["lr"] == "0.01"
    assert nodes[run_key]["attributes"]["metrics"]["eval_accuracy"] == 0.91
    assert nodes[mv_key]["attributes"]["aliases"] == ["champion"]
    assert nodes[mv_key]["attributes"]["content_digest"].startswith("sha256:")
    edges = {(e["source"], e["target"], e["relation"]) for e in graph["edges"]}
    assert edges == {(ds_key, run_key, "input-to"), (run_key, mv_key, "produced"),
                     ("model:hf://HuggingFaceTB/SmolLM2-135M-Instruct", run_key, "base-model-of")}


def _error_code(excinfo: pytest.ExceptionInfo[Exception]) -> str:
    return getattr(excinfo.value, "error_code", "")


def test_team_tokens_are_isolated(server: LiveServer, mlflow_env: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    token_a, token_b = make_token(server, "team-a"), make_token(server, "team-b")
    viewer_a = make_token(server, "team-a", role="view", account="viewer")
    mlflow_env(token_a)
    client = MlflowClient()
    exp_a = client.create_experiment("shared-name")
    run_a = client.create_run(exp_a).info.run_id
    client.log_metric(run_a, "loss", 0.5)
    (tmp_path / "f.txt").write_text("secret")
    client.log_artifact(run_a, str(tmp_path / "f.txt"))
    client.create_registered_model("team-a-model")
    client.create_model_version("team-a-model", f"mlflow-artifacts:/{exp_a}/{run_a}/artifacts", run_id=run_a)

    mlflow_env(token_b)
    client = MlflowClient()
    for call in (lambda: client.get_experiment(exp_a), lambda: client.get_run(run_a),
                 lambda: client.log_metric(run_a, "loss", 0.1), lambda: client.set_terminated(run_a),
                 lambda: client.get_registered_model("team-a-model"),
                 lambda: client.get_model_version("team-a-model", "1"),
                 lambda: client.search_runs([exp_a])):
        with pytest.raises(MlflowException) as exc:
            call()
        assert _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_experiment_by_name("shared-name") is None
    assert [e.name for e in client.search_experiments()] == []
    assert client.search_registered_models() == []
    exp_b = client.create_experiment("shared-name")  # names are per namespace
    assert exp_b != exp_a
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token_b}"}) as raw:
        r = raw.get(f"/api/2.0/mlflow-artifacts/artifacts/{exp_a}/{run_a}/artifacts/f.txt")
        assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        assert "secret" not in r.text
        r = raw.put(f"/api/2.0/mlflow-artifacts/artifacts/{exp_a}/{run_a}/artifacts/evil.txt", content=b"x")
        assert r.status_code == 404
        r = raw.get("/apis/kaip.dev/v1alpha1/lineage", params={"uri": f"runs:/{run_a}"})
        assert r.status_code == 404, r.text

    # A viewer of team A reads but does not write.
    mlflow_env(viewer_a)
    client = MlflowClient()
    assert client.get_run(run_a).data.metrics == {"loss": 0.5}
    with pytest.raises(MlflowException) as exc:
        client.log_metric(run_a, "loss", 0.1)
    assert _error_code(exc) == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as exc:
        client.create_experiment("viewer-exp")
    assert _error_code(exc) == "PERMISSION_DENIED"

    # The admin works in `default` unless the tracking URI names a namespace.
    mlflow_env(server.token)
    assert MlflowClient(tracking_uri=server.url).get_experiment_by_name("shared-name") is None
    scoped = MlflowClient(tracking_uri=f"{server.url}/namespaces/team-a")
    assert scoped.get_experiment_by_name("shared-name").experiment_id == exp_a
    assert scoped.get_latest_versions("team-a-model")[0].run_id == run_a

    # No token, or a wrong one: 401.
    with httpx.Client(base_url=server.url) as anon:
        r = anon.get("/api/2.0/mlflow/runs/get", params={"run_id": run_a})
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
        r = anon.get("/api/2.0/mlflow/runs/get", params={"run_id": run_a}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401


def test_bad_input_gets_mlflow_errors_and_writes_nothing(server: LiveServer, mlflow_env: Any) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    token = make_token(server, "team-a")
    mlflow_env(token)
    client = MlflowClient()
    exp = client.create_experiment("bad-input")
    run_id = client.create_run(exp).info.run_id

    # NaN and infinities, as MLflow keeps them: NaN stays NaN, +-inf become +-max double.
    client.log_metric(run_id, "nan_metric", float("nan"), step=0)
    client.log_metric(run_id, "inf_metric", float("inf"), step=0)
    client.log_metric(run_id, "ninf_metric", float("-inf"), step=0)
    metrics = client.get_run(run_id).data.metrics
    assert math.isnan(metrics["nan_metric"])
    assert metrics["inf_metric"] == 1.7976931348623157e308 and metrics["ninf_metric"] == -1.7976931348623157e308
    assert math.isnan(client.get_metric_history(run_id, "nan_metric")[0].value)

    # Duplicate names.
    with pytest.raises(MlflowException) as exc:
        client.create_experiment("bad-input")
    assert _error_code(exc) == "RESOURCE_ALREADY_EXISTS"
    client.create_registered_model("dup-model")
    with pytest.raises(MlflowException) as exc:
        client.create_registered_model("dup-model")
    assert _error_code(exc) == "RESOURCE_ALREADY_EXISTS"

    # Unknown run ids.
    unknown = "0" * 32
    for call in (lambda: client.get_run(unknown), lambda: client.log_metric(unknown, "x", 1.0),
                 lambda: client.log_param(unknown, "x", "1"), lambda: client.set_tag(unknown, "x", "1")):
        with pytest.raises(MlflowException) as exc:
            call()
        assert _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"

    # Changing a logged param is refused, and the whole batch with it.
    client.log_param(run_id, "lr", "0.01")
    with pytest.raises(MlflowException) as exc:
        client.log_batch(run_id, metrics=[Metric("batch_metric", 1.0, 1, 0)], params=[Param("lr", "0.1")])
    assert _error_code(exc) == "INVALID_PARAMETER_VALUE" and "Changing param values is not allowed" in str(exc.value)
    assert client.get_metric_history(run_id, "batch_metric") == []

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as raw:
        def post(path: str, body: Any) -> httpx.Response:
            return raw.post(f"/api/2.0/mlflow/{path}", json=body)

        # Too many metrics in one batch (the client splits its own batches; a raw caller may not).
        metrics_1001 = [{"key": "m", "value": i, "timestamp": 1, "step": i} for i in range(1001)]
        r = post("runs/log-batch", {"run_id": run_id, "metrics": metrics_1001})
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "at most 1000 metrics" in r.json()["message"]
        r = post("runs/log-batch", {"run_id": run_id, "params": [{"key": f"p{i}", "value": "v"} for i in range(101)]})
        assert r.status_code == 400 and "at most 100 params" in r.json()["message"]
        # One bad metric among 999 good ones: nothing is written.
        batch = [{"key": "m", "value": i, "timestamp": 1, "step": i} for i in range(999)]
        batch.append({"key": "m", "value": "not-a-number", "timestamp": 1, "step": 999})
        r = post("runs/log-batch", {"run_id": run_id, "metrics": batch})
        assert r.status_code == 400 and "metrics[999].value" in r.json()["message"]
        r = post("runs/log-batch", {"run_id": run_id, "metrics": batch[:5],
                                    "tags": [{"key": "../escape", "value": "x"}]})
        assert r.status_code == 400 and "tags[0].key" in r.json()["message"]
        assert client.get_metric_history(run_id, "m") == []
        assert "../escape" not in client.get_run(run_id).data.tags
        # Over MLflow's 1 MB request limit.
        big = [{"key": f"k{i}", "value": "x" * 5000} for i in range(100)]
        r = post("runs/log-batch", {"run_id": run_id, "tags": big, "params": big[:100]})
        assert r.status_code == 400 and "at most 1000000 bytes" in r.json()["message"]
        r = post("runs/log-metric", {"run_id": run_id, "key": "x", "value": 1.0})
        assert r.status_code == 400 and "timestamp" in r.json()["message"]
        r = post("runs/log-metric", {"run_id": run_id, "key": "x", "value": True, "timestamp": 1})
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        r = post("runs/search", {"experiment_ids": [exp], "filter": "metrics.x < 'a'"})
        assert r.status_code == 400 and "numeric value" in r.json()["message"]
        r = raw.post("/api/2.0/mlflow/runs/create", content=b"{not json")
        assert r.status_code == 400 and r.json()["error_code"] == "MALFORMED_REQUEST"
        # Endpoints Kaip does not implement say so, by name.
        r = post("traces", {})
        assert r.status_code == 501 and r.json() == {
            "error_code": "NOT_IMPLEMENTED",
            "message": "Kaip does not implement the MLflow endpoint POST /api/2.0/mlflow/traces"}
        r = raw.post("/api/2.0/mlflow-artifacts/mpu/create/1/x")
        assert r.status_code == 501 and "mpu/create" in r.json()["message"]


def test_registry_stages_versions_and_search(server: LiveServer, mlflow_env: Any) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow_env(make_token(server, "team-a"))
    client = MlflowClient()
    exp = client.create_experiment("registry")
    runs = [client.create_run(exp).info.run_id for _ in range(3)]
    client.create_registered_model("clf", tags={"task": "classification"}, description="a classifier")
    for run_id in runs:
        client.create_model_version("clf", f"mlflow-artifacts:/{exp}/{run_id}/artifacts/model", run_id=run_id)
    with pytest.raises(MlflowException) as exc:  # the source must belong to the run named
        client.create_model_version("clf", f"mlflow-artifacts:/{exp}/{runs[0]}/artifacts/model", run_id=runs[1])
    assert _error_code(exc) == "INVALID_PARAMETER_VALUE"

    client.transition_model_version_stage("clf", "1", "Production")
    client.transition_model_version_stage("clf", "2", "staging")
    client.transition_model_version_stage("clf", "3", "Production", archive_existing_versions=True)
    assert client.get_model_version("clf", "1").current_stage == "Archived"
    latest = {mv.current_stage: mv.version for mv in client.get_latest_versions("clf", stages=["Production",
                                                                                              "Staging"])}
    assert latest == {"Production": "3", "Staging": "2"}
    with pytest.raises(MlflowException):
        client.transition_model_version_stage("clf", "2", "Prod")

    found = client.search_model_versions(f"name = 'clf' and run_id = '{runs[1]}'")
    assert [mv.version for mv in found] == ["2"]
    assert [m.name for m in client.search_registered_models(filter_string="name LIKE 'cl%'")] == ["clf"]
    client.set_registered_model_alias("clf", "candidate", "2")
    client.set_model_version_tag("clf", "2", "validated", "true")
    mv = client.get_model_version("clf", "2")
    assert mv.aliases == ["candidate"] and mv.tags == {"validated": "true"}
    with pytest.raises(MlflowException) as exc:
        client.set_registered_model_alias("clf", "latest", "1")
    assert "reserved" in str(exc.value)
    client.delete_registered_model_alias("clf", "candidate")
    with pytest.raises(MlflowException) as exc:
        client.get_model_version_by_alias("clf", "candidate")
    assert _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"
    client.update_model_version("clf", "2", description="better")
    client.rename_registered_model("clf", "classifier")
    model = client.get_registered_model("classifier")
    assert model.description == "a classifier" and model.tags == {"task": "classification"}
    assert client.get_model_version("classifier", "2").description == "better"
    client.delete_model_version("classifier", "1")
    assert [mv.version for mv in client.search_model_versions("name = 'classifier'")] == ["2", "3"]
    client.delete_registered_model("classifier")
    with pytest.raises(MlflowException) as exc:
        client.get_registered_model("classifier")
    assert _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def test_mlflow_3_lists_and_downloads_an_artifact_folder(server: LiveServer, mlflow_env: Any, tmp_path: Path) -> None:
    """MLflow 3 clients search logged models before listing a folder of a run's artifacts; Kaip answers that
    search (with no logged models) so listing and downloading folders works."""
    import mlflow

    mlflow_env(server.token)
    mlflow.set_experiment("folders")  # not an experiment id left over from another test's server
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\x00\x01")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model")
    listed = mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")
    assert [(f.path, f.file_size) for f in listed] == [("model/w.bin", 2)]
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model",
                                              dst_path=str(tmp_path / "out"))
    assert (Path(got) / "w.bin").read_bytes() == b"\x00\x01"
