"""The detector registry: built-in detectors, and the ones users add — a list of regular expressions, a Python
class (`module:Class`), or any HTTP service that speaks the Detectors API."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from kaip.guardrails.detectors.base import (
    DETECTOR_TYPES,
    TEXT_CHAT,
    TEXT_CONTENTS,
    TEXT_CONTEXT_DOC,
    TEXT_GENERATION,
    BaseDetector,
    Detection,
    Detector,
)

ALL_TYPES = frozenset(DETECTOR_TYPES)


@dataclass
class DetectorSpec:
    """A detector as the orchestrator knows it: which endpoint shapes it serves and its default threshold."""

    id: str
    detector: Detector
    types: frozenset[str] = ALL_TYPES
    default_threshold: float = 0.5
    chunker_id: str = "whole_doc_chunker"
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # fixed detector_params, merged under the request's


class DetectorRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, DetectorSpec] = {}

    def register(self, spec: DetectorSpec) -> DetectorSpec:
        self._specs[spec.id] = spec
        return spec

    def get(self, detector_id: str) -> DetectorSpec | None:
        return self._specs.get(detector_id)

    def ids(self) -> list[str]:
        return sorted(self._specs)

    def copy(self) -> DetectorRegistry:
        out = DetectorRegistry()
        out._specs = dict(self._specs)
        return out


# ---- regular expressions (TrustyAI's built-in detector names, or any pattern) ---------------------------

TRUSTYAI_REGEXES = {
    "email": ("email_address", r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"),
    "credit-card": ("credit_card", r"\b(?:\d[ \-]?){12,18}\d\b"),
    "ipv4": ("ipv4", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "ipv6": ("ipv6", r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"),
    "us-social-security-number": ("social_security_number", r"\b\d{3}[- ]\d{2}[- ]\d{4}\b"),
    "us-phone-number": ("us_phone_number", r"(?:\+1[ \-.]?)?\(?\b\d{3}\)?[ \-.]?\d{3}[ \-.]?\d{4}\b"),
    "uk-post-code": ("uk_post_code", r"\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b"),
}


class RegexDetector(BaseDetector):
    """Patterns by name: TrustyAI's (`email`, `credit-card`, `us-social-security-number`, …) or any regular
    expression. Fixed patterns come from configuration; a request may name more in detector_params `regex`."""

    def __init__(self, patterns: list[str] | dict[str, str] | None = None, detection_type: str = "pii") -> None:
        self.detection_type = detection_type
        self.fixed = self._compile(patterns or [])

    @staticmethod
    def _compile(patterns: list[str] | dict[str, str]) -> list[tuple[str, re.Pattern[str]]]:
        items = patterns.items() if isinstance(patterns, dict) else [(p, p) for p in patterns]
        out = []
        for name, pattern in items:
            if pattern in TRUSTYAI_REGEXES:
                detection, rx = TRUSTYAI_REGEXES[pattern]
                out.append((detection, re.compile(rx)))
            else:
                try:
                    out.append((name, re.compile(pattern)))
                except re.error as err:
                    raise ValueError(f"invalid regular expression {pattern!r}: {err}") from err
        return out

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        extra = params.get("regex")
        patterns = self.fixed + (self._compile(extra) if isinstance(extra, list | dict) else [])
        out = []
        for detection, rx in patterns:
            for m in rx.finditer(text):
                out.append(Detection(detection, self.detection_type, 1.0, m.start(), m.end(), m.group()))
        return sorted(out, key=lambda d: d.start or 0)


# ---- HTTP detectors -------------------------------------------------------------------------------------

class DetectorServiceError(Exception):
    def __init__(self, detector_id: str, status: int, message: str) -> None:
        super().__init__(message)
        self.detector_id = detector_id
        self.status = status


class HttpDetector(BaseDetector):
    """A remote detector: POSTs to `{url}/api/v1/text/contents` (or chat / generation / context/doc) with the
    `detector-id` header, as the FMS orchestrator does."""

    def __init__(self, url: str, detector_id: str, *, timeout: float = 30.0, headers: dict[str, str] | None = None,
                 client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.detector_id = detector_id
        self.headers = {"detector-id": detector_id, "content-type": "application/json", **(headers or {})}
        self.client = client or httpx.Client(timeout=timeout, trust_env=False)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = self.client.post(self.url + path, json=body, headers=self.headers)
        except httpx.HTTPError as err:
            raise DetectorServiceError(self.detector_id, 503, f"detector request failed for `{self.detector_id}`: "
                                                               f"{type(err).__name__}") from err
        if response.status_code >= 400:
            raise DetectorServiceError(self.detector_id, response.status_code,
                                       f"detector request failed for `{self.detector_id}`: "
                                       f"{response.status_code} {response.text[:200]}")
        return response.json()

    @staticmethod
    def _detection(item: dict[str, Any]) -> Detection:
        return Detection(str(item.get("detection", "")), str(item.get("detection_type", "")),
                         float(item.get("score", 0.0)), item.get("start"), item.get("end"), item.get("text"),
                         item.get("evidence"), item.get("metadata") or {})

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        result = self._post("/api/v1/text/contents", {"contents": [text], "detector_params": params})
        return [self._detection(i) for i in (result[0] if result else [])]

    def detect_chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> list[Detection]:
        return [self._detection(i) for i in self._post("/api/v1/text/chat",
                                                       {"messages": messages, "detector_params": params})]

    def detect_generation(self, prompt: str, generated_text: str, params: dict[str, Any]) -> list[Detection]:
        body = {"prompt": prompt, "generated_text": generated_text, "detector_params": params}
        return [self._detection(i) for i in self._post("/api/v1/text/generation", body)]

    def detect_context(self, content: str, context_type: str, context: list[str],
                       params: dict[str, Any]) -> list[Detection]:
        body = {"content": content, "context_type": context_type, "context": context, "detector_params": params}
        return [self._detection(i) for i in self._post("/api/v1/text/context/doc", body)]


ENDPOINT_OF_TYPE = {TEXT_CONTENTS: "contents", TEXT_CHAT: "chat", TEXT_GENERATION: "generation",
                    TEXT_CONTEXT_DOC: "context/doc"}


def load_python_detector(target: str, params: dict[str, Any] | None = None) -> Detector:
    """`package.module:ClassName`, constructed with `params` as keyword arguments; it must have `detect`."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"python detector {target!r} must be written as module:Class")
    cls = getattr(importlib.import_module(module_name), attr)
    detector = cls(**(params or {}))
    if not callable(getattr(detector, "detect", None)):
        raise ValueError(f"python detector {target!r} has no detect(text, params) method")
    for name, fallback in (("detect_chat", BaseDetector.detect_chat),
                           ("detect_generation", BaseDetector.detect_generation),
                           ("detect_context", BaseDetector.detect_context)):
        if not hasattr(detector, name):
            setattr(detector, name, fallback.__get__(detector))
    if not hasattr(detector, "default_threshold"):
        detector.default_threshold = 0.5
    return detector  # type: ignore[no-any-return]


# ---- built-ins ------------------------------------------------------------------------------------------

_BUILTINS: DetectorRegistry | None = None


def builtin_registry() -> DetectorRegistry:
    """pii, hap, prompt-injection, bias and TrustyAI's regex `built-in-detector`; models load on first use."""
    global _BUILTINS
    if _BUILTINS is None:
        from kaip.guardrails.detectors.classifiers import BiasDetector, HapDetector, PromptInjectionDetector
        from kaip.guardrails.detectors.pii import PiiDetector

        reg = DetectorRegistry()
        reg.register(DetectorSpec("pii", PiiDetector(), description="personal data (structured types and names)"))
        reg.register(DetectorSpec("hap", HapDetector(), description="hate, abuse and profanity"))
        reg.register(DetectorSpec("prompt-injection", PromptInjectionDetector(),
                                  description="prompt injection and jailbreak attempts"))
        reg.register(DetectorSpec("bias", BiasDetector(), description="generalisations about protected groups"))
        reg.register(DetectorSpec("built-in-detector", RegexDetector(), types=frozenset({TEXT_CONTENTS}),
                                  description="TrustyAI's regex detector: detector_params.regex names patterns"))
        _BUILTINS = reg
    return _BUILTINS
