"""The inference gateway, mounted on the Kaip server at `/serving/{namespace}/{name}/…`.

Per request: authenticate (a Kaip token with a role in the namespace, unless the InferenceService is public),
pick a revision by the traffic split, pick the replica with the fewest requests in flight that has room under
containerConcurrency (waiting for room, or, during a cold start, for a replica to become ready: the activator),
forward over a pooled keep-alive connection (`upstream.py`) and stream the answer back chunk by chunk. A replica
that dies before answering is marked unready and the request is retried on another. Metrics, the prediction log and
CloudEvents are recorded on the way out.

`GET /serving/-/predictions/{namespace}/{name}?since=1h` reads the prediction log.

Request hooks (`Gateway.hooks`) let other subsystems take part without the gateway knowing them: a hook may rewrite
the request body before it is forwarded and return a function that rewrites a JSON response (knowledge bases add
retrieved context to a chat request and its sources to the answer). A hook may also answer in place of the model
(a `Reply`: nothing is forwarded) and return a `Rewrite`: a JSON transform (sync or async), a transform of a
streamed (`text/event-stream`) answer's bytes, and a transform of the prediction-log record (guardrails redact
what is logged and add their detections). Headers in `Gateway.private_headers` are never forwarded to a replica.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from kaip.api import errors
from kaip.serving import cloudevents
from kaip.serving.balancer import Endpoint, pick
from kaip.serving.batcher import Batcher, BatchError, instances_of
from kaip.serving.internal import EXPLAINER_SUFFIX
from kaip.serving.metrics import GatewayMetrics, protocol_of
from kaip.serving.predictions import PredictionLog, parse_duration, payload, token_counts
from kaip.serving.system import Route, ServingSystem
from kaip.serving.upstream import UpstreamConnectionError, UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"host",
              b"authorization", b"content-length", b"proxy-authorization"}
RESPONSE_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
LOG_CAPTURE_LIMIT = 1024 * 1024
REVISION_HEADER = b"x-kaip-revision"  # which revision answered: lets clients and tests see the split


JsonTransform = Callable[[Any], Any]  # may return an awaitable
StreamTransform = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
RecordTransform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Reply:
    """A hook's own answer, sent instead of forwarding the request (the model is not called)."""

    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass
class Rewrite:
    """What a hook changes on the way back: a whole JSON answer, a streamed answer, the prediction-log record."""

    json: JsonTransform | None = None
    stream: StreamTransform | None = None
    record: RecordTransform | None = None


class RequestHook(Protocol):
    async def request(self, route: Route, path: str, body: bytes, user: str | None,
                      headers: Mapping[str, str]) -> tuple[bytes | Reply, JsonTransform | Rewrite | None]: ...


