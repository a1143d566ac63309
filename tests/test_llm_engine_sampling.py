"""Sampler, stop rules and the incremental detokenizer of the paged engine."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.detokenizer import IncrementalDetokenizer
from kaip.serving.engine.request import EngineParams
from kaip.serving.engine.sampler import apply_penalties, filter_logits
from serving_fixtures import build_tiny_llm


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=0, bos_token_id=1, pad_token_id=0)
    m = LlamaForCausalLM(config).eval()
    m.generation_config.eos_token_id = None
    return m


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    return AutoTokenizer.from_pretrained(build_tiny_llm(tmp_path_factory.mktemp("tok") / "tiny"))


def engine(model: LlamaForCausalLM, tokenizer: object = None) -> LLMEngineCore:
    return LLMEngineCore(model, tokenizer, EngineConfig(block_size=4, num_blocks=64))


PROMPTS = [[5, 9, 3, 7], [11, 2, 40, 33, 8, 19], [60, 61]]


def test_repetition_penalty_matches_transformers(model: LlamaForCausalLM) -> None:
    logits = torch.randn(64)
    history = [3, 5, 5, 9]
    ours = apply_penalties(logits.clone(), history, EngineParams(repetition_penalty=1.7))
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([history]), logits.clone()[None])[0]
    assert torch.allclose(ours, theirs)
    prompt = PROMPTS[1]
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, repetition_penalty=1.5,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long), pad_token_id=0)
    params = EngineParams(max_tokens=10, temperature=0.0, repetition_penalty=1.5, ignore_eos=True)
    assert engine(model).generate_all([prompt], params) == [ref[0, len(prompt):].tolist()]


def test_presence_and_frequency_penalties_count_output_tokens_only() -> None:
    logits = torch.zeros(8)
    params = EngineParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, [7, 2, 2, 2, 5], params, num_output=4)  # 7 is prompt
    assert out[2].item() == pytest.approx(-1.25) and out[5].item() == pytest.approx(-0.75)
    assert out[7].item() == 0 and out[0].item() == 0


def test_top_k_top_p_min_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    kept = lambda p: torch.isfinite(filter_logits(logits, p)).nonzero().flatten().tolist()  # noqa: E731
    assert kept(EngineParams(top_k=2)) == [0, 1]
    assert kept(EngineParams(top_p=0.6)) == [0, 1]  # 0.5 alone is not enough, 0.5 + 0.2 is
    assert kept(EngineParams(top_p=0.5)) == [0]
    assert kept(EngineParams(min_p=0.35)) == [0, 1]  # at least 0.35 * 0.5
    assert kept(EngineParams()) == [0, 1, 2, 3, 4]


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(model: LlamaForCausalLM) -> None:
    params = EngineParams(max_tokens=12, temperature=1.3, top_p=0.95, seed=7, ignore_eos=True)
    alone = engine(model).generate_all(PROMPTS[:1], params)[0]
    batched = engine(model).generate_all(PROMPTS, params)[0]
    assert alone == batched
    other = engine(model).generate_all(PROMPTS[:1], EngineParams(**{**params.__dict__, "seed": 8}))[0]
    greedy = engine(model).generate_all(PROMPTS[:1], EngineParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    assert other != alone and alone != greedy[0]  # the seed matters, and it does sample
    top1 = engine(model).generate_all(PROMPTS[:1], EngineParams(**{**params.__dict__, "top_k": 1}))
    assert top1 == greedy  # top_k=1 leaves only the argmax to sample


def test_stop_ids_eos_and_max_tokens(model: LlamaForCausalLM) -> None:
    greedy = EngineParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    full = engine(model).generate_all(PROMPTS[:1], greedy)[0]
    stop_at = full[4]
    cut = engine(model).generate_all(PROMPTS[:1], EngineParams(**{**greedy.__dict__,
                                                                   "stop_token_ids": (stop_at,)}))[0]
    assert cut == full[:full.index(stop_at) + 1]  # the stop id is the last token
    e = engine(model)
    e.scheduler.eos_token_ids = frozenset({full[2]})
    req = e.add_request("r", PROMPTS[0], EngineParams(max_tokens=10, temperature=0.0))
    while e.has_work:
        e.step()
    assert req.output_token_ids == full[:full.index(full[2]) + 1] and req.finish_reason == "stop"
    assert engine(model).generate_all(PROMPTS[:1], EngineParams(max_tokens=3, temperature=0.0,
                                                                ignore_eos=True)) == [full[:3]]


def test_stop_strings_end_the_request(model: LlamaForCausalLM, tokenizer: object) -> None:
    e = engine(model, tokenizer)
    greedy = EngineParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    req = e.add_request("a", PROMPTS[1], greedy)
    texts = []
    while e.has_work:
        texts += [o.text for o in e.step()]
    full = "".join(texts)
    assert full == tokenizer.decode(req.output_token_ids, skip_special_tokens=True)  # type: ignore[attr-defined]
    assert len(full.strip()) >= 4  # (fixed seeds: the random model says something printable)
    stop = full.strip()[2:4]
    e2 = engine(model, tokenizer)
    req2 = e2.add_request("b", PROMPTS[1], EngineParams(**{**greedy.__dict__, "stop": (stop,)}))
    while e2.has_work:
        e2.step()
    assert req2.finish_reason == "stop" and len(req2.output_token_ids) < 12
    assert e2.kv.usage == 0.0


def test_incremental_detokenizer_never_splits_a_character(tokenizer: object) -> None:
    text = "The clinic opens at nine — café, naïve, 日本語, emoji 🙂 and more."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert len(ids) > len(text) / 2  # byte-level: the non-ASCII characters span several tokens
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_detokenizer_with_a_prompt_keeps_leading_spaces(tokenizer: object) -> None:
    prompt = tokenizer("The clinic", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    rest = tokenizer(" opens at nine", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    detok = IncrementalDetokenizer(tokenizer, prompt)
    out = "".join(detok.push(t) for t in rest) + detok.flush()
    assert out == " opens at nine"


