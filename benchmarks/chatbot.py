"""The healthcare chatbot's end-to-end chat latency: guardrails (input and output) + RAG over the member's records +
the model, through the gateway, as a member with the `openai` client — side by side with the same questions sent
straight to the model replica (no guardrails, no retrieval) in the same run. Prints p50/p99 per path and
concurrency, and the ratio.

    .venv/bin/python benchmarks/chatbot.py [--requests 24] [--concurrency 1 8] [--max-tokens 48]

It brings up the example as `make demo` does up to the first rollout (the champion: the imported base model),
without training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "healthcare-chatbot"))

import demo  # noqa: E402

from kaip.evaluation.qa import SYSTEM_PROMPT  # noqa: E402
from kaip.testing.live import free_port  # noqa: E402

QUESTIONS = ["How much of my deductible have I met so far this year?", "Which plan am I on?",
             "Which prescriptions do I have on file?", "What is my deductible?"]


def load(client, n: int, concurrency: int, max_tokens: int) -> tuple[list[float], float, float]:  # noqa: ANN001
    """Latencies, chats/s and mean completion tokens (answers differ in length: with the retrieved record in
    its prompt a model answers briefly, without it it often runs to max_tokens)."""
    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        out = client.chat.completions.create(model="chatbot", max_tokens=max_tokens, temperature=0, messages=[
            {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        return time.perf_counter() - started, (out.usage.completion_tokens if out.usage else 0)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - started
    return [r[0] for r in results], n / elapsed, statistics.mean(r[1] for r in results)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    from openai import OpenAI

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        p = demo.Platform(Path(tmp) / "home", free_port())
        try:
            p.start()
            demo.import_models(p)
            demo.sync_application(p, demo.gitops_repo(p))
            token = demo.member_token(p, "member-evm-100001")
            pods = p.get(f"/api/v1/namespaces/{demo.NS}/pods"
                         "?labelSelector=serving.kserve.io/inferenceservice%3Dchatbot")
            port = pods["items"][0]["metadata"]["annotations"]["serving.kaip.dev/port"]  # type: ignore[index]
            paths = {"chatbot (guardrails + RAG + model, gateway)":
                     OpenAI(base_url=f"{p.url}/serving/{demo.NS}/chatbot/openai/v1", api_key=token, max_retries=0),
                     "model alone (direct to the replica)":
                     OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="-", max_retries=0)}
            for client in paths.values():  # warm-up: first-request costs are not the steady state
                load(client, 2, 1, args.max_tokens)
            print(f"SmolLM2-135M-Instruct, {args.requests} chats per row, max_tokens {args.max_tokens}, temperature 0")
            print(f"{'path':<46} {'conc':>4} {'p50 s':>7} {'p99 s':>7} {'chats/s':>8} {'tokens':>7}")
            p50s: dict[tuple[str, int], float] = {}
            for conc in args.concurrency:
                for name, client in paths.items():
                    lat, rate, tokens = load(client, args.requests, conc, args.max_tokens)
                    p50s[(name, conc)] = statistics.median(lat)
                    print(f"{name:<46} {conc:>4} {statistics.median(lat):>7.2f} {pct(lat, 0.99):>7.2f} {rate:>8.2f} "
                          f"{tokens:>7.1f}")
            full, alone = list(paths)
            for conc in args.concurrency:
                print(f"concurrency {conc}: chatbot p50 / model-alone p50 = "
                      f"{p50s[(full, conc)] / p50s[(alone, conc)]:.2f}x")
        finally:
            demo.teardown(p)
            p.stop()


if __name__ == "__main__":
    main()
