"""Training kinds: Kubeflow Trainer v2 (`trainer.kubeflow.org/v1alpha1` TrainJob, TrainingRuntime,
ClusterTrainingRuntime) and Training Operator v1 (`kubeflow.org/v1` PyTorchJob).

Field names are upstream's (trainer:pkg/apis/trainer/v1alpha1, trainer@v1.9.4:pkg/apis/kubeflow.org/v1). Fields
the local launcher does not implement are declared so that using one is refused with its path and the reason,
never silently ignored; docs/training.md lists them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from kaip.api.core import EnvVar, ResourceRequirements
from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.kueue import INT32_MAX, INT64_MAX, PodTemplateSpec, TemplateMeta
from kaip.api.meta import Schema
from kaip.api.validation import immutable

TRAINER_GROUP = "trainer.kubeflow.org"
KUBEFLOW_GROUP = "kubeflow.org"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAINER_CONTAINER = "node"
PYTORCH_CONTAINER = "pytorch"
DEFAULT_MANAGED_BY = "trainer.kubeflow.org/trainjob-controller"
MULTIKUEUE_MANAGED_BY = "kueue.x-k8s.io/multikueue"
# Upstream's CEL rule on an initializer's storageUri: empty, or `scheme://...` (RE2's `^...$`: the whole value).
STORAGE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.+")


def _unsupported(what: str) -> Any:
    def check(value: Any) -> Any:
        if value is not None:
            raise ValueError(f"not supported by Kaip's local training launcher ({what}); remove the field")
        return value
    return check


# ---- Trainer v2: TrainJob ------------------------------------------------------------------------------


class RuntimeRef(Schema):
    name: str = Field(min_length=1, max_length=253)
    apiGroup: str = TRAINER_GROUP
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"

    @field_validator("apiGroup")
    @classmethod
    def _group(cls, v: str) -> str:
        if v != TRAINER_GROUP:
            raise ValueError(f'Unsupported value: "{v}": supported values: "{TRAINER_GROUP}"')
        return v


# The model registry's URIs (`models:/NAME/VERSION`, `models:/NAME@ALIAS`) have one slash, which upstream's rule
# refuses: a TrainJob's initializer writes them `models://NAME/VERSION`, and the launcher reads them back.
TRAINJOB_MODELS_PREFIX = "models://"


def trainjob_storage_uri(uri: str) -> str:
    """A registry URI (`models:/NAME/VERSION`) as a TrainJob initializer's storageUri (`models://NAME/VERSION`);
    any other URI as it is."""
    if uri.startswith("models:/") and not uri.startswith(TRAINJOB_MODELS_PREFIX):
        return TRAINJOB_MODELS_PREFIX + uri.removeprefix("models:/")
    return uri


def registry_model_uri(storage_uri: str) -> str:
    """A TrainJob initializer's `models://NAME/VERSION` as the registry's `models:/NAME/VERSION`; any other URI as
    it is."""
    if storage_uri.startswith(TRAINJOB_MODELS_PREFIX):
        return "models:/" + storage_uri.removeprefix(TRAINJOB_MODELS_PREFIX)
    return storage_uri


def storage_uri_error(uri: str) -> str | None:
    """Upstream's CEL rule on `initializer.{dataset,model}.storageUri`, with upstream's message (and a hint for
    the forms Kaip's registry and local paths used to take)."""
    if uri == "" or STORAGE_URI.fullmatch(uri):
        return None
    hint = ""
    if uri.startswith("models:/"):
        hint = "; for a registered model write models://NAME/VERSION or models://NAME@ALIAS"
    elif uri.startswith("/"):
        hint = "; for a local path write file:///path"
    return f"Invalid value: {uri!r}: storageUri may be empty, or it must be a valid URI (scheme://...){hint}"


class StorageInitializer(Schema):
    storageUri: str | None = Field(default=None, max_length=2048)
    env: list[EnvVar] | None = Field(default=None, max_length=128)
    secretRef: dict[str, Any] | None = None

    _secret = field_validator("secretRef")(_unsupported("initializer secrets; nothing is downloaded"))

    @field_validator("storageUri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and (err := storage_uri_error(v)):
            raise ValueError(err)
        return v


class Initializer(Schema):
    dataset: StorageInitializer | None = None
    model: StorageInitializer | None = None


class TrainerResources(ResourceRequirements):
    claims: list[dict[str, Any]] | None = None

    _claims = field_validator("claims")(_unsupported("dynamic resource claims"))


_ARG = Annotated[str, Field(max_length=1048576)]


class Trainer(Schema):
    image: str | None = Field(default=None, max_length=500)
    command: list[_ARG] | None = Field(default=None, max_length=128)
    args: list[_ARG] | None = Field(default=None, max_length=128)
    env: list[EnvVar] | None = Field(default=None, max_length=128)
    numNodes: int | None = Field(default=None, ge=1, le=INT32_MAX)
    resourcesPerNode: TrainerResources | None = None
    numProcPerNode: int | None = Field(default=None, ge=1, le=INT32_MAX)


class TrainJobSpec(Schema):
    runtimeRef: RuntimeRef
    initializer: Initializer | None = None
    trainer: Trainer | None = None
    runtimePatches: list[dict[str, Any]] | None = None
    suspend: bool = False
    activeDeadlineSeconds: int | None = Field(default=None, ge=1, le=INT64_MAX)
    managedBy: str | None = None

    _patches = field_validator("runtimePatches")(_unsupported("runtime patches"))

    @field_validator("managedBy")
    @classmethod
    def _managed(cls, v: str | None) -> str | None:
        if v is not None and v not in (DEFAULT_MANAGED_BY, MULTIKUEUE_MANAGED_BY):
            raise ValueError(f"Invalid value: {v!r}: ManagedBy must be {DEFAULT_MANAGED_BY} or "
                             f"{MULTIKUEUE_MANAGED_BY} if set")  # upstream's CEL rule
        if v is not None and v != DEFAULT_MANAGED_BY:
            raise ValueError(f"not supported by Kaip's local training launcher (only {DEFAULT_MANAGED_BY!r} "
                             "manages TrainJobs here); remove the field")
        return v


class TrainJobBody(Schema):
    spec: TrainJobSpec


# ---- Trainer v2: (Cluster)TrainingRuntime ----------------------------------------------------------------


class TorchPolicy(Schema):
    envInjection: dict[str, Any] | None = None

    _inj = field_validator("envInjection")(_unsupported("env injection into other containers"))


class MLPolicy(Schema):
    numNodes: int | None = Field(default=None, ge=1, le=INT32_MAX)  # no upstream default: the launcher takes 1
    torch: TorchPolicy | None = None
    mpi: dict[str, Any] | None = None
    jax: dict[str, Any] | None = None
    xgboost: dict[str, Any] | None = None
    flux: dict[str, Any] | None = None

    _others = field_validator("mpi", "jax", "xgboost", "flux")(_unsupported("only the torch policy runs locally"))


class RuntimeJobSpec(Schema):
    """The batch/v1 Job inside a JobSet replicated job: the pod template and the restart budget."""

    template: PodTemplateSpec
    backoffLimit: int | None = Field(default=None, ge=0, le=INT32_MAX)
    completionMode: Literal["Indexed", "NonIndexed"] | None = None
    parallelism: int | None = None
    completions: int | None = None
    activeDeadlineSeconds: int | None = None
    podFailurePolicy: dict[str, Any] | None = None
    successPolicy: dict[str, Any] | None = None
    backoffLimitPerIndex: int | None = None
    maxFailedIndexes: int | None = None
    podReplacementPolicy: str | None = None
    ttlSecondsAfterFinished: int | None = None
    suspend: bool | None = None
    managedBy: str | None = None
    selector: dict[str, Any] | None = None
    manualSelector: bool | None = None

    _counts = field_validator("parallelism", "completions")(_unsupported("counts come from numNodes"))
    _rest = field_validator("activeDeadlineSeconds", "podFailurePolicy", "successPolicy", "backoffLimitPerIndex",
                            "maxFailedIndexes", "podReplacementPolicy", "ttlSecondsAfterFinished", "suspend",
                            "managedBy", "selector", "manualSelector")(
        _unsupported("set it on the TrainJob, or restart the group with failurePolicy.maxRestarts"))


class RuntimeJobTemplate(Schema):
    metadata: TemplateMeta | None = None
    spec: RuntimeJobSpec


class ReplicatedJob(Schema):
    name: str
    replicas: int = Field(default=1, ge=1, le=1)
    template: RuntimeJobTemplate
    groupName: str | None = None
    dependsOn: list[dict[str, Any]] | None = None

    _group = field_validator("groupName")(_unsupported("replicated job groups"))
    _deps = field_validator("dependsOn")(_unsupported("initializer jobs; use the TrainJob's initializer.storageUri"))


class FailurePolicy(Schema):
    maxRestarts: int | None = Field(default=None, ge=0, le=INT32_MAX)
    restartStrategy: Literal["Recreate"] = "Recreate"  # upstream's default; the other strategies are not run
    rules: list[dict[str, Any]] | None = None

    _rules = field_validator("rules")(_unsupported("failure policy rules"))


class JobSetSpec(Schema):
    replicatedJobs: list[ReplicatedJob] = Field(min_length=1)
    failurePolicy: FailurePolicy | None = None
    network: dict[str, Any] | None = None
    coordinator: dict[str, Any] | None = None
    startupPolicy: dict[str, Any] | None = None
    successPolicy: dict[str, Any] | None = None
    suspend: bool | None = None
    ttlSecondsAfterFinished: int | None = None
    managedBy: str | None = None
    volumeClaimPolicies: list[dict[str, Any]] | None = None

    _rest = field_validator("network", "coordinator", "startupPolicy", "successPolicy", "suspend",
                            "ttlSecondsAfterFinished", "managedBy", "volumeClaimPolicies")(
        _unsupported("JobSet options other than replicatedJobs and failurePolicy.maxRestarts"))

    @field_validator("replicatedJobs")
    @classmethod
    def _one_trainer(cls, v: list[ReplicatedJob]) -> list[ReplicatedJob]:
        trainers = [j for j in v if is_trainer_job(j.name, (j.template.metadata.labels if j.template.metadata
                                                              else None) or {})]
        if len(trainers) != 1:
            raise ValueError("exactly one replicated job must be the trainer (named 'node', or labelled "
                             f"{ANCESTOR_LABEL}: trainer); initializer jobs are not run locally")
        if len(v) != 1:
            raise ValueError("not supported by Kaip's local training launcher (initializer jobs; use the "
                             "TrainJob's initializer.storageUri); keep only the trainer job")
        return v


class RuntimeTemplate(Schema):
    metadata: TemplateMeta | None = None
    spec: JobSetSpec


class TrainingRuntimeSpec(Schema):
    mlPolicy: MLPolicy | None = None
    podGroupPolicy: dict[str, Any] | None = None
    template: RuntimeTemplate

    _pg = field_validator("podGroupPolicy")(_unsupported("gang scheduling plugins; queue the TrainJob with Kueue"))


class TrainingRuntimeBody(Schema):
    spec: TrainingRuntimeSpec


def is_trainer_job(name: str, labels: dict[str, str]) -> bool:
    step = labels.get(ANCESTOR_LABEL)
    return step == "trainer" or (step is None and name == TRAINER_CONTAINER)


# ---- Training Operator v1: PyTorchJob --------------------------------------------------------------------


class ReplicaSpec(Schema):
    # No CRD defaults: an absent count is one replica (the Training Operator's webhook), an absent restart policy
    # restarts nothing.
    replicas: int | None = Field(default=None, ge=0, le=INT32_MAX)
    restartPolicy: Literal["OnFailure", "Never"] | None = None
    template: PodTemplateSpec

    @property
    def count(self) -> int:
        return 1 if self.replicas is None else self.replicas


class RunPolicy(Schema):
    cleanPodPolicy: Literal["All", "Running", "None"] | None = None
    ttlSecondsAfterFinished: int | None = None
    activeDeadlineSeconds: int | None = Field(default=None, ge=1, le=INT64_MAX)
    backoffLimit: int | None = Field(default=None, ge=0, le=INT32_MAX)
    schedulingPolicy: dict[str, Any] | None = None
    suspend: bool = False
    managedBy: str | None = None

    _ttl = field_validator("ttlSecondsAfterFinished")(_unsupported("finished-job clean-up"))
    _sp = field_validator("schedulingPolicy")(_unsupported("gang scheduling; queue the job with Kueue"))
    _mb = field_validator("managedBy")(_unsupported("external job controllers"))


REPLICA_TYPES = ("Master", "Worker")
ReplicaType = Literal["Master", "Worker"]


class PyTorchJobSpec(Schema):
    pytorchReplicaSpecs: dict[ReplicaType, ReplicaSpec]
    runPolicy: RunPolicy | None = None
    elasticPolicy: dict[str, Any] | None = None
    nprocPerNode: str | None = None

    _elastic = field_validator("elasticPolicy")(_unsupported("elastic training"))

    @field_validator("pytorchReplicaSpecs", mode="before")
    @classmethod
    def _types(cls, v: Any) -> Any:
        # before the values: a replica of another type is refused as such, not for what is inside it
        for key in v if isinstance(v, dict) else ():
            if key not in REPLICA_TYPES:
                raise ValueError(f"Unsupported value: {key!r}: replica types are Master and Worker")
        return v

    @field_validator("nprocPerNode")
    @classmethod
    def _nproc(cls, v: str | None) -> str | None:
        if v is not None and v not in ("auto", "cpu", "gpu") and not (v.isdigit() and int(v) >= 1):
            raise ValueError(f"Invalid value: {v!r}: must be auto, cpu, gpu or a positive integer")
        return v

    @model_validator(mode="after")
    def _master(self) -> PyTorchJobSpec:
        master = self.pytorchReplicaSpecs.get("Master")
        if master is not None and master.count != 1:
            raise ValueError("pytorchReplicaSpecs.Master.replicas: Invalid value: there must be exactly one Master")
        if not any(spec.count for spec in self.pytorchReplicaSpecs.values()):
            raise ValueError("pytorchReplicaSpecs: at least one replica is required")
        for spec in self.pytorchReplicaSpecs.values():
            names = [c.name for c in spec.template.spec.containers]
            if PYTORCH_CONTAINER not in names:
                raise ValueError(f"pytorchReplicaSpecs: a container named {PYTORCH_CONTAINER!r} is required")
        return self


class PyTorchJobBody(Schema):
    spec: PyTorchJobSpec


# ---- printer columns and registration -----------------------------------------------------------------


def job_state(obj: dict[str, Any]) -> str:
    """The last true condition, as kubectl shows a job's state."""
    true = [c["type"] for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    return true[-1] if true else ""


def progress(obj: dict[str, Any]) -> str:
    """`step/total loss=… eta=…s` from the workers' last report (trainerStatus)."""
    ts = (obj.get("status") or {}).get("trainerStatus") or {}
    metrics = {m.get("name"): m.get("value") for m in ts.get("metrics") or []}
    if "step" not in metrics:
        return ""
    out = f"{metrics['step']}/{metrics.get('total_steps', '?')}"
    if "loss" in metrics:
        out += f" loss={metrics['loss']}"
    if ts.get("estimatedRemainingSeconds") is not None:
        out += f" eta={ts['estimatedRemainingSeconds']}s"
    return out


def _restarts(obj: dict[str, Any]) -> int:
    return int(((obj.get("status") or {}).get("kaip") or {}).get("restarts", 0))


_COLUMNS = (Column("State", job_state), Column("Progress", progress), Column("Restarts", _restarts, "integer"),
            Column("Age", ".metadata.creationTimestamp", "date"))

# Upstream's CEL transition rules (`self == oldSelf`) on the fields Kaip implements; those on fields Kaip refuses
# (runtimePatches, a runtime's network, startupPolicy, successPolicy, volumeClaimPolicies, dependsOn) cannot arise.
_TRAINJOB_IMMUTABLE = immutable("spec.activeDeadlineSeconds", "spec.initializer", "spec.managedBy",
                                "spec.runtimeRef", "spec.trainer")
_RUNTIME_IMMUTABLE = immutable("spec.template.spec.failurePolicy", message="Value is immutable")

TRAIN_JOB = REGISTRY.register(KindInfo(
    TRAINER_GROUP, "v1alpha1", "TrainJob", "trainjobs", namespaced=True, schema=TrainJobBody, name_rule="rfc1035",
    categories=("all",), columns=(Column("Runtime", ".spec.runtimeRef.name"), *_COLUMNS),
    update_checks=(_TRAINJOB_IMMUTABLE,)))
TRAINING_RUNTIME = REGISTRY.register(KindInfo(
    TRAINER_GROUP, "v1alpha1", "TrainingRuntime", "trainingruntimes", namespaced=True, schema=TrainingRuntimeBody,
    columns=(Column("Age", ".metadata.creationTimestamp", "date"),), update_checks=(_RUNTIME_IMMUTABLE,)))
CLUSTER_TRAINING_RUNTIME = REGISTRY.register(KindInfo(
    TRAINER_GROUP, "v1alpha1", "ClusterTrainingRuntime", "clustertrainingruntimes", namespaced=False,
    schema=TrainingRuntimeBody, columns=(Column("Age", ".metadata.creationTimestamp", "date"),),
    update_checks=(_RUNTIME_IMMUTABLE,)))
PYTORCH_JOB = REGISTRY.register(KindInfo(
    KUBEFLOW_GROUP, "v1", "PyTorchJob", "pytorchjobs", namespaced=True, schema=PyTorchJobBody,
    categories=("all",), columns=_COLUMNS))
