/* Multi-head attention against a KV cache, blockwise with online softmax.
 *
 * q, out:     [n_tokens][n_heads][head_dim]
 * k/v cache:  [n_kv_heads][kv_stride][head_dim]
 *
 * Work is split into tiles of queries that share a KV head: up to
 * ATTN_MAX_Q (query head, token) pairs of one GQA group (a decode step of a
 * model with 3 query heads per KV head is one tile of 3 queries per KV head).
 * A tile walks the KV rows in blocks of ATTN_BLK positions:
 *   0. warm: one load per 64-byte line of the block's K and V rows, a
 *      prefetch (see warm_kv);
 *   1. scores: the tile's queries four at a time as a small matrix product
 *      (register tile of 4 queries x 8 positions, from the queries broadcast
 *      per dim and the block's K transposed: no horizontal sums); the rest
 *      (all of a decode step's 1 to 3) one at a time, each taking the 4 dot
 *      products of a group of 4 K rows while that 1 KB of K is in L1;
 *   2. softmax: per query, the block's max updates the running max m; the
 *      probabilities exp(s - m) go, each broadcast to a full vector, to a
 *      buffer P; the running sum l and the accumulator are rescaled once per
 *      block;
 *   3. values: for each chunk of 16 V rows, 4 queries x 8 dims at a time
 *      (the rest: one query x 16 dims) add their probability-weighted rows to
 *      their accumulators.
 * So a K/V row comes from memory once per tile. The 4-query kernels keep 8
 * independent sums, twice the FMA latency x ports; measured on MiniLM's
 * attention (12 heads x 128 tokens x 32 dims) 10.6 -> 12.6 GMAC/s, on
 * SmolLM2-135M's 512-token prefill 12.9 -> 15.2.
 *
 * Code shape (Wasmtime/Cranelift on x86-64; see gemm_q8_0.c): the inner
 * kernels are straight-line code for head_dim 32, 64 and 128 (a generic version
 * serves other sizes), cut into basic blocks of <= ~12 loads by never-taken
 * branches on split_basic_block, with no vector value live across a loop
 * back-edge (each back-edge carries an epoch check, across which Cranelift
 * spills every live v128). All exits of such a block must branch to one and
 * the same block: otherwise LLVM gives each exit its own copy of the code
 * after it, and Cranelift then computes the block's arithmetic in its
 * successors instead. Loads use constant offsets from one base pointer, which
 * fold into the x86 addressing mode. Products are accumulated with
 * f32x4.relaxed_madd (one vfmadd where the engine has FMA, else mul + add).
 *
 * Scratch is on the stack (~360 KB): ATTN_ACC_FLOATS accumulator floats, the
 * score and probability blocks, a block of K transposed and the broadcast
 * queries. A tile holds min(ATTN_MAX_Q, ATTN_ACC_FLOATS / head_dim) queries
 * (32 for head_dim <= 256, e.g. 8 heads x 4 tokens, or 32 tokens of one head);
 * a bigger group is split into several tiles, which then re-read K/V.
 * head_dim must be a multiple of 4 and <= ATTN_ACC_FLOATS. */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

#define ATTN_ACC_FLOATS 8192 /* 32 KB */
#define ATTN_MAX_Q 32
#define ATTN_BLK 256 /* positions per block: scores 32 KB, broadcast probabilities 128 KB */
#define ATTN_VCHUNK 16 /* V rows per accumulation kernel call */
/* floats per row of K^T: one cache line more than 1 KB, whose stride would put all of a
 * 4-column group's rows in 4 of L1's 64 sets (8 ways), evicting each other. */
#define ATTN_KT_STRIDE (ATTN_BLK + 16)
#define ATTN_QUAD_DIMS 128 /* head_dim up to which queries go 4 at a time (K^T <= 128 KB) */

/* a * b + c, fused where the engine has FMA. Cranelift's x86 FMA overwrites
 * its first operand: pass the value that dies there (a freshly loaded one),
 * not the accumulator or a reused one, or it copies it first. */
