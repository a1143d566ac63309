"""Events: what controllers did and why, stored as `v1` Event objects in the involved object's namespace.

Repeats of the same (object, reason, message) bump `count` and `lastTimestamp` on one Event instead of
creating a new one, as Kubernetes' recorder does.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from kaip.api import errors
from kaip.api.core import EVENT
from kaip.store.store import Store, now_rfc3339

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "kaip-system"


class EventRecorder:
    def __init__(self, store: Store, component: str) -> None:
        self.store = store
        self.component = component

    def record(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or SYSTEM_NAMESPACE
        digest = hashlib.sha1(f"{meta.get('uid')}/{reason}/{message}".encode()).hexdigest()[:10]
        name = f"{meta['name']}.{digest}"
        now = now_rfc3339()

        def bump(ev: dict[str, Any]) -> dict[str, Any]:
            ev["count"] = int(ev.get("count", 1)) + 1
            ev["lastTimestamp"] = now
            return ev

        try:
            self.store.mutate(EVENT, namespace, name, bump)
            return
        except errors.ApiError as err:
            if err.code != 404:
                log.warning("could not update event %s/%s: %s", namespace, name, err)
                return
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                               "name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": type_, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": self.component}, "reportingComponent": self.component,
        }
        try:
            self.store.create(EVENT, event)
        except errors.ApiError as err:
            # The namespace may be going away, or a racing recorder created it first: never fatal.
            log.debug("could not record event %s/%s: %s", namespace, name, err)
