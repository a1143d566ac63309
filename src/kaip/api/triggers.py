"""The `kaip.dev/v1alpha1` Trigger kind: start a PipelineRun when an event happens.

Exactly one event source:

- `modelVersion{model}` — a version of a registered model (any model when `model` is empty) is registered in
  the Trigger's namespace after the Trigger was created;
- `dataset{path}` — the sha256 of a file's content changes (the first digest seen is the baseline);
- `alert{reason, involvedKind, involvedName}` — a `v1` Event with that `reason` is recorded in the namespace (and
  again each time its `count` goes up). This is the contract for monitoring: a drift alert is an Event with reason
  `DriftDetected` (type Warning) whose `involvedObject` is the model's InferenceService.

The run is `pipelineRef` (or an inline `pipelineSpec`) with `parameters`; `eventParameters` maps a pipeline
parameter to a field of the event (see `EVENT_FIELDS`), so the run knows which version, file or alert started it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema
from kaip.api.pipelines import GROUP, VERSION, PipelineRef, _check_ir

EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "modelVersion": ("eventId", "model", "version", "source", "runId", "registeredAt"),
    "dataset": ("eventId", "path", "digest", "previousDigest", "observedAt"),
    "alert": ("eventId", "reason", "message", "involvedKind", "involvedName", "count", "firstSeen", "lastSeen",
              "alert"),
}


class ModelVersionEvent(Schema):
    model: str | None = None


class DatasetEvent(Schema):
    path: str = Field(min_length=1)


class AlertEvent(Schema):
    reason: str = Field(min_length=1)
    involvedKind: str | None = None
    involvedName: str | None = None


class TriggerEvent(Schema):
    modelVersion: ModelVersionEvent | None = None
    dataset: DatasetEvent | None = None
    alert: AlertEvent | None = None

    @model_validator(mode="after")
    def _one(self) -> TriggerEvent:
        if sum(x is not None for x in (self.modelVersion, self.dataset, self.alert)) != 1:
            raise ValueError("exactly one of modelVersion, dataset or alert is required")
        return self

    def source(self) -> str:
        return next(k for k in EVENT_FIELDS if getattr(self, k) is not None)


class TriggerSpec(Schema):
    event: TriggerEvent
    pipelineSpec: dict[str, Any] | None = None
    pipelineRef: PipelineRef | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    eventParameters: dict[str, str] = Field(default_factory=dict)
    enableCaching: bool = True
    serviceAccountName: str | None = None
    pollIntervalSeconds: int = Field(default=30, ge=1, le=86400)
    suspend: bool = False

    @field_validator("pipelineSpec")
    @classmethod
    def _ir(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_ir(v)

    @model_validator(mode="after")
    def _check(self) -> TriggerSpec:
        if (self.pipelineSpec is None) == (self.pipelineRef is None):
            raise ValueError("exactly one of pipelineSpec or pipelineRef is required")
        allowed = EVENT_FIELDS[self.event.source()]
        bad = [f"eventParameters.{k}: unknown field {v!r} of a {self.event.source()} event (its fields: "
               f"{', '.join(allowed)})" for k, v in self.eventParameters.items() if v not in allowed]
        bad += [f"eventParameters.{k}: also set in parameters" for k in self.eventParameters if k in self.parameters]
        if bad:
            raise ValueError("; ".join(bad))
        return self


class TriggerBody(Schema):
    spec: TriggerSpec


def _source(obj: dict[str, Any]) -> str:
    return next(iter((obj.get("spec") or {}).get("event") or {}), "")


TRIGGER = REGISTRY.register(KindInfo(GROUP, VERSION, "Trigger", "triggers", namespaced=True, schema=TriggerBody,
                                     short_names=("trg",), columns=(
                                         Column("Event", _source),
                                         Column("Runs", ".status.runsStarted", "integer"),
                                         Column("Last", ".status.lastEventTime", "date"),
                                         Column("Age", ".metadata.creationTimestamp", "date"))))
