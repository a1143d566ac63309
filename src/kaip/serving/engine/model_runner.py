"""Batched forward of a decoder-only transformer over a paged KV cache: torch, and C for attention.

Families: Llama (SmolLM2), Qwen2, Qwen3 and Gemma 3 (text). They share one layer shape — pre-norm attention with
RoPE and a gated MLP — and differ in details the runner takes from the config (`ModelSpec`): projection biases
(Qwen2), per-head RMSNorm of queries and keys (Qwen3, Gemma 3), Gemma's `1 + w` norms, sandwich norms, scaled
embeddings, GELU-tanh, its attention scale and final-logit soft-capping, and sliding-window layers (keys older than
the window are masked; the cache still keeps them, as the prefix cache shares blocks across layers).

One step runs every scheduled request's new tokens as one flat batch: projections and MLPs are single matmuls
over all tokens (that is where the FLOPs are), the new K/V are written into their cache slots, and attention reads
each request's keys from its blocks — in C (`native.py`: one call per layer for all decoding requests, one per
prefill chunk), or, without a C compiler, through torch: decodes share one padded SDPA call per layer over blocks
gathered with `index_select`, prefill chunks run one SDPA call each with a causal mask offset by what is cached.
Only the rows that are sampled go through the final norm and the LM head, which at 49k-token vocabularies is a
large share of a step.

Weights are taken from the transformers model (fused QKV and gate/up copies, pre-packed for oneDNN), so whatever
loads in transformers (safetensors, GGUF) runs here; RoPE comes from the model's own rotary module, so its scaling
variants carry over. float32 and bfloat16 run as loaded. `quantization="int8"` is weight-only: the four
projections of every layer keep int8 weights with one scale per output channel, multiplied by aten's
`_weight_int8pack_mm` with bfloat16 activations (a quarter of the float32 weight bytes), and so does the LM head.
Quantising the activations too (dynamic per-token int8 through `torch._int_mm`) was faster still but measurably
lossy on SmolLM2 (outlier channels), so it is not offered.

Multi-LoRA: each request may run with a LoRA adapter (`lora.py`). After each fused projection, the rows (tokens) of
an adapter's requests get its delta, `(x[rows] @ A.T) @ B.T`, added with `index_add_` (a plain add when every row of
the step uses it); a step where no request has an adapter does no LoRA work at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kaip.serving.engine import native
from kaip.serving.engine.lora import LlamaLayout, LoRAAdapter, load_adapter
from kaip.serving.engine.scheduler import ScheduledRequest

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "gemma3_text")
SUPPORTED_DTYPES = ("float32", "bfloat16")
QUANTIZATIONS = ("int8",)
FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' layer_types
_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


@dataclass(frozen=True)
class ModelSpec:
    """What differs between the supported families, read from the config (pure: no weights)."""
    model_type: str
    activation: str
    gemma_norms: bool  # RMSNorm scaled by (1 + w), computed in float32; sandwich norms around attention and MLP
    qk_norm: bool
    embed_scale: float | None
    attn_scale: float | None  # None: SDPA's default 1/sqrt(head_dim)
    final_softcap: float | None
    sliding_window: int | None
    layer_types: tuple[str, ...]  # per layer: FULL or SLIDING


def spec_of(config: Any) -> ModelSpec:
    """The family details of a transformers config; ValueError says why the runner cannot run it."""
    model_type = getattr(config, "model_type", None)
    if model_type == "gemma3":  # the multimodal wrapper: its text model is what a causal LM loads
        config = config.get_text_config()
        model_type = config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}")
    gemma = model_type == "gemma3_text"
    activation = getattr(config, "hidden_activation", None) if gemma else getattr(config, "hidden_act", "silu")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported")
    if getattr(config, "attn_logit_softcapping", None):
        raise ValueError("attn_logit_softcapping is not supported")
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("use_bidirectional_attention is not supported (not a causal LM)")
    layers = config.num_hidden_layers
    types = tuple(getattr(config, "layer_types", None) or [FULL] * layers)
    unknown = set(types) - {FULL, SLIDING}
    if unknown:
        raise ValueError(f"layer types {sorted(unknown)} are not supported")
    window = getattr(config, "sliding_window", None) if SLIDING in types else None
    if SLIDING in types and not window:
        types = (FULL,) * layers
    return ModelSpec(
        model_type=model_type, activation=activation, gemma_norms=gemma, qk_norm=model_type in ("qwen3", "gemma3_text"),
        embed_scale=config.hidden_size ** 0.5 if gemma else None,
        attn_scale=config.query_pre_attn_scalar ** -0.5 if gemma else None,
        final_softcap=getattr(config, "final_logit_softcapping", None) if gemma else None,
        sliding_window=window, layer_types=types)


def unsupported_reason(config: Any, dtype: str = "float32", quantization: str | None = None) -> str | None:
    """Why the paged runner cannot run this model (None when it can)."""
    try:
        spec_of(config)
    except ValueError as err:
        return str(err)
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (the Kaip engine runs {' or '.join(SUPPORTED_DTYPES)})"
    if quantization is not None:
        if quantization not in QUANTIZATIONS:
            return f"quantization {quantization!r} is not one of {QUANTIZATIONS}"
        if dtype != "float32":
            return "int8 quantization applies to float32 models"
    return None


class _Linear:
    """One projection: float weights pre-packed once into oneDNN's blocked layout and multiplied by its linear
    primitive (as `torch.compile`'s freezing pass does; F.linear re-reads the plain layout on every call, measured
    2.3x slower in float32 and 1.2-1.5x in bfloat16 at decode batch sizes here), or int8 weights (weight-only, one
    scale per output channel) through aten's `_weight_int8pack_mm`, which takes bfloat16 activations (its float32
    path is unoptimised). Where oneDNN is not built in, the plain weight goes through F.linear."""
    __slots__ = ("weight", "packed", "bias", "qweight", "scales")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, int8: bool) -> None:
        self.weight, self.packed, self.bias, self.qweight, self.scales = weight, None, bias, None, None
        if int8:
            scales = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127.0
            self.qweight = torch.round(weight.float() / scales[:, None]).to(torch.int8).contiguous()
            self.scales = scales.to(torch.bfloat16)
            self.weight = None  # the float copy is not kept
        elif _ONEDNN:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_BATCH)
            self.weight = None  # the packed copy replaces it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.qweight is None:
            return F.linear(x, self.weight, self.bias)
        out = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.qweight, self.scales).to(x.dtype)
        return out if self.bias is None else out + self.bias


_PACK_BATCH = 32  # the batch size oneDNN picks its blocking for; any number of rows multiplies correctly


def _onednn_linear() -> bool:
    """Whether this torch has oneDNN's packed linear, checked once on a tiny product against F.linear."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w, x = torch.randn(8, 4), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 2)
        return torch.allclose(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), F.linear(x, w),
                              atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_linear()


