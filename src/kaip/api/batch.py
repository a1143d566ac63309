"""`batch/v1` Job: the simplest workload, run on the local executor, and Kueue's first integration."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.kueue import PodTemplateSpec, TemplatePodSpec
from kaip.api.meta import Schema

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _unsupported(what: str) -> Any:
    def check(value: Any) -> Any:
        if value is not None:
            raise ValueError(f"not supported by Kaip's local Job controller ({what}); remove the field")
        return value
    return check


class JobPodSpec(TemplatePodSpec):
    restartPolicy: str | None = Field(default=None, validate_default=True)  # type: ignore[assignment]

    @field_validator("restartPolicy")
    @classmethod
    def _restart(cls, v: str | None) -> str | None:
        if v not in ("OnFailure", "Never"):
            raise ValueError(f'Unsupported value: "{v or "Always"}": supported values: "OnFailure", "Never"')
        return v

    @field_validator("containers")
    @classmethod
    def _commands(cls, v: list[Any]) -> list[Any]:
        for c in v:
            if not c.command and not c.args:
                raise ValueError(f"container {c.name!r}: command is required on the local executor "
                                 "(images are recorded, not run)")
        return v


class JobTemplate(PodTemplateSpec):
    spec: JobPodSpec


class JobSpec(Schema):
    template: JobTemplate
    parallelism: int | None = Field(default=None, ge=0)
    completions: int | None = Field(default=None, ge=0)
    backoffLimit: int = Field(default=6, ge=0)
    activeDeadlineSeconds: int | None = Field(default=None, ge=1)
    suspend: bool = False
    completionMode: Literal["NonIndexed", "Indexed"] = "NonIndexed"
    ttlSecondsAfterFinished: int | None = None
    selector: dict[str, Any] | None = None
    manualSelector: bool | None = None
    podFailurePolicy: dict[str, Any] | None = None
    successPolicy: dict[str, Any] | None = None
    backoffLimitPerIndex: int | None = None
    maxFailedIndexes: int | None = None
    podReplacementPolicy: str | None = None
    managedBy: str | None = None

    _ttl = field_validator("ttlSecondsAfterFinished")(_unsupported("finished-job clean-up"))
    _sel = field_validator("selector", "manualSelector")(_unsupported("the selector is generated"))
    _pfp = field_validator("podFailurePolicy")(_unsupported("pod failure policy"))
    _sp = field_validator("successPolicy")(_unsupported("success policy"))
    _bpi = field_validator("backoffLimitPerIndex", "maxFailedIndexes")(_unsupported("per-index backoff"))
    _prp = field_validator("podReplacementPolicy")(_unsupported("pod replacement policy"))
    _mb = field_validator("managedBy")(_unsupported("external job controllers"))

    @model_validator(mode="after")
    def _defaults(self) -> JobSpec:
        # As Kubernetes defaults them: both unset means one pod to one completion.
        if self.parallelism is None and self.completions is None:
            self.parallelism = self.completions = 1
        elif self.parallelism is None:
            self.parallelism = 1
        if self.completionMode == "Indexed" and self.completions is None:
            raise ValueError("completions: Required value: when completion mode is Indexed")
        return self


class JobBody(Schema):
    spec: JobSpec


def _completions(job: dict[str, Any]) -> str:
    status = job.get("status") or {}
    want = job["spec"].get("completions")
    return f"{status.get('succeeded', 0)}/{want if want is not None else 1}"


def job_status(job: dict[str, Any]) -> str:
    """kubectl's STATUS column for a Job."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond["type"] == "Complete":
            return "Complete"
        if cond["type"] == "Failed":
            return "Failed"
        if cond["type"] == "Suspended":
            return "Suspended"
    return "Running"


JOB = REGISTRY.register(KindInfo(
    "batch", "v1", "Job", "jobs", namespaced=True, schema=JobBody, categories=("all",),
    columns=(Column("Status", job_status), Column("Completions", _completions),
             Column("Duration", ".status.startTime", "date"), Column("Age", ".metadata.creationTimestamp", "date"))))
