/* Multi-head attention against a KV cache, single pass with online softmax.
 *
 * q, out:     [n_tokens][n_heads][head_dim]
 * k/v cache:  [n_kv_heads][kv_stride][head_dim]
 *
 * Work is split into tiles of queries that share a KV head: up to
 * ATTN_MAX_Q (query head, token) pairs of one GQA group. A tile walks the KV
 * rows in chunks of ATTN_CHUNK positions: each K row of the chunk is scored
 * against every query of the tile, the chunk's scores update each query's
 * running max m / running sum l (rescaling its accumulator once per chunk),
 * then each V row is accumulated into every query. So a K/V row comes from
 * memory once per tile; re-reads by the other queries hit L1.
 *
 * Scratch is on the stack: ATTN_ACC_FLOATS accumulator floats. A tile holds
 * min(ATTN_MAX_Q, ATTN_ACC_FLOATS / head_dim) queries (32 for head_dim <= 256,
 * e.g. 8 heads x 4 tokens, or 32 tokens of one head); a bigger group is split
 * into several tiles, which then re-read K/V. head_dim must be a multiple of 4
 * and <= ATTN_ACC_FLOATS. */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

#define ATTN_ACC_FLOATS 8192 /* 32 KB */
#define ATTN_MAX_Q 32
#define ATTN_CHUNK 16

typedef struct {
    const float *q; /* query vector */
    float *out;
    int n_pos;      /* attends to cache positions [0, n_pos) */
    float m, l;     /* running max and running sum of exp(score - m) */
} attn_query;

/* Always 1; a never-taken branch on it ends a basic block without a loop
 * back-edge (see gemm_q8_0.c): Cranelift keeps a block's loads live at once,
 * and each back-edge carries an epoch check that spills the v128 values live
 * across it. */
static const volatile int32_t split_basic_block = 1;

#define DOT_STEP(d)                                                                 \
    do {                                                                            \
        v128_t qv = wasm_v128_load(q + (d));                                        \
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(qv, wasm_v128_load(k0 + (d))));      \
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(qv, wasm_v128_load(k1 + (d))));      \
        a2 = wasm_f32x4_add(a2, wasm_f32x4_mul(qv, wasm_v128_load(k2 + (d))));      \
        a3 = wasm_f32x4_add(a3, wasm_f32x4_mul(qv, wasm_v128_load(k3 + (d))));      \
    } while (0)

/* scores of one query against 4 consecutive K rows -> f32x4; 16 dims per
 * iteration in two basic blocks of 8 */
static inline v128_t dot_4rows(const float *q, const float *k, int head_dim) {
    v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0;
    const float *k0 = k, *k1 = k + head_dim, *k2 = k + 2 * head_dim, *k3 = k + 3 * head_dim;
    int d = 0;
    for (; d + 32 <= head_dim; d += 32) {
        DOT_STEP(d);
        DOT_STEP(d + 4);
        if (!split_basic_block) break;
        DOT_STEP(d + 8);
        DOT_STEP(d + 12);
        if (!split_basic_block) break;
        DOT_STEP(d + 16);
        DOT_STEP(d + 20);
        if (!split_basic_block) break;
        DOT_STEP(d + 24);
        DOT_STEP(d + 28);
    }
    for (; d < head_dim; d += 4) DOT_STEP(d);
    return hsum4_f32x4(a0, a1, a2, a3);
}

static inline float dot_1row(const float *q, const float *k, int head_dim) {
    v128_t a = wasm_f32x4_splat(0.0f);
    for (int d = 0; d < head_dim; d += 4)
        a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_v128_load(q + d), wasm_v128_load(k + d)));
    return hsum_f32x4(a);
}

/* s[0..nj) = scale * q.k_j for the chunk; positions >= n_valid get -inf. */
static void score_chunk(const float *q, const float *k, int head_dim, int nj, int n_valid,
                        float scale, float *s) {
    int j = 0;
    for (; j + 4 <= nj; j += 4)
        wasm_v128_store(s + j, wasm_f32x4_mul(dot_4rows(q, k + (size_t)j * head_dim, head_dim),
                                              wasm_f32x4_splat(scale)));
    for (; j < nj; j++) s[j] = scale * dot_1row(q, k + (size_t)j * head_dim, head_dim);
    for (j = n_valid < 0 ? 0 : n_valid; j < nj; j++) s[j] = -__builtin_inff();
}

