"""Runs, the model registry and lineage, through Kaip's MLflow-compatible REST API.

Namespaced calls go to `/namespaces/{ns}/api/2.0/mlflow/...`, the same endpoints the `mlflow` client uses; a
local model folder is uploaded through `/api/2.0/mlflow-artifacts/` into a run of its own, so every registered
version has a run behind it (lineage: run → version).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from kaip.sdk.errors import AlreadyExists, ApiError, Conflict, NotFound, Unreachable, from_status

if TYPE_CHECKING:
    from kaip.sdk.client import Client

REGISTER_EXPERIMENT = "registered-models"


def _kv(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {i["key"]: i.get("value") for i in items or []}


class Tracking:
    """MLflow REST calls with the client's token, in the client's namespace unless told otherwise."""

    def __init__(self, client: Client) -> None:
        self.client = client
        headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
        self.http = httpx.Client(base_url=client.server, headers=headers, timeout=120)

    def close(self) -> None:
        self.http.close()

    def _prefix(self, namespace: str | None) -> str:
        return f"/namespaces/{namespace or self.client.namespace}"

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None, *,
             namespace: str | None = None) -> dict[str, Any]:
        """One MLflow REST call (`endpoint` as in MLflow's docs, e.g. `runs/get`)."""
        path = f"{self._prefix(namespace)}/api/2.0/mlflow/{endpoint}"
        try:
            if method == "GET":
                resp = self.http.get(path, params={k: v for k, v in (body or {}).items() if v is not None})
            else:
                resp = self.http.request(method, path, json=body or {})
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise Unreachable({"message": f"cannot reach the Kaip server at {self.client.server}"}) from err
        return _check(resp)

    def upload(self, artifact_path: str, file: Path) -> None:
        """Upload one file to the artifact store (streamed)."""
        _check(upload_file(self.http, artifact_path, file))

    # ---- runs ---------------------------------------------------------------------------------------

    def run(self, run_id: str, *, namespace: str | None = None) -> Run:
        return Run(self, self.call("GET", "runs/get", {"run_id": run_id}, namespace=namespace)["run"], namespace)

    def experiment_id(self, name: str, *, namespace: str | None = None, create: bool = True) -> str:
        try:
            got = self.call("GET", "experiments/get-by-name", {"experiment_name": name}, namespace=namespace)
            return str(got["experiment"]["experiment_id"])
        except NotFound:
            if not create:
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name}, namespace=namespace)["experiment_id"])
        except Conflict:  # made meanwhile
            return self.experiment_id(name, namespace=namespace, create=False)

    def log_folder(self, folder: Path, *, run_name: str, experiment: str = REGISTER_EXPERIMENT,
                   artifact_path: str = "model", namespace: str | None = None,
                   tags: dict[str, str] | None = None) -> tuple[str, str]:
        """A new run holding the folder's files under `artifact_path`; returns (run id, its artifact URI)."""
        eid = self.experiment_id(experiment, namespace=namespace)
        info = self.call("POST", "runs/create", {
            "experiment_id": eid, "run_name": run_name, "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}, namespace=namespace)["run"]["info"]
        run_id = info["run_id"]
        status = "FAILED"
        try:
            base = info["artifact_uri"].removeprefix("mlflow-artifacts:").lstrip("/")
            for p in sorted(p for p in folder.rglob("*") if p.is_file()):
                self.upload(f"{base}/{artifact_path}/{p.relative_to(folder).as_posix()}", p)
            status = "FINISHED"
        finally:
            self.call("POST", "runs/update", {"run_id": run_id, "status": status,
                                              "end_time": int(time.time() * 1000)}, namespace=namespace)
        return run_id, f"mlflow-artifacts:/{base}/{artifact_path}"

    # ---- registry -----------------------------------------------------------------------------------

    def register_model(self, name: str, source: Any, *, alias: str | None = None, tags: dict[str, str] | None = None,
                       description: str | None = None, namespace: str | None = None) -> ModelVersion:
        tags = {**pipeline_task_tags(), **(tags or {})}
        run_id, uri = self._source(name, source, namespace)
        try:
            self.call("POST", "registered-models/create", {"name": name}, namespace=namespace)
        except AlreadyExists:
            pass
        body: dict[str, Any] = {"name": name, "source": uri,
                                "tags": [{"key": k, "value": str(v)} for k, v in (tags or {}).items()]}
        if run_id:
            body["run_id"] = run_id
        if description:
            body["description"] = description
        mv = self.call("POST", "model-versions/create", body, namespace=namespace)["model_version"]
        if alias:
            self.call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": mv["version"]},
                      namespace=namespace)
            mv = self.call("GET", "model-versions/get", {"name": name, "version": mv["version"]},
                           namespace=namespace)["model_version"]
        return ModelVersion(mv)

    def _source(self, name: str, source: Any, namespace: str | None) -> tuple[str | None, str]:
        from kaip.sdk.training import TrainJob

        if isinstance(source, TrainJob):
            source = source.run
        if isinstance(source, Run):
            return source.id, source.info["artifact_uri"].rstrip("/") + "/" + self._model_folder(source)
        if isinstance(source, Path) or (isinstance(source, str) and "://" not in source and ":/" not in source):
            folder = Path(source).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: not a model folder")
            return self.log_folder(folder.resolve(), run_name=f"register-{name}", namespace=namespace,
                                   tags={"kaip.source": str(folder.resolve())})
        uri = str(source)
        if uri.startswith("runs:/"):
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            run = self.call("GET", "runs/get", {"run_id": run_id}, namespace=namespace)["run"]
            return run_id, run["info"]["artifact_uri"].rstrip("/") + (f"/{path}" if path else "")
        return None, uri

    def _model_folder(self, run: Run) -> str:
        """The run's model: `merged` (the LoRA runtime's whole model, not its `adapter`), else `model` (autolog)."""
        listed = self.call("GET", "artifacts/list", {"run_id": run.id}, namespace=run.namespace).get("files", [])
        folders = {f["path"] for f in listed if f.get("is_dir")}
        for name in ("merged", "model"):
            if name in folders:
                return name
        raise NotFound({"code": 404, "message": f"run {run.id} logged no model (no merged/ or model/ artifacts)"})

    def models(self, name: str | None = None, *, namespace: str | None = None) -> list[Model] | Model:
        if name is not None:
            got = self.call("GET", "registered-models/get", {"name": name}, namespace=namespace)
            return Model(self, got["registered_model"], namespace)
        found, token = [], None
        while True:
            page = self.call("GET", "registered-models/search", {"max_results": 1000, "page_token": token},
                             namespace=namespace)
            found += page.get("registered_models", [])
            token = page.get("next_page_token")
            if not token:
                return [Model(self, m, namespace) for m in found]

    def versions(self, name: str, *, namespace: str | None = None) -> list[ModelVersion]:
        found, token = [], None
        while True:
            page = self.call("GET", "model-versions/search", {"filter": f"name = '{name}'", "max_results": 1000,
                                                              "page_token": token}, namespace=namespace)
            found += page.get("model_versions", [])
            token = page.get("next_page_token")
            if not token:
                return sorted((ModelVersion(v) for v in found), key=lambda v: int(v.version))

    def lineage(self, uri: str, *, namespace: str | None = None) -> dict[str, Any]:
        resp = self.http.get("/apis/kaip.dev/v1alpha1/lineage",
                             params={"uri": uri, "namespace": namespace or self.client.namespace})
        return _check(resp)


def pipeline_task_tags() -> dict[str, str]:
    """Inside a pipeline task (its pod's KAIP_PIPELINE_RUN / KAIP_PIPELINE_TASK): the tags that link a version it
    registers to the task in lineage."""
    run, task, ns = (os.environ.get(k, "") for k in ("KAIP_PIPELINE_RUN", "KAIP_PIPELINE_TASK", "KAIP_NAMESPACE"))
    if not (run and task and ns):
        return {}
    return {"kaip.pipeline_run": f"{ns}/{run}", "kaip.pipeline_task": task}


def upload_file(http: httpx.Client, artifact_path: str, file: Path) -> httpx.Response:
    """PUT one file to the MLflow artifact API, streamed in 1 MiB chunks (models are large)."""
    def chunks() -> Iterator[bytes]:
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    return http.put(f"/api/2.0/mlflow-artifacts/artifacts/{quote(artifact_path)}", content=chunks(),
                    timeout=httpx.Timeout(60, write=600))


def _check(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        data = {"message": resp.text or resp.reason_phrase}
    if resp.status_code >= 400:
        if not isinstance(data, dict):
            data = {"message": str(data)}
        raise from_status(data, resp.status_code)
    return data


class Run:
    """A tracked run (MLflow's run document): `params`, `metrics` (latest values), `history(key)`."""

    def __init__(self, tracking: Tracking, run: dict[str, Any], namespace: str | None = None) -> None:
        self.tracking = tracking
        self.document = run
        self.namespace = namespace

    @property
    def info(self) -> dict[str, Any]:
        """MLflow's run info: run_id, run_name, status, start/end time, experiment, artifact URI."""
        return dict(self.document.get("info") or {})

    @property
    def id(self) -> str:
        """The run id."""
        return str(self.info.get("run_id"))

    @property
    def name(self) -> str:
        """The run's name."""
        return str(self.info.get("run_name", ""))

    @property
    def params(self) -> dict[str, str]:
        """The run's parameters."""
        return _kv((self.document.get("data") or {}).get("params"))

    @property
    def tags(self) -> dict[str, str]:
        """The run's tags."""
        return _kv((self.document.get("data") or {}).get("tags"))

    @property
    def metrics(self) -> dict[str, float]:
        """The latest value of every metric."""
        return {k: float(v) for k, v in _kv((self.document.get("data") or {}).get("metrics")).items()}

    def history(self, key: str) -> list[tuple[int, float]]:
        """Every logged point of a metric as (step, value), in step order."""
        points, token = [], None
        while True:
            page = self.tracking.call("GET", "metrics/get-history", {"run_id": self.id, "metric_key": key,
                                                                     "max_results": 25000, "page_token": token},
                                      namespace=self.namespace)
            points += page.get("metrics", [])
            token = page.get("next_page_token")
            if not token:
                return sorted((int(p.get("step", 0)), float(p["value"])) for p in points)

    def _repr_html_(self) -> str:
        from kaip.sdk import display

        history = {k: self.history(k) for k in self.metrics if "loss" in k}
        return display.run_html(self.document, history)

    def __repr__(self) -> str:
        return f"<Run {self.name or self.id} {self.info.get('status', '')}>"


class ModelVersion(dict[str, Any]):
    """A registered model version (MLflow's document): `name`, `version`, `uri`, `aliases`, `tags`."""

    @property
    def name(self) -> str:
        """The registered model's name."""
        return str(self["name"])

    @property
    def version(self) -> str:
        """The version number, as a string (MLflow's form)."""
        return str(self["version"])

    @property
    def uri(self) -> str:
        """`models:/NAME/VERSION`, what `deploy()` and `fine_tune(base_model=)` take (a TrainJob's
        `initializer.model.storageUri` writes it `models://NAME/VERSION`)."""
        return f"models:/{self.name}/{self.version}"

    @property
    def aliases(self) -> list[str]:
        """The aliases pointing at this version."""
        return list(self.get("aliases") or [])

    @property
    def tags(self) -> dict[str, str]:
        """The version's tags."""
        return _kv(self.get("tags"))

    def __repr__(self) -> str:
        alias = f" @{','.join(self.aliases)}" if self.aliases else ""
        return f"<ModelVersion {self.uri}{alias}>"


class Model:
    """A registered model: its versions, aliases and lineage."""

    def __init__(self, tracking: Tracking, model: dict[str, Any], namespace: str | None = None) -> None:
        self.tracking = tracking
        self.document = model
        self.namespace = namespace
        self.name = str(model["name"])

    @property
    def versions(self) -> list[ModelVersion]:
        """Every version, oldest first."""
        return self.tracking.versions(self.name, namespace=self.namespace)

    @property
    def aliases(self) -> dict[str, str]:
        """Alias → version number."""
        return {a["alias"]: str(a["version"]) for a in self.document.get("aliases") or []}

    @property
    def latest(self) -> ModelVersion | None:
        """The newest version, or None."""
        versions = self.versions
        return versions[-1] if versions else None

    def version(self, ref: str | int) -> ModelVersion:
        """A version by number or alias."""
        ref = str(ref)
        number = self.aliases.get(ref, ref)
        got = self.tracking.call("GET", "model-versions/get", {"name": self.name, "version": number},
                                 namespace=self.namespace)
        return ModelVersion(got["model_version"])

    def set_alias(self, alias: str, version: str | int) -> None:
        """Point an alias (e.g. `champion`) at a version."""
        self.tracking.call("POST", "registered-models/alias", {"name": self.name, "alias": alias,
                                                                "version": str(version)}, namespace=self.namespace)
        self.document = self.tracking.call("GET", "registered-models/get", {"name": self.name},
                                           namespace=self.namespace)["registered_model"]

    def lineage(self, version: str | int | None = None) -> dict[str, Any]:
        """The lineage graph of a version (default: the latest)."""
        v = self.version(version) if version is not None else self.latest
        if v is None:
            raise NotFound({"code": 404, "message": f"registered model {self.name} has no versions"})
        return self.tracking.lineage(v.uri, namespace=self.namespace)

    def _repr_html_(self) -> str:
        from kaip.sdk import display

        versions = self.versions
        try:
            lineage = self.tracking.lineage(versions[-1].uri, namespace=self.namespace) if versions else None
        except ApiError:
            lineage = None
        return display.model_html(self.document, [dict(v) for v in versions], lineage)

    def __repr__(self) -> str:
        return f"<Model {self.name}>"
