"""The FastAPI application: resource API, discovery, health, metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaip import __version__
from kaip.api import errors
from kaip.server.context import ServerContext
from kaip.server.resources import ResourceAPI, discovery_router

MAX_BODY_BYTES = 3 * 1024 * 1024  # Kubernetes' own request limit
# Request bodies their handlers stream to disk (MLflow artifact uploads): not held in memory, so not limited here.
STREAMED_PATHS = ("/api/2.0/mlflow-artifacts/artifacts/",)
# Prefixes whose bodies are proxied as a stream (JupyterLab's uploads through a workbench): not held, not limited.
STREAMED_PREFIXES = ("/workbenches/",)


def too_large(limit: int) -> bytes:
    """The 413 answer's body (a Kubernetes Status) for a request body over `limit` bytes."""
    err = errors.ApiError(413, "RequestEntityTooLarge", f"the request body is larger than the limit of {limit} bytes")
    return json.dumps(err.to_status()).encode()


class BodyLimit:
    """Refuse request bodies over the limit with 413, whether or not they declare a Content-Length."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or any(p in path for p in STREAMED_PATHS) or path.startswith(STREAMED_PREFIXES):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        seen = 0
        too_large = False

        async def limited() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = too_large(self.limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(ctx: ServerContext, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The application. `routers` (e.g. the MLflow-compatible tracking API) are matched before the resource API's
    catch-all `/api/{version}/...` and `/apis/{group}/{version}/...` routes."""
    app = FastAPI(title="Kaip", version=__version__, docs_url=None, redoc_url=None)
    app.state.ctx = ctx

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/readyz", response_class=PlainTextResponse)
    def readyz() -> Response:
        if not ctx.ready.is_set():
            return PlainTextResponse("starting", status_code=503)
        try:
            ctx.store.current_rv()
        except Exception:
            return PlainTextResponse("store unavailable", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(errors.ApiError)
    async def api_error(_request: Any, exc: errors.ApiError) -> JSONResponse:
        return JSONResponse(exc.to_status(), status_code=exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """A path under the resource API that no route matches (a name with a newline, say, which the routes'
        patterns do not take) is answered as the resource API answers: with a Status."""
        path = request.url.path
        if path in ("/api", "/apis") or path.startswith(("/api/", "/apis/")):
            reason = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Unknown")
            err = errors.ApiError(exc.status_code, reason, "the server could not find the requested resource"
                                  if exc.status_code == 404 else str(exc.detail))
            return JSONResponse(err.to_status(), status_code=exc.status_code, headers=exc.headers)
        return await http_exception_handler(request, exc)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the resource API: every kind's paths and its object schema (named like
        Kubernetes' definitions), so that clients and conformance checks see exactly what each kind accepts."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            from kaip.server.openapi import add_resource_api

            doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                              description="Kaip resource API at Kubernetes REST paths; kind schemas in components.")
            app.openapi_schema = add_resource_api(doc, ctx.registry.all())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodyLimit)
    return app


def add_resource_api(app: FastAPI, ctx: ServerContext) -> None:
    """Discovery and the resource API. Added after every subsystem's routes: the catch-all paths
    `/api/{version}/...` and `/apis/{group}/{version}/...` would otherwise answer for them."""
    app.include_router(discovery_router(ctx))
    app.include_router(ResourceAPI(ctx).router)


def ingress_domain() -> str:
    """The domain of KServe-style host names, `{name}.{namespace}.{domain}` (KServe's default: example.com)."""
    return os.environ.get("KAIP_INGRESS_DOMAIN", "example.com").strip(".").lower()


def host_route(host: bytes, domain: bytes) -> tuple[str, str] | None:
    """(namespace, name) for a Host header `{name}.{namespace}.{domain}[:port]` (also KServe's component host
    `{name}-predictor.…`, which Kaip serves on the same route), else None (pure)."""
    name_ns = host.split(b":", 1)[0].lower().removesuffix(b"." + domain)
    if len(name_ns) == len(host.split(b":", 1)[0]) or name_ns.count(b".") != 1:
        return None
    name, namespace = name_ns.decode("latin-1").split(".")
    if not name or not namespace:
        return None
    return namespace, name.removesuffix("-predictor")


class FastPaths:
    """Hands requests under a mounted prefix (the inference gateway at `/serving`, workbenches at `/workbenches`)
    straight to the mounted app, past FastAPI's middleware and route matching, which cost the gateway's hot path
    more than the proxying itself. The body limit still applies. Websockets (a workbench's kernels) take the same
    path. A request whose Host names an InferenceService as KServe's ingress does (`iris.default.example.com`) goes
    to the gateway as `/serving/default/iris/...`."""

    def __init__(self, app: ASGIApp, prefixes: dict[str, ASGIApp]) -> None:
        self.app = app
        self.serving = prefixes.get("/serving")  # the gateway, without the body limit (see `dataplane.py`)
        self.prefixes = [(prefix, BodyLimit(target)) for prefix, target in prefixes.items()]
        self.gateway = next((target for prefix, target in self.prefixes if prefix == "/serving"), None)
        self.domain = ingress_domain().encode()

    def serving_path(self, path: str, host: bytes) -> str | None:
        """The gateway's path for a request (`/serving/...`), or None when the request is not the gateway's."""
        if self.serving is None:
            return None
        if path.startswith("/serving/"):
            return path
        found = host_route(host, self.domain) if self.domain in host else None
        return None if found is None else f"/serving/{found[0]}/{found[1]}{path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            for prefix, target in self.prefixes:
                if path.startswith(prefix + "/"):
                    await target({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
                    return
            if self.gateway is not None and scope["type"] == "http":
                host = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
                rewritten = self.serving_path(path, host)
                if rewritten is not None:
                    await self.gateway({**scope, "path": rewritten, "raw_path": rewritten.encode(),
                                        "root_path": scope.get("root_path", "") + "/serving"}, receive, send)
                    return
        await self.app(scope, receive, send)

    def protocol(self) -> Any:
        """The connection protocol for `uvicorn.Config(http=...)`: inference requests are answered by
        `dataplane.DataPlaneProtocol`, everything else by uvicorn's own. "auto" when there is no gateway."""
        if self.serving is None:
            return "auto"
        from kaip.server.dataplane import protocol_factory

        return protocol_factory(self.serving, self.serving_path, MAX_BODY_BYTES)


def fast_paths(app: FastAPI, prefixes: tuple[str, ...] = ("/serving", "/workbenches")) -> ASGIApp:
    from starlette.routing import Mount

    mounts = {r.path: r.app for r in app.router.routes if isinstance(r, Mount) and r.path in prefixes}
    return FastPaths(app, mounts) if mounts else app