class _HeaderView(Mapping[str, str]):
    """The request's headers by lower-case name, built only if a hook looks at them (most requests' hooks do not)."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._dict: dict[str, str] | None = None

    def _get(self) -> dict[str, str]:
        if self._dict is None:
            self._dict = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw}
        return self._dict

    def __getitem__(self, key: str) -> str:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class GatewayError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _relocated(headers: list[tuple[bytes, bytes]], relocate: tuple[str, str] | None) -> list[tuple[bytes, bytes]]:
    """A replica's `Location` names the replica (its 127.0.0.1 port, or a path from its root): `relocate` is
    (the replica's URL, the InferenceService's public path), and the header is rewritten to go through the gateway."""
    if relocate is None:
        return headers
    origin, public = (x.encode("latin-1") for x in relocate)
    out = []
    for key, value in headers:
        if key.lower() == b"location":
            if value.startswith(origin + b"/") or value == origin:
                value = public + value[len(origin):]
            elif value.startswith(b"/") and not value.startswith(b"//"):
                value = public + value
        out.append((key, value))
    return out


async def _send_json(send: Send, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Gateway:
    def __init__(self, system: ServingSystem, authorizer: Any, metrics: GatewayMetrics, predictions: PredictionLog
                 ) -> None:
        self.system = system
        self.authorizer = authorizer
        self.metrics = metrics
        self.predictions = predictions
        self._pools: dict[int, UpstreamPool] = {}
        self._clients: dict[int, aiohttp.ClientSession] = {}  # for the inference logger's CloudEvents
        self._freed: dict[tuple[str, str], asyncio.Event] = {}
        self._batchers: dict[tuple[str, str, str], Batcher] = {}  # (namespace, route, revision)
        self.hooks: list[RequestHook] = []
        self.private_headers: set[bytes] = set()  # lower-case names; seen by hooks, never forwarded
        self._turn = 0

    def _pool(self) -> UpstreamPool:
        """One upstream connection pool per event loop. Our own lean HTTP/1.1 client (`upstream.py`) rather than
        aiohttp, whose per-request cost was most of the gateway's (and httpx's about 1 ms more than aiohttp's)."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(id(loop))
        if pool is None or pool.loop is not loop:  # an id can be reused by a later loop
            pool = self._pools[id(loop)] = UpstreamPool(limit=2000, keepalive_timeout=30)
        return pool

    def _events_client(self) -> aiohttp.ClientSession:
        """aiohttp for the inference logger's CloudEvents: off the request path, and its URL may be https."""
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None or client.closed:
            connector = aiohttp.TCPConnector(limit=2000, keepalive_timeout=30, force_close=False)
            # Bodies pass through as the replica sent them: no decompression, no cookies, no proxies from env.
            client = self._clients[loop_id] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None))
        return client

    # ---- ASGI ---------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        path = path.removeprefix("/serving")
        parts = path.lstrip("/").split("/", 2)
        try:
            if parts[0] == "-" and len(parts) == 3 and parts[1] == "predictions":
                await self._predictions(scope, send, parts[2])
                return
            if len(parts) < 2 or not parts[0] or not parts[1]:
                raise GatewayError(404, "serving paths are /serving/{namespace}/{name}/...")
            namespace, name = parts[0], parts[1]
            rest = "/" + (parts[2] if len(parts) > 2 else "")
            route = self.system.routes.get((namespace, name))
            if rest.endswith(":explain"):  # as KServe's ingress: `:explain` goes to the explainer when there is one
                route = self.system.routes.get((namespace, name + EXPLAINER_SUFFIX), route)
            user = None
            if route is None or not route.public:
                user = await self._authorize(scope, namespace)
            if route is None:
                raise GatewayError(404, f"InferenceService {namespace}/{name} not found or not yet reconciled")
            # The InferenceService's public path, for a replica's redirects (which name the replica's own address)
            public = scope["path"][:len(scope["path"]) - len(parts[2])] if len(parts) > 2 else scope["path"]
            await self._proxy(scope, receive, send, route, rest, user, public=public.rstrip("/"))
        except GatewayError as err:
            await _send_json(send, err.status, {"error": str(err)})

    async def _authorize(self, scope: Scope, namespace: str) -> str:
        header = None
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                header = value.decode("latin-1")
        try:
            ident = self.authorizer.authenticate_cached(header) or \
                await run_in_threadpool(self.authorizer.authenticate, header)
        except errors.ApiError as err:
            raise GatewayError(401, err.message) from err
        if self.authorizer.rank(ident.user, namespace) < 1:
            raise GatewayError(403, f'User "{ident.user}" has no role in the namespace "{namespace}"')
        return str(ident.user)

    async def _predictions(self, scope: Scope, send: Send, rest: str) -> None:
        namespace, _, name = rest.partition("/")
        await self._authorize(scope, namespace)
        query = dict(q.split("=", 1) for q in scope.get("query_string", b"").decode().split("&") if "=" in q)
        try:
            since = parse_duration(query["since"]) if "since" in query else None
            limit = int(query.get("limit", "1000"))
        except ValueError as err:
            raise GatewayError(400, f"invalid since or limit: {err}") from err
        records = await run_in_threadpool(self.predictions.query, namespace, name, since_seconds=since, limit=limit)
        await _send_json(send, 200, {"items": records})

    # ---- proxying -----------------------------------------------------------------------------------------

    async def _read_body(self, receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(499, "client disconnected")
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    def _freed_event(self, key: tuple[str, str]) -> asyncio.Event:
        ev = self._freed.get(key)
        if ev is None:
            ev = self._freed[key] = asyncio.Event()
        return ev

    async def _acquire(self, route: Route, revision: str, deadline: float, tried: frozenset[str]) -> Endpoint:
        """A replica with room, waiting for one if need be (the activator path when none is ready)."""
        key = (route.namespace, revision)
        poked = False
        while True:
            eps = self.system.endpoints.get(key, [])
            self._turn += 1
            ep = pick(eps, route.concurrency, self._turn, tried)
            if ep is None and tried and not any(e.ready and e.pod not in tried for e in eps):
                ep = pick(eps, route.concurrency, self._turn)  # every replica was tried: any ready one will do
            if ep is not None:
                ep.inflight += 1
                return ep
            if not any(e.ready for e in eps):
                moved = self._moved_from(route, revision)
                if moved is not None and moved != revision:  # traffic left this revision while we waited
                    revision, key = moved, (route.namespace, moved)
                    continue
                if not poked:
                    self.system.poke((route.namespace, route.name))  # cold start: let the controller scale up now
                    poked = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GatewayError(503 if not any(e.ready for e in eps) else 429,
                                   f"no replica of {revision} became available within {route.timeout:.0f}s")
            ev = self._freed_event(key)
            try:
                await asyncio.wait_for(ev.wait(), min(remaining, 0.02))
            except TimeoutError:
                pass

    def _moved_from(self, route: Route, revision: str) -> str | None:
        """Another revision to use when the route as it is now sends `revision` no traffic (a rollout or rollback
        happened after this request picked it), else None."""
        current = self.system.routes.get((route.namespace, route.name))
        if current is None or any(t.revision == revision and t.percent > 0 for t in current.targets):
            return None
        return current.picker.pick()

    def _retry_revision(self, route: Route, revision: str, tried: set[str]) -> str:
        """The revision a retry goes to: the same one while it has another ready replica, else one picked from the
        route as it is now — traffic may have moved on (a promotion or rollback scaled this revision down while the
        request was in flight), and waiting for a revision that no longer gets traffic would never end."""
        eps = self.system.endpoints.get((route.namespace, revision), [])
        if any(e.ready and e.pod not in tried for e in eps):
            return revision
        current = self.system.routes.get((route.namespace, route.name))
        picked = current.picker.pick() if current is not None else None
        return picked or revision

    def _release(self, route: Route, ep: Endpoint) -> None:
        ep.inflight = max(ep.inflight - 1, 0)
        ev = self._freed.get((route.namespace, ep.revision))
        if ev is not None:
            ev.set()
            ev.clear()

    async def _apply_hooks(self, scope: Scope, route: Route, rest: str, body: bytes,
                           user: str | None) -> tuple[bytes | Reply, list[Rewrite]]:
        rewrites: list[Rewrite] = []
        if not self.hooks or scope["method"] != "POST":
            return body, rewrites
        headers = _HeaderView(scope.get("headers", []))
        for hook in self.hooks:
            try:
                result, transform = await hook.request(route, rest, body, user, headers)
            except errors.ApiError as err:
                raise GatewayError(err.code, err.message) from err
            if transform is not None:
                rewrites.append(transform if isinstance(transform, Rewrite) else Rewrite(json=transform))
            if isinstance(result, Reply):
                return result, rewrites
            body = result
        return body, rewrites

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, route: Route, rest: str,
                     user: str | None = None, *, public: str = "") -> None:
        started = time.monotonic()
        original = await self._read_body(receive)
        hooked, rewrites = await self._apply_hooks(scope, route, rest, original, user)
        records = [r.record for r in rewrites if r.record is not None]
        req_headers = [(k, v) for k, v in scope.get("headers", []) if k not in HOP_BY_HOP
                       and k not in self.private_headers]
        request_id = (next((v.decode() for k, v in req_headers if k in (b"x-request-id", b"ce-id")), None)
                      or str(uuid.uuid4())) if route.logger is not None else ""
        if isinstance(hooked, Reply):
            await send({"type": "http.response.start", "status": hooked.status,
                        "headers": [(b"content-type", hooked.content_type.encode()),
                                    (b"content-length", str(len(hooked.body)).encode())]})
            await send({"type": "http.response.body", "body": hooked.body})
            if route.logger is not None:
                self._log_prediction(route, None, rest, original, scope, hooked.status, hooked.body, request_id,
                                     time.monotonic() - started, records)
            return
        body = hooked
        revision = route.picker.pick()
        if revision is None:
            raise GatewayError(503, f"InferenceService {route.namespace}/{route.name} has no revision to route to")
        protocol = protocol_of(rest)
        labels = (route.namespace, route.name, revision, protocol)
        meter = self.system.meter(route.namespace, revision)
        meter.start(started)
        inflight, latency, failures = self.metrics.series(labels)
        inflight.inc()
        code = 502
        captured: list[bytes] = []
        query = scope.get("query_string", b"").decode()
        url_path = rest + (f"?{query}" if query else "")
        try:
            if route.batcher is not None and scope["method"] == "POST" and rest.endswith(":predict"):
                code = await self._batched(send, route, revision, url_path, body, captured)
            else:
                code = await self._forward(scope, send, route, revision, url_path, body, req_headers, started,
                                           captured, rewrites, public=public)
        finally:
            now = time.monotonic()
            meter.end(now)
            inflight.dec()
            self.metrics.requests_for(labels, code).inc()
            latency.observe(now - started)
            if code >= 500:
                failures.inc()
            if route.logger is not None:
                self._log_prediction(route, revision, rest, body, scope, code, b"".join(captured), request_id,
                                     now - started, records)

    async def _forward(self, scope: Scope, send: Send, route: Route, revision: str, url_path: str, body: bytes,
                       headers: list[tuple[bytes, bytes]], started: float, captured: list[bytes],
                       rewrites: list[Rewrite] | None = None, *, public: str = "") -> int:
        deadline = started + route.timeout
        tried: set[str] = set()
        pool = self._pool()
        transforms = [r.json for r in rewrites or [] if r.json is not None]
        streams = [r.stream for r in rewrites or [] if r.stream is not None]
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                revision = self._retry_revision(route, revision, tried)
            ep = await self._acquire(route, revision, deadline, frozenset(tried))
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                # The deadline bounds the wait for the answer and each pause within a stream, not a whole stream.
                try:
                    response = await pool.request(scope["method"], ep.url + url_path, headers, body,
                                                  connect_timeout=min(remaining, 2.0), read_timeout=remaining)
                except UpstreamConnectionError as err:
                    # The replica died (or is restarting) before answering, or cannot be reached in time: nothing
                    # was sent to the client yet.
                    ep.ready = False
                    tried.add(ep.pod)
                    self.metrics.retries.labels(route.namespace, route.name, revision).inc()
                    log.info("retrying %s on another replica of %s (attempt %d): %r", url_path, revision,
                             attempt + 1, err)
                    continue
                except TimeoutError as err:
                    raise GatewayError(504, f"the model did not answer within {route.timeout:.0f}s "
                                            "(spec.predictor.timeout)") from err
                try:
                    # Looked at only when something depends on them: most answers are passed on untouched.
                    ctype = response.headers.get("content-type", "") if transforms or streams else ""
                    relocate = (ep.url, public) if public and any(
                        k.lower() == b"location" for k, _ in response.raw_headers) else None
                    if transforms and response.status == 200 and ctype.startswith("application/json"):
                        await self._send_transformed(send, response, transforms, revision, captured
                                                     if route.logger is not None else None, relocate)
                    else:
                        await self._stream(send, response, captured if route.logger is not None else None,
                                           revision, streams if response.status == 200 and
                                           ctype.startswith("text/event-stream") else None, relocate)
                finally:
                    response.release()
                return response.status
            finally:
                self._release(route, ep)
        raise GatewayError(502, f"no replica of {revision} answered after {MAX_ATTEMPTS} attempts")

    async def _batched(self, send: Send, route: Route, revision: str, url_path: str, body: bytes,
                       captured: list[bytes]) -> int:
        """A v1 `:predict` through the component's batcher (`batcher.py`); returns the status sent."""
        assert route.batcher is not None
        try:
            instances = instances_of(body)
        except BatchError as err:
            raise GatewayError(err.status, str(err)) from err
        key = (route.namespace, route.name, revision)
        batcher = self._batchers.get(key)
        if batcher is None or batcher.settings != route.batcher:

            async def send_batch(path: str, batch_body: bytes) -> tuple[int, bytes]:
                answer: list[bytes] = []
                status: list[int] = []

                async def capture(message: dict[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        status.append(message["status"])
                    else:
                        answer.append(message.get("body", b""))
                code = await self._forward({"method": "POST"}, capture, route, revision, path, batch_body,
                                           [(b"content-type", b"application/json")], time.monotonic(), [])
                return (status[0] if status else code), b"".join(answer)

            batcher = self._batchers[key] = Batcher(route.batcher, send_batch)
        status, raw = await batcher.submit(url_path, instances)
        if route.logger is not None:
            captured.append(raw[:LOG_CAPTURE_LIMIT])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                                (REVISION_HEADER, revision.encode())]})
        await send({"type": "http.response.body", "body": raw})
        return status

    @staticmethod
    async def _send_transformed(send: Send, response: UpstreamResponse, transforms: list[JsonTransform],
                                revision: str, captured: list[bytes] | None,
                                relocate: tuple[str, str] | None = None) -> None:
        """A whole JSON answer, rewritten by the hooks' transforms (the one place the gateway buffers)."""
        raw = await response.read()
        try:
            doc = json.loads(raw)
            for transform in transforms:
                doc = transform(doc)
                if inspect.isawaitable(doc):
                    doc = await doc
            raw = json.dumps(doc).encode()
        except (ValueError, TypeError) as err:
            log.warning("could not rewrite a JSON answer from %s: %r", revision, err)
        if captured is not None:
            captured.append(raw[:LOG_CAPTURE_LIMIT])
        drop = RESPONSE_HOP | {b"content-length", b"content-encoding"}
        headers = _relocated([(k, v) for k, v in response.raw_headers if k.lower() not in drop], relocate)
        headers += [(b"content-length", str(len(raw)).encode()), (REVISION_HEADER, revision.encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    @staticmethod
    async def _stream(send: Send, response: UpstreamResponse, captured: list[bytes] | None,
                      revision: str, streams: list[StreamTransform] | None = None,
                      relocate: tuple[str, str] | None = None) -> None:
        drop = RESPONSE_HOP | {b"content-length"} if streams else RESPONSE_HOP
        headers = _relocated([(k, v) for k, v in response.raw_headers if k.lower() not in drop], relocate)
        headers.append((REVISION_HEADER, revision.encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        size = 0
        source: AsyncIterator[bytes] = response  # each step: all the body bytes that have arrived
        for transform in streams or []:
            source = transform(source)
        try:
            async for chunk in source:
                if captured is not None and size < LOG_CAPTURE_LIMIT:
                    captured.append(chunk)
                    size += len(chunk)
                if not streams and response.ended:  # the last bytes: sent as such, one send (and write) less
                    await send({"type": "http.response.body", "body": chunk})
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (UpstreamError, TimeoutError) as err:
            log.warning("upstream stream broke: %r", err)
        await send({"type": "http.response.body", "body": b""})

    # ---- inference logger ---------------------------------------------------------------------------------

    def _log_prediction(self, route: Route, revision: str | None, path: str, body: bytes, scope: Scope, code: int,
                        response: bytes, request_id: str, seconds: float,
                        records: list[RecordTransform] | None = None) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "application/json")
        logger = route.logger or {}
        request_doc = payload(body, ctype)
        response_doc = payload(response, "application/json") if response else None
        prompt, completion = token_counts(response_doc, response)
        isvc = route.name.partition("~")[0]  # an explainer's route logs into its InferenceService's log
        record = {"id": request_id, "timestamp": time.time(),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "namespace": route.namespace, "inferenceservice": isvc, "revision": revision,
                  "modelVersion": route.annotations.get("serving.kaip.dev/model-version"),
                  "path": path, "status": code, "latencyMs": round(seconds * 1000, 3),
                  "promptTokens": prompt, "completionTokens": completion}
        if records:  # hooks see (and may redact) both payloads; the logger's mode is applied after them
            record = {**record, "request": request_doc, "response": response_doc}
            for transform in records:
                record = transform(record)
            request_doc, response_doc = record.pop("request", None), record.pop("response", None)
            body = request_doc.encode() if isinstance(request_doc, str) else json.dumps(request_doc).encode()
            response = b"" if response_doc is None else response_doc.encode() if isinstance(response_doc, str) \
                else json.dumps(response_doc).encode()
        mode = logger.get("mode") or "all"
        if mode in ("all", "request"):
            record["request"] = request_doc
        if mode in ("all", "response"):
            record["response"] = response_doc
        try:
            self.predictions.append(route.namespace, isvc, record)
        except OSError as err:
            log.warning("prediction log write failed: %s", err)
        if logger.get("url"):
            meta = {h: [headers[h.lower()]] for h in logger.get("metadataHeaders") or [] if h.lower() in headers}
            annotations = {a: route.annotations[a] for a in logger.get("metadataAnnotations") or []
                           if a in route.annotations}
            events = []
            for kind in cloudevents.events_for(logger):
                if kind == "response" and code != 200:
                    continue  # KServe logs responses only when the upstream answered 200
                source = f"kaip://gateway/{revision or route.name}"
                ce = cloudevents.headers(event_id=request_id, kind=kind, source=source,
                                         namespace=route.namespace, name=isvc,
                                         component="explainer" if route.name.endswith(EXPLAINER_SUFFIX)
                                         else "predictor",
                                         endpoint="", content_type=ctype if kind == "request" else "application/json",
                                         metadata=meta or None, annotations=annotations or None)
                events.append((ce, body if kind == "request" else response))
            asyncio.get_running_loop().create_task(self._post_events(logger["url"], events))

    async def _post_events(self, url: str, events: list[tuple[dict[str, str], bytes]]) -> None:
        client = self._events_client()
        for headers, content in events:
            try:
                async with client.post(url, data=content, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=5.0)) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as err:
                log.warning("inference logger: POST to %s failed: %r", url, err)
