"""Plugging guardrails into a Kaip server (one call from KaipServer): the Detectors API and the orchestrator
API at the root (matched before the resource API's catch-all `/api/{version}/...`), the per-orchestrator
routes in front of the serving gateway's `/serving` mount, the gateway hook that guards an InferenceService's own
endpoint (serving installs first; RAG's hook, installed later, runs after this one), the GuardrailsOrchestrator
controller, and the detection counter on the server's metrics registry."""

from __future__ import annotations

from typing import Any

from starlette.routing import Mount

from kaip.api.core import CONFIGMAP
from kaip.api.guardrails import GUARDRAILS_ORCHESTRATOR
from kaip.controllers.guardrails import GuardrailsOrchestratorReconciler, configmap_owners
from kaip.controlplane.manager import Controller
from kaip.guardrails.gateway import GuardrailsHook
from kaip.guardrails.http import ServingShim, guardrails_router
from kaip.guardrails.service import INTERNAL_HEADER, GuardrailsService


def install(server: Any) -> GuardrailsService:
    service = GuardrailsService(server.store, server.metrics_registry)
    app = server.app
    before = len(app.router.routes)
    app.include_router(guardrails_router(server.ctx, service))
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    mount = next((r for r in app.router.routes if isinstance(r, Mount) and r.path == "/serving"), None)
    if mount is not None:
        mount.app = ServingShim(mount.app, server.ctx, service)
    else:
        app.mount("/serving", ServingShim(None, server.ctx, service))
    service.serving_routes = True
    serving = getattr(server, "serving", None)
    if serving is not None:
        serving.gateway.hooks.append(GuardrailsHook(service))
        serving.gateway.private_headers.add(INTERNAL_HEADER.encode())
    server.manager.add(Controller("guardrailsorchestrator", GuardrailsOrchestratorReconciler(server.store, service),
                                  for_kind=GUARDRAILS_ORCHESTRATOR,
                                  watches=[(CONFIGMAP.key, configmap_owners(server.store))], workers=1))
    return service
