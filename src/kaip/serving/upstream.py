"""A lean HTTP/1.1 client for the gateway's hop to a replica: keep-alive connections pooled per (host, port) on
one event loop, an `asyncio.Protocol` per connection and httptools (llhttp) to parse responses.

Why not aiohttp: on the gateway's path aiohttp's per-request machinery (request and response objects, multidicts,
timers, stream readers) cost more than the routing itself. This client does only what the gateway needs: plain
`http://`, a request whose whole body is in hand (sent with Content-Length), a response read whole or chunk by chunk
as it arrives (Content-Length, chunked or to EOF), no redirects, cookies, proxies or decompression.

    pool = UpstreamPool()
    response = await pool.request("POST", "http://127.0.0.1:8080/v1/models/m:predict", headers, body,
                                  connect_timeout=2.0, read_timeout=60.0)
    try:
        async for chunk in response: ...        # or: data = await response.read()
    finally:
        response.release()

Errors: `UpstreamConnectionError` when the replica cannot be reached or the connection breaks before the response
head is complete (the request may be retried on another replica) or in the middle of a body; `TimeoutError` when
the replica sends nothing for `read_timeout`; `UpstreamProtocolError` for a response that is not HTTP/1.x.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

import httptools

__all__ = ["UpstreamConnectionError", "UpstreamError", "UpstreamPool", "UpstreamProtocolError", "UpstreamResponse"]

# Past this much unread body the socket stops being read, so a slow reader holds back a fast replica.
HIGH_WATER = 256 * 1024
# Characters a request target may carry as they are; anything else (a space or non-ASCII from a decoded path) is
# percent-encoded and a `%` that does not start an escape becomes `%25`, as aiohttp (yarl) did — but a `#` is
# encoded too, where yarl cut the target there as if a fragment began.
_NEEDS_QUOTE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]|%(?![0-9A-Fa-f]{2})")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
_OWN_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class UpstreamError(Exception):
    """Base of the errors this client raises (besides TimeoutError)."""


class UpstreamConnectionError(UpstreamError):
    """The connection could not be made, or was refused, reset or closed before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The replica's answer is not a valid HTTP/1.x response."""