#define MADD(a, b, c) wasm_f32x4_relaxed_madd(a, b, c)

typedef struct {
    const float *q; /* query vector */
    float *out;
    int n_pos;      /* attends to cache positions [0, n_pos) */
    float m, l;     /* running max and running sum of exp(score - m) */
} attn_query;

/* The kernels below fully unroll their head_dim loops, which only works for a
 * constant head_dim: the generic instance (attend_tile_any) keeps the loops. */
#pragma clang diagnostic ignored "-Wpass-failed"

/* Prefetch pass: reads one float of each 64-byte line of the block's K rows
 * a[0..n) and V rows b[0..n), alternating between the two. Wasm has no
 * prefetch instruction; these are plain loads whose values are dropped (kept
 * by volatile, and by Cranelift since a load may trap). A loop of independent
 * loads keeps many cache misses in flight and the hardware prefetchers busy;
 * the compute passes, which consume a line every ~40 instructions, leave the
 * DRAM latency exposed instead. Measured on the attention of one decode step
 * of a SmolLM2-135M-shaped model (30 layers, 577 positions, K/V in DRAM):
 * 4.4 ms without this pass, 2.8 with it (3.1 with separate K and V passes);
 * 1.6 without it when K/V are in cache. */
static void warm_kv(const float *a, const float *b, int n) {
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int l = 0; l < 64; l += 16) {
            (void)*(volatile const float *)(a + i + l);
            (void)*(volatile const float *)(b + i + l);
        }
    for (; i < n; i += 16) {
        (void)*(volatile const float *)(a + i);
        (void)*(volatile const float *)(b + i);
    }
}

/* How many of the block's nj positions (from j0) any of the 4 queries at qs sees. */
static inline int quad_positions(const attn_query *qs, int j0, int nj) {
    int n = 0;
    for (int i = 0; i < 4; i++) n = qs[i].n_pos - j0 > n ? qs[i].n_pos - j0 : n;
    return n < nj ? n : nj;
}

/* ---------------------------------------------------------------------------
 * pass 1: scores
 * ------------------------------------------------------------------------- */

#define DOT_STEP(d)                                                                 \
    do {                                                                            \
        v128_t qv = wasm_v128_load(q + (d));                                        \
        a0 = MADD(wasm_v128_load(k + (d)), qv, a0);                                 \
        a1 = MADD(wasm_v128_load(k + hd + (d)), qv, a1);                            \
        a2 = MADD(wasm_v128_load(k + 2 * hd + (d)), qv, a2);                        \
        a3 = MADD(wasm_v128_load(k + 3 * hd + (d)), qv, a3);                        \
    } while (0)

/* scale * (q . k_r) for the 4 consecutive K rows at k -> f32x4; 8 dims (10
 * loads) per basic block. */
static inline __attribute__((always_inline)) v128_t dot_4rows(const float *q, const float *k,
                                                              const int hd, v128_t vscale) {
    v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0, a2 = a0, a3 = a0;
    /* (every early exit must jump to the same block: see split_basic_block) */
#pragma clang loop unroll(full)
    for (int d = 0; d + 8 <= hd; d += 8) {
        if (d > 0 && !split_basic_block) break;
        DOT_STEP(d);
        DOT_STEP(d + 4);
    }
    if (hd % 8) DOT_STEP(hd - 4);
    return wasm_f32x4_mul(hsum4_f32x4(a0, a1, a2, a3), vscale);
}

static inline float dot_1row(const float *q, const float *k, int hd) {
    v128_t a = wasm_f32x4_splat(0.0f);
    for (int d = 0; d < hd; d += 4)
        a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_v128_load(q + d), wasm_v128_load(k + d)));
    return hsum_f32x4(a);
}

/* Kt[d][j] = k_j[d] for the block's rows k_0..k_(nj-1), in rows of
 * ATTN_KT_STRIDE floats, zero from nj up to a multiple of 8 (score_4x8's step). */
