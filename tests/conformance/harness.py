"""The conformance harness: upstream CRDs as JSON Schema, Kaip's kinds mapped to them, and the support matrix.

Kinds are discovered from Kaip's kinds registry; each kind outside Kaip's own group is matched to the CRD in
`shared/crds/` that defines its group and kind. A CRD's `openAPIV3Schema` is a *structural* OpenAPI v3 schema;
`to_jsonschema` turns it into plain JSON Schema (draft 7) the way the API server reads it:

- `x-kubernetes-int-or-string: true` becomes `anyOf: [integer, string]`;
- `nullable: true` admits null;
- an object with `properties` refuses unknown fields (kubectl's and the API server's strict field validation)
  unless `x-kubernetes-preserve-unknown-fields: true` says otherwise;
- `format: int32` / `int64` bound integers (the API server cannot decode a larger number into the Go type).

CEL rules (`x-kubernetes-validations`), which jsonschema cannot evaluate, are evaluated by `conformance.cel`
(cel-python), walking the document alongside the schema (`cel_violations`); `upstream_rejects` is everything
upstream refuses: the structural schema's reasons or, when there are none, the CEL rules' messages.

`bounded` trims a schema for document generation (depth, list and map sizes, string lengths), so that
hypothesis-jsonschema produces small documents quickly.

The support matrix (`matrix`) walks a CRD schema alongside the kind's pydantic schema: every upstream field is
implemented (Kaip declares it), refused as not implemented (declared with a validator that refuses any value),
or refused as unknown (not declared at all). `EXTRA_RULES` lists, per kind, the checks Kaip makes beyond the CRD
schema (upstream makes them in its webhook or when it creates the pods), with the path and message they report.
"""

from __future__ import annotations

import copy
import functools
import importlib
import pkgutil
import re
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import AfterValidator, BaseModel

import kaip.api
from conformance import cel
from kaip.api.errors import ApiError
from kaip.api.kinds import REGISTRY, KindInfo
from kaip.api.validation import validate_document

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CRDS = SHARED / "crds"
OPENAPI = SHARED / "openapi"

# Kaip's own group: no upstream definition to conform to.
OWN_GROUPS = ("kaip.dev",)
# Kinds whose generated (property-based) checks run: their owners have finished them. Adding a group here is the
# one line that turns on generation, mutation and defaulting checks for its kinds (e.g. "kueue.x-k8s.io").
GENERATED_GROUPS: tuple[str, ...] = ("serving.kserve.io", "trustyai.opendatahub.io", "kueue.x-k8s.io",
                                     "trainer.kubeflow.org", "kubeflow.org", "argoproj.io")
# CRD files whose names do not follow `<group>_<plural>.yaml`.
CRD_FILE_OVERRIDES = {"argoproj.io/Application": "argo-cd/application-crd.yaml",
                      "kubeflow.org/Experiment": "katib/experiment.yaml"}

NOT_IMPLEMENTED = "not implemented"
UNKNOWN = "unknown field"


@dataclass(frozen=True)
class Rule:
    """A check Kaip makes that the CRD schema does not: refusals at `path` whose message contains `message`."""

    path: str
    message: str
    why: str


# Per kind key (`group/Kind`): Kaip's checks beyond the CRD's openAPIV3Schema. Paths use `[*]` for list indices.
_CONTAINER_RULES = (
    ("imagePullPolicy", "Input should be 'Always', 'IfNotPresent' or 'Never'",
     "Kubernetes' Pod validation (the pod upstream creates) allows only these values"),
    ("ports[*].protocol", "Input should be 'TCP', 'UDP' or 'SCTP'", "Kubernetes' Pod validation"),
    ("ports[*].containerPort", "Input should be", "Kubernetes' Pod validation: 1-65535"),
    *((f"env[*].valueFrom.{ref}.name", "Required value", "Kubernetes' Pod validation requires the name (the CRD "
       "defaults it to \"\", and the pod upstream creates from it is refused)") for ref in ("configMapKeyRef",
                                                                                            "secretKeyRef")),
)
_MODEL_CONTAINER_RULES = (_CONTAINER_RULES[0], *_CONTAINER_RULES[3:])  # a model's container has no ports
_COMPONENT_RULES = (
    Rule("{c}", "maxReplicas", "KServe's webhook: maxReplicas must be >= minReplicas"),
    Rule("{c}", "scaleMetric", "Kaip scales on concurrency or rps only (cpu and memory need a metrics server)"),
    Rule("{c}", "containers: exactly one container", "Kaip runs one container per component"),
    Rule("{c}.minReplicas", "greater than or equal to 0", "KServe's webhook refuses negative replicas"),
    Rule("{c}.maxReplicas", "greater than or equal to 0", "KServe's webhook refuses negative replicas"),
    Rule("{c}.scaleTarget", "greater than or equal to 1", "KServe's webhook: the target must be positive"),
    Rule("{c}.containerConcurrency", "greater than or equal to 0", "Knative's webhook"),
    Rule("{c}.timeout", "greater than or equal to 1", "Knative's webhook: a positive timeout"),
    Rule("{c}.canaryTrafficPercent", "less than or equal to 100", "KServe's webhook: a percentage"),
    Rule("{c}.canaryTrafficPercent", "greater than or equal to 0", "KServe's webhook: a percentage"),
    Rule("{c}.terminationGracePeriodSeconds", "greater than or equal to 0", "Kubernetes' Pod validation"),
    Rule("{c}.containers[*].name", "Field required", "Kubernetes' Pod validation: a container has a name"),
)
_MODEL_KEYS = ("model", "sklearn", "xgboost", "lightgbm", "huggingface", "tensorflow", "pytorch", "triton", "onnx",
               "pmml", "paddle")
_PROTOCOLS = ("KServe's protocol constants (v1, v2, grpc-v1, grpc-v2): a runtime is matched on them, so another "
              "value never serves")
