"""`KaipEngine`: the paged engine behind the runtime's `Engine` seam.

A single worker thread owns `LLMEngineCore` and steps it while there is work; the event loop only enqueues
requests and aborts and receives tokens. When a stream's consumer goes away (client disconnect, a stop string cut
by the server) the generator's `finally` sends an abort, and the request's KV blocks are freed at the next step.
LoRA adapters (`lora_modules`, name -> PEFT folder) load with the engine; a request names its adapter with
`lora_name`."""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.request import EngineParams
from kaip.serving.runtimes.engine import EngineStats, SamplingParams, TokenDelta, TokenizerText

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[TokenDelta | BaseException | None]


def to_engine_params(p: SamplingParams | EngineParams) -> EngineParams:
    if isinstance(p, EngineParams):
        return p
    return EngineParams(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, seed=p.seed,
                        stop_token_ids=tuple(p.stop_token_ids))


class KaipEngine(TokenizerText):
    """Continuous batching over a paged KV cache for Llama-family transformers models."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str, config: EngineConfig | None = None, *,
                 lora_modules: dict[str, str] | None = None) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_dir: str | None = None
        self.core = LLMEngineCore(model, tokenizer, config)
        self.max_model_len = self.core.max_model_len
        self.lora_modules: dict[str, str] = {}  # adapter name -> its folder (listed by /openai/v1/models)
        self.lora_enabled = lora_modules is not None
        for name, path in (lora_modules or {}).items():
            if name == model_name:
                raise ValueError(f"LoRA adapter {name!r} has the served model's name")
            self.core.add_lora(name, path)
            self.lora_modules[name] = path
        self._lora_info: tuple[str, str] = ("", "")  # running, waiting adapters (vllm:lora_requests_info)
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self._worker = threading.Thread(target=self._work, name="kaip-engine", daemon=True)
        self._worker.start()

    @classmethod
    def from_pretrained(cls, model_dir: str, model_name: str, *, max_model_len: int | None = None,
                        dtype: str = "float32", config: EngineConfig | None = None,
                        lora_modules: dict[str, str] | None = None) -> KaipEngine:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        config = config or EngineConfig()
        if max_model_len:
            config = EngineConfig(**{**config.__dict__, "max_model_len": max_model_len})
        engine = cls(model, tokenizer, model_name, config, lora_modules=lora_modules)
        engine.model_dir = model_dir
        return engine

    # ---- generation ---------------------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], params: SamplingParams | EngineParams, *,
                       lora_name: str | None = None) -> AsyncIterator[TokenDelta]:
        """Yield the request's tokens; `lora_name` is one of `lora_modules` (None: the base model)."""
        request_id = f"req-{next(self._ids)}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            self._streams[request_id] = stream
        self._inbox.put(("add", (request_id, list(prompt_ids), to_engine_params(params), lora_name)))
        done = False
        try:
            while True:
                item = await stream.out.get()
                if item is None:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
                if item.finish_reason:
                    done = True
                    return
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not done:
                self._inbox.put(("abort", request_id))

    def _emit(self, request_id: str, item: TokenDelta | BaseException | None) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.out.put_nowait, item)

    def _drain(self, block: bool) -> None:
        while True:
            try:
                kind, arg = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if kind == "add":
                request_id, prompt_ids, params, lora_name = arg
                try:
                    self.core.add_request(request_id, prompt_ids, params, lora_name)
                except ValueError as err:
                    self._emit(request_id, err)
            elif kind == "abort":
                self.core.abort(arg)

    def _work(self) -> None:
        while True:
            self._drain(block=not self.core.has_work)
            try:
                outputs = self.core.step()
            except Exception as err:  # a bug or an OOM in a step: fail the requests in it, keep serving
                log.exception("engine step failed")
                for request_id in list(self.core.scheduler.requests):
                    self.core.abort(request_id)
                    self._emit(request_id, err)
                outputs = []
            for o in outputs:
                self._emit(o.request_id, TokenDelta(o.token_id, o.finish_reason))
            self._update_stats()

    def _update_stats(self) -> None:
        s = self.core.scheduler
        lora_info = self._lora_info
        if self.lora_enabled:  # as vLLM: comma-separated adapter names, read here where the lists are safe to read
            lora_info = (",".join(sorted({r.lora_name for r in s.running if r.lora_name})),
                         ",".join(sorted({r.lora_name for r in s.waiting if r.lora_name})))
        with self._lock:
            self._stats = EngineStats(running=len(s.running), waiting=len(s.waiting) + self._inbox.qsize(),
                                      kv_cache_usage=self.core.kv.usage)
            self._lora_info = lora_info

    def lora_info(self) -> tuple[str, str]:
        """(running, waiting) LoRA adapters, comma-separated."""
        with self._lock:
            return self._lora_info

    def stats(self) -> EngineStats:
        with self._lock:
            return self._stats

    # ---- embeddings (mean-pooled last hidden state, as the reference engine) -------------------------------

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        from kaip.serving.runtimes.engine import mean_pooled_embeddings

        return mean_pooled_embeddings(self.torch, self.model, self.tokenize, self.max_model_len, texts)

    # ---- metrics beyond the runtime's gauges --------------------------------------------------------------

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(_CacheCollector(self))


class _CacheCollector(Collector):
    def __init__(self, engine: KaipEngine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        core = self.engine.core
        labels = [self.engine.model_name, "0"]
        for name, doc, value in (
                ("vllm:prefix_cache_queries", "Prefix-cache queries, in tokens", core.kv.prefix_queries),
                ("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens", core.kv.prefix_hits),
                ("vllm:num_preemptions", "Requests preempted (recomputed later)", core.scheduler.num_preemptions)):
            c = CounterMetricFamily(name, doc, labels=["model_name", "engine"])
            c.add_metric(labels, value)
            yield c
        if self.engine.lora_enabled:  # vLLM's info gauge: the value is the time of the reading
            running, waiting = self.engine.lora_info()
            g = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on LoRA requests",
                                  labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
            g.add_metric([str(core.scheduler.config.max_loras), waiting, running], time.time())
            yield g
