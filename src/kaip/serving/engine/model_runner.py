"""Batched forward of a Llama-family model over a paged KV cache, in plain torch.

One step runs every scheduled request's new tokens as one flat batch: projections and MLPs are single matmuls
over all tokens (that is where the FLOPs are), the new K/V are written into their cache slots, and attention reads
each request's keys from its blocks. Decoding requests (one query each) share one padded SDPA call per layer;
prefill chunks run one SDPA call each with a causal mask offset by what is already cached. Only the rows that are
sampled go through the final norm and the LM head, which at 49k-token vocabularies is a large share of a step.
Gathers copy whole blocks with `index_select` (several times cheaper than advanced indexing per slot here).

Weights are taken from the transformers model (fused QKV and gate/up copies), so whatever loads in transformers
(safetensors, GGUF) runs here; RoPE comes from the model's own rotary module, so its scaling variants carry over.

Multi-LoRA: each request may run with a LoRA adapter (`lora.py`). After each fused projection, the rows (tokens) of
an adapter's requests get its delta, `(x[rows] @ A.T) @ B.T`, added with `index_add_` (a plain add when every row of
the step uses it); a step where no request has an adapter does no LoRA work at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kaip.serving.engine.lora import LlamaLayout, LoRAAdapter, load_adapter
from kaip.serving.engine.scheduler import ScheduledRequest

SUPPORTED_MODEL_TYPES = ("llama",)


def unsupported_reason(config: Any) -> str | None:
    """Why the paged runner cannot run this model (None when it can)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            return f"{flag}=True is not supported"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not supported"
    return None


@dataclass
class _Layer:
    in_norm: torch.Tensor
    qkv: torch.Tensor  # [(H + 2*KVH) * hd, D]
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * I, D]
    down: torch.Tensor


