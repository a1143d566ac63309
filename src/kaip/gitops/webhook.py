"""Argo CD's git webhook: `POST /api/webhook` with a push event from GitHub, GitLab, Gitea or Gogs refreshes every
Application whose source is the pushed repository and whose target revision the push moved, at once rather than
at the next poll.

Who may call it: a request signed with the provider's webhook secret — kept, as Argo CD keeps them, in the Secret
`argocd-secret` (namespace `kaip-system`) under `webhook.github.secret`, `webhook.gitlab.secret`,
`webhook.gogs.secret` (Gitea uses the GitHub one, as upstream) — or one that carries a Kaip token. A webhook
only asks for a refresh (the annotation `argocd.argoproj.io/refresh`, which the controller clears); what gets
applied still comes from git.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from kaip.api import errors
from kaip.api.core import SECRET
from kaip.api.gitops import APPLICATION
from kaip.controlplane.events import SYSTEM_NAMESPACE
from kaip.gitops.controller import REFRESH_ANNOTATION
from kaip.store.store import Store

SECRET_NAME = "argocd-secret"
SECRET_KEYS = {"github": "webhook.github.secret", "gitea": "webhook.github.secret",
               "gitlab": "webhook.gitlab.secret", "gogs": "webhook.gogs.secret"}
MAX_BODY = 25 * 1024 * 1024  # GitHub's own limit for a webhook payload


class WebhookError(ValueError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Push:
    provider: str
    repos: frozenset[str]  # normalised repository URLs
    ref: str  # e.g. refs/heads/main
    default_branch: str | None


def provider_of(headers: dict[str, str]) -> str | None:
    if "x-gitea-event" in headers:
        return "gitea"
    if "x-gogs-event" in headers:
        return "gogs"
    if "x-github-event" in headers:
        return "github"
    if "x-gitlab-event" in headers:
        return "gitlab"
    return None


def normalise_repo(url: str) -> str:
    """One spelling per repository: host lower-cased, no scheme, user or port, no `.git` or trailing slash;
    a local repository as its absolute path."""
    url = url.strip()
    if url.startswith("file://"):
        return str(Path(url.removeprefix("file://")).resolve()).rstrip("/")
    if url.startswith("/"):
        return str(Path(url).resolve()).rstrip("/")
    scp = re.match(r"^[\w.-]+@([\w.-]+):(.*)$", url)  # git@github.com:org/repo.git
    if scp:
        host, path = scp.group(1), scp.group(2)
    else:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    path = re.sub(r"\.git$", "", path.strip("/"))
    return f"{host.lower()}/{path}".rstrip("/")


def parse_push(provider: str, headers: dict[str, str], body: bytes) -> Push | None:
    """The repository and ref of a push event; None for other events (pings, issues, ...)."""
    event = headers.get(f"x-{provider}-event", "").lower()
    if event not in ("push", "push hook", "tag push hook"):
        return None
    try:
        payload = json.loads(body)
    except ValueError as err:
        raise WebhookError(400, f"the {provider} push payload is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise WebhookError(400, f"the {provider} push payload must be a JSON object")
    if provider == "gitlab":
        project = payload.get("project") or {}
        urls = [project.get(k) for k in ("web_url", "git_http_url", "git_ssh_url", "http_url", "ssh_url")]
        default = project.get("default_branch")
    else:
        repo = payload.get("repository") or {}
        urls = [repo.get(k) for k in ("html_url", "clone_url", "ssh_url", "git_url", "url")]
        default = repo.get("default_branch")
    repos = frozenset(normalise_repo(u) for u in urls if isinstance(u, str) and u)
    ref = payload.get("ref")
    if not repos or not isinstance(ref, str):
        raise WebhookError(400, f"the {provider} push payload names no repository or ref")
    return Push(provider, repos, ref, default if isinstance(default, str) else None)


def moves(push: Push, repo_url: str, target_revision: str | None) -> bool:
    """Whether the push can change what an Application with this source resolves to."""
    if normalise_repo(repo_url) not in push.repos:
        return False
    target = (target_revision or "HEAD").strip()
    short = re.sub(r"^refs/(heads|tags)/", "", push.ref)
    if target == "HEAD":
        return push.default_branch is None or short == push.default_branch
    if re.fullmatch(r"[0-9a-f]{7,40}", target):
        return False  # a pinned commit: no push moves it
    return target in (push.ref, short)


def verify(provider: str, headers: dict[str, str], body: bytes, secret: str) -> bool:
    """The provider's signature over the body with the shared secret (GitLab sends the secret itself)."""
    if provider == "gitlab":
        return hmac.compare_digest(headers.get("x-gitlab-token", ""), secret)
    if provider == "github":
        sent = headers.get("x-hub-signature-256", "").removeprefix("sha256=")
    elif provider == "gitea":
        sent = headers.get("x-gitea-signature", "")
    else:
        sent = headers.get("x-gogs-signature", "")
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return bool(sent) and hmac.compare_digest(sent, want)


def webhook_secret(store: Store, provider: str) -> str | None:
    obj = store.try_get(SECRET, SYSTEM_NAMESPACE, SECRET_NAME)
    value = ((obj or {}).get("data") or {}).get(SECRET_KEYS[provider])
    return base64.b64decode(value).decode() if value else None


def refresh(store: Store, push: Push) -> list[str]:
    """Ask every Application the push moves for a refresh; returns their `namespace/name`."""
    refreshed = []
    for app in store.list(APPLICATION)[0]:
        source = (app.get("spec") or {}).get("source") or {}
        if not moves(push, str(source.get("repoURL", "")), source.get("targetRevision")):
            continue
        meta = app["metadata"]

        def mark(obj: dict[str, Any]) -> dict[str, Any]:
            obj["metadata"].setdefault("annotations", {})[REFRESH_ANNOTATION] = "normal"
            return obj
        store.mutate(APPLICATION, meta["namespace"], meta["name"], mark)
        refreshed.append(f"{meta['namespace']}/{meta['name']}")
    return refreshed


def webhook_router(ctx: Any) -> APIRouter:
    router = APIRouter()

    @router.post("/api/webhook", include_in_schema=False)
    async def webhook(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            provider = provider_of(headers)
            if provider is None:
                raise WebhookError(400, "unknown webhook: expected a GitHub, GitLab, Gitea or Gogs event header")
            body = await request.body()
            if len(body) > MAX_BODY:
                raise WebhookError(413, "the webhook payload is too large")
            secret = await run_in_threadpool(webhook_secret, ctx.store, provider)
            signed = secret is not None and verify(provider, headers, body, secret)
            if not signed:
                try:
                    await run_in_threadpool(ctx.authorizer.authenticate, headers.get("authorization"))
                except errors.ApiError as err:
                    raise WebhookError(401, "the webhook is neither signed with the configured secret nor "
                                            "sent with a Kaip token") from err
            push = parse_push(provider, headers, body)
            if push is None:
                return JSONResponse({"refreshed": []})
            refreshed = await run_in_threadpool(refresh, ctx.store, push)
            return JSONResponse({"refreshed": refreshed})
        except WebhookError as err:
            return JSONResponse({"error": str(err)}, status_code=err.code)

    return router
