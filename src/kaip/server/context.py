"""What the HTTP layer shares: the store, kinds, auth, change broadcasting, metrics and logs."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from kaip.api.kinds import KindRegistry
from kaip.server.auth import Authorizer
from kaip.store.store import Store


class Broadcaster:
    """Wakes waiting watch streams (on the event loop) when a write commits (on any thread)."""

    def __init__(self, store: Store) -> None:
        self._subs: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()
        self.latest_rv = 0
        store.add_listener(self._on_commit)

    def subscribe(self) -> asyncio.Event:
        ev = asyncio.Event()
        with self._lock:
            self._subs.add((asyncio.get_running_loop(), ev))
        return ev

    def unsubscribe(self, ev: asyncio.Event) -> None:
        with self._lock:
            self._subs = {s for s in self._subs if s[1] is not ev}

    def _on_commit(self, rv: int, _kind: str) -> None:
        self.latest_rv = max(self.latest_rv, rv)
        with self._lock:
            subs = list(self._subs)
        for loop, ev in subs:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass  # the loop closed: the stream is going away


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("apiserver_request_total", "API requests by verb, group, resource and code",
                                ["verb", "group", "resource", "code"], registry=registry)
        self.latency = Histogram("apiserver_request_duration_seconds", "API request latency (watches excluded)",
                                 ["verb", "group", "resource"], registry=registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.watch_events = Counter("apiserver_watch_events_total", "Events sent to watchers", ["resource"],
                                    registry=registry)

    def observe_request(self, verb: str, group: str, resource: str, code: int, seconds: float) -> None:
        self.requests.labels(verb, group, resource, str(code)).inc()
        if verb != "watch":
            self.latency.labels(verb, group, resource).observe(seconds)


@dataclass
class ServerContext:
    store: Store
    registry: KindRegistry
    authorizer: Authorizer
    broadcaster: Broadcaster
    metrics: ApiMetrics
    logs: object  # kaip.server.logs.LogStreamer
    bookmark_seconds: float = 5.0
    ready: threading.Event = field(default_factory=threading.Event)
    # Set when the server begins to shut down: long-lived streams (watches, log follows) end by themselves.
    stopping: threading.Event = field(default_factory=threading.Event)

    def store_rv_hint(self) -> int:
        return self.broadcaster.latest_rv
