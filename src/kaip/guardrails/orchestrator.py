"""The orchestrator: the FMS guardrails orchestrator's API semantics over Kaip's detector registry.

Upstream's behaviour, kept: detectors are chosen per request as a map `detector_id -> params`; `threshold` is
popped from the params (default: the detector's) and detections scoring below it are dropped; the rest of the
params go to the detector. On the chat and completions endpoints input detectors look at the last message
only, and a detection there means the model is not called: the answer has no choices, the input detections
and an UNSUITABLE_INPUT warning. Output detections add UNSUITABLE_OUTPUT.

Kaip's addition, per detector and direction: an action. `block` is upstream's input behaviour (and, on output,
the choice's text is replaced by the fallback message, so it never reaches the user); `redact` replaces the
detected spans by typed placeholders (the model, or the user, sees the redacted text); `flag` only records
(upstream's output behaviour). Defaults: input `block`, output `flag` — upstream's.

Errors are upstream's: `{"code": N, "details": "..."}` with its messages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from kaip.guardrails.backend import BackendError, ChatBackend
from kaip.guardrails.detectors.base import (
    TEXT_CHAT,
    TEXT_CONTENTS,
    TEXT_CONTEXT_DOC,
    TEXT_GENERATION,
    Detection,
    message_text,
)
from kaip.guardrails.detectors.pii import PLACEHOLDERS, redact
from kaip.guardrails.registry import DetectorRegistry, DetectorServiceError, DetectorSpec

UNSUITABLE_INPUT_MESSAGE = ("Unsuitable input detected. Please check the detected entities on your input and try "
                            "again with the unsuitable input removed.")
UNSUITABLE_OUTPUT_MESSAGE = "Unsuitable output detected."
ACTIONS = ("block", "redact", "flag")
DEFAULT_ACTION = {"input": "block", "output": "flag"}
INPUT, OUTPUT = "input", "output"


class OrchestratorError(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value[:40]}"'
    if value is None:
        return "null"
    return "sequence" if isinstance(value, list) else "map"


def check_fields(body: Any, *, required: tuple[str, ...], optional: tuple[str, ...] = (), strict: bool = True,
                 types: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """serde's checks and messages: unknown fields (when strict), missing fields, wrong types."""
    if not isinstance(body, dict):
        raise OrchestratorError(422, f"invalid type: {_type_name(body)}, expected a map")
    if strict:
        allowed = required + optional
        for key in body:
            if key not in allowed:
                expected = ", ".join(f"`{k}`" for k in allowed)
                raise OrchestratorError(422, f"unknown field `{key}`, expected one of {expected}")
    for key in required:
        if key not in body:
            raise OrchestratorError(422, f"missing field `{key}`")
    names = {str: "a string", dict: "a map", list: "a sequence", bool: "a boolean"}
    for key, expected_type in (types or {}).items():
        # null is "absent" for an optional field (serde's Option), and a wrong type for a required one
        if key in body and (body[key] is not None or key in required) and (
                not isinstance(body[key], expected_type)
                or isinstance(body[key], bool) and expected_type is not bool):
            want = names.get(expected_type, "a number") if isinstance(expected_type, type) else "a number"
            raise OrchestratorError(422, f"invalid type: {_type_name(body[key])}, expected {want}")
    return body


@dataclass
class Selected:
    id: str
    spec: DetectorSpec
    params: dict[str, Any]
    threshold: float
    action: str = "flag"


@dataclass
class Outcome:
    """Detections of one text by one direction's detectors, split by what their actions ask for."""

    detections: list[Detection] = field(default_factory=list)
    actions: dict[int, str] = field(default_factory=dict)  # id(detection) -> action

    @property
    def blocked(self) -> bool:
        return any(a == "block" for a in self.actions.values())

    def to_redact(self) -> list[Detection]:
        return [d for d in self.detections if self.actions[id(d)] == "redact" and d.start is not None]

    def results(self, *, hide: bool = False) -> list[dict[str, Any]]:
        """Upstream's detection objects; `hide` replaces blocked or redacted text by its placeholder."""
        out = []
        for d in self.detections:
            item = d.orchestrator_json()
            if hide and self.actions[id(d)] in ("block", "redact") and "text" in item:
                item["text"] = PLACEHOLDERS.get(d.detection, f"[{d.detection.upper()}]")
            out.append(item)
        return out


