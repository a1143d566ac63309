"""From a Workbench to what runs it — pure: where its files live, its URL, its Workload pod set, and its Pod.

Files live under `$KAIP_HOME/workbenches/{namespace}/{name}/`, keyed by name rather than uid, like the PVC that
Kubeflow's notebooks keep: stopping, culling, a pod restart, a server restart, even deleting and re-creating the
Workbench keep them. `work/` is JupyterLab's root (the user's files); `jupyter/` holds JupyterLab's own config,
data and runtime directories, IPython's profile and JupyterLab's token, so nothing is shared through `~/.jupyter`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaip.api.workbench import WORKBENCH

PREFIX = "/workbenches"
CONTAINER = "jupyterlab"
POD_SET = "main"  # Kueue's name for the single pod set of a job
NAME_LABEL = "notebook-name"  # Kubeflow's label on a notebook's pod
PORT_ANNOTATION = "workbenches.kaip.dev/port"
SPEC_HASH_ANNOTATION = "workbenches.kaip.dev/spec-hash"
IMAGE = "kaip/jupyterlab"  # recorded, not pulled: the local executor runs this project's JupyterLab
# Fields that change the process: a running pod whose hash differs is replaced (as a StatefulSet rolls its pod).
POD_FIELDS = ("resources", "env", "serviceAccountName")
TERMINATION_GRACE_SECONDS = 15  # JupyterLab shuts its kernels down on SIGTERM


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def jupyter(self) -> Path:
        return self.root / "jupyter"

    @property
    def token(self) -> Path:
        return self.jupyter / "token"

    def env(self) -> dict[str, str]:
        j = self.jupyter
        return {"JUPYTER_CONFIG_DIR": str(j / "config"), "JUPYTER_DATA_DIR": str(j / "data"),
                "JUPYTER_RUNTIME_DIR": str(j / "runtime"), "IPYTHONDIR": str(j / "ipython"),
                "JUPYTER_TOKEN_FILE": str(self.token)}


def paths(state_root: Path, namespace: str, name: str) -> Paths:
    return Paths(state_root / namespace / name)


def base_path(namespace: str, name: str) -> str:
    """JupyterLab's base_url, which is also its public path on the Kaip server."""
    return f"{PREFIX}/{namespace}/{name}/"


def url(server_url: str | None, namespace: str, name: str) -> str:
    """The workbench's URL (without any token): on the Kaip server when its address is known, else the path."""
    return (server_url or "").rstrip("/") + base_path(namespace, name)


def pod_name(name: str) -> str:
    return f"{name}-0"  # as the StatefulSet behind a Kubeflow notebook names its pod


def pod_sets(wb: dict[str, Any]) -> list[dict[str, Any]]:
    """What a queue reserves quota for: one pod with the workbench's resources."""
    container: dict[str, Any] = {"name": CONTAINER}
    if wb["spec"].get("resources"):
        container["resources"] = copy.deepcopy(wb["spec"]["resources"])
    return [{"name": POD_SET, "count": 1, "template": {"spec": {"containers": [container]}}}]


def spec_hash(wb: dict[str, Any]) -> str:
    relevant = {k: wb["spec"][k] for k in POD_FIELDS if k in wb["spec"]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def lab_args(namespace: str, name: str, port: int, root_dir: Path) -> list[str]:
    """JupyterLab on loopback only, under the workbench's path, offline (no news, update checks or extension
    index), without a Quit button (the pod would only be restarted)."""
    return [f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={base_path(namespace, name)}", f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.open_browser=False", "--ServerApp.allow_root=True", "--ServerApp.quit_button=False",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly"]


def render_pod(wb: dict[str, Any], port: int, where: Paths) -> dict[str, Any]:
    meta, spec = wb["metadata"], wb["spec"]
    env = [{"name": k, "value": v} for k, v in where.env().items()]
    env += copy.deepcopy(spec.get("env") or [])
    container: dict[str, Any] = {"name": CONTAINER, "image": IMAGE, "command": ["python", "-m", "kaip.workbench.lab"],
                                 "args": lab_args(meta["namespace"], meta["name"], port, where.work),
                                 "workingDir": str(where.work), "env": env,
                                 "ports": [{"containerPort": port, "name": "notebook-port"}]}
    if spec.get("resources"):
        container["resources"] = copy.deepcopy(spec["resources"])
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {NAME_LABEL: meta["name"]},
                     "annotations": {PORT_ANNOTATION: str(port), SPEC_HASH_ANNOTATION: spec_hash(wb)},
                     "ownerReferences": [{"apiVersion": WORKBENCH.api_version, "kind": WORKBENCH.kind,
                                          "name": meta["name"], "uid": meta["uid"], "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": {"containers": [container], "restartPolicy": "Always",
                 "serviceAccountName": spec.get("serviceAccountName"),
                 "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS},
    }
