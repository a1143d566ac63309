"""Guardrails on an InferenceService's own OpenAI endpoint: the serving gateway's hook.

When a GuardrailsOrchestrator's config names `kaip.inferenceService: NAME`, a chat completion or text completion
sent to `/serving/NS/NAME/.../chat/completions` (or `/completions`) gets that orchestrator's policies, so that
client code does not change:

- input: a `block` answers in place of the model with upstream's UNSUITABLE_INPUT shape and the fallback message
  as the choice (`finish_reason: content_filter`); a `redact` forwards the request with placeholders;
- output: a JSON answer is rewritten (a block replaces the text by the fallback, a redact replaces the spans); a
  streamed answer is re-chunked into windows that the output detectors check before they are sent;
- the prediction log: detections are added to the record, and what an attached PII detector (or any detector
  with a `redact` action) finds in the logged request and response is replaced by placeholders.

The orchestrator's own backend calls the InferenceService through the gateway too; those calls carry a
per-process secret header (`INTERNAL_HEADER`, never forwarded to a replica) and are not guarded again — only
their log record is redacted. A `detectors` field in the client's body is ignored: the policy is not the
client's to change here.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool

from kaip.guardrails.config import ConfigError
from kaip.guardrails.detectors.base import TEXT_CONTENTS, Detection
from kaip.guardrails.detectors.pii import redact
from kaip.guardrails.orchestrator import (
    INPUT,
    OUTPUT,
    Orchestrator,
    OrchestratorError,
    Outcome,
    Selected,
    _text_to_chat,
    check_fields,
)
from kaip.guardrails.service import INTERNAL_HEADER, GuardrailsService
from kaip.serving.gateway import Reply, Rewrite

LOG_DETECTORS = ("pii", "built-in-detector")  # always redacted in the log when attached


def endpoint_kind(path: str) -> str | None:
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/completions"):
        return "completions"
    return None


# ---- SSE ------------------------------------------------------------------------------------------------

def sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


async def sse_events(source: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, however its bytes were cut."""
    buffer = b""
    async for data in source:
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            try:
                doc = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                yield doc


