"""`kaip.AsyncClient`: the calls where streaming matters, for asyncio code (a service, an async notebook cell).

Watches, followed logs and streamed chat answers as async iterators, over the same public endpoints as the sync
`kaip.Client` (httpx's async client; `openai.AsyncOpenAI` for the OpenAI API). Kinds are resolved through the
server's discovery documents once, off the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from kaip.sdk.client import Client
from kaip.sdk.errors import Unreachable, from_status
from kaip.sdk.objects import Object
from kaip.sdk.rest import Resource, watch_params

if TYPE_CHECKING:
    import openai


class AsyncClient:
    """An asyncio connection to a Kaip server; configured as `kaip.Client` is (arguments, environment, or the
    credentials `kaip up` wrote)."""

    def __init__(self, server: str | None = None, token: str | None = None, *, namespace: str | None = None,
                 home: str | Path | None = None, timeout: float = 60.0) -> None:
        self.sync = Client(server, token, namespace=namespace, home=home, timeout=timeout)
        self.server, self.token, self.namespace = self.sync.server, self.sync.token, self.sync.namespace
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _res(self, kind: str) -> Resource:
        return await asyncio.to_thread(self.sync._res, kind)

    def _ns(self, res: Resource, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if res.namespaced else None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise Unreachable({"message": f"cannot reach the Kaip server at {self.server}"}) from err
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json()

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Object:
        """One object (see `Client.get`)."""
        res = await self._res(kind)
        return Object(await self._json("GET", self.sync.rest.path(res, self._ns(res, namespace), name)))

    async def list(self, kind: str, namespace: str | None = None, *, selector: str | None = None
                   ) -> builtins.list[Object]:
        """Objects of a kind (see `Client.list`)."""
        res = await self._res(kind)
        params = {"labelSelector": selector} if selector else {}
        doc = await self._json("GET", self.sync.rest.path(res, self._ns(res, namespace)), params=params)
        return [Object(o) for o in doc.get("items", [])]

    async def watch(self, kind: str, namespace: str | None = None, *, name: str | None = None,
                    selector: str | None = None, resource_version: str | None = None, timeout: float | None = None
                    ) -> AsyncIterator[tuple[str, Object]]:
        """Changes as they happen: `(type, object)`, the current objects first as ADDED (see `Client.watch`)."""
        res = await self._res(kind)
        params = watch_params(resource_version, selector, timeout)
        path = self.sync.rest.path(res, self._ns(res, namespace))
        async with self.http.stream("GET", path, params=params, timeout=httpx.Timeout(10.0, read=None)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise _error(resp)
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise from_status(event["object"])
                if event.get("type") == "BOOKMARK":
                    continue
                obj = Object(event["object"])
                if name is None or obj.name == name:
                    yield event["type"], obj

    async def logs(self, pod: str, namespace: str | None = None, *, follow: bool = False,
                   container: str | None = None) -> AsyncIterator[str]:
        """A pod's log lines; with `follow`, as they are written, until the container ends."""
        params = {k: v for k, v in (("follow", "true" if follow else None), ("container", container)) if v}
        path = f"/api/v1/namespaces/{namespace or self.namespace}/pods/{pod}/log"
        async with self.http.stream("GET", path, params=params, timeout=httpx.Timeout(10.0, read=None)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise _error(resp)
            async for line in resp.aiter_lines():
                yield line

    def openai(self, endpoint: str, *, namespace: str | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
        """An `openai.AsyncOpenAI` client for an InferenceService's OpenAI-compatible API."""
        import openai

        base = f"{self.server}/serving/{namespace or self.namespace}/{endpoint}/openai/v1"
        return openai.AsyncOpenAI(base_url=base, api_key=self.token or "none", **kwargs)

    async def chat_stream(self, endpoint: str, messages: str | builtins.list[dict[str, str]], *,
                          namespace: str | None = None, max_tokens: int = 128, temperature: float = 0.0,
                          **kwargs: Any) -> AsyncIterator[str]:
        """A chat answer as it is generated, piece by piece (server-sent events through the gateway)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        client = self.openai(endpoint, namespace=namespace)
        try:
            stream = await client.chat.completions.create(model=endpoint, messages=messages,  # type: ignore[arg-type]
                                                          max_tokens=max_tokens, temperature=temperature,
                                                          stream=True, **kwargs)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            await client.close()


def _error(resp: httpx.Response) -> Exception:
    try:
        status = resp.json()
    except ValueError:
        status = {"message": resp.text or resp.reason_phrase}
    if not isinstance(status, dict):
        status = {"message": str(status)}
    return from_status(status, resp.status_code)
