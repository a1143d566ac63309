"""The HTTP side every Kaip runtime shares: KServe v1 and Open Inference v2 routes over a `Model`, health,
Prometheus metrics, and the command line (`--model_name`, `--model_dir`, `--http_port`, as KServe's servers).

KServe's error shape: `{"error": message}` with 400 for bad input, 404 for an unknown model, 503 while not
ready, 501 for what is not implemented.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kaip import __version__, heap
from kaip.serving.runtimes import oip


class ModelError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Model:
    """What a runtime implements. `infer` maps named input arrays to named output arrays (OIP v2);
    `predict` takes v1 instances. `explain` is optional."""

    name: str
    version: str | None = None
    platform: str = ""
    ready: bool = False
    # `infer` / `predict` are short and hold the GIL (a classical model on request-sized batches): call them on the
    # event loop, as KServe calls a synchronous predict, not in a worker thread whose hand-offs cost more than the
    # prediction (iris at concurrency 64: ~4,500 → ~5,500 req/s)
    inline: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "inputs": [], "outputs": [],
                **({"versions": [self.version]} if self.version else {})}

    def infer(self, inputs: list[oip.Tensor], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        raise ModelError("v2 inference is not implemented by this runtime", 501)

    def predict(self, instances: list[Any]) -> list[Any]:
        raise ModelError("v1 predict is not implemented by this runtime", 501)

    def explain(self, instances: list[Any]) -> dict[str, Any]:
        raise ModelError("explain is not implemented by this runtime", 501)


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def health_routes(registry: CollectorRegistry) -> list[Route]:
    """What every auxiliary runtime (transformer, explainer) answers the prober and Prometheus with."""
    async def ready(_: Request) -> Response:
        return JSONResponse({"ready": True})

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/v2/health/ready", ready), Route("/v2/health/live", live), Route("/metrics", metrics)]


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model_name", default=os.environ.get("MODEL_NAME", "model"))
    parser.add_argument("--model_dir", default=os.environ.get("MODEL_DIR", "/mnt/models"))
    parser.add_argument("--http_port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--host", default="127.0.0.1")
    if extra:
        extra(parser)
    args, _unknown = parser.parse_known_args(argv)
    return args


def build_app(model: Model, registry: CollectorRegistry, routes: list[Route] | None = None) -> Starlette:
    """Routes of KServe's model server for one model."""
    predict_seconds = Histogram("request_predict_seconds", "Time spent in predict", ["model_name"],
                                registry=registry)

    def find(name: str) -> Response | None:
        if name != model.name:
            return error(f"Model with name {name} does not exist.", 404)
        if not model.ready:
            return error(f"Model with name {name} is not ready.", 503)
        return None

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def v2_live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(_: Request) -> Response:
        return JSONResponse({"ready": model.ready}, status_code=200 if model.ready else 503)

    async def v2_server(_: Request) -> Response:
        return JSONResponse({"name": "kaip", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def v2_models(_: Request) -> Response:
        return JSONResponse({"models": [model.name]})

    def version_ok(request: Request) -> Response | None:
        version = request.path_params.get("version")
        if version is not None and version != (model.version or "1"):
            return error(f"Model {model.name} has no version {version}", 404)
        return None

    async def v2_model(request: Request) -> Response:
        if (bad := find(request.path_params["name"])) or (bad := version_ok(request)):
            return bad
        return JSONResponse(model.metadata())

    async def v2_model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        if name != model.name:
            return error(f"Model with name {name} does not exist.", 404)
        if bad := version_ok(request):
            return bad
        return JSONResponse({"name": name, "ready": model.ready})

    async def predicting(fn: Callable[..., Any], *args: Any) -> Any:
        """`infer` / `predict`: on the event loop for an `inline` model, else in a worker thread."""
        return fn(*args) if model.inline else await asyncio.to_thread(fn, *args)

    async def v2_infer(request: Request) -> Response:
        if (bad := find(request.path_params["name"])) or (bad := version_ok(request)):
            return bad
        body = await request.body()
        try:
            req = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH))
            started = time.perf_counter()
            outputs = await predicting(model.infer, req.inputs, req.parameters)
            predict_seconds.labels(model.name).observe(time.perf_counter() - started)
            payload, headers = oip.encode_response(model.name, model.version, req, outputs)
        except oip.ProtocolError as err:
            return error(str(err), err.status)
        except ModelError as err:
            return error(str(err), err.status)
        return Response(payload, headers=headers)

    async def v1_models(_: Request) -> Response:
        return JSONResponse({"models": [model.name]})

    async def v1_model(request: Request) -> Response:
        name = request.path_params["name"]
        if name != model.name:
            return error(f"Model with name {name} does not exist.", 404)
        return JSONResponse({"name": name, "ready": model.ready}, status_code=200 if model.ready else 503)

    async def v1_verb(request: Request) -> Response:
        name, verb = request.path_params["name_verb"].rpartition(":")[::2]
        if verb not in ("predict", "explain"):
            return error(f"unknown verb :{verb} (predict or explain)", 404)
        if bad := find(name):
            return bad
        try:
            doc = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(f"Unrecognized request format: {err}", 400)
        if not isinstance(doc, dict):
            return error("Unrecognized request format: the body must be a JSON object", 400)
        instances = doc.get("instances", doc.get("inputs"))
        if not isinstance(instances, list):
            return error('Expected "instances" (or "inputs") to be a list', 400)
        started = time.perf_counter()
        try:
            if verb == "predict":
                out: dict[str, Any] = {"predictions": await predicting(model.predict, instances)}
                predict_seconds.labels(model.name).observe(time.perf_counter() - started)
            else:
                out = await asyncio.to_thread(model.explain, instances)
        except ModelError as err:
            return error(str(err), err.status)
        return JSONResponse(out)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    all_routes = [
        Route("/", live), Route("/v2/health/live", v2_live), Route("/v2/health/ready", v2_ready),
        # Upstream's document names the server metadata path `/v2/` (with the slash): answered, not redirected.
        Route("/v2", v2_server), Route("/v2/", v2_server), Route("/v2/models", v2_models),
        Route("/v2/models/{name}", v2_model), Route("/v2/models/{name}/versions/{version}", v2_model),
        Route("/v2/models/{name}/ready", v2_model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", v2_model_ready),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
        Route("/v1/models", v1_models), Route("/v1/models/{name}", v1_model),
        Route("/v1/models/{name_verb}", v1_verb, methods=["POST"]),
        Route("/metrics", metrics),
        *(routes or []),
    ]
    return Starlette(routes=all_routes)


def serve(app: Starlette, host: str, port: int) -> None:
    import uvicorn

    heap.freeze()  # the model is loaded: keep the collector's full passes off it
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
