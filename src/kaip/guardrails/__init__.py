"""Guardrails: detectors (PII, HAP, prompt injection, bias, user-defined) and the FMS-compatible orchestrator.

The gateway's seam is `kaip.guardrails.service.GuardrailsService`: `guard_chat_request` / `guard_chat_response`
(and the streaming window checker) apply a GuardrailsOrchestrator's input and output policies to an OpenAI
chat request; the HTTP routers in `kaip.guardrails.http` serve the Detectors API and the orchestrator API.
"""
