"""Garbage collector: when an owner is gone, its dependents (by ownerReferences) are deleted too.

Keyed by owner uid. Deletion of a dependent goes through the normal path, so its finalizers run and
its own dependents follow in turn (background cascading deletion). An owner deleted in the foreground
carries the `foregroundDeletion` finalizer: its dependents are deleted first, then the finalizer goes.
"""

from __future__ import annotations

from collections.abc import Iterable

from kaip.api import errors
from kaip.api.kinds import KindRegistry
from kaip.controlplane.manager import Result
from kaip.store.store import FOREGROUND, Change, Store


def deleted_uid(change: Change) -> Iterable[str]:
    if change.type == "DELETED":
        yield change.object["metadata"]["uid"]


def foreground_uid(change: Change) -> Iterable[str]:
    meta = change.object["metadata"]
    if change.type != "DELETED" and meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
        yield meta["uid"]


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
        located = self.store.locate_uid(owner_uid)
        if located is not None:
            return self._foreground(owner_uid, *located)
        self._delete_dependents(owner_uid)
        return None

    def _foreground(self, owner_uid: str, kind_key: str, namespace: str, name: str) -> Result | None:
        try:
            info = self.registry.by_key(kind_key)
        except KeyError:
            return None
        owner = self.store.try_get(info, namespace, name)
        meta = (owner or {}).get("metadata") or {}
        if not meta.get("deletionTimestamp") or FOREGROUND not in (meta.get("finalizers") or []):
            return None
        if self.store.dependents(owner_uid):
            self._delete_dependents(owner_uid)
            return Result(requeue_after=0.2)

        def drop(obj: dict) -> dict:
            obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != FOREGROUND]
            return obj
        self.store.mutate(info, namespace, name, drop)
        return None

    def _delete_dependents(self, owner_uid: str) -> None:
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
