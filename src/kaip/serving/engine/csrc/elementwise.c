/* Elementwise steps of a layer done in one pass each, bit for bit as torch's own operations compute them in the
 * model's dtype, so the engine's tokens stay those of transformers: every product and sum is rounded to that dtype
 * where torch rounds it (float32 arithmetic; for bfloat16, then rounded to nearest even).
 *
 * Built by kaip.serving.engine.native WITHOUT -ffast-math and with -ffp-contract=off: a fused multiply-add would
 * round once where torch rounds twice. */
#include <stdint.h>
#include <string.h>

#include "bf16.h"

static inline float f32_in(float x) { return x; }
static inline float f32_out(float x) { return x; }

/* Rotary position embedding in place — x = x * cos + rotate_half(x) * sin, as transformers' `apply_rotary_pos_emb`;
 * torch makes five tensors for it per call (two products, a negation, a concatenation, the sum).
 * x [rows, heads, hd] with rows `row_stride` elements apart (a view into the fused q/k/v projection), each head's hd
 * values contiguous; cos, sin [rows, hd] contiguous, of x's dtype. hd even, at most 1024. */
#define ROTARY(NAME, T, IN, OUT)                                                                                     \
int NAME(T *x, const T *cos, const T *sin, int64_t rows, int64_t heads, int64_t hd, int64_t row_stride,             \
         int nthreads) {                                                                                             \
    if (hd % 2 || hd > 1024) return -2;                                                                              \
    const int64_t half = hd / 2;                                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                              \
    for (int64_t r = 0; r < rows; r++) {                                                                             \
        const T *c = cos + r * hd, *s = sin + r * hd;                                                                \
        for (int64_t h = 0; h < heads; h++) {                                                                        \
            T *v = x + r * row_stride + h * hd;                                                                      \
            T out[1024];                                                                                             \
            for (int64_t i = 0; i < half; i++) { /* rotate_half: (-x[half:], x[:half]) */                           \
                const T a = OUT(IN(v[i]) * IN(c[i])), b = OUT(-IN(v[i + half]) * IN(s[i]));                           \
                out[i] = OUT(IN(a) + IN(b));                                                                         \
            }                                                                                                        \
            for (int64_t i = half; i < hd; i++) {                                                                    \
                const T a = OUT(IN(v[i]) * IN(c[i])), b = OUT(IN(v[i - half]) * IN(s[i]));                           \
                out[i] = OUT(IN(a) + IN(b));                                                                         \
            }                                                                                                        \
            memcpy(v, out, (size_t)hd * sizeof(T));                                                                  \
        }                                                                                                            \
    }                                                                                                                \
    return 0;                                                                                                        \
}

ROTARY(kaip_rotary_f32, float, f32_in, f32_out)
ROTARY(kaip_rotary_bf16, uint16_t, bf16_in, bf16_out)

/* act(gate) * up for a bfloat16 model — the gated MLP's activation and product in one pass. act is read from a table
 * of 65,536 entries: torch's own (vectorised) output for every bfloat16 value, widened to float32, computed by torch
 * when the runner starts — exact by construction, and a gather instead of torch's tanh per element. The product is
 * rounded as torch's bfloat16 multiply rounds it. gate_up [rows, 2 * inter], rows `row_stride` apart: gate the first
 * half of a row, up the second; out [rows, inter] contiguous. */
int kaip_act_mul_bf16(const uint16_t *gate_up, int64_t rows, int64_t inter, int64_t row_stride, const float *table,
                      uint16_t *out, int nthreads) {
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *g = gate_up + r * row_stride, *u = g + inter;
        uint16_t *o = out + r * inter;
        int64_t i = 0;
#ifdef __AVX512F__
        for (; i + 16 <= inter; i += 16) {
            const __m512i idx = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(g + i)));
            bf16x16_out(o + i, _mm512_mul_ps(_mm512_i32gather_ps(idx, table, 4), bf16x16_in(u + i)));
        }
#endif
        for (; i < inter; i++) o[i] = bf16_out(table[g[i]] * bf16_in(u[i]));
    }
    return 0;
}

/* The scaling half of an RMSNorm, after torch has computed each row's r = rsqrt(mean(x^2) + eps) (that reduction's
 * summation order is torch's own and stays in torch). x [T, H, D] with rows of H * D values sT elements apart, each
 * head's D values contiguous; r [T * H] float32; out [T, H, D] contiguous, of x's dtype.
 *   gemma = 1: out = (float(x) * r * w) rounded once at the end, w float32 (1 + weight): Gemma's norm;
 *   gemma = 0: out = w * round(float(x) * r), w of x's dtype, the product rounded: Llama's norm. */
#define RMS_SCALE(NAME, T, IN, OUT)                                                                                  \
int NAME(const T *x, int64_t rows, int64_t heads, int64_t D, int64_t sT, const float *r, const void *w, int gemma,    \
         T *out, int nthreads) {                                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                              \
    for (int64_t t = 0; t < rows; t++) {                                                                             \
        for (int64_t h = 0; h < heads; h++) {                                                                        \
            const T *xr = x + t * sT + h * D;                                                                        \
            const float rr = r[t * heads + h];                                                                       \
            T *o = out + (t * heads + h) * D;                                                                        \
            if (gemma) {                                                                                             \
                const float *wf = (const float *)w;                                                                  \
                for (int64_t i = 0; i < D; i++) { const float n = IN(xr[i]) * rr; o[i] = OUT(n * wf[i]); }           \
            } else {                                                                                                 \
                const T *wt = (const T *)w;                                                                          \
                for (int64_t i = 0; i < D; i++) { const T n = OUT(IN(xr[i]) * rr); o[i] = OUT(IN(wt[i]) * IN(n)); }  \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    return 0;                                                                                                        \
}

RMS_SCALE(kaip_rms_scale_f32, float, f32_in, f32_out)
RMS_SCALE(kaip_rms_scale_bf16, uint16_t, bf16_in, bf16_out)
