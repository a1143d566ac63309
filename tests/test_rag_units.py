"""RAG logic without the real model: chunking, parsing, filters, the vector index, incremental sync, subject
assertions and prompt augmentation (a deterministic hashing embedder stands in for the model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from kaip.api.rag import KnowledgeBaseSpec
from kaip.rag import documents
from kaip.rag.augment import augment, last_user_text
from kaip.rag.bm25 import BM25, reciprocal_rank_fusion
from kaip.rag.chunking import chunk_sections, windows
from kaip.rag.embeddings import EmbeddingModelNotFound, HashingEmbedder, resolve_model
from kaip.rag.index import VectorIndex
from kaip.rag.knowledge import KnowledgeBase, QueryError, compile_filter, kb_from_spec
from kaip.rag.subject import AssertionError_, sign_assertion, verify_assertion
from kaip.rag.sync import FileStat, StoredFile, plan_chunks, plan_files, sync_knowledge_base

DATA = Path(__file__).parent / "data" / "rag"


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- parsing and chunking -----------------------------------------------------------------------------------

def test_markdown_sections_follow_heading_paths_and_skip_code_fences() -> None:
    text = "# Plans\nintro\n## Gold\ngold text\n```\n# not a heading\n```\n## Silver\nsilver text\n"
    sections = documents.markdown_sections(text)
    assert [s.heading for s in sections] == ["Plans", "Plans > Gold", "Plans > Silver"]
    assert "# not a heading" in sections[1].text


def test_html_headings_become_sections_and_scripts_are_dropped() -> None:
    html = "<html><head><style>x{}</style></head><body><h1>Title</h1><p>Hello <b>there</b></p>" \
           "<script>alert(1)</script><h2>Part</h2><p>More</p></body></html>"
    sections = documents.markdown_sections(documents.html_to_markdown(html))
    assert [s.heading for s in sections] == ["Title", "Title > Part"]
    assert sections[0].text == "Hello there"
    assert "alert" not in json.dumps([s.text for s in sections])


def test_jsonl_and_csv_keep_good_records_and_name_bad_ones() -> None:
    parsed = documents.jsonl_records('{"a": 1}\nnot json\n[1]\n\n{"a": 2}\n')
    assert [r.number for r in parsed.records] == [1, 5]
    assert parsed.problems == ["line 2: invalid JSON (Expecting value)", "line 3: a record must be a JSON object"]
    rows = documents.csv_records("name,plan\nAda,Gold\nBen,Silver,extra\n")
    assert [r.fields for r in rows.records] == [{"name": "Ada", "plan": "Gold"}]
    assert rows.problems == ["row 2: more values than header columns"]


def test_windows_respect_size_and_overlap() -> None:
    counts = [1] * 25
    spans = windows(counts, size=10, overlap=3)
    assert spans[0] == (0, 10)
    assert all(sum(counts[a:b]) <= 10 for a, b in spans)
    assert all(prev[1] - nxt[0] == 3 for prev, nxt in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == 25
    assert windows([50, 1, 1], size=10, overlap=2) == [(0, 1), (1, 3)]  # an oversized word stands alone


def test_chunks_carry_heading_and_stay_within_the_token_budget() -> None:
    embedder = HashingEmbedder()
    text = " ".join(f"word{i}" for i in range(300))
    chunks = chunk_sections([documents.Section("Plans > Gold", text)], size=50, overlap=10,
                            split_on_headings=True, count_tokens=embedder.count_tokens)
    assert len(chunks) > 5
    assert all(c.text.startswith("Plans > Gold\n") for c in chunks)
    assert all(sum(embedder.count_tokens(c.text.split())) <= 50 for c in chunks)
    assert [c.position["index"] for c in chunks] == list(range(len(chunks)))


def test_spec_validation_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="chunkOverlap"):
        KnowledgeBaseSpec.model_validate({"sources": [{"path": "x"}], "chunking": {"chunkSize": 32,
                                                                                     "chunkOverlap": 32}})
    with pytest.raises(ValidationError, match="either model or path"):
        KnowledgeBaseSpec.model_validate({"sources": [{"path": "x"}], "embedding": {"model": "a", "path": "/b"}})
    with pytest.raises(ValidationError, match="placeholder"):
        KnowledgeBaseSpec.model_validate({"sources": [{"path": "x"}], "retrieval": {"promptTemplate": "no"}})
    spec = KnowledgeBaseSpec.model_validate({"sources": [{"path": "x"}]})
    assert spec.embedding.model == "all-MiniLM-L6-v2"


def test_missing_embedding_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelNotFound, match="unknown embedding model 'bert-huge'"):
        resolve_model("bert-huge", None)
    with pytest.raises(EmbeddingModelNotFound, match=str(tmp_path)):
        resolve_model(None, str(tmp_path))


# ---- filters ------------------------------------------------------------------------------------------------

def test_filter_compilation_refuses_unknown_and_owner_fields() -> None:
    allowed = ["category", "plan", "source"]
    assert compile_filter({"plan": ["Gold", "Silver"], "category": 1}, allowed, "member_id") == \
        {"plan": {"Gold", "Silver"}, "category": {"1"}}
    with pytest.raises(QueryError, match="unknown filter field 'color': this knowledge base can filter on "
                                         "category, plan, source"):
        compile_filter({"color": "red"}, allowed, "member_id")
    with pytest.raises(QueryError, match="access-control field"):
        compile_filter({"member_id": "EVM-1"}, allowed, "member_id")
    with pytest.raises(QueryError, match="must be an object"):
        compile_filter(["plan"], allowed, None)
    with pytest.raises(QueryError, match="non-empty list"):
        compile_filter({"plan": []}, allowed, None)


# ---- the vector index ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("exact_below", [10_000, 100])  # float32 scan, and the quantised scan with re-ranking
def test_index_matches_exact_search_and_filters_inside(exact_below: int) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 3000, 32)
    ids = np.arange(1000, 4000, dtype=np.int64)
    index = VectorIndex(32, exact_below=exact_below)
    index.add(ids, x)
    assert index.uses_quantised_scan == (exact_below < 3000)
    for q in unit(rng, 20, 32):
        found, scores = index.search(q, 10)
        truth = ids[np.argsort(-(x @ q))[:10]]
        assert set(found.tolist()) == set(truth.tolist())
        assert np.all(np.diff(scores) <= 1e-6)
        # A selective filter: only 15 records match; all of them far from the query would be lost by post-filtering.
        allowed = rng.choice(ids, 15, replace=False)
        found, _ = index.search(q, 10, allowed=allowed)
        assert len(found) == 10 and set(found.tolist()) <= set(allowed.tolist())
        sub = np.isin(ids, allowed)
        assert set(found.tolist()) == set(ids[sub][np.argsort(-(x[sub] @ q))[:10]].tolist())
        # A broad filter (half the records, above exact_below): the quantised scan over-fetches, then filters.
        allowed = ids[::2]
        found, _ = index.search(q, 10, allowed=allowed)
        assert set(found.tolist()) == set(allowed[np.argsort(-(x[::2] @ q))[:10]].tolist())


def test_quantised_scan_survives_removal_and_reload(tmp_path: Path) -> None:
    """Tombstones are excluded from the quantised scan's candidates, and a reloaded index answers the same."""
    rng = np.random.default_rng(3)
    x = unit(rng, 2000, 24)
    index = VectorIndex(24, exact_below=500)
    index.add(np.arange(2000), x)
    removed = np.arange(0, 2000, 7)
    index.remove(removed)  # under a quarter: tombstones stay
    assert index.uses_quantised_scan and len(index) == 2000 - len(removed)
    keep = np.setdiff1d(np.arange(2000), removed)
    for q in unit(rng, 10, 24):
        found, _ = index.search(q, 10)
        assert set(found.tolist()) == set(keep[np.argsort(-(x[keep] @ q))[:10]].tolist())
    index.save(tmp_path / "i.npz", stamp=1)
    loaded, _ = VectorIndex.load(tmp_path / "i.npz")
    assert loaded.uses_quantised_scan
    q = unit(rng, 1, 24)[0]
    assert loaded.search(q, 10)[0].tolist() == index.search(q, 10)[0].tolist()


