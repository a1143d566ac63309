"""KServe's inference batcher, in the gateway: v1 `:predict` requests to a component with `batcher` are held until
`maxBatchSize` instances have gathered or `maxLatency` ms have passed since the first, sent to the model as one
`{"instances": [...]}` request, and each caller gets its own slice of `predictions` plus the batch's `batchId`.

As upstream's agent (kserve pkg/batcher): only paths ending in `:predict` are batched; a body without instances is
a 400 "no instances in the request"; unset or non-positive settings take the defaults (32 instances, 5,000 ms;
the model call's timeout is the component's). One difference: when the model answers with an error, or with a
number of predictions that differs from the instances sent, upstream answers every caller 200 with the error in
`message`; Kaip passes the model's status and body on (502 for a count mismatch), so clients see an error.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_LATENCY_MS = 5000
LIMIT = 10**9  # larger settings are clamped (the CRD bounds none of them; a timer cannot wait 10^20 ms)

# (path, body) -> (status, body): one call of the model with the whole batch.
SendBatch = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


class BatchError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BatcherSettings:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_latency: float = DEFAULT_MAX_LATENCY_MS / 1000  # seconds

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> BatcherSettings | None:
        """None when the component has no `batcher`."""
        if spec is None:
            return None
        size = spec.get("maxBatchSize") or 0
        latency = spec.get("maxLatency") or 0
        return cls(min(size, LIMIT) if size > 0 else DEFAULT_MAX_BATCH_SIZE,
                   min(latency if latency > 0 else DEFAULT_MAX_LATENCY_MS, LIMIT) / 1000)


def instances_of(body: bytes) -> list[Any]:
    """The request's instances; BatchError(400) as upstream's agent answers a body it cannot batch."""
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise BatchError(400, "can't Unmarshal body") from err
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BatchError(400, "no instances in the request")
    return instances


@dataclass
class _Batch:
    path: str
    started: float
    instances: list[Any] = field(default_factory=list)
    waiters: list[tuple[asyncio.Future[tuple[int, bytes]], int, int]] = field(default_factory=list)  # (fut, lo, hi)
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """One per route, component and revision; callers on one event loop."""

    def __init__(self, settings: BatcherSettings, send_batch: SendBatch) -> None:
        self.settings = settings
        self.send_batch = send_batch
        self._open: dict[str, _Batch] = {}  # path -> the batch gathering for it

    async def submit(self, path: str, instances: list[Any]) -> tuple[int, bytes]:
        """(status, body) for this caller: its predictions and the batch id, or the model's error."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(path)
        if batch is None:
            batch = self._open[path] = _Batch(path, time.monotonic())
            batch.timer = loop.call_later(self.settings.max_latency, self._flush, batch)
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        lo = len(batch.instances)
        batch.instances.extend(instances)
        batch.waiters.append((future, lo, len(batch.instances)))
        if len(batch.instances) >= self.settings.max_batch_size:
            self._flush(batch)
        return await future

    def _flush(self, batch: _Batch) -> None:
        if self._open.get(batch.path) is batch:
            del self._open[batch.path]
        if batch.timer is not None:
            batch.timer.cancel()
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: _Batch) -> None:
        body = json.dumps({"instances": batch.instances}).encode()
        try:
            status, raw = await self.send_batch(batch.path, body)
        except Exception as err:  # the model could not be called: every caller gets the same error
            for future, _, _ in batch.waiters:
                if not future.done():
                    future.set_exception(err)
            return
        batch_id = str(uuid.uuid4())
        for future, lo, hi in batch.waiters:
            if not future.done():
                future.set_result(split(status, raw, lo, hi, len(batch.instances), batch_id))


def split(status: int, raw: bytes, lo: int, hi: int, total: int, batch_id: str) -> tuple[int, bytes]:
    """One caller's answer from the batch's: predictions[lo:hi] and the batch id (pure)."""
    if status != 200:
        return status, raw
    try:
        predictions = json.loads(raw).get("predictions")
    except (ValueError, AttributeError):
        predictions = None
    if not isinstance(predictions, list) or len(predictions) != total:
        return 502, json.dumps({"error": "size of prediction is not equal to the size of instances"}).encode()
    return 200, json.dumps({"predictions": predictions[lo:hi], "batchId": batch_id, "message": ""}).encode()
