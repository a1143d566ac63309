"""HTTP: the Detectors API (/api/v1/text/...), the orchestrator API (/api/v2/..., /api/v1/task/...) on the Kaip
server, and the same orchestrator API per GuardrailsOrchestrator at /serving/{namespace}/{name}/..., plus its
guarded OpenAI endpoint /serving/{namespace}/{name}/v1/chat/completions (the configured policies apply, so an
unmodified OpenAI client is guarded).

Every call needs a Kaip bearer token; per-orchestrator paths need a role in the namespace. Request bodies and
detections are never logged: they may hold personal data.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from kaip.api import errors
from kaip.guardrails.orchestrator import Orchestrator, OrchestratorError, check_fields, check_messages
from kaip.guardrails.registry import DetectorServiceError, builtin_registry
from kaip.guardrails.service import GuardrailsService
from kaip.server.context import ServerContext


def _error(err: OrchestratorError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.code)


def _detector_error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=code)


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OrchestratorError(400, f"Failed to parse the request body as JSON: {err}") from err


async def _authenticate(ctx: ServerContext, request: Request, namespace: str | None = None) -> None:
    header = request.headers.get("authorization")
    ident = ctx.authorizer.authenticate_cached(header) or await run_in_threadpool(ctx.authorizer.authenticate, header)
    if namespace is not None and ctx.authorizer.rank(ident.user, namespace) < 1:
        raise errors.ApiError(403, "Forbidden", f'User "{ident.user}" has no role in the namespace "{namespace}"')


def _sse(chunks: AsyncIterator[dict[str, Any]], *, upstream_errors: bool = False) -> StreamingResponse:
    """Server-sent events. `upstream_errors`: the v1 streaming route's framing, as upstream's orchestrator writes
    it — an error is an `event: error` whose data is the Error itself, and no `[DONE]` ends the stream."""
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n".encode()
        except OrchestratorError as err:
            if upstream_errors:
                yield f"event: error\ndata: {json.dumps(err.to_json())}\n\n".encode()
            else:
                yield f"data: {json.dumps({'error': err.to_json()})}\n\n".encode()
        if not upstream_errors:
            yield b"data: [DONE]\n\n"
    return StreamingResponse(body(), media_type="text/event-stream")


NDJSON = "application/x-ndjson"


def _json_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:  # serde_json's wording: "expected value at line 1 column 1"
        raise OrchestratorError(422, f"{err.msg[:1].lower()}{err.msg[1:]} at line {err.lineno} column "
                                     f"{err.colno}") from err
    except UnicodeDecodeError as err:
        raise OrchestratorError(422, f"invalid UTF-8: {err}") from err


async def _ndjson_request(request: Request) -> AsyncIterator[Any]:
    """The objects of an NDJSON request body, one a line, each as soon as its line is complete."""
    buffer = b""
    async for data in request.stream():
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield _json_line(line)
    if buffer.strip():
        yield _json_line(buffer)


class _DuplexResponse(StreamingResponse):
    """A streamed answer to a request that is still streaming in. Starlette's StreamingResponse watches for a
    disconnect by reading the request (ASGI before 2.4, as uvicorn serves), which would take the body's chunks
    from the handler still reading them; here only the handler reads, and its reads see a disconnect."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError as err:
            raise ClientDisconnect() from err


