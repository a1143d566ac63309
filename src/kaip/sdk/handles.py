"""The base of the SDK's handles: a named object on the server that a notebook keeps and asks about."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kaip.sdk.errors import NotFound, WaitTimeout
from kaip.sdk.objects import Object

if TYPE_CHECKING:
    from kaip.sdk.client import Client


class Handle:
    """A named object of one kind. `object` is the latest document fetched; `refresh()` fetches it again."""

    api_version: str = ""
    kind: str = ""

    def __init__(self, client: Client, name: str, namespace: str, obj: dict[str, Any] | None = None) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self._object = Object(obj) if obj is not None else None

    def refresh(self) -> Object:
        """Fetch the object again and return it."""
        self._object = self.client.get(self.kind_ref, self.name, self.namespace)
        return self._object

    @property
    def kind_ref(self) -> str:
        group = self.api_version.rpartition("/")[0]
        return f"{self.kind.lower()}.{group}" if group else self.kind.lower()

    @property
    def object(self) -> Object:
        """The document as last fetched (fetched now if never)."""
        return self._object if self._object is not None else self.refresh()

    @property
    def status(self) -> dict[str, Any]:
        """The object's current `status` (fetched now)."""
        return self.refresh().status

    def events(self) -> list[dict[str, Any]]:
        """The events recorded for this object, oldest first."""
        items = [e for e in self.client.list("events", self.namespace)
                 if e["involvedObject"].get("kind") == self.kind and e["involvedObject"].get("name") == self.name]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or "")

    def delete(self) -> None:
        """Delete the object (its pods and other owned objects go with it)."""
        self.client.delete(self.kind_ref, self.name, self.namespace)

    def _poll(self, done: Callable[[Object], bool], timeout: float | None, poll: float,
              on_change: Callable[[Object], None] | None = None) -> Object:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            obj = self.refresh()
            if on_change is not None:
                on_change(obj)
            if done(obj):
                return obj
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"{self.kind} {self.namespace}/{self.name}: still waiting after {timeout:g}s",
                                  obj)
            time.sleep(poll)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.namespace}/{self.name}>"


def pod_log_lines(client: Client, namespace: str, pod: str, *, follow: bool, container: str | None = None
                  ) -> Iterator[str]:
    """A pod's log as text lines (following it while the pod runs, if asked)."""
    buffer = b""
    for chunk in client.rest.logs(namespace, pod, container=container, follow=follow):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if buffer:
        yield buffer.decode(errors="replace")


def wait_for_pod(client: Client, namespace: str, find: Callable[[], str | None], timeout: float = 300.0,
                 ) -> str:
    """Wait until `find` names a pod (a job's pod appears once it is admitted and started)."""
    deadline = time.monotonic() + timeout
    while True:
        name = find()
        if name:
            return name
        if time.monotonic() > deadline:
            raise NotFound({"code": 404, "reason": "NotFound", "message": "no pod started in time"})
        time.sleep(0.5)
