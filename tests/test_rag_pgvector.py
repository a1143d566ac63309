"""Knowledge-base vectors in PostgreSQL with pgvector (a server from the pgserver wheel: Debian 12 has no pgvector):
the same answers as exact search, filters inside the query, the generation stamp, and a live server on
PostgreSQL choosing pgvector by itself."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, text

from kaip.rag.embeddings import HashingEmbedder
from kaip.rag.knowledge import KnowledgeBase, kb_from_spec
from kaip.rag.pgvector import PgVectorIndex, PgVectorUnavailable, ensure_extension
from kaip.rag.sync import sync_knowledge_base
from kaip.testing.live import live_server
from kaip.testing.postgres import temporary_postgres

KB = "/apis/kaip.dev/v1alpha1/namespaces/default/knowledgebases"


@pytest.fixture(scope="module")
def pgvector_url() -> Iterator[str]:
    with temporary_postgres(pgvector=True) as url:
        yield url


@pytest.fixture
def engine(pgvector_url: str) -> Iterator[Engine]:
    eng = create_engine(pgvector_url)
    with eng.begin() as conn:
        conn.execute(text("drop schema public cascade; create schema public"))
    ensure_extension(eng)
    yield eng
    eng.dispose()


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_pgvector_index_is_exact_filters_inside_and_keeps_its_stamp(engine: Engine) -> None:
    rng = np.random.default_rng(4)
    x = unit(rng, 1500, 32)
    ids = np.arange(1000, 2500, dtype=np.int64)
    index, stamp = PgVectorIndex.open(engine, "default/docs/x", 32)
    assert stamp is None  # nothing stored yet: the caller rebuilds
    index.reset()
    index.add(ids, x)
    assert index.save(None, 3) > 0 and len(index) == 1500
    for q in unit(rng, 10, 32):
        found, scores = index.search(q, 10)
        assert found.tolist() == ids[np.argsort(-(x @ q))[:10]].tolist()
        assert np.allclose(scores, np.sort(x @ q)[::-1][:10], atol=1e-5)
        allowed = rng.choice(ids, 15, replace=False)
        found, _ = index.search(q, 10, allowed=allowed)
        sub = np.isin(ids, allowed)
        assert found.tolist() == ids[sub][np.argsort(-(x[sub] @ q))[:10]].tolist()
    assert index.remove(ids[:500]) == 500
    found, _ = index.search(unit(rng, 1, 32)[0], 50)
    assert not set(found.tolist()) & set(ids[:500].tolist())
    reopened, stamp = PgVectorIndex.open(engine, "default/docs/x", 32)
    assert stamp == 3 and len(reopened) == 1000
    assert PgVectorIndex.open(engine, "default/docs/x", 64)[1] is None  # another model's dimension: rebuild

    reopened.drop()
    assert PgVectorIndex.open(engine, "default/docs/x", 32)[1] is None


def test_knowledge_base_on_pgvector_isolates_owners_and_rebuilds_a_stale_table(engine: Engine,
                                                                               tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "plans.md").write_text("# Gold plan\n\nThe gold plan deductible is 500 dollars a year.\n")
    (corpus / "members.jsonl").write_text(
        json.dumps({"member_id": "M-1", "note": "member one claim for a knee x-ray"}) + "\n"
        + json.dumps({"member_id": "M-2", "note": "member two claim for a knee x-ray"}) + "\n")
    spec = {"sources": [{"path": str(corpus / "plans.md")}, {"path": str(corpus / "members.jsonl")}],
            "accessControl": {"ownerField": "member_id"}}
    embedder = HashingEmbedder()
    kb = KnowledgeBase(kb_from_spec("members", "default", spec), tmp_path / "kb", embedder, pg_engine=engine)
    report = sync_knowledge_base(kb)
    assert kb.vector_store == "pgvector" and report.chunks == 3 and report.index_bytes > 0
    for member, other in (("M-1", "member two"), ("M-2", "member one")):
        passages = kb.search("knee x-ray claim", subject=member, top_k=3)
        texts = " ".join(p.text for p in passages)
        assert other not in texts and len(passages) == 2  # the plan document and the member's own record

    # The table lost a row behind the knowledge base's back (a crash between the two stores): the stamp no
    # longer matches after the next sync bumps the generation, and reopening rebuilds from chunks.db.
    with engine.begin() as conn:
        conn.execute(text("update kaip_rag_indexes set stamp = stamp - 1"))
    again = KnowledgeBase(kb_from_spec("members", "default", spec), tmp_path / "kb", embedder, pg_engine=engine)
    assert len(again.index) == 3
    assert [p.text for p in again.search("gold plan deductible", subject=None, top_k=1)][0].startswith("Gold plan")


def test_a_server_on_postgresql_keeps_vectors_in_pgvector(pgvector_url: str, tmp_path: Path) -> None:
    engine = create_engine(pgvector_url)
    with engine.begin() as conn:
        conn.execute(text("drop schema public cascade; create schema public"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text("# Leave\n\nEmployees get sixteen weeks of paid parental leave.\n")
    with live_server(tmp_path / "home", database_url=pgvector_url, bookmark_seconds=0.5) as live:
        admin = live.client()
        doc = {"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase", "metadata": {"name": "policies"},
               "spec": {"sources": [{"path": str(docs)}]}}
        assert admin.post(KB, json=doc).status_code == 201
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = admin.get(f"{KB}/policies").json().get("status", {})
            if status.get("chunks"):
                break
            time.sleep(0.2)
        assert status["vectorStore"] == "pgvector" and status["indexBytes"] > 0, status
        r = admin.post(f"{KB}/policies/query", json={"query": "parental leave", "top_k": 1})
        assert r.status_code == 200 and "sixteen weeks" in r.json()["passages"][0]["text"]
        with engine.connect() as conn:
            tables = conn.execute(text("select count(*) from pg_tables where tablename like 'kaip_rag_vec_%'")).scalar()
        assert tables == 1
        assert admin.delete(f"{KB}/policies").status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tables:
            with engine.connect() as conn:
                tables = conn.execute(
                    text("select count(*) from pg_tables where tablename like 'kaip_rag_vec_%'")).scalar()
            time.sleep(0.2)
        assert tables == 0  # deleting the knowledge base drops its table
    engine.dispose()


def test_pgvector_demanded_on_sqlite_says_why(server: object) -> None:
    admin = server.client()  # type: ignore[attr-defined]
    doc = {"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase", "metadata": {"name": "pg"},
           "spec": {"sources": [{"path": "/nonexistent"}], "vectorStore": "pgvector"}}
    assert admin.post(KB, json=doc).status_code == 201
    deadline = time.monotonic() + 20
    ready = None
    while time.monotonic() < deadline and ready is None:
        conds = admin.get(f"{KB}/pg").json().get("status", {}).get("conditions", [])
        ready = next((c for c in conds if c["type"] == "Ready"), None)
        time.sleep(0.2)
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "VectorStoreUnavailable"
    assert "the platform's database is sqlite, not PostgreSQL" in ready["message"]
    with pytest.raises(PgVectorUnavailable, match="not PostgreSQL"):
        ensure_extension(create_engine("sqlite://"))
