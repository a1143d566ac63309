"""The engine's pure parts: KV-cache block bookkeeping with prefix caching, and the continuous-batching scheduler."""

from __future__ import annotations

import pytest

from kaip.serving.engine.kv_cache import KVCacheManager
from kaip.serving.engine.request import EngineParams, Request, Status
from kaip.serving.engine.scheduler import Scheduler, SchedulerConfig


def req(rid: str, n: int, *, base: int = 0, max_tokens: int = 8) -> Request:
    return Request(rid, list(range(base, base + n)), EngineParams(max_tokens=max_tokens, temperature=0.0))


# ---- KV cache --------------------------------------------------------------------------------------------------


def test_allocation_free_list_and_usage() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    a = req("a", 6)
    assert kv.allocate_slots(a, 6) and len(kv.block_table("a")) == 2
    assert kv.usage == 0.5
    b = req("b", 12)
    assert not kv.allocate_slots(b, 12)  # needs 3, 2 free: refused with nothing taken
    assert kv.num_free_blocks == 2 and kv.block_table("b") == []
    a.num_computed_tokens = 6
    assert kv.allocate_slots(a, 2)  # 8 tokens still fit in 2 blocks
    assert len(kv.block_table("a")) == 2
    a.num_computed_tokens = 8
    assert kv.allocate_slots(a, 1) and len(kv.block_table("a")) == 3
    kv.free(a)
    assert kv.usage == 0.0 and kv.num_free_blocks == 4


def test_prefix_hits_share_blocks_and_leave_one_token_to_compute() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = req("a", 10)
    assert kv.allocate_slots(a, 10)
    a.num_computed_tokens = 10
    kv.cache_full_blocks(a)  # blocks 0..1 are full (8 tokens), the third is partial
    b = Request("b", list(range(10)) + [99, 98], EngineParams())
    hits = kv.get_computed_blocks(b)
    assert hits == kv.block_table("a")[:2]
    assert kv.allocate_slots(b, 4, hits)
    assert kv.block_table("b")[:2] == kv.block_table("a")[:2]  # shared, not copied
    assert kv.blocks[hits[0]].ref_cnt == 2
    exact = Request("c", list(range(8)), EngineParams())  # the whole prompt is cached: recompute the last block
    assert kv.get_computed_blocks(exact) == hits[:1]
    other = Request("d", [7, *range(1, 10)], EngineParams())  # differs in the first token: no hit at all
    assert kv.get_computed_blocks(other) == []


def test_freed_cached_blocks_are_reused_then_evicted_lru() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = req("a", 4)
    kv.allocate_slots(a, 4)
    a.num_computed_tokens = 4
    kv.cache_full_blocks(a)
    kv.free(a)
    assert kv.usage == 0.0
    again = req("a2", 5)
    hits = kv.get_computed_blocks(again)
    assert len(hits) == 2  # still named after being freed
    assert kv.allocate_slots(again, 1, hits) and kv.usage == 0.75
    kv.free(again)
    big = req("big", 8, base=50)  # needs every block: the cached ones are evicted
    assert kv.allocate_slots(big, 8)
    kv.free(big)
    assert kv.get_computed_blocks(req("a3", 5)) == []


def test_lru_keeps_the_most_recently_used_prefix() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2)
    for rid, base in (("x", 0), ("y", 100)):
        r = req(rid, 2, base=base)
        kv.allocate_slots(r, 2)
        r.num_computed_tokens = 2
        kv.cache_full_blocks(r)
        kv.free(r)
    kv.allocate_slots(req("z", 6, base=200), 6)  # takes 3 of 4 blocks: the oldest freed ones go first
    assert kv.get_computed_blocks(req("y2", 3, base=100)) != []
    assert kv.get_computed_blocks(req("x2", 3, base=0)) == []


# ---- scheduler -------------------------------------------------------------------------------------------------


def make(num_blocks: int = 64, block_size: int = 4, **cfg: int) -> Scheduler:
    return Scheduler(SchedulerConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 32, "max_model_len": 256, **cfg}),
                     KVCacheManager(num_blocks, block_size), eos_token_ids=frozenset({0}))


def counts(s: Scheduler) -> dict[str, int]:
    out = s.schedule()
    sampled = {x.request.request_id: 5 for x in out.scheduled if x.sample}
    s.update_from_output(out, sampled)
    return {x.request.request_id: x.num_tokens for x in out.scheduled}


def test_chunked_prefill_mixes_with_decode_under_the_token_budget() -> None:
    s = make(max_num_batched_tokens=16)
    s.add_request(req("a", 6))
    assert counts(s) == {"a": 6}
    s.add_request(req("b", 40, base=100))
    assert counts(s) == {"a": 1, "b": 15}  # decode first, the rest of the budget prefills b
    assert counts(s) == {"a": 1, "b": 15}
    assert counts(s) == {"a": 1, "b": 10}  # b's last chunk, sampled
    assert counts(s) == {"a": 1, "b": 1}
    assert len(s.requests["b"].output_token_ids) == 2


def test_max_num_seqs_and_fcfs() -> None:
    s = make(max_num_seqs=2)
    for rid in "abc":
        s.add_request(req(rid, 3))
    assert set(counts(s)) == {"a", "b"}
    assert [r.request_id for r in s.waiting] == ["c"]


def test_stop_rules_and_freeing() -> None:
    s = make()
    s.add_request(req("a", 3, max_tokens=2))
    s.add_request(req("b", 3))
    out = s.schedule()
    done = s.update_from_output(out, {"a": 7, "b": 0})  # b samples the EOS id
    assert [(r.request_id, r.finish_reason) for r in done] == [("b", "stop")]
    out = s.schedule()
    done = s.update_from_output(out, {"a": 7})
    assert [(r.request_id, r.finish_reason) for r in done] == [("a", "length")]
    assert s.kv.usage == 0.0 and not s.has_work


def test_preemption_by_recompute_when_blocks_run_out() -> None:
    s = make(num_blocks=4, block_size=4)  # 16 token slots
    s.add_request(req("a", 7, max_tokens=9))
    s.add_request(req("b", 7, base=100, max_tokens=9))
    assert counts(s) == {"a": 7, "b": 7}  # 2 blocks each, both full after one more token
    assert counts(s) == {"a": 1, "b": 1}  # positions 7: still inside the second blocks
    out = s.schedule()  # position 8 needs a third block each; only a fits after b is preempted
    assert out.preempted == ["b"] and [x.request.request_id for x in out.scheduled] == ["a"]
    b = s.waiting[0]
    assert b.request_id == "b" and b.status is Status.WAITING and b.num_computed_tokens == 0
    assert len(b.output_token_ids) == 2  # kept: recompute prompt + outputs later
    assert s.num_preemptions == 1


def test_abort_frees_blocks_at_once() -> None:
    s = make()
    s.add_request(req("a", 10))
    s.add_request(req("b", 10))
    counts(s)
    assert s.kv.usage > 0
    s.abort("a")
    s.abort("b")
    assert s.kv.usage == 0.0 and not s.has_work
    assert s.abort("missing") is None


def test_a_request_that_cannot_fit_even_alone_is_refused() -> None:
    s = make(num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="KV cache"):
        s.add_request(req("a", 6, max_tokens=10))
