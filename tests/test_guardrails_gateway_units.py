"""The pure parts of the guarded-InferenceService hook: which paths it guards, SSE parsing however the bytes were
cut, a streamed answer assembled for the log, and the log's redaction of every string in a record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from kaip.guardrails.config import parse_config
from kaip.guardrails.gateway import (
    assemble_stream,
    endpoint_kind,
    log_selection,
    parse_sse_text,
    record_redactor,
    sse,
    sse_events,
)
from kaip.guardrails.orchestrator import Orchestrator

CONFIG = """
kaip:
  inferenceService: chatbot
  input: {prompt-injection: {action: block}}
  output: {pii: {action: flag}, hap: {action: block}}
"""


def test_endpoint_kind() -> None:
    assert endpoint_kind("/openai/v1/chat/completions") == "chat"
    assert endpoint_kind("/v1/chat/completions/") == "chat"
    assert endpoint_kind("/openai/v1/completions?x=1") == "completions"
    assert endpoint_kind("/v1/models/iris:predict") is None
    assert endpoint_kind("/openai/v1/embeddings") is None


def _chunks(texts: list[str]) -> list[dict[str, Any]]:
    return [{"id": "c", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": "stop" if i == len(texts) - 1
                          else None}]} for i, t in enumerate(texts)]


def test_sse_events_survive_any_cut_and_stop_at_done() -> None:
    raw = sse(_chunks(["My SSN is 123-", "45-6789."])) + b"data: {\"after\": \"done\"}\n\n"

    async def collect(size: int) -> list[dict[str, Any]]:
        async def source() -> AsyncIterator[bytes]:
            for i in range(0, len(raw), size):
                yield raw[i:i + size]
        return [e async for e in sse_events(source())]

    for size in (1, 3, 17, len(raw)):
        assert asyncio.run(collect(size)) == _chunks(["My SSN is 123-", "45-6789."])


def test_streamed_answer_is_logged_whole_and_redacted() -> None:
    text = sse(_chunks(["Her SSN is 123-", "45-6789 and mail jane.r", "oe@example.com."])).decode()
    chunks = parse_sse_text(text)
    assert chunks is not None
    assembled = assemble_stream(chunks)
    assert assembled["choices"] == [{"index": 0, "text": "Her SSN is 123-45-6789 and mail jane.roe@example.com.",
                                     "finish_reason": "stop"}]
    assert parse_sse_text('{"not": "a stream"}') is None

    orchestrator = Orchestrator(parse_config(CONFIG).config)
    selected = log_selection(orchestrator)
    assert [s.id for s in selected] == ["pii"]  # attached PII; HAP and injection findings are not log redactions
    detections: dict[str, list[Any]] = {"input": [], "output": [{"choice_index": 0, "results": [
        {"detection": "social_security_number", "text": "123-45-6789"}]}]}
    record = record_redactor(selected, detections)({
        "request": {"messages": [{"role": "user", "content": "call me at 650-253-0000, SSN 123-45-6789"}]},
        "response": text})
    logged = json.dumps(record)
    assert "123-45-6789" not in logged and "jane.roe@example.com" not in logged and "650-253-0000" not in logged
    assert record["response"]["choices"][0]["text"] == "Her SSN is [SSN] and mail [EMAIL]."
    assert record["detections"] == {"output": [{"choice_index": 0, "results": [
        {"detection": "social_security_number", "text": "[SSN]"}]}]}


def test_without_a_pii_detector_nothing_is_redacted_in_the_log() -> None:
    orchestrator = Orchestrator(parse_config("kaip:\n  output: {hap: {action: block}}\n").config)
    selected = log_selection(orchestrator)
    assert selected == []
    record = record_redactor(selected, {"input": [], "output": []})({"request": {"prompt": "SSN 123-45-6789"},
                                                                     "response": None})
    assert record == {"request": {"prompt": "SSN 123-45-6789"}, "response": None}