DetectionHook = Callable[[str, str, str, int], None]  # detector_id, direction, action, count


@dataclass
class OrchestratorConfig:
    registry: DetectorRegistry
    backend: ChatBackend | None = None
    input: dict[str, dict[str, Any]] = field(default_factory=dict)  # policy: detectors run on requests
    output: dict[str, dict[str, Any]] = field(default_factory=dict)  # ... and on answers
    actions: dict[str, dict[str, str]] = field(default_factory=lambda: {INPUT: {}, OUTPUT: {}})
    fallback_input: str = UNSUITABLE_INPUT_MESSAGE
    fallback_output: str = UNSUITABLE_OUTPUT_MESSAGE
    model: str | None = None


class Orchestrator:
    def __init__(self, config: OrchestratorConfig, on_detection: DetectionHook | None = None) -> None:
        self.config = config
        self.on_detection = on_detection or (lambda *_: None)

    # ---- selection ------------------------------------------------------------------------------------

    def select(self, detectors: Any, endpoint_types: tuple[str, ...], direction: str = INPUT) -> list[Selected]:
        if not isinstance(detectors, dict):
            raise OrchestratorError(422, f"invalid type: {_type_name(detectors)}, expected a map")
        out = []
        for detector_id, raw in detectors.items():
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                raise OrchestratorError(422, f"invalid type: {_type_name(raw)}, expected a map")
            params = dict(raw)
            threshold = params.pop("threshold", None)
            if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
                raise OrchestratorError(
                    422, f"`threshold` parameter specified for model `{detector_id}` must be a number")
            if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
                raise OrchestratorError(
                    422, f"`threshold` parameter specified for model `{detector_id}` must be between 0 and 1")
            spec = self.config.registry.get(detector_id)
            if spec is None:
                raise OrchestratorError(404, f"detector `{detector_id}` not found")
            if not any(t in spec.types for t in endpoint_types):
                raise OrchestratorError(422, f"detector `{detector_id}` is not supported by this endpoint")
            action = self.config.actions.get(direction, {}).get(detector_id, DEFAULT_ACTION[direction])
            out.append(Selected(detector_id, spec, {**spec.params, **params},
                                spec.default_threshold if threshold is None else float(threshold), action))
        return out

    # ---- running detectors ----------------------------------------------------------------------------

    def _record(self, selected: list[Selected], outcome: Outcome, direction: str) -> None:
        counts: dict[tuple[str, str], int] = {}
        for d in outcome.detections:
            key = (d.detector_id or "", outcome.actions[id(d)])
            counts[key] = counts.get(key, 0) + 1
        for (detector_id, action), n in counts.items():
            self.on_detection(detector_id, direction, action, n)

    def run_contents(self, selected: list[Selected], text: str, direction: str = INPUT) -> Outcome:
        return self._run_other(selected, lambda spec, p: spec.detector.detect(text, p), direction)

    def _run_other(self, selected: list[Selected], call: Callable[[DetectorSpec, dict[str, Any]], list[Detection]],
                   direction: str = INPUT) -> Outcome:
        outcome = Outcome()
        for s in selected:
            try:
                found = call(s.spec, s.params)
            except DetectorServiceError as err:
                raise OrchestratorError(err.status if err.status in (400, 404, 422, 503) else 500, str(err)) from err
            for d in found:
                if d.score >= s.threshold:
                    d.detector_id = s.id
                    outcome.detections.append(d)
                    outcome.actions[id(d)] = s.action
        self._record(selected, outcome, direction)
        return outcome

    # ---- standalone detection -------------------------------------------------------------------------

    def detect_content(self, body: Any) -> dict[str, Any]:
        check_fields(body, required=("detectors", "content"), types={"content": str, "detectors": dict})
        if not body["content"]:
            raise OrchestratorError(422, "`content` is required")
        if not body["detectors"]:
            raise OrchestratorError(422, "`detectors` is required")
        selected = self.select(body["detectors"], (TEXT_CONTENTS,))
        outcome = self.run_contents(selected, body["content"])
        return {"detections": [d.orchestrator_json() for d in outcome.detections]}

    def detect_chat(self, body: Any) -> dict[str, Any]:
        check_fields(body, required=("detectors", "messages"), optional=("tools",),
                     types={"messages": list, "detectors": dict, "tools": list})
        if not body["detectors"]:
            raise OrchestratorError(422, "`detectors` is required")
        if not body["messages"]:
            raise OrchestratorError(422, "`messages` is required")
        messages = check_messages(body["messages"])
        selected = self.select(body["detectors"], (TEXT_CHAT,))
        outcome = self._run_other(selected, lambda spec, p: spec.detector.detect_chat(messages, p))
        return {"detections": [_spanless(d) for d in outcome.detections]}

    def detect_generated(self, body: Any) -> dict[str, Any]:
        check_fields(body, required=("detectors", "prompt", "generated_text"),
                     types={"prompt": str, "generated_text": str, "detectors": dict})
        for key in ("prompt", "generated_text", "detectors"):
            if not body[key]:
                raise OrchestratorError(422, f"`{key}` is required")
        selected = self.select(body["detectors"], (TEXT_GENERATION,))
        outcome = self._run_other(selected, lambda spec, p: spec.detector.detect_generation(
            body["prompt"], body["generated_text"], p), OUTPUT)
        return {"detections": [_spanless(d) for d in outcome.detections]}

    def detect_context(self, body: Any) -> dict[str, Any]:
        check_fields(body, required=("detectors", "content", "context_type", "context"),
                     types={"content": str, "context_type": str, "context": list, "detectors": dict})
        if body["context_type"] not in ("docs", "url"):
            raise OrchestratorError(422, f"unknown variant `{body['context_type']}`, expected `docs` or `url`")
        if not body["content"]:
            raise OrchestratorError(422, "`content` is required")
        if not body["detectors"]:
            raise OrchestratorError(422, "`detectors` is required")
        if not all(isinstance(c, str) for c in body["context"]):
            raise OrchestratorError(422, "invalid type: `context` must be a sequence of strings")
        selected = self.select(body["detectors"], (TEXT_CONTEXT_DOC,))
        outcome = self._run_other(selected, lambda spec, p: spec.detector.detect_context(
            body["content"], body["context_type"], body["context"], p))
        return {"detections": [_spanless(d) for d in outcome.detections]}

    # ---- chat completions with detection --------------------------------------------------------------

    def _backend(self) -> ChatBackend:
        if self.config.backend is None:
            raise OrchestratorError(404, "no chat generation service is configured for this orchestrator "
                                         "(`chat_generation` in its config)")
        return self.config.backend

    def _detectors_block(self, body: dict[str, Any], use_policy: bool) -> tuple[list[Selected], list[Selected]]:
        if "detectors" in body:
            detectors = body["detectors"]
            if not isinstance(detectors, dict):
                raise OrchestratorError(422, f"invalid type: {_type_name(detectors)}, expected struct DetectorConfig")
            for key in detectors:
                if key not in (INPUT, OUTPUT):
                    raise OrchestratorError(422, f"unknown field `{key}`, expected `input` or `output`")
            raw_in, raw_out = detectors.get(INPUT) or {}, detectors.get(OUTPUT) or {}
        elif use_policy:
            raw_in, raw_out = self.config.input, self.config.output
        else:
            raise OrchestratorError(422, "missing field `detectors`")
        return (self.select(raw_in, (TEXT_CONTENTS,), INPUT),
                self.select(raw_out, (TEXT_CONTENTS, TEXT_CHAT), OUTPUT))

    def _prepare_chat(self, body: Any, use_policy: bool) -> tuple[dict[str, Any], list[Selected], list[Selected]]:
        check_fields(body, required=("messages",), strict=False, types={"messages": list, "stream": bool})
        if not body["messages"]:
            raise OrchestratorError(422, "No messages provided")
        check_messages(body["messages"])
        inputs, outputs = self._detectors_block(body, use_policy)
        request = {k: v for k, v in body.items() if k != "detectors"}
        if not request.get("model") and self.config.model:
            request["model"] = self.config.model
        return request, inputs, outputs

    async def _guard_chat_input(self, request: dict[str, Any], inputs: list[Selected]) -> tuple[Outcome | None, int]:
        """Run input detectors on the last message; redact it in `request` when asked. Returns the outcome and the
        last message's index."""
        messages = request["messages"]
        index = len(messages) - 1
        last = messages[index]
        if last.get("role") not in ("user", "assistant", "system"):
            raise OrchestratorError(422, "Last message role must be user, assistant, or system")
        if not inputs:
            return None, index
        text = message_text(last)
        outcome = await run_in_threadpool(self.run_contents, inputs, text, INPUT)
        if not outcome.blocked and outcome.to_redact():
            redacted = redact(text, outcome.to_redact())
            request["messages"] = [*messages[:index], {**last, "content": redacted}]
        return outcome, index

    def _blocked_chat(self, request: dict[str, Any], outcome: Outcome, index: int, *, fallback: bool,
                      chunk: bool = False) -> dict[str, Any]:
        prompt_tokens = len(message_text(request["messages"][index]).split())
        out: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk" if chunk else "chat.completion",
            "created": int(time.time()), "model": request.get("model") or "", "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens},
            "detections": {INPUT: [{"message_index": index, "results": outcome.results()}]},
            "warnings": [{"type": "UNSUITABLE_INPUT", "message": UNSUITABLE_INPUT_MESSAGE}],
        }
        if fallback:
            message = {"role": "assistant", "content": self.config.fallback_input}
            out["choices"] = [{"index": 0, "finish_reason": "content_filter", "logprobs": None,
                               **({"delta": message} if chunk else {"message": message})}]
        return out

    async def chat_completions(self, body: Any, *, use_policy: bool = False, fallback: bool = False
                               ) -> dict[str, Any]:
        """/api/v2/chat/completions-detection (unary). `use_policy`: detectors default to the configured policy
        (the guarded OpenAI endpoint); `fallback`: a blocked answer carries the fallback message as its choice."""
        request, inputs, outputs = self._prepare_chat(body, use_policy)
        backend = self._backend()
        outcome, index = await self._guard_chat_input(request, inputs)
        if outcome is not None and outcome.blocked:
            return self._blocked_chat(request, outcome, index, fallback=fallback)
        try:
            completion = await backend.chat({**request, "stream": False})
        except BackendError as err:
            raise OrchestratorError(err.status if err.status in (400, 404, 422, 503) else 500,
                                    f"chat completion request failed for `{request.get('model', '')}`: {err}") from err
        return await self.guard_chat_answer(completion, request, outputs, outcome, index)

    async def guard_chat_answer(self, completion: dict[str, Any], request: dict[str, Any], outputs: list[Selected],
                                outcome: Outcome | None, index: int) -> dict[str, Any]:
        """A chat completion from the model with the output policy applied: each choice's text checked, blocked
        text replaced by the fallback, redacted spans replaced; detections and warnings added."""
        detections: dict[str, Any] = {}
        warnings: list[dict[str, str]] = []
        if outcome is not None and outcome.detections:
            detections[INPUT] = [{"message_index": index, "results": outcome.results()}]
        if outputs:
            output_results = []
            unsuitable = False
            for choice in completion.get("choices") or []:
                message = choice.get("message") or {}
                text = message.get("content") or ""
                if not text:
                    warnings.append({"type": "EMPTY_OUTPUT",
                                     "message": f"Choice of index {choice.get('index', 0)} has no content. "
                                                "Output detection was not performed"})
                    continue
                result = await run_in_threadpool(self._guard_output_text, outputs, text, request["messages"])
                if result.detections:
                    unsuitable = True
                    output_results.append({"choice_index": choice.get("index", 0),
                                           "results": result.results(hide=True)})
                    choice["message"] = {**message, "content": self._apply_output(text, result)}
                    if result.blocked:
                        choice["finish_reason"] = "content_filter"
            if output_results:
                detections[OUTPUT] = output_results
            if unsuitable:
                warnings.append({"type": "UNSUITABLE_OUTPUT", "message": UNSUITABLE_OUTPUT_MESSAGE})
        completion["detections"] = detections
        if warnings:
            completion["warnings"] = warnings
        return completion

    def _guard_output_text(self, outputs: list[Selected], text: str, messages: list[dict[str, Any]]) -> Outcome:
        contents = [s for s in outputs if TEXT_CONTENTS in s.spec.types]
        chat = [s for s in outputs if TEXT_CONTENTS not in s.spec.types]
        outcome = self.run_contents(contents, text, OUTPUT)
        if chat:
            convo = [*messages, {"role": "assistant", "content": text}]
            extra = self._run_other(chat, lambda spec, p: spec.detector.detect_chat(convo, p), OUTPUT)
            outcome.detections += extra.detections
            outcome.actions.update(extra.actions)
        return outcome

    def _apply_output(self, text: str, outcome: Outcome) -> str:
        if outcome.blocked:
            return self.config.fallback_output
        spans = outcome.to_redact()
        return redact(text, spans) if spans else text

    async def chat_completions_stream(self, body: Any, *, use_policy: bool = False, fallback: bool = False
                                      ) -> AsyncIterator[dict[str, Any]]:
        """The `stream: true` variant: chunks of the answer are released one window (sentence) at a time, each
        checked by the output detectors first, so that flagged text is never streamed to the user."""
        request, inputs, outputs = self._prepare_chat(body, use_policy)
        backend = self._backend()
        outcome, index = await self._guard_chat_input(request, inputs)
        if outcome is not None and outcome.blocked:
            yield self._blocked_chat(request, outcome, index, fallback=fallback, chunk=True)
            return
        if outcome is not None and outcome.detections:
            yield {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": request.get("model") or "", "choices": [],
                   "detections": {INPUT: [{"message_index": index, "results": outcome.results()}]}}
        try:
            async for out in self.guard_chat_chunks(backend.stream_chat(request), request, outputs):
                yield out
        except BackendError as err:
            raise OrchestratorError(err.status if err.status in (400, 404, 422, 503) else 500,
                                    f"chat completion request failed for `{request.get('model', '')}`: {err}") from err

    async def guard_chat_chunks(self, chunks: AsyncIterator[dict[str, Any]], request: dict[str, Any],
                                outputs: list[Selected]) -> AsyncIterator[dict[str, Any]]:
        """Streamed chat chunks from the model with the output policy applied, one window at a time. Chunks
        without choices (a usage chunk) pass through."""
        windows: dict[int, Window] = {}
        stopped: set[int] = set()
        last: dict[str, Any] = {}
        async for chunk in chunks:
            if not chunk.get("choices"):
                if chunk.get("usage") is not None:
                    yield chunk
                continue
            last = chunk
            for choice in chunk.get("choices") or []:
                i = choice.get("index", 0)
                if i in stopped:
                    continue
                window = windows.setdefault(i, Window())
                delta = choice.get("delta") or {}
                ready = window.feed(delta.get("content") or "")
                if choice.get("finish_reason"):
                    ready += window.flush()
                async for out in self._release(chunk, i, ready, outputs, request, stopped,
                                               choice.get("finish_reason"), delta.get("role")):
                    yield out
        for i, window in windows.items():
            if i not in stopped:
                async for out in self._release(last, i, window.flush(), outputs, request, stopped, None, None):
                    yield out

    async def _release(self, chunk: dict[str, Any], index: int, segments: list[str], outputs: list[Selected],
                       request: dict[str, Any], stopped: set[int], finish_reason: str | None,
                       role: str | None) -> AsyncIterator[dict[str, Any]]:
        base = {k: chunk.get(k) for k in ("id", "object", "created", "model")}
        if not segments and finish_reason is None and role is None:
            return
        pieces = segments or [""]
        for n, segment in enumerate(pieces):
            content = segment
            extra: dict[str, Any] = {}
            reason = finish_reason if n == len(pieces) - 1 else None
            if outputs and segment.strip():
                result = await run_in_threadpool(self._guard_output_text, outputs, segment, request["messages"])
                if result.detections:
                    extra = {"detections": {OUTPUT: [{"choice_index": index, "results": result.results(hide=True)}]},
                             "warnings": [{"type": "UNSUITABLE_OUTPUT", "message": UNSUITABLE_OUTPUT_MESSAGE}]}
                    content = self._apply_output(segment, result)
                    if result.blocked:
                        stopped.add(index)
                        reason = "content_filter"
            delta: dict[str, Any] = {"content": content}
            if role:
                delta["role"] = role
            yield {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}],
                   **extra}
            if index in stopped:
                return

    # ---- text completions with detection --------------------------------------------------------------

    async def completions(self, body: Any, *, use_policy: bool = False) -> dict[str, Any]:
        check_fields(body, required=("prompt",), strict=False, types={"prompt": str, "stream": bool})
        if not body["prompt"]:
            raise OrchestratorError(422, "`prompt` is required")
        inputs, outputs = self._detectors_block(body, use_policy)
        request = {k: v for k, v in body.items() if k != "detectors"}
        if not request.get("model") and self.config.model:
            request["model"] = self.config.model
        backend = self._backend()
        detections: dict[str, Any] = {}
        if inputs:
            outcome = await run_in_threadpool(self.run_contents, inputs, request["prompt"], INPUT)
            if outcome.blocked:
                return self.blocked_completion(request, outcome)
            if outcome.detections:
                detections[INPUT] = [{"results": outcome.results()}]
                if outcome.to_redact():
                    request["prompt"] = redact(request["prompt"], outcome.to_redact())
        try:
            completion = await backend.completions({**request, "stream": False})
        except BackendError as err:
            raise OrchestratorError(err.status if err.status in (400, 404, 422, 503) else 500,
                                    f"completion request failed for `{request.get('model', '')}`: {err}") from err
        return await self.guard_completion_answer(completion, outputs, detections)

    @staticmethod
    def blocked_completion(request: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
        tokens = len(str(request.get("prompt") or "").split())
        return {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
                "model": request.get("model") or "", "choices": [],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
                "detections": {INPUT: [{"results": outcome.results()}]},
                "warnings": [{"type": "UNSUITABLE_INPUT", "message": UNSUITABLE_INPUT_MESSAGE}]}

    async def guard_completion_answer(self, completion: dict[str, Any], outputs: list[Selected],
                                      detections: dict[str, Any]) -> dict[str, Any]:
        """A text completion from the model with the output policy applied (as `guard_chat_answer`)."""
        warnings: list[dict[str, str]] = []
        output_results = []
        for choice in completion.get("choices") or []:
            text = choice.get("text") or ""
            if not outputs or not text:
                continue
            result = await run_in_threadpool(self.run_contents, [s for s in outputs if TEXT_CONTENTS in s.spec.types],
                                             text, OUTPUT)
            if result.detections:
                output_results.append({"choice_index": choice.get("index", 0), "results": result.results(hide=True)})
                choice["text"] = self._apply_output(text, result)
                if result.blocked:
                    choice["finish_reason"] = "content_filter"
        if output_results:
            detections[OUTPUT] = output_results
            warnings.append({"type": "UNSUITABLE_OUTPUT", "message": UNSUITABLE_OUTPUT_MESSAGE})
        completion["detections"] = detections
        if warnings:
            completion["warnings"] = warnings
        return completion

    async def completions_stream(self, body: Any, *, use_policy: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Streaming text completions: the same windows as chat, over `choices[].text`."""
        check_fields(body, required=("prompt",), strict=False, types={"prompt": str})
        if not body["prompt"]:
            raise OrchestratorError(422, "`prompt` is required")
        as_chat = {k: v for k, v in body.items() if k != "prompt"}
        as_chat["messages"] = [{"role": "user", "content": body["prompt"]}]
        backend = self._backend()

        class _Adapter:
            def stream_chat(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
                return _text_to_chat(backend.stream_completions(
                    {**{k: v for k, v in request.items() if k != "messages"},
                     "prompt": message_text(request["messages"][-1])}))

        inner = Orchestrator(OrchestratorConfig(**{**self.config.__dict__, "backend": _Adapter()}),  # type: ignore
                             self.on_detection)
        async for chunk in inner.chat_completions_stream(as_chat, use_policy=use_policy):
            out = {**chunk, "object": "text_completion"}
            out["choices"] = [{"index": c.get("index", 0), "text": (c.get("delta") or {}).get("content", ""),
                               "logprobs": None, "finish_reason": c.get("finish_reason")}
                              for c in chunk.get("choices") or []]
            if "detections" in out and INPUT in out["detections"]:
                out["detections"] = {INPUT: [{"results": e["results"]} for e in out["detections"][INPUT]]}
            yield out

    # ---- v1 classification with text generation -------------------------------------------------------

    async def classification_with_text_generation(self, body: Any) -> dict[str, Any]:
        check_fields(body, required=("model_id", "inputs"), optional=("guardrail_config", "text_gen_parameters"),
                     types={"model_id": str, "inputs": str, "guardrail_config": dict, "text_gen_parameters": dict})
        if not body["model_id"]:
            raise OrchestratorError(422, "`model_id` is required")
        if not body["inputs"]:
            raise OrchestratorError(422, "`inputs` is required")
        inputs_text: str = body["inputs"]
        config = body.get("guardrail_config") or {}
        input_cfg, output_cfg = (_struct(config.get(key), f"guardrail_config.{key}") for key in (INPUT, OUTPUT))
        masks = input_cfg.get("masks") or []
        if not isinstance(masks, list) or not all(
                isinstance(m, list) and len(m) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in m)
                and 0 <= m[0] < m[1] <= len(inputs_text) for m in masks):
            raise OrchestratorError(422, "invalid masks")
        inputs = self.select(input_cfg.get("models") or {}, (TEXT_CONTENTS,), INPUT)
        outputs = self.select(output_cfg.get("models") or {}, (TEXT_CONTENTS,), OUTPUT)
        backend = self._backend()
        input_tokens = len(inputs_text.split())
        result: dict[str, Any] = {"input_token_count": input_tokens, "token_classification_results": {}}
        if inputs:
            found: list[dict[str, Any]] = []
            ranges = [tuple(m) for m in masks] or [(0, len(inputs_text))]
            for start, end in ranges:
                outcome = await run_in_threadpool(self.run_contents, inputs, inputs_text[start:end], INPUT)
                for d in outcome.detections:
                    found.append(_token_result(d, start))
            if found:
                result["token_classification_results"] = {INPUT: found}
                result["warnings"] = [{"id": "UNSUITABLE_INPUT", "message": UNSUITABLE_INPUT_MESSAGE}]
                return result
        params = body.get("text_gen_parameters") or {}
        request = {"model": body["model_id"], "prompt": inputs_text,
                   "max_tokens": params.get("max_new_tokens", 64)}
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                             ("stop_sequences", "stop")):
            if ours in params:
                request[theirs] = params[ours]
        try:
            completion = await backend.completions(request)
        except BackendError as err:
            raise OrchestratorError(err.status if err.status in (400, 404, 422, 503) else 500,
                                    f"generate request failed for `{body['model_id']}`: {err}") from err
        choice = (completion.get("choices") or [{}])[0]
        text = choice.get("text") or ""
        usage = completion.get("usage") or {}
        result.update(generated_text=text,
                      finish_reason="MAX_TOKENS" if choice.get("finish_reason") == "length" else "EOS_TOKEN",
                      generated_token_count=int(usage.get("completion_tokens") or len(text.split())),
                      input_token_count=int(usage.get("prompt_tokens") or input_tokens))
        if outputs and text:
            outcome = await run_in_threadpool(self.run_contents, outputs, text, OUTPUT)
            if outcome.detections:
                result["token_classification_results"] = {OUTPUT: [_token_result(d, 0) for d in outcome.detections]}
                if outcome.blocked:
                    result["generated_text"] = self.config.fallback_output
                elif outcome.to_redact():
                    result["generated_text"] = redact(text, outcome.to_redact())
        return result


def _struct(value: Any, where: str) -> dict[str, Any]:
    """An optional object of the request: absent or null is empty; anything but a map is serde's 422."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OrchestratorError(422, f"invalid type: {_type_name(value)}, expected a map at `{where}`")
    return value


def _token_result(d: Detection, offset: int) -> dict[str, Any]:
    return {"start": (d.start or 0) + offset, "end": (d.end or 0) + offset, "word": d.text or "",
            "entity": d.detection, "entity_group": d.detection_type, "score": round(float(d.score), 6)}


def _spanless(d: Detection) -> dict[str, Any]:
    out = d.spanless_json()
    if d.detector_id:
        out["detector_id"] = d.detector_id
    return out


def check_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Each chat message an object with a role and string-or-parts content (serde's checks, upstream's messages)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise OrchestratorError(422, f"invalid type: {_type_name(m)}, expected struct Message at messages[{i}]")
        if "role" not in m:
            raise OrchestratorError(422, f"missing field `role` at messages[{i}]")
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise OrchestratorError(422, "if content is empty, tool_calls must be provided")
        if content is not None and not isinstance(content, str | list):
            raise OrchestratorError(422, f"invalid type: {_type_name(content)}, expected a string or an array "
                                         f"of content parts at messages[{i}].content")
    return messages


async def _text_to_chat(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    async for chunk in chunks:
        yield {**chunk, "choices": [{"index": c.get("index", 0), "delta": {"content": c.get("text") or ""},
                                     "finish_reason": c.get("finish_reason")} for c in chunk.get("choices") or []]}


class Window:
    """Holds streamed text back until a sentence ends (or 240 characters pile up), so that output detectors see
    whole sentences — a name or an insult split across two chunks is still one span to them."""

    LIMIT = 240

    def __init__(self) -> None:
        self.buffer = ""

    def feed(self, text: str) -> list[str]:
        self.buffer += text
        out = []
        while True:
            cut = _boundary(self.buffer)
            if cut is None and len(self.buffer) > self.LIMIT:
                space = self.buffer.rfind(" ", 0, self.LIMIT)
                cut = space + 1 if space > 0 else self.LIMIT
            if cut is None:
                return out
            out.append(self.buffer[:cut])
            self.buffer = self.buffer[cut:]

    def flush(self) -> list[str]:
        out, self.buffer = ([self.buffer] if self.buffer else []), ""
        return out


def _boundary(text: str) -> int | None:
    for i, c in enumerate(text):
        if c == "\n" or (c in ".!?" and i + 1 < len(text) and text[i + 1] in " \n"):
            return i + 1 if c == "\n" else i + 2
    return None
