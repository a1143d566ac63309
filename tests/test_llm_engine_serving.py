"""The paged engine behind the `kaip-huggingface` runtime: chosen by `make_engine`, streamed with the real `openai`
client, cancelled streams free their KV blocks, engine metrics on /metrics; other families fall back."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine_fixtures import serve_in_process
from kaip.serving.engine.async_engine import KaipEngine
from kaip.serving.runtimes.engine import TransformersEngine
from kaip.serving.runtimes.huggingface import _extra, make_engine
from kaip.serving.runtimes.server import parse_args
from serving_fixtures import build_tiny_llm, wait_for


def args_for(folder: Path, *extra: str) -> Any:
    return parse_args("test", _extra, ["--model_dir", str(folder), "--model_name", "tiny", *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("models") / "tiny-llm")


@pytest.fixture(scope="module")
def engine(folder: Path) -> KaipEngine:
    engine = make_engine(args_for(folder, "--max_model_len=256", "--kv_cache_space=0.01"))
    assert isinstance(engine, KaipEngine)
    return engine


@pytest.fixture(scope="module")
def server(engine: KaipEngine) -> Iterator[str]:
    with serve_in_process(engine) as url:
        yield url


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/").status_code == 200
    except httpx.HTTPError:
        return False


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M)
    assert match, f"{name} not exposed"
    return float(match.group(1))


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/openai/v1", api_key="x", max_retries=0, timeout=60)


def test_streaming_equals_plain_and_reference_engine(server: str, folder: Path) -> None:
    c = client(server)
    plain = c.completions.create(model="tiny", prompt="The clinic opens at", max_tokens=12, temperature=0)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="The clinic opens at", max_tokens=12, temperature=0, stream=True))
    assert streamed == plain.choices[0].text
    ref = TransformersEngine(str(folder), "tiny")
    prompt_ids = ref.tokenize("The clinic opens at")

    async def run() -> list[int]:
        from kaip.serving.runtimes.engine import SamplingParams
        return [d.token_id async for d in ref.generate(prompt_ids, SamplingParams(max_tokens=12, temperature=0))]

    import asyncio
    assert plain.choices[0].text == ref.detokenize(asyncio.run(run()))
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hours?"}], max_tokens=6,
                                     temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(chat)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6


def test_concurrent_streams_share_prefix_blocks_and_report_metrics(server: str) -> None:
    c = client(server)
    hits_before = metric(server, "vllm:prefix_cache_hits_total")
    system = "The clinic opens at nine and closes at five. Models are served by runtimes behind a gateway. "
    results: list[str] = []

    def ask(q: str) -> None:
        results.append(c.completions.create(model="tiny", prompt=system + q, max_tokens=8, temperature=0)
                       .choices[0].text)

    threads = [threading.Thread(target=ask, args=(q,)) for q in ("A patient asks", "The nurse", "Kaip serves")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    ask("A patient asks")  # same prompt again: the whole shared head is cached now
    assert metric(server, "vllm:prefix_cache_hits_total") > hits_before
    assert metric(server, "vllm:prefix_cache_queries_total") >= metric(server, "vllm:prefix_cache_hits_total")
    assert metric(server, "vllm:generation_tokens_total") >= 32


def test_cancelling_a_stream_frees_its_kv_blocks(server: str, engine: KaipEngine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny model would finish 150 tokens before the checks below on a quick machine: slow its steps so that the
    # client's hang-up lands mid-generation however fast the machine is.
    step = engine.core.step

    def slow_step() -> Any:
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(engine.core, "step", slow_step)
    wait_for(lambda: metric(server, "vllm:kv_cache_usage_perc") == 0.0, 30, what="idle cache")
    with httpx.stream("POST", server + "/openai/v1/completions", timeout=60,
                      json={"model": "tiny", "prompt": "The clinic opens at nine. " * 8, "max_tokens": 150,
                            "temperature": 0.8, "seed": 1, "stream": True}) as resp:
        lines = resp.iter_lines()
        seen = [next(lines) for _ in range(2)]
        assert any(line.startswith("data: ") for line in seen)
        assert metric(server, "vllm:kv_cache_usage_perc") > 0.0  # the request holds blocks mid-stream
        assert metric(server, "vllm:num_requests_running") == 1.0
    # the client hung up: the server cancels the generator, the engine aborts the request and frees its blocks
    wait_for(lambda: metric(server, "vllm:kv_cache_usage_perc") == 0.0, 30, what="blocks freed after cancel")
    assert metric(server, "vllm:num_requests_running") == 0.0


def test_other_families_and_the_reference_switch_fall_back(folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(folder)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)
                    ).save_pretrained(gpt2)
    tok.save_pretrained(gpt2)
    engine = make_engine(args_for(gpt2))
    assert isinstance(engine, TransformersEngine)
    assert "using the reference transformers engine: model_type 'gpt2'" in capsys.readouterr().err
    monkeypatch.setenv("KAIP_LLM_ENGINE", "reference")
    assert isinstance(make_engine(args_for(folder)), TransformersEngine)
    monkeypatch.delenv("KAIP_LLM_ENGINE")
    assert isinstance(make_engine(args_for(folder, "--backend=huggingface")), TransformersEngine)


def test_dtype_and_quantization_flags_pick_the_paged_engine_or_say_why_not(folder: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    bf16 = make_engine(args_for(folder, "--dtype", "bfloat16"))
    assert isinstance(bf16, KaipEngine) and bf16.core.runner.embed.dtype == torch.bfloat16
    int8 = make_engine(args_for(folder, "--quantization", "int8"))
    assert isinstance(int8, KaipEngine) and int8.core.runner.layers[0].qkv.qweight.dtype == torch.int8
    with pytest.raises(RuntimeError, match=r"--quantization needs Kaip's paged engine, which is not used here "
                                           r"\(--backend=huggingface\)"):
        make_engine(args_for(folder, "--quantization", "int8", "--backend=huggingface"))
    with pytest.raises(RuntimeError, match="int8 quantization applies to float32 models"):
        make_engine(args_for(folder, "--quantization", "int8", "--dtype", "bfloat16"))
    assert isinstance(make_engine(args_for(folder, "--dtype", "float16")), TransformersEngine)
    assert "dtype float16 (the Kaip engine runs float32 or bfloat16)" in capsys.readouterr().err
    # a Qwen3 folder runs on the paged engine too
    tok = AutoTokenizer.from_pretrained(folder)
    qwen = tmp_path / "qwen3"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16)).save_pretrained(qwen)
    tok.save_pretrained(qwen)
    assert isinstance(make_engine(args_for(qwen)), KaipEngine)
