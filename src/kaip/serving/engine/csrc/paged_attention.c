/* Attention read straight from the paged KV cache — keys and values taken block by block through a sequence's
 * block table, so nothing is gathered into a padded copy first: decode (one query token per sequence, portable C)
 * and prefill (a chunk of queries of one sequence, AVX-512; further below).
 *
 * Built by kaip.serving.engine.native (cc -O3 -march=native -fopenmp) and called through ctypes; OpenMP resolves to
 * the libgomp torch has already loaded, so this shares torch's thread pool instead of starting a second one.
 *
 * Decode layouts (contiguous):
 *   q, out      [n, H, hd] float32           queries of the n sequences; the attention output
 *   k, v        [num_blocks, bs, KVH, hd]    the layer's cache, float32 or bfloat16 (two functions below)
 *   tables      [n, max_blocks] int64        block ids, in order of position
 *   ctx, lo     [n] int64                    keys at positions lo .. ctx-1 are visible (lo > 0: sliding window)
 * One task per sequence walks each cache row (all KVH heads of one position: contiguous bytes) once for its keys
 * and once for its values; that streaming read is the cost of a decode step's attention. The value rows are
 * prefetched during the key pass, and P·V keeps its sums in registers where AVX-512 is there (`DECODE_PV`):
 * together a SmolLM2 decode step's attention 300 → 213 µs a layer (16 sequences of ~270 positions). Query heads
 * kvh * G .. kvh * G + G - 1 share key/value head kvh (grouped-query attention). Softmax is exact: scores go to a
 * scratch row per head, then max-subtracted. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "bf16.h"

static inline float from_f32(float x) { return x; }

/* The next block of a sequence is anywhere in the cache, so the hardware prefetcher cannot see it coming: while a
 * block's row t is used, row t of the next block is requested (measured: the loads of K and V rows were two
 * thirds of the kernel's time, waiting on memory). */
static inline void prefetch_row(const void *p, int64_t bytes) {
    for (int64_t c = 0; c < bytes; c += 64) __builtin_prefetch((const char *)p + c, 0, 0);
}

/* a row wanted again after a while (a value row, read by P·V once the scores are done): kept in all cache levels */
static inline void prefetch_row_kept(const void *p, int64_t bytes) {
    for (int64_t c = 0; c < bytes; c += 64) __builtin_prefetch((const char *)p + c, 0, 3);
}

#ifdef __AVX512F__
static inline __m512 f32x16_in(const float *p) { return _mm512_loadu_ps(p); }

/* Decode P·V with the accumulators in registers: for one kv head, NH (up to 4) of its query heads and 64 columns,
 * 4 * NH sums carried across every visible key, each value row widened once for the NH heads. The portable loop
 * read and wrote every head's output row at every key — stores, not memory, bounded it. The same FMAs in the same
 * key order: bit for bit the portable loop's result. */
#define DECODE_PV_TILE(NH, T, LD)                                                                                    \
    do {                                                                                                             \
        __m512 a[NH][4];                                                                                             \
        for (int g = 0; g < (NH); g++)                                                                               \
            for (int j = 0; j < 4; j++) a[g][j] = _mm512_setzero_ps();                                               \
        for (int64_t b = start / bs; b * bs < L; b++) {                                                              \
            const int64_t first = b * bs < start ? start - b * bs : 0, last = L - b * bs < bs ? L - b * bs : bs;      \
            const T *vb = v + table[b] * bs * row + col; /* in cache: prefetched during the key pass */            \
            for (int64_t t = first; t < last; t++) {                                                                 \
                const T *vp = vb + t * row;                                                                          \
                const __m512 x0 = LD(vp), x1 = LD(vp + 16), x2 = LD(vp + 32), x3 = LD(vp + 48);                      \
                const float *sp = scores + (b * bs + t - start) + h0 * len;                                          \
                for (int g = 0; g < (NH); g++) {                                                                     \
                    const __m512 w = _mm512_set1_ps(sp[g * len]);                                                    \
                    a[g][0] = _mm512_fmadd_ps(w, x0, a[g][0]);                                                       \
                    a[g][1] = _mm512_fmadd_ps(w, x1, a[g][1]);                                                       \
                    a[g][2] = _mm512_fmadd_ps(w, x2, a[g][2]);                                                       \
                    a[g][3] = _mm512_fmadd_ps(w, x3, a[g][3]);                                                       \
                }                                                                                                    \
            }                                                                                                        \
        }                                                                                                            \
        for (int g = 0; g < (NH); g++)                                                                               \
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(o + (h0 + g) * hd + c0 + 16 * j, a[g][j]);                \
    } while (0)

