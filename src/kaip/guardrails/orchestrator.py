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
from dataclasses import dataclass, field, replace
from functools import partial
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
                item["text"] = _placeholder(d)
            out.append(item)
        return out


@dataclass
class Released:
    """One window of a streamed text after the detectors saw it (`Orchestrator.guard_windows`)."""

    index: int  # the choice's index
    start: int  # where the window starts in the choice's whole text, in characters
    text: str  # the window as the model (or client) wrote it
    content: str  # what may be delivered of it: the text, its redaction, or the fallback message
    outcome: Outcome | None  # None: not checked (no detectors, or only whitespace)
    finish_reason: str | None
    role: str | None
    chunk: dict[str, Any]  # the chunk that completed the window

    @property
    def end(self) -> int:
        return self.start + len(self.text)


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
        check = (lambda text: self._guard_output_text(outputs, text, request["messages"])) if outputs else None
        async for item in self.guard_windows(chunks, check):
            if isinstance(item, dict):
                yield item
                continue
            extra: dict[str, Any] = {}
            reason = item.finish_reason
            if item.outcome is not None and item.outcome.detections:
                extra = {"detections": {OUTPUT: [{"choice_index": item.index,
                                                  "results": item.outcome.results(hide=True)}]},
                         "warnings": [{"type": "UNSUITABLE_OUTPUT", "message": UNSUITABLE_OUTPUT_MESSAGE}]}
                if item.outcome.blocked:
                    reason = "content_filter"
            delta: dict[str, Any] = {"content": item.content}
            if item.role:
                delta["role"] = item.role
            base = {k: item.chunk.get(k) for k in ("id", "object", "created", "model")}
            yield {**base, "choices": [{"index": item.index, "delta": delta, "logprobs": None,
                                        "finish_reason": reason}], **extra}

    async def guard_windows(self, chunks: AsyncIterator[dict[str, Any]], check: Callable[[str], Outcome] | None
                            ) -> AsyncIterator[Released | dict[str, Any]]:
        """The windowing every streamed route shares: each choice's `delta.content` is cut into windows (`Window`),
        each window is checked by `check` (in a thread; None: not checked) and then released with what may be
        delivered of it. After a window whose outcome blocks, that choice releases nothing more. A chunk without
        choices that carries usage is passed through as it is."""
        windows: dict[int, Window] = {}
        offsets: dict[int, int] = {}
        stopped: set[int] = set()
        last: dict[str, Any] = {}

        async def release(chunk: dict[str, Any], index: int, segments: list[str], finish_reason: str | None,
                          role: str | None) -> AsyncIterator[Released]:
            if not segments and finish_reason is None and role is None:
                return
            pieces = segments or [""]  # a finish_reason or role with no text yet still goes out
            for n, segment in enumerate(pieces):
                outcome, content = None, segment
                if check is not None and segment.strip():
                    outcome = await run_in_threadpool(check, segment)
                    if outcome.detections:
                        content = self._apply_output(segment, outcome)
                    if outcome.blocked:
                        stopped.add(index)
                start = offsets.get(index, 0)
                offsets[index] = start + len(segment)
                yield Released(index, start, segment, content, outcome,
                               finish_reason if n == len(pieces) - 1 else None, role, chunk)
                if index in stopped:
                    return

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
                async for out in release(chunk, i, ready, choice.get("finish_reason"), delta.get("role")):
                    yield out
        for i, window in windows.items():
            if i not in stopped:
                async for out in release(last, i, window.flush(), None, None):
                    yield out

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

    def _prepare_classification(self, body: Any) -> tuple[list[tuple[int, int]], list[Selected], list[Selected]]:
        """Upstream's checks of a GuardrailsHttpRequest: the masks and the input and output detectors."""
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
        return [(m[0], m[1]) for m in masks], inputs, outputs

    async def _classify_input(self, text: str, masks: list[tuple[int, int]], inputs: list[Selected]
                              ) -> list[dict[str, Any]]:
        """Input detections over the masked ranges (the whole text without masks), as TokenClassificationResults
        with offsets into the whole text."""
        found: list[dict[str, Any]] = []
        for start, end in masks or [(0, len(text))]:
            outcome = await run_in_threadpool(self.run_contents, inputs, text[start:end], INPUT)
            found += _token_results(outcome, start)
        return found

    @staticmethod
    def _generation_request(model_id: str, prompt: str, params: dict[str, Any]) -> dict[str, Any]:
        """Upstream's text_gen_parameters as an OpenAI completions request to the generation backend."""
        request = {"model": model_id, "prompt": prompt, "max_tokens": params.get("max_new_tokens", 64)}
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                             ("stop_sequences", "stop")):
            if ours in params:
                request[theirs] = params[ours]
        return request

    @staticmethod
    def _generate_error(err: BackendError, model_id: str) -> OrchestratorError:
        return OrchestratorError(err.status if err.status in (400, 404, 422, 503) else 500,
                                 f"generate request failed for `{model_id}`: {err}")

    async def classification_with_text_generation(self, body: Any) -> dict[str, Any]:
        masks, inputs, outputs = self._prepare_classification(body)
        backend = self._backend()
        inputs_text: str = body["inputs"]
        input_tokens = len(inputs_text.split())
        result: dict[str, Any] = {"input_token_count": input_tokens, "token_classification_results": {}}
        if inputs:
            found = await self._classify_input(inputs_text, masks, inputs)
            if found:
                result["token_classification_results"] = {INPUT: found}
                result["warnings"] = [{"id": "UNSUITABLE_INPUT", "message": UNSUITABLE_INPUT_MESSAGE}]
                return result
        request = self._generation_request(body["model_id"], inputs_text, body.get("text_gen_parameters") or {})
        try:
            completion = await backend.completions(request)
        except BackendError as err:
            raise self._generate_error(err, body["model_id"]) from err
        choice = (completion.get("choices") or [{}])[0]
        text = choice.get("text") or ""
        usage = completion.get("usage") or {}
        result.update(generated_text=text, finish_reason=_finish_reason(choice.get("finish_reason")),
                      generated_token_count=int(usage.get("completion_tokens") or len(text.split())),
                      input_token_count=int(usage.get("prompt_tokens") or input_tokens))
        if outputs and text:
            outcome = await run_in_threadpool(self.run_contents, outputs, text, OUTPUT)
            if outcome.detections:
                # blocked or redacted text is not delivered, so its results show the placeholder
                result["token_classification_results"] = {OUTPUT: _token_results(outcome, 0, hide=True)}
                result["generated_text"] = self._apply_output(text, outcome)
        return result

    async def classification_with_text_generation_stream(self, body: Any) -> AsyncIterator[dict[str, Any]]:
        """/api/v1/task/server-streaming-classification-with-text-generation: ClassifiedGeneratedTextStreamResults.
        An input detection is one result with UNSUITABLE_INPUT and nothing is generated. Without output detectors
        the model's chunks are forwarded as they come; with them, the text goes out one window at a time (the
        windows of the streaming completions routes), each with its `start_index`, `processed_index` and output
        results (spans relative to the window, as upstream). A window that an output `block` stops is replaced by
        the fallback message with `finish_reason: CANCELLED`, and the stream ends there."""
        masks, inputs, outputs = self._prepare_classification(body)
        backend = self._backend()
        model_id, inputs_text = body["model_id"], body["inputs"]
        input_tokens = len(inputs_text.split())
        if inputs:
            found = await self._classify_input(inputs_text, masks, inputs)
            if found:
                yield {"input_token_count": input_tokens, "token_classification_results": {INPUT: found},
                       "warnings": [{"id": "UNSUITABLE_INPUT", "message": UNSUITABLE_INPUT_MESSAGE}]}
                return
        request = self._generation_request(model_id, inputs_text, body.get("text_gen_parameters") or {})
        generated = 0  # chunks with text so far: a token each from vLLM's stream

        async def counted() -> AsyncIterator[dict[str, Any]]:
            nonlocal generated
            async for chunk in backend.stream_completions(request):
                generated += sum(1 for c in (chunk.get("choices") or [])[:1] if c.get("text"))
                yield chunk

        try:
            if not outputs:
                async for chunk in counted():
                    for choice in (chunk.get("choices") or [])[:1]:  # upstream generates one sequence
                        out = {"generated_text": choice.get("text") or "", "token_classification_results": {},
                               "input_token_count": input_tokens, "generated_token_count": generated}
                        if choice.get("finish_reason"):
                            out["finish_reason"] = _finish_reason(choice["finish_reason"])
                        yield out
                return
            check = partial(self.run_contents, outputs, direction=OUTPUT)
            async for item in self.guard_windows(_text_to_chat(counted()), check):
                if not isinstance(item, Released) or item.index != 0 or not (item.text or item.finish_reason):
                    continue
                out = {"generated_text": item.content,
                       "token_classification_results": {OUTPUT: _token_results(item.outcome, 0, hide=True)},
                       "input_token_count": input_tokens, "generated_token_count": generated,
                       "start_index": item.start, "processed_index": item.end}
                if item.outcome is not None and item.outcome.blocked:
                    out["finish_reason"] = "CANCELLED"  # the orchestrator stopped the generation
                elif item.finish_reason:
                    out["finish_reason"] = _finish_reason(item.finish_reason)
                yield out
        except BackendError as err:
            raise self._generate_error(err, model_id) from err

    # ---- generation with detection --------------------------------------------------------------------

    async def generation_with_detection(self, body: Any) -> dict[str, Any]:
        """/api/v2/text/generation-detection: generate, then run text_generation detectors on (prompt, text)."""
        check_fields(body, required=("model_id", "prompt", "detectors"), optional=("text_gen_parameters",),
                     types={"model_id": str, "prompt": str, "detectors": dict, "text_gen_parameters": dict})
        for key in ("model_id", "prompt", "detectors"):
            if not body[key]:
                raise OrchestratorError(422, f"`{key}` is required")
        selected = self.select(body["detectors"], (TEXT_GENERATION,), OUTPUT)
        backend = self._backend()
        prompt: str = body["prompt"]
        request = self._generation_request(body["model_id"], prompt, body.get("text_gen_parameters") or {})
        try:
            completion = await backend.completions(request)
        except BackendError as err:
            raise self._generate_error(err, body["model_id"]) from err
        text = ((completion.get("choices") or [{}])[0].get("text")) or ""
        usage = completion.get("usage") or {}
        outcome = await run_in_threadpool(self._run_other, selected, lambda spec, p: spec.detector.detect_generation(
            prompt, text, p), OUTPUT)
        # Kaip's output actions: text_generation detections carry no span to redact, so a `redact` withholds the
        # text as a `block` does (fail closed), and either hides what the detections' evidence quotes.
        withheld = {id(d) for d in outcome.detections if outcome.actions[id(d)] in ("block", "redact")}
        return {"generated_text": self.config.fallback_output if withheld else text,
                "detections": [_spanless(d, hide=id(d) in withheld) for d in outcome.detections],
                "input_token_count": int(usage.get("prompt_tokens") or len(prompt.split()))}

    # ---- streamed content detection -------------------------------------------------------------------

    async def open_content_stream(self, messages: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
        """/api/v2/text/detection/stream-content. `messages`: the request's objects as they arrive. The first is
        read and checked here (so that its problems are the caller's 4xx); the answer is the stream of
        DetectionContentStreamResponses, one per window of the text so far (the streaming routes' windows), with
        `start_index` and `processed_index` into the whole text and spans relative to the window, as upstream. A
        later message's problem ends that stream with an OrchestratorError."""
        first = await anext(messages, None)
        if first is not None:
            _stream_message(first)
        if first is None or first.get("detectors") is None:
            raise OrchestratorError(422, "`detectors` is required for the first message")
        if not first["detectors"]:
            raise OrchestratorError(422, "`detectors` must not be empty")
        # detection only: nothing is delivered, so nothing is blocked
        selected = [replace(s, action="flag") for s in self.select(first["detectors"], (TEXT_CONTENTS,))]
        return self._content_windows(selected, first["content"], messages)

    async def _content_windows(self, selected: list[Selected], first: str, messages: AsyncIterator[Any]
                               ) -> AsyncIterator[dict[str, Any]]:
        async def as_chunks() -> AsyncIterator[dict[str, Any]]:
            yield {"choices": [{"index": 0, "delta": {"content": first}}]}
            async for message in messages:
                _stream_message(message)
                yield {"choices": [{"index": 0, "delta": {"content": message["content"]}}]}

        async for item in self.guard_windows(as_chunks(), partial(self.run_contents, selected)):
            if isinstance(item, Released) and item.text:
                found = item.outcome.detections if item.outcome is not None else []
                yield {"detections": [d.orchestrator_json() for d in found], "processed_index": item.end,
                       "start_index": item.start}


def _stream_message(message: Any) -> None:
    """One message of /stream-content: serde's checks of StreamingContentDetectionRequest, then upstream's."""
    check_fields(message, required=("content",), optional=("detectors",),
                 types={"content": str, "detectors": dict})
    if not message["content"]:
        raise OrchestratorError(422, "`content` cannot be empty")


def _finish_reason(reason: str | None) -> str:
    return "MAX_TOKENS" if reason == "length" else "EOS_TOKEN"


def _struct(value: Any, where: str) -> dict[str, Any]:
    """An optional object of the request: absent or null is empty; anything but a map is serde's 422."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OrchestratorError(422, f"invalid type: {_type_name(value)}, expected a map at `{where}`")
    return value


def _placeholder(d: Detection) -> str:
    return PLACEHOLDERS.get(d.detection, f"[{d.detection.upper()}]")


def _token_results(outcome: Outcome | None, offset: int, *, hide: bool = False) -> list[dict[str, Any]]:
    """TokenClassificationResults; `hide` replaces the word of a blocked or redacted span by its placeholder."""
    out = []
    for d in outcome.detections if outcome is not None else []:
        hidden = hide and outcome is not None and outcome.actions[id(d)] in ("block", "redact")
        out.append({"start": (d.start or 0) + offset, "end": (d.end or 0) + offset,
                    "word": _placeholder(d) if hidden else d.text or "", "entity": d.detection,
                    "entity_group": d.detection_type, "score": round(float(d.score), 6)})
    return out


def _spanless(d: Detection, *, hide: bool = False) -> dict[str, Any]:
    """A spanless detection with its detector's id; `hide` replaces the values its evidence quotes."""
    out = d.spanless_json()
    if d.detector_id:
        out["detector_id"] = d.detector_id
    if hide and out.get("evidence"):
        out["evidence"] = _hide_evidence(out["evidence"], _placeholder(d))
    return out


def _hide_evidence(evidence: list[Any], placeholder: str) -> list[Any]:
    out = []
    for e in evidence:
        if isinstance(e, dict):
            e = {**e, **({"value": placeholder} if "value" in e else {})}
            if isinstance(e.get("evidence"), list):
                e["evidence"] = _hide_evidence(e["evidence"], placeholder)
        out.append(e)
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
