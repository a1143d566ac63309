"""From an InferenceService and its selected runtime to the Pod of one replica of one revision.

KServe merges the runtime's `kserve-container` with the predictor's model container (the model's args and env
after the runtime's) and mounts the model at /mnt/models; on the local executor the model is not copied, so
`/mnt/models` in the runtime's args is replaced by the model's resolved path, `{{.Name}}` by the
InferenceService's name, and the runtime's port (8080) by the replica's own loopback port, which is also given
as the `PORT` environment variable.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

from kaip.api.serving import GROUP, INFERENCE_SERVICE

ISVC_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"
REVISION_LABEL = "serving.knative.dev/revision"
PORT_ANNOTATION = "serving.kaip.dev/port"
PUBLIC_ANNOTATION = "serving.kaip.dev/public"
MODEL_MOUNT = "/mnt/models"
RUNTIME_PORT = 8080

# Fields of a component that change the process, and so make a new revision when they change.
REVISION_FIELDS = ("model", "sklearn", "xgboost", "lightgbm", "huggingface", "tensorflow", "pytorch", "triton",
                   "onnx", "pmml", "paddle", "containers", "labels", "annotations", "resources",
                   "serviceAccountName", "priorityClassName", "terminationGracePeriodSeconds")


def _runtime(name: str, module: str, formats: list[tuple[str, str, int]], protocols: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "ClusterServingRuntime",
        "metadata": {"name": name, "labels": {"kaip.dev/built-in": "true"},
                     "annotations": {"prometheus.kserve.io/port": str(RUNTIME_PORT),
                                     "prometheus.kserve.io/path": "/metrics"}},
        "spec": {
            "supportedModelFormats": [{"name": f, "version": v, "autoSelect": True, "priority": p}
                                      for f, v, p in formats],
            "protocolVersions": protocols,
            "containers": [{"name": "kserve-container", "image": f"kaip/{name}",
                            "command": ["python", "-m", module],
                            "args": ["--model_name={{.Name}}", f"--model_dir={MODEL_MOUNT}",
                                     f"--http_port={RUNTIME_PORT}"],
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}],
        },
    }


BUILTIN_RUNTIMES = [
    _runtime("kaip-sklearn", "kaip.serving.runtimes.sklearn",
             [("sklearn", "1", 1), ("xgboost", "1", 1), ("lightgbm", "1", 1)], ["v1", "v2"]),
    _runtime("kaip-huggingface", "kaip.serving.runtimes.huggingface", [("huggingface", "1", 1)], ["v2", "v1"]),
    _runtime("kaip-vllm", "kaip.serving.runtimes.vllm", [("vLLM", "1", 1)], ["v1", "v2"]),
]


def revision_hash(component: dict[str, Any]) -> str:
    relevant = {k: component[k] for k in REVISION_FIELDS if k in component}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def revision_spec(component: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(component[k]) for k in REVISION_FIELDS if k in component}


_PORT_ARG = re.compile(r"^(--http_port|--http-port|--port)=(\d+)$")


def render_container(runtime_container: dict[str, Any] | None, model: dict[str, Any], *, name: str,
                     model_dir: str | None, port: int) -> dict[str, Any]:
    """The merged container: the runtime's, then the model's args/env/resources on top."""
    base = copy.deepcopy(runtime_container or {})
    merged: dict[str, Any] = {"name": base.get("name") or "kserve-container"}
    if base.get("image") or model.get("image"):
        merged["image"] = model.get("image") or base.get("image")
    merged["command"] = list(model.get("command") or base.get("command") or [])
    args = list(base.get("args") or []) + list(model.get("args") or [])
    out_args = []
    for arg in args:
        arg = arg.replace("{{.Name}}", name)
        if model_dir is not None:
            arg = arg.replace(MODEL_MOUNT, model_dir)
        m = _PORT_ARG.match(arg)
        out_args.append(f"{m.group(1)}={port}" if m else arg)
    merged["args"] = out_args
    env = {e["name"]: e for e in base.get("env") or []}
    env.update({e["name"]: e for e in model.get("env") or []})
    env["PORT"] = {"name": "PORT", "value": str(port)}
    env["MODEL_NAME"] = {"name": "MODEL_NAME", "value": name}
    if model_dir is not None:
        env["MODEL_DIR"] = {"name": "MODEL_DIR", "value": model_dir}
    merged["env"] = list(env.values())
    resources = model.get("resources") or base.get("resources")
    if resources:
        merged["resources"] = resources
    if model.get("workingDir") or base.get("workingDir"):
        merged["workingDir"] = model.get("workingDir") or base.get("workingDir")
    return merged


def render_pod(isvc: dict[str, Any], component: str, revision: str, pod_name: str, container: dict[str, Any],
               spec: dict[str, Any], port: int) -> dict[str, Any]:
    meta = isvc["metadata"]
    labels = dict(spec.get("labels") or {})
    labels.update({ISVC_LABEL: meta["name"], COMPONENT_LABEL: component, REVISION_LABEL: revision})
    annotations = dict(spec.get("annotations") or {})
    annotations[PORT_ANNOTATION] = str(port)
    pod_spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Always",
                                "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", 10)}
    if spec.get("serviceAccountName"):
        pod_spec["serviceAccountName"] = spec["serviceAccountName"]
    if spec.get("priorityClassName"):
        pod_spec["priorityClassName"] = spec["priorityClassName"]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                     "ownerReferences": [{"apiVersion": INFERENCE_SERVICE.api_version, "kind": "InferenceService",
                                          "name": meta["name"], "uid": meta["uid"], "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": pod_spec,
    }


TRANSFORMER_MODULE = "kaip.serving.runtimes.transformer"
EXPLAINER_MODULE = "kaip.serving.runtimes.explainer"
# Fields of a transformer or an explainer that change its process, and so make a new revision of it.
COMPONENT_FIELDS = ("containers", "labels", "annotations", "resources", "serviceAccountName", "priorityClassName",
                    "terminationGracePeriodSeconds")
TRANSFORMER_FIELDS = COMPONENT_FIELDS


def component_hash(component: dict[str, Any]) -> str:
    relevant = {k: component[k] for k in COMPONENT_FIELDS if k in component}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


transformer_hash = component_hash


def _component_container(container: dict[str, Any], module: str, *, name: str, port: int, token: str,
                         added: list[str]) -> dict[str, Any]:
    """A transformer's or explainer's container: without a command, Kaip's runtime `module`; `--model_name` (unless
    given), then the replica's port and the `added` args, which replace any the user wrote (they are Kaip's to set,
    as KServe sets `--predictor_host`), and the internal token that opens the predictor's route."""
    merged = render_container(None, {**container, "command": container.get("command") or ["python", "-m", module]},
                              name=name, model_dir=None, port=port)
    merged["name"] = container.get("name") or "kserve-container"
    replaced = ("--http_port=", *(a.split("=", 1)[0] + "=" for a in added))
    args = [a for a in merged["args"] if not a.startswith(replaced)]
    if not any(a.startswith("--model_name=") for a in args):
        args.insert(0, f"--model_name={name}")
    merged["args"] = [*args, f"--http_port={port}", *added]
    merged["env"].append({"name": "KAIP_PREDICTOR_TOKEN", "value": token})
    return merged


def render_transformer_container(container: dict[str, Any], *, name: str, port: int, predictor_url: str,
                                 token: str) -> dict[str, Any]:
    """The transformer's container: the predictor's internal URL is added as KServe adds `--predictor_host`."""
    return _component_container(container, TRANSFORMER_MODULE, name=name, port=port, token=token,
                                added=[f"--predictor_url={predictor_url}"])


def render_explainer_container(container: dict[str, Any], *, name: str, port: int, predictor_host: str,
                               token: str) -> dict[str, Any]:
    """The explainer's container, with KServe's explainer args: `--model_name`, `--http_port` and
    `--predictor_host` (host:port and the path of the predictor's internal route, so that an explainer written for
    KServe, which POSTs to `http://{predictor_host}/v1/models/{name}:predict`, reaches it through the gateway)."""
    return _component_container(container, EXPLAINER_MODULE, name=name, port=port, token=token,
                                added=[f"--predictor_host={predictor_host}"])
