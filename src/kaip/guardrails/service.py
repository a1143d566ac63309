"""GuardrailsService: what the HTTP layer, the controller and the gateway share — the built-in orchestrator,
one orchestrator per GuardrailsOrchestrator (built from its ConfigMap, cached by resourceVersion), and the
detection counter `kaip_guardrail_detections_total{detector, direction, action}`."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import replace
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter

from kaip.api.core import CONFIGMAP
from kaip.api.guardrails import GUARDRAILS_ORCHESTRATOR
from kaip.guardrails.backend import ChatBackend, OpenAIBackend
from kaip.guardrails.config import CONFIG_KEY, ConfigError, ParsedConfig, parse_config
from kaip.guardrails.orchestrator import Orchestrator, OrchestratorConfig, OrchestratorError
from kaip.guardrails.registry import builtin_registry
from kaip.store.store import Store

# Sent by an orchestrator calling its InferenceService through the gateway, so that the call is not guarded twice.
# Its value is a per-process secret; the gateway never forwards it to a replica.
INTERNAL_HEADER = "x-kaip-guardrails-internal"


class GuardrailsService:
    def __init__(self, store: Store, metrics_registry: CollectorRegistry) -> None:
        self.store = store
        self.detections = Counter("kaip_guardrail_detections_total",
                                  "Guardrail detections by detector, direction (input/output) and action",
                                  ["detector", "direction", "action"], registry=metrics_registry)
        url = os.environ.get("KAIP_GUARDRAILS_OPENAI_URL")
        self.default_backend: ChatBackend | None = OpenAIBackend(url) if url else None
        self.serving_routes = False  # set when the /serving/NS/NAME routes are mounted
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[tuple[str, str], ParsedConfig]] = {}
        # Which (namespace, name) are orchestrators, asked on the serving hot path: cached until one changes.
        self._known: dict[tuple[str, str], bool] = {}
        # Which GuardrailsOrchestrator guards an InferenceService (`kaip.inferenceService`), "" for none.
        self._guards: dict[tuple[str, str], str] = {}
        self.internal_secret = secrets.token_hex(24)
        store.add_listener(self._on_change)

    def record(self, detector: str, direction: str, action: str, count: int) -> None:
        self.detections.labels(detector, direction, action).inc(count)

    def root(self) -> Orchestrator:
        """The server-wide orchestrator at /api/v2/...: every built-in detector; the generation backend from
        `KAIP_GUARDRAILS_OPENAI_URL` (or set `default_backend`)."""
        return Orchestrator(OrchestratorConfig(builtin_registry(), backend=self.default_backend), self.record)

    # ---- per GuardrailsOrchestrator -------------------------------------------------------------------

    def load(self, namespace: str, name: str) -> ParsedConfig | None:
        """The parsed config of a GuardrailsOrchestrator, or None if there is none; ConfigError if it is bad."""
        gorch = self.store.try_get(GUARDRAILS_ORCHESTRATOR, namespace, name)
        if gorch is None:
            with self._lock:
                self._cache.pop((namespace, name), None)
            return None
        cm_name = gorch["spec"]["orchestratorConfig"]
        cm = self.store.try_get(CONFIGMAP, namespace, cm_name)
        if cm is None:
            raise ConfigError(f'ConfigMap "{cm_name}" (spec.orchestratorConfig) not found in namespace "{namespace}"')
        text = (cm.get("data") or {}).get(CONFIG_KEY)
        if text is None:
            raise ConfigError(f'ConfigMap "{cm_name}" has no key "{CONFIG_KEY}"')
        version = (gorch["metadata"]["resourceVersion"], cm["metadata"]["resourceVersion"])
        with self._lock:
            cached = self._cache.get((namespace, name))
        if cached and cached[0] == version:
            return cached[1]
        parsed = parse_config(text, enable_builtins=gorch["spec"].get("enableBuiltInDetectors") is not False)
        with self._lock:
            self._cache[(namespace, name)] = (version, parsed)
        return parsed

    def for_request(self, namespace: str, name: str, base_url: str, headers: dict[str, str]) -> Orchestrator:
        """The orchestrator for one request: the backend gets the configured passthrough headers, and an
        `inferenceService` backend is that service's OpenAI endpoint on this server's gateway."""
        try:
            parsed = self.load(namespace, name)
        except ConfigError as err:
            raise OrchestratorError(503, f"GuardrailsOrchestrator {namespace}/{name} is not ready: {err}") from err
        if parsed is None:
            raise OrchestratorError(404, f"GuardrailsOrchestrator {namespace}/{name} not found")
        lowered = {k.lower(): v for k, v in headers.items()}
        passed = {h: lowered[h.lower()] for h in parsed.passthrough_headers if h.lower() in lowered}
        backend = parsed.config.backend
        if parsed.inference_service:
            if "authorization" in lowered:
                passed["Authorization"] = lowered["authorization"]
            passed[INTERNAL_HEADER] = self.internal_secret
            backend = OpenAIBackend(f"{base_url.rstrip('/')}/serving/{namespace}/{parsed.inference_service}/v1",
                                    headers=passed)
        elif isinstance(backend, OpenAIBackend) and passed:
            backend = backend.with_headers(passed)
        return Orchestrator(replace(parsed.config, backend=backend), self.record)

    def _on_change(self, _rv: int, kind_key: str) -> None:
        if kind_key == GUARDRAILS_ORCHESTRATOR.key:
            with self._lock:
                self._known.clear()
                self._guards.clear()
        elif kind_key == CONFIGMAP.key:
            with self._lock:
                self._guards.clear()

    def guard_cached(self, namespace: str, isvc: str) -> str | None:
        with self._lock:
            return self._guards.get((namespace, isvc))

    def guard_for(self, namespace: str, isvc: str) -> str:
        """The GuardrailsOrchestrator whose config names this InferenceService (`kaip.inferenceService`), or "".
        Read from the raw YAML, so that a config with an error still guards (and the hook refuses: fail closed)."""
        found = ""
        for gorch in sorted(self.store.list(GUARDRAILS_ORCHESTRATOR, namespace)[0],
                            key=lambda o: o["metadata"]["name"]):
            cm = self.store.try_get(CONFIGMAP, namespace, (gorch.get("spec") or {}).get("orchestratorConfig") or "")
            try:
                doc = yaml.safe_load(((cm or {}).get("data") or {}).get(CONFIG_KEY) or "") or {}
            except yaml.YAMLError:
                continue
            kaip = doc.get("kaip") if isinstance(doc, dict) else None
            if isinstance(kaip, dict) and kaip.get("inferenceService") == isvc:
                found = gorch["metadata"]["name"]
                break
        with self._lock:
            self._guards[(namespace, isvc)] = found
        return found

    def known_cached(self, namespace: str, name: str) -> bool | None:
        with self._lock:
            return self._known.get((namespace, name))

    def known(self, namespace: str, name: str) -> bool:
        found = self.store.try_get(GUARDRAILS_ORCHESTRATOR, namespace, name) is not None
        with self._lock:
            self._known[(namespace, name)] = found
        return found

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._cache.pop((namespace, name), None)

    def describe(self, parsed: ParsedConfig) -> dict[str, Any]:
        return {"detectors": parsed.detector_ids, "input": sorted(parsed.config.input),
                "output": sorted(parsed.config.output)}
