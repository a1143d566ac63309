"""The in-memory side of serving that the gateway and the InferenceService controller share in one server:
routes (traffic split, limits) per InferenceService, endpoints per revision with their readiness, the
concurrency meters the gateway feeds and the autoscalers that read them.

Nothing here is the truth: the controller rebuilds it from the store on every reconcile, so a restarted
server converges again. Two daemon threads: the prober (readiness of each endpoint over HTTP) and the
autoscaler tick (one meter sample per revision per second).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from kaip.serving.autoscaler import Autoscaler, ConcurrencyMeter, Policy
from kaip.serving.balancer import Endpoint
from kaip.serving.batcher import BatcherSettings
from kaip.serving.internal import explainer_route_name, predictor_route_name
from kaip.serving.traffic import Target, WeightedPicker

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
TICK_SECONDS = 1.0


def free_port() -> int:
    """A free loopback port for a new replica (the kernel's pick; the replica binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Route:
    namespace: str
    name: str
    targets: list[Target]
    timeout: float
    concurrency: int
    public: bool = False
    logger: dict[str, Any] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    scale_metric: str = "concurrency"
    batcher: BatcherSettings | None = None  # KServe's `batcher`: v1 :predict requests batched in the gateway
    picker: WeightedPicker = field(init=False)

    def __post_init__(self) -> None:
        self.picker = WeightedPicker({t.revision: t.percent for t in self.targets})

    def same_split(self, other: Route) -> bool:
        return [(t.revision, t.percent) for t in self.targets] == [(t.revision, t.percent) for t in other.targets]


class ServingSystem:
    def __init__(self) -> None:
        self.routes: dict[Key, Route] = {}
        self.endpoints: dict[Key, list[Endpoint]] = {}  # (namespace, revision) -> endpoints
        self.probe_paths: dict[Key, str] = {}
        self.owners: dict[Key, Key] = {}  # (namespace, revision) -> (namespace, InferenceService)
        self.meters: dict[Key, ConcurrencyMeter] = {}
        self.autoscalers: dict[Key, Autoscaler] = {}
        self.pending: dict[Key, int] = {}
        self.internal_tokens: dict[str, Key] = {}  # token -> InferenceService (see kaip.serving.internal)
        self.poke: Callable[[Key], None] = lambda _key: None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- written by the controller ----------------------------------------------------------------------

    def set_route(self, route: Route) -> None:
        key = (route.namespace, route.name)
        old = self.routes.get(key)
        if old is not None and old.same_split(route):
            route.picker = old.picker  # keep the round-robin position: the split stays exact across updates
        self.routes[key] = route

    def drop(self, namespace: str, name: str, revisions: list[str]) -> None:
        for route in (name, predictor_route_name(name), explainer_route_name(name)):
            self.routes.pop((namespace, route), None)
        for token, owner in list(self.internal_tokens.items()):
            if owner == (namespace, name):
                self.internal_tokens.pop(token, None)
        self.forget(namespace, revisions)

    def forget(self, namespace: str, revisions: list[str]) -> None:
        """Endpoints, meters and autoscalers of revisions that no longer exist."""
        for rev in revisions:
            for table in (self.endpoints, self.meters, self.autoscalers, self.pending, self.probe_paths, self.owners):
                table.pop((namespace, rev), None)  # type: ignore[attr-defined]

    def set_endpoints(self, owner: Key, revision: str, pods: list[tuple[str, int, int]], probe_path: str) -> None:
        """The running pods of a revision as (pod, port, restarts); known endpoints keep their state unless the
        process was restarted (then it must prove ready again)."""
        namespace = owner[0]
        key = (namespace, revision)
        self.owners[key] = owner
        old = {ep.pod: ep for ep in self.endpoints.get(key, [])}
        new = []
        for pod, port, restarts in pods:
            ep = old.get(pod)
            if ep is None or ep.port != port or ep.restarts != restarts:
                ep = Endpoint(pod, port, revision, restarts)
            new.append(ep)
        self.endpoints[key] = new
        self.probe_paths[key] = probe_path

    def ready_pods(self, namespace: str, revision: str) -> list[str]:
        return [ep.pod for ep in self.endpoints.get((namespace, revision), []) if ep.ready]

    def autoscaler(self, namespace: str, revision: str, policy: Policy) -> Autoscaler:
        key = (namespace, revision)
        with self._lock:
            scaler = self.autoscalers.get(key)
            if scaler is None:
                scaler = self.autoscalers[key] = Autoscaler(policy)
            elif scaler.policy != policy:
                scaler.policy = policy
            return scaler

    def inflight(self, namespace: str, revision: str) -> int:
        meter = self.meters.get((namespace, revision))
        return meter.inflight if meter else 0

    # ---- written by the gateway -------------------------------------------------------------------------

    def meter(self, namespace: str, revision: str) -> ConcurrencyMeter:
        key = (namespace, revision)
        meter = self.meters.get(key)
        if meter is None:
            with self._lock:
                meter = self.meters.setdefault(key, ConcurrencyMeter(time.monotonic()))
        return meter

    # ---- background ---------------------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._probe_loop, "serving-prober"), (self._tick_loop, "serving-autoscaler")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def probe_once(self, client: httpx.Client) -> None:
        now = time.monotonic()
        for key, eps in list(self.endpoints.items()):
            path = self.probe_paths.get(key, "/v2/health/ready")
            for ep in list(eps):
                if ep.ready and now - ep.last_probe < 1.0:
                    continue
                ep.last_probe = now
                try:
                    ok = client.get(ep.url + path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok != ep.ready:
                    ep.ready = ok
                    revision_owner = self._owner_of(key)
                    if revision_owner is not None:
                        self.poke(revision_owner)

    def _owner_of(self, rev_key: Key) -> Key | None:
        return self.owners.get(rev_key)

    def _probe_loop(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(0.5, connect=0.25)) as client:
            while not self._stop.wait(0.1):
                try:
                    self.probe_once(client)
                except Exception:
                    log.exception("serving prober failed")

    def tick(self, now: float) -> None:
        for key, meter in list(self.meters.items()):
            concurrency, rps = meter.sample(now)
            scaler = self.autoscalers.get(key)
            if scaler is not None:
                route = next((r for r in self.routes.values() if r.namespace == key[0] and
                              any(t.revision == key[1] for t in r.targets)), None)
                use_rps = route is not None and route.scale_metric == "rps"
                scaler.record(now, rps if use_rps else concurrency)

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("serving autoscaler tick failed")
