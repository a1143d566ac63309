"""The gateway's upstream HTTP/1.1 pool (kaip.serving.upstream) against tiny asyncio servers in the test."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry

from kaip.serving.balancer import Endpoint
from kaip.serving.gateway import Gateway
from kaip.serving.metrics import GatewayMetrics
from kaip.serving.predictions import PredictionLog
from kaip.serving.system import Route, ServingSystem
from kaip.serving.traffic import Target
from kaip.serving.upstream import UpstreamConnectionError, UpstreamPool, UpstreamProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """An asyncio server on a free port that counts its connections and records the requests it reads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = []  # (request line, headers, body)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:  # handlers still waiting on an open connection end with the server
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        """Reads one request (False at the end of the connection)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        line, *rest = head[:-4].split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in rest)}
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        self.requests.append((line, headers, body))
        return True


def run(coro: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    if loop == "uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:
        asyncio.run(coro)


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), b"".join(e + b"\r\n" for e in extra),
                                                                    body)


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    while await server.read_request(reader):
        writer.write(ok(b"echo:" + server.requests[-1][2], b"Content-Type: text/plain"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_keep_alive_reuses_one_connection(loop: str) -> None:
    async def main() -> None:
        async with Server(keep_alive_echo) as server:
            pool = UpstreamPool()
            for i in range(5):
                r = await pool.request("POST", f"{server.url}/v1/models/m:predict?x={i}",
                                       [(b"content-type", b"application/json")], b'{"i": %d}' % i,
                                       connect_timeout=1, read_timeout=1)
                assert r.status == 200
                assert r.headers["content-type"] == "text/plain" and r.header("Content-Type") == "text/plain"
                assert (b"Content-Type", b"text/plain") in r.raw_headers
                assert await r.read() == b'echo:{"i": %d}' % i
                r.release()
            assert server.connections == 1
            line, headers, _ = server.requests[-1]
            assert line == b"POST /v1/models/m:predict?x=4 HTTP/1.1"
            assert headers[b"host"] == f"127.0.0.1:{server.port}".encode()
            assert headers[b"content-length"] == b"8" and headers[b"content-type"] == b"application/json"
            await pool.close()

    run(main(), loop)


def test_request_framing_and_target() -> None:
    async def main() -> None:
        async with Server(keep_alive_echo) as server:
            pool = UpstreamPool()
            r = await pool.request("GET", f"{server.url}/a b/é?q=1 2&p=100%", [(b"Host", b"model.example")], b"",
                                   connect_timeout=1, read_timeout=1)
            await r.read()
            r.release()
            r = await pool.request("POST", server.url, [(b"Content-Length", b"99"), (b"Transfer-Encoding", b"x")],
                                   b"", connect_timeout=1, read_timeout=1)
            await r.read()
            r.release()
            (line1, headers1, _), (line2, headers2, _) = server.requests
            # As aiohttp (yarl) sent a decoded path: unsafe characters percent-encoded, existing escapes kept.
            assert line1 == b"GET /a%20b/%C3%A9?q=1%202&p=100%25 HTTP/1.1"
            assert headers1[b"host"] == b"model.example" and b"content-length" not in headers1
            assert line2 == b"POST / HTTP/1.1"
            assert headers2[b"content-length"] == b"0" and b"transfer-encoding" not in headers2
            for bad in ((b"x-a", b"1\r\nx-b: 2"), (b"x-a", b"1\n"), (b"x-a", b"\r1"), (b"x\na", b"1"),
                        (b"x:a", b"1")):
                with pytest.raises(ValueError, match="invalid header"):
                    await pool.request("GET", server.url, [(b"ok", b"1"), bad], b"", connect_timeout=1,
                                       read_timeout=1)
            with pytest.raises(ValueError):
                await pool.request("GET", "https://127.0.0.1/", [], b"", connect_timeout=1, read_timeout=1)

    run(main())


def test_chunked_body_is_decoded_and_the_connection_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            for _ in range(3):
                r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=1)
                assert await r.read() == b"hello world"
                r.release()
            assert server.connections == 1

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_streamed_chunks_arrive_before_the_response_ends(loop: str) -> None:
    async def main() -> None:
        more = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            while await server.read_request(reader):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\n10\r\ndata: {\"n\": 1}\n\n\r\n")
                await writer.drain()
                await more.wait()  # the rest only once the client has seen the first event
                writer.write(b"10\r\ndata: {\"n\": 2}\n\n\r\n0\r\n\r\n")

        async with Server(handler) as server:
            pool = UpstreamPool()
            r = await pool.request("POST", server.url + "/v1/chat/completions", [], b"{}", connect_timeout=1,
                                   read_timeout=2)
            got = []
            async for chunk in r:
                got.append(chunk)
                more.set()
            r.release()
            assert got == [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n']
            r = await pool.request("POST", server.url + "/v1/chat/completions", [], b"{}", connect_timeout=1,
                                   read_timeout=2)
            assert await r.read() == b'data: {"n": 1}\n\ndata: {"n": 2}\n\n'
            r.release()
            assert server.connections == 1

    run(main(), loop)


def test_connection_close_is_honoured() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(ok(b"bye", b"Connection: close"))
        await writer.drain()
        await asyncio.sleep(0.2)  # the client, not the server's close, must end it

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            for _ in range(2):
                r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=1)
                assert await r.read() == b"bye"
                r.release()
            assert server.connections == 2

    run(main())


def test_body_to_eof_without_length_or_chunking() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=1)
            assert await r.read() == b"until the end"
            r.release()

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stale_keep_alive_connection_is_retried_on_a_new_one(loop: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        # Each connection answers one request and drops the next as it arrives (the server's idle timeout
        # closing it just as the client reuses it).
        if await server.read_request(reader):
            writer.write(ok(b"first"))
        await server.read_request(reader)

    async def closes_when_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(ok(b"idle"))
        await asyncio.sleep(0.05)

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            for _ in range(3):
                r = await pool.request("POST", server.url + "/", [], b"x", connect_timeout=1, read_timeout=1)
                assert r.status == 200 and await r.read() == b"first"
                r.release()
            assert server.connections == 3
            assert len(server.requests) == 5  # each reuse was sent, dropped, and sent again
        async with Server(closes_when_idle) as server:
            pool = UpstreamPool()
            for _ in range(2):
                r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=1)
                assert await r.read() == b"idle"
                r.release()
                await asyncio.sleep(0.1)
            assert server.connections == 2

    run(main(), loop)


def test_a_new_connection_closed_before_the_answer_raises() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)  # and close without answering

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            with pytest.raises(UpstreamConnectionError):
                await pool.request("POST", server.url + "/", [], b"x", connect_timeout=1, read_timeout=1)
            assert server.connections == 1  # not retried: a fresh connection cannot be stale

    run(main())


def test_connection_refused_raises_the_connection_error() -> None:
    async def main() -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pool = UpstreamPool()
        with pytest.raises(UpstreamConnectionError):
            await pool.request("GET", f"http://127.0.0.1:{port}/", [], b"", connect_timeout=1, read_timeout=1)
        assert pool._open == 0

    run(main())


def test_read_timeout_raises_timeout_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await asyncio.sleep(1)

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf ")
        await asyncio.sleep(1)

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            with pytest.raises(TimeoutError):
                await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=0.1)
        async with Server(slow_body) as server:
            r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=0.1)
            chunks = []
            with pytest.raises(TimeoutError):
                async for chunk in r:
                    chunks.append(chunk)
            assert chunks == [b"half "]
            r.release()
            assert not pool._idle_conns.get(("127.0.0.1", server.port))  # an unfinished body is not reused

    run(main())


def test_a_body_cut_short_raises_the_connection_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n")

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=1)
            with pytest.raises(UpstreamConnectionError):
                async for chunk in r:
                    assert chunk == b"part"
            r.release()

    run(main())


def test_no_body_for_204_and_head() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            if server.requests[-1][0].startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            for method in ("DELETE", "HEAD", "DELETE"):
                r = await pool.request(method, server.url + "/", [], b"", connect_timeout=1, read_timeout=1)
                assert r.status == (200 if method == "HEAD" else 204)
                assert await r.read() == b""
                r.release()
            assert server.connections == 1

    run(main())


def test_a_malformed_answer_raises_the_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await asyncio.sleep(0.5)

    async def main() -> None:
        async with Server(handler) as server:
            with pytest.raises(UpstreamProtocolError):
                await UpstreamPool().request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=1)

    run(main())


def test_the_connection_limit_queues_requests() -> None:
    async def main() -> None:
        async with Server(keep_alive_echo) as server:
            pool = UpstreamPool(limit=2)
            most = 0

            async def one(i: int) -> bytes:
                nonlocal most
                r = await pool.request("POST", server.url + "/", [], b"%d" % i, connect_timeout=1, read_timeout=1)
                most = max(most, pool._open)
                try:
                    return await r.read()
                finally:
                    r.release()

            answers = await asyncio.gather(*(one(i) for i in range(10)))
            assert answers == [b"echo:%d" % i for i in range(10)]
            assert most == 2 and server.connections >= 2

    run(main())


def test_an_interim_100_continue_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done", b"X-Final: yes"))

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            for _ in range(2):
                r = await pool.request("POST", server.url + "/", [(b"expect", b"100-continue")], b"x",
                                       connect_timeout=1, read_timeout=1)
                assert (r.status, r.headers.get("x-final"), await r.read()) == (200, "yes", b"done")
                r.release()
            assert server.connections == 1

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_large_body_read_slowly_arrives_whole(loop: str) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses past the high-water mark and resumes as it drains

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            writer.write(ok(body))
            await writer.drain()

    async def main() -> None:
        async with Server(handler) as server:
            pool = UpstreamPool()
            for _ in range(2):
                r = await pool.request("GET", server.url + "/", [], b"", connect_timeout=1, read_timeout=2)
                got = []
                async for chunk in r:
                    got.append(chunk)
                    await asyncio.sleep(0.005)
                assert b"".join(got) == body
                r.release()
            assert server.connections == 1

    run(main(), loop)


# ---- the gateway over the pool ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def through_gateway(ports: list[int], path: str = "/v1/models/m:predict", timeout: float = 5
                          ) -> tuple[Gateway, list[Endpoint], int, dict[bytes, bytes], bytes, int]:
    """One public InferenceService whose replicas listen on `ports` (in that order of choice); a POST through the
    gateway: (gateway, endpoints, status, headers, body, number of body messages)."""
    system = ServingSystem()
    system.set_route(Route("ns", "m", [Target("m-1", 100, True)], timeout=timeout, concurrency=0, public=True))
    eps = [Endpoint(f"pod-{i}", port, "m-1", ready=True) for i, port in enumerate(ports)]
    system.endpoints[("ns", "m-1")] = eps
    registry = CollectorRegistry()
    gateway = Gateway(system, None, GatewayMetrics(registry), PredictionLog(Path("/nonexistent")))
    gateway._turn = -1  # the first pick starts at the first endpoint
    scope = {"type": "http", "method": "POST", "path": "/serving/ns/m" + path, "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"host", b"gateway")]}
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"instances": [1]}', "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await gateway(scope, receive, send)
    start, bodies = messages[0], messages[1:]
    return (gateway, eps, start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in bodies),
            len(bodies))


def test_the_gateway_retries_a_dead_replica_on_another() -> None:
    async def main() -> None:
        async with Server(keep_alive_echo) as server:
            gateway, eps, status, headers, body, _ = await through_gateway([free_port(), server.port])
            assert (status, body) == (200, b'echo:{"instances": [1]}')
            assert headers[b"x-kaip-revision"] == b"m-1"
            assert [ep.ready for ep in eps] == [False, True]  # the dead one is marked unready
            assert gateway.metrics.retries.labels("ns", "m", "m-1")._value.get() == 1
            line, sent, _ = server.requests[0]
            assert line == b"POST /v1/models/m:predict HTTP/1.1"
            assert sent[b"host"] == f"127.0.0.1:{server.port}".encode()  # the replica's, not the client's
            assert sent[b"content-type"] == b"application/json"

    run(main(), "uvloop")


def test_the_gateway_answers_504_when_the_replica_is_too_slow() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await asyncio.sleep(2)

    async def main() -> None:
        async with Server(handler) as server:
            _, eps, status, _, body, _ = await through_gateway([server.port], timeout=0.2)
            assert status == 504 and b"did not answer within" in body
            assert eps[0].ready  # slow, not dead: not retried elsewhere

    run(main(), "uvloop")


def test_the_gateway_streams_chunked_answers_as_they_come() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for n in range(3):
                event = b"data: %d\n\n" % (n * 10000)
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with Server(handler) as server:
            _, _, status, headers, body, messages = await through_gateway([server.port], "/v1/chat/completions")
            assert status == 200 and b"transfer-encoding" not in headers
            assert body == b"data: 0\n\ndata: 10000\n\ndata: 20000\n\n" and messages == 4  # 3 chunks + the end

    run(main(), "uvloop")
