"""Parsing a GuardrailsOrchestrator's config YAML (upstream's orchestrator config, plus Kaip's `kaip:` block)
into an `OrchestratorConfig`. Pure: the caller reads the ConfigMap and passes the text.

```yaml
chat_generation:                  # or `openai:` / `chat_completions:` (upstream's aliases)
  service: {hostname: 127.0.0.1, port: 8080}        # an OpenAI-compatible server (calls {base}/v1/...)
detectors:
  pii:        {type: text_contents, chunker_id: whole_doc_chunker, default_threshold: 0.5}   # built-in: no service
  my-remote:  {type: text_contents, service: {hostname: 10.0.0.5, port: 8000}, chunker_id: whole_doc_chunker,
               default_threshold: 0.7}                # any Detectors API server
passthrough_headers: [Authorization]
kaip:
  inferenceService: chatbot        # instead of chat_generation: the InferenceService behind the serving gateway
  model: chatbot
  detectors:                        # user-defined detectors that run in the server
    member-ids: {regex: ['EVM-\\d{6}']}
    custom:     {python: mypackage.detectors:Mine, args: {}}
  input:  {pii: {action: redact}, prompt-injection: {action: block, threshold: 0.6}}
  output: {hap: {action: block}, pii: {action: redact}}
  fallbackMessage: {input: "...", output: "..."}
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from kaip.guardrails.backend import ChatBackend, OpenAIBackend
from kaip.guardrails.detectors.base import DETECTOR_TYPES
from kaip.guardrails.orchestrator import ACTIONS, INPUT, OUTPUT, OrchestratorConfig
from kaip.guardrails.registry import (
    DetectorRegistry,
    DetectorSpec,
    HttpDetector,
    RegexDetector,
    builtin_registry,
    load_python_detector,
)

CONFIG_KEY = "config.yaml"
GENERATION_KEYS = ("chat_generation", "openai", "chat_completions")


class ConfigError(ValueError):
    """A problem in the config, with the path of the offending key."""


@dataclass
class ParsedConfig:
    config: OrchestratorConfig
    inference_service: str | None = None
    passthrough_headers: list[str] = field(default_factory=list)
    detector_ids: list[str] = field(default_factory=list)


def _service_url(service: Any, where: str) -> str:
    if not isinstance(service, dict) or not isinstance(service.get("hostname"), str):
        raise ConfigError(f"{where}.hostname: Required value")
    port = service.get("port", 8080)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}.port: must be a port number")
    scheme = "https" if service.get("tls") else "http"
    return f"{scheme}://{service['hostname']}:{port}{(service.get('path_prefix') or '').rstrip('/')}"


def parse_config(text: str, *, gateway_backend: Callable[[str], ChatBackend] | None = None,
                 enable_builtins: bool = True) -> ParsedConfig:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{CONFIG_KEY}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{CONFIG_KEY}: must be a mapping")
    kaip = doc.get("kaip") or {}
    if not isinstance(kaip, dict):
        raise ConfigError("kaip: must be a mapping")
    builtins = builtin_registry()
    registry = DetectorRegistry()

    for key, entry in (doc.get("detectors") or {}).items():
        where = f"detectors.{key}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping")
        dtype = entry.get("type", "text_contents")
        if dtype not in DETECTOR_TYPES:
            raise ConfigError(f"{where}.type: Unsupported value: {dtype!r}: supported values: "
                              + ", ".join(DETECTOR_TYPES))
        if "chunker_id" in entry and entry["chunker_id"] != "whole_doc_chunker":
            raise ConfigError(f"{where}.chunker_id: chunker `{entry['chunker_id']}` not found "
                              "(Kaip has whole_doc_chunker only)")
        threshold = entry.get("default_threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise ConfigError(f"{where}.default_threshold: must be a number between 0 and 1")
        if "service" in entry:
            url = _service_url(entry["service"], f"{where}.service")
            registry.register(DetectorSpec(key, HttpDetector(url, entry.get("model_id") or key),
                                           types=frozenset({dtype}), default_threshold=float(threshold)))
        elif builtins.get(key) is not None and enable_builtins:
            base = builtins.get(key)
            assert base is not None
            registry.register(DetectorSpec(key, base.detector, base.types, float(threshold)))
        else:
            raise ConfigError(f"{where}.service: Required value (`{key}` is not a built-in detector: "
                              f"{', '.join(builtins.ids())})")

    for key, entry in (kaip.get("detectors") or {}).items():
        where = f"kaip.detectors.{key}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping")
        threshold = float(entry.get("default_threshold", 0.5))
        try:
            if "regex" in entry:
                detector: Any = RegexDetector(entry["regex"], entry.get("detection_type", "pii"))
            elif "python" in entry:
                detector = load_python_detector(str(entry["python"]), entry.get("args") or {})
            elif "url" in entry:
                detector = HttpDetector(str(entry["url"]), entry.get("detector_id") or key)
            else:
                raise ConfigError(f"{where}: one of regex, python or url is required")
        except (ValueError, ImportError, AttributeError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from err
        registry.register(DetectorSpec(key, detector, default_threshold=threshold))

    if enable_builtins:
        for spec_id in builtins.ids():
            if registry.get(spec_id) is None:
                spec = builtins.get(spec_id)
                assert spec is not None
                registry.register(spec)

    policies: dict[str, dict[str, dict[str, Any]]] = {INPUT: {}, OUTPUT: {}}
    actions: dict[str, dict[str, str]] = {INPUT: {}, OUTPUT: {}}
    for direction in (INPUT, OUTPUT):
        for key, entry in (kaip.get(direction) or {}).items():
            where = f"kaip.{direction}.{key}"
            entry = dict(entry or {})
            if registry.get(key) is None:
                raise ConfigError(f"{where}: detector `{key}` not found")
            action = entry.pop("action", "block" if direction == INPUT else "flag")
            if action not in ACTIONS:
                raise ConfigError(f"{where}.action: Unsupported value: {action!r}: supported values: "
                                  + ", ".join(ACTIONS))
            actions[direction][key] = action
            policies[direction][key] = entry

    backend: ChatBackend | None = None
    inference_service = kaip.get("inferenceService")
    for key in GENERATION_KEYS:
        if key in doc:
            backend = OpenAIBackend(_service_url((doc[key] or {}).get("service"), f"{key}.service") + "/v1")
            break
    if inference_service and gateway_backend is not None:
        backend = gateway_backend(str(inference_service))
    fallback = kaip.get("fallbackMessage") or {}
    config = OrchestratorConfig(
        registry=registry, backend=backend, input=policies[INPUT], output=policies[OUTPUT], actions=actions,
        model=kaip.get("model") or inference_service,
        **({"fallback_input": str(fallback[INPUT])} if INPUT in fallback else {}),
        **({"fallback_output": str(fallback[OUTPUT])} if OUTPUT in fallback else {}))
    return ParsedConfig(config, inference_service, list(doc.get("passthrough_headers") or []), registry.ids())
