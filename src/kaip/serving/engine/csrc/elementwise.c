/* Elementwise steps of a layer done in one pass each, bit for bit as torch's own operations compute them in the
 * model's dtype, so the engine's tokens stay those of transformers: every product and sum is rounded to that dtype
 * where torch rounds it (float32 arithmetic; for bfloat16, then rounded to nearest even).
 *
 * Built by kaip.serving.engine.native WITHOUT -ffast-math and with -ffp-contract=off: a fused multiply-add would
 * round once where torch rounds twice. */
#include <stdint.h>
#include <math.h>
#include <string.h>

#include "bf16.h"

static inline float f32_in(float x) { return x; }
static inline float f32_out(float x) { return x; }

/* Rotary position embedding in place — x = x * cos + rotate_half(x) * sin, as transformers' `apply_rotary_pos_emb`;
 * torch makes five tensors for it per call (two products, a negation, a concatenation, the sum).
 * x [rows, heads, hd] with rows `row_stride` elements apart (a view into the fused q/k/v projection), each head's hd
 * values contiguous; cos, sin [rows, hd] contiguous, of x's dtype. hd even, at most 1024. */
#ifdef __AVX512F__
static inline __m512 f32x16_in(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 f32x16_round(__m512 x) { return x; }
/* 16 pairs (x[i], x[i + half]) of one head at once, each product and sum rounded to T as torch rounds them */
#define ROTARY_VEC(v, c, s, half, i, LOADV, ROUNDV, STOREV)                                                          \
    do {                                                                                                             \
        const __m512 x1 = LOADV(v + i), x2 = LOADV(v + i + half);                                                    \
        const __m512 a1 = ROUNDV(_mm512_mul_ps(x1, LOADV(c + i)));                                                   \
        const __m512 b1 = ROUNDV(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), x2), LOADV(s + i)));               \
        const __m512 a2 = ROUNDV(_mm512_mul_ps(x2, LOADV(c + i + half)));                                            \
        const __m512 b2 = ROUNDV(_mm512_mul_ps(x1, LOADV(s + i + half)));                                            \
        STOREV(v + i, _mm512_add_ps(a1, b1));                                                                        \
        STOREV(v + i + half, _mm512_add_ps(a2, b2));                                                                 \
    } while (0)
#else
#define ROTARY_VEC(v, c, s, half, i, LOADV, ROUNDV, STOREV) do {} while (0)
#endif

