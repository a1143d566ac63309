"""Argo CD's `argoproj.io/v1alpha1` Application: the fields Kaip implements, named exactly as the CRD names them.

Any other field (helm, kustomize, plugin, multi-source `sources`, …) is refused with its path: the strict schema
never ignores what it does not implement.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema

IN_CLUSTER = "https://kubernetes.default.svc"
INT64_MAX = 2**63 - 1  # the CRD's `format: int64`


class ApplicationSourceDirectory(Schema):
    recurse: bool | None = None
    include: str | None = None
    exclude: str | None = None


class ApplicationSource(Schema):
    repoURL: str = Field(min_length=1)
    path: str | None = None
    targetRevision: str | None = None
    directory: ApplicationSourceDirectory | None = None


class ApplicationDestination(Schema):
    server: str | None = None
    name: str | None = None
    namespace: str | None = None

    @model_validator(mode="after")
    def _local(self) -> ApplicationDestination:
        if self.server and self.name:
            raise ValueError("only one of server or name may be set")
        if self.server not in (None, IN_CLUSTER) or self.name not in (None, "in-cluster"):
            raise ValueError(f"Kaip deploys to itself only: use server {IN_CLUSTER!r} or name 'in-cluster'")
        return self


class SyncPolicyAutomated(Schema):
    prune: bool | None = None
    selfHeal: bool | None = None
    allowEmpty: bool | None = None
    enabled: bool | None = None


class Backoff(Schema):
    duration: str | None = None
    factor: int | None = Field(default=None, ge=1, le=INT64_MAX)
    maxDuration: str | None = None


class RetryStrategy(Schema):
    limit: int | None = Field(default=None, ge=-INT64_MAX - 1, le=INT64_MAX)
    backoff: Backoff | None = None
    refresh: bool | None = None


SYNC_OPTIONS = ("CreateNamespace=true", "CreateNamespace=false")


def _sync_options(v: list[str] | None) -> list[str] | None:
    if not isinstance(v, list):  # pydantic has already checked the type; this sees only lists
        return v
    for i, opt in enumerate(v):
        if opt not in SYNC_OPTIONS:
            raise ValueError(f"[{i}]: sync option {opt!r} is not supported (supported: {', '.join(SYNC_OPTIONS)})")
    return v


class SyncPolicy(Schema):
    automated: SyncPolicyAutomated | None = None
    syncOptions: list[str] | None = None
    retry: RetryStrategy | None = None

    @field_validator("syncOptions")
    @classmethod
    def _options(cls, v: list[str] | None) -> list[str] | None:
        return _sync_options(v)


class ApplicationSpec(Schema):
    project: str
    source: ApplicationSource
    destination: ApplicationDestination
    syncPolicy: SyncPolicy | None = None
    revisionHistoryLimit: int | None = Field(default=None, ge=0, le=INT64_MAX)


class SyncOperationSource(Schema):
    repoURL: str
    path: str | None = None
    targetRevision: str | None = None
    directory: ApplicationSourceDirectory | None = None


class SyncOperation(Schema):
    revision: str | None = None
    prune: bool | None = None
    source: SyncOperationSource | None = None


class OperationInitiator(Schema):
    username: str | None = None
    automated: bool | None = None


class Operation(Schema):
    sync: SyncOperation
    initiatedBy: OperationInitiator | None = None


class ApplicationBody(Schema):
    spec: ApplicationSpec
    operation: Operation | None = None


SyncStatus = Literal["Synced", "OutOfSync", "Unknown"]

APPLICATION = REGISTRY.register(KindInfo(
    "argoproj.io", "v1alpha1", "Application", "applications", namespaced=True, schema=ApplicationBody,
    short_names=("app", "apps"), columns=(Column("Sync Status", ".status.sync.status"),
                                          Column("Health Status", ".status.health.status"),
                                          Column("Revision", lambda a: ((a.get("status") or {}).get("sync") or {})
                                                 .get("revision", "")[:7], priority=1))))