EXTRA_RULES: dict[str, tuple[Rule, ...]] = {
    "serving.kserve.io/InferenceService": (
        Rule("spec.predictor", "exactly one of model, containers or a framework key",
             "KServe's webhook: exactly one predictor implementation"),
        Rule("spec.predictor", "model.modelFormat: Required value", "KServe's webhook: a model names its format"),
        Rule("spec.predictor.model.modelFormat.name", "at least 1 character", "KServe: a format has a name"),
        *(Rule(f"spec.predictor.{k}.protocolVersion", "Input should be 'v1' or 'v2'", _PROTOCOLS)
          for k in _MODEL_KEYS),
        *(Rule(r.path.format(c="spec.predictor"), r.message, r.why) for r in _COMPONENT_RULES),
        *(Rule(f"spec.predictor.{k}.{p}", m, w) for k in _MODEL_KEYS for p, m, w in _MODEL_CONTAINER_RULES),
        *(Rule(f"spec.predictor.containers[*].{p}", m, w) for p, m, w in _CONTAINER_RULES),
        Rule("spec.transformer", "containers: Required value",
             "a transformer is its container (upstream's pod for it fails without one)"),
        *(Rule(r.path.format(c="spec.transformer"), r.message, r.why) for r in _COMPONENT_RULES
          if "canaryTrafficPercent" not in r.path),
        *(Rule(f"spec.transformer.containers[*].{p}", m, w) for p, m, w in _CONTAINER_RULES),
        Rule("spec.explainer", "containers: Required value",
             "Kaip runs custom explainers only: an explainer is its container ('art' is not implemented)"),
        *(Rule(r.path.format(c="spec.explainer"), r.message, r.why) for r in _COMPONENT_RULES
          if "canaryTrafficPercent" not in r.path),
        *(Rule(f"spec.explainer.containers[*].{p}", m, w) for p, m, w in _CONTAINER_RULES),
    ),
    "serving.kserve.io/ServingRuntime": (
        Rule("spec", "multiModel", "Kaip serves one model per runtime process (ModelMesh is not implemented)"),
        Rule("spec.supportedModelFormats[*].name", "at least 1 character", "KServe: a format has a name"),
        Rule("spec.protocolVersions[*]", "Input should be 'v1', 'v2', 'grpc-v1' or 'grpc-v2'", _PROTOCOLS),
        Rule("spec.supportedModelFormats[*].priority", "greater than or equal to 1", "KServe's webhook"),
        Rule("spec.containers", "at least 1 item", "KServe's webhook: a runtime has a container"),
        *(Rule(f"spec.containers[*].{p}", m, w) for p, m, w in _CONTAINER_RULES),
    ),
    "trustyai.opendatahub.io/GuardrailsOrchestrator": (
        Rule("spec.orchestratorConfig", "at least 1 character", "the operator needs a ConfigMap name"),
    Rule("spec.replicas", "greater than or equal to 0", "Kubernetes' Deployment validation (the operator's "
                                                        "Deployment) refuses negative replicas"),
    ),
}
EXTRA_RULES["serving.kserve.io/ClusterServingRuntime"] = EXTRA_RULES["serving.kserve.io/ServingRuntime"]
# Kueue's CEL rules on the CRDs (x-kubernetes-validations) are not listed here: the suite evaluates them itself
# (conformance/cel.py), so a document that breaks one is one upstream refuses, not a check beyond the CRD.
_KUEUE_WEBHOOK = "Kueue's validating webhook"
_QUOTA = "spec.resourceGroups[*].flavors[*].resources[*]"
_RANGE = ("quantity out of range", "Kaip refuses decimal exponents beyond ±64 rather than expand them (quota is "
          "kept exact, in milli-units)")
_RESOURCE_GROUP_RULES = (
    Rule(f"{_QUOTA}.name", "must match the name in coveredResources", _KUEUE_WEBHOOK),
    Rule("spec.resourceGroups[*].coveredResources[*]", "Duplicate value", _KUEUE_WEBHOOK),
    Rule("spec.resourceGroups[*].flavors[*].name", "Duplicate value", _KUEUE_WEBHOOK),
    Rule("spec.resourceGroups[*].flavors[*].name", "a lowercase RFC 1123 subdomain",
         "Kueue: a flavor reference is a ResourceFlavor name"),
    *(Rule(f"{_QUOTA}.{f}", "must be greater than or equal to 0", _KUEUE_WEBHOOK)
      for f in ("nominalQuota", "borrowingLimit", "lendingLimit")),
    *(Rule(f"{_QUOTA}.{f}", _RANGE[0], _RANGE[1]) for f in ("nominalQuota", "borrowingLimit", "lendingLimit")),
    Rule(f"{_QUOTA}.lendingLimit", "must be nil when", _KUEUE_WEBHOOK),
    Rule(f"{_QUOTA}.lendingLimit", "must be less than or equal to the nominalQuota", _KUEUE_WEBHOOK),
    Rule("spec.fairSharing.weight", _RANGE[0], _RANGE[1]),
)
_OPERATOR = "Kubernetes' label selector validation allows only these operators"
_TAINT_EFFECT = "Kubernetes' taint validation allows only these effects"
_TOLERATION_RULES = (
    Rule("spec.tolerations[*].operator", "Input should be 'Equal' or 'Exists'",
         "Kubernetes' toleration validation allows only these operators"),
    Rule("spec.tolerations[*].effect", "Input should be 'NoSchedule', 'PreferNoSchedule' or 'NoExecute'",
         _TAINT_EFFECT),
    Rule("spec.tolerations[*]", "operator must be Exists when 'key' is empty", "Kubernetes' toleration validation"),
    Rule("spec.tolerations[*]", "effect must be 'NoExecute' when 'tolerationSeconds' is set",
         "Kubernetes' toleration validation"),
    Rule("spec.tolerations[*]", "a value must be empty when 'operator' is 'Exists'",
         "Kubernetes' toleration validation"),
)
EXTRA_RULES.update({
    "kueue.x-k8s.io/ClusterQueue": (
        *_RESOURCE_GROUP_RULES,
        Rule("spec.namespaceSelector.matchExpressions[*].operator",
             "Input should be 'In', 'NotIn', 'Exists' or 'DoesNotExist'", _OPERATOR),
        Rule("spec.cohortName", "a lowercase RFC 1123 subdomain", _KUEUE_WEBHOOK),
    ),
    "kueue.x-k8s.io/Cohort": (
        *_RESOURCE_GROUP_RULES,
        # a ClusterQueue's is a CEL rule; a Cohort's, the webhook's
        Rule(f"{_QUOTA}.borrowingLimit", "borrowingLimit must be nil when", _KUEUE_WEBHOOK),
        Rule("spec.parentName", "a lowercase RFC 1123 subdomain", _KUEUE_WEBHOOK),
    ),
    "kueue.x-k8s.io/LocalQueue": (
        Rule("spec.clusterQueue", "a lowercase RFC 1123 subdomain", _KUEUE_WEBHOOK),
    ),
    "kueue.x-k8s.io/Workload": (
        Rule("spec", "Required value", "a Workload without pod sets has nothing to admit (its spec has required "
                                       "fields)"),
        Rule("spec.podSets", "Required value", "a Workload without pod sets has nothing to admit (the CRD requires "
                                               "at least one item when the list is given)"),
        Rule("spec.podSets[*].template.spec", "Required value", "Kubernetes' Pod validation: a pod has containers"),
        Rule("spec.podSets[*].template.spec.containers", "at least 1 item", "Kubernetes' Pod validation: a pod has "
                                                                            "containers"),
        Rule("spec.podSets[*].template.spec.restartPolicy", "Input should be 'Always', 'OnFailure' or 'Never'",
             "Kubernetes' Pod validation allows only these values"),
        Rule("spec.podSets[*].template.spec.activeDeadlineSeconds", "greater than or equal to 1",
             "Kubernetes' Pod validation: a positive deadline"),
        Rule("spec.podSets[*].template.spec.terminationGracePeriodSeconds", "greater than or equal to 0",
             "Kubernetes' Pod validation"),
        Rule("spec.podSets[*].name", "Duplicate value", _KUEUE_WEBHOOK),
        *(Rule(f"spec.podSets[*].template.{r.path}", r.message, r.why) for r in _TOLERATION_RULES),
        *(Rule(f"spec.podSets[*].template.spec.containers[*].{p}", m, w) for p, m, w in _CONTAINER_RULES),
    ),
})
# A pod template in a training kind is validated as a Workload's pod set template is (the same schema).
_WORKLOAD_TEMPLATE = "spec.podSets[*].template"


