"""The registry of kinds the API serves.

A kind is known by group, version, kind name, plural, singular and short names, as Kubernetes
discovery names it, so that `kaip get isvc` resolves the way `kubectl get isvc` does. Each kind
carries a strict pydantic schema for its body (everything but apiVersion, kind, metadata and
status); schemas live with the subsystem that owns the kind and register themselves here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from kaip.api.errors import ApiError, Cause

Converter = Callable[[dict[str, Any]], dict[str, Any]]
# An update's check (upstream's CEL transition rules): (stored object, validated new object) -> the problems.
UpdateCheck = Callable[[dict[str, Any], dict[str, Any]], list[Cause]]


@dataclass(frozen=True)
class Column:
    """A printer column, as a CRD's additionalPrinterColumns: a JSON path like `.status.phase`, or a function
    of the object. Priority 0 shows by default, 1 only with `-o wide`."""

    name: str
    value: str | Callable[[dict[str, Any]], Any]
    type: str = "string"
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    group: str
    version: str  # the storage version; objects are stored and served in it unless converted
    kind: str
    plural: str
    namespaced: bool
    schema: type[BaseModel]
    singular: str = ""
    short_names: tuple[str, ...] = ()
    # Name rule for metadata.name: "subdomain" (most kinds), "label" (namespaces, services) or "rfc1035" (a label
    # that starts with a letter: TrainJobs, by upstream's CEL rule).
    name_rule: str = "subdomain"
    # Older served versions, each with (to_storage, from_storage) converters.
    other_versions: dict[str, tuple[Converter, Converter]] = field(default_factory=dict)
    # Finalizers the server adds on create, so that a controller gets to clean up first.
    default_finalizers: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    # Checks every update of the main resource must pass (fields immutable once set, ...), in the storage version.
    update_checks: tuple[UpdateCheck, ...] = ()

    @property
    def key(self) -> str:
        """A stable identifier used in the store: `group/Kind` (core kinds: `/Kind`)."""
        return f"{self.group}/{self.kind}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def api_version_for(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def versions(self) -> list[str]:
        return [self.version, *self.other_versions]

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


class KindRegistry:
    def __init__(self) -> None:
        self._by_key: dict[str, KindInfo] = {}

    def register(self, info: KindInfo) -> KindInfo:
        self._by_key[info.key] = info
        return info

    def all(self) -> list[KindInfo]:
        return list(self._by_key.values())

    def by_key(self, key: str) -> KindInfo:
        return self._by_key[key]

    def groups(self) -> dict[str, list[KindInfo]]:
        out: dict[str, list[KindInfo]] = {}
        for info in self._by_key.values():
            out.setdefault(info.group, []).append(info)
        return out

    def for_api_version(self, api_version: str, kind: str) -> tuple[KindInfo, str]:
        """Resolve `apiVersion` + `kind` of a document to the kind and the version it was written in."""
        group, _, version = api_version.rpartition("/")
        for info in self._by_key.values():
            if info.group == group and info.kind == kind and version in info.versions:
                return info, version
        known = [i for i in self._by_key.values() if i.kind == kind]
        if known:
            served = ", ".join(f"{i.api_version_for(v)}" for i in known for v in i.versions)
            raise ApiError(400, "BadRequest",
                           f'no matches for kind "{kind}" in version "{api_version}" (served: {served})')
        raise ApiError(400, "BadRequest", f'no matches for kind "{kind}" in version "{api_version}"')

    def for_path(self, group: str, version: str, plural: str) -> KindInfo:
        for info in self._by_key.values():
            if info.group == group and info.plural == plural and version in info.versions:
                return info
        where = f"{group}/{version}" if group else version
        raise ApiError(404, "NotFound", f'the server could not find the requested resource "{plural}" '
                                        f'in {where}')

    def resolve(self, name: str) -> KindInfo:
        """Resolve what a user types (`pods`, `pod`, `po`, `Pod`, `pods.v1`, `inferenceservices.serving.kserve.io`)."""
        lowered = name.lower()
        resource, _, group = lowered.partition(".")
        candidates = []
        for info in self._by_key.values():
            names = {info.plural, info.singular_name, info.kind.lower(), *info.short_names}
            if resource in names and (not group or group == info.group or group in
                                      {f"{v}.{info.group}".strip(".") for v in info.versions}):
                candidates.append(info)
        if not candidates:
            raise ApiError(404, "NotFound", f'the server doesn\'t have a resource type "{name}"')
        # Prefer the core group, as kubectl does, when a short name is ambiguous.
        candidates.sort(key=lambda i: (i.group != "", i.group))
        return candidates[0]


REGISTRY = KindRegistry()
