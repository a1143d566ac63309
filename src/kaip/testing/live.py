"""A real Kaip server on a free loopback port, in this process, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from kaip.server.runtime import KaipServer


@dataclass
class LiveServer:
    url: str
    token: str
    server: KaipServer

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(home: Path, *, database_url: str | None = None, bookmark_seconds: float = 5.0,
                resync_seconds: float = 300.0, stop_workloads: bool = True) -> Iterator[LiveServer]:
    """A server on a free loopback port for the block. On the way out its workloads (model replicas, jobs,
    workbenches) are stopped too, unless `stop_workloads=False` (a test of a restarted server adopting them)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kaip = KaipServer(home, database_url=database_url, bookmark_seconds=bookmark_seconds,
                      resync_seconds=resync_seconds)
    token = kaip.bootstrap(url)
    kaip.start()
    server = uvicorn.Server(kaip.uvicorn_config("127.0.0.1", port, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(url, token, kaip)
    finally:
        kaip.ctx.stopping.set()
        server.should_exit = True
        thread.join(timeout=10)
        kaip.stop()
        if stop_workloads:
            kaip.executor.stop_all()
