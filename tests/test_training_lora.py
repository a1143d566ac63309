"""The built-in `kaip-lora-sft` runtime on a tiny random Llama built in-process (a word-level tokenizer trained on
the test's own conversations, two layers): assistant-only loss masking, a malformed dataset line named in the
Failed condition, and a TrainJob that lowers eval loss, saves adapter and merged model as safetensors, records its
run and registers a model version whose lineage holds the dataset digest."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaip.testing.live import LiveServer, live_server
from kaip.testing.tiny import build_tiny_chat_model, faq_conversations
from kaip.training.lora_sft import (
    IGNORE,
    DatasetError,
    Example,
    batches,
    length_grouped,
    load_chat_jsonl,
    tokenize_chat,
)

NS = "default"
TRAINJOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"


def conversations() -> list[dict[str, Any]]:
    return faq_conversations()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    convs = conversations()
    data = root / "faq.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in convs))
    build_tiny_chat_model(root / "model", convs)
    return data, root / "model"


def test_loss_only_on_assistant_tokens(tiny: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny[1])
    conv = load_chat_jsonl(tiny[0])[0]
    ex = tokenize_chat(tokenizer, conv, max_length=128)
    learned = tokenizer.decode([i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])
    assert learned.split() == ["<|assistant|>", "the", "clinic", "opens", "at", "8", "on", "monday", ".", "<|end|>"]
    masked = tokenizer.decode([i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE])
    assert "when does the clinic open" in masked and "opens" not in masked


def test_length_grouping_cuts_padding_and_keeps_every_example() -> None:
    import random
    rng = random.Random(1)
    examples = [Example(list(range(n)), list(range(n))) for n in (rng.choice((20, 60, 200)) for _ in range(96))]
    grouped = length_grouped(examples, 8, seed=0)
    assert sorted(map(id, grouped)) == sorted(map(id, examples))  # a reordering, nothing lost or repeated

    def padded(rows: list[Example]) -> int:
        return sum(len(ids) * len(ids[0]) for ids, _, _ in batches(rows, 8, 0, packing=False, max_length=512))
    real = sum(len(ex.input_ids) for ex in examples)
    assert padded(grouped) < padded(examples)
    assert padded(grouped) <= 1.15 * real
    assert length_grouped(examples, 8, seed=0) == grouped  # deterministic for a seed (checkpoints resume)


def test_malformed_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(conversations()[0]) + "\n" + '{"messages": [{"role": "user"}]}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: messages\[0\] needs string 'role' and 'content'"):
        load_chat_jsonl(bad)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("lora-server") / "home", bookmark_seconds=0.5) as server:
        yield server


def lora_job(name: str, data: Path, model: Path, args: list[str]) -> dict[str, Any]:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"runtimeRef": {"name": "kaip-lora-sft"},
                     "initializer": {"dataset": {"storageUri": f"file://{data}"},
                                     "model": {"storageUri": f"file://{model}"}},
                     "trainer": {"args": args}}}


def wait_finished(api: httpx.Client, name: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"{TRAINJOBS}/{name}").json()
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
               for c in (job.get("status") or {}).get("conditions") or []):
            return job
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {name}")


def test_bad_dataset_line_fails_the_job(live: LiveServer, tiny: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "data.jsonl"
    bad.write_text(json.dumps(conversations()[0]) + "\n" + "{not json\n")
    with live.client() as api:
        assert api.post(TRAINJOBS, json=lora_job("lora-bad", bad, tiny[1], [])).status_code == 201
        job = wait_finished(api, "lora-bad")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert f"{bad}:2: not valid JSON" in failed["message"], failed


def test_lora_sft_trains_saves_and_registers(live: LiveServer, tiny: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaip.tracking.access import AllowAll
    from kaip.tracking.lineage import LineageStore, model_version_key
    from kaip.tracking.service import TrackingService

    data, model = tiny
    args = ["--max-steps", "20", "--learning-rate", "0.03", "--batch-size", "4", "--lora-r", "8",
            "--lora-alpha", "16", "--lora-dropout", "0.0", "--target-modules", "q_proj,v_proj,o_proj,up_proj,down_proj",
            "--eval-split", "0.2", "--save-steps", "10", "--register", "faq-tiny", "--max-seq-length", "64"]
    with live.client() as api:
        r = api.post(TRAINJOBS, json=lora_job("lora", data, model, args))
        assert r.status_code == 201, r.text
        job = wait_finished(api, "lora")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"]), job["status"]
    published = job["status"]["kaip"]["published"]
    assert published["modelVersion"] == "faq-tiny/1", published

    store = live.server.store
    tracking = TrackingService(store)
    history = {key: tracking.get_metric_history(AllowAll(), published["runId"], key)["metrics"]
               for key in ("loss", "eval_loss", "learning_rate")}
    assert [m["step"] for m in history["loss"]] == list(range(1, 21))
    evals = sorted(history["eval_loss"], key=lambda m: m["step"])
    assert [m["step"] for m in evals] == [0, 20]
    assert evals[1]["value"] < evals[0]["value"] * 0.5, evals  # fine-tuning really lowered the held-out loss

    graph = LineageStore(store).graph(AllowAll(), model_version_key(NS, "faq-tiny", 1))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    assert any(n.get("kind") == "dataset" and digest in json.dumps(n) for n in graph["nodes"]), graph

    run_dir = live.server.home / "artifacts" / published["experimentId"] / published["runId"] / "artifacts"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "merged" / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    prompt = tokenizer.apply_chat_template(conversations()[0]["messages"][:2], add_generation_prompt=True,
                                           tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(model)
    answers = [tokenizer.decode(m.generate(ids, max_new_tokens=6, do_sample=False)[0][ids.shape[1]:]).split()
               for m in (merged, base)]
    # The merged model learned the answers' form ("the <place> opens at <hour> ..."); the base model had not.
    assert answers[0][0] == "the" and answers[0][2:4] == ["opens", "at"], answers
    assert answers[1][2:4] != ["opens", "at"], answers
