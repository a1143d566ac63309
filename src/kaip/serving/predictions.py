"""The prediction log (KServe's inference logger, kept locally): one JSON line per request and response pair in
`$KAIP_HOME/predictions/{namespace}/{name}.jsonl`, queried by time."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

MAX_PAYLOAD = 64 * 1024  # bytes of request/response kept per record


def payload(raw: bytes, content_type: str) -> Any:
    """A body as the log keeps it: parsed JSON when it is JSON, else text, cut to MAX_PAYLOAD."""
    if len(raw) > MAX_PAYLOAD:
        return {"truncated": True, "bytes": len(raw), "head": raw[:1024].decode(errors="replace")}
    if "json" in content_type or raw[:1] in (b"{", b"["):
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return raw.decode(errors="replace")


def token_counts(response: Any, streamed: bytes | None = None) -> tuple[int | None, int | None]:
    """Prompt and completion tokens of an OpenAI response (or of the usage chunk of a stream)."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if usage is None and streamed:
        for line in reversed(streamed.split(b"\n")):
            if line.startswith(b"data: {") and b'"usage"' in line:
                try:
                    usage = json.loads(line[6:]).get("usage")
                except json.JSONDecodeError:
                    usage = None
                if usage:
                    break
    if not isinstance(usage, dict):
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


class PredictionLog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def _path(self, namespace: str, name: str) -> Path:
        return self.root / namespace / f"{name}.jsonl"

    def append(self, namespace: str, name: str, record: dict[str, Any]) -> None:
        path = self._path(namespace, name)
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(line)

    def query(self, namespace: str, name: str, *, since_seconds: float | None = None, limit: int = 1000
              ) -> list[dict[str, Any]]:
        path = self._path(namespace, name)
        cutoff = time.time() - since_seconds if since_seconds else 0.0
        out: list[dict[str, Any]] = []
        try:
            with open(path) as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash mid-write
                    if rec.get("timestamp", 0) >= cutoff:
                        out.append(rec)
        except FileNotFoundError:
            return []
        return out[-limit:]


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `1h`, `2d` (or plain seconds) to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)
