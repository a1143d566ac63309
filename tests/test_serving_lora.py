"""Multi-LoRA through the `kaip-huggingface` runtime: vLLM's flags, the OpenAI `model` field picking the base model or
an adapter, `/openai/v1/models` listing adapters with their parent, and (end to end, slow) adapters served from
Kaip's registry by an InferenceService, answering as each adapter merged into the base model alone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import kaip
import serving_fixtures
from engine_fixtures import serve_in_process
from kaip.serving.engine.async_engine import KaipEngine
from kaip.serving.runtimes.huggingface import _extra, lora_modules_of, make_engine
from kaip.serving.runtimes.server import parse_args
from kaip.serving.storage import StorageError, resolve_lora_module_args
from kaip.testing.live import LiveServer
from serving_fixtures import (
    apply_isvc,
    build_tiny_llm,
    build_tiny_lora,
    condition,
    get_isvc,
    isvc_doc,
    merged_lora_text,
    wait_for,
    wait_ready,
)

serving_server = serving_fixtures.serving_server  # the slow test's live server (a fixture)
QUESTIONS = [[{"role": "user", "content": "When does the clinic open?"}],
             [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who serves models?"}]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-models")
    base = build_tiny_llm(root / "tiny-llm")
    return {"base": base, "faq": build_tiny_lora(base, root / "faq", 1),
            "other": build_tiny_lora(base, root / "other", 2, r=4, lora_alpha=4,
                                     target_modules=("q_proj", "k_proj", "gate_proj"))}


@pytest.fixture(scope="module")
def references(folders: dict[str, Path]) -> dict[tuple[str | None, int], str]:
    """(adapter or None, question) -> transformers' greedy answer with that adapter merged alone."""
    return {(name, i): merged_lora_text(folders["base"], folders[name] if name else None, q, 8)
            for name in (None, "faq", "other") for i, q in enumerate(QUESTIONS)}


def args_for(folder: Path, *extra: str) -> Any:
    return parse_args("test", _extra, ["--model_dir", str(folder), "--model_name", "tiny", *extra])


def test_runtime_flags(folders: dict[str, Path]) -> None:
    faq, other = folders["faq"], folders["other"]
    vllm_style = args_for(folders["base"], "--enable-lora", "--lora-modules", f"faq={faq}",
                          f'{{"name": "other", "path": "{other}"}}', "--max-loras", "2", "--max-lora-rank", "8")
    assert lora_modules_of(vllm_style) == {"faq": str(faq), "other": str(other)}
    assert (vllm_style.max_loras, vllm_style.max_lora_rank) == (2, 8)
    kaip_style = args_for(folders["base"], "--enable_lora", "--lora_modules", f"faq={faq}", "--lora_modules=x=/y")
    assert lora_modules_of(kaip_style) == {"faq": str(faq), "x": "/y"}
    assert lora_modules_of(args_for(folders["base"])) is None
    with pytest.raises(RuntimeError, match="--lora_modules needs --enable_lora"):
        make_engine(args_for(folders["base"], "--lora_modules", f"faq={faq}"))
    with pytest.raises(RuntimeError, match="used twice"):
        lora_modules_of(args_for(folders["base"], "--enable_lora", "--lora_modules", f"tiny={faq}"))
    with pytest.raises(RuntimeError, match="the reference transformers engine does not serve LoRA adapters"):
        make_engine(args_for(folders["base"], "--enable_lora", "--backend=huggingface"))
    with pytest.raises(ValueError, match="rank 8 is above --max_lora_rank 4"):
        make_engine(args_for(folders["base"], "--enable_lora", "--lora_modules", f"faq={faq}", "--max_lora_rank=4"))


def test_controller_resolves_adapter_uris_in_args(tmp_path: Path) -> None:
    home = tmp_path / "home"
    volume = home / "volumes" / "ns" / "loras" / "faq"
    volume.mkdir(parents=True)
    local = tmp_path / "other"
    local.mkdir()
    args = ["--max_model_len=128", "--enable_lora", "--lora_modules", "faq=pvc://loras/faq", f"other=file://{local}",
            "--max_loras", "2", f"--lora-modules=third={local}", "--lora-modules",
            '{"name": "fourth", "path": "pvc://loras/faq", "base_model_name": "m"}']
    got = resolve_lora_module_args(args, namespace="ns", home=home)
    assert got == ["--max_model_len=128", "--enable_lora", "--lora_modules", f"faq={volume.resolve()}",
                   f"other={local}", "--max_loras", "2", f"--lora-modules=third={local}", "--lora-modules",
                   f'{{"name": "fourth", "path": "{volume.resolve()}", "base_model_name": "m"}}']
    for bad, why in ((["--lora_modules", "a=s3://bucket/a"], r"LoRA adapter 'a' \(--lora_modules\): URI "
                      "'s3://bucket/a': s3:// is a remote scheme and Kaip serves offline"),
                     (["--lora_modules", f"b={local}", "c=pvc://loras/none"], "LoRA adapter 'c'.*does not exist"),
                     (["--lora-modules", "no-name"], "expected NAME=PATH")):
        with pytest.raises(StorageError, match=why):
            resolve_lora_module_args(bad, namespace="ns", home=home)