def test_index_removal_persistence_and_stale_detection(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 200, 16)
    index = VectorIndex(16)
    index.add(np.arange(200), x)
    assert index.remove(np.arange(0, 100, 2)) == 50
    assert len(index) == 150
    for q in unit(rng, 5, 16):
        found, _ = index.search(q, 20)
        assert not set(found.tolist()) & set(range(0, 100, 2))
    size = index.save(tmp_path / "i.npz", stamp=7)
    assert size == (tmp_path / "i.npz").stat().st_size
    loaded, stamp = VectorIndex.load(tmp_path / "i.npz")
    assert stamp == 7 and len(loaded) == 150
    q = unit(rng, 1, 16)[0]
    assert loaded.search(q, 5)[0].tolist() == index.search(q, 5)[0].tolist()
    with pytest.raises(ValueError, match="new and unique"):
        loaded.add(np.array([1]), x[:1])
    loaded.add(np.array([0]), x[:1])  # a removed id may come back
    assert 0 in loaded.ids()
    (tmp_path / "bad.npz").write_bytes(b"not an index")
    with pytest.raises((ValueError, OSError)):
        VectorIndex.load(tmp_path / "bad.npz")


def test_bm25_and_rank_fusion() -> None:
    bm = BM25([(1, "gold plan deductible"), (2, "silver plan copay"), (3, "claim CLM-0004-1 lab panel")])
    assert bm.search("CLM-0004-1", 3)[0][0] == 3
    assert bm.search("plan", 3, allowed={2}) == [(2, pytest.approx(bm.search("plan", 3, allowed={2})[0][1]))]
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]])
    assert [i for i, _ in fused] == [1, 3, 2]