def _requote(target: str) -> str:
    if target.isascii() and _NEEDS_QUOTE.search(target) is None:
        return target
    path, sep, query = target.partition("?")
    safe = "!$&'()*+,;=:@/~%"
    path = _STRAY_PERCENT.sub("%25", quote(path, safe=safe))
    query = _STRAY_PERCENT.sub("%25", quote(query, safe=safe + "?"))
    return path + sep + query


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the parser's callback target for the exchange in progress."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None  # None while idle
        self._spare: httptools.HttpResponseParser | None = None  # kept for the connection's next exchange
        self._waiter: asyncio.Future[bool] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._exc: BaseException | None = None
        self.received = False  # any byte of the current exchange's response
        self.head_done = False
        self.done = False  # the response is complete
        self.keep_alive = False
        self._head_only = False
        self._to_eof = False  # the body has neither a length nor chunking: it ends when the connection does
        self._interim = False  # a 1xx response: ignored, the real one follows
        self.status = 0

    # ---- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.done:  # nothing was asked (or the answer is complete): a confused server
            self.close()
            return
        self.received = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            self._fail(UpstreamProtocolError(f"invalid response from {self.key[0]}:{self.key[1]}: {err}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool._forget(self)
        if self._parser is None or self.done:
            return
        if self.head_done and self._to_eof and exc is None:
            self.done = True
            self._wake()
        else:
            where = "in the response body" if self.head_done else "before the response"
            err = UpstreamConnectionError(f"connection to {self.key[0]}:{self.key[1]} closed {where}"
                                          + (f": {exc!r}" if exc else ""))
            self._fail(err)

    # ---- httptools callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            return
        self.status = status
        self.head_done = True
        self.keep_alive = parser.should_keep_alive()
        if self._head_only:
            self.done = True
        elif status not in (204, 304):
            framed = False  # by a length or chunking (another transfer coding alone also runs to EOF)
            for name, value in self._headers:
                lowered = name.lower()
                if lowered == b"content-length" or (lowered == b"transfer-encoding"
                                                    and value.rstrip().lower().endswith(b"chunked")):
                    framed = True
                    break
            self._to_eof = not framed
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._head_only:  # a body after a HEAD answer: the connection's framing is lost
            self.keep_alive = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self._head_only:  # a HEAD answer was complete with its head
            self.done = True
            self.keep_alive = self.keep_alive and self._parser is not None and self._parser.should_keep_alive()
            self._wake()

    # ---- the exchange ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        self._wake()

    async def _wait(self, timeout: float) -> None:
        """Until the protocol has news (or `timeout` seconds of silence: TimeoutError)."""
        loop = self.pool.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            woken = await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not woken:
            raise TimeoutError(f"no answer from {self.key[0]}:{self.key[1]} within {timeout:g}s")

    def start(self, data: bytes, head_only: bool) -> None:
        # A parser that finished a keep-alive response is ready for the next one (llhttp resets itself).
        self._parser, self._spare = self._spare or httptools.HttpResponseParser(self), None
        self._headers = []
        self._chunks = []
        self._buffered = 0
        self._exc = None
        self.received = self.head_done = self.done = self.keep_alive = self._to_eof = self._interim = False
        self._head_only = head_only
        self.status = 0
        assert self.transport is not None
        self.transport.write(data)

    async def head(self, timeout: float) -> None:
        while not self.head_done:
            if self._exc is not None:
                raise self._exc
            await self._wait(timeout)

    async def chunk(self, timeout: float) -> bytes | None:
        """The body bytes received since the last call (waiting for some), or None at the end of the body."""
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks = []
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                return data
            if self.done:
                return None
            if self._exc is not None:
                raise self._exc
            await self._wait(timeout)

    def reusable(self) -> bool:
        return self.done and self.keep_alive and self._exc is None and not self.closed and not self._paused

    def finish(self) -> None:
        """The exchange is over: back to the pool if the connection can carry another, else closed."""
        if self.reusable():
            # After a HEAD answer the parser still expects the body its Content-Length announced: not reused.
            self._parser, self._spare = None, None if self._head_only else self._parser
            self.pool._idle(self)
        else:
            self.close()

    def close(self) -> None:
        self._parser = None
        if self.transport is not None and not self.closed:
            self.transport.close()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class UpstreamResponse:
    """A response whose head has arrived. Read the body with `read()` or `async for chunk in response`, then call
    `release()` (always, e.g. in `finally`): the connection goes back to the pool only when the body was read to
    its end and the server allows keep-alive."""

    __slots__ = ("status", "raw_headers", "_headers", "_conn", "_timeout")

    def __init__(self, conn: _Connection, timeout: float) -> None:
        self.status: int = conn.status
        self.raw_headers: list[tuple[bytes, bytes]] = conn._headers
        self._headers: dict[str, str] | None = None
        self._conn: _Connection | None = conn
        self._timeout = timeout

    @property
    def headers(self) -> dict[str, str]:
        """The headers by lower-case name (the first value of a repeated one)."""
        if self._headers is None:
            self._headers = {}
            for name, value in self.raw_headers:
                self._headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        return self._headers

    @property
    def ended(self) -> bool:
        """Whether the body bytes returned so far are all of it."""
        conn = self._conn
        return conn is None or (conn.done and not conn._chunks)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    async def read(self) -> bytes:
        """The whole body (the rest of it, after iterating)."""
        chunks = []
        while (conn := self._conn) is not None:
            data = await conn.chunk(self._timeout)
            if data is None:
                self.release()
                break
            chunks.append(data)
        return b"".join(chunks)

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        """Body bytes as they arrive (all that is buffered at each step). A connection that breaks mid-body
        raises UpstreamConnectionError; `read_timeout` seconds without a byte raise TimeoutError."""
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        data = await conn.chunk(self._timeout)
        if data is None:
            self.release()
            raise StopAsyncIteration
        return data

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()


class UpstreamPool:
    """Keep-alive connections per (host, port), for use on one event loop (the one it is created on).

    `limit` bounds the open connections; a request that needs one more waits for one to close. Idle connections
    are reused newest first and dropped after `keepalive_timeout` seconds."""

    def __init__(self, *, limit: int = 2000, keepalive_timeout: float = 30.0, max_idle_per_host: int = 256) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.max_idle_per_host = max_idle_per_host
        self._idle_conns: dict[tuple[str, int], list[_Connection]] = {}
        self._open = 0
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._origins: dict[str, tuple[tuple[str, int], bytes]] = {}
        self.closed = False

    async def request(self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes = b"", *,
                      connect_timeout: float, read_timeout: float) -> UpstreamResponse:
        """Send a request (`url` is `http://host[:port]/target`) and wait for the response head.

        `headers` are sent as given, but for Content-Length and Transfer-Encoding (this client sets the length);
        Host is added when absent. A request that fails on a reused idle connection before any byte of an answer
        arrived (the server had closed it) is sent again once on a new connection."""
        key, host, target = self._split(url)
        head_only = method == "HEAD"
        data = self._encode(method, target, headers, body, host)
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, data, head_only, read_timeout)
            except UpstreamConnectionError:
                if conn.received:
                    raise
        conn = await self._connect(key, connect_timeout)
        return await self._exchange(conn, data, head_only, read_timeout)

    async def close(self) -> None:
        """Close the idle connections (those in use close when released)."""
        self.closed = True
        for conns in self._idle_conns.values():
            for conn in conns:
                conn.close()
        self._idle_conns.clear()

    # ---- internals ------------------------------------------------------------------------------------

    def _split(self, url: str) -> tuple[tuple[str, int], bytes, str]:
        slash = url.find("/", 7)
        origin, target = (url, "/") if slash < 0 else (url[:slash], url[slash:])
        cached = self._origins.get(origin)
        if cached is None:
            if not origin.startswith("http://"):
                raise ValueError(f"only http:// URLs are supported, not {url!r}")
            netloc = origin[7:]
            if netloc.startswith("["):  # an IPv6 literal
                end = netloc.find("]")
                host, port = netloc[1:end], netloc[end + 2:] if netloc[end + 1:end + 2] == ":" else ""
            else:
                host, _, port = netloc.partition(":")
            if not host or not (port or "80").isdigit():
                raise ValueError(f"invalid URL {url!r}")
            cached = self._origins[origin] = ((host, int(port or "80")), netloc.encode("idna"))
        key, host_header = cached
        return key, host_header, _requote(target)

    @staticmethod
    def _encode(method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes, host: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
        has_host = False
        for name, value in headers:
            lowered = name.lower()
            if lowered in _OWN_HEADERS:
                continue
            if lowered == b"host":
                has_host = True
            if b":" in name:
                raise ValueError(f"invalid header {name!r}")
            lines.append(b"%s: %s\r\n" % (name, value))
        if not has_host:
            lines.append(b"Host: %s\r\n" % host)
        if body or method not in _NO_BODY_METHODS:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Each line ends in CRLF and no name, value or target may hold one: counted once over the whole head.
        if head.count(b"\r") != len(lines) or head.count(b"\n") != len(lines):
            bad = next((h for h in headers if any(c in x for x in h for c in (b"\r", b"\n"))), None)
            raise ValueError(f"invalid header {bad!r}" if bad else f"invalid request target {target!r}")
        return head + body if body else head

    async def _exchange(self, conn: _Connection, data: bytes, head_only: bool, timeout: float) -> UpstreamResponse:
        conn.start(data, head_only)
        try:
            await conn.head(timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn, timeout)

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle_conns.get(key)
        if not conns:
            return None
        expired = self.loop.time() - self.keepalive_timeout
        while conns:
            conn = conns.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                conn.close()
                continue
            if conn.idle_since < expired:  # the newest is too old: so are the rest
                conn.close()
                for old in conns:
                    old.close()
                conns.clear()
                return None
            return conn
        return None

    async def _connect(self, key: tuple[str, int], timeout: float) -> _Connection:
        while self._open >= self.limit:
            self._evict_one()  # its slot comes back when the close completes
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self._open += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(lambda: _Connection(self, key), key[0], key[1])
        except TimeoutError as err:
            self._released_slot()
            raise UpstreamConnectionError(f"connecting to {key[0]}:{key[1]} timed out after {timeout:g}s") from err
        except OSError as err:
            self._released_slot()
            raise UpstreamConnectionError(f"cannot connect to {key[0]}:{key[1]}: {err}") from err
        except BaseException:
            self._released_slot()
            raise
        return conn

    def _evict_one(self) -> None:
        """Close the longest-idle connection (any host) to make room for a new one."""
        oldest: _Connection | None = None
        for conns in self._idle_conns.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is not None:
            self._idle_conns[oldest.key].remove(oldest)
            oldest.close()

    def _idle(self, conn: _Connection) -> None:
        conns = self._idle_conns.setdefault(conn.key, [])
        if self.closed or self._slot_waiters or len(conns) >= self.max_idle_per_host:
            conn.close()  # someone waits for a slot, or enough are idle already
            return
        conn.idle_since = self.loop.time()
        conns.append(conn)

    def _forget(self, conn: _Connection) -> None:
        """A connection closed (either side)."""
        conns = self._idle_conns.get(conn.key)
        if conns is not None:
            if conn in conns:
                conns.remove(conn)
            if not conns:  # replicas come and go (each on its own port): keep no entry for a gone one
                del self._idle_conns[conn.key]
        self._released_slot()

    def _released_slot(self) -> None:
        self._open -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                break

