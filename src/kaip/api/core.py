"""Core kinds (`v1`, `rbac.authorization.k8s.io/v1`): the ones the platform itself stands on."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import Field, field_validator

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema

NAMESPACE_FINALIZER = "kaip.dev/namespace"
POD_FINALIZER = "kaip.dev/pod-process"


class NamespaceSpec(Schema):
    finalizers: list[str] | None = None


class NamespaceBody(Schema):
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)


class ConfigMapBody(Schema):
    data: dict[str, str] | None = None
    binaryData: dict[str, str] | None = None
    immutable: bool | None = None


class SecretBody(Schema):
    type: str = "Opaque"
    data: dict[str, str] | None = None
    stringData: dict[str, str] | None = None
    immutable: bool | None = None

    @field_validator("data")
    @classmethod
    def _base64(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError(f"data[{key}]: illegal base64 data") from err
        return v

    def model_post_init(self, _: Any) -> None:
        # As Kubernetes does: stringData is write-only and merged into data.
        if self.stringData:
            data = dict(self.data or {})
            for key, value in self.stringData.items():
                data[key] = base64.b64encode(value.encode()).decode()
            self.data = data
            self.stringData = None


class ObjectReference(Schema):
    apiVersion: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    fieldPath: str | None = None


class EventSource(Schema):
    component: str | None = None
    host: str | None = None


class EventBody(Schema):
    involvedObject: ObjectReference
    reason: str | None = None
    message: str | None = None
    type: Literal["Normal", "Warning"] = "Normal"
    count: int = 1
    firstTimestamp: str | None = None
    lastTimestamp: str | None = None
    source: EventSource | None = None
    reportingComponent: str | None = None


class ConfigMapKeySelector(Schema):
    name: str
    key: str
    optional: bool | None = None


class EnvVarSource(Schema):
    configMapKeyRef: ConfigMapKeySelector | None = None
    secretKeyRef: ConfigMapKeySelector | None = None


class EnvVar(Schema):
    name: str
    value: str | None = None
    valueFrom: EnvVarSource | None = None


class ContainerPort(Schema):
    containerPort: int = Field(ge=0, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class ResourceRequirements(Schema):
    requests: dict[str, str | int | float] | None = None
    limits: dict[str, str | int | float] | None = None


class Container(Schema):
    name: str
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    workingDir: str | None = None
    ports: list[ContainerPort] | None = None
    resources: ResourceRequirements | None = None
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] | None = None


class PodSpec(Schema):
    containers: list[Container] = Field(min_length=1)
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    terminationGracePeriodSeconds: int = Field(default=30, ge=0)
    activeDeadlineSeconds: int | None = Field(default=None, ge=1)
    nodeName: str | None = None
    serviceAccountName: str | None = None
    automountServiceAccountToken: bool | None = None
    priorityClassName: str | None = None
    schedulerName: str | None = None

    @field_validator("containers")
    @classmethod
    def _unique_names(cls, v: list[Container]) -> list[Container]:
        names = [c.name for c in v]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"Duplicate value: {name!r}")
        for c in v:
            if not c.command and not c.args:
                raise ValueError(f"container {c.name!r}: command is required on the local executor "
                                 "(images are recorded, not run)")
        return v


class PodBody(Schema):
    spec: PodSpec


class ServiceAccountBody(Schema):
    automountServiceAccountToken: bool | None = None
    secrets: list[ObjectReference] | None = None


class RoleRef(Schema):
    apiGroup: Literal["rbac.authorization.k8s.io"] = "rbac.authorization.k8s.io"
    kind: Literal["ClusterRole", "Role"] = "ClusterRole"
    name: Literal["admin", "edit", "view"]


class Subject(Schema):
    kind: Literal["User", "ServiceAccount", "Group"]
    name: str
    namespace: str | None = None
    apiGroup: str | None = None


class RoleBindingBody(Schema):
    roleRef: RoleRef
    subjects: list[Subject] = Field(default_factory=list)


def pod_ready(pod: dict[str, Any]) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len(pod['spec']['containers'])}"


def pod_status(pod: dict[str, Any]) -> str:
    """What kubectl shows: a pod-level reason, else a container's waiting or terminated reason, else the phase."""
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if status.get("reason"):
        return status["reason"]
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        reason = (state.get("waiting") or {}).get("reason")
        if reason and reason != "ContainerCreating":
            return reason
        if status.get("phase") == "Failed" and state.get("terminated"):
            return state["terminated"].get("reason") or "Error"
    if status.get("phase") == "Succeeded":
        return "Completed"
    return status.get("phase") or "Pending"


