"""Kueue's kinds (`kueue.x-k8s.io`): stored as v1beta2, v1beta1 accepted and converted.

Field names are upstream's. Fields Kaip's local scheduler does not implement (admission checks, topology-aware
scheduling, admission fair sharing, …) are declared so that using one is refused with its path and a reason,
never silently ignored. Upstream's CEL rules and webhook checks are applied with upstream's messages, at the
path of the offending field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from kaip.api.core import Container, ResourceRequirements
from kaip.api.errors import Cause
from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema, dns1123_subdomain_error
from kaip.api.validation import immutable
from kaip.scheduling.quantity import QuantityError, parse_quantity

GROUP = "kueue.x-k8s.io"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
DEFAULT_LOCAL_QUEUE = "default"

Quantity = str | int | float
PreemptionPolicy = Literal["Never", "LowerPriority", "Any"]
StopPolicy = Literal["None", "Hold", "HoldAndDrain"]


def _field_errors(title: str, errors: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    """Raise all (location, message, input) problems at their own paths, the way Kubernetes reports them."""
    if errors:
        raise ValidationError.from_exception_data(title, [
            InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
            for loc, message, value in errors])


def _unsupported(what: str) -> Any:
    def check(value: Any) -> Any:
        if value is not None:
            raise ValueError(f"not supported by Kaip's local scheduler ({what}); remove the field")
        return value
    return check


def _quantity(value: Quantity) -> Quantity:
    try:
        parse_quantity(value)
    except QuantityError as err:
        raise ValueError(str(err)) from err
    return value


def _name(value: str) -> str:
    if err := dns1123_subdomain_error(value):
        raise ValueError(err)
    return value


# ---- shared pieces ------------------------------------------------------------------------------------

INT32_MAX = 2 ** 31 - 1  # upstream Go types bound integers (`format: int32` / `int64` in the CRDs)
INT64_MAX = 2 ** 63 - 1

class LabelSelectorRequirement(Schema):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(Schema):
    matchLabels: dict[str, str] | None = None
    matchExpressions: list[LabelSelectorRequirement] | None = None


class ResourceQuota(Schema):
    name: str
    nominalQuota: Quantity
    borrowingLimit: Quantity | None = None
    lendingLimit: Quantity | None = None

    _q = field_validator("nominalQuota", "borrowingLimit", "lendingLimit")(
        lambda v: v if v is None else _quantity(v))


class FlavorQuotas(Schema):
    name: str = Field(max_length=253)
    resources: list[ResourceQuota] = Field(min_length=1, max_length=64)

    _n = field_validator("name")(_name)


class ResourceGroup(Schema):
    coveredResources: list[str] = Field(min_length=1, max_length=64)
    flavors: list[FlavorQuotas] = Field(min_length=1, max_length=64)


class FairSharing(Schema):
    weight: Quantity = 1

    _q = field_validator("weight")(_quantity)


def _resource_group_errors(groups: list[ResourceGroup], *, has_parent: bool, parent_word: str,
                           cel_word: str) -> list[tuple[tuple[Any, ...], str, Any]]:
    """Upstream's CEL rules on resourceGroups and its webhook's quota checks, with their messages."""
    errors: list[tuple[tuple[Any, ...], str, Any]] = []
    seen_resources: set[str] = set()
    seen_flavors: set[str] = set()
    for i, rg in enumerate(groups):
        base: tuple[Any, ...] = ("resourceGroups", i)
        if any(len(f.resources) != len(rg.coveredResources) for f in rg.flavors):
            errors.append((base, "flavors must have the same number of resources as the coveredResources", "object"))
        for j, name in enumerate(rg.coveredResources):
            if name in seen_resources:
                errors.append((base + ("coveredResources", j), f'Duplicate value: "{name}"', name))
            seen_resources.add(name)
        for j, fq in enumerate(rg.flavors):
            fpath = base + ("flavors", j)
            if fq.name in seen_flavors:
                errors.append((fpath + ("name",), f'Duplicate value: "{fq.name}"', fq.name))
            seen_flavors.add(fq.name)
            for k, rq in enumerate(fq.resources[:len(rg.coveredResources)]):
                rpath = fpath + ("resources", k)
                if rq.name != rg.coveredResources[k]:
                    errors.append((rpath + ("name",), f'Invalid value: "{rq.name}": must match the name in '
                                                      "coveredResources", rq.name))
                for field in ("nominalQuota", "borrowingLimit", "lendingLimit"):
                    value = getattr(rq, field)
                    if value is not None and parse_quantity(value) < 0:
                        errors.append((rpath + (field,), f'Invalid value: "{value}": must be greater than or '
                                                         "equal to 0", value))
                if rq.borrowingLimit is not None and not has_parent:
                    errors.append((rpath + ("borrowingLimit",), f"borrowingLimit must be nil when {cel_word} is empty",
                                   rq.borrowingLimit))
                if rq.lendingLimit is not None:
                    if not has_parent:
                        errors.append((rpath + ("lendingLimit",), f'Invalid value: "{rq.lendingLimit}": must be nil '
                                                                  f"when {parent_word} is empty", rq.lendingLimit))
                    elif parse_quantity(rq.lendingLimit) > parse_quantity(rq.nominalQuota):
                        errors.append((rpath + ("lendingLimit",), f'Invalid value: "{rq.lendingLimit}": must be less '
                                                                  "than or equal to the nominalQuota", rq.lendingLimit))
    return errors


# ---- ResourceFlavor -----------------------------------------------------------------------------------

class Taint(Schema):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    timeAdded: str | None = None


class Toleration(Schema):
    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = Field(default=None, ge=-INT64_MAX - 1, le=INT64_MAX)  # format: int64


_EFFECT_MESSAGE = "supported taint effect values: 'NoSchedule', 'PreferNoSchedule', 'NoExecute'"
_OPERATOR_MESSAGE = "supported toleration values: 'Equal'(default), 'Exists'"


def _upstream_message(message: str) -> Any:
    """A wrap validator: the field's own check, reported with the message of upstream's CEL rule for it."""
    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"Unsupported value: {value!r}: {message}") from None
    return check


class FlavorTaint(Taint):
    """A ResourceFlavor's taint: the CRD checks the effect with a CEL rule, whose message Kaip reports."""

    _e = field_validator("effect", mode="wrap")(_upstream_message(_EFFECT_MESSAGE))


