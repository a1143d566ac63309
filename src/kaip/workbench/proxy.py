"""The workbench proxy, mounted on the Kaip server at `/workbenches/{namespace}/{name}/…`: HTTP (streamed both
ways) and websockets (kernels, terminals) to the workbench's JupyterLab on its loopback port.

Who may pass: a Kaip token whose user has the edit role in the namespace (a workbench runs code as its namespace's
service account, so it takes what editing takes). The token comes as `Authorization: Bearer …`, or as `?token=…`
on a browser's first visit: the proxy then sets an HttpOnly cookie scoped to that workbench's path and redirects
to the same URL without the token, so it does not stay in the address bar or the history. Without a valid token:
401; with one whose user lacks the role: 403.

Requests authenticated by the cookie could be forged by another page in the same browser, so the proxy refuses
those that change something (any method but GET, HEAD and OPTIONS, and every websocket) when their Origin is not
this server — the check JupyterLab would have made, which it skips because the proxy authenticates with its token.

JupyterLab has its own random token; the proxy adds it to every request it forwards (`Authorization: token …`),
so JupyterLab's port is closed to anyone without it, and drops the Kaip token (header, cookie and query
parameter) so that JupyterLab never sees it. JupyterLab's login cookie is not passed back: it would open the port
directly, past Kaip's role check.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send
from yarl import URL

from kaip.api import errors
from kaip.server.auth import RANK
from kaip.workbench.render import PREFIX, base_path

log = logging.getLogger(__name__)

COOKIE = "kaip-workbench-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Not forwarded: hop-by-hop headers, the client's credentials, and what aiohttp sets itself.
REQUEST_DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"host",
                          b"authorization", b"proxy-authorization", b"cookie", b"origin"})
WEBSOCKET_DROP = REQUEST_DROP | {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
                                 b"sec-websocket-protocol", b"content-length"}
RESPONSE_DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
JUPYTER_LOGIN_COOKIE = "username-"  # JupyterLab's login cookie: `username-{host}-{port}`


@dataclass(frozen=True)
class Upstream:
    """A running workbench's JupyterLab: its loopback address and its own token."""

    url: str
    token: str


class Routes:
    """Where each ready workbench's JupyterLab listens; kept by the controller (a cache of what the pods and the
    token files say, refilled after a restart)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Upstream] = {}

    def get(self, namespace: str, name: str) -> Upstream | None:
        return self._by_key.get((namespace, name))

    def set(self, namespace: str, name: str, upstream: Upstream) -> None:
        self._by_key[(namespace, name)] = upstream

    def drop(self, namespace: str, name: str) -> None:
        self._by_key.pop((namespace, name), None)


# ---- pure helpers ------------------------------------------------------------------------------------------------

def split_path(path: str) -> tuple[str, str, str | None] | None:
    """`/workbenches/{ns}/{name}/{rest}` as (ns, name, rest); rest is None when the slash after the name is
    missing; None when the path names no workbench."""
    if not path.startswith(PREFIX + "/"):
        return None
    parts = path[len(PREFIX) + 1:].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def take_token(query: str) -> tuple[str | None, str]:
    """The `token` query parameter, and the query string without it."""
    pairs = parse_qsl(query, keep_blank_values=True)
    token = next((v for k, v in pairs if k == "token"), None)
    if token is None:
        return None, query
    return token, urlencode([(k, v) for k, v in pairs if k != "token"])


def split_cookies(header: str | None) -> tuple[str | None, str]:
    """Kaip's workbench cookie, and the Cookie header to forward without it."""
    if not header:
        return None, ""
    ours = None
    kept = []
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            ours = value.strip().strip('"')
        elif name:
            kept.append(part.strip())
    return ours, "; ".join(kept)


