"""The orchestrator's generation backend: anything OpenAI-compatible (a stub in tests, an InferenceService
behind the serving gateway, vLLM). Four calls, nothing else; the orchestrator never sees HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx


class BackendError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ChatBackend(Protocol):
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream_completions(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


class OpenAIBackend:
    """`base_url` ends before `/chat/completions`, e.g. `http://127.0.0.1:8080/v1`."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout

    def with_headers(self, headers: dict[str, str]) -> OpenAIBackend:
        return OpenAIBackend(self.base_url, headers={**self.headers, **headers}, timeout=self.timeout)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            try:
                response = await client.post(self.base_url + path, json=body, headers=self.headers)
            except httpx.HTTPError as err:
                raise BackendError(503, f"{type(err).__name__} calling {self.base_url}{path}") from err
        if response.status_code >= 400:
            raise BackendError(response.status_code, response.text[:500])
        return response.json()  # type: ignore[no-any-return]

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            try:
                async with client.stream("POST", self.base_url + path, json={**body, "stream": True},
                                         headers=self.headers) as response:
                    if response.status_code >= 400:
                        raise BackendError(response.status_code, (await response.aread()).decode()[:500])
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        yield json.loads(data)
            except httpx.HTTPError as err:
                raise BackendError(503, f"{type(err).__name__} calling {self.base_url}{path}") from err

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post("/chat/completions", body)

    def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._stream("/chat/completions", body)

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post("/completions", body)

    def stream_completions(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._stream("/completions", body)