class FlavorToleration(Toleration):
    """A ResourceFlavor's toleration: the CRD checks operator and effect with CEL rules, whose messages Kaip
    reports."""

    _o = field_validator("operator", mode="wrap")(_upstream_message(_OPERATOR_MESSAGE))
    _e = field_validator("effect", mode="wrap")(_upstream_message(_EFFECT_MESSAGE))


class ResourceFlavorSpec(Schema):
    nodeLabels: dict[str, str] | None = None
    nodeTaints: list[FlavorTaint] | None = Field(default=None, max_length=8)
    tolerations: list[FlavorToleration] | None = Field(default=None, max_length=8)
    topologyName: str | None = None

    _tas = field_validator("topologyName")(_unsupported("topology-aware scheduling"))

    @model_validator(mode="after")
    def _tolerations(self) -> ResourceFlavorSpec:
        errors = []
        for i, t in enumerate(self.tolerations or []):
            if t.key is None and t.operator != "Exists":
                errors.append((("tolerations", i), "operator must be Exists when 'key' is empty, which means "
                                                   "'match all values and all keys'", "object"))
            if t.tolerationSeconds is not None and t.effect != "NoExecute":
                errors.append((("tolerations", i), "effect must be 'NoExecute' when 'tolerationSeconds' is set",
                               "object"))
            if t.operator == "Exists" and t.value is not None:
                errors.append((("tolerations", i), "a value must be empty when 'operator' is 'Exists'", "object"))
        _field_errors("ResourceFlavorSpec", errors)
        return self


