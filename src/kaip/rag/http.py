"""`POST /apis/kaip.dev/v1alpha1/namespaces/{ns}/knowledgebases/{name}/query`: retrieval over HTTP.

Registered before the generic resource routes. Needs `get` on the knowledge base (the `view` role); the
subject whose records may be retrieved comes from the caller's identity (see `kaip.rag.subject`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from kaip.api import errors
from kaip.api.rag import KNOWLEDGE_BASE
from kaip.rag.knowledge import QueryError
from kaip.rag.service import RagService
from kaip.rag.subject import ASSERTION_HEADER
from kaip.server.context import ServerContext

QUERY_FIELDS = {"query", "top_k", "topK", "filter"}


def parse_query_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise errors.bad_request("the request body is empty: send {\"query\": \"...\"}")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as err:
        raise errors.bad_request(f"the request body is not valid JSON at line {err.lineno}, column {err.colno}: "
                                 f"{err.msg}") from err
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - QUERY_FIELDS)
    if unknown:
        raise errors.bad_request(f"unknown field {unknown[0]!r} in the query (accepted: query, top_k, filter)",
                                 [errors.Cause(u, "unknown field", "FieldValueUnknown") for u in unknown])
    return body


def rag_router(ctx: ServerContext, service: RagService) -> APIRouter:
    router = APIRouter()

    @router.post(f"/apis/{KNOWLEDGE_BASE.group}/{KNOWLEDGE_BASE.version}/namespaces/{{namespace}}/"
                 f"{KNOWLEDGE_BASE.plural}/{{name}}/query", include_in_schema=False)
    async def query(request: Request, namespace: str, name: str) -> Response:
        try:
            auth = request.headers.get("authorization")
            ident = ctx.authorizer.authenticate_cached(auth) or \
                await run_in_threadpool(ctx.authorizer.authenticate, auth)
            ctx.authorizer.check(ident, "get", KNOWLEDGE_BASE, namespace, name=name, subresource="query")
            body = parse_query_body(await request.body())
            subject = await run_in_threadpool(service.subject_for, ident.user, namespace,
                                              request.headers.get(ASSERTION_HEADER))
            kb = await run_in_threadpool(service.for_query, namespace, name)
            top_k = body.get("top_k", body.get("topK"))
            try:
                passages = await run_in_threadpool(lambda: kb.search(body.get("query"), subject=subject, top_k=top_k,
                                                                     filter=body.get("filter")))
            except QueryError as err:
                raise errors.bad_request(str(err), [errors.Cause(err.field, str(err))]) from err
            return JSONResponse({"apiVersion": KNOWLEDGE_BASE.api_version, "kind": "KnowledgeBaseQueryResult",
                                 "knowledgeBase": name, "namespace": namespace, "subject": subject,
                                 "passages": [p.to_dict() for p in passages]})
        except errors.ApiError as err:
            return JSONResponse(err.to_status(), status_code=err.code)

    return router
