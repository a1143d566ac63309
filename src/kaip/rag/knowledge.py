"""One knowledge base on disk: its chunks, their embeddings and the vector index, and searching them.

`chunks.db` (SQLite) is the truth: every file's content hash, every chunk's text, metadata, owner and
embedding. A sync commits all of its changes in one transaction and bumps a generation counter; the vector
index file is a cache stamped with the generation it reflects, rebuilt from the embeddings whenever the stamp
is stale or the file is damaged. A crash at any point therefore loses nothing that was committed.

Access control is decided here, server-side, from the subject the caller authenticated — never from the query:
a chunk with an owner is a candidate only for that owner; chunks without one are candidates for everyone.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from kaip.api.rag import KnowledgeBaseSpec
from kaip.rag.bm25 import BM25, reciprocal_rank_fusion
from kaip.rag.embeddings import Embedder
from kaip.rag.index import VectorIndex
from kaip.rag.pgvector import PgVectorIndex

# A registry URI (`models:/…`, `runs:/…`) -> the local path (or glob) of its files; raises when it does not resolve.
ArtifactResolver = Callable[[str], Path]

log = logging.getLogger(__name__)

MAX_TOP_K = 100
SOURCE_FIELD = "source"  # every chunk can be filtered by the file it came from


@dataclass(frozen=True)
class KnowledgeBaseConfig:
    name: str
    namespace: str
    spec: KnowledgeBaseSpec

    @property
    def owner_field(self) -> str | None:
        return self.spec.accessControl.ownerField if self.spec.accessControl else None

    @property
    def filter_fields(self) -> list[str]:
        return [f for f in self.spec.metadataFields if f != self.owner_field] + [SOURCE_FIELD]


def kb_from_spec(name: str, namespace: str, spec: Mapping[str, Any]) -> KnowledgeBaseConfig:
    return KnowledgeBaseConfig(name, namespace, KnowledgeBaseSpec.model_validate(dict(spec)))


class QueryError(Exception):
    """A query the caller must fix; `field` names the offending part of the request."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Passage:
    id: int
    score: float
    text: str
    source: str
    position: dict[str, Any]
    metadata: dict[str, Any]
    knowledge_base: str

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "text": self.text, "source": self.source,
                "position": self.position, "metadata": self.metadata, "knowledgeBase": self.knowledge_base,
                "id": self.id}


def value_key(value: Any) -> str:
    """Metadata values compare as text (a CSV's "1500" equals a JSON 1500); booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_filter(raw: Any, allowed: list[str], owner_field: str | None) -> dict[str, set[str]]:
    """A request's filter as {field: accepted values}; an error names the field and what is allowed.

    The owner field is refused outright: who may see a record is decided by the authenticated subject, and a
    filter can only narrow what that subject may see, never name another owner."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise QueryError("filter must be an object of field: value (or field: [values])", "filter")
    out: dict[str, set[str]] = {}
    for name, value in raw.items():
        if owner_field and name == owner_field:
            raise QueryError(f"filter on {name!r} is not allowed: it is the access-control field, and records are "
                             "filtered to the authenticated subject", f"filter.{name}")
        if name not in allowed:
            raise QueryError(f"unknown filter field {name!r}: this knowledge base can filter on "
                             f"{', '.join(allowed)}", f"filter.{name}")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | float | bool) for v in values):
            raise QueryError(f"filter.{name} must be a string, number or boolean, or a non-empty list of them",
                             f"filter.{name}")
        out[name] = {value_key(v) for v in values}
    return out


@dataclass
class _Lookup:
    """In-memory access and filter structures over the committed chunks, rebuilt after every sync."""

    public: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    by_owner: dict[str, np.ndarray] = field(default_factory=dict)
    by_field: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    bm25: BM25 | None = None


SCHEMA = """
create table if not exists meta (key text primary key, value text not null);
create table if not exists files (
  path text primary key, hash text not null, size integer not null, mtime_ns integer not null,
  chunks integer not null);
create table if not exists chunks (
  id integer primary key autoincrement, path text not null, hash text not null, position text not null,
  text text not null, metadata text not null, owner text, embedding blob not null);
create index if not exists chunks_path on chunks(path);
"""