class ResourceFlavorBody(Schema):
    spec: ResourceFlavorSpec | None = None  # upstream stores no spec when none is given


# ---- ClusterQueue -------------------------------------------------------------------------------------

class BorrowWithinCohort(Schema):
    policy: Literal["Never", "LowerPriority"] = "Never"
    maxPriorityThreshold: int | None = None


class ClusterQueuePreemption(Schema):
    reclaimWithinCohort: PreemptionPolicy = "Never"
    borrowWithinCohort: BorrowWithinCohort = Field(default_factory=BorrowWithinCohort)  # upstream: default {}
    withinClusterQueue: Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority"] = "Never"

    @model_validator(mode="after")
    def _cel(self) -> ClusterQueuePreemption:
        if self.reclaimWithinCohort == "Never" and self.borrowWithinCohort and \
                self.borrowWithinCohort.policy != "Never":
            raise ValueError("reclaimWithinCohort=Never and borrowWithinCohort.Policy!=Never")
        return self


class FlavorFungibility(Schema):
    whenCanBorrow: Literal["MayStopSearch", "TryNextFlavor"] = "MayStopSearch"
    whenCanPreempt: Literal["MayStopSearch", "TryNextFlavor"] = "TryNextFlavor"
    preference: Literal["BorrowingOverPreemption", "PreemptionOverBorrowing"] | None = None

    @model_validator(mode="after")
    def _cel(self) -> FlavorFungibility:
        if self.preference is not None and not (self.whenCanBorrow == "TryNextFlavor"
                                                and self.whenCanPreempt == "TryNextFlavor"):
            raise ValueError("preference can only be set when both whenCanBorrow and whenCanPreempt are TryNextFlavor")
        return self


class ClusterQueueSpec(Schema):
    namespaceSelector: LabelSelector | None = None
    queueingStrategy: Literal["StrictFIFO", "BestEffortFIFO"] = "BestEffortFIFO"
    cohortName: str | None = Field(default=None, max_length=253)
    resourceGroups: list[ResourceGroup] | None = Field(default=None, max_length=16)
    flavorFungibility: FlavorFungibility = Field(default_factory=FlavorFungibility)
    preemption: ClusterQueuePreemption = Field(default_factory=ClusterQueuePreemption)
    fairSharing: FairSharing | None = None
    stopPolicy: StopPolicy = "None"
    admissionChecksStrategy: dict[str, Any] | None = None
    admissionScope: dict[str, Any] | None = None
    concurrentAdmissionPolicy: dict[str, Any] | None = None

    _n = field_validator("cohortName")(lambda v: v if v is None else _name(v))
    _ac = field_validator("admissionChecksStrategy")(_unsupported("admission checks"))
    _as = field_validator("admissionScope")(_unsupported("admission fair sharing"))
    _ca = field_validator("concurrentAdmissionPolicy")(_unsupported("concurrent admission"))

    @model_validator(mode="after")
    def _rules(self) -> ClusterQueueSpec:
        _field_errors("ClusterQueueSpec", _resource_group_errors(
            self.resourceGroups or [], has_parent=bool(self.cohortName), parent_word="cohort", cel_word="cohort"))
        return self


class ClusterQueueBody(Schema):
    spec: ClusterQueueSpec | None = None  # upstream stores no spec when none is given


# ---- Cohort -------------------------------------------------------------------------------------------

class CohortSpec(Schema):
    parentName: str | None = Field(default=None, max_length=253)
    resourceGroups: list[ResourceGroup] | None = Field(default=None, max_length=16)
    fairSharing: FairSharing | None = None

    _n = field_validator("parentName")(lambda v: v if v is None else _name(v))

    @model_validator(mode="after")
    def _rules(self) -> CohortSpec:
        _field_errors("CohortSpec", _resource_group_errors(
            self.resourceGroups or [], has_parent=bool(self.parentName), parent_word="parent", cel_word="parent"))
        return self