/* Online-softmax update for one query: turns s[] into probabilities relative
 * to the new running max and returns the factor the accumulator must be
 * rescaled by. */
static float softmax_chunk(attn_query *qr, float *s) {
    v128_t vm = wasm_f32x4_splat(-__builtin_inff());
    for (int j = 0; j < ATTN_CHUNK; j += 4) vm = wasm_f32x4_max(vm, wasm_v128_load(s + j));
    float cm = hmax_f32x4(vm);
    float m_new = cm > qr->m ? cm : qr->m;
    /* exp(-inf) is 0 for both the masked scores and the first chunk's m */
    float corr = qr->m == m_new ? 1.0f : borda_expf(qr->m - m_new);
    v128_t vmn = wasm_f32x4_splat(m_new), vs = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < ATTN_CHUNK; j += 4) {
        v128_t p = exp_f32x4(wasm_f32x4_sub(wasm_v128_load(s + j), vmn));
        wasm_v128_store(s + j, p);
        vs = wasm_f32x4_add(vs, p);
    }
    qr->l = qr->l * corr + hsum_f32x4(vs);
    qr->m = m_new;
    return corr;
}

#define ACC_ROW(i)                                                                  \
    do {                                                                            \
        v128_t pj = wasm_i32x4_shuffle(pv, pv, i, i, i, i);                         \
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(pj, wasm_v128_load(vj + i * head_dim)));     \
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(pj, wasm_v128_load(vj + i * head_dim + 4))); \
    } while (0)

/* acc = acc * corr + sum_j p[j] * v_j, 8 dims (2 vectors) at a time across
 * the chunk's V rows. */
static void accumulate_v(float *acc, float corr, const float *p, const float *v, int nj,
                         int head_dim) {
    v128_t vc = wasm_f32x4_splat(corr);
    int d = 0;
    for (; d + 8 <= head_dim; d += 8) {
        v128_t a0 = wasm_f32x4_mul(wasm_v128_load(acc + d), vc);
        v128_t a1 = wasm_f32x4_mul(wasm_v128_load(acc + d + 4), vc);
        const float *vd = v + d;
        int j = 0;
        for (; j + 16 <= nj; j += 16) { /* 16 V rows per iteration, 4 per basic block */
            const float *vj = vd + (size_t)j * head_dim;
            v128_t pv = wasm_v128_load(p + j);
            ACC_ROW(0); ACC_ROW(1); ACC_ROW(2); ACC_ROW(3);
            if (!split_basic_block) break;
            vj += 4 * head_dim;
            pv = wasm_v128_load(p + j + 4);
            ACC_ROW(0); ACC_ROW(1); ACC_ROW(2); ACC_ROW(3);
            if (!split_basic_block) break;
            vj += 4 * head_dim;
            pv = wasm_v128_load(p + j + 8);
            ACC_ROW(0); ACC_ROW(1); ACC_ROW(2); ACC_ROW(3);
            if (!split_basic_block) break;
            vj += 4 * head_dim;
            pv = wasm_v128_load(p + j + 12);
            ACC_ROW(0); ACC_ROW(1); ACC_ROW(2); ACC_ROW(3);
        }
        for (; j + 4 <= nj; j += 4) {
            const float *vj = vd + (size_t)j * head_dim;
            v128_t pv = wasm_v128_load(p + j);
            ACC_ROW(0); ACC_ROW(1); ACC_ROW(2); ACC_ROW(3);
        }
        for (; j < nj; j++) {
            v128_t pj = wasm_f32x4_splat(p[j]);
            const float *vj = vd + (size_t)j * head_dim;
            a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(pj, wasm_v128_load(vj)));
            a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(pj, wasm_v128_load(vj + 4)));
        }
        wasm_v128_store(acc + d, a0);
        wasm_v128_store(acc + d + 4, a1);
    }
    for (; d < head_dim; d += 4) {
        v128_t a = wasm_f32x4_mul(wasm_v128_load(acc + d), vc);
        for (int j = 0; j < nj; j++)
            a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_f32x4_splat(p[j]),
                                                 wasm_v128_load(v + (size_t)j * head_dim + d)));
        wasm_v128_store(acc + d, a);
    }
}