def _pod_template_rules(prefix: str) -> tuple[Rule, ...]:
    return tuple(Rule(prefix + r.path[len(_WORKLOAD_TEMPLATE):], r.message, r.why)
                 for r in EXTRA_RULES["kueue.x-k8s.io/Workload"] if r.path.startswith(f"{_WORKLOAD_TEMPLATE}.spec"))


def _env_rules(prefix: str) -> tuple[Rule, ...]:
    return tuple(Rule(f"{prefix}.{p}", m, w) for p, m, w in _CONTAINER_RULES[3:])


_NO_SPEC = ("the object has nothing to run without a spec; upstream's controller fails to reconcile it (its spec has "
            "required fields)")
_JOB = "spec.template.spec.replicatedJobs[*]"
_ONE_JOB = ("Kaip's local launcher runs the trainer job only (initializer jobs are not run; the TrainJob's "
            "initializer.storageUri is used instead)")
_RUNTIME_RULES = (
    Rule("spec", "Required value", _NO_SPEC),
    Rule("spec.template", "Required value", "a runtime is its JobSet template: the trainer's pods come from it "
                                            "(upstream's JobSet has no replicated jobs without it)"),
    Rule("spec.template.spec", "Required value", "a runtime is its JobSet template: the trainer's pods come from "
                                                 "it"),
    Rule("spec.template.spec.replicatedJobs", "Required value", "JobSet's webhook: a JobSet has replicated jobs"),
    Rule("spec.template.spec.replicatedJobs", "at least 1 item", "JobSet's webhook: a JobSet has replicated jobs"),
    Rule("spec.template.spec.replicatedJobs", "exactly one replicated job must be the trainer", _ONE_JOB),
    Rule("spec.template.spec.replicatedJobs", "keep only the trainer job", _ONE_JOB),
    Rule("spec.mlPolicy.numNodes", "greater than or equal to 1", "Kubeflow Trainer: a runtime runs on at least one "
                                                                 "node"),
    Rule("spec.template.spec.failurePolicy.maxRestarts", "greater than or equal to 0",
         "a restart budget is a count (JobSet counts restarts up from 0)"),
    Rule("spec.template.spec.failurePolicy.restartStrategy", "Input should be 'Recreate'",
         "Kaip restarts the whole group from its checkpoint (Recreate); BlockingRecreate and InPlaceRestart are not "
         "implemented"),
    Rule(f"{_JOB}.replicas", "greater than or equal to 1", "Kaip runs the trainer job once (numNodes sets the nodes)"),
    Rule(f"{_JOB}.replicas", "less than or equal to 1", "Kaip runs the trainer job once (numNodes sets the nodes)"),
    Rule(f"{_JOB}.template.spec", "Required value", "Kubernetes' Job validation: a Job has a pod template"),
    Rule(f"{_JOB}.template.spec.backoffLimit", "greater than or equal to 0", "Kubernetes' Job validation"),
    Rule(f"{_JOB}.template.spec.completionMode", "Input should be 'Indexed' or 'NonIndexed'",
         "Kubernetes' Job validation allows only these values"),
    *_pod_template_rules(f"{_JOB}.template.spec.template"),
)
_TRAINER_WEBHOOK = "Kubeflow Trainer: a TrainJob runs on at least one node, with at least one process per node"
_PYTORCH_WEBHOOK = "the Training Operator's PyTorchJob webhook"
_REPLICA = "spec.pytorchReplicaSpecs.*"
EXTRA_RULES.update({
    "trainer.kubeflow.org/TrainingRuntime": _RUNTIME_RULES,
    "trainer.kubeflow.org/ClusterTrainingRuntime": _RUNTIME_RULES,
    "trainer.kubeflow.org/TrainJob": (
        Rule("spec", "Required value", _NO_SPEC),
        Rule("spec.runtimeRef.kind", "Input should be 'ClusterTrainingRuntime' or 'TrainingRuntime'",
             "Kubeflow Trainer resolves a runtime of these two kinds only"),
        Rule("spec.trainer.numNodes", "greater than or equal to 1", _TRAINER_WEBHOOK),
        Rule("spec.trainer.numProcPerNode", "greater than or equal to 1", _TRAINER_WEBHOOK),
        *_env_rules("spec.trainer"),
        *_env_rules("spec.initializer.dataset"),
        *_env_rules("spec.initializer.model"),
    ),
    "kubeflow.org/PyTorchJob": (
        Rule("spec", "Required value", _NO_SPEC),
        Rule("spec", "there must be exactly one Master", _PYTORCH_WEBHOOK),
        Rule("spec", "at least one replica is required", _PYTORCH_WEBHOOK),
        Rule("spec", "a container named 'pytorch' is required", f"{_PYTORCH_WEBHOOK}: the pytorch container runs "
                                                                "the job"),
        Rule("spec.pytorchReplicaSpecs", "replica types are Master and Worker", f"{_PYTORCH_WEBHOOK} allows only "
                                                                                "these replica types"),
        Rule("spec.nprocPerNode", "must be auto, cpu, gpu or a positive integer", "torchrun's --nproc-per-node "
                                                                                   "values"),
        Rule(f"{_REPLICA}.replicas", "greater than or equal to 0", _PYTORCH_WEBHOOK),
        Rule(f"{_REPLICA}.restartPolicy", "Input should be 'OnFailure' or 'Never'",
             "Kaip's launcher restarts the group on failure or never (Always and ExitCode are not implemented)"),
        Rule(f"{_REPLICA}.template", "Required value", f"{_PYTORCH_WEBHOOK}: a replica's template has containers"),
        *_pod_template_rules(f"{_REPLICA}.template"),
        Rule("spec.runPolicy.cleanPodPolicy", "Input should be 'All', 'Running' or 'None'",
             "the Training Operator's clean-pod policies"),
        Rule("spec.runPolicy.activeDeadlineSeconds", "greater than or equal to 1", "a deadline must be positive "
                                                                                   "(as Kubernetes' Job's)"),
        Rule("spec.runPolicy.backoffLimit", "greater than or equal to 0", "a retry budget is a count (as "
                                                                          "Kubernetes' Job's)"),
    ),
    "argoproj.io/Application": (
        Rule("spec.source", "Required value", "Kaip syncs one source: multi-source `spec.sources` and the source "
                                              "hydrator are not implemented"),
        Rule("spec.source.repoURL", "at least 1 character", "Argo CD: a source names its repository"),
        Rule("spec.destination", "only one of server or name may be set", "Argo CD's validation: a destination has "
                                                                          "a server or a name, not both"),
        Rule("spec.destination", "Kaip deploys to itself only", "Kaip is the only cluster: other servers and "
                                                                "cluster names are not implemented"),
        Rule("spec.syncPolicy.syncOptions", "is not supported", "Kaip implements CreateNamespace only; other sync "
                                                                "options are refused, never ignored"),
        Rule("spec.syncPolicy.retry.backoff.factor", "greater than or equal to 1", "a backoff factor multiplies the "
                                                                                   "delay: at least 1"),
        Rule("spec.revisionHistoryLimit", "greater than or equal to 0", "a history limit is a count"),
        Rule("operation.sync", "Required value", "the only operation Argo CD runs is a sync: an operation without "
                                                 "one has nothing to do"),
    ),
})
# Per kind: JSON Schema narrowed at a path when generating documents from only the fields Kaip implements (check 4),
# so that the generator reaches documents Kaip accepts where a documented rule above insists on one value (a
# container named `pytorch`, a single trainer job named `node`). Documents generated from upstream's whole schema
# (check 3) are not narrowed.
_RUNTIME_REACH: dict[str, dict[str, Any]] = {
    "spec.template.spec.replicatedJobs": {"maxItems": 1},
    "spec.template.spec.replicatedJobs[*].name": {"enum": ["node"]},
    "spec.template.spec.replicatedJobs[*].replicas": {"enum": [1]},
}
REACH: dict[str, dict[str, dict[str, Any]]] = {
    "trainer.kubeflow.org/TrainingRuntime": _RUNTIME_REACH,
    "trainer.kubeflow.org/ClusterTrainingRuntime": _RUNTIME_REACH,
    "kubeflow.org/PyTorchJob": {
        "spec.pytorchReplicaSpecs": {"minProperties": 1},
        "spec.pytorchReplicaSpecs.*.template.spec.containers[*].name": {"enum": ["pytorch"]},
        "spec.pytorchReplicaSpecs.*.replicas": {"enum": [1]},
    },
}
for _key in ("serving.kserve.io/InferenceService", "serving.kserve.io/ServingRuntime",
             "serving.kserve.io/ClusterServingRuntime", "trustyai.opendatahub.io/GuardrailsOrchestrator"):
    # these CRDs do not require `spec`; Kaip does, as there is nothing to run without one
    EXTRA_RULES[_key] += (Rule("spec", "Required value", "the object has nothing to run without a spec; upstream's "
                                                         "operator fails to reconcile it (its spec has required "
                                                         "fields)"),)


