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

/* Prefill attention of one chunk of a sequence — queries at positions start .. start+n-1 — over its paged keys
 * 0 .. start+n-1 (causal; with a window, the last `window` positions). The chunk's own K/V are already in the
 * cache. Written with AVX-512 because the score step must not end in a horizontal sum per (query, key, head), as
 * the decode loop above does: each kv head's keys are first transposed into 16-key tiles [hd][16] (float32), so
 * 16 scores of one query head are 16 lanes of one register built by hd broadcast-FMAs, eight query rows at a time.
 * Head sizes that are a multiple of 16 up to 256; returns -2 otherwise (and where AVX-512 is missing), and the
 * caller uses torch's SDPA. q, out: [n, H, hd] float32. */
#ifdef __AVX512F__
#include <immintrin.h>

static inline __m512 ld16_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 ld16_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#define ROWS 8   /* query-head rows whose scores are built together: independent FMA chains */
#define QTILE 8  /* query positions per task */

/* o = sum over the row's visible keys t of p[t] * V[t] (one query head), ND 16-float accumulators */
#define PV_ROW(ND, T, LD16)                                                                                          \
    do {                                                                                                             \
        __m512 o[16];                                                                                                \
        for (int64_t j = 0; j < (ND); j++) o[j] = _mm512_setzero_ps();                                               \
        for (int64_t b = lo / bs; b * bs <= p; b++) {                                                                \
            const int64_t t0 = b * bs < lo ? lo : b * bs, t1 = (b + 1) * bs - 1 < p ? (b + 1) * bs - 1 : p;          \
            const T *vb = v + (table[b] * bs - b * bs) * row + kh * hd;                                              \
            for (int64_t t = t0; t <= t1; t++) {                                                                     \
                const __m512 w = _mm512_set1_ps(sr[t] * inv);                                                        \
                const T *vr = vb + t * row;                                                                          \
                for (int64_t j = 0; j < (ND); j++) o[j] = _mm512_fmadd_ps(w, LD16(vr + 16 * j), o[j]);               \
            }                                                                                                        \
        }                                                                                                            \
        for (int64_t j = 0; j < (ND); j++) _mm512_storeu_ps(dst + 16 * j, o[j]);                                     \
    } while (0)