/* One tile: nq queries against the same K/V head. */
static void attend_tile(attn_query *qs, int nq, const float *k, const float *v, int head_dim,
                        float scale, float *acc) {
    int n_pos = 0;
    for (int i = 0; i < nq; i++) {
        n_pos = qs[i].n_pos > n_pos ? qs[i].n_pos : n_pos;
        qs[i].m = -__builtin_inff();
        qs[i].l = 0.0f;
    }
    for (int i = 0; i < nq * head_dim; i++) acc[i] = 0.0f;
    float s[ATTN_MAX_Q][ATTN_CHUNK];
    for (int j0 = 0; j0 < n_pos; j0 += ATTN_CHUNK) {
        int nj = n_pos - j0 < ATTN_CHUNK ? n_pos - j0 : ATTN_CHUNK;
        const float *kc = k + (size_t)j0 * head_dim;
        const float *vc = v + (size_t)j0 * head_dim;
        for (int i = 0; i < nq; i++) {
            if (qs[i].n_pos <= j0) continue; /* fully masked chunk */
            for (int j = nj; j < ATTN_CHUNK; j++) s[i][j] = -__builtin_inff();
            score_chunk(qs[i].q, kc, head_dim, nj, qs[i].n_pos - j0, scale, s[i]);
        }
        for (int i = 0; i < nq; i++) {
            if (qs[i].n_pos <= j0) continue;
            float corr = softmax_chunk(&qs[i], s[i]);
            accumulate_v(acc + (size_t)i * head_dim, corr, s[i], vc, nj, head_dim);
        }
    }
    for (int i = 0; i < nq; i++) {
        const float *a = acc + (size_t)i * head_dim;
        float inv = qs[i].l > 0.0f ? 1.0f / qs[i].l : 0.0f;
        for (int d = 0; d < head_dim; d += 4)
            wasm_v128_store(qs[i].out + d,
                            wasm_f32x4_mul(wasm_v128_load(a + d), wasm_f32x4_splat(inv)));
    }
}

void attention(const float *q, const float *k_cache, const float *v_cache, float *out,
               int n_tokens, int n_heads, int n_kv_heads, int head_dim, int kv_stride, int pos0,
               int n_kv, int causal, float scale) {
    int group = n_heads / n_kv_heads;
    int max_q = ATTN_ACC_FLOATS / head_dim;
    if (max_q > ATTN_MAX_Q) max_q = ATTN_MAX_Q;
    if (max_q < 1) return; /* head_dim > ATTN_ACC_FLOATS: unsupported */
    int tile_heads = group < max_q ? group : max_q;
    int tile_tokens = max_q / tile_heads;
    float acc[ATTN_ACC_FLOATS];
    attn_query qs[ATTN_MAX_Q];
    for (int g = 0; g < n_kv_heads; g++) {
        const float *k = k_cache + (size_t)g * kv_stride * head_dim;
        const float *v = v_cache + (size_t)g * kv_stride * head_dim;
        for (int h0 = 0; h0 < group; h0 += tile_heads) {
            int nh = group - h0 < tile_heads ? group - h0 : tile_heads;
            for (int t0 = 0; t0 < n_tokens; t0 += tile_tokens) {
                int nt = n_tokens - t0 < tile_tokens ? n_tokens - t0 : tile_tokens;
                int nq = 0;
                for (int t = t0; t < t0 + nt; t++) {
                    for (int h = g * group + h0; h < g * group + h0 + nh; h++) {
                        size_t o = ((size_t)t * n_heads + h) * head_dim;
                        qs[nq].q = q + o;
                        qs[nq].out = out + o;
                        qs[nq].n_pos = causal ? pos0 + t + 1 : n_kv;
                        nq++;
                    }
                }
                attend_tile(qs, nq, k, v, head_dim, scale, acc);
            }
        }
    }
}
