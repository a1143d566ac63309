"""Kaip: a Kubernetes-native AI platform that runs on one machine with nothing else installed.

`import kaip` is cheap; the SDK (`kaip.Client`, `kaip.autolog`, the typed errors) loads on first use.
"""

from typing import Any

__version__ = "0.1.0"


_SDK_NAMES = frozenset({
    "AlreadyExists", "ApiError", "AsyncClient", "BadRequest", "Client", "Conflict", "Endpoint", "Failed",
    "Forbidden", "Guardrails", "Invalid", "KnowledgeBase", "Model", "ModelVersion", "NotFound", "Object",
    "PipelineRun", "Run", "ServerError", "TrainJob", "Unauthorized", "Unreachable", "WaitTimeout", "autolog",
    "log_model"})


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        import importlib

        return getattr(importlib.import_module("kaip.sdk"), name)
    raise AttributeError(f"module 'kaip' has no attribute {name!r}")