# ---- sync -----------------------------------------------------------------------------------------------------

def test_plans_are_pure_decisions() -> None:
    stored = {"a": StoredFile("h1", 10, 1), "b": StoredFile("h2", 20, 2), "gone": StoredFile("h3", 1, 1)}
    present = {"a": FileStat(10, 1), "b": FileStat(21, 2), "new": FileStat(5, 5)}
    assert plan_files(stored, present) == (["b", "new"], ["gone"])
    assert plan_files(stored, present, reread_all=True)[0] == ["a", "b", "new"]
    emb = HashingEmbedder()
    chunks = chunk_sections([documents.Section("", "one two three")], size=50, overlap=5, split_on_headings=True,
                            count_tokens=emb.count_tokens)
    keep, embed, remove = plan_chunks([(7, chunks[0].content_hash), (8, "old")], chunks)
    assert (keep, embed, remove) == ({0: 7}, [], [8])


def _kb(tmp_path: Path, corpus: Path, embedder: HashingEmbedder, **extra: object) -> KnowledgeBase:
    spec = {"sources": [{"path": str(corpus / "*.md"), "metadata": {"category": "docs"}},
                        {"path": str(corpus / "members.jsonl")}],
            "chunking": {"chunkSize": 64, "chunkOverlap": 8}, "metadataFields": ["category", "plan", "member_id"],
            "accessControl": {"ownerField": "member_id"}, **extra}
    return KnowledgeBase(kb_from_spec("kb", "ns", spec), tmp_path / "kb", embedder)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    shutil.copytree(DATA / "corpus", root)
    shutil.copy(DATA / "members.jsonl", root / "members.jsonl")
    return root


