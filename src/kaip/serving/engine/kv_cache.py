"""Paged KV-cache bookkeeping: which physical blocks hold which request's tokens.

The cache tensors themselves live in the model runner; this manager only hands out block ids, so that the
scheduler can decide admission and preemption without touching torch. Prefix caching follows vLLM: a full block is
named by the hash of its tokens chained with its parent block's hash (and the request's LoRA adapter, whose K/V
differ from the base model's), so the same prefix gives the same names; a freed block keeps its name until it is
reused, and free blocks are reused least recently freed first (LRU), so a shared system prompt stays cached while it
keeps being asked for."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kaip.serving.engine.request import Request


@dataclass
class _Block:
    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None


def hash_block(parent: int | None, tokens: tuple[int, ...], extra: str | None = None) -> int:
    """The name of a full block. `extra` is what else its K/V depend on (the LoRA adapter, as vLLM's extra keys):
    the same tokens under another adapter are other K/V and must never be shared."""
    return hash((parent, tokens)) if extra is None else hash((parent, tokens, extra))


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [_Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # LRU first
        self._cached: dict[int, int] = {}  # block hash -> block id
        self.req_blocks: dict[str, list[int]] = {}
        self._num_hashed: dict[str, int] = {}  # blocks of the request already registered in _cached
        self.prefix_queries = 0  # tokens looked up at admission (vllm:prefix_cache_queries)
        self.prefix_hits = 0  # tokens found (vllm:prefix_cache_hits)

    # ---- queries ------------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests (cached-but-free blocks count as free), 0..1."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> list[int]:
        return self.req_blocks.get(request_id, [])

    def _update_hashes(self, req: Request) -> None:
        tokens = req.all_token_ids
        bs = self.block_size
        while (len(req.block_hashes) + 1) * bs <= len(tokens):
            i = len(req.block_hashes)
            parent = req.block_hashes[-1] if req.block_hashes else None
            req.block_hashes.append(hash_block(parent, tuple(tokens[i * bs:(i + 1) * bs]), req.lora_name))

    def get_computed_blocks(self, req: Request) -> list[int]:
        """The longest run of cached full blocks that prefixes the request's tokens. At least one token is always
        left to compute, because the last token's logits are what the next step samples from."""
        if not self.enable_prefix_caching:
            return []
        self._update_hashes(req)
        limit = (req.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for block_hash in req.block_hashes[:limit]:
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def record_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hit_tokens

    # ---- allocation ---------------------------------------------------------------------------------------

    def allocate_slots(self, req: Request, num_new_tokens: int, computed_blocks: list[int] | None = None) -> bool:
        """Give `req` room for `num_new_tokens` more tokens after its computed ones (taking `computed_blocks`, the
        prefix-cache hits, first). False, and nothing changed, when there are not enough free blocks."""
        computed_blocks = computed_blocks or []
        have = self.req_blocks.get(req.request_id, [])
        num_computed = req.num_computed_tokens + len(computed_blocks) * self.block_size
        need = self.blocks_needed(num_computed + num_new_tokens) - len(have) - len(computed_blocks)
        revived = sum(1 for b in computed_blocks if self.blocks[b].ref_cnt == 0)  # leave the free list
        if max(need, 0) + revived > len(self._free):
            return False
        table = self.req_blocks.setdefault(req.request_id, [])
        for block_id in computed_blocks:
            self._touch(block_id)
            table.append(block_id)
        if computed_blocks:
            self._num_hashed[req.request_id] = len(table)
        for _ in range(max(need, 0)):
            table.append(self._pop_free())
        return True

    def _touch(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_cnt == 0:
            del self._free[block_id]
        block.ref_cnt += 1

    def _pop_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:  # evict: its old contents are about to be overwritten
            if self._cached.get(block.block_hash) == block_id:
                del self._cached[block.block_hash]
            block.block_hash = None
        block.ref_cnt = 1
        return block_id

    def cache_full_blocks(self, req: Request) -> None:
        """Name the request's blocks that are now full of computed tokens, so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        table = self.req_blocks.get(req.request_id)
        if not table:
            return
        self._update_hashes(req)
        full = min(req.num_computed_tokens // self.block_size, len(req.block_hashes), len(table))
        start = self._num_hashed.get(req.request_id, 0)
        for i in range(start, full):
            block = self.blocks[table[i]]
            block_hash = req.block_hashes[i]
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
                self._cached[block_hash] = block.block_id
        self._num_hashed[req.request_id] = max(start, full)

    def free(self, req: Request) -> None:
        """Release the request's blocks; the tail goes to the free list first so it is evicted before the shared
        head (as vLLM does)."""
        table = self.req_blocks.pop(req.request_id, [])
        self._num_hashed.pop(req.request_id, None)
        for block_id in reversed(table):
            block = self.blocks[block_id]
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block_id] = None

    def reset_prefix_cache(self) -> None:
        for block_id in self._free:
            self.blocks[block_id].block_hash = None
        self._cached = {h: b for h, b in self._cached.items() if self.blocks[b].ref_cnt > 0}