@pytest.fixture(scope="module")
def runtime(folders: dict[str, Path]) -> Iterator[str]:
    engine = make_engine(args_for(folders["base"], "--max_model_len=128", "--kv_cache_space=0.01", "--enable_lora",
                                  "--max_loras=2", "--lora_modules", f"faq={folders['faq']}",
                                  f"other={folders['other']}"))
    assert isinstance(engine, KaipEngine)
    with serve_in_process(engine) as url:
        yield url


def ask(client: openai.OpenAI, model: str, question: int) -> str:
    done = client.chat.completions.create(model=model, messages=QUESTIONS[question], max_tokens=8, temperature=0)
    assert done.model == model
    return done.choices[0].message.content or ""


def test_model_field_selects_base_or_adapter(runtime: str, folders: dict[str, Path],
                                             references: dict[tuple[str | None, int], str]) -> None:
    client = openai.OpenAI(base_url=runtime + "/openai/v1", api_key="x", max_retries=0, timeout=60)
    cards = client.models.list().data
    assert [c.id for c in cards] == ["tiny", "faq", "other"]
    assert [getattr(c, "parent", None) for c in cards] == [None, "tiny", "tiny"]
    assert getattr(cards[1], "root", None) == str(folders["faq"])
    assert getattr(client.models.retrieve("faq"), "parent", None) == "tiny"

    # one request of each kind at once, so that the engine batches them: each equals its model alone
    jobs = [(name, i) for i in range(len(QUESTIONS)) for name in (None, "faq", "other")] * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda job: ask(client, job[0] or "tiny", job[1]), jobs))
    assert got == [references[job] for job in jobs]
    assert references[("faq", 0)] != references[(None, 0)]  # the adapter does change the answer

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTIONS[0], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="does not serve embeddings"):
        client.embeddings.create(model="faq", input="x")
    text = httpx.get(runtime + "/metrics").text
    info = re.search(r'^vllm:lora_requests_info\{([^}]*)\} ', text, re.M)
    assert info and 'max_lora="2"' in info.group(1) and 'running_lora_adapters=""' in info.group(1)


@pytest.mark.slow
def test_adapters_from_the_registry_end_to_end(serving_server: LiveServer, folders: dict[str, Path],
                                               references: dict[tuple[str | None, int], str]) -> None:
    version = kaip.Client(serving_server.url, serving_server.token).register_model("faq-lora", folders["faq"])
    assert version.uri == "models:/faq-lora/1"
    model = {"modelFormat": {"name": "huggingface"}, "storageUri": str(folders["base"]),
             "args": ["--max_model_len=128", "--enable_lora", "--max_loras=2", "--lora_modules",
                      "faq=models:/faq-lora/1", f"other={folders['other']}"]}
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("chat", {"model": model}))
        wait_ready(c, "chat", timeout=120)
    llm = openai.OpenAI(base_url=f"{serving_server.url}/serving/default/chat/openai/v1", api_key=serving_server.token,
                        max_retries=0, timeout=60)
    cards = llm.models.list().data
    assert [(c.id, getattr(c, "parent", None)) for c in cards] == [("chat", None), ("faq", "chat"),
                                                                  ("other", "chat")]
    assert (Path(getattr(cards[1], "root", "")) / "adapter_config.json").is_file()  # the registry's local copy
    for i in range(len(QUESTIONS)):
        assert ask(llm, "faq", i) == references[("faq", i)]
        assert ask(llm, "chat", i) == references[(None, i)]
    assert ask(llm, "other", 0) == references[("other", 0)]
    with pytest.raises(openai.NotFoundError):
        llm.chat.completions.create(model="faq-lora", messages=QUESTIONS[0], max_tokens=2)

    # adapter URIs that do not resolve: the condition says which adapter and why, and no replica starts
    with serving_server.client() as c:
        for name, uri, why in (("missing", "models:/never-registered/1", "never-registered"),
                               ("remote", "s3://bucket/faq", "Kaip serves offline")):
            apply_isvc(c, isvc_doc(f"bad-{name}", {"model": {**model, "args": [
                "--enable_lora", "--lora_modules", f"faq={uri}"]}}))
            cond = wait_for(lambda n=name: condition(get_isvc(c, f"bad-{n}"), "PredictorReady") or None, 15)
            assert cond["status"] == "False" and cond["reason"] == "InvalidStorageURI", cond
            assert "LoRA adapter 'faq'" in cond["message"] and why in cond["message"], cond