static inline __attribute__((always_inline)) void transpose_k(const float *k, int nj, float *kt,
                                                              const int hd) {
    v128_t zero = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < ((nj + 7) & ~7); j += 4) {
        for (int d = 0; d < hd; d += 4) {
            v128_t x[4];
            for (int i = 0; i < 4; i++)
                x[i] = j + i < nj ? wasm_v128_load(k + (size_t)(j + i) * hd + d) : zero;
            transpose4(x);
            float *o = kt + (size_t)d * ATTN_KT_STRIDE + j;
            for (int i = 0; i < 4; i++) wasm_v128_store(o + i * ATTN_KT_STRIDE, x[i]);
        }
    }
}

/* qb[4d + i] = q_i[d] in all lanes, for the 4 queries at qs. */
static void broadcast_quad(const attn_query *qs, v128_t *qb, int hd) {
    for (int i = 0; i < 4; i++)
        for (int d = 0; d < hd; d += 4) {
            v128_t x = wasm_v128_load(qs[i].q + d);
            for (int e = 0; e < 4; e++) qb[4 * (d + e) + i] = splat_lane(x, e);
        }
}

/* The 4-query register tile of passes 1 and 3: for e < n,
 *   a[i][h] += b(i, e) * y(e)[4h .. 4h+4)     (i < 4, h < 2)
 * with b(i, e) the broadcast vector at b + 4 * (e * b_step + i * b_row) and
 * y(e) the 8 floats at y + e * y_step. Per step, 2 y loads and 4 b loads feed
 * 8 FMAs on 8 independent sums (enough for the FMA latency, 4 cycles x 2
 * ports), one step per basic block. */
static inline __attribute__((always_inline)) void madd_4x8(v128_t a[4][2], const float *b,
                                                           const int b_step, const int b_row,
                                                           const float *y, const int y_step,
                                                           const int n) {
#pragma clang loop unroll(full)
    for (int e = 0; e < n; e++) {
        if (e > 0 && !split_basic_block) break;
        v128_t y0 = wasm_v128_load(y + e * y_step), y1 = wasm_v128_load(y + e * y_step + 4);
#pragma clang loop unroll(full)
        for (int i = 0; i < 4; i++) {
            v128_t bi = wasm_v128_load(b + 4 * (e * b_step + i * b_row));
            a[i][0] = MADD(bi, y0, a[i][0]);
            a[i][1] = MADD(bi, y1, a[i][1]);
        }
    }
}

/* s_i[0..8) = scale * q_i . k_j for 4 queries (qb[4d + i] = q_i[d] broadcast)
 * and the 8 positions whose transposed K columns start at kt, with no
 * horizontal sums. Score row i is s + i * ATTN_BLK. */
static inline __attribute__((always_inline)) void score_4x8(const v128_t *qb, const float *kt,
                                                            float *s, const int hd,
                                                            v128_t vscale) {
    v128_t a[4][2];
    for (int i = 0; i < 4; i++) a[i][0] = a[i][1] = wasm_f32x4_splat(0.0f);
    madd_4x8(a, (const float *)qb, 4, 1, kt, ATTN_KT_STRIDE, hd);
    for (int i = 0; i < 4; i++) {
        wasm_v128_store(s + i * ATTN_BLK, wasm_f32x4_mul(a[i][0], vscale));
        wasm_v128_store(s + i * ATTN_BLK + 4, wasm_f32x4_mul(a[i][1], vscale));
    }
}

/* S[i][0..nj) = scale * q_i . k_(j0+j) for the queries that see position j0
 * (rows past a query's n_pos may be scored too: they are masked later):
 * queries [0, nquad) four at a time (broadcast in QB, K's block transposed in
 * Kt), the others one at a time. */
