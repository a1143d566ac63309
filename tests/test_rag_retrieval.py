"""Retrieval with the real all-MiniLM-L6-v2 model (loaded once per session): quality on the example corpus,
member isolation (prompt injection included), and the query API of a live server."""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaip.rag.augment import augment
from kaip.rag.embeddings import Embedder, load_embedder
from kaip.rag.knowledge import KnowledgeBase, kb_from_spec
from kaip.rag.subject import ASSERTION_HEADER, sign_assertion
from kaip.rag.sync import sync_knowledge_base
from kaip.testing.live import LiveServer

DATA = Path(__file__).parent / "data" / "rag"
QUESTIONS = json.loads((DATA / "questions.json").read_text())
MEMBERS = [json.loads(line)["member_id"] for line in (DATA / "members.jsonl").read_text().splitlines()]
RECALL_AT_5_FLOOR = 0.85


def spec_for(corpus: Path) -> dict[str, object]:
    return {"sources": [{"path": str(corpus / "*.md"), "metadata": {"category": "docs"}},
                        {"path": str(corpus / "members.jsonl")}],
            "metadataFields": ["category", "plan", "member_id"], "accessControl": {"ownerField": "member_id"}}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rag") / "corpus"
    shutil.copytree(DATA / "corpus", root)
    shutil.copy(DATA / "members.jsonl", root / "members.jsonl")
    return root


@pytest.fixture(scope="module")
def kb(corpus: Path, embedder: Embedder) -> KnowledgeBase:
    base = KnowledgeBase(kb_from_spec("healthcare", "healthcare", spec_for(corpus)), corpus.parent / "kb", embedder)
    sync_knowledge_base(base)
    return base


def test_recall_at_5_on_the_question_set(kb: KnowledgeBase) -> None:
    hits = []
    for item in QUESTIONS["questions"]:
        passages = kb.search(item["q"], subject=None, top_k=5)
        found = any(p.source.endswith("/" + item["expected"])
                    and p.position.get("section", "").split(" > ")[-1] == item["section"] for p in passages)
        hits.append(found)
    recall = sum(hits) / len(hits)
    print(f"recall@5 = {recall:.3f} over {len(hits)} questions")
    assert recall >= RECALL_AT_5_FLOOR, [q["q"] for q, h in zip(QUESTIONS["questions"], hits, strict=True) if not h]


def test_a_members_own_records_are_found(kb: KnowledgeBase) -> None:
    for member in MEMBERS:
        passages = kb.search("my deductible met, my claims and prescriptions", subject=member, top_k=3)
        assert member in [p.metadata.get("member_id") for p in passages]


def test_isolation_no_member_ever_retrieves_another_members_records(kb: KnowledgeBase, embedder: Embedder) -> None:
    questions = QUESTIONS["member_questions"] + [f"Show member {m}'s claims and prescriptions" for m in MEMBERS]
    vectors = embedder.embed(questions)  # each question embedded once, searched as every member
    checked = 0
    for member in MEMBERS:
        for question, vector in zip(questions, vectors, strict=True):
            for p in kb.search(question, subject=member, top_k=20, query_vector=vector):
                assert p.metadata.get("member_id") in (None, member), (member, question, p.source)
                checked += 1
    assert checked > len(MEMBERS) * len(questions) * 10
    # Through the gateway's seam too, for two members, over every question: the prompt never carries another
    # member's id, name or claim numbers.
    records = {json.loads(line)["member_id"]: json.loads(line) for line in (DATA / "members.jsonl").open()}
    for member in MEMBERS[:2]:
        others = [r for m, r in records.items() if m != member]
        for question in questions:
            messages, sources = augment([{"role": "user", "content": question}], [kb], subject=member, top_k=8)
            prompt = messages[0]["content"]
            for other in others:
                assert other["member_id"] not in prompt, (member, question)
                assert not any(c["claim_id"] in prompt for c in other["claims"]), (member, question)
            assert all(s["knowledgeBase"] == "healthcare/healthcare" for s in sources)


# ---- the query API of a live server ------------------------------------------------------------------------

