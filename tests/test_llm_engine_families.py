"""The paged runner beyond Llama: Qwen2, Qwen3 and Gemma 3 (sliding-window layers included) must match
transformers' greedy `generate` token for token, in float32 and bfloat16; int8 weight quantisation must stay close
to the float model; what the runner cannot run is refused with the reason."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import Gemma3TextConfig, LlamaConfig

from engine_fixtures import prompts, reference, tiny_family, tiny_llama
from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.model_runner import spec_of, unsupported_reason
from kaip.serving.engine.request import EngineParams, Request
from kaip.serving.engine.scheduler import ScheduledRequest

GREEDY = EngineParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "gemma3"])
def family(request: pytest.FixtureRequest) -> Any:
    return tiny_family(request.param)


def test_single_prompts_match_generate(family: Any) -> None:
    for prompt in prompts([1, 5, 16, 17, 40]):
        engine = LLMEngineCore(family, config=EngineConfig(block_size=4, num_blocks=64))
        assert engine.generate_all([prompt], GREEDY) == [reference(family, prompt, 12)], len(prompt)


def test_mixed_batch_with_chunked_prefill_and_prefix_hits_match_generate(family: Any) -> None:
    system = prompts([20], seed=3)[0]
    batch = prompts([3, 30, 9, 21, 50, 2], seed=2) + [system + q for q in prompts([5, 7], seed=4)]
    engine = LLMEngineCore(family, config=EngineConfig(block_size=4, num_blocks=160, max_num_batched_tokens=24,
                                                       max_num_seqs=4))
    assert engine.generate_all(batch, GREEDY) == [reference(family, p, 12) for p in batch]
    assert engine.kv.prefix_hits > 0  # a later question reused blocks of the shared head


def _same_tokens(got: list[list[int]], want: list[list[int]]) -> int:
    """How many generated tokens equal the reference's at the same place."""
    return sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))


def _last_logits(engine: LLMEngineCore, prompt: list[int]) -> torch.Tensor:
    """The runner's next-token logits after a one-chunk prefill of `prompt`."""
    table = list(range(-(-len(prompt) // engine.runner.block_size)))
    req = Request("r", prompt, GREEDY)
    return engine.runner.execute([ScheduledRequest(req, 0, len(prompt), True)], {"r": table})[0]


def test_the_sliding_window_is_applied() -> None:
    # Gemma's first layer sees 5 positions. The runner's logits equal transformers' for a 40-token prompt, and
    # differ when that layer is made a full-attention one: the window is really applied, not passed by accident.
    model = tiny_family("gemma3")
    assert spec_of(model.config).layer_types == ("sliding_attention", "full_attention")
    prompt = prompts([40], seed=7)[0]
    with torch.no_grad():
        exact = model(torch.tensor([prompt])).logits[0, -1]
    windowed = _last_logits(LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=64)), prompt)
    assert torch.allclose(windowed, exact, atol=1e-4)
    model.config.layer_types = ["full_attention", "full_attention"]
    full = _last_logits(LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=64)), prompt)
    assert (full - exact).abs().max() > 1e-2


def test_bfloat16_matches_generate_in_bfloat16() -> None:
    model = tiny_llama(hidden=128).to(torch.bfloat16)
    batch = prompts([1, 5, 16, 17, 40])
    engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=128))
    assert engine.runner.k_cache.dtype == torch.bfloat16  # K/V are bfloat16 values: stored exactly in half the bytes
    want = [reference(model, p, 12) for p in batch]
    assert engine.generate_all(batch, GREEDY) == want
    runner = engine.runner  # the torch path, over the same cache
    runner.native_decode = runner.native_prefill = runner.native_rotary = runner.native_rms = False
    runner.act_table = None
    assert engine.generate_all(batch, GREEDY) == want


def test_bfloat16_qwen3_and_gemma3_stay_within_bfloat16_rounding() -> None:
    # Other kernels round differently in bfloat16, so a near-tie may flip a later token: the logits must agree to
    # bfloat16 precision and nearly every greedy token must match.
    for family in ("qwen3", "gemma3"):
        model = tiny_family(family, torch.bfloat16)
        batch = prompts([5, 16, 17, 40], seed=9)
        engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=128))
        with torch.no_grad():
            exact = model(torch.tensor([batch[3]])).logits[0, -1].float()
        assert torch.cosine_similarity(_last_logits(engine, batch[3]).float(), exact, dim=0) > 0.999, family
        got = engine.generate_all(batch, GREEDY)
        want = [reference(model, p, 12) for p in batch]
        assert all(g[:4] == w[:4] for g, w in zip(got, want, strict=True)), family
        assert _same_tokens(got, want) >= 0.85 * 12 * len(batch), family


def test_int8_weights_stay_close_to_the_float_model() -> None:
    model = tiny_llama(hidden=128)
    batch = prompts([5, 16, 17, 40, 33, 9], seed=11)
    engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=128, quantization="int8"))
    layer = engine.runner.layers[0]
    assert layer.qkv.weight is None and layer.qkv.qweight.dtype == torch.int8  # no float copy kept
    got = engine.generate_all(batch, GREEDY)
    want = [reference(model, p, 12) for p in batch]
    assert _same_tokens(got, want) >= 0.75 * 12 * len(batch), (got, want)
    with torch.no_grad():  # the next-token distribution of a prefill, against the float model's
        exact = model(torch.tensor([batch[3]])).logits[0, -1]
    assert torch.cosine_similarity(_last_logits(engine, batch[3]), exact, dim=0) > 0.995


def test_what_the_runner_cannot_run_is_refused_with_the_reason() -> None:
    llama = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4)
    assert unsupported_reason(llama) is None
    assert unsupported_reason(llama, "bfloat16") is None
    assert "float16" in unsupported_reason(llama, "float16")
    assert unsupported_reason(llama, "float32", "int8") is None
    assert unsupported_reason(llama, "bfloat16", "int8") == "int8 quantization applies to float32 models"
    assert "awq" in unsupported_reason(llama, "float32", "awq")
    capped = Gemma3TextConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_logit_softcapping=50.0)
    assert unsupported_reason(capped) == "attn_logit_softcapping is not supported"
    gpt2 = type("Cfg", (), {"model_type": "gpt2"})()
    assert "gpt2" in unsupported_reason(gpt2)
