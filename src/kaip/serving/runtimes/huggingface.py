"""`kaip-huggingface`: a transformers model behind the `Engine` seam, served with OpenAI's API (completions,
chat, embeddings, models) plus KServe's health and model-ready routes, as KServe's huggingfaceserver."""

from __future__ import annotations

import argparse
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


def make_engine(args: Any) -> Engine:
    """The engine for `--backend`; a faster engine registers here when it lands."""
    if args.backend == "vllm":
        raise RuntimeError("--backend=vllm needs vLLM, which is not installed here; use --backend=huggingface")
    dtype = "float32" if args.dtype == "auto" else args.dtype
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
    print(f"kaip-huggingface: serving {args.model_name} on {args.host}:{args.http_port}", flush=True)
    serve(build_app(LLMModel(engine), registry, api.routes()), args.host, args.http_port)


if __name__ == "__main__":
    main()
