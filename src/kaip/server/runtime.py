"""Assembling and running one Kaip server: store, controllers, executor and the HTTP application."""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from sqlalchemy import text

from kaip import __version__, config, heap
from kaip.api import (
    core,  # noqa: F401  (registers the core kinds)
    errors,
)
from kaip.api.core import CLUSTER_ROLE_BINDING, NAMESPACE, NODE, POD
from kaip.api.kinds import REGISTRY
from kaip.api.validation import validate_document
from kaip.controllers.garbage import GarbageCollector, deleted_uid, foreground_uid, referenced_owner_uids
from kaip.controllers.namespace import NamespaceReconciler
from kaip.controllers.pod import PodReconciler
from kaip.controlplane.events import SYSTEM_NAMESPACE, EventRecorder
from kaip.controlplane.manager import Controller, Manager
from kaip.executor.local import LocalExecutor
from kaip.server.app import add_resource_api, create_app
from kaip.server.auth import Authorizer
from kaip.server.context import ApiMetrics, Broadcaster, ServerContext
from kaip.server.logs import LogStreamer
from kaip.server.podcredentials import PodCredentials
from kaip.store.store import Store

log = logging.getLogger("kaip.server")

# Subsystems beside the core, in install order: each module's `install(server)` adds its controllers, routes and
# metrics and returns a handle (kept as `server.<attribute>`; its `stop()`, if any, runs when the server stops).
# Order matters where one builds on another: guardrails wrap the serving gateway's `/serving` mount.
SUBSYSTEMS: tuple[tuple[str, str], ...] = (
    ("tracking", "kaip.tracking.install"),  # experiments, runs, registry, lineage; MLflow REST (issue 3)
    ("queue_scheduler", "kaip.controllers.kueue"),  # batch Jobs and Kueue's queues (issue 4)
    ("training", "kaip.controllers.trainjob"),  # TrainJob, PyTorchJob (issue 5)
    ("serving", "kaip.serving.install"),  # InferenceService, runtimes, the gateway at /serving (issue 6)
    ("pipelines", "kaip.pipelines.install"),  # Pipeline, PipelineRun, RecurringRun (issue 8)
    ("guardrails", "kaip.guardrails.install"),  # detectors and the orchestrator (issue 9)
    ("rag", "kaip.rag.install"),  # knowledge bases and retrieval (issue 10)
    ("workbenches", "kaip.workbench.install"),  # Workbench (JupyterLab), its proxy at /workbenches (issue 12)
)

ADMIN_USER = "admin"
NODE_NAME = "localhost"
ADMIN_BINDING = "kaip-admin"
EVENT_RETENTION = int(os.environ.get("KAIP_CHANGE_RETENTION", "100000"))


class AlreadyRunning(RuntimeError):
    pass


