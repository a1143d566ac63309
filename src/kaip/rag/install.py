"""Plugging knowledge bases into a Kaip server (one call from KaipServer): the KnowledgeBase kind, its
controller, and the query route — placed in front of the resource API's catch-all so that
`/apis/kaip.dev/v1alpha1/namespaces/{ns}/knowledgebases/{name}/query` reaches it."""

from __future__ import annotations

from typing import Any

from kaip.api.rag import KNOWLEDGE_BASE
from kaip.controllers.knowledgebase import KnowledgeBaseReconciler
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller
from kaip.rag.http import rag_router
from kaip.rag.service import RagService


def install(server: Any) -> RagService:
    service = RagService(server.home / "rag", server.store, artifacts_root=server.home / "artifacts")
    app = server.app
    before = len(app.router.routes)
    app.include_router(rag_router(server.ctx, service))
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    server.manager.add(Controller("knowledgebase", KnowledgeBaseReconciler(
        server.store, service, EventRecorder(server.store, "kaip-knowledgebase")), for_kind=KNOWLEDGE_BASE))
    serving = getattr(server, "serving", None)
    gateway = getattr(serving, "gateway", None)
    if gateway is not None:  # InferenceServices annotated `kaip.dev/knowledge-bases` get RAG in the gateway
        from kaip.rag.gateway import RagHook

        gateway.hooks.append(RagHook(service))
    return service
