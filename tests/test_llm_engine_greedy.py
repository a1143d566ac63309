"""The paged engine against transformers' `generate`: greedy outputs must match token for token — several prompt
lengths, a mixed batch with chunked prefill, prefix-cache hits, and preemption by recompute under a tiny cache."""

from __future__ import annotations

import pytest
from transformers import LlamaForCausalLM

from engine_fixtures import prompts, reference, tiny_llama
from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.request import EngineParams

GREEDY = EngineParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama()


def test_single_prompts_of_several_lengths(model: LlamaForCausalLM) -> None:
    for prompt in prompts([1, 5, 16, 17, 40]):
        engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=64))
        assert engine.generate_all([prompt], GREEDY) == [reference(model, prompt, 12)], len(prompt)


def test_mixed_batch_with_chunked_prefill(model: LlamaForCausalLM) -> None:
    batch = prompts([3, 30, 9, 21, 50, 2], seed=2)
    engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=24,
                                                      max_num_seqs=4))
    got = engine.generate_all(batch, GREEDY)
    assert got == [reference(model, p, 12) for p in batch]
    assert engine.kv.usage == 0.0  # everything freed at the end


def test_prefix_cache_hits_give_the_same_tokens(model: LlamaForCausalLM) -> None:
    system = prompts([20], seed=3)[0]
    questions = [system + q for q in prompts([5, 7, 3], seed=4)]
    engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=64))
    first = engine.generate_all(questions[:1], GREEDY)
    rest = engine.generate_all(questions[1:], GREEDY)
    assert first + rest == [reference(model, p, 12) for p in questions]
    assert engine.kv.prefix_hits >= 2 * 20  # the shared 20-token head was found for both later questions
    assert engine.kv.prefix_hits <= engine.kv.prefix_queries


def test_preemption_by_recompute_keeps_outputs_correct(model: LlamaForCausalLM) -> None:
    batch = prompts([10, 14, 7, 12], seed=5)
    params = EngineParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=16, max_num_seqs=4))
    got = engine.generate_all(batch, params)
    assert engine.scheduler.num_preemptions > 0  # 16 blocks of 4 cannot hold four 30-token sequences
    assert got == [reference(model, p, 20) for p in batch]
    assert engine.kv.usage == 0.0
