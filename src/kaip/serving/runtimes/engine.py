"""The seam between the OpenAI-compatible server and whatever generates tokens.

An `Engine` takes token ids and sampling parameters and yields new tokens as they are produced; it also embeds
texts and reports its queue for metrics. The server (`openai_api.py`) does everything else: chat templates,
stop strings, SSE framing, usage accounting. A faster engine (continuous batching, paged KV cache) plugs in by
implementing these few methods; `TransformersEngine` is the plain reference: one request at a time, a
`generate`-style loop with the KV cache of transformers.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    """One step's output for one request: the new token and, on the last one, why it finished."""

    token_id: int
    finish_reason: str | None = None  # "stop" (end-of-sequence) or "length"


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # 0..1


class Engine(Protocol):
    """What an LLM engine provides to the server. All methods may be called from the event loop."""

    model_name: str
    max_model_len: int

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, token_ids: list[int]) -> str: ...

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str: ...

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        """Yield each new token as it is produced; stop early when the consumer stops iterating (aclose)."""
        ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...

    def stats(self) -> EngineStats: ...


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[TokenDelta | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class TokenizerText:
    """The Engine protocol's text methods, for an engine holding a Hugging Face tokenizer as `self.tokenizer`."""

    tokenizer: Any

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def detokenize(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
        return "\n".join(lines) + "\nassistant:"


class TransformersEngine(TokenizerText):
    """A transformers causal LM served one request at a time by a worker thread."""

    def __init__(self, model_dir: str, model_name: str, *, max_model_len: int | None = None,
                 dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.model_name = model_name
        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        self.model.eval()
        config_len = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_model_len = min(max_model_len or config_len, config_len)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._running = 0
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="engine", daemon=True)
        self._worker.start()

    # ---- generation ---------------------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenDelta]:
        req = _Request(prompt_ids, params, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(req)
        try:
            while True:
                item = await req.out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            req.cancelled.set()

    def _emit(self, req: _Request, item: TokenDelta | BaseException | None) -> None:
        req.loop.call_soon_threadsafe(req.out.put_nowait, item)

    def _work(self) -> None:
        while True:
            req = self._queue.get()
            if req is None:
                return
            if req.cancelled.is_set():
                continue
            with self._lock:
                self._running = 1
            try:
                self._run(req)
            except Exception as err:  # reported to the one request, the engine keeps serving
                self._emit(req, err)
            finally:
                with self._lock:
                    self._running = 0
                self._emit(req, None)

    def _run(self, req: _Request) -> None:
        torch = self.torch
        p = req.params
        generator = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        ids = torch.tensor([req.prompt_ids])
        past = None
        stop_ids = self.eos_ids | set(p.stop_token_ids)
        with torch.no_grad():
            for step in range(p.max_tokens):
                if req.cancelled.is_set():
                    return
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                token = self._sample(logits, p, generator)
                last = step == p.max_tokens - 1 or len(req.prompt_ids) + step + 1 >= self.max_model_len
                finish = "stop" if token in stop_ids else ("length" if last else None)
                self._emit(req, TokenDelta(token, finish))
                if finish:
                    return
                ids = torch.tensor([[token]])

    def _sample(self, logits: Any, p: SamplingParams, generator: Any) -> int:
        torch = self.torch
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, -1) - sorted_probs < p.top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=generator))

    # ---- embeddings ---------------------------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        return mean_pooled_embeddings(self.torch, self.model, self.tokenize, self.max_model_len, texts)

    def stats(self) -> EngineStats:
        with self._lock:
            running = self._running
        return EngineStats(running=running, waiting=self._queue.qsize(), kv_cache_usage=0.0)


def monotonic() -> float:
    return time.monotonic()


def mean_pooled_embeddings(torch: Any, model: Any, tokenize: Any, max_len: int, texts: list[str]) -> list[list[float]]:
    """Embeddings from a causal LM: the last hidden state, mean-pooled over the tokens and L2-normalised."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenize(text)[:max_len]])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            vec = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
            out.append([float(x) for x in vec])
    return out