#define DECODE_PV(NAME, T, LD)                                                                                       \
static void NAME(const float *scores, int64_t len, const T *v, const int64_t *table, int64_t start, int64_t L,      \
                 int64_t bs, int64_t row, int64_t hd, int64_t G, int64_t KVH, float *o) {                            \
    for (int64_t kvh = 0; kvh < KVH; kvh++)                                                                          \
        for (int64_t c0 = 0; c0 < hd; c0 += 64)                                                                      \
            for (int64_t h0 = kvh * G; h0 < (kvh + 1) * G; h0 += 4) {                                                \
                const int64_t col = kvh * hd + c0, left = (kvh + 1) * G - h0;                                        \
                switch (left < 4 ? left : 4) {                                                                       \
                case 1: DECODE_PV_TILE(1, T, LD); break;                                                             \
                case 2: DECODE_PV_TILE(2, T, LD); break;                                                             \
                case 3: DECODE_PV_TILE(3, T, LD); break;                                                             \
                default: DECODE_PV_TILE(4, T, LD); break;                                                            \
                }                                                                                                    \
            }                                                                                                        \
}

DECODE_PV(decode_pv_f32, float, f32x16_in)
DECODE_PV(decode_pv_bf16, uint16_t, bf16x16_in)
#define DECODE_PV_FAST(FN) if (hd % 64 == 0) FN(scores, len, v, table, start, L, bs, row, hd, G, KVH, o); else
#else
#define DECODE_PV_FAST(FN)
#endif

#if defined(__AVX512F__) && defined(__AVX512BF16__)
/* Decode scores on bfloat16 dot products, for a bfloat16 cache (where a query is itself bfloat16 values): per key
 * and query head, hd / 32 `vdpbf16ps` leave 16 partial sums in a register (no horizontal sum per key, which took two
 * thirds of the portable loop's time with its single-lane adds and stores); sixteen keys' partials are then summed
 * across lanes together by a transpose-and-add tree (`hsum16`), sixteen scores a register. Each key row is read once
 * for its kv head's G query heads. Returns 0, or -2 where it does not apply (a query that is not bfloat16 values, a
 * head size that is not a multiple of 32, more than 8192 query values). */
#define DQ_MAX 8192

/* lane i = the sum of the 16 lanes of row i of v [16][16] (64-byte aligned); rows placed by DQ_ROW so lanes come out
 * in key order */
static const int DQ_ROW[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
static inline __m512 hsum16(const float *v) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) {
        const __m512 x = _mm512_load_ps(v + 16 * i), y = _mm512_load_ps(v + 16 * (i + 8));
        a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 4], 0x88), _mm512_shuffle_f32x4(a[i], a[i + 4], 0xDD));
    for (int i = 0; i < 2; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[i], b[i + 2], 0x44), _mm512_shuffle_ps(b[i], b[i + 2], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
}

static int decode_scores_bf16_dot(const float *qi, const uint16_t *k, const uint16_t *v, const int64_t *table,
                                  int64_t start, int64_t L, int64_t bs, int64_t row, int64_t hd, int64_t H, int64_t G,
                                  float scale, float *scores, int64_t len) {
    if (hd % 32 || H * hd > DQ_MAX) return -2;
    uint32_t qw[DQ_MAX / 2] __attribute__((aligned(64)));
    for (int64_t x = 0; x < H * hd; x += 2) {
        uint32_t a, b;
        memcpy(&a, qi + x, 4);
        memcpy(&b, qi + x + 1, 4);
        if ((a | b) & 0xFFFFu) return -2; /* not a bfloat16 value: the float32 path keeps its precision */
        qw[x / 2] = (a >> 16) | (b & 0xFFFF0000u);
    }
    const int64_t nw = hd / 32, KVH = H / G;
    /* partials [H][16 keys][16 lanes], then each key's row (K and V share the offsets) */
    float *part = aligned_alloc(64, (size_t)(H * 256) * sizeof(float) + (size_t)(len + 16) * sizeof(int64_t));
    if (!part) return -1;
    int64_t *at = (int64_t *)(part + H * 256);
    for (int64_t p = start, blk = start / bs, off = start % bs; p < L; p++) { /* block by block: no division */
        at[p - start] = (table[blk] * bs + off) * row;
        if (++off == bs) { off = 0; blk++; }
    }
    for (int64_t p0 = start; p0 < L; p0 += 16) {
        const int64_t cnt = L - p0 < 16 ? L - p0 : 16, base = p0 - start;
        for (int64_t t = 0; t < 16; t++) {
            float *pt = part + DQ_ROW[t] * 16;
            if (t >= cnt) {
                for (int64_t h = 0; h < H; h++) _mm512_store_ps(pt + h * 256, _mm512_setzero_ps());
                continue;
            }
            if (base + t + 16 < len) prefetch_row(k + at[base + t + 16], row * 2); /* the next group's row */
            prefetch_row_kept(v + at[base + t], row * 2); /* P·V's loads then wait on no memory */
            const uint16_t *kr = k + at[base + t];
            for (int64_t kh = 0; kh < KVH; kh++) {
                const uint16_t *kp = kr + kh * hd;
                for (int64_t g = 0; g < G; g++) {
                    const int64_t h = kh * G + g;
                    const uint32_t *qh = qw + h * hd / 2;
                    __m512 acc = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)_mm512_load_si512(qh),
                                                  (__m512bh)_mm512_loadu_si512(kp));
                    for (int64_t j = 1; j < nw; j++)
                        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_load_si512(qh + 16 * j),
                                               (__m512bh)_mm512_loadu_si512(kp + 32 * j));
                    _mm512_store_ps(pt + h * 256, acc);
                }
            }
        }
        const __mmask16 valid = (__mmask16)((1u << cnt) - 1);
        for (int64_t h = 0; h < H; h++)
            _mm512_mask_storeu_ps(scores + h * len + base, valid,
                                  _mm512_mul_ps(hsum16(part + h * 256), _mm512_set1_ps(scale)));
    }
    free(part);
    return 0;
}
#define DECODE_QK_FAST(T)                                                                                            \
    if (sizeof(T) == 2 && decode_scores_bf16_dot(qi, (const uint16_t *)k, (const uint16_t *)v, table, start, L, bs,  \
                                                 row, hd, H, G, scale, scores, len) == 0) {} else
