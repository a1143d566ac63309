"""GuardrailsOrchestrator reconciler: parse the orchestrator's ConfigMap, report whether it is usable, and
publish where it is served.

Status: `phase` (Progressing / Ready / Error, as TrustyAI's operator writes it), the `Ready` condition with the
reason the config was refused, `url` (`/serving/{namespace}/{name}`, set once the serving routes exist), and
`detectors`, the ids it can use. A change of the ConfigMap it names requeues it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from kaip.api.guardrails import GUARDRAILS_ORCHESTRATOR
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.manager import Key, Mapper, Result
from kaip.guardrails.config import ConfigError
from kaip.guardrails.service import GuardrailsService
from kaip.store.store import Change, Store

RETRY_SECONDS = 10.0


def configmap_owners(store: Store) -> Mapper:
    """A ConfigMap's change maps to the GuardrailsOrchestrators in its namespace that name it.

    Every ConfigMap write passes through here, so the orchestrators are indexed by (namespace, ConfigMap) once and
    the index is rebuilt only after an orchestrator changes, instead of listing them per write."""
    lock = threading.Lock()
    index: dict[tuple[str, str], list[str]] | None = None
    generation = 0  # bumped by every orchestrator change: an index built across one is not kept

    def invalidate(_rv: int, kind_key: str) -> None:
        nonlocal index, generation
        if kind_key == GUARDRAILS_ORCHESTRATOR.key:
            with lock:
                index = None
                generation += 1

    store.add_listener(invalidate)

    def mapper(change: Change) -> Iterable[Key]:
        nonlocal index
        with lock:
            current, seen = index, generation
        if current is None:
            items, _ = store.list(GUARDRAILS_ORCHESTRATOR)
            current = {}
            for g in items:
                key = (g["metadata"]["namespace"], g["spec"].get("orchestratorConfig") or "")
                current.setdefault(key, []).append(g["metadata"]["name"])
            with lock:
                if generation == seen:
                    index = current
        return [(change.namespace, name) for name in current.get((change.namespace, change.name), [])]
    return mapper


class GuardrailsOrchestratorReconciler:
    def __init__(self, store: Store, service: GuardrailsService) -> None:
        self.store = store
        self.service = service

    def reconcile(self, key: Key) -> Result | None:
        namespace, name = key  # type: ignore[misc]
        obj = self.store.try_get(GUARDRAILS_ORCHESTRATOR, namespace, name)
        if obj is None:
            self.service.forget(namespace, name)
            return None
        generation = obj["metadata"].get("generation")
        try:
            parsed = self.service.load(namespace, name)
            error = None
        except ConfigError as err:
            parsed, error = None, str(err)

        def status(s: dict[str, Any], _obj: dict[str, Any]) -> None:
            s["observedGeneration"] = generation
            if parsed is None:
                s["phase"] = "Error"
                s.pop("url", None)
                set_condition(s, "Ready", False, "InvalidConfig", error or "", generation=generation)
                return
            s["phase"] = "Ready"
            s["detectors"] = parsed.detector_ids
            if self.service.serving_routes:
                s["url"] = f"/serving/{namespace}/{name}"
            set_condition(s, "Ready", True, "ConfigLoaded",
                          f"{len(parsed.detector_ids)} detectors; input policy: "
                          f"{', '.join(sorted(parsed.config.input)) or 'none'}; output policy: "
                          f"{', '.join(sorted(parsed.config.output)) or 'none'}", generation=generation)

        current = obj.get("status") or {}
        probe: dict[str, Any] = {k: v for k, v in current.items()}
        status(probe, obj)
        if probe != current:
            self.store.update_status(GUARDRAILS_ORCHESTRATOR, namespace, name, status)
        return Result(requeue_after=RETRY_SECONDS) if parsed is None else None