class CohortBody(Schema):
    spec: CohortSpec | None = None  # upstream stores no spec when none is given


# ---- LocalQueue ---------------------------------------------------------------------------------------

class LocalQueueSpec(Schema):
    clusterQueue: str | None = Field(default=None, max_length=253)
    stopPolicy: StopPolicy = "None"
    fairSharing: FairSharing | None = None

    _n = field_validator("clusterQueue")(lambda v: v if v is None else _name(v))
    _fs = field_validator("fairSharing")(_unsupported("admission fair sharing"))


class LocalQueueBody(Schema):
    spec: LocalQueueSpec | None = None  # upstream stores no spec when none is given


# ---- WorkloadPriorityClass ----------------------------------------------------------------------------

class WorkloadPriorityClassBody(Schema):
    value: int = Field(ge=-(2 ** 31), lt=2 ** 31)
    description: str | None = Field(default=None, max_length=2048)


# ---- Workload -----------------------------------------------------------------------------------------

class TemplateMeta(Schema):
    name: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class TemplatePodSpec(Schema):
    """The pod spec of a pod set: what Kaip's executor can honour, and the scheduling fields flavors match."""

    containers: list[Container] = Field(min_length=1)
    initContainers: list[Container] | None = None
    restartPolicy: Literal["Always", "OnFailure", "Never"] | None = None
    terminationGracePeriodSeconds: int | None = Field(default=None, ge=0, le=INT64_MAX)
    activeDeadlineSeconds: int | None = Field(default=None, ge=1, le=INT64_MAX)
    nodeSelector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    priorityClassName: str | None = None
    serviceAccountName: str | None = None
    schedulerName: str | None = None

    _init = field_validator("initContainers")(_unsupported("init containers"))


class PodTemplateSpec(Schema):
    metadata: TemplateMeta | None = None
    spec: TemplatePodSpec


class PodSet(Schema):
    name: str = Field(default="main", max_length=63, pattern=DNS_LABEL)
    template: PodTemplateSpec
    count: int = Field(default=1, ge=0, le=INT32_MAX)
    minCount: int | None = None
    topologyRequest: dict[str, Any] | None = None

    _min = field_validator("minCount")(_unsupported("partial admission"))
    _tas = field_validator("topologyRequest")(_unsupported("topology-aware scheduling"))


class PriorityClassRef(Schema):
    group: Literal["kueue.x-k8s.io", "scheduling.k8s.io"]
    kind: Literal["WorkloadPriorityClass", "PriorityClass"]
    name: str

    @model_validator(mode="after")
    def _cel(self) -> PriorityClassRef:
        if self.group == "scheduling.k8s.io" and self.kind != "PriorityClass":
            raise ValueError("only the PriorityClass kind is allowed for the scheduling.k8s.io group")
        if self.group == "kueue.x-k8s.io" and self.kind != "WorkloadPriorityClass":
            raise ValueError("only the WorkloadPriorityClass kind is allowed for the kueue.x-k8s.io group")
        return self


class WorkloadSpec(Schema):
    podSets: list[PodSet] = Field(min_length=1, max_length=18)
    queueName: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    priorityClassRef: PriorityClassRef | None = None
    priority: int | None = Field(default=None, ge=-INT32_MAX - 1, le=INT32_MAX)
    active: bool = True
    maximumExecutionTimeSeconds: int | None = Field(default=None, ge=1, le=INT32_MAX)
    preemptionGates: list[dict[str, Any]] | None = None

    _pg = field_validator("preemptionGates")(_unsupported("preemption gates"))

    @model_validator(mode="after")
    def _cel(self) -> WorkloadSpec:
        if self.priorityClassRef is not None and self.priority is None:
            raise ValueError("priority should not be nil when priorityClassRef is set")
        names = [p.name for p in self.podSets]
        dup = [(("podSets", i, "name"), f'Duplicate value: "{n}"', n) for i, n in enumerate(names)
               if n in names[:i]]
        _field_errors("WorkloadSpec", dup)
        return self