def test_incremental_sync_reembeds_only_what_changed(tmp_path: Path, corpus: Path) -> None:
    embedder = HashingEmbedder()
    kb = _kb(tmp_path, corpus, embedder)
    first = sync_knowledge_base(kb)
    assert first.documents == 5 and first.problems == []
    assert first.embedded == first.chunks > 12
    assert sync_knowledge_base(kb).embedded == 0  # nothing changed: nothing read again

    # Edit one section of one document: only that document's changed chunks are embedded.
    glossary = corpus / "glossary.md"
    before = kb.stats()["chunks"]
    glossary.write_text(glossary.read_text().replace("It is not a bill.", "It is not a bill; keep it for taxes."))
    edited = sync_knowledge_base(kb)
    assert edited.files_changed == [str(glossary)]
    assert edited.embedded == 1 and edited.removed == 1 and edited.kept >= 5
    assert kb.stats()["chunks"] == before
    hits = kb.search("keep it for taxes", subject=None, top_k=1)
    assert "taxes" in hits[0].text

    # Touching a file without changing it re-reads it but embeds nothing.
    os.utime(corpus / "faq.md", ns=(1, 1))
    assert sync_knowledge_base(kb).embedded == 0

    # Deleting a document removes its chunks from the store and the index.
    faq_chunks = sum(1 for _ in kb.search("claim", subject=None, top_k=100, filter={"source": str(corpus / "faq.md")}))
    assert faq_chunks > 0
    (corpus / "faq.md").unlink()
    gone = sync_knowledge_base(kb)
    assert gone.files_removed == [str(corpus / "faq.md")] and gone.removed == faq_chunks
    assert kb.search("claim", subject=None, top_k=100, filter={"source": str(corpus / "faq.md")}) == []
    assert gone.chunks == before - faq_chunks


def test_unreadable_files_are_named_and_the_rest_indexed(tmp_path: Path, corpus: Path) -> None:
    (corpus / "broken.md").write_bytes(b"\xff\xfe\x00bad")
    with open(corpus / "members.jsonl", "a") as fh:
        fh.write("{oops\n")
        fh.write(json.dumps({"name": "No Owner", "plan": "Gold"}) + "\n")
    kb = _kb(tmp_path, corpus, HashingEmbedder())
    report = sync_knowledge_base(kb)
    assert any(p.startswith(f"{corpus / 'broken.md'}: not UTF-8 text") for p in report.problems)
    assert any("line 13: invalid JSON" in p for p in report.problems)
    assert any("line 14: no member_id: not indexed (owner-scoped source)" in p for p in report.problems)
    assert report.documents == 5  # the four good documents and the member records
    assert kb.search("No Owner", subject=None, top_k=100, filter={"plan": "Gold"}) == []


def test_a_lost_or_damaged_index_file_is_rebuilt_from_the_store(tmp_path: Path, corpus: Path) -> None:
    embedder = HashingEmbedder()
    kb = _kb(tmp_path, corpus, embedder)
    sync_knowledge_base(kb)
    expected = [p.id for p in kb.search("deductible", subject="EVM-100001", top_k=8)]
    kb.index_path.write_bytes(b"half-written")
    reopened = _kb(tmp_path, corpus, embedder)
    assert [p.id for p in reopened.search("deductible", subject="EVM-100001", top_k=8)] == expected
    # A stale file (older generation than the committed store) is detected by its stamp and rebuilt too.
    old = kb.index_path.read_bytes()
    (corpus / "plans.md").unlink()
    sync_knowledge_base(reopened)
    kb.index_path.write_bytes(old)
    again = _kb(tmp_path, corpus, embedder)
    assert len(again.index) == again.stats()["chunks"]


def test_owner_records_are_visible_only_to_their_owner(tmp_path: Path, corpus: Path) -> None:
    kb = _kb(tmp_path, corpus, HashingEmbedder(), retrieval={"hybrid": True})
    sync_knowledge_base(kb)
    members = [json.loads(line)["member_id"] for line in (corpus / "members.jsonl").read_text().splitlines()]
    for me in members:
        for question in ("show me the claims of every member", f"member id {members[0]} claims", "deductible met"):
            for p in kb.search(question, subject=me, top_k=30):
                assert p.metadata.get("member_id") in (None, me)
    anonymous = kb.search("member id claims deductible", subject=None, top_k=50)
    assert anonymous and all("member_id" not in p.metadata for p in anonymous)


def test_search_input_errors(tmp_path: Path, corpus: Path) -> None:
    kb = _kb(tmp_path, corpus, HashingEmbedder())
    sync_knowledge_base(kb)
    with pytest.raises(QueryError, match="query must be a non-empty string"):
        kb.search("   ", subject=None)
    with pytest.raises(QueryError, match="top_k must be an integer from 1 to 100"):
        kb.search("x", subject=None, top_k=0)
    with pytest.raises(QueryError, match="unknown filter field 'color'"):
        kb.search("x", subject=None, filter={"color": "red"})


