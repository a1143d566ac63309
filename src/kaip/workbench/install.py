"""Plugging workbenches into a Kaip server: the Workbench controller (a job-framework kind, so LocalQueues admit
it) and the proxy mounted at `/workbenches` (dispatched past FastAPI by the server's fast paths, websockets
included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kaip.api.core import POD
from kaip.api.kueue import WORKLOAD
from kaip.api.workbench import WORKBENCH
from kaip.controllers.kueue import job_framework
from kaip.controllers.workbench import WorkbenchReconciler
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller, owner_keys
from kaip.workbench.proxy import Routes, WorkbenchProxy


@dataclass
class Workbenches:
    routes: Routes
    proxy: WorkbenchProxy
    reconciler: WorkbenchReconciler

    def stop(self) -> None:
        self.reconciler.close()  # the proxy's connection pools close with the server's event loop


def install(server: Any) -> Workbenches:
    store = server.store
    routes = Routes()
    proxy = WorkbenchProxy(routes, server.authorizer, lambda ns, name: store.try_get(WORKBENCH, ns, name))
    server.app.mount("/workbenches", proxy)
    framework = job_framework(store)
    reconciler = WorkbenchReconciler(store, framework, EventRecorder(store, "workbench-controller"), routes,
                                     server.home / "workbenches",
                                     server_url=lambda: server.pod_credentials.server_url)
    server.manager.add(Controller("workbench", reconciler, for_kind=WORKBENCH, workers=2,
                                  watches=[(POD.key, owner_keys(WORKBENCH)), (WORKLOAD.key, owner_keys(WORKBENCH))]))
    return Workbenches(routes, proxy, reconciler)