#else
#define DECODE_QK_FAST(T)
#endif

#define PAGED_DECODE(NAME, T, LOAD, PV)                                                                                  \
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
        DECODE_QK_FAST(T)                                                                                            \
        for (int64_t b = start / bs; b * bs < L; b++) { /* block by block: no division per key */                   \
            const int64_t first = b * bs < start ? start - b * bs : 0, last = L - b * bs < bs ? L - b * bs : bs;      \
            const T *kb = k + table[b] * bs * row;                                                                   \
            const T *kn = (b + 1) * bs < L ? k + table[b + 1] * bs * row : NULL;                                     \
            const T *vb = v + table[b] * bs * row;                                                                   \
            for (int64_t t = first; t < last; t++) {                                                                 \
                const T *kr = kb + t * row;                                                                          \
                if (kn) prefetch_row(kn + t * row, row * (int64_t)sizeof(T));                                        \
                prefetch_row_kept(vb + t * row, row * (int64_t)sizeof(T)); /* P·V's loads then wait on no memory */ \
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
        DECODE_PV_FAST(PV)                                                                                           \
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

PAGED_DECODE(kaip_paged_decode_f32, float, from_f32, decode_pv_f32)
PAGED_DECODE(kaip_paged_decode_bf16, uint16_t, bf16_in, decode_pv_bf16)

/* Prefill attention of one chunk of a sequence — queries at positions start .. start+n-1 — over its paged keys
 * 0 .. start+n-1 (causal; with a window, the last `window` positions). The chunk's own K/V are already in the
 * cache. Written with AVX-512 because the score step must not end in a horizontal sum per (query, key, head), as
 * the decode loop above does: each kv head's keys are first transposed into 16-key tiles [hd][16] (float32), so
 * 16 scores of one query head are 16 lanes of one register built by hd broadcast-FMAs, eight query rows at a time;
 * values are widened once into a contiguous float32 copy for P·V (`PV_GROUP_BODY`, `pv_one`). Head sizes that are
 * a multiple of 16 up to 256; returns -2 otherwise (and where AVX-512 is missing), and the
 * caller uses torch's SDPA. q, out: [n, H, hd] of the cache's type, q's rows q_stride elements apart. A bfloat16
 * model's attention takes and gives bfloat16 as its projections do: widened here per task, rounded to nearest even
 * on the way out exactly as torch's float-to-bfloat16 conversion, so the caller needs neither copy. */
#ifdef __AVX512F__
#include <immintrin.h>

#define ROWS 8   /* query-head rows whose scores are built together: independent FMA chains */
#define QTILE 8  /* query positions per task */

/* o[g] = (sum over visible keys t of e[g][t] * V[t]) / sum[g] for GB query heads of one query position at once:
 * they share the key range and the value rows, so each row of V (float32, contiguous) is loaded once for GB heads.
 * ND 16-float chunks per head; constant counts keep the GB * ND accumulators in registers. */
#define PV_GROUP_BODY(ND, GB, EXS, INVS, DSTS)                                                               \
    do {                                                                                                             \
        __m512 o[GB][ND];                                                                                            \
        for (int64_t g = 0; g < (GB); g++)                                                                           \
            for (int64_t j = 0; j < (ND); j++) o[g][j] = _mm512_setzero_ps();                                        \
        for (int64_t t = lo; t <= p; t++) {                                                                          \
            const float *vr = vrows + t * hd;                                                                        \
            __m512 vv[ND];                                                                                           \
            for (int64_t j = 0; j < (ND); j++) vv[j] = _mm512_loadu_ps(vr + 16 * j);                                 \
            for (int64_t g = 0; g < (GB); g++) {                                                                     \
                const __m512 w = _mm512_set1_ps((EXS)[g][t]);                                                         \
                for (int64_t j = 0; j < (ND); j++) o[g][j] = _mm512_fmadd_ps(w, vv[j], o[g][j]);                     \
            }                                                                                                        \
        }                                                                                                            \
        for (int64_t g = 0; g < (GB); g++) {                                                                         \
            const __m512 inv = _mm512_set1_ps((INVS)[g]);                                                             \
            for (int64_t j = 0; j < (ND); j++) _mm512_storeu_ps((DSTS)[g] + 16 * j, _mm512_mul_ps(o[g][j], inv));     \
        }                                                                                                            \
    } while (0)

/* one query head at a time, for head sizes without a grouped variant: 64 columns at a time, four independent
 * accumulators (one alone would wait on its own FMA's latency at every key) */
static void pv_one(const float *vrows, int64_t hd, const float *ex, float inv, int64_t lo, int64_t p, float *dst) {
    int64_t c = 0;
    for (; c + 64 <= hd; c += 64) {
        __m512 o0 = _mm512_setzero_ps(), o1 = _mm512_setzero_ps(), o2 = _mm512_setzero_ps(), o3 = _mm512_setzero_ps();
        for (int64_t t = lo; t <= p; t++) {
            const __m512 w = _mm512_set1_ps(ex[t]);
            const float *vr = vrows + t * hd + c;
            o0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr), o0);
            o1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + 16), o1);
            o2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + 32), o2);
            o3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(vr + 48), o3);
        }
        const __m512 scale = _mm512_set1_ps(inv);
        _mm512_storeu_ps(dst + c, _mm512_mul_ps(o0, scale));
        _mm512_storeu_ps(dst + c + 16, _mm512_mul_ps(o1, scale));
        _mm512_storeu_ps(dst + c + 32, _mm512_mul_ps(o2, scale));
        _mm512_storeu_ps(dst + c + 48, _mm512_mul_ps(o3, scale));
    }
    for (; c < hd; c += 16) {
        __m512 o = _mm512_setzero_ps();
        for (int64_t t = lo; t <= p; t++)
            o = _mm512_fmadd_ps(_mm512_set1_ps(ex[t]), _mm512_loadu_ps(vrows + t * hd + c), o);
        _mm512_storeu_ps(dst + c, _mm512_mul_ps(o, _mm512_set1_ps(inv)));
    }
}

