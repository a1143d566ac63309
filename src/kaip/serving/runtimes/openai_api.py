"""OpenAI-compatible routes over an `Engine`, at `/openai/v1/...` as KServe's Hugging Face server has them:
completions and chat completions (SSE streaming with `stream_options.include_usage`), embeddings, models.
Prometheus metrics use vLLM's names, labelled `model_name`.

For an encoder task the engine is an `encoder.EncoderEngine` (only `model_name`, `max_model_len`, `tokenize`,
`embed` and `stats` are used): completions and chat answer 400 as upstream's do for a model that does not
generate, and embeddings are served only for `text_embedding`.

Multi-LoRA, as vLLM: an engine with `lora_modules` (name -> folder) serves each adapter under its name; the request's
`model` picks the base model or an adapter, and `/models` lists the adapters with `parent` = the base model."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kaip.serving.runtimes.engine import Engine, SamplingParams
from kaip.serving.runtimes.tasks import TEXT_EMBEDDING, TEXT_GENERATION

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400, type_: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param = status, type_, param

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": str(self), "type": self.type, "param": self.param,
                                       "code": self.status}}, status_code=self.status)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        stats = self.engine.stats()
        for name, doc, value in (("vllm:num_requests_running", "Requests in model execution batches", stats.running),
                                 ("vllm:num_requests_waiting", "Requests waiting to be processed", stats.waiting),
                                 ("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full)", stats.kv_cache_usage)):
            g = GaugeMetricFamily(name, doc, labels=["model_name", "engine"])
            g.add_metric([self.engine.model_name, "0"], value)
            yield g


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry, engine: Engine) -> None:
        labels = ["model_name", "engine"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", labels,
                              registry=registry, buckets=LATENCY_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency", labels, registry=registry,
                             buckets=LATENCY_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency", labels,
                             registry=registry, buckets=LATENCY_BUCKETS)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed", labels, registry=registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens processed", labels,
                                         registry=registry)
        self.success = Counter("vllm:request_success", "Finished requests", [*labels, "finished_reason"],
                               registry=registry)
        registry.register(_EngineCollector(engine))
        self.labels = (engine.model_name, "0")


def _stop_list(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return raw
    raise OpenAIError("'stop' must be a string or a list of strings", param="stop")


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise OpenAIError(f"'{key}' must be a number between {lo} and {hi}", param=key)
    return float(value)


class OpenAIServer:
    def __init__(self, engine: Engine, registry: CollectorRegistry, task: str = TEXT_GENERATION) -> None:
        self.engine = engine
        self.task = task
        self.metrics = EngineMetrics(registry, engine)

    def routes(self) -> list[Route]:
        return [Route("/openai/v1/completions", self._wrap(self.completions), methods=["POST"]),
                Route("/openai/v1/chat/completions", self._wrap(self.chat), methods=["POST"]),
                Route("/openai/v1/embeddings", self._wrap(self.embeddings), methods=["POST"]),
                Route("/openai/v1/models", self._wrap(self.models)),
                Route("/openai/v1/models/{name}", self._wrap(self.model))]

    @staticmethod
    def _wrap(fn: Any) -> Any:
        async def handler(request: Request) -> Response:
            try:
                return await fn(request)  # type: ignore[no-any-return]
            except OpenAIError as err:
                return err.response()
        return handler

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OpenAIError(f"the request body is not valid JSON: {err}") from err
        if not isinstance(body, dict):
            raise OpenAIError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.engine.model_name and model not in self._adapters:
            raise OpenAIError(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")
        return body

    @property
    def _adapters(self) -> dict[str, str]:
        """LoRA adapters the engine serves: name -> folder (none for engines without LoRA)."""
        return getattr(self.engine, "lora_modules", None) or {}

    def _lora(self, body: dict[str, Any]) -> str | None:
        """The adapter the request's `model` names (None: the base model)."""
        model = body.get("model")
        return model if model is not None and model != self.engine.model_name else None

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()] + [
            self._model_card(name) for name in self._adapters]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name != self.engine.model_name and name not in self._adapters:
            raise OpenAIError(f"The model `{name}` does not exist.", 404, "NotFoundError")
        return JSONResponse(self._model_card(None if name == self.engine.model_name else name))

    def _require(self, tasks: tuple[str, ...], api: str) -> None:
        """Upstream's 400 for an API the model's task does not serve."""
        if self.task not in tasks:
            raise OpenAIError(f"Model {self.engine.model_name} does not support {api} API (it is served for the "
                              f"task {self.task})")

    def _model_card(self, adapter: str | None = None) -> dict[str, Any]:
        """vLLM's card: `root` is where the model was loaded from; an adapter's `parent` is the base model."""
        base = self.engine.model_name
        root = self._adapters[adapter] if adapter else getattr(self.engine, "model_dir", None) or base
        return {"id": adapter or base, "object": "model", "created": int(time.time()), "owned_by": "kaip",
                "root": root, "parent": base if adapter else None, "max_model_len": self.engine.max_model_len}

    def _params(self, body: dict[str, Any], default_max: int) -> SamplingParams:
        if body.get("n", 1) != 1:
            raise OpenAIError("only n=1 is supported", param="n")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max))
        if max_tokens is None:
            max_tokens = default_max
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise OpenAIError("'max_tokens' must be a positive integer", param="max_tokens")
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise OpenAIError("'seed' must be an integer", param="seed")
        return SamplingParams(max_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                              top_p=_number(body, "top_p", 1.0, 0.0, 1.0), seed=seed)

    def _check_length(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if len(prompt_ids) + params.max_tokens > self.engine.max_model_len:
            raise OpenAIError(f"This model's maximum context length is {self.engine.max_model_len} tokens. However, "
                              f"you requested {len(prompt_ids) + params.max_tokens} tokens ({len(prompt_ids)} in "
                              f"the messages, {params.max_tokens} in the completion).", param="max_tokens")

    async def _run(self, prompt_ids: list[int], params: SamplingParams, stops: list[str], lora: str | None = None
                   ) -> AsyncIterator[tuple[str, str | None, int]]:
        """Yield (text delta, finish reason, tokens so far); stop strings are cut, with text held back while it
        could still be the start of one."""
        started = time.monotonic()
        last_token_at = None
        generated: list[int] = []
        sent = ""
        finish = None
        hold = max((len(s) for s in stops), default=1) - 1
        labels = self.metrics.labels
        self.metrics.prompt_tokens.labels(*labels).inc(len(prompt_ids))
        if lora:  # only an engine that lists adapters is given one (the Engine protocol's generate has no LoRA)
            gen = self.engine.generate(prompt_ids, params, lora_name=lora)  # type: ignore[call-arg]
        else:
            gen = self.engine.generate(prompt_ids, params)
        try:
            async for delta in gen:
                now = time.monotonic()
                if last_token_at is None:
                    self.metrics.ttft.labels(*labels).observe(now - started)
                else:
                    self.metrics.itl.labels(*labels).observe(now - last_token_at)
                last_token_at = now
                generated.append(delta.token_id)
                self.metrics.generation_tokens.labels(*labels).inc()
                text = self.engine.detokenize(generated)
                finish = delta.finish_reason
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                if text.endswith("\ufffd") and not finish:
                    continue  # half of a multi-byte character
                ready_upto = len(text) if finish else max(len(text) - hold, len(sent))
                if ready_upto > len(sent):
                    yield text[len(sent):ready_upto], None, len(generated)
                    sent = text[:ready_upto]
                if finish:
                    break
        finally:
            await gen.aclose()  # type: ignore[attr-defined]
        finish = finish or "length"
        self.metrics.e2e.labels(*labels).observe(time.monotonic() - started)
        self.metrics.success.labels(*labels, finish).inc()
        yield "", finish, len(generated)

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        self._require((TEXT_GENERATION,), "Completions")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_ids = list(prompt)
        elif isinstance(prompt, str):
            prompt_ids = self.engine.tokenize(prompt)
        else:
            raise OpenAIError("'prompt' must be a string (or a list of token ids)", param="prompt")
        params = self._params(body, 16)
        self._check_length(prompt_ids, params)
        return await self._respond(body, prompt_ids, params, chat=False)

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        self._require((TEXT_GENERATION,), "Chat Completion")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise OpenAIError("'messages' must be a non-empty list of {role, content} objects", param="messages")
        for m in messages:
            if isinstance(m.get("content"), list):  # content parts: keep the text ones
                m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
        prompt_ids = self.engine.tokenize(self.engine.chat_prompt(messages), add_special_tokens=False)
        params = self._params(body, self.engine.max_model_len)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            params = SamplingParams(max(self.engine.max_model_len - len(prompt_ids), 1), params.temperature,
                                    params.top_p, params.seed)
        self._check_length(prompt_ids, params)
        return await self._respond(body, prompt_ids, params, chat=True)

    async def _respond(self, body: dict[str, Any], prompt_ids: list[int], params: SamplingParams, *, chat: bool
                       ) -> Response:
        stops = _stop_list(body.get("stop"))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        lora = self._lora(body)
        model = lora or self.engine.model_name  # as vLLM: the adapter's name when one generated
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            parts, finish, n = [], "length", 0
            async for text, reason, count in self._run(prompt_ids, params, stops, lora):
                n = count
                parts.append(text)
                finish = reason or finish
            text = "".join(parts)
            choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text},
                                       "logprobs": None, "finish_reason": finish} if chat else
                                      {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
                                 "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n,
                                           "total_tokens": len(prompt_ids) + n}})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            doc: dict[str, Any] = {"id": rid, "object": chunk_obj, "created": created, "model": model,
                                   "choices": choices}
            if include_usage:
                doc["usage"] = usage
            return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            if chat:
                yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            n = 0
            async for text, reason, count in self._run(prompt_ids, params, stops, lora):
                n = count
                if chat:
                    delta = {"content": text} if text else {}
                    yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}])
                else:
                    yield chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}])
            if include_usage:
                yield chunk([], {"prompt_tokens": len(prompt_ids), "completion_tokens": n,
                                 "total_tokens": len(prompt_ids) + n})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        self._require((TEXT_GENERATION, TEXT_EMBEDDING), "Embeddings")
        if self._lora(body):
            raise OpenAIError(f"The LoRA adapter `{body['model']}` does not serve embeddings; ask the base model "
                              f"`{self.engine.model_name}`", param="model")
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise OpenAIError("'input' must be a string or a non-empty list of strings", param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise OpenAIError("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        dimensions = body.get("dimensions")
        dim = getattr(self.engine, "embedding_dim", None)
        if dimensions is not None and (dim is None or dimensions != dim):
            raise OpenAIError("This model does not support 'dimensions'" if dim is None else
                              f"This model's embeddings have {dim} dimensions and cannot be shortened: 'dimensions' "
                              f"must be {dim} or left out", param="dimensions")
        vectors: list[Any] = await self.engine.embed(texts)
        if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
            vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        # The tokens the model read: each text is cut at max_model_len.
        tokens = sum(min(len(self.engine.tokenize(t)), self.engine.max_model_len) for t in texts)
        return JSONResponse({"object": "list", "model": self.engine.model_name,
                             "data": [{"object": "embedding", "index": i, "embedding": v}
                                      for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
