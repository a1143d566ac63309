"""Fixtures and helpers for the serving tests: a live server shared by a test module, tiny models built
in-process, and InferenceService helpers that wait on status the way a user would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.testing.live import LiveServer, live_server

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = "condition"
             ) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def isvc_doc(name: str, predictor: dict[str, Any], *, annotations: dict[str, str] | None = None,
             namespace: str = "default") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": meta,
            "spec": {"predictor": predictor}}


def apply_isvc(client: httpx.Client, doc: dict[str, Any]) -> dict[str, Any]:
    ns = doc["metadata"].get("namespace", "default")
    path = ISVC_PATH.format(ns=ns)
    existing = client.get(f"{path}/{doc['metadata']['name']}")
    if existing.status_code == 200:
        rv = existing.json()["metadata"]["resourceVersion"]
        doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": rv}}
        resp = client.put(f"{path}/{doc['metadata']['name']}", json=doc)
    else:
        resp = client.post(path, json=doc)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def get_isvc(client: httpx.Client, name: str, namespace: str = "default") -> dict[str, Any]:
    resp = client.get(f"{ISVC_PATH.format(ns=namespace)}/{name}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def condition(isvc: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (isvc.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def wait_ready(client: httpx.Client, name: str, timeout: float = 60.0, namespace: str = "default") -> dict[str, Any]:
    return wait_for(lambda: (lambda o: o if condition(o, "Ready").get("status") == "True" else None)(
        get_isvc(client, name, namespace)), timeout, what=f"InferenceService {name} Ready")


def replica_pods(client: httpx.Client, name: str, namespace: str = "default", revision: str | None = None
                 ) -> list[dict[str, Any]]:
    selector = f"serving.kserve.io/inferenceservice={name}"
    if revision:
        selector += f",serving.knative.dev/revision={revision}"
    resp = client.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def delete_all(client: httpx.Client, namespace: str = "default", timeout: float = 30.0) -> None:
    """Delete every InferenceService and wait until their replica processes are gone."""
    items = client.get(ISVC_PATH.format(ns=namespace)).json()["items"]
    for item in items:
        client.delete(f"{ISVC_PATH.format(ns=namespace)}/{item['metadata']['name']}")
    wait_for(lambda: not client.get(f"/api/v1/namespaces/{namespace}/pods",
                                    params={"labelSelector": "serving.kserve.io/inferenceservice"}).json()["items"],
             timeout, what="replica pods to be gone")


@pytest.fixture(scope="module")
def serving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server for a whole test module; every InferenceService is deleted (and its processes stopped)
    before it shuts down."""
    home = tmp_path_factory.mktemp("serving") / "home"
    with live_server(home, bookmark_seconds=0.5) as live:
        try:
            yield live
        finally:
            with live.client() as client:
                delete_all(client)


def build_iris_model(folder: Path) -> Path:
    """A small logistic regression on iris (scikit-learn ships the data set), saved with joblib."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    return folder


TEXT = ("Kaip serves models the way KServe does. A patient asks the nurse about the clinic hours. "
        "The clinic opens at nine and closes at five. Models are served by runtimes behind a gateway. ") * 20
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def iris_v2_client(server: LiveServer, models: Path) -> Iterator[httpx.Client]:
    """An admin client of `server` with an sklearn iris InferenceService `iris` (Open Inference v2) ready; the body
    of a module fixture: `yield from iris_v2_client(serving_server, tmp_path_factory.mktemp("models"))`."""
    folder = build_iris_model(models / "iris")
    with server.client() as c:
        apply_isvc(c, isvc_doc("iris", {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"},
                                                                    "protocolVersion": "v2",
                                                                    "storageUri": str(folder)}}))
        wait_ready(c, "iris")
        yield c


def build_tiny_llm(folder: Path) -> Path:
    """A randomly initialised two-layer Llama with a byte-level BPE tokenizer trained on TEXT."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


TOPICS = [("the clinic opens at nine", 0), ("the clinic closes at five", 0), ("models are served by runtimes", 1),
          ("a gateway serves models", 1), ("a patient asks the nurse", 2), ("the nurse answers the patient", 2)]


def build_tiny_bert(folder: Path, head: str = "sequence_classification") -> Path:
    """A two-layer BERT with a WordPiece tokenizer trained on TEXT; `head` is sequence_classification (three labels
    with id2label, trained for a moment on TOPICS: clinic 0, models 1, patient 2), token_classification, fill_mask or
    none (BertModel); the others are randomly initialised."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([TEXT], trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    labels = {0: "clinic", 1: "models", 2: "patient"}
    config = BertConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=64, pad_token_id=fast.pad_token_id,
                        id2label=labels, label2id={v: k for k, v in labels.items()})
    model_class = {"sequence_classification": BertForSequenceClassification, "fill_mask": BertForMaskedLM,
                   "token_classification": BertForTokenClassification, "none": BertModel}[head]
    model = model_class(config)
    if head == "sequence_classification":  # a few steps of training, so that texts get the labels of their topic
        batch = fast([t for t, _ in TOPICS], padding=True, return_tensors="pt")
        target = torch.tensor([label for _, label in TOPICS])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(40):
            model(**batch, labels=target).loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_tiny_lora(base_folder: Path, folder: Path, seed: int, r: int = 8, lora_alpha: int = 16,
                    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")) -> Path:
    """A PEFT LoRA adapter of the model at `base_folder` with random non-zero A and B (PEFT starts B at zero, which
    would change nothing), saved as PEFT saves it (adapter_config.json + adapter_model.safetensors)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = get_peft_model(LlamaForCausalLM.from_pretrained(base_folder),
                           LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules),
                                      task_type="CAUSAL_LM"))
    from engine_fixtures import randomise_lora

    randomise_lora(model, seed, 0.2).save_pretrained(folder)
    return folder


def merged_lora_text(base_folder: Path, adapter_folder: Path | None, messages: list[dict[str, str]],
                     max_tokens: int) -> str:
    """What transformers' greedy `generate` answers to a chat on the base model, or on it with the adapter merged
    (PEFT's `merge_and_unload`): the reference for what a served adapter must say."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base_folder)
    model = LlamaForCausalLM.from_pretrained(base_folder)
    if adapter_folder is not None:
        model = PeftModel.from_pretrained(model, adapter_folder).merge_and_unload()
    ids = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return str(tok.decode(out[0, len(ids):], skip_special_tokens=True))
