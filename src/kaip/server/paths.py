"""Parsing Kubernetes REST paths into what they address (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from kaip.api.errors import ApiError

SUBRESOURCES = {"status", "log", "token", "finalize"}


@dataclass(frozen=True)
class Target:
    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse(group: str, version: str, rest: str) -> Target:
    """`rest` is what follows `/api/v1/` or `/apis/{group}/{version}/`."""
    seg = [s for s in rest.split("/") if s]

    def bad() -> ApiError:
        return ApiError(404, "NotFound", f"the server could not find the requested resource ({rest!r})")

    if not seg:
        raise bad()
    if seg[0] == "namespaces" and len(seg) >= 3 and seg[2] not in SUBRESOURCES:
        ns, tail = seg[1], seg[2:]
        if len(tail) == 1:
            return Target(group, version, tail[0], ns)
        if len(tail) == 2:
            return Target(group, version, tail[0], ns, tail[1])
        if len(tail) == 3 and tail[2] in SUBRESOURCES:
            return Target(group, version, tail[0], ns, tail[1], tail[2])
        raise bad()
    if len(seg) == 1:
        return Target(group, version, seg[0])
    if len(seg) == 2:
        return Target(group, version, seg[0], None, seg[1])
    if len(seg) == 3 and seg[2] in SUBRESOURCES:
        return Target(group, version, seg[0], None, seg[1], seg[2])
    raise bad()
