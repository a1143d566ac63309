"""Multi-LoRA in the paged engine: the base model and two PEFT adapters served in one batch give, token for token,
what transformers' `generate` gives on the base model and on each adapter merged alone; the prefix cache is never
shared across adapters; a step without adapters does no LoRA work; adapters the runner cannot apply are refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from engine_fixtures import prompts, randomise_lora, tiny_llama
from engine_fixtures import reference as generate_reference
from kaip.serving.engine import model_runner
from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.lora import LoRAError
from kaip.serving.engine.request import EngineParams

GREEDY = EngineParams(max_tokens=10, temperature=0.0, ignore_eos=True)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def reference(model: LlamaForCausalLM, prompt: list[int]) -> list[int]:
    return generate_reference(model, prompt, GREEDY.max_tokens)


def save_adapter(base: LlamaForCausalLM, folder: Path, seed: int, **lora: Any) -> Path:
    """A PEFT LoRA adapter with random, non-zero A and B (PEFT initialises B to zero), saved as PEFT saves it."""
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(task_type="CAUSAL_LM", **lora))
    randomise_lora(peft_model, seed, 0.15).save_pretrained(folder)
    return folder


def merged(base: LlamaForCausalLM, folder: Path) -> LlamaForCausalLM:
    m = PeftModel.from_pretrained(copy.deepcopy(base), folder).merge_and_unload().eval()
    m.generation_config.eos_token_id = None
    return m


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tiny_llama()
    root = tmp_path_factory.mktemp("adapters")
    # a1: every projection; a2: a subset (k of the fused qkv and o left out), rsLoRA scaling
    a1 = save_adapter(base, root / "a1", 1, r=8, lora_alpha=16, target_modules=ALL)
    a2 = save_adapter(base, root / "a2", 2, r=4, lora_alpha=8, use_rslora=True,
                      target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    return {"base": base, "paths": {"a1": a1, "a2": a2},
            "models": {None: base, "a1": merged(base, a1), "a2": merged(base, a2)}}


def engine(setup: dict[str, Any], **config: Any) -> LLMEngineCore:
    core = LLMEngineCore(setup["base"], config=EngineConfig(**{"block_size": 4, "num_blocks": 128, **config}))
    for name, path in setup["paths"].items():
        core.add_lora(name, str(path))
    return core


def record_steps(core: LLMEngineCore) -> list[set[str | None]]:
    """The adapters (None: base) of the requests in each step the runner executes."""
    seen: list[set[str | None]] = []
    execute = core.runner.execute

    def spy(batch: Any, tables: Any) -> torch.Tensor:
        seen.append({s.request.lora_name for s in batch})
        return execute(batch, tables)
    core.runner.execute = spy  # type: ignore[method-assign]
    return seen


def test_base_and_two_adapters_in_one_batch_equal_each_alone(setup: dict[str, Any]) -> None:
    batch = prompts([3, 30, 9, 21, 50, 2, 17], seed=2)
    names: list[str | None] = [None, "a1", "a2", "a1", None, "a2", "a1"]
    core = engine(setup, max_loras=2, max_num_batched_tokens=24, max_num_seqs=8)  # chunked prefill + decodes
    steps = record_steps(core)
    got = core.generate_all(batch, GREEDY, names)
    want = [reference(setup["models"][n], p) for p, n in zip(batch, names, strict=True)]
    assert got == want
    assert any(s == {None, "a1", "a2"} for s in steps)  # base and both adapters did share steps
    # the adapters matter: the base model answers differently on their prompts
    assert sum(reference(setup["base"], p) != w for p, w, n in zip(batch, want, names, strict=True) if n) >= 3
    assert core.kv.usage == 0.0


def test_prefix_cache_is_not_shared_across_adapters(setup: dict[str, Any]) -> None:
    head = prompts([20], seed=3)[0]
    prompt = head + prompts([5], seed=4)[0]
    core = engine(setup, max_loras=2)
    assert core.generate_all([prompt], GREEDY) == [reference(setup["base"], prompt)]
    assert core.kv.prefix_hits == 0
    # the same tokens under an adapter: other K/V, so no hit on the base model's blocks
    assert core.generate_all([prompt], GREEDY, ["a1"]) == [reference(setup["models"]["a1"], prompt)]
    assert core.kv.prefix_hits == 0
    # ...but the adapter's own blocks, and the base model's, are found again (and give the same tokens)
    assert core.generate_all([prompt], GREEDY, ["a1"]) == [reference(setup["models"]["a1"], prompt)]
    hits_a1 = core.kv.prefix_hits
    assert hits_a1 >= 20
    assert core.generate_all([prompt], GREEDY, ["a2"]) == [reference(setup["models"]["a2"], prompt)]
    assert core.kv.prefix_hits == hits_a1
    assert core.generate_all([prompt], GREEDY) == [reference(setup["base"], prompt)]
    assert core.kv.prefix_hits >= hits_a1 + 20


def test_steps_without_adapters_skip_the_lora_path(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    add_lora = model_runner._add_lora
    monkeypatch.setattr(model_runner, "_add_lora", lambda *a: (calls.append(a[-1]), add_lora(*a)))
    core = engine(setup, max_loras=2)
    batch = prompts([4, 11], seed=6)
    assert core.generate_all(batch, GREEDY) == [reference(setup["base"], p) for p in batch]
    assert core.runner.lora_steps == 0 and calls == []
    assert core.generate_all(batch[:1], GREEDY, ["a2"]) == [reference(setup["models"]["a2"], batch[0])]
    assert core.runner.lora_steps == GREEDY.max_tokens  # one prefill step and nine decodes, each with a2
    assert set(calls) == {"qkv", "o", "gate_up", "down"}  # called per group; a2 has no o_proj, which is skipped


def test_max_loras_bounds_the_adapters_of_a_step(setup: dict[str, Any]) -> None:
    batch = prompts([6, 9, 5, 12], seed=7)
    names: list[str | None] = ["a1", "a2", None, "a1"]
    core = engine(setup, max_loras=1)
    steps = record_steps(core)
    got = core.generate_all(batch, GREEDY, names)
    assert got == [reference(setup["models"][n], p) for p, n in zip(batch, names, strict=True)]
    assert all(len(s - {None}) <= 1 for s in steps)
    assert any(s == {"a1", None} for s in steps) and any("a2" in s for s in steps)
    with pytest.raises(ValueError, match="unknown LoRA adapter 'nope'"):
        core.add_request("x", [3, 4], GREEDY, "nope")


def test_adapters_the_runner_cannot_apply_are_refused(setup: dict[str, Any], tmp_path: Path) -> None:
    base = setup["base"]
    core = LLMEngineCore(base, config=EngineConfig(block_size=4, num_blocks=32, max_lora_rank=16))
    cases = [
        (dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True), "DoRA"),
        (dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]), "targets lm_head"),
        (dict(r=32, lora_alpha=8, target_modules=["q_proj"]), "rank 32 is above --max_lora_rank 16"),
        (dict(r=4, lora_alpha=8, target_modules=["q_proj"], bias="lora_only"), "bias='lora_only'"),
    ]
    for i, (lora, message) in enumerate(cases):
        folder = save_adapter(base, tmp_path / f"bad{i}", i, **lora)
        with pytest.raises(LoRAError, match=message):
            core.add_lora("bad", str(folder))
    other = save_adapter(tiny_llama(hidden=32), tmp_path / "other-base", 9, r=4, lora_alpha=8,
                         target_modules=["q_proj"])
    with pytest.raises(LoRAError, match="another base model"):
        core.add_lora("other", str(other))
    with pytest.raises(LoRAError, match="no adapter_config.json"):
        core.add_lora("missing", str(tmp_path))
    assert core.lora_names == []
