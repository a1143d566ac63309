"""The engine's C kernels (`csrc/`), compiled on first use for this machine and called through ctypes.

A C file with no torch headers compiles in well under a second, so it is built where it runs (`-march=native`)
instead of shipped as a wheel: the shared object is cached under `$KAIP_CACHE_DIR` (default `~/.cache/kaip`) by a
hash of the source, the flags and the CPU's features, written to a temporary name and renamed so concurrent builds
cannot tear it.
Where no C compiler works the engine keeps its pure-torch path (`available()` is False and says why once)."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_CSRC = Path(__file__).with_name("csrc")
# -ffast-math for the compile only: linked with it, gcc adds crtfastmath.o, which sets flush-to-zero for the whole
# process (torch included) when the library loads
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fPIC"]
# elementwise.c must round where torch rounds: no fast-math, no fused multiply-adds
_EXACT_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-fast-math", "-ffp-contract=off", "-fPIC"]
_SOURCES = ((_CSRC / "paged_attention.c", _FLAGS), (_CSRC / "elementwise.c", _EXACT_FLAGS))
_LIBS = ["-lmvec", "-lm"]  # glibc's vector expf, which -ffast-math lets the softmax loop use
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_decode: dict[torch.dtype, ctypes._CFuncPtr] = {}  # by the cache's dtype, filled when the library loads
_prefill: dict[torch.dtype, ctypes._CFuncPtr] = {}
_rotary: dict[torch.dtype, ctypes._CFuncPtr] = {}
_act_mul: ctypes._CFuncPtr | None = None
_rms_norm: dict[torch.dtype, ctypes._CFuncPtr] = {}
_error: str | None = None
_i64, _f32p = ctypes.c_int64, ctypes.c_void_p


def _cache_dir() -> Path:
    return Path(os.environ.get("KAIP_CACHE_DIR") or Path.home() / ".cache" / "kaip") / "native"


def _cpu_flags() -> str:
    """This CPU's feature flags (part of the cache key: a `-march=native` build must not move to another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    sources = b"".join(path.read_bytes() + " ".join(flags).encode() for path, flags in _SOURCES) \
        + (_CSRC / "bf16.h").read_bytes()
    key = hashlib.sha256(sources + " ".join([compiler, *_LIBS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kaip_kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        objects = [f"{tmp}.{i}.o" for i in range(len(_SOURCES))]
        try:
            steps = [[compiler, *flags, "-c", str(path), "-o", obj] for (path, flags), obj in zip(_SOURCES, objects,
                                                                                                  strict=True)]
            steps.append([compiler, "-shared", "-fopenmp", *objects, "-o", tmp, *_LIBS])
            for cmd in steps:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if done.returncode:
                    raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
            os.replace(tmp, target)
        finally:
            for leftover in (tmp, *objects):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    lib = ctypes.CDLL(str(target))
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        decode, prefill = getattr(lib, f"kaip_paged_decode_{suffix}"), getattr(lib, f"kaip_paged_prefill_{suffix}")
        decode.argtypes = [_f32p] * 7 + [_i64] * 6 + [ctypes.c_float, ctypes.c_int]
        prefill.argtypes = [_f32p, _i64] + [_f32p] * 3 + [_i64] * 3 + [_f32p] + [_i64] * 4 + [ctypes.c_float,
                                                                                           ctypes.c_int]
        rotary = getattr(lib, f"kaip_rotary_{suffix}")
        rotary.argtypes = [_f32p] * 3 + [_i64] * 4 + [ctypes.c_int]
        decode.restype = prefill.restype = rotary.restype = ctypes.c_int
        _decode[dtype], _prefill[dtype], _rotary[dtype] = decode, prefill, rotary
        rms = _rms_norm[dtype] = getattr(lib, f"kaip_rms_norm_{suffix}")
        rms.argtypes = [_f32p] + [_i64] * 4 + [ctypes.c_float, _f32p, ctypes.c_int, _f32p, ctypes.c_int]
        rms.restype = ctypes.c_int
    global _act_mul
    _act_mul = lib.kaip_act_mul_bf16
    _act_mul.argtypes = [_f32p] + [_i64] * 3 + [_f32p, _f32p, ctypes.c_int]
    _act_mul.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernels are built and loaded (building them on the first call)."""
    global _lib, _error
    with _lock:
        if _lib is None and _error is None:
            if os.environ.get("KAIP_NATIVE_KERNELS", "1") == "0":
                _error = "turned off by KAIP_NATIVE_KERNELS=0"
            else:
                try:
                    _lib = _build()
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    _error = str(exc)
            if _error:
                log.warning("engine kernels unavailable (%s); attention gathers K/V in torch instead", _error)
        return _lib is not None


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                 ctx: torch.Tensor, lo: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one query per sequence over its paged keys: q [n, H, hd] float32, caches [blocks, bs, KVH, hd]
    float32 or bfloat16, tables [n, max_blocks] int64, visible key positions lo[i] .. ctx[i]-1. Returns [n, H, hd]
    float32."""
    assert _lib is not None, "native.available() first"
    n, H, hd = q.shape
    _, bs, KVH, _ = k_cache.shape
    q = q.contiguous()
    tables, ctx, lo = tables.contiguous(), ctx.contiguous(), lo.contiguous()
    out = torch.empty_like(q)
    rc = _decode[k_cache.dtype](q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
                                ctx.data_ptr(), lo.data_ptr(), out.data_ptr(), n, H, KVH, hd, bs, tables.shape[1],
                                scale, torch.get_num_threads())
    if rc:
        raise MemoryError("paged attention kernel: out of memory for its score rows")
    return out


def prefill_supported(head_dim: int) -> bool:
    """Whether `paged_prefill` runs for this head size here (built with AVX-512; a multiple of 16 up to 256)."""
    if not available() or head_dim % 16 or head_dim > 256:
        return False
    one = torch.zeros(1, 1, 1, head_dim)
    return paged_prefill(torch.zeros(1, 1, head_dim), one, one, torch.zeros(1, dtype=torch.long), 0, None, 1.0) \
        is not None


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor, start: int,
                  window: int | None, scale: float, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Causal attention of one prefill chunk, queries at positions start .. start+n-1 (q [n, H, hd], of the cache's
    dtype), over the sequence's paged keys (its own already written), the last `window` positions only when given.
    Returns [n, H, hd] of that dtype, written into `out` when given (contiguous, n * H * hd elements). None where
    the kernel does not apply (no AVX-512, a head size that is not a multiple of 16 up to 256): use SDPA."""
    assert _lib is not None, "native.available() first"
    n, H, hd = q.shape
    _, bs, KVH, _ = k_cache.shape
    if q.dtype != k_cache.dtype:
        raise TypeError(f"queries are {q.dtype} but the cache is {k_cache.dtype}")
    if q.stride(2) != 1 or (H > 1 and q.stride(1) != hd):  # rows may be apart (a view of the fused projection)
        q = q.contiguous()
    table = table.contiguous()
    if out is None:
        out = torch.empty(n, H, hd, dtype=q.dtype)
    elif not out.is_contiguous() or out.numel() != q.numel() or out.dtype != q.dtype:
        raise ValueError("out must be a contiguous tensor of the queries' size and dtype")
    rc = _prefill[k_cache.dtype](q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), table.data_ptr(),
                                 start, n, window or 0, out.data_ptr(), H, KVH, hd, bs, scale,
                                 torch.get_num_threads())
    if rc == -2:
        return None
    if rc:
        raise MemoryError("paged prefill kernel: out of memory for its scores")
    return out.view(n, H, hd)


def rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Rotary embedding in place, x = x * cos + rotate_half(x) * sin, rounded exactly as torch's operations round
    (`csrc/elementwise.c`): x [rows, heads, hd] with each head's values contiguous (rows may be further apart: a view
    into the fused projection), cos and sin [rows, 1, hd] or [rows, hd] of x's dtype. False, with x untouched, where
    the layout or dtype is not one the kernel takes."""
    assert _lib is not None, "native.available() first"
    rows, heads, hd = x.shape
    fn = _rotary.get(x.dtype)
    if fn is None or x.stride(2) != 1 or (heads > 1 and x.stride(1) != hd) or cos.dtype != x.dtype \
            or sin.dtype != x.dtype:
        return False
    cos, sin = cos.reshape(rows, hd).contiguous(), sin.reshape(rows, hd).contiguous()
    return fn(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), rows, heads, hd, x.stride(0),
              torch.get_num_threads()) == 0


def activation_table(act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`act` applied by torch to every bfloat16 value (one contiguous tensor: torch's vectorised path, the one it
    takes on a model's rows), indexed by the value's bits and widened to float32 (exactly): `act_mul`'s table."""
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return act(every).float().contiguous()


def act_mul(gate_up: torch.Tensor, table: torch.Tensor) -> torch.Tensor | None:
    """act(gate) * up for a bfloat16 gated MLP, bit for bit as torch computes it (`csrc/elementwise.c`): gate_up
    [rows, 2 * inter] bfloat16 (gate, then up), `table` from `activation_table`. [rows, inter] bfloat16, or None where
    the layout is not one the kernel takes."""
    assert _lib is not None and _act_mul is not None, "native.available() first"
    rows, width = gate_up.shape
    if gate_up.dtype != torch.bfloat16 or gate_up.stride(1) != 1 or width % 2 or table.dtype != torch.float32:
        return None
    out = torch.empty(rows, width // 2, dtype=torch.bfloat16)
    _act_mul(gate_up.data_ptr(), rows, width // 2, gate_up.stride(0), table.data_ptr(), out.data_ptr(),
             torch.get_num_threads())
    return out


_rms_exact: dict[torch.dtype, bool] = {}


def rms_norm_exact(dtype: torch.dtype) -> bool:
    """Whether `rms_norm` gives torch's own bits here, checked once per dtype on random rows of a few widths: its
    summation order copies torch's internal one, which another torch build could change (then the runner keeps
    torch's operations)."""
    if dtype not in _rms_exact:
        g = torch.Generator().manual_seed(0)
        same: list[bool | None] = []  # None: a dtype or layout the kernel does not take
        for width in (64, 576, 2048 + 16) if available() else ():
            x = (torch.randn(9, width, generator=g) * 3).to(dtype)
            w = torch.randn(width, generator=g).to(dtype)
            got = rms_norm(x, 1e-6, w, False)
            xf = x.float()
            want = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
            same.append(None if got is None else torch.equal(got, want))
        if False in same:
            log.warning("engine RMSNorm kernel does not match this torch's summation order; using torch's")
        _rms_exact[dtype] = bool(same) and all(same)
    return _rms_exact[dtype]


def rms_norm(x: torch.Tensor, eps: float, weight: torch.Tensor, gemma: bool) -> torch.Tensor | None:
    """An RMSNorm in one pass, bit for bit as transformers' norms compute it with torch's operations
    (`csrc/elementwise.c`: the sum of squares in torch's own summation order, then mean, + eps, 1 / sqrt): Gemma's
    (x * r * weight) rounded once with a float32 weight (1 + w), else Llama's weight * round(x * r) with a weight of
    x's dtype. x [T, D] or [T, H, D] (rows may be apart, heads contiguous). A new contiguous tensor, or None where
    the layout is not one the kernel takes (then torch's operations)."""
    assert _lib is not None, "native.available() first"
    fn = _rms_norm.get(x.dtype)
    if fn is None or x.dim() not in (2, 3) or x.stride(-1) != 1:
        return None
    T, H, D = (x.shape[0], 1, x.shape[1]) if x.dim() == 2 else x.shape
    if (H > 1 and x.stride(1) != D) or weight.shape != (D,) or weight.dtype != (torch.float32 if gemma else x.dtype):
        return None
    weight = weight.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype)
    if fn(x.data_ptr(), T, H, D, x.stride(0), eps, weight.data_ptr(), int(gemma), out.data_ptr(),
          torch.get_num_threads()):
        return None
    return out