@dataclass
class _Layer:
    in_norm: torch.Tensor
    qkv: _Linear  # [(H + 2*KVH) * hd, D]
    o: _Linear
    post_norm: torch.Tensor  # Llama: before the MLP; Gemma: after attention
    gate_up: _Linear  # [2 * I, D]
    down: _Linear
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    pre_ff_norm: torch.Tensor | None  # Gemma's sandwich norms
    post_ff_norm: torch.Tensor | None
    layer_type: str  # FULL or SLIDING: picks the RoPE and the attention mask


def _bias(*linears: Any) -> torch.Tensor | None:
    """The fused bias of several projections (zeros where one has none), or None when none has one."""
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat([lin.bias if lin.bias is not None else torch.zeros(lin.weight.shape[0], dtype=lin.weight.dtype)
                      for lin in linears]).detach()


def _weight(norm: Any, gemma: bool) -> torch.Tensor:
    """A norm's effective weight: Gemma scales by (1 + w), kept in float32 as its norm computes."""
    w = norm.weight.detach()
    return 1.0 + w.float() if gemma else w


class PagedRunner:
    def __init__(self, model: Any, num_blocks: int, block_size: int, quantization: str | None = None) -> None:
        cfg = model.config
        dtype = str(model.dtype).removeprefix("torch.")
        reason = unsupported_reason(cfg, dtype, quantization)
        if reason:
            raise ValueError(reason)
        self.spec = spec = spec_of(cfg)
        cfg = cfg.get_text_config()
        self.model = model
        int8 = quantization == "int8"
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.eps = cfg.rms_norm_eps
        self.block_size = block_size
        self.num_blocks = num_blocks
        inner = getattr(model.model, "language_model", model.model)  # Gemma 3's multimodal wrapper holds it there
        self.embed = inner.embed_tokens.weight.detach()
        self.dtype = self.embed.dtype
        self.final_norm = _weight(inner.norm, spec.gemma_norms)
        head = model.lm_head.weight.detach()
        self.vocab_size = head.shape[0]
        # int8: the LM head too (at a 49k-262k vocabulary it is the largest single matmul of a decode step)
        self.lm_head = _Linear(head, None, int8)
        self.rotary = inner.rotary_emb
        self.act = _ACTIVATIONS[spec.activation]
        g = spec.gemma_norms
        self.layers = []
        for li, layer in enumerate(inner.layers):
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                in_norm=_weight(layer.input_layernorm, g),
                qkv=_Linear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach().contiguous(),
                            _bias(a.q_proj, a.k_proj, a.v_proj), int8),
                o=_Linear(a.o_proj.weight.detach(), _bias(a.o_proj), int8),
                post_norm=_weight(layer.post_attention_layernorm, g),
                gate_up=_Linear(torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach().contiguous(),
                                _bias(m.gate_proj, m.up_proj), int8),
                down=_Linear(m.down_proj.weight.detach(), _bias(m.down_proj), int8),
                q_norm=_weight(a.q_norm, g) if spec.qk_norm else None,
                k_norm=_weight(a.k_norm, g) if spec.qk_norm else None,
                pre_ff_norm=_weight(layer.pre_feedforward_layernorm, g) if g else None,
                post_ff_norm=_weight(layer.post_feedforward_layernorm, g) if g else None,
                layer_type=spec.layer_types[li]))
        slots = num_blocks * block_size
        shape = (len(self.layers), slots, self.num_kv_heads, self.head_dim)
        # the model's own dtype: a bfloat16 model's K/V are bfloat16 values, so a bfloat16 cache holds them exactly in
        # half the bytes (attention still runs in float32: the kernel widens as it reads, `_attention` casts)
        self.cache_dtype = self.dtype
        self.k_cache = torch.zeros(shape, dtype=self.cache_dtype)
        self.v_cache = torch.zeros(shape, dtype=self.cache_dtype)
        self.layout = LlamaLayout(len(self.layers), cfg.hidden_size, self.num_heads * self.head_dim,
                                  self.num_kv_heads * self.head_dim, cfg.intermediate_size)
        # attention read straight from the blocks by the C kernels (`native.py`); else gathered for torch's SDPA.
        # The prefill kernel needs AVX-512 and a head size that is a multiple of 16 (up to 256).
        self.native_decode = native.available()
        self.native_prefill = self.native_decode and native.prefill_supported(self.head_dim)
        self.native_rotary = self.native_decode
        self.native_rms = self.native_decode and native.rms_norm_exact(self.dtype)
        # bfloat16: the MLP's act(gate) * up in one pass, act looked up in a table of torch's own outputs (exact);
        # a [512, 1536] SiLU step 0.59 -> 0.38 ms, a [512, 2048] tanh-GELU step 1.63 -> 0.47 ms
        self.act_table = native.activation_table(self.act) if self.native_decode and self.dtype == torch.bfloat16 \
            else None
        self.loras: dict[str, LoRAAdapter] = {}
        self.lora_steps = 0  # steps that applied LoRA deltas (a base-only step never does)

    def add_lora(self, name: str, path: str, max_rank: int = 16) -> LoRAAdapter:
        """Load a PEFT LoRA adapter under `name`; LoRAError (a ValueError) says why one cannot be served."""
        adapter = load_adapter(name, path, self.layout, max_rank=max_rank, dtype=self.dtype)
        self.loras[name] = adapter
        return adapter

    @staticmethod
    def kv_bytes_per_token(config: Any, dtype_bytes: int = 4) -> int:
        config = config.get_text_config()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.native_rms:  # one pass, torch's summation order and roundings
            out = native.rms_norm(x, self.eps, weight, self.spec.gemma_norms)
            if out is not None:
                return out
        xf = x.float()
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        normed = xf * r
        if self.spec.gemma_norms:  # as Gemma's own norm: scaled in float32, then cast back
            return (normed * weight).type_as(x)
        return weight * normed.to(x.dtype)  # as Llama's: cast back, then scaled

    def _slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        blocks = torch.tensor(table, dtype=torch.long)[pos // self.block_size]
        return blocks * self.block_size + pos % self.block_size

    def _rope(self, h: torch.Tensor, pos: torch.Tensor, layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.model_type == "gemma3_text":  # one rotary base per layer type (local vs global)
            cos, sin = self.rotary(h[None], pos[None], layer_type)
        else:
            cos, sin = self.rotary(h[None], pos[None])
        return cos[0][:, None, :], sin[0][:, None, :]  # [T, 1, hd]

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
        spec = self.spec
        if spec.embed_scale is not None:
            h = h * torch.tensor(spec.embed_scale, dtype=h.dtype)
        ropes = {t: self._rope(h, pos, t) for t in set(spec.layer_types)}
        window = spec.sliding_window

        nd = len(decodes)
        bs = self.block_size
        dec_masks: dict[str, torch.Tensor] = {}  # per layer type
        dec_lo: dict[str, torch.Tensor] = {}  # per layer type: the first visible key position (native kernel)
        if nd:
            dec_ctx = torch.tensor([s.start + 1 for s in decodes])
            max_blocks = -(-int(dec_ctx.max()) // bs)
            dec_blocks = torch.zeros(nd, max_blocks, dtype=torch.long)
            for i, s in enumerate(decodes):
                table = block_tables[s.request.request_id][:max_blocks]
                dec_blocks[i, :len(table)] = torch.tensor(table, dtype=torch.long)
            if self.native_decode:
                dec_lo[FULL] = torch.zeros(nd, dtype=torch.long)
                if window:  # a sliding layer sees the last `window` positions, the query's own included
                    dec_lo[SLIDING] = dec_ctx - window
            else:  # gather whole blocks (a few large rows copy faster than many small ones), mask past the context
                dec_flat = dec_blocks.view(-1)
                key_pos = torch.arange(max_blocks * bs)[None, :]
                dec_masks[FULL] = (key_pos < dec_ctx[:, None]).view(nd, 1, 1, -1)
                if window:
                    dec_masks[SLIDING] = dec_masks[FULL] & (key_pos > (dec_ctx[:, None] - 1 - window)).view(nd, 1, 1,
                                                                                                            -1)
        pre_info = []
        offset = nd
        for s in prefills:
            ctx = s.start + s.num_tokens
            table = torch.tensor(block_tables[s.request.request_id][:-(-ctx // bs)], dtype=torch.long)
            masks: dict[str, torch.Tensor | None] = {}
            if not self.native_prefill:
                q_pos = torch.arange(s.start, ctx)[:, None]
                key_pos = torch.arange(ctx if s.start == 0 else len(table) * bs)[None, :]
                causal = key_pos <= q_pos
                masks[FULL] = None if s.start == 0 else causal  # None: is_causal over the chunk's own K/V
                if window:
                    masks[SLIDING] = causal & (key_pos > q_pos - window)
            pre_info.append((offset, s, table, masks))
            offset += s.num_tokens

        H, KVH, hd = self.num_heads, self.num_kv_heads, self.head_dim
        gqa = H != KVH
        scale = spec.attn_scale
        kernel_scale = scale or hd ** -0.5  # the C kernels take the scale explicitly (SDPA's default otherwise)
        for li, layer in enumerate(self.layers):
            x = self._rms(h, layer.in_norm)
            qkv = layer.qkv(x)
            if loras:
                _add_lora(qkv, x, loras, li, "qkv")
            q = qkv[:, :H * hd].view(-1, H, hd)
            k = qkv[:, H * hd:(H + KVH) * hd].view(-1, KVH, hd)
            v = qkv[:, (H + KVH) * hd:].view(-1, KVH, hd)
            if layer.q_norm is not None:
                q, k = self._rms(q, layer.q_norm), self._rms(k, layer.k_norm)
            cos, sin = ropes[layer.layer_type]
            if not (self.native_rotary and native.rotary_(q, cos, sin)):  # in place, rounded as torch rounds
                q = q * cos + _rotate_half(q) * sin
            if not (self.native_rotary and native.rotary_(k, cos, sin)):
                k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.index_copy_(0, slot_mapping, k)
            vc.index_copy_(0, slot_mapping, v)
            kb, vb = kc.view(self.num_blocks, bs, KVH, hd), vc.view(self.num_blocks, bs, KVH, hd)
            attn = torch.empty(q.shape[0], H * hd, dtype=q.dtype)  # every row's attention output, in batch order
            if nd and self.native_decode:
                od = native.paged_decode(q[:nd].float(), kb, vb, dec_blocks, dec_ctx, dec_lo[layer.layer_type],
                                         kernel_scale)
                attn[:nd] = od.view(nd, H * hd)
            elif nd:
                qd = q[:nd].unsqueeze(2)  # [nd, H, 1, hd]
                kd = kb.index_select(0, dec_flat).view(nd, -1, KVH, hd).transpose(1, 2)  # [nd, KVH, ctx, hd]
                vd = vb.index_select(0, dec_flat).view(nd, -1, KVH, hd).transpose(1, 2)
                od = _attention(qd, kd, vd, dec_masks[layer.layer_type], False, gqa, scale)
                attn[:nd] = od.reshape(nd, H * hd)
            for start, s, table, masks in pre_info:
                n = s.num_tokens
                if self.native_prefill:  # written in place, in the model's dtype
                    native.paged_prefill(q[start:start + n], kb, vb, table, s.start,
                                         window if layer.layer_type == SLIDING else None, kernel_scale,
                                         out=attn[start:start + n])
                    continue
                qp = q[start:start + n].transpose(0, 1)[None]  # [1, H, n, hd]
                mask = masks[layer.layer_type]
                if s.start == 0:
                    kp = k[start:start + n].transpose(0, 1)[None]
                    vp = v[start:start + n].transpose(0, 1)[None]
                else:
                    kp = kb.index_select(0, table).view(-1, KVH, hd).transpose(0, 1)[None]
                    vp = vb.index_select(0, table).view(-1, KVH, hd).transpose(0, 1)[None]
                op = _attention(qp, kp, vp, mask, mask is None, gqa, scale)
                attn[start:start + n] = op[0].transpose(0, 1).reshape(n, H * hd)
            o = layer.o(attn)
            if loras:
                _add_lora(o, attn, loras, li, "o")
            if layer.pre_ff_norm is not None:  # Gemma: norm the attention output, then norm again before the MLP
                h = h + self._rms(o, layer.post_norm)
                x = self._rms(h, layer.pre_ff_norm)
            else:
                h = h + o
                x = self._rms(h, layer.post_norm)
            gate_up = layer.gate_up(x)
            if loras:
                _add_lora(gate_up, x, loras, li, "gate_up")
            act = native.act_mul(gate_up, self.act_table) if self.act_table is not None else None
            if act is None:
                gate, up = gate_up.chunk(2, dim=-1)
                act = self.act(gate) * up
            down = layer.down(act)
            if loras:
                _add_lora(down, act, loras, li, "down")
            h = h + (down if layer.post_ff_norm is None else self._rms(down, layer.post_ff_norm))

        # rows to sample, in the caller's batch order
        row_of: dict[str, int] = {}
        offset = 0
        for s in order:
            offset += s.num_tokens
            row_of[s.request.request_id] = offset - 1
        rows = [row_of[s.request.request_id] for s in batch if s.sample]
        if not rows:
            return torch.empty(0, self.vocab_size, dtype=self.dtype)
        last = self._rms(h[rows], self.final_norm)
        logits = self.lm_head(last)
        if spec.final_softcap:
            logits = torch.tanh(logits / spec.final_softcap) * spec.final_softcap
        return logits

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


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool, gqa: bool,
               scale: float | None) -> torch.Tensor:
    """SDPA, in float32 for bfloat16 models: torch's CPU flash-attention kernel is about 5x slower in bfloat16 than in
    float32 here (a 16-sequence decode step of SmolLM2: 3.5 vs 0.65 ms per layer)."""
    if q.dtype != torch.float32:
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal,
                                             enable_gqa=gqa, scale=scale)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa, scale=scale)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
