"""KServe's kinds (`serving.kserve.io`): InferenceService (v1beta1), ServingRuntime and ClusterServingRuntime
(v1alpha1).

Field names are upstream's (see the CRDs in shared/crds/kserve). Every upstream field Kaip does not implement is
declared, so that using it is refused with its path and a reason instead of being silently ignored; the list is
in docs/serving.md. Status is written by the InferenceService controller and is not validated here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, create_model, model_validator

from kaip.api.core import Container, EnvVar, ResourceRequirements
from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema

GROUP = "serving.kserve.io"
NOT_IMPLEMENTED = "not implemented by Kaip's local serving; remove the field (see docs/serving.md)"

# The legacy framework keys of a predictor and the model format each one stands for.
FRAMEWORK_KEYS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm", "huggingface": "huggingface",
                  "tensorflow": "tensorflow", "pytorch": "pytorch", "triton": "triton", "onnx": "onnx",
                  "pmml": "pmml", "paddle": "paddle"}


def _refuse(value: Any) -> Any:
    if value is not None:
        raise ValueError(NOT_IMPLEMENTED)
    return value


Unsupported = Annotated[Any, AfterValidator(_refuse)]
# Upstream's Go types bound integers (`format: int32` / `int64` in the CRD): a larger number is refused there.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _with_unsupported(name: str, fields: tuple[str, ...]) -> type[Schema]:
    """A base schema declaring upstream fields that Kaip refuses (each with its own path in the error)."""
    return create_model(name, __base__=Schema, **{f: (Unsupported, None) for f in fields})  # type: ignore[call-overload]


# Upstream PodSpec fields of a component that have no meaning for a local process.
_POD_UNSUPPORTED = (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
    "hostnameOverride", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "readinessGates", "resourceClaims", "restartPolicy", "runtimeClassName",
    "schedulerName", "schedulingGates", "securityContext", "serviceAccount", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "tolerations", "topologySpreadConstraints", "volumes",
    "autoScaling", "deploymentStrategy", "scaleMetricType", "storageUris", "workerSpec", "storageContainerName")
# Upstream Container fields of `predictor.model` (and the framework keys) Kaip does not implement.
_CONTAINER_UNSUPPORTED = (
    "envFrom", "lifecycle", "livenessProbe", "readinessProbe", "startupProbe", "resizePolicy", "restartPolicy",
    "restartPolicyRules", "securityContext", "stdin", "stdinOnce", "terminationMessagePath",
    "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts", "storage", "confidential", "ports")

_PodUnsupported = _with_unsupported("PodUnsupported", _POD_UNSUPPORTED)
_ContainerUnsupported = _with_unsupported("ContainerUnsupported", _CONTAINER_UNSUPPORTED)


class ModelFormat(Schema):
    name: str = Field(min_length=1)
    version: str | None = None


class ModelSpec(_ContainerUnsupported):  # type: ignore[misc, valid-type]
    """`predictor.model` and the legacy framework keys: a model, the runtime to serve it, and container overrides."""

    modelFormat: ModelFormat | None = None
    runtime: str | None = None
    storageUri: str | None = None
    runtimeVersion: str | None = None
    protocolVersion: Literal["v1", "v2"] | None = None
    name: str | None = None
    image: str | None = None  # recorded, not run: the local executor runs processes
    imagePullPolicy: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    resources: ResourceRequirements | None = None
    workingDir: str | None = None


class LoggerSpec(Schema):
    url: str | None = None
    mode: Literal["all", "request", "response"] | None = None  # unset means all, as upstream (no CRD default)
    metadataHeaders: list[str] | None = None
    metadataAnnotations: list[str] | None = None
    storage: Unsupported = None
    marshallerUrl: Unsupported = None
    batchSize: Unsupported = None
    batchInterval: Unsupported = None


class BatcherSpec(Schema):
    """KServe's batcher: unset or non-positive values take the agent's defaults (32 instances, 5,000 ms), as
    upstream's agent does; `timeout` is accepted and the component's `timeout` bounds the model call."""

    maxBatchSize: int | None = None
    maxLatency: int | None = None
    timeout: int | None = None


class ComponentSpec(_PodUnsupported):  # type: ignore[misc, valid-type]
    """What predictor, transformer and explainer share: KServe's ComponentExtensionSpec plus a custom container."""

    minReplicas: int | None = Field(default=None, ge=0, le=INT32_MAX)
    maxReplicas: int | None = Field(default=None, ge=0, le=INT32_MAX)
    scaleMetric: Literal["concurrency", "rps", "cpu", "memory"] | None = None
    scaleTarget: int | None = Field(default=None, ge=1, le=INT32_MAX)
    containerConcurrency: int | None = Field(default=None, ge=0, le=INT64_MAX)
    timeout: int | None = Field(default=None, ge=1, le=INT64_MAX)
    canaryTrafficPercent: int | None = Field(default=None, ge=0, le=100)
    logger: LoggerSpec | None = None
    batcher: BatcherSpec | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    containers: list[Container] | None = None
    serviceAccountName: str | None = None
    priorityClassName: str | None = None
    terminationGracePeriodSeconds: int | None = Field(default=None, ge=0, le=INT64_MAX)
    resources: ResourceRequirements | None = None

    @model_validator(mode="after")
    def _scaling(self) -> ComponentSpec:
        if self.scaleMetric in ("cpu", "memory"):
            raise ValueError(f"scaleMetric: {self.scaleMetric!r} {NOT_IMPLEMENTED}; Kaip scales on "
                             "'concurrency' or 'rps'")
        if self.maxReplicas and self.minReplicas is not None and self.maxReplicas < self.minReplicas:
            raise ValueError(f"maxReplicas ({self.maxReplicas}) must be greater than or equal to minReplicas "
                             f"({self.minReplicas})")
        if self.containers is not None and len(self.containers) != 1:
            raise ValueError("containers: exactly one container is supported")
        return self