# ---- subjects and augmentation -------------------------------------------------------------------------------

def test_subject_assertions_verify_issuer_audience_expiry_and_signature() -> None:
    key = b"k" * 32
    app = "system:serviceaccount:healthcare:chatbot"
    token = sign_assertion(key, issuer=app, subject="EVM-100001", namespace="healthcare", now=1000)
    assert verify_assertion(token, key, issuer=app, namespace="healthcare", now=1100) == "EVM-100001"
    cases = {
        "signature does not verify": dict(key=b"x" * 32),
        "issued for": dict(issuer="system:serviceaccount:healthcare:member"),
        "audience": dict(namespace="other"),
        "expired": dict(now=5000),
    }
    for message, change in cases.items():
        args = {"key": key, "issuer": app, "namespace": "healthcare", "now": 1100, **change}
        with pytest.raises(AssertionError_, match=message):
            verify_assertion(token, args.pop("key"), **args)  # type: ignore[arg-type]
    header, payload, sig = token.split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    with pytest.raises(AssertionError_):
        verify_assertion(f"{header}.{forged}.{sig}", key, issuer=app, namespace="healthcare", now=1100)
    long_lived = sign_assertion(key, issuer=app, subject="x", namespace="healthcare", ttl_seconds=86400, now=1000)
    with pytest.raises(AssertionError_, match="at most 3600"):
        verify_assertion(long_lived, key, issuer=app, namespace="healthcare", now=1100)


def test_augment_adds_numbered_context_to_the_system_prompt(tmp_path: Path, corpus: Path) -> None:
    kb = _kb(tmp_path, corpus, HashingEmbedder(), retrieval={"topK": 3, "promptTemplate": "CONTEXT:\n{context}"})
    sync_knowledge_base(kb)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "Gold plan deductible"}]}]
    assert last_user_text(messages) == "Gold plan deductible"
    out, sources = augment(messages, [kb], subject="EVM-100001")
    assert messages[0]["content"] == "Be brief."  # the caller's list is not changed
    assert out[0]["content"].startswith("Be brief.\n\nCONTEXT:\n[1] (")
    assert [s["index"] for s in sources] == [1, 2, 3]
    assert all(f"[{s['index']}]" in out[0]["content"] for s in sources)
    assert out[1:] == messages[1:]
    unchanged, none = augment([{"role": "user", "content": ""}], [kb], subject=None)
    assert none == [] and unchanged == [{"role": "user", "content": ""}]
    inserted, _ = augment([{"role": "user", "content": "copay"}], [kb], subject=None)
    assert inserted[0]["role"] == "system" and inserted[1] == {"role": "user", "content": "copay"}


def test_gateway_helpers_augment_a_chat_body(tmp_path: Path, corpus: Path) -> None:
    from kaip.rag.gateway import augment_chat_body, knowledge_base_names, with_sources

    kb = _kb(tmp_path, corpus, HashingEmbedder())
    sync_knowledge_base(kb)
    assert knowledge_base_names({"kaip.dev/knowledge-bases": " plans, member-kb ,"}) == ["plans", "member-kb"]
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Gold plan copay"}]}).encode()
    new_body, sources = augment_chat_body(body, [kb], "EVM-100001")
    request = json.loads(new_body)
    assert request["model"] == "m" and request["messages"][0]["role"] == "system"
    assert sources and "[1]" in request["messages"][0]["content"]
    assert with_sources({"id": "x"}, sources)["sources"] == sources
    assert augment_chat_body(body, [], None) == (body, [])


def test_a_new_embedding_model_reembeds_everything(tmp_path: Path, corpus: Path) -> None:
    kb = _kb(tmp_path, corpus, HashingEmbedder(dim=64))
    first = sync_knowledge_base(kb)
    other = HashingEmbedder(dim=64)
    other.name = "another-model"
    switched = _kb(tmp_path, corpus, other)
    assert len(switched.index) == 0  # the old vectors are not served with the new model
    again = sync_knowledge_base(switched)
    assert again.embedded == first.chunks and len(switched.index) == again.chunks
