"""The engine's synchronous core: one `step()` = schedule, run the model, sample, update, detokenize.

It owns the parts and the glue between them and nothing else: no threads, no asyncio (see `async_engine.py`), so
tests can drive it step by step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kaip.serving.engine.detokenizer import IncrementalDetokenizer
from kaip.serving.engine.kv_cache import KVCacheManager
from kaip.serving.engine.model_runner import PagedRunner
from kaip.serving.engine.request import EngineParams, Request
from kaip.serving.engine.sampler import Sampler
from kaip.serving.engine.scheduler import Scheduler, SchedulerConfig


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # None: from kv_cache_bytes
    kv_cache_bytes: int = 1 << 30
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    max_loras: int = 1  # LoRA adapters that may run in one step (vLLM's --max-loras)
    max_lora_rank: int = 16  # adapters of a higher rank are refused (vLLM's --max-lora-rank)
    quantization: str | None = None  # "int8": int8 weight-only quantisation of the layers' projections


@dataclass(frozen=True)
class StepOutput:
    request_id: str
    token_id: int
    text: str  # newly safe text (may be empty)
    finish_reason: str | None


class LLMEngineCore:
    def __init__(self, model: Any, tokenizer: Any = None, config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        cfg = model.config.get_text_config()
        limit = getattr(cfg, "max_position_embeddings", None) or 2048
        self.max_model_len = min(config.max_model_len or limit, limit)
        num_blocks = config.num_blocks or self._default_blocks(config, cfg, model.dtype.itemsize)
        self.kv = KVCacheManager(num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching)
        eos = getattr(cfg, "eos_token_id", None)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos = tokenizer.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   self.max_model_len, config.max_loras), self.kv, eos_ids)
        self.runner = PagedRunner(model, num_blocks, config.block_size, config.quantization)
        self.max_lora_rank = config.max_lora_rank
        self.sampler = Sampler()
        self.tokenizer = tokenizer
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self.steps = 0
        self.step_seconds = 0.0

    def _default_blocks(self, config: EngineConfig, model_config: Any, dtype_bytes: int) -> int:
        """As many blocks as `kv_cache_bytes` holds (the cache has the model's dtype), but no more than twice what
        `max_num_seqs` full-length sequences need (a tiny model would otherwise get millions of slots), and at least
        one full sequence."""
        by_memory = config.kv_cache_bytes // (PagedRunner.kv_bytes_per_token(model_config, dtype_bytes)
                                              * config.block_size)
        per_seq = -(-self.max_model_len // config.block_size)
        return max(min(by_memory, 2 * config.max_num_seqs * per_seq), per_seq)

    def add_lora(self, name: str, path: str) -> None:
        """Serve the PEFT LoRA adapter at `path` as `name`; a LoRAError (ValueError) says why it cannot be."""
        self.runner.add_lora(name, path, self.max_lora_rank)

    @property
    def lora_names(self) -> list[str]:
        return list(self.runner.loras)

    def add_request(self, request_id: str, prompt_ids: list[int], params: EngineParams,
                    lora_name: str | None = None) -> Request:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if lora_name is not None and lora_name not in self.runner.loras:
            raise ValueError(f"unknown LoRA adapter {lora_name!r}")
        req = Request(request_id, list(prompt_ids), params, arrival=time.monotonic(), lora_name=lora_name)
        self.scheduler.add_request(req)
        if self.tokenizer is not None:
            self._detok[request_id] = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        return req

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)
        self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        self._detok.pop(request_id, None)
        self.sampler.forget(request_id)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def step(self) -> list[StepOutput]:
        started = time.perf_counter()
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return []
        tables = {s.request.request_id: self.kv.block_table(s.request.request_id) for s in sched.scheduled}
        logits = self.runner.execute(sched.scheduled, tables)
        to_sample = [s.request for s in sched.scheduled if s.sample]
        tokens = self.sampler.sample(logits, [r.request_id for r in to_sample], [r.params for r in to_sample],
                                     [r.all_token_ids if _penalised(r.params) else [] for r in to_sample],
                                     [len(r.output_token_ids) for r in to_sample])
        sampled = {r.request_id: t for r, t in zip(to_sample, tokens, strict=True)}
        finished = {r.request_id for r in self.scheduler.update_from_output(sched, sampled)}
        outputs = []
        for req in to_sample:
            token = sampled[req.request_id]
            reason = req.finish_reason if req.request_id in finished else None
            text = self._text(req, token, reason)
            if reason is None and req.params.stop and self._hits_stop(req):
                self.scheduler.finish_stopped(req)
                reason = "stop"
            outputs.append(StepOutput(req.request_id, token, text, reason))
            if reason:
                self._forget(req.request_id)
        self.steps += 1
        self.step_seconds += time.perf_counter() - started
        return outputs

    def _text(self, req: Request, token: int, reason: str | None) -> str:
        detok = self._detok.get(req.request_id)
        if detok is None:
            return ""
        text = detok.push(token)
        return text + detok.flush() if reason else text

    def _hits_stop(self, req: Request) -> bool:
        detok = self._detok.get(req.request_id)
        return detok is not None and any(s in detok.text for s in req.params.stop)

    def generate_all(self, prompts: list[list[int]], params: EngineParams,
                     lora_names: list[str | None] | None = None) -> list[list[int]]:
        """Run prompts to completion (tests, offline batch), each with its LoRA adapter (None: the base model);
        returns the generated ids per prompt."""
        names: list[str | None] = lora_names or [None] * len(prompts)
        reqs = [self.add_request(f"batch-{i}", p, params, name)
                for i, (p, name) in enumerate(zip(prompts, names, strict=True))]
        while self.has_work:
            self.step()
        return [r.output_token_ids for r in reqs]


def _penalised(p: EngineParams) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)
