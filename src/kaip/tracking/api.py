"""MLflow's REST protocol on the Kaip server, and the lineage endpoint.

Paths: `/api/2.0/mlflow/...` (tracking and registry), `/api/2.0/mlflow-artifacts/artifacts/...` (the artifact
proxy), `/api/3.0/mlflow/server-info`, and the same under `/ajax-api/2.0/...` (MLflow's UI prefix). Each also
answers under `/namespaces/<ns>/...`, so `MLFLOW_TRACKING_URI=http://host:8740/namespaces/team-a` works in
that namespace; a plain `http://host:8740` works in the token's own namespace (a service account's
namespace, or the one namespace the user has a role in; `default` for cluster-wide roles).

The client authenticates with `MLFLOW_TRACKING_TOKEN`, sent as a bearer token: any Kaip token. Objects in a
namespace the caller cannot read do not exist for it (RESOURCE_DOES_NOT_EXIST); writes need the edit role
(else PERMISSION_DENIED). Endpoints Kaip does not implement answer 501 NOT_IMPLEMENTED, naming the endpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kaip.api import errors as api_errors
from kaip.api.core import NAMESPACE
from kaip.artifacts import ArtifactPathError, ArtifactStore, clean_path
from kaip.server.auth import Authorizer
from kaip.server.context import ServerContext
from kaip.tracking.errors import MlflowError, invalid_parameter, not_found, permission_denied
from kaip.tracking.lineage import LineageStore
from kaip.tracking.registry import RegistryService
from kaip.tracking.service import MAX_BATCH_REQUEST_BYTES, TrackingService

log = logging.getLogger("kaip.tracking")

SA_PREFIX = "system:serviceaccount:"
LIST_FIELDS = {"order_by", "stages", "experiment_ids"}
PREFIXES = ("", "/namespaces/{kaip_namespace}")


@dataclass(frozen=True)
class Caller:
    """An authenticated MLflow client: its user, the namespace it works in, and its rights."""

    user: str
    namespace: str
    authorizer: Authorizer

    def can_read(self, namespace: str) -> bool:
        return self.authorizer.rank(self.user, namespace) >= 1

    def can_write(self, namespace: str) -> bool:
        return self.authorizer.rank(self.user, namespace) >= 2


def default_namespace(authorizer: Authorizer, user: str) -> str:
    if user.startswith(SA_PREFIX):
        return user[len(SA_PREFIX):].split(":", 1)[0]
    visible = authorizer.visible_namespaces(user)
    if visible is None:
        return "default"
    if len(visible) == 1:
        return next(iter(visible))
    if not visible:
        raise permission_denied(f'User "{user}" has no role in any namespace')
    raise invalid_parameter(f'User "{user}" has roles in several namespaces ({", ".join(sorted(visible))}): choose one '
                            "with MLFLOW_TRACKING_URI=<server>/namespaces/<namespace>")


def _error(err: MlflowError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status)


Handler = Callable[[Caller, dict[str, Any]], dict[str, Any]]


class TrackingAPI:
    def __init__(self, ctx: ServerContext, artifacts_root: Path) -> None:
        self.ctx = ctx
        self.authorizer = ctx.authorizer
        self.tracking = TrackingService(ctx.store)
        self.registry = RegistryService(ctx.store)
        self.lineage = LineageStore(ctx.store)
        self.artifacts = ArtifactStore(artifacts_root)
        self.handlers: dict[tuple[str, str], Handler] = self._handlers()
        self.router = APIRouter()
        for prefix in PREFIXES:
            for api in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
                self.router.add_api_route(prefix + api + "/{endpoint:path}", self._mlflow,
                                          methods=["GET", "POST", "PATCH", "DELETE", "PUT"], include_in_schema=False)
            for api in ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow"):
                self.router.add_api_route(prefix + api + "/{endpoint:path}", self._mlflow_v3,
                                          methods=["GET", "POST", "PATCH", "DELETE", "PUT"], include_in_schema=False)
            for api in ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts"):
                self.router.add_api_route(prefix + api + "/artifacts", self._list_artifacts, methods=["GET"],
                                          include_in_schema=False)
                self.router.add_api_route(prefix + api + "/artifacts/{path:path}", self._artifact,
                                          methods=["GET", "PUT", "DELETE"], include_in_schema=False)
                self.router.add_api_route(prefix + api + "/{endpoint:path}", self._artifacts_other,
                                          methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
        self.router.add_api_route("/apis/kaip.dev/v1alpha1/lineage", self._lineage, methods=["GET"],
                                  include_in_schema=False)

    # ---- plumbing -----------------------------------------------------------------------------------

    def _caller(self, request: Request, namespace: str | None) -> Caller:
        try:
            ident = self.authorizer.authenticate(request.headers.get("authorization"))
        except api_errors.ApiError:
            raise MlflowError("UNAUTHENTICATED", "A valid bearer token is required: set MLFLOW_TRACKING_TOKEN to a "
                                                 "Kaip token") from None
        if namespace:
            if self.authorizer.rank(ident.user, namespace) < 1 or \
                    self.ctx.store.try_get(NAMESPACE, None, namespace) is None:
                raise not_found(f'namespace "{namespace}" not found')
            return Caller(ident.user, namespace, self.authorizer)
        return Caller(ident.user, default_namespace(self.authorizer, ident.user), self.authorizer)

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        if request.method == "GET":
            out: dict[str, Any] = {}
            for key, value in request.query_params.multi_items():
                if key in LIST_FIELDS:
                    out.setdefault(key, []).append(value)
                elif key in out:
                    out[key] = [*out[key], value] if isinstance(out[key], list) else [out[key], value]
                else:
                    out[key] = value
            return out
        raw = await request.body()
        if request.url.path.endswith("/runs/log-batch") and len(raw) > MAX_BATCH_REQUEST_BYTES:
            raise invalid_parameter(f"Batched logging API requests must be at most {MAX_BATCH_REQUEST_BYTES} bytes, "
                                    f"got a request of size {len(raw)}.")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MlflowError("MALFORMED_REQUEST", f"The request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise MlflowError("MALFORMED_REQUEST", "The request body must be a JSON object")
        return body

    async def _mlflow(self, request: Request, endpoint: str, kaip_namespace: str | None = None) -> Response:
        handler = self.handlers.get((request.method, endpoint.strip("/")))
        if handler is None:
            return _error(MlflowError("NOT_IMPLEMENTED", f"Kaip does not implement the MLflow endpoint "
                                                         f"{request.method} /api/2.0/mlflow/{endpoint}"))
        try:
            body = await self._body(request)
            result = await run_in_threadpool(self._call, handler, request, kaip_namespace, body)
        except MlflowError as err:
            return _error(err)
        return JSONResponse(result)

    def _call(self, handler: Handler, request: Request, namespace: str | None, body: dict[str, Any]) -> Any:
        return handler(self._caller(request, namespace), body)

    async def _mlflow_v3(self, request: Request, endpoint: str, kaip_namespace: str | None = None) -> Response:
        if request.method == "GET" and endpoint.strip("/") == "server-info":
            return JSONResponse({"store_type": "SqlStore", "workspaces_enabled": False,
                                 "multipart_uploads_enabled": False, "multipart_downloads_enabled": False,
                                 "server": "kaip"})
        return _error(MlflowError("NOT_IMPLEMENTED", f"Kaip does not implement the MLflow endpoint {request.method} "
                                                     f"/api/3.0/mlflow/{endpoint}"))

    async def _artifacts_other(self, request: Request, endpoint: str, kaip_namespace: str | None = None) -> Response:
        return _error(MlflowError("NOT_IMPLEMENTED", f"Kaip does not implement the MLflow endpoint {request.method} "
                                                     f"/api/2.0/mlflow-artifacts/{endpoint} (multipart and presigned "
                                                     "uploads are not supported; uploads are streamed instead)"))

    # ---- artifacts ----------------------------------------------------------------------------------

    def _authorize_artifact(self, caller: Caller, path: str, *, write: bool) -> str:
        try:
            rel = clean_path(path)
        except ArtifactPathError as err:
            raise invalid_parameter(str(err)) from None
        first = rel.split("/", 1)[0]
        missing = not_found(f"No artifacts at {path!r}")
        namespace = self.tracking.experiment_namespace(first) if first else None
        if namespace is None or not caller.can_read(namespace):
            raise missing if first else invalid_parameter("an artifact path must start with an experiment id")
        if write and not caller.can_write(namespace):
            raise permission_denied(f'User "{caller.user}" may not write artifacts in the namespace "{namespace}"')
        return rel

    async def _list_artifacts(self, request: Request, kaip_namespace: str | None = None) -> Response:
        path = request.query_params.get("path", "")

        def work() -> dict[str, Any]:
            caller = self._caller(request, kaip_namespace)
            rel = self._authorize_artifact(caller, path, write=False)
            files = []
            for f in self.artifacts.list(rel):
                item: dict[str, Any] = {"path": f.path.rsplit("/", 1)[-1], "is_dir": f.is_dir}
                if f.size is not None:
                    item["file_size"] = f.size
                files.append(item)
            return {"files": files}

        try:
            return JSONResponse(await run_in_threadpool(work))
        except MlflowError as err:
            return _error(err)

    async def _artifact(self, request: Request, path: str, kaip_namespace: str | None = None) -> Response:
        write = request.method != "GET"
        try:
            caller = await run_in_threadpool(self._caller, request, kaip_namespace)
            rel = await run_in_threadpool(self._authorize_artifact, caller, path, write=write)
            if request.method == "GET":
                if not self.artifacts.is_file(rel):
                    raise not_found(f"No artifact at {path!r}")
                return StreamingResponse(self.artifacts.read_chunks(rel), media_type="application/octet-stream")
            if request.method == "PUT":
                try:
                    written = await self.artifacts.write_stream(rel, request.stream())
                except ArtifactPathError as err:
                    raise invalid_parameter(str(err)) from None
                await run_in_threadpool(self.tracking.record_artifact, written.path, written.size, written.sha256)
                return JSONResponse({})
            removed = await run_in_threadpool(self.artifacts.delete, rel)
            await run_in_threadpool(self.tracking.forget_artifacts, removed)
            return JSONResponse({})
        except MlflowError as err:
            return _error(err)

    # ---- lineage (a Kaip API: errors are Kubernetes Status objects) ----------------------------------

    async def _lineage(self, request: Request) -> Response:
        uri = request.query_params.get("uri")
        namespace = request.query_params.get("namespace")

        def work() -> dict[str, Any]:
            ident = self.authorizer.authenticate(request.headers.get("authorization"))
            if not uri:
                raise api_errors.bad_request("the uri query parameter is required (e.g. uri=models:/NAME/1)")
            try:
                caller = Caller(ident.user, namespace or default_namespace(self.authorizer, ident.user),
                                self.authorizer)
                if not caller.can_read(caller.namespace):
                    raise not_found(f'namespace "{caller.namespace}" not found')
                key = self.lineage.key_for_uri(uri, caller.namespace)
                graph = self.lineage.graph(caller, key)
            except MlflowError as err:
                code = {404: (404, "NotFound"), 403: (403, "Forbidden")}.get(err.status, (400, "BadRequest"))
                raise api_errors.ApiError(code[0], code[1], err.message) from None
            return {"apiVersion": "kaip.dev/v1alpha1", "kind": "Lineage", "uri": uri, "namespace": caller.namespace,
                    **graph}

        try:
            return JSONResponse(await run_in_threadpool(work))
        except api_errors.ApiError as err:
            return JSONResponse(err.to_status(), status_code=err.code)

    # ---- the endpoint table -------------------------------------------------------------------------

    def _handlers(self) -> dict[tuple[str, str], Handler]:
        t, r = self.tracking, self.registry

        def run_id(b: dict[str, Any]) -> Any:
            return b.get("run_id") or b.get("run_uuid")

        def search_experiments(c: Caller, b: dict[str, Any]) -> dict[str, Any]:
            return t.search_experiments(c, [c.namespace], view_type=b.get("view_type") or "ACTIVE_ONLY",
                                        max_results=b.get("max_results"), filter_string=b.get("filter"),
                                        order_by=b.get("order_by"), page_token=b.get("page_token"))

        def search_runs(c: Caller, b: dict[str, Any]) -> dict[str, Any]:
            ids = [t.resolve_experiment_id(c, c.namespace, e) for e in b.get("experiment_ids") or []]
            return t.search_runs(c, ids, filter_string=b.get("filter"),
                                 run_view_type=b.get("run_view_type") or "ACTIVE_ONLY",
                                 max_results=b.get("max_results"), order_by=b.get("order_by"),
                                 page_token=b.get("page_token"))

        def list_run_artifacts(c: Caller, b: dict[str, Any]) -> dict[str, Any]:
            info = t.get_run(c, run_id(b))["info"]
            base = f"{info['experiment_id']}/{info['run_id']}/artifacts"
            sub = clean_path(str(b.get("path") or ""))
            rel = f"{base}/{sub}" if sub else base
            files = [{"path": f.path[len(base) + 1:], "is_dir": f.is_dir, **({"file_size": f.size} if f.size
                                                                            is not None else {})}
                     for f in self.artifacts.list(rel)]
            return {"root_uri": info["artifact_uri"], "files": files}

        def ns(c: Caller) -> str:
            return c.namespace

        table: dict[tuple[str, str], Handler] = {
            # experiments
            ("POST", "experiments/create"): lambda c, b: {"experiment_id": t.create_experiment(
                c, ns(c), b.get("name"), b.get("tags") or [], b.get("artifact_location"))},
            ("GET", "experiments/get"): lambda c, b: {"experiment": t.get_experiment(c, ns(c), b.get("experiment_id"))},
            ("GET", "experiments/get-by-name"): lambda c, b: {"experiment": t.get_experiment_by_name(
                c, ns(c), b.get("experiment_name"))},
            ("POST", "experiments/search"): search_experiments,
            ("GET", "experiments/search"): search_experiments,
            ("POST", "experiments/delete"): lambda c, b: _empty(t.delete_experiment(c, b.get("experiment_id"))),
            ("POST", "experiments/restore"): lambda c, b: _empty(t.restore_experiment(c, b.get("experiment_id"))),
            ("POST", "experiments/update"): lambda c, b: _empty(t.rename_experiment(c, b.get("experiment_id"),
                                                                                    b.get("new_name"))),
            ("POST", "experiments/set-experiment-tag"): lambda c, b: _empty(t.set_experiment_tag(
                c, b.get("experiment_id"), b.get("key"), b.get("value"))),
            ("POST", "experiments/delete-experiment-tag"): lambda c, b: _empty(t.delete_experiment_tag(
                c, b.get("experiment_id"), b.get("key"))),
            # runs
            ("POST", "runs/create"): lambda c, b: {"run": t.create_run(c, ns(c), b)},
            ("GET", "runs/get"): lambda c, b: {"run": t.get_run(c, run_id(b))},
            ("POST", "runs/update"): lambda c, b: t.update_run(c, b),
            ("POST", "runs/delete"): lambda c, b: _empty(t.set_run_lifecycle(c, run_id(b), "deleted")),
            ("POST", "runs/restore"): lambda c, b: _empty(t.set_run_lifecycle(c, run_id(b), "active")),
            ("POST", "runs/log-metric"): lambda c, b: _empty(t.log_metric(c, b)),
            ("POST", "runs/log-parameter"): lambda c, b: _empty(t.log_param(c, b)),
            ("POST", "runs/set-tag"): lambda c, b: _empty(t.set_tag(c, b)),
            ("POST", "runs/delete-tag"): lambda c, b: _empty(t.delete_tag(c, run_id(b), b.get("key"))),
            ("POST", "runs/log-batch"): lambda c, b: _empty(t.log_batch(
                c, run_id(b), _seq(b, "metrics"), _seq(b, "params"), _seq(b, "tags"))),
            ("POST", "runs/log-inputs"): lambda c, b: _empty(t.log_inputs(c, run_id(b), _seq(b, "datasets"))),
            ("POST", "runs/search"): search_runs,
            # MLflow 3 clients search logged models before listing a run's artifact folders; Kaip keeps models as
            # run artifacts and registry versions, so there are none to find (an empty page, not a 501).
            ("POST", "logged-models/search"): lambda c, b: {"models": []},
            ("GET", "runs/search"): search_runs,
            ("GET", "metrics/get-history"): lambda c, b: t.get_metric_history(
                c, run_id(b), b.get("metric_key"), max_results=b.get("max_results"), page_token=b.get("page_token")),
            ("GET", "artifacts/list"): list_run_artifacts,
            # registered models
            ("POST", "registered-models/create"): lambda c, b: {"registered_model": r.create_model(
                c, ns(c), b.get("name"), tags=b.get("tags") or [], description=b.get("description"))},
            ("GET", "registered-models/get"): lambda c, b: {"registered_model": r.get_model(c, ns(c), b.get("name"))},
            ("POST", "registered-models/rename"): lambda c, b: {"registered_model": r.rename_model(
                c, ns(c), b.get("name"), b.get("new_name"))},
            ("PATCH", "registered-models/update"): lambda c, b: {"registered_model": r.update_model(
                c, ns(c), b.get("name"), b.get("description"))},
            ("DELETE", "registered-models/delete"): lambda c, b: _empty(r.delete_model(c, ns(c), b.get("name"))),
            ("GET", "registered-models/search"): lambda c, b: r.search_models(
                c, ns(c), filter_string=b.get("filter"), max_results=b.get("max_results"),
                order_by=b.get("order_by"), page_token=b.get("page_token")),
            ("POST", "registered-models/get-latest-versions"): lambda c, b: {"model_versions": r.latest_versions(
                c, ns(c), b.get("name"), b.get("stages"))},
            ("GET", "registered-models/get-latest-versions"): lambda c, b: {"model_versions": r.latest_versions(
                c, ns(c), b.get("name"), b.get("stages"))},
            ("POST", "registered-models/set-tag"): lambda c, b: _empty(r.set_model_tag(
                c, ns(c), b.get("name"), b.get("key"), b.get("value"))),
            ("DELETE", "registered-models/delete-tag"): lambda c, b: _empty(r.delete_model_tag(
                c, ns(c), b.get("name"), b.get("key"))),
            ("POST", "registered-models/alias"): lambda c, b: _empty(r.set_alias(
                c, ns(c), b.get("name"), b.get("alias"), b.get("version"))),
            ("DELETE", "registered-models/alias"): lambda c, b: _empty(r.delete_alias(
                c, ns(c), b.get("name"), b.get("alias"))),
            ("GET", "registered-models/alias"): lambda c, b: {"model_version": r.version_by_alias(
                c, ns(c), b.get("name"), b.get("alias"))},
            # model versions
            ("POST", "model-versions/create"): lambda c, b: {"model_version": r.create_version(c, ns(c), b)},
            ("GET", "model-versions/get"): lambda c, b: {"model_version": r.get_version(
                c, ns(c), b.get("name"), b.get("version"))},
            ("PATCH", "model-versions/update"): lambda c, b: {"model_version": r.update_version(
                c, ns(c), b.get("name"), b.get("version"), b.get("description"))},
            ("DELETE", "model-versions/delete"): lambda c, b: _empty(r.delete_version(
                c, ns(c), b.get("name"), b.get("version"))),
            ("POST", "model-versions/transition-stage"): lambda c, b: {"model_version": r.transition_stage(
                c, ns(c), b.get("name"), b.get("version"), b.get("stage"), b.get("archive_existing_versions"))},
            ("GET", "model-versions/search"): lambda c, b: r.search_versions(
                c, ns(c), filter_string=b.get("filter"), max_results=b.get("max_results"),
                order_by=b.get("order_by"), page_token=b.get("page_token")),
            ("GET", "model-versions/get-download-uri"): lambda c, b: {"artifact_uri": r.download_uri(
                c, ns(c), b.get("name"), b.get("version"))},
            ("POST", "model-versions/set-tag"): lambda c, b: _empty(r.set_version_tag(
                c, ns(c), b.get("name"), b.get("version"), b.get("key"), b.get("value"))),
            ("DELETE", "model-versions/delete-tag"): lambda c, b: _empty(r.delete_version_tag(
                c, ns(c), b.get("name"), b.get("version"), b.get("key"))),
        }
        return table


def _empty(_: Any) -> dict[str, Any]:
    return {}


def _seq(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_parameter(f"Invalid value for parameter '{name}': expected a list")
    return value