static inline __attribute__((always_inline)) void score_block(const attn_query *qs, int nq,
                                                              int nquad, const v128_t *QB,
                                                              const float *k, const float *Kt,
                                                              int j0, int nj, float scale,
                                                              float *S, const int hd) {
    v128_t vscale = wasm_f32x4_splat(scale);
    for (int i = 0; i < nquad; i += 4) {
        int lim = quad_positions(qs + i, j0, nj);
        const v128_t *qb = QB + (size_t)i * hd;
        OPAQUE(qb);
        for (int j = 0; j < lim; j += 8) score_4x8(qb, Kt + j, S + i * ATTN_BLK + j, hd, vscale);
    }
    int j = 0;
    for (; j + 4 <= nj; j += 4) {
        const float *kj = k + (size_t)(j0 + j) * hd;
        for (int i = nquad; i < nq; i++)
            if (qs[i].n_pos > j0 + j)
                wasm_v128_store(S + i * ATTN_BLK + j, dot_4rows(qs[i].q, kj, hd, vscale));
    }
    for (; j < nj; j++) {
        const float *kj = k + (size_t)(j0 + j) * hd;
        for (int i = nquad; i < nq; i++)
            if (qs[i].n_pos > j0 + j) S[i * ATTN_BLK + j] = scale * dot_1row(qs[i].q, kj, hd);
    }
}

/* ---------------------------------------------------------------------------
 * pass 2: softmax
 * ------------------------------------------------------------------------- */

/* exp(x) for x <= 0, or -inf (0), ~2 ulp; results below e^-80 (relative to
 * the running max's 1) are flushed to 0. n = round(x*log2e), r = x - n*ln2
 * with ln2 split in a hi part with 8 significant bits (n*LN2_HI is exact) and a
 * lo part; degree-7 Taylor on |r| <= 0.35; 2^n added to the exponent bits
 * (n >= -116: the result stays normal). */
static inline v128_t exp_le0(v128_t x) {
    v128_t xc = wasm_f32x4_pmax(x, wasm_f32x4_splat(-80.0f));
    v128_t n = wasm_f32x4_nearest(wasm_f32x4_mul(xc, wasm_f32x4_splat(1.44269504088896341f)));
    v128_t r = MADD(n, wasm_f32x4_splat(-0.693359375f), xc);
    r = MADD(n, wasm_f32x4_splat(2.12194440e-4f), r);
    v128_t p = wasm_f32x4_splat(1.0f / 5040.0f);
    p = MADD(p, r, wasm_f32x4_splat(1.0f / 720.0f));
    p = MADD(p, r, wasm_f32x4_splat(1.0f / 120.0f));
    p = MADD(p, r, wasm_f32x4_splat(1.0f / 24.0f));
    p = MADD(p, r, wasm_f32x4_splat(1.0f / 6.0f));
    p = MADD(p, r, wasm_f32x4_splat(0.5f));
    p = MADD(p, r, wasm_f32x4_splat(1.0f));
    p = MADD(p, r, wasm_f32x4_splat(1.0f));
    v128_t e = wasm_i32x4_add(p, wasm_i32x4_shl(wasm_i32x4_relaxed_trunc_f32x4(n), 23));
    return wasm_v128_andnot(e, wasm_f32x4_lt(x, wasm_f32x4_splat(-80.0f)));
}

#define EXP_STEP(o)                                                                 \
    do {                                                                            \
        v128_t p = exp_le0(wasm_f32x4_sub(wasm_v128_load(s + j + (o)), vmn));       \
        float *pj = P + 4 * (j + (o));                                              \
        wasm_v128_store(pj, wasm_i32x4_shuffle(p, p, 0, 0, 0, 0));                  \
        wasm_v128_store(pj + 4, wasm_i32x4_shuffle(p, p, 1, 1, 1, 1));              \
        wasm_v128_store(pj + 8, wasm_i32x4_shuffle(p, p, 2, 2, 2, 2));              \
        wasm_v128_store(pj + 12, wasm_i32x4_shuffle(p, p, 3, 3, 3, 3));             \
        vs = wasm_f32x4_add(vs, p);                                                 \
    } while (0)

/* From the scores s[0..n16) (n16 a multiple of 16, masked entries -inf, at
 * least one finite): the probabilities exp(s - m) against the updated running
 * max, each broadcast to 4 lanes into P[4j..4j+4) for pass 3; l and the
 * accumulator acc[0..hd) are rescaled to the new max. */
