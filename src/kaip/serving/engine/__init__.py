"""Kaip's LLM engine (issue 7): continuous batching over a paged KV cache with prefix caching, after vLLM's v1
engine. Parts, each behind a narrow seam: `kv_cache` (block bookkeeping), `scheduler` (what runs each step),
`model_runner` (the batched forward), `sampler`, `detokenizer`, `core` (one step), `async_engine` (the runtime's
`Engine`)."""

from __future__ import annotations

from typing import Any

from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.request import EngineParams

__all__ = ["EngineConfig", "EngineParams", "LLMEngineCore", "kaip_engine_or_reason"]


def kaip_engine_or_reason(args: Any, dtype: str, lora_modules: dict[str, str] | None = None
                          ) -> tuple[Any, str | None]:
    """Kaip's engine for the runtime's parsed args (serving `lora_modules`, name -> PEFT folder, when not None), or
    (None, why not) for a model it does not run."""
    from transformers import AutoConfig

    from kaip.serving.engine.model_runner import unsupported_reason

    quantization = getattr(args, "quantization", None)
    reason = unsupported_reason(AutoConfig.from_pretrained(args.model_dir), dtype, quantization)
    if reason:
        return None, reason
    from kaip.serving.engine.async_engine import KaipEngine

    config = EngineConfig(max_num_seqs=getattr(args, "max_num_seqs", 32),
                          max_num_batched_tokens=getattr(args, "max_num_batched_tokens", 512),
                          kv_cache_bytes=int(getattr(args, "kv_cache_space", 1.0) * (1 << 30)),
                          max_model_len=args.max_model_len, max_loras=getattr(args, "max_loras", 1),
                          max_lora_rank=getattr(args, "max_lora_rank", 16), quantization=quantization)
    return KaipEngine.from_pretrained(args.model_dir, args.model_name, dtype=dtype, config=config,
                                      lora_modules=lora_modules), None
