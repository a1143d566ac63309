"""Plugging GitOps into a Kaip server: the Application controller, woken by changes to what it manages."""

from __future__ import annotations

from typing import Any

from kaip.api.gitops import APPLICATION
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller
from kaip.gitops.controller import ApplicationReconciler, managed_app_keys
from kaip.gitops.webhook import webhook_router


def install(server: Any) -> ApplicationReconciler:
    reconciler = ApplicationReconciler(server.store, server.registry, EventRecorder(server.store, "kaip-gitops"))
    app = server.app
    before = len(app.router.routes)
    app.include_router(webhook_router(server.ctx))
    added = app.router.routes[before:]  # ahead of the resource API's catch-all `/api/...` paths
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    server.manager.add(Controller("application", reconciler, for_kind=APPLICATION,
                                  watches=[(None, managed_app_keys)], workers=1))
    return reconciler