class ServerLock:
    """One server per `$KAIP_HOME` (a file lock) and, on PostgreSQL, one per database (an advisory lock)."""

    ADVISORY_KEY = 0x4B414950  # "KAIP"

    def __init__(self, home: Path) -> None:
        self.path = home / "server.lock"
        self._fh: Any = None
        self._pg_conn: Any = None

    def acquire(self, store: Store | None = None) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise AlreadyRunning(f"another Kaip server (pid {holder}) is running with home {self.path.parent}") from err
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def acquire_database(self, store: Store) -> None:
        if store.is_sqlite:
            return
        conn = store.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.ADVISORY_KEY}).scalar()
        conn.commit()
        if not got:
            conn.close()
            raise AlreadyRunning("another Kaip server is running against this database")
        self._pg_conn = conn

    def release(self) -> None:
        if self._pg_conn is not None:
            # The lock belongs to the database session: unlock it, and really close the connection (a pooled one
            # would keep the session, and the lock, alive after the server stopped).
            try:
                self._pg_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.ADVISORY_KEY})
                self._pg_conn.commit()
            finally:
                self._pg_conn.invalidate()
                self._pg_conn.close()
            self._pg_conn = None
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class KaipServer:
    def __init__(self, home: Path, *, database_url: str | None = None, resync_seconds: float = 300.0,
                 bookmark_seconds: float = 5.0) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        self.lock = ServerLock(home)
        self.lock.acquire()
        try:
            self.store = Store(database_url or config.database_url(home))
            self.lock.acquire_database(self.store)
        except BaseException:
            self.lock.release()
            raise
        self.registry = REGISTRY
        self.metrics_registry = CollectorRegistry()
        ProcessCollector(registry=self.metrics_registry)
        PlatformCollector(registry=self.metrics_registry)
        self.executor = LocalExecutor(home / "pods")
        self.authorizer = Authorizer(self.store)
        stopping = threading.Event()
        self.ctx = ServerContext(store=self.store, registry=self.registry, authorizer=self.authorizer,
                                 broadcaster=Broadcaster(self.store), metrics=ApiMetrics(self.metrics_registry),
                                 logs=LogStreamer(self.store, self.executor, stopping),
                                 bookmark_seconds=bookmark_seconds, stopping=stopping)
        self.app = create_app(self.ctx)
        self.manager = Manager(self.store, registry=self.metrics_registry, resync_seconds=resync_seconds)
        self._add_controllers()
        self.subsystems: dict[str, Any] = {}
        for attribute, module in SUBSYSTEMS:
            self.subsystems[attribute] = importlib.import_module(module).install(self)
            setattr(self, attribute, self.subsystems[attribute])
        add_resource_api(self.app, self.ctx)  # last: its catch-all routes must not shadow the subsystems' routes
        self._stop = threading.Event()

    def _add_controllers(self) -> None:
        recorder = lambda name: EventRecorder(self.store, name)  # noqa: E731
        self.manager.add(Controller("namespace", NamespaceReconciler(self.store, self.registry), for_kind=NAMESPACE))
        self.pod_credentials = PodCredentials(self.store, self.authorizer)
        self.manager.add(Controller("pod", PodReconciler(self.store, self.executor, recorder("kaip-pod"),
                                                         self.pod_credentials),
                                    for_kind=POD, workers=4))
        gc = GarbageCollector(self.store, self.registry)
        self.manager.add(Controller("garbage-collector", gc,
                                    watches=[(None, deleted_uid), (None, referenced_owner_uids),
                                             (None, foreground_uid)],
                                    initial_keys=gc.orphaned_owners))

    # ---- bootstrap ----------------------------------------------------------------------------------

    def bootstrap(self, server_url: str) -> str:
        """Create the built-in namespaces and the admin credentials on first start; refresh the server URL."""
        for ns in ("default", SYSTEM_NAMESPACE):
            if self.store.try_get(NAMESPACE, None, ns) is None:
                doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                self._create_quietly(NAMESPACE, doc)
        if self.store.try_get(CLUSTER_ROLE_BINDING, None, ADMIN_BINDING) is None:
            doc = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": ADMIN_BINDING},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                   "subjects": [{"kind": "User", "name": ADMIN_USER}]}
            self._create_quietly(CLUSTER_ROLE_BINDING, doc)
        self._record_node()
        self.pod_credentials.server_url = server_url
        creds = config.read_credentials(self.home) or {}
        token = creds.get("token")
        if not token or self.store.find_token(_hash(token)) is None:
            token, _ = self.authorizer.issue(ADMIN_USER, description="created by kaip up")
        config.write_credentials(self.home, server_url, token, ADMIN_USER)
        return token

    def _record_node(self) -> None:
        """The machine is the node: record what it can hand out (CPUs, memory, GPUs) as node `localhost`."""
        from kaip.controlplane.conditions import set_condition
        from kaip.executor.node import detect

        if self.store.try_get(NODE, None, NODE_NAME) is None:
            self._create_quietly(NODE, {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kaip.dev/executor": "local"}}})
        capacity = detect().as_resources()

        def status(s: dict[str, Any], _obj: dict[str, Any]) -> None:
            s.update(capacity=capacity, allocatable=capacity,
                     addresses=[{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname",
                                                                                 "address": NODE_NAME}],
                     nodeInfo={"kaipVersion": __version__, "operatingSystem": "linux"})
            set_condition(s, "Ready", True, "KaipReady", "the local executor is running")
        self.store.update_status(NODE, None, NODE_NAME, status)

    def _create_quietly(self, info: Any, doc: dict[str, Any]) -> None:
        try:
            self.store.create(info, validate_document(info, doc, namespace=None))
        except errors.ApiError as err:
            if err.code != 409:
                raise

    # ---- running ------------------------------------------------------------------------------------

    @property
    def asgi(self) -> Any:
        """What the HTTP server runs: the application, with the gateway's prefix dispatched directly."""
        from kaip.server.app import fast_paths

        if getattr(self, "_asgi", None) is None:
            self._asgi = fast_paths(self.app)
        return self._asgi

    def uvicorn_config(self, host: str, port: int, **options: Any) -> Any:
        """uvicorn's configuration for serving this server: the application, and the connection protocol that
        answers inference requests itself (`dataplane.py`)."""
        import uvicorn

        asgi = self.asgi
        http = asgi.protocol() if hasattr(asgi, "protocol") else "auto"
        return uvicorn.Config(asgi, host=host, port=port, http=http, log_level="warning", access_log=False,
                              **options)

    def start(self) -> None:
        self.manager.start()
        threading.Thread(target=self._compactor, name="compactor", daemon=True).start()
        self.ctx.ready.set()

    def _compactor(self) -> None:
        while not self._stop.wait(60):
            try:
                self.store.compact(EVENT_RETENTION)
            except Exception:
                log.exception("compaction failed")

    def stop(self) -> None:
        self._stop.set()
        for handle in reversed(list(self.subsystems.values())):
            stop = getattr(handle, "stop", None)
            if callable(stop):
                stop()
        self.manager.stop()
        self.executor.shutdown()
        self.store.close()
        self.lock.release()

    def serve(self, host: str, port: int) -> None:

        url = f"http://{host}:{port}"
        self.bootstrap(url)
        self.start()
        heap.freeze()
        log.info("Kaip %s serving on %s (home %s)", self.store.url.split("://")[0], url, self.home)
        try:
            _uvicorn_server(self.uvicorn_config(host, port, timeout_graceful_shutdown=5), self.ctx.stopping).run()
        finally:
            self.stop()


def _hash(token: str) -> str:
    from kaip.server.auth import hash_token

    return hash_token(token)


def _uvicorn_server(config: Any, stopping: threading.Event) -> Any:
    """uvicorn's server, telling open streams to end as soon as shutdown begins (instead of being cancelled)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            stopping.set()
            super().handle_exit(sig, frame)

    return Server(config)
