/* Decode attention read straight from the paged KV cache: one query token per sequence, keys and values taken
 * block by block through the sequence's block table, so nothing is gathered into a padded copy first.
 *
 * Built by kaip.serving.engine.native (cc -O3 -march=native -fopenmp) and called through ctypes; OpenMP resolves to
 * the libgomp torch has already loaded, so this shares torch's thread pool instead of starting a second one.
 *
 * Layouts (contiguous):
 *   q, out      [n, H, hd] float32           queries of the n sequences; the attention output
 *   k, v        [num_blocks, bs, KVH, hd]    the layer's cache, float32 or bfloat16 (two functions below)
 *   tables      [n, max_blocks] int64        block ids, in order of position
 *   ctx, lo     [n] int64                    keys at positions lo .. ctx-1 are visible (lo > 0: sliding window)
 * One task per sequence walks each cache row (all KVH heads of one position: contiguous bytes) once for its keys
 * and once for its values; that streaming read is the cost of a decode step's attention. Query heads
 * kvh * G .. kvh * G + G - 1 share key/value head kvh (grouped-query attention). Softmax is exact: scores go to a
 * scratch row per head, then max-subtracted. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static inline float from_f32(float x) { return x; }

/* The next block of a sequence is anywhere in the cache, so the hardware prefetcher cannot see it coming: while a
 * block's row t is used, row t of the next block is requested (measured: the loads of K and V rows were two
 * thirds of the kernel's time, waiting on memory). */
static inline void prefetch_row(const void *p, int64_t bytes) {
    for (int64_t c = 0; c < bytes; c += 64) __builtin_prefetch((const char *)p + c, 0, 0);
}

static inline float from_bf16(uint16_t x) {  /* bfloat16 is the high half of a float32 */
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#define PAGED_DECODE(NAME, T, LOAD)                                                                                  \
int NAME(const float *q, const T *k, const T *v, const int64_t *tables, const int64_t *ctx, const int64_t *lo,      \
         float *out, int64_t n, int64_t H, int64_t KVH, int64_t hd, int64_t bs, int64_t max_blocks, float scale,      \
         int nthreads) {                                                                                             \
    const int64_t G = H / KVH, row = KVH * hd;                                                                       \
    int failed = 0;                                                                                                  \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")                                           \
    for (int64_t i = 0; i < n; i++) {                                                                                \
        const int64_t L = ctx[i], start = lo[i] < 0 ? 0 : lo[i], len = L - start;                                   \
        float *o = out + i * H * hd;                                                                                 \
        memset(o, 0, (size_t)(H * hd) * sizeof(float));                                                              \
        if (len <= 0) continue;                                                                                      \
        float *scores = malloc((size_t)(H * len) * sizeof(float));                                                   \
        if (!scores) { failed = 1; continue; }                                                                       \
        const float *qi = q + i * H * hd;                                                                            \
        const int64_t *table = tables + i * max_blocks;                                                              \
        for (int64_t b = start / bs; b * bs < L; b++) { /* block by block: no division per key */                   \
            const int64_t first = b * bs < start ? start - b * bs : 0, last = L - b * bs < bs ? L - b * bs : bs;      \
            const T *kb = k + table[b] * bs * row;                                                                   \
            const T *kn = (b + 1) * bs < L ? k + table[b + 1] * bs * row : NULL;                                     \
            for (int64_t t = first; t < last; t++) {                                                                 \
                const T *kr = kb + t * row;                                                                          \
                if (kn) prefetch_row(kn + t * row, row * (int64_t)sizeof(T));                                        \
                float *sp = scores + (b * bs + t - start);                                                           \
                for (int64_t h = 0; h < H; h++) {                                                                    \
                    const float *qh = qi + h * hd;                                                                   \
                    const T *kp = kr + (h / G) * hd;                                                                 \
                    float acc = 0.f;                                                                                 \
                    _Pragma("omp simd reduction(+ : acc)")                                                           \
                    for (int64_t d = 0; d < hd; d++) acc += qh[d] * LOAD(kp[d]);                                     \
                    sp[h * len] = acc * scale;                                                                       \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        for (int64_t h = 0; h < H; h++) {                                                                            \
            float *s = scores + h * len, m = s[0], sum = 0.f;                                                        \
            for (int64_t t = 1; t < len; t++) m = s[t] > m ? s[t] : m;                                               \
            _Pragma("omp simd reduction(+ : sum)")                                                                   \
            for (int64_t t = 0; t < len; t++) {                                                                      \
                s[t] = expf(s[t] - m);                                                                               \
                sum += s[t];                                                                                         \
            }                                                                                                        \
            const float inv = 1.f / sum;                                                                             \
            for (int64_t t = 0; t < len; t++) s[t] *= inv;                                                           \
        }                                                                                                            \
        for (int64_t b = start / bs; b * bs < L; b++) {                                                              \
            const int64_t first = b * bs < start ? start - b * bs : 0, last = L - b * bs < bs ? L - b * bs : bs;      \
            const T *vb = v + table[b] * bs * row;                                                                   \
            const T *vn = (b + 1) * bs < L ? v + table[b + 1] * bs * row : NULL;                                     \
            for (int64_t t = first; t < last; t++) {                                                                 \
                const T *vr = vb + t * row;                                                                          \
                if (vn) prefetch_row(vn + t * row, row * (int64_t)sizeof(T));                                        \
                const float *sp = scores + (b * bs + t - start);                                                     \
                for (int64_t h = 0; h < H; h++) {                                                                    \
                    const float w = sp[h * len];                                                                     \
                    const T *vp = vr + (h / G) * hd;                                                                 \
                    float *oh = o + h * hd;                                                                          \
                    _Pragma("omp simd")                                                                              \
                    for (int64_t d = 0; d < hd; d++) oh[d] += w * LOAD(vp[d]);                                       \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        free(scores);                                                                                                \
    }                                                                                                                \
    return failed ? -1 : 0;                                                                                          \
}

PAGED_DECODE(kaip_paged_decode_f32, float, from_f32)
PAGED_DECODE(kaip_paged_decode_bf16, uint16_t, from_bf16)
