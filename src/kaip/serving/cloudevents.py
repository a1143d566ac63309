"""KServe's inference logger events: CloudEvents 1.0 in binary mode, POSTed to `logger.url`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def headers(*, event_id: str, kind: str, source: str, namespace: str, name: str, component: str, endpoint: str,
            content_type: str, event_time: str | None = None, metadata: dict[str, list[str]] | None = None,
            annotations: dict[str, str] | None = None) -> dict[str, str]:
    out = {
        "ce-specversion": "1.0",
        "ce-type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "ce-id": event_id,
        "ce-source": source,
        "ce-time": event_time or _now(),
        "ce-inferenceservicename": name,
        "ce-namespace": namespace,
        "ce-component": component,
        "ce-endpoint": endpoint,
        "ce-recordedtime": _now(),
        "content-type": content_type or "application/json",
    }
    if metadata is not None:
        out["ce-metadata"] = json.dumps(metadata)
    if annotations:
        out["ce-annotations"] = json.dumps(annotations)
    return out


def events_for(logger: dict[str, Any], **kw: Any) -> list[str]:
    """Which events a logger mode sends: `all` both, `request` or `response` one."""
    mode = logger.get("mode") or "all"
    return ["request", "response"] if mode == "all" else [mode]