/* an output row of hd values (a multiple of 16), from the float32 accumulators */
static inline void store_f32_row(float *dst, const float *src, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static inline void store_bf16_row(uint16_t *dst, const float *src, int64_t n) {
    for (int64_t c = 0; c < n; c += 16) bf16x16_out(dst + c, _mm512_loadu_ps(src + c));
}

/* PV_GROUP over heads g .. g+GB-1 of the current query (shifted views of ex, invs, dst) */
#define PV_GROUP_AT(ND, GB, G0)                                                                                      \
    do {                                                                                                             \
        const float *const *exs = ex + (G0);                                                                         \
        const float *invp = invs + (G0);                                                                             \
        float *const *dsts = dst + (G0);                                                                             \
        PV_GROUP_BODY(ND, GB, exs, invp, dsts);                                                                      \
    } while (0)

/* PV_GROUP_AT over the columns COL .. COL + 16 * ND - 1 only: a wide head (256) in halves, so that two heads' 2 x 8
 * accumulators and a half row of V fit the 32 registers */
#define PV_GROUP_AT_COLS(ND, GB, G0, COL)                                                                            \
    do {                                                                                                             \
        const float *const *exs = ex + (G0);                                                                         \
        const float *invp = invs + (G0);                                                                             \
        float *dcol[GB];                                                                                             \
        for (int64_t x_ = 0; x_ < (GB); x_++) dcol[x_] = dst[(G0) + x_] + (COL);                                     \
        const float *vcol = vrows + (COL);                                                                           \
        {                                                                                                            \
            const float *vrows = vcol;                                                                               \
            PV_GROUP_BODY(ND, GB, exs, invp, dcol);                                                                  \
        }                                                                                                            \
    } while (0)

#define PAGED_PREFILL(NAME, T, LOAD, STORE)                                                                          \
int NAME(const T *q, int64_t q_stride, const T *k, const T *v, const int64_t *table, int64_t start, int64_t n,       \
         int64_t window, T *out, int64_t H, int64_t KVH, int64_t hd, int64_t bs, float scale, int nthreads) {        \
    if (hd % 16 || hd > 256) return -2;                                                                              \
    const int64_t G = H / KVH, row = KVH * hd, L = start + n, nchunks = (L + 15) / 16, nd = hd / 16;                 \
    /* keys transposed into 16-key tiles kt[kh][c][d][t]; values widened and made contiguous, vt[kh][pos][d] */    \
    float *kt = aligned_alloc(64, (size_t)(KVH * nchunks * hd * 16) * sizeof(float));                                \
    float *vt = aligned_alloc(64, (size_t)(KVH * nchunks * 16 * hd) * sizeof(float));                                \
    if (!kt || !vt) { free(kt); free(vt); return -1; }                                                               \
    int failed = 0;                                                                                                  \
    _Pragma("omp parallel num_threads(nthreads)")                                                                    \
    {                                                                                                                \
        _Pragma("omp for schedule(static)")                                                                          \
        for (int64_t c = 0; c < nchunks; c++) {                                                                      \
            for (int64_t t = 0; t < 16; t++) {                                                                       \
                const int64_t p = c * 16 + t;                                                                        \
                for (int64_t kh = 0; kh < KVH; kh++) {                                                               \
                    float *kd = kt + ((kh * nchunks + c) * hd) * 16 + t, *vd = vt + (kh * nchunks * 16 + p) * hd;    \
                    if (p >= L) {                                                                                    \
                        for (int64_t d = 0; d < hd; d++) kd[d * 16] = vd[d] = 0.f;                                   \
                        continue;                                                                                    \
                    }                                                                                                \
                    const int64_t slot = (table[p / bs] * bs + p % bs) * row + kh * hd;                              \
                    for (int64_t d = 0; d < hd; d++) kd[d * 16] = LOAD(k[slot + d]);                                 \
                    for (int64_t d = 0; d < hd; d++) vd[d] = LOAD(v[slot + d]);                                      \
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
                const float *vrows = vt + kh * nchunks * 16 * hd;                                                    \
                /* scores, then this task's query rows widened, then a float32 row per head for the output */       \
                float *s = malloc((size_t)(R * span + R * hd + 16 * hd) * sizeof(float));                            \
                if (!s) { failed = 1; continue; }                                                                    \
                float *qf = s + R * span, *of = qf + R * hd;                                                         \
                for (int64_t r = 0; r < R; r++) {                                                                    \
                    const T *qs = q + (i0 + r / G) * q_stride + (kh * G + r % G) * hd;                               \
                    for (int64_t d = 0; d < hd; d++) qf[r * hd + d] = LOAD(qs[d]);                                   \
                }                                                                                                    \
                for (int64_t r0 = 0; r0 < R; r0 += ROWS) { /* scores: rows r = (i - i0) * G + g */                  \
                    const int64_t nr = R - r0 < ROWS ? R - r0 : ROWS;                                                \
                    const float *qr[ROWS];                                                                           \
                    for (int64_t j = 0; j < ROWS; j++) qr[j] = qf + (r0 + (j < nr ? j : 0)) * hd;                    \
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
                for (int64_t i = i0; i < i1; i++) { /* per query: softmax of its G rows, then o = P V */            \
                    const int64_t p = start + i, lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;         \
                    const float *ex[16];                                                                             \
                    float invs[16];                                                                                  \
                    float *dst[16];                                                                                  \
                    for (int64_t g0 = 0; g0 < G; g0 += 16) {                                                         \
                        const int64_t gn = G - g0 < 16 ? G - g0 : 16;                                                \
                        for (int64_t g = 0; g < gn; g++) {                                                           \
                            float *sr = s + ((i - i0) * G + g0 + g) * span - c0 * 16; /* by key position */         \
                            float m = sr[lo], sum = 0.f;                                                             \
                            for (int64_t t = lo + 1; t <= p; t++) m = sr[t] > m ? sr[t] : m;                         \
                            _Pragma("omp simd reduction(+ : sum)")                                                   \
                            for (int64_t t = lo; t <= p; t++) {                                                      \
                                sr[t] = expf(sr[t] - m);                                                             \
                                sum += sr[t];                                                                        \
                            }                                                                                        \
                            ex[g] = sr;                                                                              \
                            invs[g] = 1.f / sum;                                                                     \
                            dst[g] = of + g * hd;                                                                    \
                        }                                                                                            \
                        int64_t g = 0;                                                                               \
                        if (nd == 4) {                                                                               \
                            for (; g + 4 <= gn; g += 4) PV_GROUP_AT(4, 4, g);                                        \
                            for (; g + 3 <= gn; g += 3) PV_GROUP_AT(4, 3, g);                                        \
                            for (; g + 2 <= gn; g += 2) PV_GROUP_AT(4, 2, g);                                        \
                        } else if (nd == 8) {                                                                        \
                            for (; g + 2 <= gn; g += 2) PV_GROUP_AT(8, 2, g);                                        \
                        } else if (nd == 16) {                                                                       \
                            for (; g + 2 <= gn; g += 2) {                                                            \
                                PV_GROUP_AT_COLS(8, 2, g, 0);                                                        \
                                PV_GROUP_AT_COLS(8, 2, g, 128);                                                      \
                            }                                                                                        \
                        }                                                                                            \
                        for (; g < gn; g++) pv_one(vrows, hd, ex[g], invs[g], lo, p, dst[g]);                        \
                        for (g = 0; g < gn; g++) STORE(out + (i * H + kh * G + g0 + g) * hd, of + g * hd, hd);       \
                    }                                                                                                \
                }                                                                                                    \
                free(s);                                                                                             \
            }                                                                                                        \
        }                                                                                                            \
    }                                                                                                                \
    free(kt);                                                                                                        \
    free(vt);                                                                                                        \
    return failed ? -1 : 0;                                                                                          \
}

PAGED_PREFILL(kaip_paged_prefill_f32, float, from_f32, store_f32_row)
PAGED_PREFILL(paged_prefill_bf16_widened, uint16_t, bf16_in, store_bf16_row)

#ifdef __AVX512BF16__
/* A bfloat16 model's prefill attention on the CPU's bfloat16 dot products (`vdpbf16ps`: 32 products a cycle where
 * float32 FMAs do 16), computed as torch's own CPU attention computes a bfloat16 SDPA (FlashAttentionKernel.cpp):
 * scores q·k from exact products summed in float32, softmax in float32, the probabilities rounded to bfloat16 for
 * P·V (summed in float32), divided by the float32 sum of the unrounded exponentials. A 256-token SmolLM2 layer
 * 1.13 → 0.73 ms (the FMA loops were ~80% of the widened kernel's time). KAIP_PREFILL_WIDENED=1 in the environment
 * keeps the widened float32 kernel (all float32 products and probabilities). Layouts, per kv head, made per call:
 *   kt [chunk][hd / 2][16]  a 16-key tile: lane t holds key t's pair (k[2j], k[2j + 1]) — one 32-bit word of the row
 *   vt [pos / 2][hd]        lane d holds (v[pos][d], v[pos + 1][d]): two positions' values of one column
 * so a score is 16 lanes × hd / 2 dot-pair steps, and P·V takes two keys per step. */
#define DP_ROWS 8   /* query-head rows scored together */
#define DP_QTILE 8  /* query positions per task */

static inline __m512 dp(__m512 acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }

/* P·V for NH heads (<= 4) of one query over key pairs pp0 .. pp1 - 1, 64 columns from col: 4 * NH sums in
 * registers. pw[g]: head g's probabilities as bfloat16 pairs (word i = keys 2 * (pp0 + i), + 1). */
static inline void dp_pv(const uint32_t *vt, int64_t hd, int64_t col, int64_t pp0, int64_t pp1, int NH,
                         const uint32_t *const *pw, const float *inv, uint16_t *const *dst) {
    __m512 a[4][4];
    for (int g = 0; g < 4; g++)
        for (int j = 0; j < 4; j++) a[g][j] = _mm512_setzero_ps();
    for (int64_t pp = pp0; pp < pp1; pp++) {
        const uint32_t *vr = vt + pp * hd + col;
        const __m512i v0 = _mm512_load_si512(vr), v1 = _mm512_load_si512(vr + 16), v2 = _mm512_load_si512(vr + 32),
                      v3 = _mm512_load_si512(vr + 48);
        const int64_t i = pp - pp0;
        switch (NH) { /* constant counts per case keep the sums in registers */
        case 4: { const __m512i w = _mm512_set1_epi32((int)pw[3][i]);
                  a[3][0] = dp(a[3][0], w, v0); a[3][1] = dp(a[3][1], w, v1);
                  a[3][2] = dp(a[3][2], w, v2); a[3][3] = dp(a[3][3], w, v3); } /* fall through */
        case 3: { const __m512i w = _mm512_set1_epi32((int)pw[2][i]);
                  a[2][0] = dp(a[2][0], w, v0); a[2][1] = dp(a[2][1], w, v1);
                  a[2][2] = dp(a[2][2], w, v2); a[2][3] = dp(a[2][3], w, v3); } /* fall through */
        case 2: { const __m512i w = _mm512_set1_epi32((int)pw[1][i]);
                  a[1][0] = dp(a[1][0], w, v0); a[1][1] = dp(a[1][1], w, v1);
                  a[1][2] = dp(a[1][2], w, v2); a[1][3] = dp(a[1][3], w, v3); } /* fall through */
        default: { const __m512i w = _mm512_set1_epi32((int)pw[0][i]);
                   a[0][0] = dp(a[0][0], w, v0); a[0][1] = dp(a[0][1], w, v1);
                   a[0][2] = dp(a[0][2], w, v2); a[0][3] = dp(a[0][3], w, v3); }
        }
    }
    for (int g = 0; g < NH; g++) {
        const __m512 r = _mm512_set1_ps(inv[g]);
        for (int j = 0; j < 4; j++) bf16x16_out(dst[g] + col + 16 * j, _mm512_mul_ps(a[g][j], r));
    }
}

static int paged_prefill_bf16_dot(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                                  const int64_t *table, int64_t start, int64_t n, int64_t window, uint16_t *out,
                                  int64_t H, int64_t KVH, int64_t hd, int64_t bs, float scale, int nthreads) {
    const int64_t G = H / KVH, row = KVH * hd, L = start + n, nchunks = (L + 15) / 16, hw = hd / 2;
    const int64_t npairs = (nchunks * 16) / 2;
    uint32_t *kt = aligned_alloc(64, (size_t)(KVH * nchunks * hw * 16) * sizeof(uint32_t));
    uint32_t *vt = aligned_alloc(64, (size_t)(KVH * npairs * hd) * sizeof(uint32_t));
    if (!kt || !vt) { free(kt); free(vt); return -1; }
    int failed = 0;
    _Pragma("omp parallel num_threads(nthreads)")
    {
        _Pragma("omp for schedule(static)")
        for (int64_t c = 0; c < nchunks; c++) {
            for (int64_t t = 0; t < 16; t++) {
                const int64_t p = c * 16 + t;
                for (int64_t kh = 0; kh < KVH; kh++) {
                    uint32_t *kd = kt + ((kh * nchunks + c) * hw) * 16 + t;
                    if (p >= L) {
                        for (int64_t j = 0; j < hw; j++) kd[j * 16] = 0;
                        continue;
                    }
                    const uint32_t *kw = (const uint32_t *)(k + (table[p / bs] * bs + p % bs) * row + kh * hd);
                    for (int64_t j = 0; j < hw; j++) kd[j * 16] = kw[j];
                }
            }
        }
        _Pragma("omp for schedule(static)")
        for (int64_t pp = 0; pp < npairs; pp++) {
            const int64_t p0 = 2 * pp, p1 = p0 + 1;
            for (int64_t kh = 0; kh < KVH; kh++) {
                uint32_t *vd = vt + (kh * npairs + pp) * hd;
                const uint16_t *v0 = p0 < L ? v + (table[p0 / bs] * bs + p0 % bs) * row + kh * hd : NULL;
                const uint16_t *v1 = p1 < L ? v + (table[p1 / bs] * bs + p1 % bs) * row + kh * hd : NULL;
                for (int64_t d = 0; d < hd; d++)
                    vd[d] = (v0 ? (uint32_t)v0[d] : 0u) | (v1 ? (uint32_t)v1[d] << 16 : 0u);
            }
        }
        const int64_t ntiles = (n + DP_QTILE - 1) / DP_QTILE;
        _Pragma("omp for collapse(2) schedule(dynamic, 1)")
        for (int64_t kh = 0; kh < KVH; kh++) {
            for (int64_t tile = 0; tile < ntiles; tile++) {
                const int64_t i0 = tile * DP_QTILE, i1 = i0 + DP_QTILE < n ? i0 + DP_QTILE : n;
                const int64_t pmax = start + i1 - 1, pmin = start + i0;
                const int64_t kmin = window > 0 && pmin - window + 1 > 0 ? pmin - window + 1 : 0;
                const int64_t c0 = kmin / 16, c1 = pmax / 16 + 1, span = (c1 - c0) * 16;
                const int64_t R = (i1 - i0) * G;
                /* scores [R][span] float32, then each row's probabilities as bfloat16 [R][span] (pairs aligned
                 * with the chunks: span and c0 * 16 are even) */
                float *s = malloc((size_t)(R * span) * sizeof(float) + (size_t)(R * span) * sizeof(uint16_t) + 64);
                if (!s) { failed = 1; continue; }
                uint16_t *pb = (uint16_t *)(s + R * span);
                for (int64_t r0 = 0; r0 < R; r0 += DP_ROWS) {
                    const int64_t nr = R - r0 < DP_ROWS ? R - r0 : DP_ROWS;
                    const uint32_t *qr[DP_ROWS];
                    for (int64_t j = 0; j < DP_ROWS; j++) {
                        const int64_t r = r0 + (j < nr ? j : 0);
                        qr[j] = (const uint32_t *)(q + (i0 + r / G) * q_stride + (kh * G + r % G) * hd);
                    }
                    for (int64_t c = c0; c < c1; c++) {
                        const uint32_t *kc = kt + ((kh * nchunks + c) * hw) * 16;
                        __m512 acc[DP_ROWS];
                        for (int64_t j = 0; j < DP_ROWS; j++) acc[j] = _mm512_setzero_ps();
                        for (int64_t d = 0; d < hw; d++) {
                            const __m512i kv = _mm512_load_si512(kc + d * 16);
                            for (int64_t j = 0; j < DP_ROWS; j++)
                                acc[j] = dp(acc[j], _mm512_set1_epi32((int)qr[j][d]), kv);
                        }
                        for (int64_t j = 0; j < nr; j++)
                            _mm512_storeu_ps(s + (r0 + j) * span + (c - c0) * 16,
                                             _mm512_mul_ps(acc[j], _mm512_set1_ps(scale)));
                    }
                }
                for (int64_t i = i0; i < i1; i++) {
                    const int64_t p = start + i, lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
                    const int64_t pp0 = lo / 2, pp1 = p / 2 + 1; /* key pairs holding lo .. p */
                    const uint32_t *pw[4];
                    float invs[4];
                    uint16_t *dst[4];
                    for (int64_t g0 = 0; g0 < G; g0 += 4) {
                        const int gn = G - g0 < 4 ? (int)(G - g0) : 4;
                        for (int g = 0; g < gn; g++) {
                            const int64_t r = (i - i0) * G + g0 + g;
                            float *sr = s + r * span - c0 * 16; /* by key position */
                            uint16_t *pr = pb + r * span - c0 * 16;
                            float m = sr[lo], sum = 0.f;
                            for (int64_t t = lo + 1; t <= p; t++) m = sr[t] > m ? sr[t] : m;
                            _Pragma("omp simd reduction(+ : sum)")
                            for (int64_t t = lo; t <= p; t++) {
                                sr[t] = expf(sr[t] - m);
                                sum += sr[t];
                            }
                            for (int64_t t = 2 * pp0; t < 2 * pp1; t++)
                                pr[t] = t < lo || t > p ? 0 : bf16_out(sr[t]);
                            pw[g] = (const uint32_t *)(pr + 2 * pp0);
                            invs[g] = 1.f / sum;
                            dst[g] = out + (i * H + kh * G + g0 + g) * hd;
                        }
                        for (int64_t col = 0; col < hd; col += 64)
                            dp_pv(vt + kh * npairs * hd, hd, col, pp0, pp1, gn, pw, invs, dst);
                    }
                }
                free(s);
            }
        }
    }
    free(kt);
    free(vt);
    return failed ? -1 : 0;
}
#endif

/* a bfloat16 cache: on bfloat16 dot products where the CPU has them and the head size is a multiple of 64 */
int kaip_paged_prefill_bf16(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                            const int64_t *table, int64_t start, int64_t n, int64_t window, uint16_t *out, int64_t H,
                            int64_t KVH, int64_t hd, int64_t bs, float scale, int nthreads) {
#ifdef __AVX512BF16__
    if (hd % 64 == 0 && hd <= 256 && !getenv("KAIP_PREFILL_WIDENED"))
        return paged_prefill_bf16_dot(q, q_stride, k, v, table, start, n, window, out, H, KVH, hd, bs, scale,
                                      nthreads);
#endif
    return paged_prefill_bf16_widened(q, q_stride, k, v, table, start, n, window, out, H, KVH, hd, bs, scale,
                                      nthreads);
}
#else
int kaip_paged_prefill_f32(void) { return -2; }
int kaip_paged_prefill_bf16(void) { return -2; }
#endif