class PredictorSpec(ComponentSpec):
    name: str | None = Field(default=None, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    model: ModelSpec | None = None
    sklearn: ModelSpec | None = None
    xgboost: ModelSpec | None = None
    lightgbm: ModelSpec | None = None
    huggingface: ModelSpec | None = None
    tensorflow: ModelSpec | None = None
    pytorch: ModelSpec | None = None
    triton: ModelSpec | None = None
    onnx: ModelSpec | None = None
    pmml: ModelSpec | None = None
    paddle: ModelSpec | None = None

    @model_validator(mode="after")
    def _one_implementation(self) -> PredictorSpec:
        given = [k for k in ("model", *FRAMEWORK_KEYS) if getattr(self, k) is not None]
        if self.containers:
            given.append("containers")
        if len(given) != 1:
            raise ValueError("exactly one of model, containers or a framework key (sklearn, huggingface, ...) "
                             f"must be set, found {given or 'none'}")
        if self.model is not None and self.model.modelFormat is None and not self.model.runtime:
            raise ValueError("model.modelFormat: Required value (or name a runtime with model.runtime)")
        return self


class TransformerSpec(ComponentSpec):
    """A transformer: one container between the gateway and the predictor. Without `command` it runs Kaip's
    transformer runtime, which loads the user's class (`--transformer_module=FILE.py`, `--transformer_class=NAME`
    in `args`) and calls its `preprocess` / `postprocess` around the predictor."""

    canaryTrafficPercent: Unsupported = None  # type: ignore[assignment]  # canary rollouts are the predictor's

    @model_validator(mode="after")
    def _container(self) -> TransformerSpec:
        if not self.containers:
            raise ValueError("containers: Required value (the transformer's container)")
        return self


class ExplainerSpec(ComponentSpec):
    """An explainer: one container that answers `/v1/models/{name}:explain` and calls the predictor itself. Without
    `command` it runs Kaip's explainer runtime (feature attributions for tabular models)."""

    art: Unsupported = None  # upstream's built-in ART explainer: an image Kaip does not ship
    canaryTrafficPercent: Unsupported = None  # type: ignore[assignment]  # canary rollouts are the predictor's

    @model_validator(mode="after")
    def _container(self) -> ExplainerSpec:
        if not self.containers:
            raise ValueError("containers: Required value (a custom explainer container; 'art' is not implemented)")
        return self


class InferenceServiceSpec(Schema):
    predictor: PredictorSpec
    transformer: TransformerSpec | None = None
    explainer: ExplainerSpec | None = None
    canary: Unsupported = None


class InferenceServiceBody(Schema):
    spec: InferenceServiceSpec


# ---- ServingRuntime / ClusterServingRuntime --------------------------------------------------------------

class SupportedModelFormat(Schema):
    name: str = Field(min_length=1)
    version: str | None = None
    autoSelect: bool | None = None
    priority: int | None = Field(default=None, ge=1, le=INT32_MAX)


_RUNTIME_UNSUPPORTED = ("affinity", "builtInAdapter", "grpcDataEndpoint", "grpcEndpoint", "hostIPC",
                        "httpDataEndpoint", "imagePullSecrets", "nodeSelector", "replicas", "schedulerName",
                        "storageHelper", "tolerations", "volumes", "workerSpec")
_RuntimeUnsupported = _with_unsupported("RuntimeUnsupported", _RUNTIME_UNSUPPORTED)


class ServingRuntimeSpec(_RuntimeUnsupported):  # type: ignore[misc, valid-type]
    supportedModelFormats: list[SupportedModelFormat] | None = None
    protocolVersions: list[Literal["v1", "v2", "grpc-v1", "grpc-v2"]] | None = None
    multiModel: bool | None = None
    disabled: bool | None = None
    containers: list[Container] = Field(min_length=1)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @model_validator(mode="after")
    def _local(self) -> ServingRuntimeSpec:
        if self.multiModel:
            raise ValueError(f"multiModel: {NOT_IMPLEMENTED}")
        return self


class ServingRuntimeBody(Schema):
    spec: ServingRuntimeSpec


def _condition(type_: str) -> Any:
    def get(obj: dict[str, Any]) -> str:
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == type_:
                return c.get("status", "")
        return ""
    return get


def _traffic(which: str) -> Any:
    def get(obj: dict[str, Any]) -> Any:
        traffic = (((obj.get("status") or {}).get("components") or {}).get("predictor") or {}).get("traffic") or []
        for t in traffic:
            if (which == "latest") == bool(t.get("latestRevision")):
                return t.get("percent")
        return ""
    return get


def _formats(obj: dict[str, Any]) -> str:
    return ",".join(f["name"] for f in obj["spec"].get("supportedModelFormats") or [])


INFERENCE_SERVICE = REGISTRY.register(KindInfo(
    GROUP, "v1beta1", "InferenceService", "inferenceservices", namespaced=True, schema=InferenceServiceBody,
    short_names=("isvc",), categories=("all",), columns=(
        Column("URL", ".status.url"), Column("Ready", _condition("Ready")),
        Column("Prev", _traffic("prev"), "integer"), Column("Latest", _traffic("latest"), "integer"),
        Column("PrevRolledoutRevision", ".status.components.predictor.previousRolledoutRevision"),
        Column("LatestReadyRevision", ".status.components.predictor.latestReadyRevision"),
        Column("Age", ".metadata.creationTimestamp", "date"))))
SERVING_RUNTIME = REGISTRY.register(KindInfo(
    GROUP, "v1alpha1", "ServingRuntime", "servingruntimes", namespaced=True, schema=ServingRuntimeBody,
    columns=(Column("Disabled", ".spec.disabled"), Column("ModelType", _formats),
             Column("Age", ".metadata.creationTimestamp", "date"))))
CLUSTER_SERVING_RUNTIME = REGISTRY.register(KindInfo(
    GROUP, "v1alpha1", "ClusterServingRuntime", "clusterservingruntimes", namespaced=False,
    schema=ServingRuntimeBody, columns=(Column("Disabled", ".spec.disabled"), Column("ModelType", _formats),
                                        Column("Age", ".metadata.creationTimestamp", "date"))))


def predictor_model(predictor: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The model spec of a stored predictor and the format it declares (a framework key implies its format)."""
    if predictor.get("model") is not None:
        model = predictor["model"]
        return model, (model.get("modelFormat") or {}).get("name")
    for key, fmt in FRAMEWORK_KEYS.items():
        if predictor.get(key) is not None:
            return predictor[key], fmt
    return {}, None