# ---- kinds and their CRDs -----------------------------------------------------------------------------------

IMPORT_ERRORS: dict[str, str] = {}


@functools.cache
def registered_kinds() -> list[KindInfo]:
    """Every kind Kaip registers: import each module of `kaip.api` (each registers its own kinds). A module that
    fails to import is recorded in IMPORT_ERRORS (a test fails on it) and its kinds are missing."""
    for mod in pkgutil.iter_modules(kaip.api.__path__):
        try:
            importlib.import_module(f"kaip.api.{mod.name}")
        except ImportError as err:
            IMPORT_ERRORS[mod.name] = f"{type(err).__name__}: {err}"
    return sorted(REGISTRY.all(), key=lambda i: (i.group, i.kind))


def upstream_kinds() -> list[KindInfo]:
    return [i for i in registered_kinds() if i.group not in OWN_GROUPS]


@functools.cache
def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a safe loader)


def crd_file(info: KindInfo) -> Path | None:
    """The upstream CRD of a kind, or None (Kubernetes' built-in kinds, e.g. batch/v1 Job, have none)."""
    override = CRD_FILE_OVERRIDES.get(info.key)
    if override:
        return CRDS / override
    found = sorted(CRDS.glob(f"*/{info.group}_{info.plural}.yaml"))
    return found[0] if found else None


