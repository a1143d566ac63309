"""The support matrix in docs/conformance.md is what the code and the CRDs say, and the harness catches a deliberate
mismatch with upstream's reason (a schema looser or stricter than upstream's, built here on purpose)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, create_model

from conformance.harness import (
    NOT_IMPLEMENTED,
    UNKNOWN,
    causes,
    envelope,
    kaip_validate,
    matrix,
    mutation_leaks,
    refusal_explained,
    upstream_errors,
    upstream_kinds,
)
from conformance.matrix import DOCS, generated_part, render
from kaip.api.guardrails import GUARDRAILS_ORCHESTRATOR, GuardrailsOrchestratorSpec
from kaip.api.meta import Schema
from kaip.api.serving import INFERENCE_SERVICE

GORCH = {"spec": {"orchestratorConfig": "fms-config", "replicas": 1}}


def test_docs_matrix_is_generated_from_the_code() -> None:
    assert generated_part(DOCS.read_text()) == render(), \
        "docs/conformance.md is stale: run PYTHONPATH=tests .venv/bin/python -m conformance.matrix --write"


def test_matrix_lists_every_upstream_kind() -> None:
    text = render()
    for info in upstream_kinds():
        assert f"| {info.kind} (`{info.group or 'core'}`) |" in text


def test_matrix_classifies_fields_from_the_code() -> None:
    m = matrix(INFERENCE_SERVICE, "v1beta1")
    assert "spec.predictor.minReplicas" in m.implemented
    assert m.refused["spec.predictor.affinity"] == NOT_IMPLEMENTED  # declared as Unsupported
    assert m.refused["spec.predictor.containers[*].livenessProbe"] == UNKNOWN  # not declared at all
    assert not any(p.startswith("spec.predictor.affinity.") for p in m.implemented + list(m.refused))


def _loose(**fields: object) -> type[Schema]:
    spec = create_model("LooseSpec", __base__=GuardrailsOrchestratorSpec, **fields)  # type: ignore[call-overload]
    return create_model("LooseBody", __base__=Schema, spec=(spec, ...))  # type: ignore[call-overload]


def test_a_looser_schema_is_caught_with_upstreams_reason() -> None:
    # orchestratorConfig made optional: upstream requires it, so removing it must be refused, and is not here.
    info = dataclasses.replace(GUARDRAILS_ORCHESTRATOR, schema=_loose(orchestratorConfig=(str | None, None)))
    tried, leaks = mutation_leaks(info, "v1alpha1", envelope(info, "v1alpha1", GORCH))
    assert tried > 0
    assert any("spec.orchestratorConfig: required field removed" in leak
               and "'orchestratorConfig' is a required property" in leak for leak in leaks), leaks
    # and the real schema has no such leak
    assert mutation_leaks(GUARDRAILS_ORCHESTRATOR, "v1alpha1", envelope(info, "v1alpha1", GORCH))[1] == []


def test_a_stricter_schema_is_caught_as_an_unlisted_refusal() -> None:
    info = dataclasses.replace(GUARDRAILS_ORCHESTRATOR,
                               schema=_loose(enableBuiltInDetectors=(Literal[True] | None, Field(default=None))))
    doc = envelope(info, "v1alpha1", {"spec": {**GORCH["spec"], "enableBuiltInDetectors": False}})
    assert upstream_errors(info, "v1alpha1", doc) == []
    _, err = kaip_validate(info, doc)
    assert err is not None and err.code == 422
    (cause,) = causes(err)
    assert cause["field"] == "spec.enableBuiltInDetectors"
    assert not refusal_explained(info, "v1alpha1", cause, allow_refused_fields=True)
