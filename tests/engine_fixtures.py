"""Shared by the paged-engine tests: a tiny Llama built in-process, transformers' greedy `generate` as the
reference, random prompts, PEFT adapters with non-zero weights, and a runtime served in-process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kaip.testing.waiting import wait_for


def tiny_llama(hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, eos_token_id=0, bos_token_id=1, pad_token_id=0)
    m = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy choices are not near-ties
        m.lm_head.weight.mul_(8.0)
    m.generation_config.eos_token_id = None  # run to max_new_tokens, as the engine does with ignore_eos
    return m


def tiny_family(family: str, dtype: torch.dtype = torch.float32) -> Any:
    """A tiny Qwen2, Qwen3 or Gemma 3 model with the family's distinguishing parts exercised: Qwen2's QKV biases and
    Qwen3's/Gemma's query-key norms get random (not identity) values, and Gemma's first layer slides a window of
    5 positions, shorter than the test prompts."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, eos_token_id=0, bos_token_id=1,
                  pad_token_id=0)
    builders = {
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16)),
        "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(
            **common, head_dim=16, sliding_window=5, query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention"])),
    }
    torch.manual_seed(0)
    m = builders[family]().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
        m.lm_head.weight.mul_(8.0)
    m.generation_config.eos_token_id = None
    return m.to(dtype)


def reference(model: LlamaForCausalLM, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy `generate`: the tokens the engine must reproduce."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 96, (n,), generator=g).tolist() for n in lengths]


def randomise_lora(peft_model: Any, seed: int, scale: float) -> Any:
    """Random, non-zero A and B (PEFT initialises B to zero, which would make every adapter the base model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return peft_model


@contextmanager
def serve_in_process(engine: Any) -> Iterator[str]:
    """kaip-huggingface's app around `engine` on a free loopback port, for the block; yields its URL."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from kaip.serving.runtimes.huggingface import LLMModel
    from kaip.serving.runtimes.openai_api import OpenAIServer
    from kaip.serving.runtimes.server import build_app

    registry = CollectorRegistry()
    api = OpenAIServer(engine, registry)
    engine.register_metrics(registry)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(LLMModel(engine), registry, api.routes()), host="127.0.0.1",
                                       port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, "runtime up", timeout=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
