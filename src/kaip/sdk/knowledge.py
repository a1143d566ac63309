"""Knowledge bases (retrieval for RAG) and guardrails, from Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kaip.sdk.handles import Handle

if TYPE_CHECKING:
    from kaip.sdk.client import Client

KB_API = "kaip.dev/v1alpha1"
GUARDRAILS_API = "trustyai.opendatahub.io/v1alpha1"


def _source(src: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(src, dict):
        return src
    # Relative paths would be read from the server's working directory: send what the caller means.
    return {"path": str(Path(src).expanduser().absolute()) if not Path(src).is_absolute() else src}


def knowledge_base(client: Client, name: str, *, sources: Sequence[str | dict[str, Any]] | None,
                   embedding_model: str, metadata_fields: Sequence[str], owner_field: str | None,
                   top_k: int | None, namespace: str, wait: bool, timeout: float) -> KnowledgeBase:
    if sources is None:
        return KnowledgeBase(client, name, namespace, client.get("knowledgebases.kaip.dev", name, namespace))
    spec: dict[str, Any] = {"sources": [_source(s) for s in sources], "embedding": {"model": embedding_model}}
    fields = list(metadata_fields)
    if owner_field:
        spec["accessControl"] = {"ownerField": owner_field}
        if owner_field not in fields:
            fields.append(owner_field)
    if fields:
        spec["metadataFields"] = fields
    if top_k is not None:
        spec["retrieval"] = {"topK": top_k}
    obj = client.apply({"apiVersion": KB_API, "kind": "KnowledgeBase",
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    kb = KnowledgeBase(client, name, namespace, dict(obj))  # type: ignore[arg-type]
    return kb.wait(timeout) if wait else kb


class KnowledgeBase(Handle):
    """A KnowledgeBase: `.query(text)` returns passages the caller may see; `.wait()` until indexed."""

    api_version = KB_API
    kind = "KnowledgeBase"

    def wait(self, timeout: float | None = 600.0, *, poll: float = 0.5) -> KnowledgeBase:
        """Wait until the sources of the current generation are indexed (condition Ready)."""
        def indexed(obj: Any) -> bool:
            gen = obj.metadata.get("generation")
            return obj.is_true("Ready") and obj.status.get("observedGeneration", gen) == gen

        self._poll(indexed, timeout, poll)
        return self

    def query(self, text: str, *, top_k: int | None = None, filter: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
        """The passages most relevant to `text` (with `text`, `score`, `source`, `metadata`)."""
        body: dict[str, Any] = {"query": text}
        if top_k is not None:
            body["top_k"] = top_k
        if filter:
            body["filter"] = filter
        path = f"/apis/kaip.dev/v1alpha1/namespaces/{self.namespace}/knowledgebases/{self.name}/query"
        return list(self.client.rest._json("POST", path, json=body).get("passages", []))


def _policies(policies: dict[str, Any] | None) -> dict[str, Any]:
    """`{"pii": "redact"}` or `{"pii": {"action": "redact", "threshold": 0.6}}`; the server checks the names."""
    return {d: ({"action": p} if isinstance(p, str) else dict(p or {})) for d, p in (policies or {}).items()}


def guardrails(client: Client, name: str, *, inference_service: str, input: dict[str, Any] | None,
               output: dict[str, Any] | None, namespace: str) -> Guardrails:
    inputs, outputs = _policies(input), _policies(output)
    used = sorted(set(inputs) | set(outputs))
    if not used:
        raise ValueError("guardrails need at least one input or output policy, e.g. input={'pii': 'redact'}")
    config = {"chat_generation": {"service": {"hostname": "127.0.0.1", "port": 8080}},
              "detectors": {d: {"type": "text_contents", "chunker_id": "whole_doc_chunker", "default_threshold": 0.5}
                            for d in used},
              "passthrough_headers": ["Authorization"],
              "kaip": {"inferenceService": inference_service, "input": inputs, "output": outputs}}
    client.apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
                   "data": {"config.yaml": yaml.safe_dump(config, sort_keys=False)}},
                  {"apiVersion": GUARDRAILS_API, "kind": "GuardrailsOrchestrator",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"orchestratorConfig": name, "replicas": 1}}])
    return Guardrails(client, name, namespace)


class Guardrails(Handle):
    """A GuardrailsOrchestrator: policies on an InferenceService's endpoint, and the detectors on demand."""

    api_version = GUARDRAILS_API
    kind = "GuardrailsOrchestrator"

    def detect(self, text: str, detectors: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Run detectors over a text (the FMS orchestrator's content detection API); returns the detections."""
        body = {"content": text, "detectors": {d: {} for d in (detectors or self.detectors())}}
        path = f"/serving/{self.namespace}/{self.name}/api/v2/text/detection/content"
        return list(self.client.rest._json("POST", path, json=body).get("detections", []))

    def detectors(self) -> list[str]:
        """The detectors its config names."""
        cm = self.client.get("configmaps", self.refresh().spec["orchestratorConfig"], self.namespace)
        return list((yaml.safe_load(cm["data"]["config.yaml"]) or {}).get("detectors") or {})
