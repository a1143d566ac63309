"""Who a retrieval is for: the subject, derived from the authenticated principal only.

Two ways, both decided by the server (the threat model is in docs/rag.md):

1. A member's own token. The principal is a ServiceAccount per member (or a user); its subject is the
   ServiceAccount's `kaip.dev/subject` annotation (set by whoever may manage service accounts in the
   namespace, i.e. its admins), else the principal's name.
2. A trusted application (the chatbot backend) acting for many members. Its ServiceAccount carries the
   annotation `kaip.dev/subject-assertion-secret: NAME`, naming a Secret (key `key`) in the same namespace.
   With each request it sends `Kaip-Subject-Assertion: <HS256 JWT>`, signed with that key by the component that
   logged the member in, with claims `iss` (the application's principal), `sub` (the member), `aud`
   (`kaip:<namespace>`), `exp` and `iat`. The server verifies signature, issuer, audience and expiry; only then
   is the subject the asserted `sub`. An assertion from any other principal is refused, never ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

SUBJECT_ANNOTATION = "kaip.dev/subject"
ASSERTION_SECRET_ANNOTATION = "kaip.dev/subject-assertion-secret"
ASSERTION_HEADER = "Kaip-Subject-Assertion"
MAX_LIFETIME_SECONDS = 3600
CLOCK_SKEW_SECONDS = 30


class AssertionError_(Exception):  # noqa: N801  (not the builtin AssertionError)
    """An assertion that must not be trusted; the message says why (without echoing secrets)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_assertion(key: bytes, *, issuer: str, subject: str, namespace: str, ttl_seconds: int = 300,
                   now: float | None = None) -> str:
    """What the login service does: a compact HS256 JWT asserting `subject` for `issuer` in `namespace`."""
    issued = int(now if now is not None else time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iss": issuer, "sub": subject, "aud": f"kaip:{namespace}", "iat": issued, "exp": issued + ttl_seconds}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def verify_assertion(token: str, key: bytes, *, issuer: str, namespace: str, now: float | None = None) -> str:
    """The asserted subject, or AssertionError_ (pure: no I/O)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise AssertionError_("the subject assertion is not a compact JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        claims: dict[str, Any] = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, json.JSONDecodeError) as err:
        raise AssertionError_("the subject assertion is not valid base64url JSON") from err
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise AssertionError_("the subject assertion must be signed with HS256")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise AssertionError_("the subject assertion's signature does not verify")
    t = now if now is not None else time.time()
    if claims.get("iss") != issuer:
        raise AssertionError_(f"the subject assertion was issued for {claims.get('iss')!r}, not for the caller")
    if claims.get("aud") != f"kaip:{namespace}":
        raise AssertionError_(f"the subject assertion's audience is not kaip:{namespace}")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise AssertionError_("the subject assertion needs integer exp and iat claims")
    if exp < t - CLOCK_SKEW_SECONDS:
        raise AssertionError_("the subject assertion has expired")
    if iat > t + CLOCK_SKEW_SECONDS or exp - iat > MAX_LIFETIME_SECONDS:
        raise AssertionError_(f"the subject assertion's lifetime must start now and last at most "
                              f"{MAX_LIFETIME_SECONDS} s")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AssertionError_("the subject assertion has no sub claim")
    return sub