def parse_sse_text(text: str) -> list[dict[str, Any]] | None:
    """The chunks of a captured SSE body, or None when the text is not one."""
    if "data:" not in text:
        return None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            try:
                doc = json.loads(line[5:].strip())
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def assemble_stream(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A streamed answer as the log keeps it for a guarded service: the text of each choice, whole (so that a
    span cut across chunks is still found), plus usage and detections if the stream carried them."""
    texts: dict[int, str] = {}
    reasons: dict[int, Any] = {}
    out: dict[str, Any] = {"stream": True}
    for chunk in chunks:
        for c in chunk.get("choices") or []:
            i = c.get("index", 0)
            piece = (c.get("delta") or {}).get("content") if "delta" in c else c.get("text")
            texts[i] = texts.get(i, "") + (piece or "")
            if c.get("finish_reason"):
                reasons[i] = c["finish_reason"]
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
        if chunk.get("detections"):
            out.setdefault("detections", []).append(chunk["detections"])
    out["choices"] = [{"index": i, "text": t, "finish_reason": reasons.get(i)} for i, t in sorted(texts.items())]
    return out


# ---- the prediction log ---------------------------------------------------------------------------------

def log_selection(orchestrator: Orchestrator) -> list[Selected]:
    """The detectors whose findings are redacted in the prediction log: PII detectors attached in either direction,
    and every detector with a `redact` action."""
    config = orchestrator.config
    chosen: dict[str, dict[str, Any]] = {}
    for direction, policy in ((INPUT, config.input), (OUTPUT, config.output)):
        for detector_id, params in policy.items():
            action = config.actions.get(direction, {}).get(detector_id)
            if detector_id in LOG_DETECTORS or action == "redact":
                chosen.setdefault(detector_id, dict(params or {}))
    selected = []
    for detector_id, params in chosen.items():
        spec = config.registry.get(detector_id)
        if spec is None or TEXT_CONTENTS not in spec.types:
            continue
        params = dict(params)
        threshold = params.pop("threshold", None)
        selected.append(Selected(detector_id, spec, {**spec.params, **params},
                                 spec.default_threshold if threshold is None else float(threshold)))
    return selected


def redact_text(text: str, selected: list[Selected]) -> str:
    found: list[Detection] = []
    for s in selected:
        found += [d for d in s.spec.detector.detect(text, s.params) if d.score >= s.threshold and d.start is not None]
    return redact(text, found) if found else text


def redact_doc(doc: Any, selected: list[Selected]) -> Any:
    """Every string in a JSON document with what the detectors find replaced by placeholders."""
    if isinstance(doc, str):
        return redact_text(doc, selected) if doc.strip() else doc
    if isinstance(doc, list):
        return [redact_doc(v, selected) for v in doc]
    if isinstance(doc, dict):
        return {k: redact_doc(v, selected) for k, v in doc.items()}
    return doc


def record_redactor(selected: list[Selected], detections: dict[str, list[Any]]) -> Callable[[dict[str, Any]],
                                                                                               dict[str, Any]]:
    """The gateway's record transform: streamed answers assembled, payloads and detections redacted, the
    detections (filled in while the request is handled) added."""

    def apply(record: dict[str, Any]) -> dict[str, Any]:
        for key in ("request", "response"):
            value = record.get(key)
            if isinstance(value, str):
                chunks = parse_sse_text(value)
                if chunks is not None:
                    value = assemble_stream(chunks)
            record[key] = redact_doc(value, selected) if selected else value
        found = {k: v for k, v in detections.items() if v}
        if found:
            record["detections"] = redact_doc(found, selected) if selected else found
        return record
    return apply


# ---- the hook -------------------------------------------------------------------------------------------

def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _error_reply(err: OrchestratorError) -> Reply:
    return Reply(err.code, _json_bytes(err.to_json()))


class GuardrailsHook:
    """Registered on the serving gateway by `kaip.guardrails.install`."""

    def __init__(self, service: GuardrailsService) -> None:
        self.service = service

    async def _guard_name(self, namespace: str, isvc: str) -> str:
        cached = self.service.guard_cached(namespace, isvc)
        if cached is not None:
            return cached
        return await run_in_threadpool(self.service.guard_for, namespace, isvc)

    async def request(self, route: Any, path: str, body: bytes, user: str | None,
                      headers: Mapping[str, str]) -> tuple[bytes | Reply, Rewrite | None]:
        kind = endpoint_kind(path)
        if kind is None:
            return body, None
        name = await self._guard_name(route.namespace, route.name)
        if not name:
            return body, None
        try:
            parsed = await run_in_threadpool(self.service.load, route.namespace, name)
        except ConfigError as err:
            return _error_reply(OrchestratorError(
                503, f"GuardrailsOrchestrator {route.namespace}/{name} is not ready: {err}")), None
        if parsed is None:  # deleted since the look-up
            return body, None
        orchestrator = Orchestrator(parsed.config, self.service.record)
        detections: dict[str, list[Any]] = {INPUT: [], OUTPUT: []}
        rewrite = Rewrite(record=record_redactor(log_selection(orchestrator), detections))
        if hmac.compare_digest(headers.get(INTERNAL_HEADER, ""), self.service.internal_secret):
            return body, rewrite  # the orchestrator's own call: already guarded, only its log record is redacted
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _error_reply(OrchestratorError(400, f"Failed to parse the request body as JSON: {err}")), rewrite
        if isinstance(doc, dict):
            doc.pop("detectors", None)
        try:
            if kind == "chat":
                return await self._chat(orchestrator, doc, detections, rewrite)
            return await self._completions(orchestrator, doc, detections, rewrite)
        except OrchestratorError as err:
            return _error_reply(err), rewrite

    async def _chat(self, o: Orchestrator, doc: Any, detections: dict[str, list[Any]], rewrite: Rewrite
                    ) -> tuple[bytes | Reply, Rewrite]:
        request, inputs, outputs = o._prepare_chat(doc, True)
        stream = bool(request.get("stream"))
        outcome, index = await o._guard_chat_input(request, inputs)
        if outcome is not None and outcome.detections:
            detections[INPUT].append({"message_index": index, "results": outcome.results(hide=True)})
        if outcome is not None and outcome.blocked:
            answer = o._blocked_chat(request, outcome, index, fallback=True, chunk=stream)
            if stream:
                return Reply(200, sse([answer]), "text/event-stream"), rewrite
            return Reply(200, _json_bytes(answer)), rewrite

        async def answer(completion: Any) -> Any:
            if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
                return completion
            completion = await o.guard_chat_answer(completion, request, outputs, outcome, index)
            detections[OUTPUT] += completion["detections"].get(OUTPUT, [])
            if not completion["detections"]:
                del completion["detections"]  # a clean answer passes unchanged
            return completion

        async def chunks(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            if outcome is not None and outcome.detections:
                first = o._blocked_chat(request, outcome, index, fallback=False, chunk=True)
                first.pop("warnings")
                first.pop("usage")
                yield f"data: {json.dumps(first)}\n\n".encode()
            try:
                async for chunk in o.guard_chat_chunks(sse_events(source), request, outputs):
                    if chunk.get("detections"):
                        detections[OUTPUT] += chunk["detections"].get(OUTPUT, [])
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
            except OrchestratorError as err:
                yield f"data: {json.dumps({'error': err.to_json()})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        rewrite.json, rewrite.stream = answer, chunks
        return _json_bytes(request), rewrite

    async def _completions(self, o: Orchestrator, doc: Any, detections: dict[str, list[Any]], rewrite: Rewrite
                           ) -> tuple[bytes | Reply, Rewrite]:
        check_fields(doc, required=("prompt",), strict=False, types={"prompt": str, "stream": bool})
        if not doc["prompt"]:
            raise OrchestratorError(422, "`prompt` is required")
        inputs, outputs = o._detectors_block(doc, True)
        request = dict(doc)
        if not request.get("model") and o.config.model:
            request["model"] = o.config.model
        stream = bool(request.get("stream"))
        outcome: Outcome | None = None
        if inputs:
            outcome = await run_in_threadpool(o.run_contents, inputs, request["prompt"], INPUT)
            if outcome.detections:
                detections[INPUT].append({"results": outcome.results(hide=True)})
            if outcome.blocked:
                blocked = o.blocked_completion(request, outcome)
                return (Reply(200, sse([blocked]), "text/event-stream") if stream
                        else Reply(200, _json_bytes(blocked))), rewrite
            if outcome.to_redact():
                request["prompt"] = redact(request["prompt"], outcome.to_redact())
        found_input = {INPUT: [{"results": outcome.results()}]} if outcome is not None and outcome.detections else {}

        async def answer(completion: Any) -> Any:
            if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
                return completion
            completion = await o.guard_completion_answer(completion, outputs, dict(found_input))
            detections[OUTPUT] += completion["detections"].get(OUTPUT, [])
            if not completion["detections"]:
                del completion["detections"]
            return completion

        as_chat = {"messages": [{"role": "user", "content": request["prompt"]}]}

        async def chunks(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            try:
                async for chunk in o.guard_chat_chunks(_text_to_chat(sse_events(source)), as_chat, outputs):
                    if chunk.get("detections"):
                        detections[OUTPUT] += chunk["detections"].get(OUTPUT, [])
                    out = {**chunk, "object": "text_completion"}
                    out["choices"] = [{"index": c.get("index", 0), "text": (c.get("delta") or {}).get("content", ""),
                                       "logprobs": None, "finish_reason": c.get("finish_reason")}
                                      for c in chunk.get("choices") or []]
                    yield f"data: {json.dumps(out)}\n\n".encode()
            except OrchestratorError as err:
                yield f"data: {json.dumps({'error': err.to_json()})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        rewrite.json, rewrite.stream = answer, chunks
        return _json_bytes(request), rewrite