@pytest.fixture
def healthcare(server: LiveServer, corpus: Path, embedder: Embedder) -> Iterator[dict[str, object]]:
    admin = server.client()
    assert admin.post("/api/v1/namespaces", json={"metadata": {"name": "healthcare"}}).status_code == 201
    kb_doc = {"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase", "metadata": {"name": "member-kb"},
              "spec": spec_for(corpus)}
    r = admin.post("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases", json=kb_doc)
    assert r.status_code == 201, r.text
    tokens = {}
    for sa, notes in (("member-a", {"kaip.dev/subject": MEMBERS[0]}),
                            ("member-b", {"kaip.dev/subject": MEMBERS[1]}),
                            ("chatbot", {"kaip.dev/subject-assertion-secret": "chatbot-login"})):
        assert admin.post("/api/v1/namespaces/healthcare/serviceaccounts",
                          json={"metadata": {"name": sa, "annotations": notes}}).status_code == 201
        assert admin.post("/apis/rbac.authorization.k8s.io/v1/namespaces/healthcare/rolebindings", json={
            "metadata": {"name": f"{sa}-view"}, "roleRef": {"name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "healthcare"}]}).status_code == 201
        r = admin.post(f"/api/v1/namespaces/healthcare/serviceaccounts/{sa}/token", json={})
        tokens[sa] = r.json()["status"]["token"]
    key = b"login-service-signing-key-0123456789"
    assert admin.post("/api/v1/namespaces/healthcare/secrets", json={
        "metadata": {"name": "chatbot-login"}, "data": {"key": base64.b64encode(key).decode()}}).status_code == 201
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = admin.get("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases/member-kb").json()
        if status.get("status", {}).get("chunks"):
            break
        time.sleep(0.2)
    assert status["status"]["documents"] == 5, status
    yield {"tokens": tokens, "key": key, "status": status["status"]}


QUERY = "/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases/member-kb/query"


def test_query_api_scopes_records_to_the_authenticated_member(server: LiveServer, healthcare: dict) -> None:
    status = healthcare["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"SourcesReadable": "True", "Ready": "True"}
    assert status["chunks"] > 12 and status["indexBytes"] > 0 and status["lastSyncTime"]
    a = server.client(healthcare["tokens"]["member-a"])
    for question in QUESTIONS["member_questions"]:
        r = a.post(QUERY, json={"query": question, "top_k": 20})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["subject"] == MEMBERS[0]
        assert all(p["metadata"].get("member_id") in (None, MEMBERS[0]) for p in body["passages"])
    r = a.post(QUERY, json={"query": "my deductible met, my claims and prescriptions", "top_k": 3})
    top = next(p for p in r.json()["passages"] if p["metadata"].get("member_id"))
    assert top["metadata"]["member_id"] == MEMBERS[0] and top["position"] == {"index": 0, "record": 1}
    assert top["source"].endswith("members.jsonl") and 0 < top["score"] <= 1

    # The filter can narrow, never widen: naming the owner field is refused.
    r = a.post(QUERY, json={"query": "claims", "filter": {"member_id": MEMBERS[1]}})
    assert r.status_code == 400 and "access-control field" in r.json()["message"]

    # A trusted application asserts the member with a signed claim; a member may not assert anyone.
    app_user = "system:serviceaccount:healthcare:chatbot"
    assertion = sign_assertion(healthcare["key"], issuer=app_user, subject=MEMBERS[1], namespace="healthcare")
    app = server.client(healthcare["tokens"]["chatbot"])
    r = app.post(QUERY, json={"query": "my deductible met, my claims and prescriptions", "top_k": 3},
                 headers={ASSERTION_HEADER: assertion})
    assert r.status_code == 200 and r.json()["subject"] == MEMBERS[1]
    assert MEMBERS[1] in [p["metadata"].get("member_id") for p in r.json()["passages"]]
    r = a.post(QUERY, json={"query": "my claims"}, headers={ASSERTION_HEADER: assertion})
    assert r.status_code == 403 and "may not assert a subject" in r.json()["message"]
    forged = sign_assertion(b"wrong-key", issuer=app_user, subject=MEMBERS[2], namespace="healthcare")
    r = app.post(QUERY, json={"query": "my claims"}, headers={ASSERTION_HEADER: forged})
    assert r.status_code == 403 and "signature does not verify" in r.json()["message"]
    assert server.client("").post(QUERY, json={"query": "x"}).status_code == 401

    # The CLI asks as the member too.
    from typer.testing import CliRunner

    from kaip.cli.main import app as cli

    env = {"KAIP_SERVER": server.url, "KAIP_TOKEN": healthcare["tokens"]["member-b"]}
    result = CliRunner().invoke(cli, ["kb", "query", "member-kb", "my claims and prescriptions", "-n", "healthcare",
                                      "-o", "json", "-k", "5", "-f", "plan=Gold", "-f", "plan=Silver"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["subject"] == MEMBERS[1] and shown["passages"]
    assert all(p["metadata"].get("member_id") == MEMBERS[1] for p in shown["passages"])
    result = CliRunner().invoke(cli, ["kb", "query", "member-kb", "", "-n", "healthcare"], env=env)
    assert result.exit_code == 1 and "query must be a non-empty string" in result.output


def test_query_api_bad_input(server: LiveServer, healthcare: dict) -> None:
    a = server.client(healthcare["tokens"]["member-a"])
    cases = [({"query": ""}, "query must be a non-empty string"),
             ({"query": "x", "filter": {"colour": "red"}},
              "unknown filter field 'colour': this knowledge base can filter on category, plan, source"),
             ({"query": "x", "top_k": 1000}, "top_k must be an integer from 1 to 100"),
             ({"query": "x", "topk": 3}, "unknown field 'topk'")]
    for body, message in cases:
        r = a.post(QUERY, json=body)
        assert r.status_code == 400, r.text
        assert message in r.json()["message"]
    assert a.post(QUERY, content=b"{not json").status_code == 400
    r = a.post("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases/nope/query", json={"query": "x"})
    assert r.status_code == 404 and 'knowledgebases "nope" not found' in r.json()["message"]

    admin = server.client()
    doc = {"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase", "metadata": {"name": "no-model"},
           "spec": {"sources": [{"path": "/nonexistent/*.md"}], "embedding": {"path": "/models/missing"}}}
    assert admin.post("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases", json=doc).status_code == 201
    r = admin.post("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases/no-model/query",
                   json={"query": "x"})
    assert r.status_code == 409 and "no sentence-transformers model at /models/missing" in r.json()["message"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        obj = admin.get("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases/no-model").json()
        ready = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}.get("Ready")
        if ready:
            break
        time.sleep(0.2)
    assert ready["status"] == "False" and ready["reason"] == "EmbeddingModelNotFound"
    r = a.post("/apis/kaip.dev/v1alpha1/namespaces/healthcare/knowledgebases", json=doc)
    assert r.status_code == 403  # a member (view) may query, not create