class WorkloadBody(Schema):
    spec: WorkloadSpec


def _true(obj: dict[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def workload_update_errors(old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    """Kueue's CEL rules on a Workload update (v1beta2, the storage version), with upstream's messages: what may
    not change while the workload holds quota (the status is the stored one: users do not write it here)."""
    out: list[Cause] = []
    before, after = old.get("spec") or {}, new.get("spec") or {}
    if _true(old, "QuotaReserved"):
        ref_before, ref_after = before.get("priorityClassRef"), after.get("priorityClassRef")
        if (ref_before is None) != (ref_after is None):
            out.append(Cause("spec.priorityClassRef", "priorityClassRef is immutable while workload quota reserved"))
        elif ref_before is not None and ref_after is not None:
            for key in ("group", "kind"):
                if ref_before.get(key) != ref_after.get(key):
                    out.append(Cause(f"spec.priorityClassRef.{key}",
                                     f"priorityClassRef.{key} is immutable while workload quota reserved"))
            if ref_after.get("group") == "scheduling.k8s.io" and ref_after.get("kind") == "PriorityClass" and \
                    ref_before.get("name") != ref_after.get("name"):
                out.append(Cause("spec.priorityClassRef.name", "priorityClassRef.name is immutable for "
                                 "scheduling.k8s.io/priorityclass while workload quota reserved"))
        if _true(new, "QuotaReserved") and before.get("queueName") != after.get("queueName"):
            out.append(Cause("spec.queueName", "queueName is immutable while workload quota reserved"))
    if _true(old, "Admitted") and _true(new, "Admitted") and \
            (before.get("maximumExecutionTimeSeconds") or 0) != (after.get("maximumExecutionTimeSeconds") or 0):
        out.append(Cause("spec.maximumExecutionTimeSeconds",
                         "maximumExecutionTimeSeconds is immutable while workload quota reserved"))
    admission = (new.get("status") or {}).get("admission")
    if _true(new, "QuotaReserved") and isinstance(admission, dict) and \
            len(after.get("podSets") or []) != len(admission.get("podSetAssignments") or []):
        out.append(Cause("spec.podSets", "podSetAssignments must have the same number of podSets as the spec"))
    return out


# ---- v1beta1 conversions ------------------------------------------------------------------------------

def _identity(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


_FUNGIBILITY_V1BETA1 = {"Borrow": "MayStopSearch", "Preempt": "MayStopSearch"}


def cq_v1beta1_to_v1beta2(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec")
    if isinstance(spec, dict):
        if "cohort" in spec:
            spec["cohortName"] = spec.pop("cohort")
        fung = spec.get("flavorFungibility")
        if isinstance(fung, dict):
            for key in ("whenCanBorrow", "whenCanPreempt"):
                if fung.get(key) in _FUNGIBILITY_V1BETA1:
                    fung[key] = _FUNGIBILITY_V1BETA1[fung[key]]
        if "admissionChecks" in spec:
            checks = spec.pop("admissionChecks")
            spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": c} for c in checks or []]}
    return doc


def cq_v1beta2_to_v1beta1(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec")
    if isinstance(spec, dict) and "cohortName" in spec:
        spec["cohort"] = spec.pop("cohortName")
    return doc


def wl_v1beta1_to_v1beta2(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec")
    if isinstance(spec, dict):
        source = spec.pop("priorityClassSource", None)
        name = spec.pop("priorityClassName", None)
        if name:
            group, kind = ("scheduling.k8s.io", "PriorityClass") if source == "scheduling.k8s.io/priorityclass" \
                else ("kueue.x-k8s.io", "WorkloadPriorityClass")
            spec["priorityClassRef"] = {"group": group, "kind": kind, "name": name}
    status = doc.get("status")
    if isinstance(status, dict) and "accumulatedPastExexcutionTimeSeconds" in status:
        status["accumulatedPastExecutionTimeSeconds"] = status.pop("accumulatedPastExexcutionTimeSeconds")
    return doc


def wl_v1beta2_to_v1beta1(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("priorityClassRef"), dict):
        ref = spec.pop("priorityClassRef")
        spec["priorityClassName"] = ref.get("name")
        spec["priorityClassSource"] = "kueue.x-k8s.io/workloadpriorityclass" \
            if ref.get("group") == GROUP else "scheduling.k8s.io/priorityclass"
    status = doc.get("status")
    if isinstance(status, dict) and "accumulatedPastExecutionTimeSeconds" in status:
        status["accumulatedPastExexcutionTimeSeconds"] = status.pop("accumulatedPastExecutionTimeSeconds")
    return doc


_SAME = {"v1beta1": (_identity, _identity)}


def _condition(type_: str) -> Any:
    def value(obj: dict[str, Any]) -> Any:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return cond.get("status")
        return None
    return value


RESOURCE_FLAVOR = REGISTRY.register(KindInfo(
    GROUP, "v1beta2", "ResourceFlavor", "resourceflavors", namespaced=False, schema=ResourceFlavorBody,
    short_names=("flavor", "flavors", "rf"), other_versions=dict(_SAME)))
CLUSTER_QUEUE = REGISTRY.register(KindInfo(
    GROUP, "v1beta2", "ClusterQueue", "clusterqueues", namespaced=False, schema=ClusterQueueBody,
    short_names=("cq",), other_versions={"v1beta1": (cq_v1beta1_to_v1beta2, cq_v1beta2_to_v1beta1)},
    columns=(Column("Cohort", ".spec.cohortName"), Column("Strategy", ".spec.queueingStrategy", priority=1),
             Column("Pending Workloads", ".status.pendingWorkloads", "integer"),
             Column("Admitted Workloads", ".status.admittedWorkloads", "integer", 1))))
COHORT = REGISTRY.register(KindInfo(
    GROUP, "v1beta2", "Cohort", "cohorts", namespaced=False, schema=CohortBody, short_names=("co",),
    other_versions=dict(_SAME), columns=(Column("Parent", ".spec.parentName"),)))
LOCAL_QUEUE = REGISTRY.register(KindInfo(
    GROUP, "v1beta2", "LocalQueue", "localqueues", namespaced=True, schema=LocalQueueBody,
    short_names=("queue", "queues", "lq"), other_versions=dict(_SAME), update_checks=(immutable("spec.clusterQueue"),),
    columns=(Column("ClusterQueue", ".spec.clusterQueue"),
             Column("Pending Workloads", ".status.pendingWorkloads", "integer"),
             Column("Admitted Workloads", ".status.admittedWorkloads", "integer"))))
WORKLOAD_PRIORITY_CLASS = REGISTRY.register(KindInfo(
    GROUP, "v1beta2", "WorkloadPriorityClass", "workloadpriorityclasses", namespaced=False,
    schema=WorkloadPriorityClassBody, short_names=("wpc",), other_versions=dict(_SAME),
    columns=(Column("Value", ".value", "integer"),)))
WORKLOAD = REGISTRY.register(KindInfo(
    GROUP, "v1beta2", "Workload", "workloads", namespaced=True, schema=WorkloadBody,
    short_names=("kwl", "kueueworkload", "kueueworkloads"),
    other_versions={"v1beta1": (wl_v1beta1_to_v1beta2, wl_v1beta2_to_v1beta1)}, update_checks=(workload_update_errors,),
    columns=(Column("Queue", ".spec.queueName"), Column("Reserved in", ".status.admission.clusterQueue"),
             Column("Admitted", _condition("Admitted")), Column("Finished", _condition("Finished")),
             Column("Age", ".metadata.creationTimestamp", "date"))))

KUEUE_KINDS = (RESOURCE_FLAVOR, CLUSTER_QUEUE, COHORT, LOCAL_QUEUE, WORKLOAD_PRIORITY_CLASS, WORKLOAD)
__all__ = ["ResourceRequirements", "KUEUE_KINDS"]