def crd(info: KindInfo) -> dict[str, Any] | None:
    path = crd_file(info)
    if path is None:
        return None
    doc = _load_yaml(path)
    assert doc["spec"]["group"] == info.group and doc["spec"]["names"]["kind"] == info.kind, path
    return doc


def crd_versions(info: KindInfo) -> list[str]:
    doc = crd(info)
    return [v["name"] for v in doc["spec"]["versions"] if v.get("served", True)] if doc else []


def crd_schema(info: KindInfo, version: str) -> dict[str, Any]:
    doc = crd(info)
    assert doc is not None, f"{info.key} has no upstream CRD"
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{info.key}: the upstream CRD does not serve {version}")


def checked_versions(info: KindInfo) -> list[str]:
    """The versions both Kaip and upstream serve."""
    return [v for v in info.versions if v in crd_versions(info)]


def generated_kinds() -> list[KindInfo]:
    return [i for i in upstream_kinds() if i.group in GENERATED_GROUPS and crd_file(i) is not None]


# ---- structural schema -> JSON Schema ------------------------------------------------------------------------

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """A structural schema node as draft-7 JSON Schema, with the API server's reading of the extensions."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(v) for v in value]
        elif key.startswith("x-kubernetes-") or key in ("description", "nullable", "example", "externalDocs"):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("type") == "integer" and node.get("format") in ("int32", "int64"):
        lo, hi = INT32 if node["format"] == "int32" else INT64
        out["minimum"] = max(out.get("minimum", lo), lo)
        out["maximum"] = min(out.get("maximum", hi), hi)
    if "properties" in node and "additionalProperties" not in node and \
            not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _cached_body_schema(key: str, version: str) -> dict[str, Any]:
    info = REGISTRY.by_key(key)
    full = crd_schema(info, version)
    return to_jsonschema(full)


def object_schema(info: KindInfo, version: str) -> dict[str, Any]:
    """The whole object's JSON Schema (apiVersion, kind, metadata, spec, status)."""
    return _cached_body_schema(info.key, version)


@functools.cache
def _object_validator(key: str, version: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_cached_body_schema(key, version))


def upstream_errors(info: KindInfo, version: str, doc: dict[str, Any]) -> list[str]:
    """Why upstream's schema rejects `doc` (empty when it validates), one `path: message` per problem."""
    validator = _object_validator(info.key, version)
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        out.append(f"{json_path(err.absolute_path)}: {err.message}")
    return out


# ---- upstream's CEL rules --------------------------------------------------------------------------------------

@functools.cache
def cel_rules(key: str, version: str) -> tuple[cel.CelRule, ...]:
    """Every CEL rule (`x-kubernetes-validations`) in the CRD's schema of `version`, each compiled."""
    return tuple(cel.collect(crd_schema(REGISTRY.by_key(key), version)))


def _has_status_subresource(info: KindInfo, version: str) -> bool:
    doc = crd(info) or {}
    return any(v["name"] == version and "status" in (v.get("subresources") or {})
               for v in doc.get("spec", {}).get("versions", ()))


def cel_violations(info: KindInfo, version: str, doc: dict[str, Any], old: dict[str, Any] | None = None
                   ) -> list[cel.Violation]:
    """The CEL rules of the CRD that `doc` breaks when it is written to the main resource, as the API server
    evaluates them: a create (`old` None) has its status dropped first, an update (`old`, the stored object) keeps
    the stored status, where the CRD has a status subresource; transition rules are evaluated on updates only."""
    if _has_status_subresource(info, version):
        doc = {k: v for k, v in doc.items() if k != "status"}
        if old is not None and old.get("status") is not None:
            doc["status"] = old["status"]
    return cel.violations(crd_schema(info, version), doc, old)


def upstream_rejects(info: KindInfo, version: str, doc: dict[str, Any]) -> list[str]:
    """Why upstream refuses to create `doc`: its structural schema's reasons or, when it passes that, its CEL
    rules' messages (empty when upstream takes it)."""
    return upstream_errors(info, version, doc) or [str(v) for v in cel_violations(info, version, doc)]


def at_or_under(path: str, root: str) -> bool:
    """Whether the document path `path` (`spec.podSets[0].name`) is `root` or inside it ("" is the object)."""
    return root == "" or path == root or path.startswith((f"{root}.", f"{root}["))


def cel_refusal_explained(info: KindInfo, cause: dict[str, Any], broken: Sequence[cel.Violation]) -> bool:
    """Whether Kaip's refusal `cause` reports one of the CEL violations `broken`: its field is at or under the
    value a broken rule was evaluated on, or is a field Kaip refuses altogether that holds that value."""
    path = cause.get("field", "")
    refused = matrix_cached(info.key, info.version).refused
    return any(at_or_under(path, v.path) or (norm_path(path) in refused and at_or_under(v.path, path))
               for v in broken)


