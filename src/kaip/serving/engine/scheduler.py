"""Iteration-level scheduling, after vLLM v1: each step `schedule()` says how many tokens of each request to run,
and `update_from_output()` takes the sampled tokens back.

There is no separate prefill phase. A request is just "tokens so far" and "tokens already in the KV cache"; each
step gives every running request the tokens it is missing (one for a decoding request, a chunk of the prompt for a
prefilling one) under one token budget, so long prompts are chunked and mixed with decodes instead of stalling
them. Running requests go first (they hold KV blocks), then waiting ones in arrival order. When the cache is full,
the most recently admitted running request is preempted: its blocks are freed and it is recomputed later from its
tokens (prefix caching usually gives most of them back). At most `max_loras` distinct LoRA adapters are among the
running requests (the base model does not count), as vLLM's `--max-loras`: a request for one more keeps its place in
the queue while the requests behind it that fit are admitted (the one exception to first come, first served)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kaip.serving.engine.kv_cache import KVCacheManager
from kaip.serving.engine.request import Request, Status


@dataclass(frozen=True)
class ScheduledRequest:
    request: Request
    start: int  # first position to compute
    num_tokens: int  # how many tokens from `start`
    sample: bool  # True when this chunk reaches the end of the request's tokens: sample the next one

    @property
    def token_ids(self) -> list[int]:
        return self.request.all_token_ids[self.start:self.start + self.num_tokens]


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    max_model_len: int = 2048
    max_loras: int = 1  # distinct LoRA adapters among running requests (vLLM's --max-loras); the base is free


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, eos_token_ids: frozenset[int] = frozenset()
                 ) -> None:
        self.config = config
        self.kv = kv
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    # ---- requests in and out ------------------------------------------------------------------------------

    def add_request(self, req: Request) -> None:
        """Queue a request; refused when it could not fit in the whole KV cache even alone (it would otherwise be
        preempted for ever)."""
        longest = min(len(req.prompt_token_ids) + req.params.max_tokens, self.config.max_model_len)
        if self.kv.blocks_needed(longest) > self.kv.num_blocks:
            raise ValueError(f"request {req.request_id} needs up to {longest} tokens of KV cache; the cache holds "
                             f"{self.kv.num_blocks * self.kv.block_size}")
        if req.request_id in self.requests:
            raise ValueError(f"request {req.request_id} is already queued")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def abort(self, request_id: str) -> Request | None:
        """Cancel a request (client gone): its KV blocks are freed at once."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, "abort")
        return req

    def _finish(self, req: Request, reason: str) -> None:
        req.status = Status.FINISHED
        req.finish_reason = reason
        self.kv.free(req)
        self.requests.pop(req.request_id, None)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- the step -----------------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate_slots(req, n):
                victim = self.running.pop()  # the latest admitted
                self._preempt(victim)
                out.preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                scheduled.append(req)
                out.scheduled.append(self._take(req, n))
                budget -= n
                i += 1
                continue
            break  # `req` itself was preempted: everything after it was too
        if not out.preempted:
            self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        i = 0
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[i]
            if req.lora_name is not None and not self._lora_fits(req.lora_name):
                i += 1  # as vLLM: it keeps its place, and those behind it that fit go on
                continue
            hits = self.kv.get_computed_blocks(req)
            computed = len(hits) * self.kv.block_size
            n = min(req.num_tokens - computed, budget)
            if not self.kv.allocate_slots(req, n, hits):
                break  # FCFS: nobody overtakes the head of the queue
            self.kv.record_lookup(req.num_tokens, computed)
            del self.waiting[i]
            req.num_computed_tokens = computed
            req.num_cached_prompt_tokens = computed
            req.status = Status.RUNNING
            self.running.append(req)
            out.scheduled.append(self._take(req, n))
            budget -= n

    def _lora_fits(self, name: str) -> bool:
        active = {r.lora_name for r in self.running if r.lora_name is not None}
        return name in active or len(active) < self.config.max_loras

    def _take(self, req: Request, n: int) -> ScheduledRequest:
        start = req.num_computed_tokens
        req.num_computed_tokens += n
        return ScheduledRequest(req, start, n, sample=req.num_computed_tokens == req.num_tokens)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = Status.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update_from_output(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Append each sampled token, apply the stop rules, free finished requests; returns those that finished
        this step (with `finish_reason` set). Requests aborted while the step ran are ignored."""
        finished: list[Request] = []
        for s in out.scheduled:
            req = s.request
            if req.finished:
                continue
            self.kv.cache_full_blocks(req)
            if not s.sample or req.request_id not in sampled:
                continue
            token = sampled[req.request_id]
            req.output_token_ids.append(token)
            reason = self.stop_reason(req, token)
            if reason:
                self.running.remove(req)
                self._finish(req, reason)
                finished.append(req)
        return finished

    def stop_reason(self, req: Request, token: int) -> str | None:
        p = req.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if len(req.output_token_ids) >= p.max_tokens or req.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def finish_stopped(self, req: Request, reason: str = "stop") -> None:
        """End a running request for a reason decided outside the scheduler (a stop string)."""
        if req in self.running:
            self.running.remove(req)
        self._finish(req, reason)
