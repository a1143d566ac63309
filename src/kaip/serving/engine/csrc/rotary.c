/* Rotary position embedding applied in place — x = x * cos + rotate_half(x) * sin — bit for bit as transformers'
 * `apply_rotary_pos_emb` computes it with torch's elementwise operations in the model's dtype: each product and the
 * sum is rounded to that dtype (float32 arithmetic; for bfloat16, then rounded to nearest even). torch makes five
 * tensors for this per call (two products, a negation, a concatenation, the sum); here it is one pass.
 *
 * Built by kaip.serving.engine.native WITHOUT -ffast-math and with -ffp-contract=off: a fused multiply-add would
 * round once where torch rounds twice, and the tokens would drift from transformers'.
 *
 * Layout: x [rows, heads, hd] with rows `row_stride` elements apart (a view into the fused q/k/v projection), each
 * head's hd values contiguous; cos, sin [rows, hd] contiguous, of x's dtype. hd even, at most 1024. */
#include <stdint.h>
#include <string.h>

static inline float bf16_in(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_out(float f) { /* c10::BFloat16's round to nearest even; NaN -> 0x7FC0 */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float f32_in(float x) { return x; }
static inline float f32_out(float x) { return x; }

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