def json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def bounded(node: dict[str, Any], depth: int, *, max_items: int = 2, max_len: int = 12,
            keep: typing.Callable[[str], bool] | None = None, path: str = "",
            must: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A JSON Schema trimmed for generation: optional properties below `depth` levels are dropped, lists and maps
    hold at most `max_items`, free strings at most `max_len` characters; `keep(path)` may drop more properties.
    `must` names paths to generate always (a list path with `[+]`: never empty)."""
    out = {k: v for k, v in node.items() if k not in ("properties", "items", "additionalProperties", "anyOf",
                                                      "allOf", "oneOf", "format")}
    required = list(node.get("required", ()))  # a list: generation stays deterministic
    if f"{path}[+]" in must and isinstance(node.get("items"), dict):
        out["minItems"] = max(1, node.get("minItems", 0))
    if "properties" in node:
        props = {}
        for name, sub in node["properties"].items():
            sub_path = f"{path}.{name}" if path else name
            if sub_path in must and name not in required:
                required.append(name)
            if name not in required and (depth <= 0 or (keep is not None and not keep(sub_path))):
                continue
            props[name] = bounded(sub, depth - 1, max_items=max_items, max_len=max_len, keep=keep, path=sub_path,
                                  must=must)
        out["properties"] = props
        out["required"] = [r for r in required if r in props]
        if not out["required"]:
            out.pop("required")
    if isinstance(node.get("items"), dict):
        out["items"] = bounded(node["items"], depth - 1, max_items=max_items, max_len=max_len, keep=keep,
                               path=f"{path}[*]", must=must)
        out["maxItems"] = max(min(node.get("maxItems", max_items), max_items), node.get("minItems", 0))
    if "additionalProperties" in node:
        ap = node["additionalProperties"]
        out["additionalProperties"] = bounded(ap, depth - 1, max_items=max_items, max_len=max_len, keep=keep,
                                              path=f"{path}.*", must=must) if isinstance(ap, dict) else ap
        if isinstance(ap, dict):
            out["maxProperties"] = max(min(node.get("maxProperties", max_items), max_items),
                                       node.get("minProperties", 0))
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [bounded(s, depth, max_items=max_items, max_len=max_len, keep=keep, path=path, must=must)
                        for s in node[key]]
    if node.get("type") == "string" and "enum" not in node and "pattern" not in node:
        out["maxLength"] = max(min(node.get("maxLength", max_len), max_len), node.get("minLength", 0))
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        out["maxProperties"] = 0  # preserve-unknown-fields objects: generate {} (anything goes there)
    return out


# ---- the support matrix ---------------------------------------------------------------------------------------

def _unwrap(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The pydantic model inside an annotation and how it nests: "" (directly), "list", "map", or "any"."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                model, how = _unwrap(arg)
                if model is not None or how:
                    return model, how
        return None, ""
    if origin is list:
        model, how = _unwrap(typing.get_args(annotation)[0])
        return (model, "list") if model is not None else (None, "")
    if origin is dict:
        model, how = _unwrap(typing.get_args(annotation)[1])
        return (model, "map") if model is not None else (None, "")
    if annotation is Any:
        return None, "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    return None, ""


_SENTINEL = "any value"


def _refuses_any_value(model: type[BaseModel], name: str) -> bool:
    """Whether a declared field refuses every non-null value (an upstream field declared as not implemented)."""
    finfo = model.model_fields[name]
    validators = [m.func for m in finfo.metadata if isinstance(m, AfterValidator)]
    validators += [d.func for d in model.__pydantic_decorators__.field_validators.values() if name in d.info.fields]
    return any(all(_refuses(func, value) for value in (_SENTINEL, *_PLAIN_VALUES)) for func in validators)


# A validator that takes one of these (a name, a quantity) checks values rather than refusing the field.
_PLAIN_VALUES: tuple[Any, ...] = ("a", 1, "1", True, {}, [])


def _refuses(func: typing.Callable[[Any], Any], value: Any) -> bool:
    try:
        func(value)
    except ValueError:
        return True
    except Exception:  # noqa: BLE001 (a validator that needs more than a value: not a blanket refusal)
        return False
    return False


@dataclass
class Matrix:
    """For one kind and version: upstream field paths, each implemented or refused (with why)."""

    implemented: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # path -> NOT_IMPLEMENTED | UNKNOWN
    map_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # map path -> the only keys Kaip takes


def _literal_keys(annotation: Any) -> tuple[str, ...]:
    """The keys of a `dict[Literal[...], X]` annotation (optional or not), or () for any other."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _literal_keys(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return next((k for a in typing.get_args(annotation) if (k := _literal_keys(a))), ())
    if origin is dict:
        key = typing.get_args(annotation)[0]
        if typing.get_origin(key) is typing.Literal:
            return tuple(str(k) for k in typing.get_args(key))
    return ()


def _fields_by_name(model: type[BaseModel]) -> dict[str, str]:
    out = {}
    for name, finfo in model.model_fields.items():
        out[finfo.alias or name] = name
        out[name] = name
    return out


def _walk(node: dict[str, Any], model: type[BaseModel] | None, path: str, m: Matrix) -> None:
    if model is None:
        return
    if isinstance(node.get("items"), dict):
        node = node["items"]
    names = _fields_by_name(model)
    for prop, sub in (node.get("properties") or {}).items():
        sub_path = f"{path}.{prop}" if path else prop
        attr = names.get(prop)
        if attr is None:
            m.refused[sub_path] = UNKNOWN
            continue
        if _refuses_any_value(model, attr):
            m.refused[sub_path] = NOT_IMPLEMENTED
            continue
        m.implemented.append(sub_path)
        if keys := _literal_keys(model.model_fields[attr].annotation):
            m.map_keys[sub_path] = keys
        inner, how = _unwrap(model.model_fields[attr].annotation)
        if inner is None:
            continue
        if how == "list" or sub.get("type") == "array":
            _walk(sub.get("items") or {}, inner, f"{sub_path}[*]", m)
        elif how == "map":
            _walk(sub.get("additionalProperties") or {}, inner, f"{sub_path}.*", m)
        else:
            _walk(sub, inner, sub_path, m)


def matrix(info: KindInfo, version: str) -> Matrix:
    """Walk the CRD's `spec` (and any other top-level body fields) alongside the kind's pydantic schema."""
    schema = crd_schema(info, version)
    body = {"properties": {k: v for k, v in (schema.get("properties") or {}).items()
                           if k not in ("apiVersion", "kind", "metadata", "status")}}
    m = Matrix()
    _walk(body, info.schema, "", m)
    return m


def norm_path(path: str) -> str:
    return re.sub(r"\[\d+\]", "[*]", path)


def refusal_explained(info: KindInfo, version: str, cause: dict[str, Any], *, allow_refused_fields: bool) -> bool:
    """Whether Kaip's refusal `cause` (a `details.causes[]` entry) is documented: a refused upstream field in the
    support matrix, or one of EXTRA_RULES."""
    path = norm_path(cause.get("field", ""))
    message = cause.get("message", "")
    if allow_refused_fields and path in matrix_cached(info.key, version).refused:
        return True
    return any(rule_path_matches(r.path, path) and r.message in message for r in EXTRA_RULES.get(info.key, ()))


def rule_path_matches(rule_path: str, path: str) -> bool:
    """Whether a rule's path (`[*]` any list index, `.*` any map key, as the matrix writes them) names `path`."""
    pattern = re.escape(norm_path(rule_path)).replace(r"\.\*", r"\.[^.\[]+")
    return re.fullmatch(pattern, norm_path(path)) is not None


@functools.cache
def matrix_cached(key: str, version: str) -> Matrix:
    return matrix(REGISTRY.by_key(key), version)


# ---- Kaip's side ----------------------------------------------------------------------------------------------

def kaip_validate(info: KindInfo, doc: dict[str, Any]) -> tuple[dict[str, Any] | None, ApiError | None]:
    """Kaip's admission of `doc` as the API server does it (schema validation and defaulting), in-process."""
    doc = copy.deepcopy(doc)
    version = str(doc.get("apiVersion", "")).rpartition("/")[2]
    try:
        if version != info.version and version in info.other_versions:
            to_storage, _ = info.other_versions[version]  # as the resource API converts before validating
            doc = to_storage(doc)
            doc["apiVersion"] = info.api_version
        namespace = ((doc.get("metadata") or {}).get("namespace") or "default") if info.namespaced else None
        return validate_document(info, doc, namespace=namespace), None
    except ApiError as err:
        return None, err


def causes(err: ApiError) -> list[dict[str, Any]]:
    status = err.to_status()
    return list((status.get("details") or {}).get("causes") or [{"field": "", "message": status["message"]}])


def envelope(info: KindInfo, version: str, body: dict[str, Any], name: str = "conformance") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if info.namespaced:
        meta["namespace"] = "default"
    return {"apiVersion": info.api_version_for(version), "kind": info.kind, "metadata": meta, **body}


# ---- manifests in the repository ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    source: str  # file (and document index) it came from
    doc: dict[str, Any]
    example: bool  # under examples/ (must be valid) rather than a test (may be deliberately invalid)


def _yaml_docs(text: str) -> Iterator[dict[str, Any]]:
    try:
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                yield doc
    except yaml.YAMLError:
        return


def _python_manifests(path: Path) -> Iterator[dict[str, Any]]:
    """Literal dicts with apiVersion and kind, and YAML strings, in a test module."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"apiVersion", "kind"} <= keys:
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                if isinstance(value.get("apiVersion"), str) and isinstance(value.get("kind"), str):
                    yield value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "apiVersion:" in node.value:
            yield from _yaml_docs(node.value)


@functools.cache
def repository_manifests() -> tuple[Manifest, ...]:
    out: list[Manifest] = []
    for path in sorted((ROOT / "examples").rglob("*.y*ml")):
        for i, doc in enumerate(_yaml_docs(path.read_text())):
            out.append(Manifest(f"{path.relative_to(ROOT)}#{i}", doc, example=True))
    for path in sorted((ROOT / "tests").rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            docs = list(_yaml_docs(path.read_text()))
        elif path.suffix == ".py" and "conformance" not in path.parts:
            docs = list(_python_manifests(path))
        else:
            continue
        out += [Manifest(f"{path.relative_to(ROOT)}#{i}", d, example=False) for i, d in enumerate(docs)]
    return tuple(out)


def manifests_of(info: KindInfo) -> list[Manifest]:
    return [m for m in repository_manifests() if m.doc.get("kind") == info.kind
            and m.doc.get("apiVersion", "").rpartition("/")[0] == info.group]


# ---- generation and defaulting --------------------------------------------------------------------------------

def body_schema(info: KindInfo, version: str, depth: int, *, implemented_only: bool) -> dict[str, Any]:
    """A bounded JSON Schema of the body (all but the envelope) to generate from: upstream's whole schema, or only
    the fields Kaip implements (then every document should be accepted, except for EXTRA_RULES)."""
    schema = object_schema(info, version)
    body = {"type": "object", "additionalProperties": False,
            "properties": {k: v for k, v in schema["properties"].items()
                           if k not in ("apiVersion", "kind", "metadata", "status")},
            "required": [r for r in schema.get("required", ()) if r not in ("apiVersion", "kind", "metadata")]}
    if not body["required"]:
        body.pop("required")
    implemented = set(matrix_cached(info.key, version).implemented)
    keep = (lambda p: p in implemented) if implemented_only else None
    # Generating only what Kaip implements, to reach documents it accepts: fields below the top level that a
    # documented rule requires (EXTRA_RULES "Required value") are always generated, lists that one says may not be
    # empty are not. (Top-level fields keep the generator's own choice, as before this was added.)
    must: frozenset[str] = frozenset()
    if implemented_only:
        rules = EXTRA_RULES.get(info.key, ())
        must = frozenset([r.path for r in rules if r.message == "Required value" and "." in r.path]
                         + [f"{r.path}[+]" for r in rules if r.message == "at least 1 item"])
    out = bounded(body, depth, keep=keep, must=must)
    if implemented_only:
        # Only what Kaip implements: a map whose keys Kaip restricts (dict[Literal[...], ...]) gets only those keys,
        # and REACH narrows the values a documented rule insists on (a container's name, a single item).
        m = matrix_cached(info.key, version)
        for path, keys in m.map_keys.items():
            _narrow(out, path, {"propertyNames": {"enum": list(keys)}})
        for path, patch in REACH.get(info.key, {}).items():
            _narrow(out, path, patch)
    return out


def _narrow(schema: dict[str, Any], path: str, patch: dict[str, Any]) -> None:
    """Update the (bounded) schema node at `path` with `patch`; nothing when that field is not generated."""
    node: Any = schema
    for part in re.findall(r"[^.\[\]]+|\[\*\]", path):
        if part == "[*]":
            node = node.get("items")
        elif part == "*":
            node = node.get("additionalProperties")
        else:
            node = (node.get("properties") or {}).get(part)
        if not isinstance(node, dict):
            return
    node.update(copy.deepcopy(patch))
    if "enum" in patch or "const" in patch:
        for key in ("maxLength", "minLength", "pattern"):
            node.pop(key, None)


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """`value` with upstream's defaults applied inside it, as the API server does (recursively, into objects and
    list items; an object's own default first, then its properties' defaults)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = defaulted(sub, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], v) for v in value]
    return value


