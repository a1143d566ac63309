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

from starlette.concurrency import run_in_threadpool

from kaip.api import errors
from kaip.rag.augment import augment
from kaip.rag.knowledge import KnowledgeBase
from kaip.rag.service import RagService
from kaip.rag.subject import ASSERTION_HEADER

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


class RagHook:
    """The serving gateway's hook: a chat completion sent to an InferenceService annotated with knowledge bases is
    answered with the retrieved passages in its system prompt, and the answer carries them as `sources`. The subject
    whose records may be retrieved is the caller's authenticated identity, never anything in the request body."""

    def __init__(self, service: RagService) -> None:
        self.service = service

    async def request(self, route: Any, path: str, body: bytes, user: str | None,
                      headers: Mapping[str, str]) -> tuple[bytes, Any]:
        if not knowledge_base_names(route.annotations) or not path.rstrip("/").endswith("/chat/completions"):
            return body, None

        def work() -> tuple[bytes, list[dict[str, Any]]]:
            kbs = knowledge_bases_for(route.annotations, route.namespace, self.service)
            subject = self.service.subject_for(user, route.namespace, headers.get(ASSERTION_HEADER.lower())) \
                if user else None
            return augment_chat_body(body, kbs, subject)

        new_body, sources = await run_in_threadpool(work)
        return new_body, (lambda doc: with_sources(doc, sources) if isinstance(doc, dict) else doc)
