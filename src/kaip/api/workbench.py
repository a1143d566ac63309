"""`kaip.dev/v1alpha1` Workbench: a JupyterLab the platform runs for a team, modelled on Kubeflow's Notebook
(`kubeflow.org/v1`) and OpenShift AI's workbenches.

Kubeflow's Notebook wraps a whole pod template around an image; on one machine the image is always this
project's JupyterLab, so the spec keeps only what a user chooses: the resources a queue admits, extra environment,
the service account its code acts as, and when an idle workbench is culled. Stopping uses Kubeflow's own
annotation, `kubeflow-resource-stopped`, set by a user (`kaip workbench stop`) or by the culler.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from kaip.api.core import EnvVar, ResourceRequirements
from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema, dns1123_subdomain_error
from kaip.scheduling.quantity import QuantityError, parse_quantity

GROUP = "kaip.dev"
# Kubeflow's annotation: present (an RFC 3339 time) means stopped; removing it starts the workbench again.
STOP_ANNOTATION = "kubeflow-resource-stopped"
# Kubeflow's profile controller gives every namespace a `default-editor` account bound to the edit role, and its
# notebooks run as it; Kaip's Workbench controller creates the same account on first use.
DEFAULT_SERVICE_ACCOUNT = "default-editor"
DEFAULT_IDLE_SECONDS = 3600
# Environment the controller sets for JupyterLab itself; a user's `env` may not replace them.
RESERVED_ENV = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR",
                "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "KAIP_SERVER", "KAIP_TOKEN", "KAIP_NAMESPACE")


class Culling(Schema):
    """Kubeflow's culler (`CULL_IDLE_TIME`), per workbench: stop it once JupyterLab reports no activity and no
    busy kernel for `idleSeconds`. 0 turns culling off."""

    idleSeconds: int = Field(default=DEFAULT_IDLE_SECONDS, ge=0)


class Resources(ResourceRequirements):
    """Requests and limits, as a container's; the requests are what a LocalQueue reserves quota for (the
    Workload's single pod set, `main`)."""

    @model_validator(mode="after")
    def _quantities(self) -> Resources:
        errors = resource_errors(self)
        if errors:  # each at its own path (spec.resources.requests.cpu), all at once
            raise ValidationError.from_exception_data("Resources", [
                InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
                for loc, message, value in errors])
        return self


def resource_errors(resources: ResourceRequirements) -> list[tuple[tuple[Any, ...], str, Any]]:
    """Pure: each malformed quantity, and each request above its limit (Kubernetes' pod validation)."""
    errors: list[tuple[tuple[Any, ...], str, Any]] = []
    parsed: dict[str, dict[str, int]] = {}
    for part in ("requests", "limits"):
        for name, value in (getattr(resources, part) or {}).items():
            try:
                parsed.setdefault(part, {})[name] = parse_quantity(value)
            except QuantityError as err:
                errors.append(((part, name), str(err), value))
    for name, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(name)
        if limit is not None and request > limit:
            errors.append((("requests", name), f"must be less than or equal to {name} limit", request))
    return errors


class WorkbenchSpec(Schema):
    resources: Resources | None = None
    env: list[EnvVar] | None = None
    serviceAccountName: str = DEFAULT_SERVICE_ACCOUNT
    culling: Culling = Field(default_factory=Culling)
    # Set while the Workbench waits for its queue (Kueue's suspend, as batch/v1 Job's); not for stopping it.
    suspend: bool = False

    @field_validator("serviceAccountName")
    @classmethod
    def _account(cls, v: str) -> str:
        if err := dns1123_subdomain_error(v):
            raise ValueError(err)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[EnvVar] | None) -> list[EnvVar] | None:
        for item in v or []:
            if item.name in RESERVED_ENV:
                raise ValueError(f"{item.name}: set by the Workbench controller, it cannot be overridden")
        return v


class WorkbenchBody(Schema):
    spec: WorkbenchSpec = Field(default_factory=WorkbenchSpec)


def _ready(obj: dict[str, Any]) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


WORKBENCH = REGISTRY.register(KindInfo(
    GROUP, "v1alpha1", "Workbench", "workbenches", namespaced=True, schema=WorkbenchBody,
    short_names=("wb",), categories=("kaip",),
    columns=(Column("Ready", _ready), Column("Status", ".status.phase"), Column("URL", ".status.url"),
             Column("Last Activity", ".status.lastActivity", "date", priority=1),
             Column("Age", ".metadata.creationTimestamp", "date"))))