def default_mismatches(schema: dict[str, Any], given: Any, stored: Any, implemented: set[str],
                       path: str = "") -> list[str]:
    """Where Kaip's stored object and upstream's `default:`s disagree: a field Kaip filled in that upstream has no
    such default for, or an upstream default Kaip did not apply to an implemented field."""
    out: list[str] = []
    if isinstance(given, dict) and isinstance(stored, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            sub_path = f"{path}.{name}" if path else name
            if name in given:
                if name in stored:
                    out += default_mismatches(sub, given[name], stored[name], implemented, sub_path)
            elif name in stored:
                if "default" not in sub:
                    out.append(f"{sub_path}: Kaip stores {stored[name]!r}, upstream defines no default")
                elif stored[name] != (expected := defaulted(sub, sub["default"])):
                    out.append(f"{sub_path}: Kaip defaults to {stored[name]!r}, upstream to {expected!r}")
            elif "default" in sub and sub_path in implemented:
                out.append(f"{sub_path}: upstream defaults to {sub['default']!r}, Kaip stores nothing")
    elif isinstance(given, list) and isinstance(stored, list) and isinstance(schema.get("items"), dict):
        for g, s in zip(given, stored, strict=False):
            out += default_mismatches(schema["items"], g, s, implemented, f"{path}[*]")
    return out


def drop_fields(doc: dict[str, Any], paths: list[str]) -> dict[str, Any] | None:
    """`doc` without the fields at `paths` (`spec.containers[0].ports`), or None when one is not a field below
    the top level (a rule about a whole object cannot be repaired by dropping a field)."""
    out = copy.deepcopy(doc)
    for path in paths:
        parts: list[Any] = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
        if len(parts) < 2:
            return None
        node: Any = out
        try:
            for p in parts[:-1]:
                node = node[p]
            del node[parts[-1]]
        except (KeyError, IndexError, TypeError):
            return None
    return out


def mutation_leaks(info: KindInfo, version: str, doc: dict[str, Any], limit: int | None = None
                   ) -> tuple[int, list[str]]:
    """Single-point mutations of `doc` that upstream rejects (its schema or its CEL rules), tried on Kaip (up to
    `limit`): how many were tried, and each one Kaip accepted, with upstream's reason."""
    from conformance.mutations import mutants

    tried, leaks = 0, []
    for mutant in mutants(doc, object_schema(info, version)):
        if limit is not None and tried >= limit:
            break
        reasons = upstream_rejects(info, version, mutant.doc)
        if not reasons:
            continue  # still valid upstream (e.g. a bound the value happens to meet)
        tried += 1
        accepted, _ = kaip_validate(info, mutant.doc)
        if accepted is not None:
            leaks.append(f"{mutant.what} (upstream: {reasons[0]})")
    return tried, leaks


def empty_object_probes(schema: dict[str, Any], doc: dict[str, Any], implemented: set[str]
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    """`doc` with one absent implemented object field set to `{}` (where defaults inside it would show), each."""

    def walk(node: Any, sub: dict[str, Any], path: tuple[Any, ...], dotted: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for name, prop in (sub.get("properties") or {}).items():
                p = f"{dotted}.{name}" if dotted else name
                if name in node:
                    yield from walk(node[name], prop, (*path, name), p)
                elif prop.get("type") == "object" and p in implemented:
                    out = copy.deepcopy(doc)
                    target: Any = out
                    for part in path:
                        target = target[part]
                    target[name] = {}
                    yield p, out
        elif isinstance(node, list) and isinstance(sub.get("items"), dict):
            for i, item in enumerate(node):
                yield from walk(item, sub["items"], (*path, i), f"{dotted}[*]")

    body = {"properties": {k: v for k, v in schema["properties"].items() if k not in ("apiVersion", "kind",
                                                                                       "metadata", "status")}}
    yield from walk(doc, body, (), "")


def minimal(schema: dict[str, Any]) -> Any:
    """A small instance of `schema`: required properties only, the first enum value, the lower bound."""
    if "enum" in schema:
        return copy.deepcopy(schema["enum"][0])
    if "anyOf" in schema:
        return minimal({**{k: v for k, v in schema.items() if k != "anyOf"}, **schema["anyOf"][0]})
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next(t for t in kind if t != "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {r: minimal(props[r]) for r in schema.get("required", ()) if r in props}
    if kind == "array":
        return [minimal(schema.get("items") or {}) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        validator = jsonschema.Draft7Validator(schema)
        for value in ("a", "a1", "1", "a-b", "a.b", "A", "a" * max(1, schema.get("minLength", 1))):
            if validator.is_valid(value):
                return value
        return "a"
    if kind in ("integer", "number"):
        low = schema.get("minimum", 0)
        return low + 1 if schema.get("exclusiveMinimum") else low
    if kind == "boolean":
        return False
    return {}


def with_path(doc: dict[str, Any], schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    """`doc` with the field at `path` (`spec.containers[*].env[*].valueFrom`) present: what is missing on the way
    is created as `minimal`, one item for a list. None when `path` is already there or not in the schema."""
    parts = re.findall(r"[^.\[\]]+|\[\*\]", path)
    out = copy.deepcopy(doc)
    node: Any = out
    sub = schema
    created = False
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "[*]":
            sub = sub.get("items") or {}
            if not isinstance(node, list):
                return None
            if not node:
                node.append(minimal(sub))
                created = True
            node = node[0]
            continue
        props = sub.get("properties") or {}
        if part not in props or not isinstance(node, dict):
            return None
        sub = props[part]
        if part not in node:
            node[part] = minimal(sub)
            created = True
            if sub.get("type") == "array" and not node[part] and not last:
                node[part].append(minimal(sub.get("items") or {}))
        node = node[part]
    return out if created else None