def _ndjson(results: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """NDJSON, as upstream answers /stream-content: an object a line; an error ends the stream as an Error line."""
    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in results:
                yield (json.dumps(item) + "\n").encode()
        except OrchestratorError as err:
            yield (json.dumps(err.to_json()) + "\n").encode()
        except ClientDisconnect:
            return
    return _DuplexResponse(body(), media_type=NDJSON)


async def _first(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Start the stream before answering, so that a bad request is a 4xx, not an error event."""
    iterator = chunks.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        async def empty() -> AsyncIterator[dict[str, Any]]:
            if False:
                yield {}
        return empty()

    async def rest() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for chunk in iterator:
            yield chunk
    return rest()


Handler = Callable[[Orchestrator, Any, Request], Awaitable[Response]]


def orchestrator_routes(router: APIRouter, prefix: str, resolve: Callable[[Request], Awaitable[Orchestrator]],
                        *, guarded_openai: bool) -> None:
    """Add the orchestrator API under `prefix`. `resolve` authenticates and finds the orchestrator."""

    def route(path: str, handler: Handler, *, json_body: bool = True) -> None:
        async def endpoint(request: Request) -> Response:
            try:
                orchestrator = await resolve(request)
                body = await _json(request) if json_body else None
                return await handler(orchestrator, body, request)
            except OrchestratorError as err:
                return _error(err)
        router.add_api_route(prefix + path, endpoint, methods=["POST"], include_in_schema=False)

    async def unary(fn: Callable[[Any], dict[str, Any]], body: Any) -> Response:
        return JSONResponse(await run_in_threadpool(fn, body))

    async def content(o: Orchestrator, body: Any, _r: Request) -> Response:
        return await unary(o.detect_content, body)

    async def chat(o: Orchestrator, body: Any, _r: Request) -> Response:
        return await unary(o.detect_chat, body)

    async def generated(o: Orchestrator, body: Any, _r: Request) -> Response:
        return await unary(o.detect_generated, body)

    async def context(o: Orchestrator, body: Any, _r: Request) -> Response:
        return await unary(o.detect_context, body)

    async def chat_completions(o: Orchestrator, body: Any, _r: Request, *, policy: bool = False) -> Response:
        if isinstance(body, dict) and body.get("stream"):
            return _sse(await _first(o.chat_completions_stream(body, use_policy=policy, fallback=policy)))
        return JSONResponse(await o.chat_completions(body, use_policy=policy, fallback=policy))

    async def completions(o: Orchestrator, body: Any, _r: Request, *, policy: bool = False) -> Response:
        if isinstance(body, dict) and body.get("stream"):
            return _sse(await _first(o.completions_stream(body, use_policy=policy)))
        return JSONResponse(await o.completions(body, use_policy=policy))

    async def classification(o: Orchestrator, body: Any, _r: Request) -> Response:
        return JSONResponse(await o.classification_with_text_generation(body))

    async def classification_stream(o: Orchestrator, body: Any, _r: Request) -> Response:
        return _sse(await _first(o.classification_with_text_generation_stream(body)), upstream_errors=True)

    async def generation(o: Orchestrator, body: Any, _r: Request) -> Response:
        return JSONResponse(await o.generation_with_detection(body))

    async def stream_content(o: Orchestrator, _body: Any, request: Request) -> Response:
        if not (request.headers.get("content-type") or "").startswith(NDJSON):
            raise OrchestratorError(415, f"expected {NDJSON}")
        try:
            results = await o.open_content_stream(_ndjson_request(request))
        except ClientDisconnect:  # gone before its first message: no one to answer
            return Response(status_code=400)
        return _ndjson(results)

    route("/api/v2/text/detection/content", content)
    route("/api/v2/text/detection/chat", chat)
    route("/api/v2/text/detection/generated", generated)
    route("/api/v2/text/detection/context", context)
    route("/api/v2/chat/completions-detection", chat_completions)
    route("/api/v2/text/completions-detection", completions)
    route("/api/v1/task/classification-with-text-generation", classification)
    route("/api/v1/task/server-streaming-classification-with-text-generation", classification_stream)
    route("/api/v2/text/generation-detection", generation)
    route("/api/v2/text/detection/stream-content", stream_content, json_body=False)
    if guarded_openai:
        async def guarded_chat(o: Orchestrator, body: Any, r: Request) -> Response:
            return await chat_completions(o, body, r, policy=True)

        async def guarded_completions(o: Orchestrator, body: Any, r: Request) -> Response:
            return await completions(o, body, r, policy=True)
        route("/v1/chat/completions", guarded_chat)
        route("/v1/completions", guarded_completions)


def detectors_router(ctx: ServerContext) -> APIRouter:
    """The Detectors API, serving every built-in detector by its id (the `detector-id` header)."""
    router = APIRouter()
    registry = builtin_registry()

    def endpoint(kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            await _authenticate(ctx, request)
            detector_id = request.headers.get("detector-id")
            if not detector_id:
                return _detector_error(422, "missing header `detector-id`")
            spec = registry.get(detector_id or "")
            if spec is None:
                return _detector_error(404, f"detector `{detector_id}` not found")
            try:
                body = await _json(request)
            except OrchestratorError as err:
                # The Detectors API's document answers only 404 and 422, and detector servers (FastAPI) refuse a
                # body that is not JSON with 422; the orchestrator's routes keep upstream's 400 (axum).
                return _detector_error(422, err.details)
            try:
                result = await run_in_threadpool(_run_detector_api, spec, kind, body)
            except OrchestratorError as err:
                return _detector_error(err.code, err.details)
            except DetectorServiceError as err:
                return _detector_error(err.status, str(err))
            return JSONResponse(result)
        return handle

    router.add_api_route("/api/v1/text/contents", endpoint("contents"), methods=["POST"], include_in_schema=False)
    router.add_api_route("/api/v1/text/chat", endpoint("chat"), methods=["POST"],
                         include_in_schema=False)
    router.add_api_route("/api/v1/text/generation", endpoint("generation"), methods=["POST"], include_in_schema=False)
    router.add_api_route("/api/v1/text/context/doc", endpoint("context"), methods=["POST"], include_in_schema=False)
    return router


def _threshold(spec: Any, params: Any) -> tuple[float, dict[str, Any]]:
    if not isinstance(params, dict):
        raise OrchestratorError(422, "`detector_params` must be an object")
    params = dict(params)
    threshold = params.pop("threshold", spec.default_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise OrchestratorError(422, f"`threshold` parameter specified for model `{spec.id}` must be a number")
    if not 0 <= threshold <= 1:
        raise OrchestratorError(422, f"`threshold` parameter specified for model `{spec.id}` must be between 0 and 1")
    return float(threshold), params


def _run_detector_api(spec: Any, kind: str, body: Any) -> Any:
    """One Detectors API call: validate, run, keep detections at or above the threshold."""
    if kind == "contents":
        check_fields(body, required=("contents",), optional=("detector_params",),
                     types={"contents": list, "detector_params": dict})
        if not all(isinstance(c, str) for c in body["contents"]):
            raise OrchestratorError(422, "invalid type: `contents` must be a list of strings")
        threshold, params = _threshold(spec, body.get("detector_params") or {})
        return [[d.content_json() for d in spec.detector.detect(text, params) if d.score >= threshold]
                for text in body["contents"]]
    if kind == "chat":
        check_fields(body, required=("messages",), optional=("tools", "detector_params"),
                     types={"messages": list, "tools": list, "detector_params": dict})
        check_messages(body["messages"])
        threshold, params = _threshold(spec, body.get("detector_params") or {})
        found = spec.detector.detect_chat(body["messages"], params)
    elif kind == "generation":
        check_fields(body, required=("prompt", "generated_text"), optional=("detector_params",),
                     types={"prompt": str, "generated_text": str, "detector_params": dict})
        threshold, params = _threshold(spec, body.get("detector_params") or {})
        found = spec.detector.detect_generation(body["prompt"], body["generated_text"], params)
    else:
        check_fields(body, required=("content", "context_type", "context"), optional=("detector_params",),
                     types={"content": str, "context_type": str, "context": list, "detector_params": dict})
        if body["context_type"] not in ("url", "chunks", "document", "docs"):
            raise OrchestratorError(422, f"unknown variant `{body['context_type']}`, expected one of `url`, "
                                         "`chunks`, `document`")
        threshold, params = _threshold(spec, body.get("detector_params") or {})
        found = spec.detector.detect_context(body["content"], body["context_type"], body["context"], params)
    return [d.spanless_json() for d in found if d.score >= threshold]


def guardrails_router(ctx: ServerContext, service: GuardrailsService) -> APIRouter:
    """Everything at the server's root: the Detectors API and the built-in orchestrator."""
    router = detectors_router(ctx)

    async def resolve(request: Request) -> Orchestrator:
        await _authenticate(ctx, request)
        return service.root()

    orchestrator_routes(router, "", resolve, guarded_openai=False)
    return router


class ServingShim:
    """Sits in front of the serving gateway's `/serving` mount: a path whose {namespace}/{name} is a
    GuardrailsOrchestrator (and whose rest is an orchestrator or guarded OpenAI path) is answered here; anything
    else goes to the gateway untouched."""

    PATHS = ("/api/v2/", "/api/v1/task/", "/v1/chat/completions", "/v1/completions")

    def __init__(self, inner: ASGIApp | None, ctx: ServerContext, service: GuardrailsService) -> None:
        self.inner = inner
        self.service = service
        self.app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        self.app.add_exception_handler(errors.ApiError, _api_error)  # type: ignore[arg-type]
        router = APIRouter()

        async def resolve(request: Request) -> Orchestrator:
            ns, name = request.path_params["namespace"], request.path_params["name"]
            await _authenticate(ctx, request, ns)
            base = str(request.base_url).rstrip("/")
            root = request.scope.get("root_path", "")
            if root and base.endswith(root):
                base = base[: -len(root)]
            return await run_in_threadpool(service.for_request, ns, name, base, dict(request.headers))

        orchestrator_routes(router, "/{namespace}/{name}", resolve, guarded_openai=True)
        self.app.include_router(router)

    async def _known(self, namespace: str, name: str) -> bool:
        cached = self.service.known_cached(namespace, name)
        return cached if cached is not None else await run_in_threadpool(self.service.known, namespace, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            parts = path.removeprefix("/serving").lstrip("/").split("/", 2)
            if len(parts) == 3 and ("/" + parts[2]).startswith(self.PATHS) and \
                    await self._known(parts[0], parts[1]):
                await self.app(scope, receive, send)
                return
        if self.inner is None:
            response = JSONResponse({"error": "not found"}, status_code=404)
            await response(scope, receive, send)
            return
        await self.inner(scope, receive, send)


async def _api_error(_request: Request, exc: errors.ApiError) -> JSONResponse:
    return JSONResponse(exc.to_status(), status_code=exc.code)