#define ROTARY(NAME, T, IN, OUT, LOADV, ROUNDV, STOREV)                                                              \
int NAME(T *x, const T *cos, const T *sin, int64_t rows, int64_t heads, int64_t hd, int64_t row_stride,             \
         int nthreads) {                                                                                             \
    if (hd % 2 || hd > 1024) return -2;                                                                              \
    const int64_t half = hd / 2;                                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                              \
    for (int64_t r = 0; r < rows; r++) {                                                                             \
        const T *c = cos + r * hd, *s = sin + r * hd;                                                                \
        for (int64_t h = 0; h < heads; h++) {                                                                        \
            T *v = x + r * row_stride + h * hd;                                                                      \
            if (VEC_OK && half % 16 == 0) {                                                                          \
                for (int64_t i = 0; i < half; i += 16) ROTARY_VEC(v, c, s, half, i, LOADV, ROUNDV, STOREV);          \
                continue;                                                                                            \
            }                                                                                                        \
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

#ifdef __AVX512F__
#define VEC_OK 1
ROTARY(kaip_rotary_f32, float, f32_in, f32_out, f32x16_in, f32x16_round, _mm512_storeu_ps)
ROTARY(kaip_rotary_bf16, uint16_t, bf16_in, bf16_out, bf16x16_in, bf16x16_round, bf16x16_out)
#else
#define VEC_OK 0
ROTARY(kaip_rotary_f32, float, f32_in, f32_out, , , )
ROTARY(kaip_rotary_bf16, uint16_t, bf16_in, bf16_out, , , )
#endif

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

/* sum(x_i^2) over a row of D contiguous values, each square rounded to float32 and the squares added in the order
 * torch's CPU sum adds them (aten/src/ATen/native/cpu/SumKernel.cpp, `vectorized_inner_sum`; torch registers that
 * kernel's AVX2 build even on an AVX-512 CPU, so its vectors hold 8 floats): vector v = 8 consecutive squares; four
 * interleaved chains (vectors 4i + k) summed by `multi_row_sum`'s cascade of up to four levels of 2^power steps;
 * leftover vectors onto chain 0, chains 1..3 onto chain 0 in turn; then a scalar that starts at zero takes the
 * scalar tail (D % 8 squares) and then the 8 lanes in order. The runner checks once, against torch, that this
 * is still torch's order (`native.rms_norm_exact`). */
#ifdef __AVX512F__
static inline __m256 f32x8_in(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 bf16x8_in(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

#define SUM_SQUARES(NAME, T, LOADV, IN)                                                                              \
static float NAME(const T *x, int64_t D) {                                                                           \
    const int64_t nvec = D / 8, nilp = nvec / 4;                                                                     \
    int64_t ceil_log2 = 1; /* torch's CeilLog2: 1 up to 2, then the bits of nilp - 1 */                              \
    if (nilp > 2)                                                                                                    \
        for (ceil_log2 = 0; ((nilp - 1) >> ceil_log2) != 0; ceil_log2++) {}                                          \
    const int64_t power = ceil_log2 / 4 > 4 ? ceil_log2 / 4 : 4, step = (int64_t)1 << power, mask = step - 1;        \
    __m256 acc[4][4];                                                                                                \
    for (int j = 0; j < 4; j++)                                                                                      \
        for (int k = 0; k < 4; k++) acc[j][k] = _mm256_setzero_ps();                                                 \
    int64_t i = 0;                                                                                                   \
    while (i + step <= nilp) {                                                                                       \
        for (int64_t j = 0; j < step; j++, i++)                                                                      \
            for (int k = 0; k < 4; k++) {                                                                            \
                const __m256 v = LOADV(x + (i * 4 + k) * 8);                                                         \
                acc[0][k] = _mm256_add_ps(acc[0][k], _mm256_mul_ps(v, v));                                           \
            }                                                                                                        \
        for (int j = 1; j < 4; j++) {                                                                                \
            for (int k = 0; k < 4; k++) {                                                                            \
                acc[j][k] = _mm256_add_ps(acc[j][k], acc[j - 1][k]);                                                 \
                acc[j - 1][k] = _mm256_setzero_ps();                                                                 \
            }                                                                                                        \
            if (i & (mask << (j * power))) break;                                                                    \
        }                                                                                                            \
    }                                                                                                                \
    for (; i < nilp; i++)                                                                                            \
        for (int k = 0; k < 4; k++) {                                                                                \
            const __m256 v = LOADV(x + (i * 4 + k) * 8);                                                             \
            acc[0][k] = _mm256_add_ps(acc[0][k], _mm256_mul_ps(v, v));                                               \
        }                                                                                                            \
    for (int j = 1; j < 4; j++)                                                                                      \
        for (int k = 0; k < 4; k++) acc[0][k] = _mm256_add_ps(acc[0][k], acc[j][k]);                                 \
    for (int64_t v = nilp * 4; v < nvec; v++) {                                                                      \
        const __m256 w = LOADV(x + v * 8);                                                                           \
        acc[0][0] = _mm256_add_ps(acc[0][0], _mm256_mul_ps(w, w));                                                   \
    }                                                                                                                \
    for (int k = 1; k < 4; k++) acc[0][0] = _mm256_add_ps(acc[0][0], acc[0][k]);                                     \
    float total = 0.f, lanes[8];                                                                                     \
    for (int64_t t = nvec * 8; t < D; t++) { const float sq = IN(x[t]) * IN(x[t]); total += sq; }                    \
    _mm256_storeu_ps(lanes, acc[0][0]);                                                                              \
    for (int l = 0; l < 8; l++) total += lanes[l];                                                                   \
    return total;                                                                                                    \
}

SUM_SQUARES(sum_squares_f32, float, f32x8_in, f32_in)
SUM_SQUARES(sum_squares_bf16, uint16_t, bf16x8_in, bf16_in)

/* An RMSNorm as transformers' Llama and Gemma 3 norms compute it, in one pass per row: r = 1 / sqrt(sum(x^2) / D
 * + eps) (torch's reduction order above; its mean divides the sum, its rsqrt is 1 / sqrt, each rounded), then
 *   gemma = 1: out = (float(x) * r * w) rounded once at the end, w float32 (1 + weight): Gemma's norm;
 *   gemma = 0: out = w * round(float(x) * r), w of x's dtype, the product rounded: Llama's norm.
 * x [T, H, D] with rows of H * D values sT elements apart, each head's D values contiguous (a q/k norm reads a view
 * into the fused projection); out [T, H, D] contiguous, of x's dtype. D a multiple of 16; -2 otherwise. */
#define RMS_NORM(NAME, T, LOADV, ROUNDV, STOREV, SUMSQ)                                                             \
int NAME(const T *x, int64_t rows, int64_t heads, int64_t D, int64_t sT, float eps, const void *w, int gemma,        \
         T *out, int nthreads) {                                                                                     \
    if (D % 16) return -2;                                                                                           \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                              \
    for (int64_t t = 0; t < rows; t++) {                                                                             \
        for (int64_t h = 0; h < heads; h++) {                                                                        \
            const T *xr = x + t * sT + h * D;                                                                        \
            const float mean = SUMSQ(xr, D) / (float)D, rr = 1.f / sqrtf(mean + eps);                                \
            const __m512 r = _mm512_set1_ps(rr);                                                                     \
            T *o = out + (t * heads + h) * D;                                                                        \
            if (gemma) {                                                                                             \
                const float *wf = (const float *)w;                                                                  \
                for (int64_t i = 0; i < D; i += 16)                                                                  \
                    STOREV(o + i, _mm512_mul_ps(_mm512_mul_ps(LOADV(xr + i), r), _mm512_loadu_ps(wf + i)));          \
            } else {                                                                                                 \
                const T *wt = (const T *)w;                                                                          \
                for (int64_t i = 0; i < D; i += 16) /* x * r rounded to T, then times w */                           \
                    STOREV(o + i, _mm512_mul_ps(LOADV(wt + i), ROUNDV(_mm512_mul_ps(LOADV(xr + i), r))));            \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    return 0;                                                                                                        \
}

RMS_NORM(kaip_rms_norm_f32, float, f32x16_in, f32x16_round, _mm512_storeu_ps, sum_squares_f32)
RMS_NORM(kaip_rms_norm_bf16, uint16_t, bf16x16_in, bf16x16_round, bf16x16_out, sum_squares_bf16)
#else
int kaip_rms_norm_f32(void) { return -2; }
int kaip_rms_norm_bf16(void) { return -2; }
#endif
