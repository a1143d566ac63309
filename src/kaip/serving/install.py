"""Plugging serving into a Kaip server: the InferenceService controller, the gateway mounted at /serving, the
serving metrics on the server's registry, and the background threads of `ServingSystem`."""

from __future__ import annotations

from typing import Any

from kaip.api.core import POD
from kaip.api.serving import INFERENCE_SERVICE
from kaip.controllers.inferenceservice import InferenceServiceReconciler
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Controller, owner_keys
from kaip.serving.gateway import Gateway
from kaip.serving.internal import ServingAuthorizer
from kaip.serving.metrics import FederatedCollector, GatewayMetrics
from kaip.serving.predictions import PredictionLog
from kaip.serving.system import ServingSystem


def install(server: Any) -> ServingSystem:
    """Called once by KaipServer while it adds its controllers; returns the system to stop with the server."""
    system = ServingSystem()
    server.metrics_registry.register(FederatedCollector(system))
    authorizer = ServingAuthorizer(server.authorizer, system.internal_tokens)
    gateway = Gateway(system, authorizer, GatewayMetrics(server.metrics_registry),
                      PredictionLog(server.home / "predictions"))
    server.app.mount("/serving", gateway)
    reconciler = InferenceServiceReconciler(server.store, server.executor, system,
                                            EventRecorder(server.store, "kaip-serving"), server.home)
    controller = server.manager.add(Controller("inferenceservice", reconciler, for_kind=INFERENCE_SERVICE,
                                               watches=[(POD.key, owner_keys(INFERENCE_SERVICE))], workers=2))
    system.poke = controller.queue.add
    system.gateway = gateway  # type: ignore[attr-defined]
    system.start()
    return system
