"""Namespace reconciler: marks namespaces Active, and on deletion empties them before letting them go."""

from __future__ import annotations

from typing import Any

from kaip.api import errors
from kaip.api.core import NAMESPACE, NAMESPACE_FINALIZER
from kaip.api.kinds import KindRegistry
from kaip.controlplane.manager import Result
from kaip.store.store import Store


class NamespaceReconciler:
    def __init__(self, store: Store, registry: KindRegistry) -> None:
        self.store = store
        self.registry = registry

    def reconcile(self, key: tuple[str, str]) -> Result | None:
        _, name = key
        ns = self.store.try_get(NAMESPACE, None, name)
        if ns is None:
            return None
        deleting = bool(ns["metadata"].get("deletionTimestamp"))
        phase = "Terminating" if deleting else "Active"
        if (ns.get("status") or {}).get("phase") != phase:
            self.store.update_status(NAMESPACE, None, name, lambda s, _o: s.update(phase=phase))
        if not deleting:
            return None
        remaining = 0
        for info in self.registry.all():
            if not info.namespaced:
                continue
            items, _ = self.store.list(info, name)
            for obj in items:
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    try:
                        self.store.delete(info, name, obj["metadata"]["name"])
                    except errors.ApiError as err:
                        if err.code != 404:
                            raise
        if remaining:
            return Result(requeue_after=0.5)

        def drop(obj: dict[str, Any]) -> dict[str, Any]:
            obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or []
                                             if f != NAMESPACE_FINALIZER]
            return obj
        self.store.mutate(NAMESPACE, None, name, drop)
        return None
