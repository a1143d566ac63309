"""The engine's C attention kernels (`kaip.serving.engine.native`): they build on this machine, decode and prefill
attention equal torch's SDPA over the gathered blocks (float32 and bfloat16 caches, grouped-query heads, partial
last blocks, cached prefixes, sliding windows, shuffled block tables), and the runner decodes the same tokens with
them as without them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine_fixtures import prompts, reference, tiny_family, tiny_llama
from kaip.serving.engine import native
from kaip.serving.engine.core import EngineConfig, LLMEngineCore
from kaip.serving.engine.model_runner import _ACTIVATIONS
from kaip.serving.engine.request import EngineParams


def _reference(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, tables: torch.Tensor, ctx: torch.Tensor,
               lo: torch.Tensor, scale: float) -> torch.Tensor:
    n, H, hd = q.shape
    bs, KVH = kc.shape[1], kc.shape[2]
    keys = kc.index_select(0, tables.view(-1)).view(n, -1, KVH, hd).transpose(1, 2).float()
    values = vc.index_select(0, tables.view(-1)).view(n, -1, KVH, hd).transpose(1, 2).float()
    pos = torch.arange(tables.shape[1] * bs)[None, :]
    mask = ((pos < ctx[:, None]) & (pos >= lo[:, None])).view(n, 1, 1, -1)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask, enable_gqa=True, scale=scale)
    return out.squeeze(2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 1, 256), (2, 2, 6)])
def test_rotary_equals_torchs_elementwise_operations_bit_for_bit(heads: int, kv_heads: int, head_dim: int,
                                                                 dtype: torch.dtype) -> None:
    assert native.available()
    g = torch.Generator().manual_seed(heads * head_dim)
    rows = 37
    qkv = (torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=g) * 3).to(dtype)
    angle = torch.arange(rows)[:, None] * torch.rand(head_dim // 2, generator=g)[None, :] * 10
    emb = torch.cat((angle, angle), dim=-1)
    cos, sin = emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]  # [rows, 1, hd], as the runner's

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., head_dim // 2:], x[..., :head_dim // 2]), dim=-1)

    q = qkv[:, :heads * head_dim].view(rows, heads, head_dim)  # views into the fused projection, rows apart
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(rows, kv_heads, head_dim)
    v_before = qkv[:, (heads + kv_heads) * head_dim:].clone()
    want_q, want_k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    assert native.rotary_(q, cos, sin) and native.rotary_(k, cos, sin)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], v_before)  # values untouched
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    assert not native.rotary_(q, cos.to(other), sin.to(other))  # refused, untouched
    assert torch.equal(q, want_q)


@pytest.mark.parametrize("activation", ["silu", "gelu_pytorch_tanh"])
def test_act_mul_equals_torchs_activation_and_product_bit_for_bit(activation: str) -> None:
    assert native.available()
    act = _ACTIVATIONS[activation]
    table = native.activation_table(act)
    g = torch.Generator().manual_seed(len(activation))
    # Widths a model has (multiples of 64): torch then takes its vectorised path for every element, as the table
    # does — its scalar path rounds a few values differently (GELU(-5.125): -1.5e-7 alone, -0.0 in a vector).
    for rows, inter in ((37, 128), (5, 2048), (3, 1536 + 16)):
        gate_up = (torch.randn(rows, 2 * inter, generator=g) * 4).to(torch.bfloat16)
        gate_up[0, :6] = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 1e-40, -3e38])  # specials
        gate, up = gate_up.chunk(2, dim=-1)
        want = act(gate) * up
        got = native.act_mul(gate_up, table)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))  # the bits, NaNs included
    assert native.act_mul(gate_up.float(), table) is None  # float32: torch's path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gemma", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_rms_norm_equals_the_norms_of_transformers_bit_for_bit(dtype: torch.dtype, gemma: bool, threads: int) -> None:
    """The whole norm in C, its sum of squares in torch's own order: the same bits as transformers' Llama and Gemma 3
    norms for the widths models have (hidden sizes up to past the sum's second cascade level, per-head q/k norms
    reading a view of the fused projection), rows of any scale, infinities and NaN. (Widths that are multiples of
    32, as hidden sizes are: torch's bfloat16 multiply writes a NaN as 0xFFFF in its vector loop but 0x7FC0 in the
    scalar tail of a row; the kernel writes 0xFFFF everywhere.)"""
    assert native.available()
    g = torch.Generator().manual_seed(int(gemma) + 2 * threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for width, eps, scale in ((576, 1e-5, 3.0), (640, 1e-6, 0.01), (896, 1e-6, 300.0), (2048, 1e-5, 1.0),
                                  (16 * 4 * 16 * 16 + 64, 1e-6, 2.0)):
            fused = (torch.randn(33, width + 96, generator=g) * scale).to(dtype)
            fused[0, :3] = torch.tensor([float("inf"), 1.0, 2.0])
            fused[1, 5] = float("nan")
            for x in (fused[:, :width], fused[:, :width - width % 64].view(33, -1, 64)):  # rows apart; per head
                d = x.shape[-1]
                w = torch.randn(d, generator=g).to(dtype)
                xf = x.float()
                r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
                if gemma:  # Gemma3RMSNorm: in float32, times (1 + w), cast back once
                    weight = 1.0 + w.float()
                    want = (xf * r * weight).type_as(x)
                else:  # LlamaRMSNorm: cast back, then times w
                    weight = w
                    want = weight * (xf * r).to(dtype)
                got = native.rms_norm(x, eps, weight, gemma)
                assert got is not None and torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else
                                                                torch.int32),
                                                       want.view(torch.int16 if dtype == torch.bfloat16 else
                                                                 torch.int32))
    finally:
        torch.set_num_threads(before)
    assert native.rms_norm(x, 1e-6, weight.to(torch.float64), gemma) is None  # a weight it does not take: torch's
    assert native.rms_norm_exact(dtype)


def test_prefill_refuses_queries_of_another_dtype() -> None:
    assert native.available()
    cache = torch.zeros(2, 4, 1, 16, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="queries are torch.float32 but the cache is torch.bfloat16"):
        native.paged_prefill(torch.zeros(3, 2, 16), cache, cache, torch.zeros(1, dtype=torch.long), 0, None, 1.0)


def test_the_kernels_build_here() -> None:
    assert native.available(), native._error
    assert native.prefill_supported(64)  # this CPU has AVX-512
    assert not native.prefill_supported(72)  # not a multiple of 16: SDPA


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size"),
                         # head sizes that are a multiple of 64 take the AVX-512 P·V (query heads in tiles of up to
                         # four: 4, 3 + 4, 1 each), the others the portable loop
                         [(4, 2, 16, 4), (9, 3, 64, 16), (8, 8, 32, 8), (4, 1, 256, 16), (14, 2, 64, 16),
                          (12, 12, 64, 8), (6, 2, 128, 4), (2, 1, 96, 16)])
def test_paged_decode_equals_attention_over_the_gathered_blocks(heads: int, kv_heads: int, head_dim: int,
                                                               block_size: int, dtype: torch.dtype) -> None:
    assert native.available()
    g = torch.Generator().manual_seed(heads * 100 + head_dim)
    num_blocks = 64
    kc = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    vc = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    ctx = torch.tensor([1, block_size, block_size + 1, 3 * block_size - 1, 7 * block_size])
    n, max_blocks = len(ctx), 7
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:max_blocks] for _ in range(n)])
    scale = 0.3
    # float32 queries, and bfloat16 values as a bfloat16 model's are (a bfloat16 cache's scores then come from
    # bfloat16 dot products where the head size is a multiple of 32: 16 keys' partial sums added across lanes at once)
    for q in (torch.randn(n, heads, head_dim, generator=g), torch.randn(n, heads, head_dim, generator=g).to(dtype)
              .float()):
        for lo in (torch.zeros(n, dtype=torch.long), ctx - 5, ctx - block_size - 2):  # full, two sliding windows
            got = native.paged_decode(q, kc, vc, tables, ctx, lo, scale)
            want = _reference(q, kc, vc, tables, ctx, lo.clamp(min=0), scale)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# the CPU has bfloat16 dot products (AVX512-BF16): a bfloat16 cache's prefill takes them (else the widened kernel)
_BF16_DOT = " avx512_bf16" in native._cpu_flags()


def _prefill_with_bf16_probabilities(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                                     scale: float) -> torch.Tensor:
    """Causal attention computed as a bfloat16 SDPA on torch's CPU kernel computes it: float32 scores and softmax,
    the probabilities rounded to bfloat16 for P·V, divided by the float32 sum. q [n, H, hd]; keys/values
    [KVH, ctx, hd] float32 (bfloat16 values)."""
    n, H, _ = q.shape
    G = H // keys.shape[0]
    k = keys.repeat_interleave(G, dim=0).double()  # [H, ctx, hd]
    s = (torch.einsum("nhd,hkd->hnk", q.double(), k).float() * scale).masked_fill(~mask, float("-inf"))
    e = torch.exp(s - s.amax(-1, keepdim=True))
    p = e.to(torch.bfloat16).double()
    out = torch.einsum("hnk,hkd->hnd", p, values.repeat_interleave(G, dim=0).double()) / e.double().sum(-1)[..., None]
    return out.transpose(0, 1).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size"),
                         [(4, 2, 16, 4), (9, 3, 64, 16), (8, 8, 32, 8), (4, 1, 256, 16), (3, 1, 256, 8),
                          (6, 2, 128, 4)])
def test_paged_prefill_equals_causal_attention(heads: int, kv_heads: int, head_dim: int, block_size: int,
                                               dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(heads + head_dim)
    # (cached prefix, chunk length, window): a whole prompt, a short one, chunks after a prefix, sliding windows
    for start, n, window in ((0, 70, None), (0, 5, None), (40, 23, None), (13, 50, 7), (0, 70, 30)):
        ctx = start + n
        num_blocks = -(-ctx // block_size) + 3
        kc = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
        vc = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
        table = torch.randperm(num_blocks, generator=g)[:-(-ctx // block_size)]
        q = torch.randn(n, heads, head_dim, generator=g).to(dtype)  # queries come in the model's dtype
        got = native.paged_prefill(q, kc, vc, table, start, window, 0.3)
        assert got.dtype == dtype
        keys = kc[table].reshape(-1, kv_heads, head_dim)[:ctx].float().transpose(0, 1)[None]
        values = vc[table].reshape(-1, kv_heads, head_dim)[:ctx].float().transpose(0, 1)[None]
        q_pos, k_pos = torch.arange(start, ctx)[:, None], torch.arange(ctx)[None, :]
        mask = (k_pos <= q_pos) & (k_pos > q_pos - window if window else True)
        want = F.scaled_dot_product_attention(q.float().transpose(0, 1)[None], keys, values, attn_mask=mask,
                                              enable_gqa=True, scale=0.3)[0].transpose(0, 1)
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        elif head_dim % 64 or not _BF16_DOT:  # widened to float32: the float32 kernel's sums, rounded as torch
            wide = native.paged_prefill(q.float(), kc.float(), vc.float(), table, start, window, 0.3)
            assert torch.equal(got, wide.to(dtype))
        else:  # bfloat16 dot products, probabilities rounded to bfloat16 for P·V, as torch's own bfloat16 SDPA
            torch.testing.assert_close(got, want.to(dtype), rtol=1.6e-2, atol=4e-3)
            rounded_p = _prefill_with_bf16_probabilities(q, keys[0], values[0], mask, 0.3)
            # within its own output rounding of that, but where a score's last bit rounded a probability the other
            # way (one bfloat16 step of one weight)
            near = torch.isclose(got.float(), rounded_p, rtol=2 ** -8, atol=5e-4)
            assert near.float().mean() > 0.999 and torch.isclose(got.float(), rounded_p, rtol=2 ** -8, atol=4e-3).all()
        wider = torch.cat([q, torch.randn(n, 3, head_dim, generator=g).to(dtype)], dim=1)  # rows further apart
        assert torch.equal(native.paged_prefill(wider[:, :heads], kc, vc, table, start, window, 0.3), got)
        into = torch.full((n + 2, heads * head_dim), 7.0, dtype=dtype)
        native.paged_prefill(q, kc, vc, table, start, window, 0.3, out=into[1:n + 1])
        assert torch.equal(into[1:n + 1].view_as(got), got) and (into[0] == 7).all() and (into[-1] == 7).all()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_the_runner_decodes_the_same_tokens_with_and_without_the_kernel(family: str) -> None:
    model = tiny_llama() if family == "llama" else tiny_family("gemma3")  # gemma3: a 5-position sliding layer
    batch = prompts([3, 17, 30, 9], seed=5)
    params = EngineParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    outputs = []
    for use_kernels in (True, False):
        # chunks of 24 tokens: prompts prefill in pieces after a cached part
        engine = LLMEngineCore(model, config=EngineConfig(block_size=4, num_blocks=96, max_num_seqs=4,
                                                          max_num_batched_tokens=24))
        runner = engine.runner
        assert runner.native_decode and runner.native_prefill and runner.native_rotary  # built here (first test)
        runner.native_decode = runner.native_prefill = runner.native_rotary = runner.native_rms = use_kernels
        runner.act_table = runner.act_table if use_kernels else None
        outputs.append(engine.generate_all(batch, params))
    assert outputs[0] == outputs[1] == [reference(model, p, 16) for p in batch]
