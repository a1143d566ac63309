"""Authentication (bearer tokens, stored hashed) and authorization (roles bound per namespace).

Roles are Kubernetes' default user-facing ClusterRoles: `view` reads, `edit` also writes, `admin` also
manages who may do what in the namespace (RoleBindings, ServiceAccount tokens). A ClusterRoleBinding
grants its role in every namespace and at the cluster scope. Bindings are ordinary `rbac.authorization.k8s.io/v1`
objects in the store; the cache of them is rebuilt after any of them changes.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from kaip.api import errors
from kaip.api.core import CLUSTER_ROLE_BINDING, NAMESPACE, ROLE_BINDING, SECRET, SERVICE_ACCOUNT
from kaip.api.kinds import KindInfo
from kaip.store.store import Store

RANK = {"view": 1, "edit": 2, "admin": 3}
CLUSTER = "*"
READ_VERBS = {"get", "list", "watch"}
RBAC_KINDS = {ROLE_BINDING.key, CLUSTER_ROLE_BINDING.key, SERVICE_ACCOUNT.key}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "kaip_" + secrets.token_urlsafe(32)


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Identity:
    user: str


class Authorizer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._grants: dict[str, dict[str, int]] | None = None
        # token hash -> (user, expires_at, when looked up); lookups are re-done after TOKEN_CACHE_SECONDS.
        self._tokens: dict[str, tuple[str, float | None, float]] = {}
        store.add_listener(self._on_change)

    TOKEN_CACHE_SECONDS = 10.0

    def _on_change(self, _rv: int, kind_key: str) -> None:
        if kind_key in (ROLE_BINDING.key, CLUSTER_ROLE_BINDING.key):
            with self._lock:
                self._grants = None
        elif kind_key == SERVICE_ACCOUNT.key:
            # A deleted service account's tokens stop working at once, not when the cache expires.
            with self._lock:
                self._tokens.clear()

    def _load(self) -> dict[str, dict[str, int]]:
        with self._lock:
            if self._grants is not None:
                return self._grants
        grants: dict[str, dict[str, int]] = {}
        for info in (ROLE_BINDING, CLUSTER_ROLE_BINDING):
            items, _ = self.store.list(info)
            for rb in items:
                scope = rb["metadata"].get("namespace") or CLUSTER
                rank = RANK[rb["roleRef"]["name"]]
                for subject in rb.get("subjects") or []:
                    if subject["kind"] == "ServiceAccount":
                        user = service_account_user(subject.get("namespace") or scope, subject["name"])
                    else:
                        user = subject["name"]
                    per = grants.setdefault(user, {})
                    per[scope] = max(per.get(scope, 0), rank)
        with self._lock:
            self._grants = grants
        return grants

    # ---- authentication -----------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.startswith("Bearer "):
            raise errors.unauthorized()
        digest = hash_token(authorization.removeprefix("Bearer ").strip())
        now = time.time()
        with self._lock:
            cached = self._tokens.get(digest)
        if cached is None or now - cached[2] > self.TOKEN_CACHE_SECONDS:
            found = self.store.find_token(digest)
            if found is None or not self._subject_exists(found[0]):
                raise errors.unauthorized()
            cached = (found[0], found[2], now)
            with self._lock:
                if len(self._tokens) > 10_000:
                    self._tokens.clear()
                self._tokens[digest] = cached
        user, expires_at, _ = cached
        if expires_at is not None and expires_at < now:
            raise errors.unauthorized()
        return Identity(user)

    def authenticate_cached(self, authorization: str | None) -> Identity | None:
        """The identity if the token was looked up recently (no I/O), else None: the caller does the lookup."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hash_token(authorization.removeprefix("Bearer ").strip())
        now = time.time()
        with self._lock:
            cached = self._tokens.get(digest)
        if cached is None or now - cached[2] > self.TOKEN_CACHE_SECONDS or (cached[1] and cached[1] < now):
            return None
        return Identity(cached[0])

    def _subject_exists(self, user: str) -> bool:
        """A service account's tokens are valid only while the service account exists."""
        if not user.startswith("system:serviceaccount:"):
            return True
        _, _, namespace, name = user.split(":", 3)
        return self.store.try_get(SERVICE_ACCOUNT, namespace, name) is not None

    def issue(self, user: str, namespace: str = "", *, ttl_seconds: int | None = None,
              description: str = "") -> tuple[str, float | None]:
        token = new_token()
        expires_at = time.time() + ttl_seconds if ttl_seconds else None
        self.store.add_token(hash_token(token), user, namespace, expires_at=expires_at, description=description)
        return token, expires_at

    # ---- authorization ------------------------------------------------------------------------------

    def rank(self, user: str, namespace: str | None) -> int:
        per = self._load().get(user, {})
        cluster = per.get(CLUSTER, 0)
        return max(cluster, per.get(namespace, 0)) if namespace else cluster

    def visible_namespaces(self, user: str, info: KindInfo | None = None) -> set[str] | None:
        """Namespaces the user may read in (objects of `info`, when given), or None for all of them."""
        needed = self._needed("list", info, None) if info is not None else RANK["view"]
        per = self._load().get(user, {})
        if per.get(CLUSTER, 0) >= needed:
            return None
        return {ns for ns, r in per.items() if ns != CLUSTER and r >= needed}

    def check(self, ident: Identity, verb: str, info: KindInfo, namespace: str | None, *,
              name: str | None = None, subresource: str | None = None) -> None:
        needed = self._needed(verb, info, subresource)
        if subresource == "status" and verb not in READ_VERBS:
            # Status is what controllers observed; only cluster admins (the controllers' side) write it.
            ok = self.rank(ident.user, None) >= RANK["admin"]
        elif info.namespaced and namespace:
            ok = self.rank(ident.user, namespace) >= needed
        elif info.namespaced and verb in ("list", "watch"):
            # Across namespaces: anyone who may read somewhere; the caller shows only `visible_namespaces`.
            ok = self.rank(ident.user, None) >= needed or bool(self.visible_namespaces(ident.user, info))
        elif info.namespaced:
            ok = self.rank(ident.user, None) >= needed
        elif info is NAMESPACE and verb in READ_VERBS:
            # A team may see the namespaces it has a role in; `list` and `watch` are filtered by the caller.
            ok = verb in ("list", "watch") or self.rank(ident.user, name) >= needed
        elif verb in READ_VERBS and info is not CLUSTER_ROLE_BINDING:
            # Cluster-scoped definitions (queues, runtimes) are readable by anyone with some role.
            ok = bool(self._load().get(ident.user))
        else:
            ok = self.rank(ident.user, None) >= needed
        if not ok:
            resource = info.plural + (f"/{subresource}" if subresource else "")
            raise errors.forbidden(ident.user, verb, resource, namespace if info.namespaced else None)

    @staticmethod
    def _needed(verb: str, info: KindInfo, subresource: str | None) -> int:
        if verb in READ_VERBS:
            # As Kubernetes' `view` role: it reads everything but Secrets (which hold credentials).
            return RANK["edit"] if info is SECRET else RANK["view"]
        if info.key in RBAC_KINDS or subresource == "token":
            return RANK["admin"]
        return RANK["edit"]