def pod_restarts(pod: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount", 0)) for s in (pod.get("status") or {}).get("containerStatuses") or [])


def _count(field: str) -> Any:
    return lambda obj: len(obj.get(field) or {})


def _event_object(ev: dict[str, Any]) -> str:
    ref = ev.get("involvedObject") or {}
    return f"{(ref.get('kind') or '').lower()}/{ref.get('name', '')}"


NAMESPACE = REGISTRY.register(KindInfo(
    "", "v1", "Namespace", "namespaces", namespaced=False, schema=NamespaceBody, short_names=("ns",),
    name_rule="label", default_finalizers=(NAMESPACE_FINALIZER,), columns=(Column("Status", ".status.phase"),)))
CONFIGMAP = REGISTRY.register(KindInfo(
    "", "v1", "ConfigMap", "configmaps", namespaced=True, schema=ConfigMapBody, short_names=("cm",),
    columns=(Column("Data", _count("data"), "integer"),)))
SECRET = REGISTRY.register(KindInfo("", "v1", "Secret", "secrets", namespaced=True, schema=SecretBody,
                                    columns=(Column("Type", ".type"), Column("Data", _count("data"), "integer"))))
EVENT = REGISTRY.register(KindInfo("", "v1", "Event", "events", namespaced=True, schema=EventBody,
                                   short_names=("ev",), columns=(
                                       Column("Last Seen", ".lastTimestamp", "date"), Column("Type", ".type"),
                                       Column("Reason", ".reason"), Column("Object", _event_object),
                                       Column("Count", ".count", "integer", 1), Column("Message", ".message"),
                                       Column("Age", ".metadata.creationTimestamp", "date", 1))))
POD = REGISTRY.register(KindInfo("", "v1", "Pod", "pods", namespaced=True, schema=PodBody, short_names=("po",),
                                 default_finalizers=(POD_FINALIZER,), categories=("all",), columns=(
                                     Column("Ready", pod_ready), Column("Status", pod_status),
                                     Column("Restarts", pod_restarts, "integer"),
                                     Column("Age", ".metadata.creationTimestamp", "date"),
                                     Column("IP", ".status.podIP", priority=1),
                                     Column("Node", lambda _p: "localhost", priority=1))))
SERVICE_ACCOUNT = REGISTRY.register(KindInfo("", "v1", "ServiceAccount", "serviceaccounts", namespaced=True,
                                             schema=ServiceAccountBody, short_names=("sa",)))
_ROLE = (Column("Role", lambda rb: f"{rb['roleRef']['kind']}/{rb['roleRef']['name']}"),)
ROLE_BINDING = REGISTRY.register(KindInfo("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings",
                                          namespaced=True, schema=RoleBindingBody, columns=_ROLE))
CLUSTER_ROLE_BINDING = REGISTRY.register(KindInfo("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding",
                                                  "clusterrolebindings", namespaced=False,
                                                  schema=RoleBindingBody, columns=_ROLE))


class Taint(Schema):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class NodeSpec(Schema):
    unschedulable: bool | None = None
    taints: list[Taint] | None = None


class NodeBody(Schema):
    spec: NodeSpec = Field(default_factory=NodeSpec)


def _resource(name: str) -> Any:
    return lambda node: ((node.get("status") or {}).get("allocatable") or {}).get(name, "")


# The machine itself is the node of the embedded default; the server records its capacity at start.
NODE = REGISTRY.register(KindInfo("", "v1", "Node", "nodes", namespaced=False, schema=NodeBody, short_names=("no",),
                                  columns=(Column("Status", lambda n: "Ready" if (n.get("status") or {}).get(
                                      "conditions") else "Unknown"),
                                           Column("CPU", _resource("cpu")), Column("Memory", _resource("memory")),
                                           Column("GPU", _resource("nvidia.com/gpu"), priority=1))))