class LlamaRunner:
    def __init__(self, model: Any, num_blocks: int, block_size: int) -> None:
        reason = unsupported_reason(model.config)
        if reason:
            raise ValueError(reason)
        cfg = model.config
        self.model = model
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.eps = cfg.rms_norm_eps
        self.block_size = block_size
        self.num_blocks = num_blocks
        inner = model.model
        self.embed = inner.embed_tokens.weight.detach()
        self.final_norm = inner.norm.weight.detach()
        self.lm_head = model.lm_head.weight.detach()
        self.rotary = inner.rotary_emb
        self.dtype = self.embed.dtype
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                in_norm=layer.input_layernorm.weight.detach(),
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach().contiguous(),
                o=a.o_proj.weight.detach(),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach().contiguous(),
                down=m.down_proj.weight.detach()))
        slots = num_blocks * block_size
        shape = (len(self.layers), slots, self.num_kv_heads, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, dtype=self.dtype)
        self.layout = LlamaLayout(len(self.layers), cfg.hidden_size, self.num_heads * self.head_dim,
                                  self.num_kv_heads * self.head_dim, cfg.intermediate_size)
        self.loras: dict[str, LoRAAdapter] = {}
        self.lora_steps = 0  # steps that applied LoRA deltas (a base-only step never does)

    def add_lora(self, name: str, path: str, max_rank: int = 16) -> LoRAAdapter:
        """Load a PEFT LoRA adapter under `name`; LoRAError (a ValueError) says why one cannot be served."""
        adapter = load_adapter(name, path, self.layout, max_rank=max_rank, dtype=self.dtype)
        self.loras[name] = adapter
        return adapter

    @staticmethod
    def kv_bytes_per_token(config: Any, dtype_bytes: int = 4) -> int:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(variance + self.eps))

    def _slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        blocks = torch.tensor(table, dtype=torch.long)[pos // self.block_size]
        return blocks * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledRequest], block_tables: dict[str, list[int]]) -> torch.Tensor:
        """Run one step; return logits [number of requests with `sample`, vocab] in batch order."""
        decodes = [s for s in batch if s.num_tokens == 1 and s.start > 0]
        prefills = [s for s in batch if not (s.num_tokens == 1 and s.start > 0)]
        order = decodes + prefills
        ids: list[int] = []
        positions: list[int] = []
        slot_parts = []
        for s in order:
            ids.extend(s.token_ids)
            positions.extend(range(s.start, s.start + s.num_tokens))
            slot_parts.append(self._slots(block_tables[s.request.request_id], s.start, s.start + s.num_tokens))
        slot_mapping = torch.cat(slot_parts)
        loras = self._lora_rows(order) if self.loras else []
        pos = torch.tensor(positions, dtype=torch.long)
        h = F.embedding(torch.tensor(ids, dtype=torch.long), self.embed)
        cos, sin = self.rotary(h[None], pos[None])
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # [T, 1, hd]

        nd = len(decodes)
        bs = self.block_size
        if nd:  # gather whole blocks (a few large rows copy faster than many small ones), mask past the context
            dec_ctx = torch.tensor([s.start + 1 for s in decodes])
            max_blocks = -(-int(dec_ctx.max()) // bs)
            dec_blocks = torch.zeros(nd, max_blocks, dtype=torch.long)
            for i, s in enumerate(decodes):
                table = block_tables[s.request.request_id][:max_blocks]
                dec_blocks[i, :len(table)] = torch.tensor(table, dtype=torch.long)
            dec_flat = dec_blocks.view(-1)
            dec_mask = (torch.arange(max_blocks * bs)[None, :] < dec_ctx[:, None]).view(nd, 1, 1, -1)
        pre_info = []
        offset = nd
        for s in prefills:
            ctx = s.start + s.num_tokens
            if s.start == 0:
                pre_info.append((offset, s.num_tokens, None, None))
            else:
                nb = -(-ctx // bs)
                blocks = torch.tensor(block_tables[s.request.request_id][:nb], dtype=torch.long)
                q_pos = torch.arange(s.start, ctx)[:, None]
                mask = (torch.arange(nb * bs)[None, :] <= q_pos)
                pre_info.append((offset, s.num_tokens, blocks, mask))
            offset += s.num_tokens

        H, KVH, hd = self.num_heads, self.num_kv_heads, self.head_dim
        gqa = H != KVH
        for li, layer in enumerate(self.layers):
            x = self._rms(h, layer.in_norm)
            qkv = F.linear(x, layer.qkv)
            if loras:
                _add_lora(qkv, x, loras, li, "qkv")
            q = qkv[:, :H * hd].view(-1, H, hd)
            k = qkv[:, H * hd:(H + KVH) * hd].view(-1, KVH, hd)
            v = qkv[:, (H + KVH) * hd:].view(-1, KVH, hd)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.index_copy_(0, slot_mapping, k)
            vc.index_copy_(0, slot_mapping, v)
            kb, vb = kc.view(self.num_blocks, bs, KVH, hd), vc.view(self.num_blocks, bs, KVH, hd)
            outs = []
            if nd:
                qd = q[:nd].unsqueeze(2)  # [nd, H, 1, hd]
                kd = kb.index_select(0, dec_flat).view(nd, -1, KVH, hd).transpose(1, 2)  # [nd, KVH, ctx, hd]
                vd = vb.index_select(0, dec_flat).view(nd, -1, KVH, hd).transpose(1, 2)
                od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=dec_mask, enable_gqa=gqa)
                outs.append(od.reshape(nd, H * hd))
            for start, n, blocks, mask in pre_info:
                qp = q[start:start + n].transpose(0, 1)[None]  # [1, H, n, hd]
                if blocks is None:
                    kp = k[start:start + n].transpose(0, 1)[None]
                    vp = v[start:start + n].transpose(0, 1)[None]
                    op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
                else:
                    kp = kb.index_select(0, blocks).view(-1, KVH, hd).transpose(0, 1)[None]
                    vp = vb.index_select(0, blocks).view(-1, KVH, hd).transpose(0, 1)[None]
                    op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=gqa)
                outs.append(op[0].transpose(0, 1).reshape(n, H * hd))
            attn = outs[0] if len(outs) == 1 else torch.cat(outs)
            o = F.linear(attn, layer.o)
            if loras:
                _add_lora(o, attn, loras, li, "o")
            h = h + o
            x = self._rms(h, layer.post_norm)
            gate_up = F.linear(x, layer.gate_up)
            if loras:
                _add_lora(gate_up, x, loras, li, "gate_up")
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
            down = F.linear(act, layer.down)
            if loras:
                _add_lora(down, act, loras, li, "down")
            h = h + down

        # rows to sample, in the caller's batch order
        row_of: dict[str, int] = {}
        offset = 0
        for s in order:
            offset += s.num_tokens
            row_of[s.request.request_id] = offset - 1
        rows = [row_of[s.request.request_id] for s in batch if s.sample]
        if not rows:
            return torch.empty(0, self.lm_head.shape[0], dtype=self.dtype)
        last = self._rms(h[rows], self.final_norm)
        return F.linear(last, self.lm_head)

    def _lora_rows(self, order: list[ScheduledRequest]) -> list[tuple[LoRAAdapter, torch.Tensor | None]]:
        """(adapter, its rows in the flat batch, or None when it has them all) for each adapter in the step."""
        rows: dict[str, list[int]] = {}
        offset = 0
        for s in order:
            if s.request.lora_name is not None:
                rows.setdefault(s.request.lora_name, []).extend(range(offset, offset + s.num_tokens))
            offset += s.num_tokens
        if not rows:
            return []
        self.lora_steps += 1
        return [(self.loras[name], None if len(r) == offset else torch.tensor(r, dtype=torch.long))
                for name, r in rows.items()]


def _add_lora(out: torch.Tensor, x: torch.Tensor, loras: list[tuple[LoRAAdapter, torch.Tensor | None]], layer: int,
              group: str) -> None:
    """Add each adapter's delta of one fused projection to its rows of `out` (in place)."""
    for adapter, rows in loras:
        w = adapter.layers[layer].get(group)
        if w is None:  # the adapter does not target this projection (or layer)
            continue
        if rows is None:
            out.add_(F.linear(F.linear(x, w.a), w.b))
        else:
            out.index_add_(0, rows, F.linear(F.linear(x.index_select(0, rows), w.a), w.b))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
