"""Kaip's transformer runtime: a user's Python class with `preprocess` / `postprocess` (as KServe's `Model` has)
between the gateway and the predictor.

`--transformer_module` is a `.py` file (or an importable module name); `--transformer_class` names the class,
or, when omitted, the one class the module defines with a `preprocess` or `postprocess`. The class is built with
`name=` the model name when its `__init__` takes it. Each POST's JSON body goes through `preprocess(payload,
headers)`, is POSTed to the predictor at the same path (`--predictor_url`, with the InferenceService's internal
token from `KAIP_PREDICTOR_TOKEN`), and the predictor's JSON answer goes through `postprocess(response, headers)`.
Either method may be async, may leave out `headers`, and may be missing (the payload passes unchanged). GETs
(model metadata, model ready) are forwarded as they are. An exception from the user's code is a 400 when it
carries a `status`/`status_code` below 500 (KServe's InvalidInput), else a 500 naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kaip.serving.runtimes.server import error, health_routes, parse_args, serve

FORWARD_HEADERS = ("content-type", "x-request-id", "ce-id", "traceparent")


def load_module(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise RuntimeError(f"transformer module {spec} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"kaip_user_transformer_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise RuntimeError(f"cannot load {spec} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def find_class(module: ModuleType, name: str | None) -> type:
    """Pure: the named class, or the single class defined in the module with preprocess or postprocess."""
    if name:
        cls = getattr(module, name, None)
        if not isinstance(cls, type):
            raise RuntimeError(f"{module.__name__} has no class {name}")
        return cls
    found = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
             and (hasattr(v, "preprocess") or hasattr(v, "postprocess"))]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise RuntimeError(f"name the class with --transformer_class: {module.__name__} defines {len(found)} "
                           f"classes with preprocess/postprocess ({names})")
    return found[0]


def instantiate(cls: type, model_name: str) -> Any:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "name" in params:
        return cls(name=model_name)
    return cls()


async def call_hook(obj: Any, method: str, payload: Any, headers: dict[str, str]) -> Any:
    fn = getattr(obj, method, None)
    if fn is None:
        return payload
    try:
        takes_headers = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        takes_headers = False
    result = fn(payload, headers) if takes_headers else fn(payload)
    if inspect.isawaitable(result):
        result = await result
    return result


def user_error(err: Exception, method: str) -> JSONResponse:
    status = getattr(err, "status", None) or getattr(err, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return error(str(err), status)
    return error(f"{method} failed: {type(err).__name__}: {err}", 500)


def build_app(obj: Any, predictor_url: str, token: str | None, registry: CollectorRegistry) -> Starlette:
    pre_seconds = Histogram("request_preprocess_seconds", "Time spent in preprocess", registry=registry)
    post_seconds = Histogram("request_postprocess_seconds", "Time spent in postprocess", registry=registry)
    auth = {"authorization": f"Bearer {token}"} if token else {}
    client = httpx.AsyncClient(timeout=httpx.Timeout(None), trust_env=False)

    def headers_of(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k in FORWARD_HEADERS}

    async def forward_get(request: Request) -> Response:
        resp = await client.get(predictor_url + request.url.path, headers={**headers_of(request), **auth})
        return Response(resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", "application/json"))

    async def transform(request: Request) -> Response:
        headers = dict(request.headers)
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(f"Unrecognized request format: {err}", 400)
        started = time.perf_counter()
        try:
            payload = await call_hook(obj, "preprocess", payload, headers)
        except Exception as err:  # the user's code: any failure is answered, never crashes the server
            return user_error(err, "preprocess")
        pre_seconds.observe(time.perf_counter() - started)
        try:
            resp = await client.post(predictor_url + request.url.path, content=json.dumps(payload).encode(),
                                     headers={**headers_of(request), "content-type": "application/json", **auth})
        except httpx.HTTPError as err:
            return error(f"the predictor did not answer: {err!r}", 502)
        if resp.status_code != 200:
            return Response(resp.content, status_code=resp.status_code,
                            media_type=resp.headers.get("content-type", "application/json"))
        started = time.perf_counter()
        try:
            out = await call_hook(obj, "postprocess", resp.json(), headers)
        except Exception as err:
            return user_error(err, "postprocess")
        post_seconds.observe(time.perf_counter() - started)
        return JSONResponse(out)

    return Starlette(routes=[
        *health_routes(registry),
        Route("/{path:path}", forward_get, methods=["GET"]),
        Route("/{path:path}", transform, methods=["POST"]),
    ])


def main(argv: list[str] | None = None) -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--predictor_url", required=True)
        parser.add_argument("--transformer_module", default=os.environ.get("TRANSFORMER_MODULE"))
        parser.add_argument("--transformer_class", default=os.environ.get("TRANSFORMER_CLASS"))

    args = parse_args("Kaip transformer", extra, argv)
    try:
        if not args.transformer_module:
            raise RuntimeError("--transformer_module=FILE.py is required (in the transformer container's args)")
        obj = instantiate(find_class(load_module(args.transformer_module), args.transformer_class), args.model_name)
    except Exception as err:
        print(f"kaip-transformer: cannot load the transformer of {args.model_name!r}: {err}", file=sys.stderr,
              flush=True)
        sys.exit(1)
    print(f"kaip-transformer: {type(obj).__name__} for {args.model_name} on {args.host}:{args.http_port}, "
          f"predictor {args.predictor_url}", flush=True)
    serve(build_app(obj, args.predictor_url.rstrip("/"), os.environ.get("KAIP_PREDICTOR_TOKEN"),
                    CollectorRegistry()), args.host, args.http_port)


if __name__ == "__main__":
    main()
