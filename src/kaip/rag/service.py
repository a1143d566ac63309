"""The server's RAG state: open knowledge bases (one per object, on disk under `$KAIP_HOME/rag`), and who
a request is for. The controller syncs through it; the query API and the gateway search through it."""

from __future__ import annotations

import base64
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from kaip.api import errors
from kaip.api.core import SECRET, SERVICE_ACCOUNT
from kaip.api.rag import KNOWLEDGE_BASE
from kaip.controlplane.conditions import get_condition
from kaip.rag.embeddings import EmbeddingModelNotFound, load_embedder
from kaip.rag.knowledge import KnowledgeBase, kb_from_spec
from kaip.rag.pgvector import PgVectorIndex, PgVectorUnavailable, ensure_extension
from kaip.rag.subject import (
    ASSERTION_SECRET_ANNOTATION,
    SUBJECT_ANNOTATION,
    AssertionError_,
    verify_assertion,
)
from kaip.store.store import Store

log = logging.getLogger(__name__)


def unavailable_reason(err: Exception) -> str:
    """The condition reason for a knowledge base that cannot be opened."""
    return "VectorStoreUnavailable" if isinstance(err, PgVectorUnavailable) else "EmbeddingModelNotFound"


@dataclass(frozen=True)
class _NamespaceOnly:
    """Registry access for a knowledge base: its own namespace and no other (a run elsewhere does not exist)."""

    namespace: str
    user: str = "system:knowledgebase"

    def can_read(self, namespace: str) -> bool:
        return namespace == self.namespace

    def can_write(self, namespace: str) -> bool:
        return False


