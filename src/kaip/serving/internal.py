"""Calls from one component of an InferenceService to another through the gateway (a transformer or an explainer
to its predictor), authenticated without a user's token.

Each InferenceService with a transformer or an explainer gets an internal token, an HMAC of its uid under a key kept
in `$KAIP_HOME/serving/internal.key` (so it survives a server restart); the controller gives it to those components'
Pods and registers it here. The gateway's authorizer is wrapped: that token is the identity
`system:serving:{namespace}:{name}` with the view role in its own namespace and nowhere else; every other
token goes to the server's authorizer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from kaip.server.auth import Identity

TOKEN_PREFIX = "kaipsvc-"
PREDICTOR_SUFFIX = "~predictor"  # internal route names: `~` cannot appear in an object name, so no clash
EXPLAINER_SUFFIX = "~explainer"


def predictor_route_name(name: str) -> str:
    """The gateway route of a predictor that a transformer or an explainer calls: /serving/{ns}/{name}~predictor/…"""
    return f"{name}{PREDICTOR_SUFFIX}"


def explainer_route_name(name: str) -> str:
    """The gateway route of an explainer; `/serving/{ns}/{name}/…:explain` is sent to it."""
    return f"{name}{EXPLAINER_SUFFIX}"


def load_key(home: Path) -> bytes:
    path = home / "serving" / "internal.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        return key


def internal_token(key: bytes, namespace: str, name: str, uid: str) -> str:
    """Pure: the token of one InferenceService (a new uid, i.e. a recreated object, gets a new one)."""
    digest = hmac.new(key, f"{namespace}/{name}/{uid}".encode(), hashlib.sha256).hexdigest()
    return TOKEN_PREFIX + digest[:48]


def identity_name(namespace: str, name: str) -> str:
    return f"system:serving:{namespace}:{name}"


class ServingAuthorizer:
    """The server's authorizer, plus the internal tokens in `tokens` (token -> (namespace, name))."""

    def __init__(self, inner: Any, tokens: dict[str, tuple[str, str]]) -> None:
        self.inner = inner
        self.tokens = tokens
        self._granted: dict[str, str] = {}  # identity -> its namespace

    def _internal(self, authorization: str | None) -> Identity | None:
        if not authorization or not authorization.startswith(f"Bearer {TOKEN_PREFIX}"):
            return None
        token = authorization.removeprefix("Bearer ").strip()
        for known, (namespace, name) in list(self.tokens.items()):
            if hmac.compare_digest(known, token):
                user = identity_name(namespace, name)
                self._granted[user] = namespace
                return Identity(user)
        return None

    def authenticate_cached(self, authorization: str | None) -> Identity | None:
        return self._internal(authorization) or self.inner.authenticate_cached(authorization)

    def authenticate(self, authorization: str | None) -> Identity:
        found = self._internal(authorization)
        return found if found is not None else self.inner.authenticate(authorization)

    def __getattr__(self, attr: str) -> Any:  # anything else is the server's authorizer's
        return getattr(self.inner, attr)

    def rank(self, user: str, namespace: str | None) -> int:
        granted = 1 if namespace is not None and self._granted.get(user) == namespace else 0
        return max(granted, self.inner.rank(user, namespace))