def set_cookie(token: str, namespace: str, name: str, *, secure: bool) -> str:
    cookie = f"{COOKIE}={token}; Path={base_path(namespace, name)}; HttpOnly; SameSite=Lax"
    return cookie + "; Secure" if secure else cookie


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's Origin header names the host it was sent to (no Origin: not a cross-site browser)."""
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def is_jupyter_login_cookie(set_cookie_value: str) -> bool:
    try:
        cookie = SimpleCookie(set_cookie_value)
    except CookieError:
        return False
    return any(name.startswith(JUPYTER_LOGIN_COOKIE) for name in cookie)


class Denied(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


# ---- the proxy ---------------------------------------------------------------------------------------------------

StateLookup = Callable[[str, str], dict[str, Any] | None]


class WorkbenchProxy:
    """ASGI app. `state(ns, name)` reads the Workbench (None if there is none), to say why one is not reachable."""

    def __init__(self, routes: Routes, authorizer: Any, state: StateLookup) -> None:
        self.routes = routes
        self.authorizer = authorizer
        self.state = state
        self._clients: dict[int, aiohttp.ClientSession] = {}

    def _client(self) -> aiohttp.ClientSession:
        """One connection pool per event loop; bodies and cookies pass through untouched, no proxies from env."""
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None or client.closed:
            client = self._clients[loop_id] = aiohttp.ClientSession(
                auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        websocket = scope["type"] == "websocket"
        if websocket and (await receive())["type"] != "websocket.connect":
            return  # the handshake comes first; everything below answers it
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            where = split_path(path)
            if where is None:
                raise Denied(404, f"workbench paths are {PREFIX}/{{namespace}}/{{name}}/...")
            namespace, name, rest = where
            if rest is None and not websocket:  # JupyterLab lives under the trailing slash
                location = base_path(namespace, name) + (f"?{query}" if query else "")
                raise Denied(307, "moved", [(b"location", location.encode("latin-1"))])
            query_token, query = take_token(query)
            headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            source = await self._authorize(scope, headers, query_token, namespace, name, websocket)
            if source == "query" and not websocket and scope["method"] in ("GET", "HEAD"):
                # First visit from a link: keep the token in a cookie, and take it out of the address bar.
                location = path + (f"?{query}" if query else "")
                secure = scope.get("scheme") in ("https", "wss")
                raise Denied(303, "see other", [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", set_cookie(query_token, namespace, name, secure=secure).encode("latin-1")),
                    (b"cache-control", b"no-store")])
            upstream = self.routes.get(namespace, name)
            if upstream is None:
                raise await self._unavailable(namespace, name)
            target = URL(upstream.url + path + (f"?{query}" if query else ""), encoded=True)
            if websocket:
                await self._websocket(scope, receive, send, upstream, target)
            else:
                await self._http(scope, receive, send, upstream, target)
        except Denied as err:
            await _deny(scope, send, err, websocket)

    async def _authorize(self, scope: Scope, headers: dict[bytes, str], query_token: str | None, namespace: str,
                         name: str, websocket: bool) -> str:
        """Check the caller; returns where the token came from: "header", "query" or "cookie"."""
        header = headers.get(b"authorization")
        cookie_token, _ = split_cookies(headers.get(b"cookie"))
        if header and header.startswith("Bearer "):
            credential, source = header, "header"
        elif query_token:
            credential, source = f"Bearer {query_token}", "query"
        elif cookie_token:
            credential, source = f"Bearer {cookie_token}", "cookie"
        else:
            raise Denied(401, f"open the workbench with a Kaip token: `kaip workbench open {name} -n {namespace}` "
                              "prints its URL")
        try:
            ident = self.authorizer.authenticate_cached(credential) or \
                await run_in_threadpool(self.authorizer.authenticate, credential)
        except errors.ApiError as err:
            raise Denied(401, err.message) from err
        if self.authorizer.rank(ident.user, namespace) < RANK["edit"]:
            raise Denied(403, f'User "{ident.user}" may not use workbenches in the namespace "{namespace}": '
                              "that needs the edit role")
        if source == "cookie" and (websocket or scope["method"] not in SAFE_METHODS) and \
                not same_origin(headers.get(b"origin"), headers.get(b"host")):
            raise Denied(403, "cross-origin request refused")
        return source

    async def _unavailable(self, namespace: str, name: str) -> Denied:
        obj = await run_in_threadpool(self.state, namespace, name)
        if obj is None:
            return Denied(404, f'workbenches "{name}" not found in namespace "{namespace}"')
        phase = (obj.get("status") or {}).get("phase") or "Pending"
        hint = f" (start it with `kaip workbench start {name} -n {namespace}`)" if phase in ("Stopped", "Culled") \
            else ""
        return Denied(503, f"workbench {namespace}/{name} is not ready: {phase}{hint}", [(b"retry-after", b"2")])

    # ---- HTTP --------------------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send, upstream: Upstream, target: URL) -> None:
        headers = _forwarded(scope, REQUEST_DROP, upstream)
        first = await receive()
        body: Any = None
        if first.get("body") or first.get("more_body"):
            body = _stream_body(first, receive)
        try:
            response = await self._client().request(scope["method"], target, data=body, headers=headers,
                                                    allow_redirects=False, skip_auto_headers=(
                                                        "User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        except aiohttp.ClientError as err:
            raise Denied(503, f"the workbench's JupyterLab is not answering ({type(err).__name__}); it may be "
                              "restarting", [(b"retry-after", b"2")]) from err
        try:
            out = [(k, v) for k, v in response.raw_headers if k.decode("latin-1").lower() not in RESPONSE_DROP
                   and not (k.lower() == b"set-cookie" and is_jupyter_login_cookie(v.decode("latin-1")))]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError) as err:
                log.info("workbench stream ended early: %r", err)
            await send({"type": "http.response.body", "body": b""})
        finally:
            response.release()

    # ---- websockets --------------------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, upstream: Upstream, target: URL) -> None:
        headers = _forwarded(scope, WEBSOCKET_DROP, upstream)
        try:
            ws = await self._client().ws_connect(target.with_scheme("ws"), headers=headers,
                                                 protocols=scope.get("subprotocols") or (), max_msg_size=0,
                                                 autoping=True)
        except aiohttp.WSServerHandshakeError as err:
            raise Denied(err.status or 502, f"JupyterLab refused the websocket: {err.message}") from err
        except aiohttp.ClientError as err:
            raise Denied(503, f"the workbench's JupyterLab is not answering ({type(err).__name__})") from err
        await send({"type": "websocket.accept", "subprotocol": ws.protocol})

        async def client_to_upstream() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("text") is not None:
                    await ws.send_str(msg["text"])
                elif msg.get("bytes") is not None:
                    await ws.send_bytes(msg["bytes"])

        async def upstream_to_client() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await send({"type": "websocket.send", "text": msg.data})
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await send({"type": "websocket.send", "bytes": msg.data})
                else:
                    break
            await send({"type": "websocket.close", "code": ws.close_code or 1000})

        tasks = [asyncio.ensure_future(client_to_upstream()), asyncio.ensure_future(upstream_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()


def _forwarded(scope: Scope, drop: frozenset[bytes], upstream: Upstream) -> list[tuple[str, str]]:
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", []) if k.lower() not in drop]
    cookies = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"cookie"), None)
    _, kept = split_cookies(cookies)
    if kept:
        out.append(("Cookie", kept))
    out.append(("Authorization", f"token {upstream.token}"))
    return out


async def _stream_body(first: dict[str, Any], receive: Receive) -> AsyncIterator[bytes]:
    message = first
    while True:
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return
        message = await receive()


async def _deny(scope: Scope, send: Send, err: Denied, websocket: bool) -> None:
    body = b"" if err.status in (303, 307) else json.dumps(
        errors.ApiError(err.status, _REASONS.get(err.status, "Error"), str(err)).to_status()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *err.headers]
    if not websocket:
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if "websocket.http.response" in scope.get("extensions", {}):  # refuse the handshake with a real status
        await send({"type": "websocket.http.response.start", "status": err.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 502: "BadGateway", 503: "ServiceUnavailable"}