static void softmax_block(attn_query *qr, const float *s, int n16, float *P, float *acc, int hd) {
    v128_t m0 = wasm_f32x4_splat(-__builtin_inff()), m1 = m0, m2 = m0, m3 = m0;
    for (int j = 0; j < n16; j += 16) {
        m0 = wasm_f32x4_pmax(m0, wasm_v128_load(s + j));
        m1 = wasm_f32x4_pmax(m1, wasm_v128_load(s + j + 4));
        m2 = wasm_f32x4_pmax(m2, wasm_v128_load(s + j + 8));
        m3 = wasm_f32x4_pmax(m3, wasm_v128_load(s + j + 12));
    }
    float cm = hmax_f32x4(wasm_f32x4_max(wasm_f32x4_max(m0, m1), wasm_f32x4_max(m2, m3)));
    float m_new = cm > qr->m ? cm : qr->m;
    v128_t vmn = wasm_f32x4_splat(m_new), vs = wasm_f32x4_splat(0.0f);
    /* one vector per basic block, 8 per loop iteration: a back-edge spills the
     * constants and the sum */
    int j = 0;
    for (; j + 32 <= n16; j += 32) {
        UNROLLED
        for (int o = 0; o < 32; o += 4) {
            if (o > 0 && !split_basic_block) break;
            EXP_STEP(o);
        }
    }
    if (j < n16) {
        UNROLLED
        for (int o = 0; o < 16; o += 4) {
            if (o > 0 && !split_basic_block) break;
            EXP_STEP(o);
        }
    }
    float sum = hsum_f32x4(vs);
    if (qr->m != m_new && qr->l > 0.0f) { /* (on the first block acc and l are 0) */
        float corr = borda_expf(qr->m - m_new);
        v128_t vc = wasm_f32x4_splat(corr);
        for (int d = 0; d < hd; d += 4)
            wasm_v128_store(acc + d, wasm_f32x4_mul(wasm_v128_load(acc + d), vc));
        qr->l *= corr;
    }
    qr->l += sum;
    qr->m = m_new;
}

/* ---------------------------------------------------------------------------
 * pass 3: values
 * ------------------------------------------------------------------------- */

#define ACC_ROW(r)                                                                  \
    do {                                                                            \
        v128_t pr = wasm_v128_load(p + 4 * (r));                                    \
        a0 = MADD(wasm_v128_load(v + (r) * hd), pr, a0);                            \
        a1 = MADD(wasm_v128_load(v + (r) * hd + 4), pr, a1);                        \
        a2 = MADD(wasm_v128_load(v + (r) * hd + 8), pr, a2);                        \
        a3 = MADD(wasm_v128_load(v + (r) * hd + 12), pr, a3);                       \
    } while (0)

/* acc[0..16) += sum_r p_r * v_r[0..16) over 16 V rows (p_r broadcast at
 * p[4r..4r+4)); 2 rows (10 loads) per basic block. */
static inline __attribute__((always_inline)) void acc_16x16(float *acc, const float *p,
                                                            const float *v, const int hd) {
    v128_t a0 = wasm_v128_load(acc), a1 = wasm_v128_load(acc + 4);
    v128_t a2 = wasm_v128_load(acc + 8), a3 = wasm_v128_load(acc + 12);
#pragma clang loop unroll(full)
    for (int r = 0; r < ATTN_VCHUNK; r += 2) {
        if (r > 0 && !split_basic_block) break;
        ACC_ROW(r);
        ACC_ROW(r + 1);
    }
    wasm_v128_store(acc, a0);
    wasm_v128_store(acc + 4, a1);
    wasm_v128_store(acc + 8, a2);
    wasm_v128_store(acc + 12, a3);
}

/* Same for 4 dims. */
static inline __attribute__((always_inline)) void acc_4x16(float *acc, const float *p,
                                                           const float *v, const int hd) {
    v128_t a = wasm_v128_load(acc);
#pragma clang loop unroll(full)
    for (int r = 0; r < ATTN_VCHUNK; r += 4) {
        if (r > 0 && !split_basic_block) break;
        for (int i = r; i < r + 4; i++)
            a = MADD(wasm_v128_load(v + i * hd), wasm_v128_load(p + 4 * i), a);
    }
    wasm_v128_store(acc, a);
}

