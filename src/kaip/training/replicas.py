"""Which pod is a training job's replica: `kaip logs trainjob/NAME --replica node-0-1` reads the log of that
replica's pod in the job's latest attempt."""

from __future__ import annotations

from typing import Any

JOB_KINDS = {"trainjob": "trainer.kubeflow.org/trainjob-name", "trainjobs": "trainer.kubeflow.org/trainjob-name",
             "pytorchjob": "training.kubeflow.org/job-name", "pytorchjobs": "training.kubeflow.org/job-name"}
DEFAULT_REPLICA = {"trainer.kubeflow.org/trainjob-name": "node-0-0", "training.kubeflow.org/job-name": "master-0"}
REPLICA_LABEL = "trainer.kubeflow.org/replica"
ATTEMPT_LABEL = "kaip.dev/training-attempt"


def job_target(target: str) -> tuple[str, str] | None:
    """`trainjob/NAME` -> (job-name label, NAME); None for anything else (a pod)."""
    kind, slash, name = target.partition("/")
    label = JOB_KINDS.get(kind.lower())
    return (label, name) if slash and label else None


def pick_replica_pod(pods: list[dict[str, Any]], replica: str | None, label: str) -> str | None:
    """The newest attempt's pod of `replica` (default: rank 0); torchrun-style jobs name replicas `node-N`."""
    wanted = replica or DEFAULT_REPLICA[label]
    best: tuple[int, str] | None = None
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        name = labels.get(REPLICA_LABEL, "")
        if name == wanted or (replica is None and name == wanted.rsplit("-", 1)[0]):
            attempt = int(labels.get(ATTEMPT_LABEL, "0"))
            if best is None or attempt > best[0]:
                best = (attempt, pod["metadata"]["name"])
    return best[1] if best else None
