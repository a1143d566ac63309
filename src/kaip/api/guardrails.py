"""TrustyAI's GuardrailsOrchestrator (`trustyai.opendatahub.io/v1alpha1`), field for field as its CRD
(shared/crds/trustyai-service-operator). Unknown fields are refused with their path.

`spec.orchestratorConfig` names a ConfigMap holding the orchestrator's config YAML (upstream's shape:
`chat_generation` / `openai`, `detectors`, `passthrough_headers`), in key `config.yaml`. Kaip reads one more,
optional, top-level block there, `kaip:` — the per-detector actions (block / redact / flag) and the input and
output policies of the guarded endpoint; see docs/guardrails.md. Keeping it inside the ConfigMap leaves the
GuardrailsOrchestrator itself exactly as upstream defines it, so the same YAML applies to a real cluster.
"""

from __future__ import annotations

from pydantic import Field

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema

GROUP = "trustyai.opendatahub.io"


class OtelExporter(Schema):
    metricsEndpoint: str | None = None
    metricsProtocol: str | None = None
    otlpEndpoint: str | None = None
    otlpExport: str | None = None
    protocol: str | None = None
    tracesEndpoint: str | None = None
    tracesProtocol: str | None = None


class GuardrailsOrchestratorSpec(Schema):
    orchestratorConfig: str = Field(min_length=1)
    replicas: int = Field(ge=0, le=2**31 - 1)
    enableBuiltInDetectors: bool | None = None
    enableGuardrailsGateway: bool | None = None
    guardrailsGatewayConfig: str | None = None
    otelExporter: OtelExporter | None = None


class GuardrailsOrchestratorBody(Schema):
    spec: GuardrailsOrchestratorSpec


GUARDRAILS_ORCHESTRATOR = REGISTRY.register(KindInfo(
    GROUP, "v1alpha1", "GuardrailsOrchestrator", "guardrailsorchestrators", namespaced=True,
    schema=GuardrailsOrchestratorBody, singular="guardrailsorchestrator", short_names=("gorch",),
    columns=(Column("Phase", ".status.phase"), Column("URL", ".status.url"),
             Column("Age", ".metadata.creationTimestamp", "date"))))
