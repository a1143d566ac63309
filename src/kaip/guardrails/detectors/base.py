"""The detector contract, in the Detectors API's terms.

A detector is `text_contents` at heart: given a text it returns spans (start, end, text, detection,
detection_type, score). The other three shapes of the API (chat, generation, context documents) are derived
from it here, so that a detector class only has to implement `detect`; a detector that genuinely looks at a
conversation (or at a prompt and its answer together) overrides the method it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

TEXT_CONTENTS = "text_contents"
TEXT_CHAT = "text_chat"
TEXT_GENERATION = "text_generation"
TEXT_CONTEXT_DOC = "text_context_doc"
DETECTOR_TYPES = (TEXT_CONTENTS, TEXT_CHAT, TEXT_GENERATION, TEXT_CONTEXT_DOC)


@dataclass
class Detection:
    """One finding. Spans are [start, end) character offsets into the analysed text."""

    detection: str
    detection_type: str
    score: float
    start: int | None = None
    end: int | None = None
    text: str | None = None
    evidence: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    detector_id: str | None = None

    def content_json(self) -> dict[str, Any]:
        """A ContentAnalysisResponse (span included)."""
        out: dict[str, Any] = {"start": self.start if self.start is not None else 0,
                               "end": self.end if self.end is not None else 0,
                               "text": self.text if self.text is not None else "",
                               "detection": self.detection, "detection_type": self.detection_type,
                               "score": round(float(self.score), 6)}
        if self.evidence:
            out["evidence"] = self.evidence
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def spanless_json(self) -> dict[str, Any]:
        """A ChatAnalysisResponse / GenerationAnalysisResponse / ContextAnalysisResponse (no span)."""
        out: dict[str, Any] = {"detection": self.detection, "detection_type": self.detection_type,
                               "score": round(float(self.score), 6)}
        if self.evidence:
            out["evidence"] = self.evidence
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def orchestrator_json(self, *, spans: bool = True) -> dict[str, Any]:
        out = self.content_json() if spans and self.start is not None else self.spanless_json()
        if self.detector_id:
            out["detector_id"] = self.detector_id
        return out


@runtime_checkable
class Detector(Protocol):
    """What the registry holds. `params` are the request's `detector_params` (threshold already removed)."""

    detector_type: str
    default_threshold: float

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]: ...

    def detect_chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> list[Detection]: ...

    def detect_generation(self, prompt: str, generated_text: str, params: dict[str, Any]) -> list[Detection]: ...

    def detect_context(self, content: str, context_type: str, context: list[str],
                       params: dict[str, Any]) -> list[Detection]: ...


class BaseDetector:
    """Derives the chat, generation and context shapes from `detect`."""

    detector_type: ClassVar[str] = TEXT_CONTENTS
    default_threshold: float = 0.5

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        raise NotImplementedError

    def detect_chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> list[Detection]:
        """The strongest finding per detection over every message's text, with the message index as evidence."""
        best: dict[str, Detection] = {}
        for index, message in enumerate(messages):
            for d in self.detect(message_text(message), params):
                if d.detection not in best or d.score > best[d.detection].score:
                    best[d.detection] = Detection(d.detection, d.detection_type, d.score, metadata={
                        "message_index": index, "role": message.get("role", "")})
        return sorted(best.values(), key=lambda d: -d.score)

    def detect_generation(self, prompt: str, generated_text: str, params: dict[str, Any]) -> list[Detection]:
        return [Detection(d.detection, d.detection_type, d.score, evidence=[{"name": "span", "value": d.text or ""}])
                for d in self.detect(generated_text, params)]

    def detect_context(self, content: str, context_type: str, context: list[str],
                       params: dict[str, Any]) -> list[Detection]:
        return [Detection(d.detection, d.detection_type, d.score) for d in self.detect(content, params)]


def message_text(message: dict[str, Any]) -> str:
    """The text of an OpenAI message: a string, or the text parts of a content array."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""
