"""The HTTP/1.1 connection protocol of the Kaip server: inference requests are served here, the rest by uvicorn.

uvicorn's per-request machinery (an ASGI cycle object, its middleware, header validation on every `send`, and
a separate socket write for the status line and for the body) cost the gateway about as much CPU as the proxying
itself. This protocol parses requests with httptools as uvicorn does; a request for the inference gateway
(`/serving/...`, or a Host header naming an InferenceService) is answered by calling the gateway's ASGI app with a
lean receive/send that writes each response's head together with its first body bytes. The first request that is
not for the gateway (the resource API, MLflow, a workbench's websocket) hands the connection over to uvicorn's own
protocol for good: the request is re-encoded from what was parsed and fed to it, and later bytes go to it directly.

Behaviour kept from uvicorn: keep-alive with its idle timeout, `Connection: close` and HTTP/1.0, pipelined requests
answered in order, `Expect: 100-continue`, write flow control, graceful shutdown (connections and tasks are
registered in uvicorn's server state), 400 on a malformed request. The body limit is checked while the body is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message

from kaip.server.app import too_large

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase for s in HTTPStatus}
STATUS_LINES = {code: f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\n".encode() for code in range(100, 600)}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class _Request:
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str
    keep_alive: bool
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    refused: bool = False  # the body is over the limit: answered 413 at once, and the connection closed


class DataPlaneProtocol(asyncio.Protocol):
    """One client connection. Built by uvicorn (`uvicorn.Config(http=protocol_factory(...))`) with its config and
    server state; `serving` is the gateway's ASGI app, `route(path, host)` the gateway path a request goes to or
    None when it is not the gateway's."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, serving: ASGIApp,
                 route: Callable[[str, bytes], str | None], limit: int) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.serving = serving
        self.route = route
        self.limit = limit
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        # per request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._request: _Request | None = None
        self._chunked = False  # the request being handed over arrived chunked: its body is re-chunked
        # per connection
        self._queue: deque[_Request] = deque()
        self._busy = False
        self._closing = False  # close once the response in progress is sent (shutdown, Connection: close)
        self._handover: bytearray | None = None  # bytes for uvicorn's protocol, once a request is not ours
        self._disconnected = False
        self._lost: list[asyncio.Future[None]] = []  # one per waiter: cancelling a waiter cancels its future
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._idle: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = tuple(peer[:2]) if isinstance(peer, tuple) else None  # type: ignore[assignment]
        self.server = tuple(local[:2]) if isinstance(local, tuple) else None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disconnected = True
        self.server_state.connections.discard(self)
        self._cancel_idle()
        for waiter in (*self._lost, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._lost.clear()

    def data_received(self, data: bytes) -> None:
        self._cancel_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # an upgrade (a websocket) is never the gateway's: its head is already in the handover
        except httptools.HttpParserCallbackError:
            log.exception("failed to handle a request")
            self._reject(500, b"Internal Server Error")
            return
        except httptools.HttpParserError:
            if self._handover is None:
                self._reject(400, b"Invalid HTTP request received.")
                return
        if self._handover is not None and not self._busy:
            self._hand_over()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now when idle, else after the response in progress."""
        if not self._busy:
            self.transport.close()
        else:
            self._closing = True

    # ---- httptools callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if self._handover is None and not parser.should_upgrade():
            parsed = httptools.parse_url(self._url)
            path = parsed.path.decode("latin-1")
            if "%" in path:
                path = unquote(path)
            host = next((v for k, v in self._headers if k == b"host"), b"")
            path = self.route(path, host)
            if path is not None:
                self._request = request = _Request(method, path, path.encode(), parsed.query or b"",
                                                   self._headers, version,
                                                   version != "1.0" and parser.should_keep_alive())
                length = next((v for k, v in self._headers if k == b"content-length"), None)
                if length is not None and length.isdigit() and int(length) > self.limit:
                    self._refuse(request)
                elif any(k == b"expect" and v.lower() == b"100-continue" for k, v in self._headers):
                    self.transport.write(CONTINUE)
                return
        # Not the gateway's: this request and everything after it go to uvicorn's protocol, re-encoded as parsed.
        self._request = None
        if self._handover is None:
            self._handover = bytearray()
        self._chunked = any(k == b"transfer-encoding" and b"chunked" in v.lower() for k, v in self._headers)
        head = [method.encode("ascii"), b" ", self._url, b" HTTP/", version.encode("ascii"), b"\r\n"]
        for name, value in self._headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self._handover += b"".join(head)

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is None:
            if self._handover is not None:
                self._handover += b"%x\r\n%b\r\n" % (len(body), body) if self._chunked else body
            return
        if request.refused:
            return
        request.body.append(body)
        request.size += len(body)
        if request.size > self.limit:
            self._refuse(request)

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        if request is None:
            if self._handover is not None and self._chunked:
                self._handover += b"0\r\n\r\n"
            return
        if not request.refused:
            self._enqueue(request)

    def _refuse(self, request: _Request) -> None:
        """A body over the limit: answered now (the client may still be sending it), the rest ignored."""
        request.refused = True
        request.body.clear()
        self._enqueue(request)

    def _enqueue(self, request: _Request) -> None:
        self._queue.append(request)
        if not self._busy:
            self._next()

    # ---- answering ----------------------------------------------------------------------------------------

    def _next(self) -> None:
        request = self._queue.popleft()
        self._busy = True
        task = self.loop.create_task(self._answer(request))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _answer(self, request: _Request) -> None:
        writer = _ResponseWriter(self, request)
        try:
            if request.refused:
                writer.keep_alive = False  # the rest of the body was not read
                await writer.send_whole(413, too_large(self.limit))
            else:
                await self.serving(self._scope(request), writer.receive, writer.send)
                if not writer.started and not self._disconnected:  # a client that left gets no answer
                    raise RuntimeError("the app returned without a response")
        except Exception:
            log.exception("the gateway failed on %s %s", request.method, request.path)
            if not writer.started:
                writer.keep_alive = False
                await writer.send_whole(500, b'{"error": "internal server error"}')
        finally:
            self._finished(writer)

    def _finished(self, writer: _ResponseWriter) -> None:
        self._busy = False
        if self._disconnected:
            return
        if not writer.complete or not writer.keep_alive or self._closing:
            self.transport.close()
        elif self._queue:
            self._next()
        elif self._handover is not None:
            self._hand_over()
        else:
            self._idle = self.loop.call_later(self.config.timeout_keep_alive, self._idle_timeout)

    def _scope(self, request: _Request) -> dict[str, Any]:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": request.http_version, "server": self.server, "client": self.client,
                "scheme": "http", "method": request.method, "path": request.path, "raw_path": request.raw_path,
                "root_path": "/serving", "query_string": request.query, "headers": request.headers,
                "state": self.app_state.copy()}

    def _hand_over(self) -> None:
        """uvicorn's protocol takes the connection, with the bytes re-encoded so far."""
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        pending, self._handover = bytes(self._handover or b""), None
        self.server_state.connections.discard(self)
        self._cancel_idle()
        if self._disconnected or self.transport.is_closing():
            return
        successor = HttpToolsProtocol(config=self.config, server_state=self.server_state, app_state=self.app_state,
                                      _loop=self.loop)
        successor.connection_made(self.transport)
        self.transport.set_protocol(successor)
        if pending:
            successor.data_received(pending)

    def _reject(self, status: int, message: bytes) -> None:
        self.transport.write(STATUS_LINES[status] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
                             + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message)
        self.transport.close()

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_timeout(self) -> None:
        self._idle = None
        if not self._busy and not self.transport.is_closing():
            self.transport.close()

    async def drain(self) -> None:
        if self._write_paused and not self._disconnected:
            self._drained = self.loop.create_future()
            await self._drained

    async def disconnected(self) -> None:
        """Until the client goes away. Starlette's streaming responses wait on this and cancel the wait when the
        stream ends, which cancels the future awaited: each wait has its own."""
        if not self._disconnected:
            waiter = self.loop.create_future()
            self._lost.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._lost:
                    self._lost.remove(waiter)


class _ResponseWriter:
    """ASGI receive and send for one request: the body is already read; the response head is held until the first
    body bytes so that a whole small answer leaves in one write. Without a Content-Length from the app, a response
    sent in one piece gets one, a streamed one is sent chunked."""

    def __init__(self, conn: DataPlaneProtocol, request: _Request) -> None:
        self.conn = conn
        self.request = request
        self.keep_alive = request.keep_alive
        self.started = False
        self.complete = False
        self._head_sent = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked = False
        self._received = False

    async def receive(self) -> Message:
        if not self._received:
            self._received = True
            return {"type": "http.request", "body": b"".join(self.request.body), "more_body": False}
        await self.conn.disconnected()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.conn._disconnected:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self._status = message["status"]
            self._headers = list(message.get("headers", ()))
            return
        if kind != "http.response.body" or not self.started or self.complete:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        out: list[bytes] = []
        if not self._head_sent:
            self._head_sent = True
            self._write_head(out, len(body), more)
        if self.request.method != "HEAD":
            if self._chunked:
                if body:
                    out.append(b"%x\r\n%b\r\n" % (len(body), body))
                if not more:
                    out.append(b"0\r\n\r\n")
            elif body:
                out.append(body)
        if not more:
            self.complete = True
        if out:
            await self.conn.drain()
            self.conn.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _write_head(self, out: list[bytes], first: int, more: bool) -> None:
        headers = self._headers
        has_length = has_connection = False
        names = set()
        for name, value in headers:
            name = name.lower()
            names.add(name)
            if name == b"content-length":
                has_length = True
            elif name == b"connection":
                has_connection = True
                if value.lower() == b"close":
                    self.keep_alive = False
        # uvicorn's Date and Server headers (refreshed each second), unless the answer has its own (a replica's)
        headers[:0] = [h for h in self.conn.server_state.default_headers if h[0] not in names]
        if not has_length:
            if more:
                self._chunked = self.request.method != "HEAD" and self._status not in (204, 304)
                if self._chunked:
                    headers.append((b"transfer-encoding", b"chunked"))
            elif self._status not in (204, 304):
                headers.append((b"content-length", b"%d" % first))
        if self.conn._closing:
            self.keep_alive = False
        if not self.keep_alive and not has_connection:
            headers.append((b"connection", b"close"))
        out.append(STATUS_LINES.get(self._status) or b"HTTP/1.1 %d \r\n" % self._status)
        out.extend(b"%b: %b\r\n" % (k, v) for k, v in headers)
        out.append(b"\r\n")

    async def send_whole(self, status: int, body: bytes) -> None:
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(b"content-type", b"application/json")]})
        await self.send({"type": "http.response.body", "body": body})


def protocol_factory(serving: ASGIApp, route: Callable[[str, bytes], str | None], limit: int) -> Callable[..., Any]:
    """What `uvicorn.Config(http=...)` takes: builds a DataPlaneProtocol per connection."""

    def build(config: Any, server_state: Any, app_state: dict[str, Any],
              _loop: asyncio.AbstractEventLoop | None = None) -> DataPlaneProtocol:
        return DataPlaneProtocol(config, server_state, app_state, _loop, serving=serving, route=route, limit=limit)

    return build
