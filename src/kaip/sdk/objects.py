"""Objects as the SDK returns them: the server's document, with typed access to the kind's schema.

An `Object` is the JSON document itself (a `dict`, so it prints, serialises and compares as one) with the
fields everyone reaches for as attributes. `Object.model()` validates its body with the very pydantic schema
the server validates with, so an IDE and a type checker see the kind's fields.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from pydantic import BaseModel

from kaip.api.kinds import REGISTRY, KindInfo

# The modules whose import registers the kinds the server serves (each subsystem's schemas).
_KIND_MODULES = ("core", "batch", "kueue", "training", "serving", "pipelines", "triggers", "gitops", "guardrails",
                 "rag", "workbench")


@cache
def _load_kinds() -> None:
    for name in _KIND_MODULES:
        try:
            importlib.import_module(f"kaip.api.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"kaip.api.{name}":
                raise


def kind_info(api_version: str, kind: str) -> KindInfo:
    """The registered kind of `apiVersion` + `kind` (raises `kaip.api.errors.ApiError` 400 if unknown)."""
    _load_kinds()
    return REGISTRY.for_api_version(api_version, kind)[0]


def schema(api_version: str, kind: str) -> type[BaseModel]:
    """The pydantic schema of a kind's body (everything but apiVersion, kind, metadata and status)."""
    return kind_info(api_version, kind).schema


class Object(dict[str, Any]):
    """A resource as the server returned it."""

    @property
    def api_version(self) -> str:
        """`apiVersion`, e.g. `serving.kserve.io/v1beta1`."""
        return str(self.get("apiVersion", ""))

    @property
    def kind(self) -> str:
        """`kind`, e.g. `InferenceService`."""
        return str(self.get("kind", ""))

    @property
    def metadata(self) -> dict[str, Any]:
        """`metadata`: name, namespace, labels, annotations, uid, resourceVersion, ..."""
        return self.setdefault("metadata", {})

    @property
    def name(self) -> str:
        """`metadata.name`."""
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        """`metadata.namespace` (None for cluster-scoped kinds)."""
        return self.metadata.get("namespace")

    @property
    def labels(self) -> dict[str, str]:
        """`metadata.labels`."""
        return dict(self.metadata.get("labels") or {})

    @property
    def annotations(self) -> dict[str, str]:
        """`metadata.annotations`."""
        return dict(self.metadata.get("annotations") or {})

    @property
    def spec(self) -> dict[str, Any]:
        """`spec`, the desired state."""
        return self.setdefault("spec", {})

    @property
    def status(self) -> dict[str, Any]:
        """`status`, what the controllers observed."""
        return dict(self.get("status") or {})

    @property
    def conditions(self) -> list[dict[str, Any]]:
        """`status.conditions`."""
        return list(self.status.get("conditions") or [])

    def condition(self, type_: str) -> dict[str, Any] | None:
        """The condition of this type, or None."""
        return next((c for c in self.conditions if c.get("type") == type_), None)

    def is_true(self, type_: str) -> bool:
        """Whether the condition of this type has status "True"."""
        cond = self.condition(type_)
        return bool(cond and cond.get("status") == "True")

    def model(self) -> BaseModel:
        """The body validated with the server's schema for this kind (a pydantic model)."""
        body = {k: v for k, v in self.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        return schema(self.api_version, self.kind).model_validate(body)

    def __repr__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"<{self.kind} {where}{self.name}>"