#define PAGED_PREFILL(NAME, T, LOAD, LD16)                                                                           \
int NAME(const float *q, const T *k, const T *v, const int64_t *table, int64_t start, int64_t n, int64_t window,     \
         float *out, int64_t H, int64_t KVH, int64_t hd, int64_t bs, float scale, int nthreads) {                    \
    if (hd % 16 || hd > 256) return -2;                                                                              \
    const int64_t G = H / KVH, row = KVH * hd, L = start + n, nchunks = (L + 15) / 16, nd = hd / 16;                 \
    float *kt = aligned_alloc(64, (size_t)(KVH * nchunks * hd * 16) * sizeof(float));                                \
    if (!kt) return -1;                                                                                              \
    int failed = 0;                                                                                                  \
    _Pragma("omp parallel num_threads(nthreads)")                                                                    \
    {                                                                                                                \
        _Pragma("omp for schedule(static)")                                                                          \
        for (int64_t c = 0; c < nchunks; c++) { /* transpose: kt[kh][c][d][t] = K[pos c*16+t][kh][d] */             \
            for (int64_t t = 0; t < 16; t++) {                                                                       \
                const int64_t p = c * 16 + t;                                                                        \
                for (int64_t kh = 0; kh < KVH; kh++) {                                                               \
                    float *dst = kt + ((kh * nchunks + c) * hd) * 16 + t;                                            \
                    if (p >= L) {                                                                                    \
                        for (int64_t d = 0; d < hd; d++) dst[d * 16] = 0.f;                                          \
                        continue;                                                                                    \
                    }                                                                                                \
                    const T *src = k + (table[p / bs] * bs + p % bs) * row + kh * hd;                               \
                    for (int64_t d = 0; d < hd; d++) dst[d * 16] = LOAD(src[d]);                                     \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        const int64_t ntiles = (n + QTILE - 1) / QTILE;                                                              \
        _Pragma("omp for collapse(2) schedule(dynamic, 1)")                                                          \
        for (int64_t kh = 0; kh < KVH; kh++) {                                                                       \
            for (int64_t tile = 0; tile < ntiles; tile++) {                                                          \
                const int64_t i0 = tile * QTILE, i1 = i0 + QTILE < n ? i0 + QTILE : n;                               \
                const int64_t pmax = start + i1 - 1, pmin = start + i0;                                              \
                const int64_t kmin = window > 0 && pmin - window + 1 > 0 ? pmin - window + 1 : 0;                    \
                const int64_t c0 = kmin / 16, c1 = pmax / 16 + 1, span = (c1 - c0) * 16;                             \
                const int64_t R = (i1 - i0) * G;                                                                     \
                float *s = malloc((size_t)(R * span) * sizeof(float));                                               \
                if (!s) { failed = 1; continue; }                                                                    \
                for (int64_t r0 = 0; r0 < R; r0 += ROWS) { /* scores: rows r = (i - i0) * G + g */                  \
                    const int64_t nr = R - r0 < ROWS ? R - r0 : ROWS;                                                \
                    const float *qr[ROWS];                                                                           \
                    for (int64_t j = 0; j < ROWS; j++) {                                                             \
                        const int64_t r = r0 + (j < nr ? j : 0);                                                     \
                        qr[j] = q + ((i0 + r / G) * H + kh * G + r % G) * hd;                                        \
                    }                                                                                                \
                    for (int64_t c = c0; c < c1; c++) {                                                              \
                        const float *kc = kt + ((kh * nchunks + c) * hd) * 16;                                       \
                        __m512 acc[ROWS];                                                                            \
                        for (int64_t j = 0; j < ROWS; j++) acc[j] = _mm512_setzero_ps();                             \
                        for (int64_t d = 0; d < hd; d++) {                                                           \
                            const __m512 kv = _mm512_load_ps(kc + d * 16);                                           \
                            for (int64_t j = 0; j < ROWS; j++)                                                       \
                                acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(qr[j][d]), kv, acc[j]);                      \
                        }                                                                                            \
                        for (int64_t j = 0; j < nr; j++)                                                             \
                            _mm512_storeu_ps(s + (r0 + j) * span + (c - c0) * 16,                                    \
                                             _mm512_mul_ps(acc[j], _mm512_set1_ps(scale)));                          \
                    }                                                                                                \
                }                                                                                                    \
                for (int64_t r = 0; r < R; r++) { /* softmax over the row's visible keys, then o = P V */           \
                    const int64_t i = i0 + r / G, h = kh * G + r % G, p = start + i;                                 \
                    const int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;                        \
                    float *sr = s + r * span - c0 * 16; /* indexed by key position */                               \
                    float m = sr[lo], sum = 0.f;                                                                     \
                    for (int64_t t = lo + 1; t <= p; t++) m = sr[t] > m ? sr[t] : m;                                 \
                    _Pragma("omp simd reduction(+ : sum)")                                                           \
                    for (int64_t t = lo; t <= p; t++) {                                                              \
                        sr[t] = expf(sr[t] - m);                                                                     \
                        sum += sr[t];                                                                                \
                    }                                                                                                \
                    const float inv = 1.f / sum;                                                                     \
                    float *dst = out + (i * H + h) * hd;                                                             \
                    switch (nd) { /* a constant count keeps the accumulators in registers */                         \
                    case 4: PV_ROW(4, T, LD16); break;                                                               \
                    case 8: PV_ROW(8, T, LD16); break;                                                               \
                    default: PV_ROW(nd, T, LD16); break;                                                             \
                    }                                                                                                \
                }                                                                                                    \
                free(s);                                                                                             \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    free(kt);                                                                                                        \
    return failed ? -1 : 0;                                                                                          \
}

PAGED_PREFILL(kaip_paged_prefill_f32, float, from_f32, ld16_f32)
PAGED_PREFILL(kaip_paged_prefill_bf16, uint16_t, from_bf16, ld16_bf16)
#else
int kaip_paged_prefill_f32(void) { return -2; }
int kaip_paged_prefill_bf16(void) { return -2; }
#endif
