"""Recording a finished training job in tracking and the registry.

Workers have no credentials for the server (the executor never passes its secrets on), so a trainer writes what
it made to files in its job directory — `metrics.jsonl` (one metric point per line) and `publish.json` (outputs,
dataset, base model, hyperparameters, final metrics, the name to register) — and the controller, which holds the
store, records it once the job is Complete: a run with every metric point, its params and dataset input (lineage:
dataset → run, base model → run), the outputs in the artifact store, and a model version made from the run
(lineage: run → version).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kaip.artifacts.store import ArtifactStore
from kaip.store.store import Store
from kaip.tracking.access import AllowAll
from kaip.tracking.errors import MlflowError
from kaip.tracking.service import BASE_MODEL_TAG, MAX_METRICS_PER_BATCH, TrackingService

EXPERIMENT_LABEL = "kaip.dev/experiment"
DEFAULT_EXPERIMENT = "trainjobs"


def _experiment(tracking: TrackingService, namespace: str, name: str) -> str:
    access = AllowAll()
    try:
        return str(tracking.get_experiment_by_name(access, namespace, name)["experiment_id"])
    except MlflowError:
        return str(tracking.create_experiment(access, namespace, name))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            point = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed worker
        out.append({"key": point["key"], "value": float(point["value"]), "step": int(point["step"]),
                    "timestamp": int(point["timestamp"])})
    return out


def publish(store: Store, artifacts_root: Path, job: dict[str, Any], train_dir: Path) -> dict[str, Any]:
    """Record the job's run (and model version); returns what to keep in status (`runId`, `modelVersion`)."""
    report = json.loads((train_dir / "publish.json").read_text())
    meta = job["metadata"]
    namespace = meta["namespace"]
    access = AllowAll()
    tracking = TrackingService(store)
    experiment = (meta.get("labels") or {}).get(EXPERIMENT_LABEL) or DEFAULT_EXPERIMENT
    eid = _experiment(tracking, namespace, experiment)
    run = tracking.create_run(access, namespace, {"experiment_id": eid, "run_name": meta["name"],
                                                  "tags": [{"key": "kaip.trainjob", "value": meta["name"]}]})
    run_id = run["info"]["run_id"]
    params = [{"key": k, "value": str(v)} for k, v in sorted((report.get("params") or {}).items())]
    tags = [{"key": "kaip.code_version", "value": str(report.get("code_version", ""))}]
    if report.get("base_model"):
        tags.append({"key": BASE_MODEL_TAG, "value": str(report["base_model"])})
    tracking.log_batch(access, run_id, params=params, tags=tags)
    points = read_metrics(train_dir / "metrics.jsonl")
    for start in range(0, len(points), MAX_METRICS_PER_BATCH):
        tracking.log_batch(access, run_id, metrics=points[start:start + MAX_METRICS_PER_BATCH])
    ds = report.get("dataset") or {}
    if ds.get("digest"):
        tracking.log_inputs(access, run_id, [{"dataset": {"name": ds.get("name") or "dataset",
                                                          "digest": str(ds["digest"])[:64],
                                                          "source_type": "local", "source": str(ds.get("path"))},
                                              "tags": [{"key": "mlflow.data.context", "value": "training"}]}])
    artifacts = ArtifactStore(artifacts_root)
    for label, folder in (report.get("outputs") or {}).items():
        root = Path(folder)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            written = artifacts.write_bytes(f"{eid}/{run_id}/artifacts/{label}/{path.relative_to(root)}",
                                            path.read_bytes())
            tracking.record_artifact(written.path, written.size, written.sha256)
    tracking.update_run(access, {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
    out: dict[str, Any] = {"runId": run_id, "experimentId": eid}
    name = report.get("register")
    if name:
        from kaip.tracking.registry import RegistryService

        registry = RegistryService(store)
        try:
            registry.get_model(access, namespace, name)
        except MlflowError:
            registry.create_model(access, namespace, name)
        final = {k: v for k, v in (report.get("final_metrics") or {}).items() if v is not None}
        # The model: LoRA SFT's `merged` (its `adapter` is not a whole model), else the first output (autolog's).
        outputs = list(report.get("outputs") or {})
        label = "merged" if "merged" in outputs or not outputs else outputs[0]
        version = registry.create_version(access, namespace, {
            "name": name, "source": f"mlflow-artifacts:/{eid}/{run_id}/artifacts/{label}", "run_id": run_id,
            "tags": [{"key": "kaip.dataset_digest", "value": str(ds.get("digest", ""))},
                     {"key": "kaip.base_model", "value": str(report.get("base_model", ""))},
                     *({"key": f"metric.{k}", "value": f"{v:.6g}"} for k, v in final.items())]})
        out["modelVersion"] = f"{name}/{version['version']}"
    return out
