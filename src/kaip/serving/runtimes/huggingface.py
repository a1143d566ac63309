"""`kaip-huggingface`: a transformers model served as KServe's huggingfaceserver serves it, for the task `--task`
names or the model's architecture implies (`tasks.py`). Text generation: a causal LM behind the `Engine` seam, with
OpenAI's API (completions, chat, embeddings, models) plus KServe's health and model-ready routes. Encoder tasks
(text_embedding, sequence_classification, token_classification, fill_mask; `encoder.py`): KServe v1 `:predict` and
Open Inference v2 `infer` on texts, and OpenAI's embeddings and models. With `--enable_lora`, the LoRA adapters of
`--lora_modules NAME=PATH …` are served beside the base model (Kaip's paged engine only), each under its name."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from kaip.serving.runtimes.engine import Engine, TransformersEngine
from kaip.serving.runtimes.openai_api import OpenAIServer
from kaip.serving.runtimes.server import Model, build_app, parse_args, serve
from kaip.serving.runtimes.tasks import TEXT_GENERATION, resolve_task
from kaip.serving.storage import LORA_MODULES_FLAGS, parse_lora_module

NO_VLLM = "--backend=vllm needs vLLM, which is not installed here; use --backend=huggingface"


class LLMModel(Model):
    platform = "huggingface"

    def __init__(self, engine: Engine) -> None:
        self.name = engine.model_name
        self.ready = True


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=["auto", "huggingface", "vllm"])
    parser.add_argument("--max_model_len", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--task", default=None, help="default: inferred from the model's architecture")
    parser.add_argument("--disable_special_tokens", action="store_true",
                        help="encoder tasks: tokenize without the model's special tokens")
    output = parser.add_mutually_exclusive_group()  # classification answers, as upstream's flags
    output.add_argument("--return_probabilities", action="store_true")
    output.add_argument("--return_raw_logits", action="store_true")
    parser.add_argument("--max_num_seqs", type=int, default=32)
    parser.add_argument("--max_num_batched_tokens", type=int, default=512)
    parser.add_argument("--kv_cache_space", type=float, default=1.0, help="GiB of KV cache (the Kaip engine)")
    parser.add_argument("--quantization", "-q", default=None, choices=["int8"],
                        help="the Kaip engine: int8 weight-only quantisation (float32 models)")
    # Multi-LoRA, with vLLM's flags (either spelling)
    parser.add_argument("--enable_lora", "--enable-lora", action="store_true", help="serve LoRA adapters")
    parser.add_argument(*LORA_MODULES_FLAGS, dest="lora_modules", nargs="+", action="extend", default=[],
                        metavar="NAME=PATH", help="LoRA adapters (PEFT folders), each served under its NAME")
    parser.add_argument("--max_loras", "--max-loras", type=int, default=1,
                        help="LoRA adapters that may run in the same batch (vLLM's default: 1)")
    parser.add_argument("--max_lora_rank", "--max-lora-rank", type=int, default=16,
                        help="adapters of a higher rank are refused")


def lora_modules_of(args: Any) -> dict[str, str] | None:
    """The adapters to serve (name -> folder), or None when LoRA is not enabled."""
    modules = getattr(args, "lora_modules", None) or []
    if not getattr(args, "enable_lora", False):
        if modules:
            raise RuntimeError("--lora_modules needs --enable_lora")
        return None
    if getattr(args, "max_loras", 1) < 1:
        raise RuntimeError("--max_loras must be at least 1")
    out: dict[str, str] = {}
    for value in modules:
        name, path = parse_lora_module(value)
        if name in out or name == args.model_name:
            raise RuntimeError(f"--lora_modules: the name {name!r} is used twice (adapters and the served model "
                               "need distinct names)")
        out[name] = path
    return out


def make_engine(args: Any) -> Engine:
    """The engine for `--backend`: `auto` is Kaip's paged engine (`kaip.serving.engine`) for the model families it
    runs, else the plain transformers engine; `huggingface`, or KAIP_LLM_ENGINE=reference, always the plain one."""
    if args.backend == "vllm":
        raise RuntimeError(NO_VLLM)
    dtype = "float32" if args.dtype == "auto" else args.dtype
    loras = lora_modules_of(args)
    reason = "--backend=huggingface" if args.backend != "auto" else "KAIP_LLM_ENGINE=reference"
    if args.backend == "auto" and os.environ.get("KAIP_LLM_ENGINE", "kaip") != "reference":
        from kaip.serving.engine import kaip_engine_or_reason

        engine, why = kaip_engine_or_reason(args, dtype, loras)
        if engine is not None:
            return engine
        reason = why or reason
        if loras is None:
            print(f"kaip-huggingface: using the reference transformers engine: {reason}", file=sys.stderr,
                  flush=True)
    if loras is not None:
        raise RuntimeError(f"--enable_lora needs Kaip's paged engine, which is not used here ({reason}); the "
                           "reference transformers engine does not serve LoRA adapters")
    if getattr(args, "quantization", None):
        raise RuntimeError(f"--quantization needs Kaip's paged engine, which is not used here ({reason})")
    return TransformersEngine(args.model_dir, args.model_name, max_model_len=args.max_model_len, dtype=dtype)


def load(args: Any) -> tuple[str, Any, Model]:
    """(task, engine, v1/v2 model) for the parsed args; any error says why the model cannot be served."""
    from kaip.serving.runtimes.encoder import EncoderEngine, EncoderModel, check_output

    task, warning = resolve_task(Path(args.model_dir), args.task)
    if warning:
        print(f"kaip-huggingface: {warning}", file=sys.stderr, flush=True)
    output = "probabilities" if args.return_probabilities else "logits" if args.return_raw_logits else "index"
    check_output(task, output)  # before the model loads: a wrong flag fails at once
    if task == TEXT_GENERATION:
        engine = make_engine(args)
        return task, engine, LLMModel(engine)
    if args.backend == "vllm":  # make_engine says so for generation
        raise RuntimeError(NO_VLLM)
    if getattr(args, "enable_lora", False) or getattr(args, "lora_modules", None):
        raise RuntimeError(f"--enable_lora serves LoRA adapters of text-generation models; this model is served "
                           f"for the task {task}")
    encoder = EncoderEngine(args.model_dir, args.model_name, task, max_model_len=args.max_model_len,
                            dtype="float32" if args.dtype == "auto" else args.dtype,
                            add_special_tokens=not args.disable_special_tokens)
    return task, encoder, EncoderModel(encoder, output)


def main(argv: list[str] | None = None) -> None:
    args = parse_args("Kaip Hugging Face model server", _extra, argv)
    try:
        task, engine, model = load(args)
    except Exception as err:
        print(f"kaip-huggingface: cannot load model {args.model_name!r} from {args.model_dir}: {err}",
              file=sys.stderr, flush=True)
        sys.exit(1)
    registry = CollectorRegistry()
    api = OpenAIServer(engine, registry, task)
    if hasattr(engine, "register_metrics"):  # engine-specific metrics (prefix cache, preemptions)
        engine.register_metrics(registry)
    print(f"kaip-huggingface: serving {args.model_name} ({task}) on {args.host}:{args.http_port}", flush=True)
    serve(build_app(model, registry, api.routes()), args.host, args.http_port)


if __name__ == "__main__":
    main()
