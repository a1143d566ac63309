"""The vector index in PostgreSQL with pgvector, for a platform that runs on PostgreSQL.

Same contract as `kaip.rag.index.VectorIndex` (the knowledge base's `chunks.db` stays the truth, the index is a
cache stamped with the generation it reflects), so the knowledge base and its sync use either one unchanged.
One table per knowledge base (`vector(dim)` is typed by dimension), and one row per knowledge base in
`kaip_rag_indexes` holding its stamp, written in the same transaction as the vectors — a crash leaves the old
stamp with the old vectors, or the new with the new.

Search is exact inner product (`<#>`; the vectors are unit length, so it is the cosine), a filter a `WHERE` inside
the query. No approximate index is built: measured on the benchmark's 100,000 vectors (BENCHMARKS.md), pgvector's
HNSW with its default build parameters took 324 s to build and reached recall@10 0.24, and its scan filters
*after* the graph walk, so a filtered query could return fewer than k rows — which a filter must never do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, text

INSERT_BATCH = 1000


class PgVectorUnavailable(RuntimeError):
    """The database is not PostgreSQL, or the `vector` extension cannot be created in it."""


def ensure_extension(engine: Engine) -> None:
    """Create pgvector in the database if needed; PgVectorUnavailable with the database's reason otherwise."""
    if engine.dialect.name != "postgresql":
        raise PgVectorUnavailable(f"the platform's database is {engine.dialect.name}, not PostgreSQL")
    try:
        with engine.begin() as conn:
            conn.execute(text("create extension if not exists vector"))
            conn.execute(text("create table if not exists kaip_rag_indexes (key text primary key, dim integer not "
                              "null, stamp bigint not null)"))
    except Exception as err:  # the driver's message says what is missing (no extension files, no privilege)
        raise PgVectorUnavailable(f"pgvector is not available in the platform's PostgreSQL: "
                                  f"{str(err).splitlines()[0]}") from err


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class PgVectorIndex:
    def __init__(self, engine: Engine, key: str, dim: int) -> None:
        self.engine = engine
        self.key = key
        self.dim = dim
        self.table = "kaip_rag_vec_" + hashlib.sha256(key.encode()).hexdigest()[:24]
        self._count = 0

    # ---- opening ----------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, engine: Engine, key: str, dim: int) -> tuple[PgVectorIndex, int | None]:
        """(index, stamp): the stored stamp, or None when the table is missing or of another dimension (the
        caller then rebuilds it from the truth with `reset`)."""
        index = cls(engine, key, dim)
        with engine.connect() as conn:
            row = conn.execute(text("select dim, stamp from kaip_rag_indexes where key = :k"), {"k": key}).first()
            exists = conn.execute(text("select to_regclass(:t)"), {"t": index.table}).scalar() is not None
            if row is None or not exists or int(row[0]) != dim:
                return index, None
            index._count = int(conn.execute(text(f"select count(*) from {index.table}")).scalar() or 0)
        return index, int(row[1])

    def reset(self) -> None:
        """An empty table of this index's dimension (any old one dropped)."""
        with self.engine.begin() as conn:
            conn.execute(text(f"drop table if exists {self.table}"))
            conn.execute(text(f"create table {self.table} (id bigint primary key, embedding vector({self.dim}) "
                              "not null)"))
            conn.execute(text("delete from kaip_rag_indexes where key = :k"), {"k": self.key})
        self._count = 0

    def drop(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"drop table if exists {self.table}"))
            conn.execute(text("delete from kaip_rag_indexes where key = :k"), {"k": self.key})

    # ---- contents (the same calls as VectorIndex) ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def ids(self) -> np.ndarray:
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"select id from {self.table} order by id")).all()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be new and unique")
        with self.engine.begin() as conn:
            for start in range(0, len(ids), INSERT_BATCH):
                conn.execute(text(f"insert into {self.table} (id, embedding) values (:id, cast(:v as vector))"),
                             [{"id": int(i), "v": _literal(v)} for i, v in
                              zip(ids[start:start + INSERT_BATCH], vectors[start:start + INSERT_BATCH], strict=True)])
        self._count += len(ids)

    def remove(self, ids: np.ndarray) -> int:
        with self.engine.begin() as conn:
            gone = conn.execute(text(f"delete from {self.table} where id = any(:ids)"),
                                {"ids": [int(i) for i in np.asarray(ids, dtype=np.int64)]}).rowcount
        self._count -= gone
        return int(gone)

    def search(self, query: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest vectors (ids, cosine scores, best first), among `allowed` ids when given — exactly."""
        q = _literal(np.asarray(query, dtype=np.float32).reshape(self.dim))
        where, params = "", {"q": q, "k": int(k)}
        if allowed is not None and len(allowed) >= self._count:
            allowed = None  # everything is allowed (ids are unique): no list to send
        if allowed is not None:
            if not len(allowed):
                return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
            where, params["ids"] = "where id = any(:ids)", [int(i) for i in allowed]
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"select id, -(embedding <#> cast(:q as vector)) as score from {self.table} "
                                     f"{where} order by embedding <#> cast(:q as vector) limit :k"), params).all()
        return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float32))

    # ---- the stamp ----------------------------------------------------------------------------------------------

    def save(self, path: Path | None, stamp: int) -> int:
        """Record that the table reflects `stamp`; returns the table's size in bytes. (`path` is the file the FAISS
        index would use; unused here.)"""
        with self.engine.begin() as conn:
            conn.execute(text("insert into kaip_rag_indexes (key, dim, stamp) values (:k, :d, :s) on conflict (key) "
                              "do update set dim = excluded.dim, stamp = excluded.stamp"),
                         {"k": self.key, "d": self.dim, "s": int(stamp)})
            return int(conn.execute(text("select pg_total_relation_size(cast(:t as regclass))"),
                                    {"t": self.table}).scalar() or 0)
