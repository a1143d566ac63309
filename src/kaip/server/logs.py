"""Container logs: `GET .../pods/{name}/log` with container, follow, tailLines and previous."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from kaip.api import errors
from kaip.api.core import POD
from kaip.executor.local import LocalExecutor
from kaip.store.store import Store


def tail_bytes(path: Path, lines: int | None) -> tuple[bytes, int]:
    """The last `lines` lines of a file (all of it for None) and the offset where the file ended."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b"", 0
    if lines is None:
        return data, len(data)
    kept = deque(data.splitlines(keepends=True), maxlen=max(lines, 0))
    return b"".join(kept), len(data)


class LogStreamer:
    def __init__(self, store: Store, executor: LocalExecutor, stopping: threading.Event | None = None) -> None:
        self.store = store
        self.executor = executor
        self.stopping = stopping or threading.Event()

    def _locate(self, namespace: str, name: str, container: str | None, previous: bool) -> tuple[Path, str, bool]:
        pod = self.store.get(POD, namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        if container is None:
            if len(containers) > 1:
                raise errors.bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                         f"{containers}")
            container = containers[0]
        if container not in containers:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        statuses = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        cs = statuses.get(container, {})
        attempt = int(cs.get("restartCount", 0))
        if previous:
            if attempt == 0:
                raise errors.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
            attempt -= 1
        meta = pod["metadata"]
        path = self.executor.log_path(namespace, name, meta["uid"], container, attempt)
        # Following a container that has not started yet waits for it, as it will write its log there.
        phase = (pod.get("status") or {}).get("phase")
        not_started = "containerID" not in cs and phase not in ("Succeeded", "Failed")
        running = ("running" in cs.get("state", {}) or not_started) and not previous
        return path, container, running

    async def response(self, request: Request, namespace: str, name: str) -> Response:
        q = request.query_params
        container = q.get("container")
        follow = q.get("follow", "").lower() in ("true", "1")
        previous = q.get("previous", "").lower() in ("true", "1")
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        path, container, running = await run_in_threadpool(self._locate, namespace, name, container, previous)
        head, offset = await run_in_threadpool(tail_bytes, path, tail)
        if not follow:
            return Response(head, media_type="text/plain")

        async def stream() -> AsyncIterator[bytes]:
            nonlocal offset, path, running
            if head:
                yield head
            while not self.stopping.is_set():
                chunk = await run_in_threadpool(_read_from, path, offset)
                if chunk:
                    offset += len(chunk)
                    yield chunk
                    continue
                if await request.is_disconnected():
                    return
                try:
                    new_path, _, running = await run_in_threadpool(self._locate, namespace, name, container, False)
                except errors.ApiError:
                    return  # the pod is gone
                if new_path != path:  # the container restarted: follow the new attempt
                    rest = await run_in_threadpool(_read_from, path, offset)
                    if rest:
                        yield rest
                    path, offset = new_path, 0
                    continue
                if not running:
                    rest = await run_in_threadpool(_read_from, path, offset)
                    if rest:
                        yield rest
                    return
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/plain")


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(1 << 20)
    except FileNotFoundError:
        return b""
