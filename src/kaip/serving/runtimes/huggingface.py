"""`kaip-huggingface`: a transformers model behind the `Engine` seam, served with OpenAI's API (completions,
chat, embeddings, models) plus KServe's health and model-ready routes, as KServe's huggingfaceserver."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from kaip.serving.runtimes.engine import Engine, TransformersEngine
from kaip.serving.runtimes.openai_api import OpenAIServer
from kaip.serving.runtimes.server import Model, build_app, parse_args, serve


class LLMModel(Model):
    platform = "huggingface"

    def __init__(self, engine: Engine) -> None:
        self.name = engine.model_name
        self.ready = True


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "huggingface", "vllm"])
    parser.add_argument("--max_model_len", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--task", default="text_generation")
    parser.add_argument("--max_num_seqs", type=int, default=32)
    parser.add_argument("--max_num_batched_tokens", type=int, default=512)
    parser.add_argument("--kv_cache_space", type=float, default=1.0, help="GiB of KV cache (the Kaip engine)")


def make_engine(args: Any) -> Engine:
    """The engine for `--backend`: `auto` is Kaip's paged engine (`kaip.serving.engine`) for the model families it
    runs, else the plain transformers engine; `huggingface`, or KAIP_LLM_ENGINE=reference, always the plain one."""
    if args.backend == "vllm":
        raise RuntimeError("--backend=vllm needs vLLM, which is not installed here; use --backend=huggingface")
    dtype = "float32" if args.dtype == "auto" else args.dtype
    if args.backend == "auto" and os.environ.get("KAIP_LLM_ENGINE", "kaip") != "reference":
        from kaip.serving.engine import kaip_engine_or_reason

        engine, reason = kaip_engine_or_reason(args, dtype)
        if engine is not None:
            return engine
        print(f"kaip-huggingface: using the reference transformers engine: {reason}", file=sys.stderr, flush=True)
    return TransformersEngine(args.model_dir, args.model_name, max_model_len=args.max_model_len, dtype=dtype)


def main(argv: list[str] | None = None) -> None:
    args = parse_args("Kaip Hugging Face model server", _extra, argv)
    try:
        engine = make_engine(args)
    except Exception as err:
        print(f"kaip-huggingface: cannot load model {args.model_name!r} from {args.model_dir}: {err}",
              file=sys.stderr, flush=True)
        sys.exit(1)
    registry = CollectorRegistry()
    api = OpenAIServer(engine, registry)
    if hasattr(engine, "register_metrics"):  # engine-specific metrics (prefix cache, preemptions)
        engine.register_metrics(registry)
    print(f"kaip-huggingface: serving {args.model_name} on {args.host}:{args.http_port}", flush=True)
    serve(build_app(LLMModel(engine), registry, api.routes()), args.host, args.http_port)


if __name__ == "__main__":
    main()