class RagService:
    def __init__(self, root: Path, store: Store, *, artifacts_root: Path | None = None) -> None:
        self.root = root
        self.store = store
        self.artifacts_root = artifacts_root if artifacts_root is not None else root.parent / "artifacts"
        self._pgvector: str | None = None  # why pgvector is unavailable ("" when it is available); checked once
        self._open: dict[tuple[str, str], tuple[str, KnowledgeBase]] = {}  # (ns, name) -> (uid/generation, kb)
        self._lock = threading.Lock()

    def directory(self, obj: dict[str, Any]) -> Path:
        meta = obj["metadata"]
        return self.root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    def open(self, obj: dict[str, Any]) -> KnowledgeBase:
        """The knowledge base for a stored object, opened once per spec generation (EmbeddingModelNotFound when
        its model is missing)."""
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        version = f"{meta['uid']}/{meta.get('generation', 1)}"
        with self._lock:
            found = self._open.get(key)
            if found and found[0] == version:
                return found[1]
        spec = obj["spec"]
        embedding = spec.get("embedding") or {}
        model, path = embedding.get("model"), embedding.get("path")
        if model and model.startswith("models:/"):  # a sentence-transformers model registered in Kaip's registry
            try:
                path, model = str(self.resolve_artifact(model, meta["namespace"])), None
            except Exception as err:
                raise EmbeddingModelNotFound(f"{embedding['model']}: {getattr(err, 'message', None) or err}") \
                    from err
        pg_engine = self.vector_engine(spec.get("vectorStore") or "auto")
        embedder = load_embedder(model, path)
        kb = KnowledgeBase(kb_from_spec(meta["name"], meta["namespace"], spec), self.directory(obj), embedder,
                           resolve_artifact=lambda uri: self.resolve_artifact(uri, meta["namespace"]),
                           pg_engine=pg_engine)
        with self._lock:
            self._open[key] = (version, kb)
        return kb

    def vector_engine(self, choice: str) -> Engine | None:
        """The database engine for pgvector, or None for FAISS; PgVectorUnavailable when `pgvector` is demanded
        and the platform's database cannot provide it."""
        if choice == "faiss":
            return None
        if self._pgvector is None:
            try:
                ensure_extension(self.store.engine)
                self._pgvector = ""
            except PgVectorUnavailable as err:
                self._pgvector = str(err)
                if self.store.engine.dialect.name == "postgresql":
                    log.warning("knowledge bases keep their vectors in FAISS files: %s", err)
        if self._pgvector:
            if choice == "pgvector":
                raise PgVectorUnavailable(self._pgvector)
            return None
        return self.store.engine

    def resolve_artifact(self, uri: str, namespace: str) -> Path:
        """The local path (or glob) of registry files — `models:/NAME/VERSION[/PATH]`, `models:/NAME@ALIAS[/PATH]`,
        `runs:/RUN_ID/PATH` — looked up in `namespace` only."""
        from kaip.tracking.uris import artifact_path_for_source, parse_runs_uri, resolve_model_uri

        access = _NamespaceOnly(namespace)
        if uri.startswith("runs:/"):
            from kaip.tracking.service import TrackingService

            run_id, sub = parse_runs_uri(uri)
            info = TrackingService(self.store).get_run(access, run_id)["info"]
            base = artifact_path_for_source(info["artifact_uri"])
            if base is None:
                raise LookupError(f"run {run_id}'s artifacts ({info['artifact_uri']}) are not stored by Kaip")
            return self.artifacts_root / base / sub
        found = resolve_model_uri(self.store, uri, namespace, artifacts_root=self.artifacts_root, access=access)
        if found.local_path is None:
            raise LookupError(f"version {found.version} of {found.name} points at {found.source}, which is not "
                              "stored by Kaip")
        return found.local_path

    def evict(self, namespace: str, name: str) -> None:
        with self._lock:
            self._open.pop((namespace, name), None)

    def delete_data(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.evict(meta["namespace"], meta["name"])
        if self._pgvector == "":  # its table, if it had one (dropping a missing table is a no-op)
            key = f"{meta['namespace']}/{meta['name']}/{self.directory(obj).name}"
            PgVectorIndex(self.store.engine, key, 0).drop()
        shutil.rmtree(self.directory(obj), ignore_errors=True)

    def for_query(self, namespace: str, name: str) -> KnowledgeBase:
        """A knowledge base ready to answer, or a 4xx that says why not."""
        obj = self.store.get(KNOWLEDGE_BASE, namespace, name)
        try:
            kb = self.open(obj)
        except (EmbeddingModelNotFound, PgVectorUnavailable) as err:
            raise errors.ApiError(409, unavailable_reason(err), f'knowledgebase "{name}" cannot answer queries: '
                                  f"{err}", kind="knowledgebases", name=name) from err
        ready = get_condition(obj.get("status"), "Ready")
        if ready is None and kb.generation() == 0:
            raise errors.ApiError(409, "NotReady", f'knowledgebase "{name}" has not been indexed yet; try again '
                                  "once its Ready condition is True", kind="knowledgebases", name=name)
        return kb

    # ---- subjects -------------------------------------------------------------------------------------------

    def subject_for(self, user: str, namespace: str, assertion: str | None) -> str:
        """The subject of a request by `user` (authenticated) in `namespace`, optionally with an assertion
        header; 403 for an assertion the caller may not make or that does not verify."""
        account = None
        if user.startswith("system:serviceaccount:"):
            _, _, sa_ns, sa_name = user.split(":", 3)
            account = self.store.try_get(SERVICE_ACCOUNT, sa_ns, sa_name)
        annotations = ((account or {}).get("metadata") or {}).get("annotations") or {}
        if assertion is None:
            return annotations.get(SUBJECT_ANNOTATION) or user
        secret_name = annotations.get(ASSERTION_SECRET_ANNOTATION)
        if account is None or not secret_name or account["metadata"]["namespace"] != namespace:
            raise errors.ApiError(403, "Forbidden", f'User "{user}" may not assert a subject in namespace '
                                  f'"{namespace}": only a service account of that namespace annotated '
                                  f"{ASSERTION_SECRET_ANNOTATION} may")
        secret = self.store.try_get(SECRET, namespace, secret_name)
        raw = ((secret or {}).get("data") or {}).get("key")
        if not raw:
            raise errors.ApiError(403, "Forbidden", f'the subject-assertion secret "{secret_name}" (key "key") is '
                                  f'missing in namespace "{namespace}"')
        try:
            return verify_assertion(assertion, base64.b64decode(raw), issuer=user, namespace=namespace)
        except AssertionError_ as err:
            raise errors.ApiError(403, "Forbidden", str(err)) from err