class KnowledgeBase:
    def __init__(self, config: KnowledgeBaseConfig, directory: Path, embedder: Embedder, *,
                 resolve_artifact: ArtifactResolver | None = None, pg_engine: Engine | None = None) -> None:
        self.config = config
        self.directory = directory
        self.embedder = embedder
        self.resolve_artifact = resolve_artifact
        self.pg_engine = pg_engine  # the vectors live in PostgreSQL (pgvector) instead of a FAISS file
        self.index_bytes = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.db_path = directory / "chunks.db"
        self.index_path = directory / "index.npz"
        self._lock = threading.RLock()
        self.sync_lock = threading.Lock()  # one sync at a time
        with self.connect() as db:
            db.executescript(SCHEMA)
            stored = dict(db.execute("select key, value from meta").fetchall())
            if stored.get("embedder") not in (None, embedder.name) or stored.get("dim") not in (None,
                                                                                                 str(embedder.dim)):
                # Another model: every embedding is void. Start over, in one transaction.
                log.info("%s: embedding model changed (%s -> %s): re-embedding everything", self.qualified_name,
                         stored.get("embedder"), embedder.name)
                db.execute("delete from chunks")
                db.execute("delete from files")
                # The index file now reflects nothing that is stored: a new generation makes it stale.
                db.execute("update meta set value = cast(value as integer) + 1 where key = 'generation'")
            db.execute("insert or replace into meta values ('embedder', ?), ('dim', ?)",
                       (embedder.name, str(embedder.dim)))
            db.execute("insert or ignore into meta values ('generation', '0')")
        self._index = self._open_index()
        self._lookup = self._build_lookup()

    @property
    def qualified_name(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose `with` block is one transaction (committed on success, rolled back on error)."""
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=full")
            with db:
                yield db
        finally:
            db.close()

    def generation(self, db: sqlite3.Connection | None = None) -> int:
        if db is None:
            with self.connect() as conn:
                return self.generation(conn)
        return int(db.execute("select value from meta where key = 'generation'").fetchone()[0])

    # ---- the index cache ------------------------------------------------------------------------------------

    @property
    def vector_store(self) -> str:
        return "pgvector" if self.pg_engine is not None else "faiss"

    def _open_index(self) -> VectorIndex | PgVectorIndex:
        generation = self.generation()
        index: VectorIndex | PgVectorIndex
        if self.pg_engine is not None:
            index, stamp = PgVectorIndex.open(self.pg_engine, f"{self.qualified_name}/{self.directory.name}",
                                              self.embedder.dim)
            if stamp == generation:
                return index
            log.info("%s: pgvector table is stale (%s, store at %s): rebuilding", self.qualified_name, stamp,
                     generation)
            index.reset()
        else:
            try:
                index, stamp = VectorIndex.load(self.index_path)
                if stamp == generation and index.dim == self.embedder.dim:
                    self.index_bytes = self.index_path.stat().st_size
                    return index
                log.info("%s: index file is stale (%s, store at %s): rebuilding", self.qualified_name, stamp,
                         generation)
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                log.warning("%s: index file unreadable (%s): rebuilding from the stored embeddings",
                            self.qualified_name, err)
            index = VectorIndex(self.embedder.dim)
        with self.connect() as db:
            rows = db.execute("select id, embedding from chunks order by id").fetchall()
        if rows:
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            index.add(ids, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))
        self.index_bytes = index.save(self.index_path, generation)
        return index

    def drop_index(self) -> None:
        """Remove the index's data outside the knowledge base's folder (the pgvector table)."""
        if isinstance(self._index, PgVectorIndex):
            self._index.drop()

    def _build_lookup(self) -> _Lookup:
        public: list[int] = []
        by_owner: dict[str, list[int]] = {}
        by_field: dict[str, dict[str, list[int]]] = {f: {} for f in self.config.filter_fields}
        texts: list[tuple[int, str]] = []
        with self.connect() as db:
            for chunk_id, path, metadata, owner, text in db.execute(
                    "select id, path, metadata, owner, text from chunks order by id"):
                if owner is None:
                    public.append(chunk_id)
                else:
                    by_owner.setdefault(owner, []).append(chunk_id)
                meta = json.loads(metadata)
                meta[SOURCE_FIELD] = path
                for name, values in by_field.items():
                    if name in meta and meta[name] is not None:
                        values.setdefault(value_key(meta[name]), []).append(chunk_id)
                if self.config.spec.retrieval.hybrid:
                    texts.append((chunk_id, text))
        arr = lambda ids: np.array(ids, dtype=np.int64)  # noqa: E731
        return _Lookup(arr(public), {o: arr(i) for o, i in by_owner.items()},
                       {f: {v: arr(i) for v, i in vals.items()} for f, vals in by_field.items()},
                       BM25(texts) if self.config.spec.retrieval.hybrid else None)

    def refresh(self, index: VectorIndex | None = None) -> None:
        """Swap in a new index and the lookup structures after a committed sync."""
        lookup = self._build_lookup()
        with self._lock:
            if index is not None:
                self._index = index
            self._lookup = lookup

    @property
    def index(self) -> VectorIndex | PgVectorIndex:
        return self._index

    def with_index(self) -> Any:
        return self._lock

    # ---- search ---------------------------------------------------------------------------------------------

    def visible_ids(self, subject: str | None, filters: dict[str, set[str]]) -> np.ndarray:
        """Chunk ids the subject may retrieve that pass the filter: public chunks, plus the subject's own."""
        lookup = self._lookup
        allowed = lookup.public
        if subject is not None and subject in lookup.by_owner:
            allowed = np.union1d(allowed, lookup.by_owner[subject])
        for name, values in filters.items():
            index = lookup.by_field.get(name, {})
            matching = [index[v] for v in values if v in index]
            allowed = np.intersect1d(allowed, np.concatenate(matching)) if matching else allowed[:0]
        return allowed

    def search(self, query: str, *, subject: str | None, top_k: int | None = None,
               filter: Any = None, query_vector: np.ndarray | None = None) -> list[Passage]:
        if not isinstance(query, str) or not query.strip():
            raise QueryError("query must be a non-empty string", "query")
        k = self.config.spec.retrieval.topK if top_k is None else top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
            raise QueryError(f"top_k must be an integer from 1 to {MAX_TOP_K}", "top_k")
        filters = compile_filter(filter, self.config.filter_fields, self.config.owner_field)
        vector = self.embedder.embed([query])[0] if query_vector is None else query_vector
        with self._lock:
            allowed = self.visible_ids(subject, filters)
            ids, scores = self._index.search(vector, k, allowed=allowed)
            bm25 = self._lookup.bm25
        ranked = list(zip(ids.tolist(), scores.tolist(), strict=True))
        if bm25 is not None:
            keyword = bm25.search(query, k, set(allowed.tolist()))
            fused = reciprocal_rank_fusion([[i for i, _ in ranked], [i for i, _ in keyword]])[:k]
            ranked = [(i, 0.0) for i, _ in fused]
        return self._passages(ranked, vector)

    def _passages(self, ranked: list[tuple[int, float]], vector: np.ndarray) -> list[Passage]:
        if not ranked:
            return []
        ids = [i for i, _ in ranked]
        with self.connect() as db:
            rows = {r[0]: r for r in db.execute(
                f"select id, path, position, text, metadata, embedding from chunks where id in "
                f"({','.join('?' * len(ids))})", ids)}
        out = []
        for chunk_id, _ in ranked:
            row = rows.get(chunk_id)
            if row is None:  # removed by a sync that committed after the search: skip it
                continue
            score = float(np.dot(np.frombuffer(row[5], dtype=np.float32), vector))
            out.append(Passage(chunk_id, score, row[3], row[1], json.loads(row[2]), json.loads(row[4]),
                               self.qualified_name))
        return out

    # ---- status ---------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        with self.connect() as db:
            documents = db.execute("select count(*) from files").fetchone()[0]
            chunks = db.execute("select count(*) from chunks").fetchone()[0]
        return {"documents": int(documents), "chunks": int(chunks), "indexBytes": int(self.index_bytes)}
