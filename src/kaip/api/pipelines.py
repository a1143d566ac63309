"""Kaip's pipeline kinds (`kaip.dev/v1alpha1`): Pipeline, PipelineRun and RecurringRun.

The pipeline itself is Kubeflow Pipelines IR exactly as `kfp.compiler.Compiler().compile` writes it, carried
verbatim in `spec.pipelineSpec`; it is checked on admission (`kaip.pipelines.dag.validate_ir`) so that a bad
IR is a 422 naming the task and field, not a failed run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema
from kaip.pipelines.cron import CronError, parse_cron
from kaip.pipelines.dag import resolve_parameters, validate_ir

GROUP, VERSION = "kaip.dev", "v1alpha1"


def _check_ir(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is not None:
        errs = validate_ir(v)
        if errs:
            raise ValueError("invalid pipeline IR: " + "; ".join(errs))
    return v


class PipelineSpec(Schema):
    pipelineSpec: dict[str, Any]
    description: str | None = None

    @field_validator("pipelineSpec")
    @classmethod
    def _ir(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_ir(v)


class PipelineBody(Schema):
    spec: PipelineSpec


class PipelineRef(Schema):
    name: str


class RunTemplate(Schema):
    """What a run executes: an inline IR or a reference to a Pipeline in the same namespace."""

    pipelineSpec: dict[str, Any] | None = None
    pipelineRef: PipelineRef | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    enableCaching: bool = True
    # The service account the run's task pods run as (KFP's `service_account`); their API credentials are its.
    serviceAccountName: str | None = None

    @field_validator("pipelineSpec")
    @classmethod
    def _ir(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_ir(v)

    @model_validator(mode="after")
    def _one_source(self) -> RunTemplate:
        if (self.pipelineSpec is None) == (self.pipelineRef is None):
            raise ValueError("exactly one of pipelineSpec or pipelineRef is required")
        if self.pipelineSpec is not None:
            _, errs = resolve_parameters(self.pipelineSpec, self.parameters)
            if errs:
                raise ValueError("; ".join(errs))
        return self


def run_spec_from(template: dict[str, Any]) -> dict[str, Any]:
    """A PipelineRun's spec from whatever carries a run template (a RecurringRun's or a Trigger's spec): every
    RunTemplate field it sets, so a field added to the template reaches the runs without touching the callers."""
    return {k: template[k] for k in RunTemplate.model_fields if k in template}


class PipelineRunBody(Schema):
    spec: RunTemplate


class CronSchedule(Schema):
    cron: str
    startTime: str | None = None
    endTime: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            parse_cron(v)
        except CronError as err:
            raise ValueError(str(err)) from err
        return v


class PeriodicSchedule(Schema):
    intervalSecond: int = Field(ge=1)
    startTime: str | None = None
    endTime: str | None = None


class Trigger(Schema):
    cronSchedule: CronSchedule | None = None
    periodicSchedule: PeriodicSchedule | None = None

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        if (self.cronSchedule is None) == (self.periodicSchedule is None):
            raise ValueError("exactly one of cronSchedule or periodicSchedule is required")
        return self


class RecurringRunSpec(RunTemplate):
    trigger: Trigger
    maxConcurrency: int = Field(default=1, ge=1, le=10)
    mode: Literal["ENABLE", "DISABLE"] = "ENABLE"
    noCatchup: bool = False


class RecurringRunBody(Schema):
    spec: RecurringRunSpec


def _tasks(obj: dict[str, Any]) -> str:
    tasks = (obj.get("status") or {}).get("tasks") or {}
    done = sum(1 for t in tasks.values() if t.get("phase") in ("Succeeded", "Skipped"))
    return f"{done}/{len(tasks)}"


PIPELINE = REGISTRY.register(KindInfo(GROUP, VERSION, "Pipeline", "pipelines", namespaced=True,
                                      schema=PipelineBody, short_names=("pl",), columns=(
                                          Column("Version", ".metadata.generation", "integer"),
                                          Column("Age", ".metadata.creationTimestamp", "date"))))
PIPELINE_RUN = REGISTRY.register(KindInfo(GROUP, VERSION, "PipelineRun", "pipelineruns", namespaced=True,
                                          schema=PipelineRunBody, short_names=("pr", "plr"), columns=(
                                              Column("Phase", ".status.phase"), Column("Tasks", _tasks),
                                              Column("Age", ".metadata.creationTimestamp", "date"),
                                              Column("Message", ".status.message", priority=1))))
RECURRING_RUN = REGISTRY.register(KindInfo(GROUP, VERSION, "RecurringRun", "recurringruns", namespaced=True,
                                           schema=RecurringRunBody, short_names=("rr",), columns=(
                                               Column("Mode", ".spec.mode"),
                                               Column("Last", ".status.lastScheduledTime", "date"),
                                               Column("Next", ".status.nextScheduledTime"),
                                               Column("Age", ".metadata.creationTimestamp", "date"))))
