"""What the serving gateway calls for an InferenceService annotated with knowledge bases (issue 6 wiring).

    kaip.dev/knowledge-bases: "plans,member-kb"       # on the InferenceService, same namespace

For a chat completion: `knowledge_bases_for(annotations, namespace, service)` opens them (4xx if one is missing
or not ready), `subject = service.subject_for(user, namespace, headers.get(ASSERTION_HEADER))`, then
`body, sources = augment_chat_body(body, kbs, subject)` before forwarding, and `with_sources(completion, sources)`
on the JSON response (non-streaming; a streaming response can send them in a final `sources` event). The
`openai` client exposes the extra field as `completion.sources` (pydantic extra), or via `model_extra`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kaip.api import errors
from kaip.rag.augment import augment
from kaip.rag.knowledge import KnowledgeBase
from kaip.rag.service import RagService

ANNOTATION = "kaip.dev/knowledge-bases"


def knowledge_base_names(annotations: Mapping[str, str]) -> list[str]:
    return [n.strip() for n in (annotations.get(ANNOTATION) or "").split(",") if n.strip()]


def knowledge_bases_for(annotations: Mapping[str, str], namespace: str, service: RagService) -> list[KnowledgeBase]:
    return [service.for_query(namespace, name) for name in knowledge_base_names(annotations)]


def augment_chat_body(body: bytes, knowledge_bases: Sequence[KnowledgeBase],
                      subject: str | None) -> tuple[bytes, list[dict[str, Any]]]:
    """An OpenAI chat-completions request body with the context block added, and the cited sources."""
    if not knowledge_bases:
        return body, []
    try:
        request = json.loads(body)
    except json.JSONDecodeError as err:
        raise errors.bad_request(f"the request body is not valid JSON: {err.msg}") from err
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list):
        return body, []
    request["messages"], sources = augment(messages, knowledge_bases, subject)
    return json.dumps(request).encode(), sources


def with_sources(completion: dict[str, Any], sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {**completion, "sources": sources}