/* acc_i[0..8) += sum_r p_ir * v_r[0..8) over 16 V rows for 4 queries (acc
 * row i at acc + i * hd, p_ir broadcast at p + 4 * (i * ATTN_BLK + r)). */
static inline __attribute__((always_inline)) void acc_4x8(float *acc, const float *p,
                                                          const float *v, const int hd) {
    v128_t a[4][2];
    for (int i = 0; i < 4; i++) {
        a[i][0] = wasm_v128_load(acc + i * hd);
        a[i][1] = wasm_v128_load(acc + i * hd + 4);
    }
    madd_4x8(a, p, 1, ATTN_BLK, v, hd, ATTN_VCHUNK);
    for (int i = 0; i < 4; i++) {
        wasm_v128_store(acc + i * hd, a[i][0]);
        wasm_v128_store(acc + i * hd + 4, a[i][1]);
    }
}

/* acc_i += sum_j p_ij * v_(j0+j) for j < nj (p_ij broadcast in P), each
 * query over the rows it sees (its p is 0 beyond them): queries [0, nquad)
 * four at a time, the others one at a time, and the rows past the last
 * multiple of 16 one by one for all. */
static inline __attribute__((always_inline)) void accumulate_block(const attn_query *qs, int nq,
                                                                   int nquad, const float *v,
                                                                   int j0, int nj, const float *P,
                                                                   float *acc, const int hd) {
    int chunks_end = nj / ATTN_VCHUNK * ATTN_VCHUNK;
    for (int i = 0; i < nquad; i += 4) {
        int lim = quad_positions(qs + i, j0, nj);
        for (int c = 0; c < lim && c < chunks_end; c += ATTN_VCHUNK) {
            const float *p = P + (i * ATTN_BLK + c) * 4;
            OPAQUE(p);
#pragma clang loop unroll(disable) /* a loop of 8-dim slices: the unrolled code gets big */
            for (int d = 0; d < hd; d += 8) {
                float *a = acc + i * hd + d;
                const float *vc = v + (size_t)(j0 + c) * hd + d;
                OPAQUE(a);
                OPAQUE(vc);
                acc_4x8(a, p, vc, hd);
            }
        }
    }
    int c = 0;
    for (; c < chunks_end; c += ATTN_VCHUNK) {
        const float *vc = v + (size_t)(j0 + c) * hd;
        for (int i = nquad; i < nq; i++) {
            if (qs[i].n_pos <= j0 + c) continue;
            const float *p = P + (i * ATTN_BLK + c) * 4;
            float *a = acc + i * hd;
            int d = 0;
#pragma clang loop unroll(full)
            for (; d + 16 <= hd; d += 16) acc_16x16(a + d, p, vc + d, hd);
            for (; d < hd; d += 4) acc_4x16(a + d, p, vc + d, hd);
        }
    }
    for (; c < nj; c++) {
        const float *vc = v + (size_t)(j0 + c) * hd;
        for (int i = 0; i < nq; i++) {
            if (qs[i].n_pos <= j0 + c) continue;
            v128_t pc = wasm_v128_load(P + (i * ATTN_BLK + c) * 4);
            float *a = acc + i * hd;
            for (int d = 0; d < hd; d += 4)
                wasm_v128_store(a + d, wasm_f32x4_add(wasm_v128_load(a + d),
                                                      wasm_f32x4_mul(pc, wasm_v128_load(vc + d))));
        }
    }
}

/* ---------------------------------------------------------------------------
 * tiles
 * ------------------------------------------------------------------------- */

