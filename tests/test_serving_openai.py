"""End to end: a huggingface InferenceService on a tiny model built here, driven by the `openai` client through
the gateway: chat and completions, streaming and not, usage, embeddings, models, errors, vLLM-named metrics."""

from __future__ import annotations

from typing import Any

import openai
import pytest

import serving_fixtures  # noqa: E402
from kaip.testing.live import LiveServer
from serving_fixtures import apply_isvc, build_tiny_llm, isvc_doc, wait_ready

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(serving_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> openai.OpenAI:
    folder = build_tiny_llm(tmp_path_factory.mktemp("models") / "tiny-llm")
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("tiny", {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": str(folder),
                                                  "args": ["--max_model_len=128"]}}))
        wait_ready(c, "tiny", timeout=90)
    return openai.OpenAI(base_url=f"{serving_server.url}/serving/default/tiny/openai/v1",
                         api_key=serving_server.token, max_retries=0, timeout=60)


def test_completions_and_chat_plain(llm: openai.OpenAI) -> None:
    done = llm.completions.create(model="tiny", prompt="The clinic opens", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.model == "tiny"
    assert done.usage is not None and done.usage.completion_tokens <= 6 and done.usage.prompt_tokens > 0
    assert done.choices[0].finish_reason in ("length", "stop")
    again = llm.completions.create(model="tiny", prompt="The clinic opens", max_tokens=6, temperature=0)
    assert again.choices[0].text == done.choices[0].text  # greedy decoding is deterministic
    chat = llm.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "When does it open?"}],
                                       max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    assert chat.usage is not None and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert [m.id for m in llm.models.list().data] == ["tiny"]


def test_streaming_matches_plain_and_reports_usage(llm: openai.OpenAI) -> None:
    plain = llm.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8,
                                        temperature=0)
    stream = llm.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8,
                                         temperature=0, stream=True, stream_options={"include_usage": True})
    chunks: list[Any] = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    completion_stream = list(llm.completions.create(model="tiny", prompt="Models are", max_tokens=5, temperature=0,
                                                    stream=True))
    streamed = "".join(c.choices[0].text for c in completion_stream)
    assert streamed == llm.completions.create(model="tiny", prompt="Models are", max_tokens=5,
                                              temperature=0).choices[0].text


def test_embeddings_errors_and_metrics(llm: openai.OpenAI, serving_server: LiveServer) -> None:
    emb = llm.embeddings.create(model="tiny", input=["a patient", "the clinic"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 32
    assert abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-3
    with pytest.raises(openai.NotFoundError):
        llm.completions.create(model="other", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128"):
        llm.completions.create(model="tiny", prompt="x", max_tokens=500)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        llm.completions.create(model="tiny", prompt="x", max_tokens=1, temperature=7)
    with serving_server.client() as c:
        metrics = c.get("/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert f'{name}{{' in metrics and 'model_name="tiny"' in metrics, name
    assert 'protocol="openai"' in metrics
