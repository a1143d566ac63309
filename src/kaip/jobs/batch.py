"""`batch/v1` Job as a GenericJob (Kueue's pkg/controller/jobs/job): one pod set, `main`, of `parallelism` pods."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kaip.api.batch import JOB
from kaip.api.kinds import KindInfo
from kaip.controlplane.conditions import is_true
from kaip.jobs.framework import Finished, PodSetInfo
from kaip.scheduling import podsready

TERMINAL = ("Succeeded", "Failed")


def pod_is_active(pod: dict[str, Any]) -> bool:
    """Still holds the machine: not ended, or being stopped."""
    return bool(pod["metadata"].get("deletionTimestamp")) or (pod.get("status") or {}).get("phase") not in TERMINAL


@dataclass
class BatchJob:
    obj: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)
    kind: KindInfo = JOB

    def pod_sets(self) -> list[dict[str, Any]]:
        spec = self.obj["spec"]
        count = int(spec.get("parallelism") or 1)
        if spec.get("completions") is not None:
            count = min(count, int(spec["completions"]))
        return [{"name": "main", "count": count, "template": copy.deepcopy(spec["template"])}]

    def is_suspended(self) -> bool:
        return bool(self.obj["spec"].get("suspend"))

    def suspend(self) -> None:
        self.obj["spec"]["suspend"] = True

    def run_with(self, infos: list[PodSetInfo]) -> None:
        spec = self.obj["spec"]
        for info in infos:
            if info.name != "main":
                continue
            pod_spec = spec["template"]["spec"]
            if info.node_selector:
                pod_spec["nodeSelector"] = dict(info.node_selector)
            if info.tolerations:
                pod_spec["tolerations"] = list(info.tolerations)
        spec["suspend"] = False

    def restore(self, pod_sets: list[dict[str, Any]]) -> None:
        original = next((ps for ps in pod_sets if ps.get("name") == "main"), None)
        if original is None:
            return
        pod_spec = self.obj["spec"]["template"]["spec"]
        for key in ("nodeSelector", "tolerations"):
            value = original["template"]["spec"].get(key)
            if value is None:
                pod_spec.pop(key, None)
            else:
                pod_spec[key] = copy.deepcopy(value)

    def finished(self) -> Finished | None:
        status = self.obj.get("status")
        if is_true(status, "Complete"):
            return Finished(True, "Job finished successfully")
        if is_true(status, "Failed"):
            cond = next(c for c in status["conditions"] if c["type"] == "Failed")  # type: ignore[index]
            return Finished(False, cond.get("message") or "Job failed")
        return None

    def is_active(self) -> bool:
        return any(pod_is_active(p) for p in self.pods)

    def pods_ready(self) -> bool:
        return podsready.all_ready(self.pods)