/* One tile: nq queries against the same K/V head. */
static inline __attribute__((always_inline)) void attend_tile(attn_query *qs, int nq,
                                                              const float *k, const float *v,
                                                              float scale, float *acc,
                                                              const int hd) {
    float S[ATTN_MAX_Q * ATTN_BLK], P[ATTN_MAX_Q * ATTN_BLK * 4];
    float Kt[ATTN_QUAD_DIMS * ATTN_KT_STRIDE];
    v128_t QB[ATTN_MAX_Q * ATTN_QUAD_DIMS];
    int nquad = hd % 8 == 0 && hd <= ATTN_QUAD_DIMS ? nq / 4 * 4 : 0; /* queries in 4s */
    for (int i = 0; i < nquad; i += 4) broadcast_quad(qs + i, QB + (size_t)i * hd, hd);
    int n_pos = 0;
    for (int i = 0; i < nq; i++) {
        n_pos = qs[i].n_pos > n_pos ? qs[i].n_pos : n_pos;
        qs[i].m = -__builtin_inff();
        qs[i].l = 0.0f;
    }
    for (int i = 0; i < nq * hd; i += 4) wasm_v128_store(acc + i, wasm_f32x4_splat(0.0f));
    for (int j0 = 0; j0 < n_pos; j0 += ATTN_BLK) {
        int nj = n_pos - j0 < ATTN_BLK ? n_pos - j0 : ATTN_BLK;
        int n16 = (nj + 15) & ~15;
        warm_kv(k + (size_t)j0 * hd, v + (size_t)j0 * hd, nj * hd);
        if (nquad) transpose_k(k + (size_t)j0 * hd, nj, Kt, hd);
        score_block(qs, nq, nquad, QB, k, Kt, j0, nj, scale, S, hd);
        for (int i = 0; i < nq; i++) {
            int lim = qs[i].n_pos - j0; /* positions this query sees in the block */
            if (lim <= 0) { /* none: zero probabilities for its quad's pass 3 */
                for (int j = 0; j < 4 * n16; j += 4)
                    wasm_v128_store(P + i * ATTN_BLK * 4 + j, wasm_f32x4_splat(0.0f));
                continue;
            }
            float *s = S + i * ATTN_BLK;
            for (int j = lim < nj ? lim : nj; j < n16; j++) s[j] = -__builtin_inff();
            softmax_block(&qs[i], s, n16, P + i * ATTN_BLK * 4, acc + i * hd, hd);
        }
        accumulate_block(qs, nq, nquad, v, j0, nj, P, acc, hd);
    }
    for (int i = 0; i < nq; i++) {
        const float *a = acc + i * hd;
        v128_t inv = wasm_f32x4_splat(qs[i].l > 0.0f ? 1.0f / qs[i].l : 0.0f);
        for (int d = 0; d < hd; d += 4)
            wasm_v128_store(qs[i].out + d, wasm_f32x4_mul(wasm_v128_load(a + d), inv));
    }
}

static __attribute__((noinline)) void attend_tile_32(attn_query *qs, int nq, const float *k,
                                                     const float *v, float scale, float *acc) {
    attend_tile(qs, nq, k, v, scale, acc, 32);
}

static __attribute__((noinline)) void attend_tile_64(attn_query *qs, int nq, const float *k,
                                                     const float *v, float scale, float *acc) {
    attend_tile(qs, nq, k, v, scale, acc, 64);
}

static __attribute__((noinline)) void attend_tile_128(attn_query *qs, int nq, const float *k,
                                                      const float *v, float scale, float *acc) {
    attend_tile(qs, nq, k, v, scale, acc, 128);
}

static __attribute__((noinline)) void attend_tile_any(attn_query *qs, int nq, const float *k,
                                                      const float *v, float scale, float *acc,
                                                      int hd) {
    attend_tile(qs, nq, k, v, scale, acc, hd);
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
                if (head_dim == 32)
                    attend_tile_32(qs, nq, k, v, scale, acc);
                else if (head_dim == 64)
                    attend_tile_64(qs, nq, k, v, scale, acc);
                else if (head_dim == 128)
                    attend_tile_128(qs, nq, k, v, scale, acc);
                else
                    attend_tile_any(qs, nq, k, v, scale, acc, head_dim);
            }
        }
    }
}
