"""Garbage collector: when an owner is gone, its dependents (by ownerReferences) are deleted too.

Keyed by owner uid. Deletion of a dependent goes through the normal path, so its finalizers run and
its own dependents follow in turn (background cascading deletion).
"""

from __future__ import annotations

from collections.abc import Iterable

from kaip.api import errors
from kaip.api.kinds import KindRegistry
from kaip.controlplane.manager import Result
from kaip.store.store import Change, Store


def deleted_uid(change: Change) -> Iterable[str]:
    if change.type == "DELETED":
        yield change.object["metadata"]["uid"]


def referenced_owner_uids(change: Change) -> Iterable[str]:
    """Owners named by a dependent as it is written: one that is already gone (a dependent created just as
    its owner was deleted) is collected now, not left until the next restart."""
    if change.type != "DELETED":
        for ref in change.object["metadata"].get("ownerReferences") or []:
            yield ref["uid"]


class GarbageCollector:
    def __init__(self, store: Store, registry: KindRegistry) -> None:
        self.store = store
        self.registry = registry

    def orphaned_owners(self) -> list[str]:
        """Owners that vanished while the server was down: collected on start."""
        return [uid for uid in self.store.owner_uids() if not self.store.uid_exists(uid)]

    def reconcile(self, owner_uid: str) -> Result | None:
        if self.store.uid_exists(owner_uid):
            return None
        for kind_key, namespace, name in self.store.dependents(owner_uid):
            try:
                info = self.registry.by_key(kind_key)
            except KeyError:
                continue
            try:
                self.store.delete(info, namespace, name)
            except errors.ApiError as err:
                if err.code != 404:
                    raise
        return None
