/* Q8_0 weights x quantized activations.
 *
 *   y[t][r] = sum_b  w.d[r][b] * xd[t][b] * I(r,t,b)
 *   I(r,t,b) = sum_j qs[r][32b+j] * (xu[t][32b+j] - 64)
 *            = dot(qs, xu) - 64 * w.s[r][b]          (exact in int32)
 *
 * dot(qs, xu) uses i32x4.relaxed_dot_i8x16_i7x16_add with the activations
 * (in [1,127]) as the second operand, the case every engine computes exactly
 * (x86: pmaddubsw never saturates when one side is < 128).
 *
 * Two paths:
 *  - GEMV (one token): memory bound. Rows are streamed once, 4 rows x 4 blocks
 *    per iteration (512 weight bytes, so the epoch check on the loop back-edge
 *    is amortised); per row the 4 block partials are reduced with one
 *    transpose-add into [I_b0..I_b3] and scaled by d[r][b..b+3]*xd[b..b+3].
 *  - GEMM (several tokens): compute bound. Each 4-row panel is repacked into a
 *    stack buffer so that one v128 holds 4 k-values of 4 rows ("VNNI layout");
 *    a 32-bit broadcast of 4 activations then gives one i32 lane per row, with
 *    no horizontal reduction. The packed panel is reused by every token tile.
 */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

static inline v128_t rdot(v128_t w, v128_t u, v128_t acc) {
    return wasm_i32x4_relaxed_dot_i8x16_i7x16_add(w, u, acc);
}

/* ---------------------------------------------------------------------------
 * GEMV
 * ------------------------------------------------------------------------- */

/* i32x4 partial dot of one 32-wide block (lanes still to be summed). */
static inline v128_t block_dot(const int8_t *w, const int8_t *u) {
    v128_t acc = rdot(wasm_v128_load(w), wasm_v128_load(u), wasm_i32x4_splat(0));
    return rdot(wasm_v128_load(w + 16), wasm_v128_load(u + 16), acc);
}

/* Scaled contribution of blocks b..b+3 of one row: [I_b0..I_b3] corrected by
 * the block sums, times d[b..b+3] * xd[b..b+3]. */
static inline v128_t scale4(v128_t p0, v128_t p1, v128_t p2, v128_t p3, const int16_t *s,
                            const float *d, v128_t xd4) {
    v128_t dot = hsum4_i32x4(p0, p1, p2, p3);
    v128_t s64 = wasm_i32x4_shl(wasm_i32x4_load16x4(s), 6);
    v128_t i = wasm_f32x4_convert_i32x4(wasm_i32x4_sub(dot, s64));
    return wasm_f32x4_mul(i, wasm_f32x4_mul(wasm_v128_load(d), xd4));
}

/* One block of 4 rows -> [row0..row3] contribution. */
static inline v128_t block_4rows(const q8_matrix *w, int r, int b, const int8_t *xu, float xd) {
    size_t k = (size_t)w->k, nb = k / QK8_0;
    const int8_t *wr = w->qs + (size_t)r * k + (size_t)b * QK8_0;
    const int8_t *ub = xu + (size_t)b * QK8_0;
    v128_t dot = hsum4_i32x4(block_dot(wr, ub), block_dot(wr + k, ub), block_dot(wr + 2 * k, ub),
                             block_dot(wr + 3 * k, ub));
    size_t o = (size_t)r * nb + b;
    v128_t s64 = wasm_i32x4_make(w->s[o] * 64, w->s[o + nb] * 64, w->s[o + 2 * nb] * 64,
                                 w->s[o + 3 * nb] * 64);
    v128_t d = wasm_f32x4_make(w->d[o], w->d[o + nb], w->d[o + 2 * nb], w->d[o + 3 * nb]);
    v128_t i = wasm_f32x4_convert_i32x4(wasm_i32x4_sub(dot, s64));
    return wasm_f32x4_mul(i, wasm_f32x4_mul(d, wasm_f32x4_splat(xd)));
}

/* 4 rows x 4 blocks per iteration. */
static void gemv_4rows(const q8_matrix *w, int r, const int8_t *xu, const float *xd, float *y) {
    size_t k = (size_t)w->k, nb = k / QK8_0;
    const int8_t *w0 = w->qs + (size_t)r * k;
    const int8_t *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
    const int16_t *s0 = w->s + (size_t)r * nb;
    const float *d0 = w->d + (size_t)r * nb;
    v128_t acc0 = wasm_f32x4_splat(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    size_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const size_t o = b * QK8_0;
        const int8_t *u = xu + o;
        v128_t xd4 = wasm_v128_load(xd + b);
        acc0 = wasm_f32x4_add(acc0, scale4(block_dot(w0 + o, u), block_dot(w0 + o + 32, u + 32),
                                           block_dot(w0 + o + 64, u + 64),
                                           block_dot(w0 + o + 96, u + 96), s0 + b, d0 + b, xd4));
        acc1 = wasm_f32x4_add(acc1, scale4(block_dot(w1 + o, u), block_dot(w1 + o + 32, u + 32),
                                           block_dot(w1 + o + 64, u + 64),
                                           block_dot(w1 + o + 96, u + 96), s0 + nb + b,
                                           d0 + nb + b, xd4));
        acc2 = wasm_f32x4_add(acc2, scale4(block_dot(w2 + o, u), block_dot(w2 + o + 32, u + 32),
                                           block_dot(w2 + o + 64, u + 64),
                                           block_dot(w2 + o + 96, u + 96), s0 + 2 * nb + b,
                                           d0 + 2 * nb + b, xd4));
        acc3 = wasm_f32x4_add(acc3, scale4(block_dot(w3 + o, u), block_dot(w3 + o + 32, u + 32),
                                           block_dot(w3 + o + 64, u + 64),
                                           block_dot(w3 + o + 96, u + 96), s0 + 3 * nb + b,
                                           d0 + 3 * nb + b, xd4));
    }
    v128_t out = hsum4_f32x4(acc0, acc1, acc2, acc3);
    for (; b < nb; b++) out = wasm_f32x4_add(out, block_4rows(w, r, (int)b, xu, xd[b]));
    wasm_v128_store(y + r, out);
}

/* Leftover rows (rows % 4), one at a time. */
static void gemv_1row(const q8_matrix *w, int r, const int8_t *xu, const float *xd, float *y) {
    size_t k = (size_t)w->k, nb = k / QK8_0;
    const int8_t *w0 = w->qs + (size_t)r * k;
    const int16_t *s0 = w->s + (size_t)r * nb;
    const float *d0 = w->d + (size_t)r * nb;
    v128_t acc = wasm_f32x4_splat(0.0f);
    size_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const size_t o = b * QK8_0;
        acc = wasm_f32x4_add(
            acc, scale4(block_dot(w0 + o, xu + o), block_dot(w0 + o + 32, xu + o + 32),
                        block_dot(w0 + o + 64, xu + o + 64), block_dot(w0 + o + 96, xu + o + 96),
                        s0 + b, d0 + b, wasm_v128_load(xd + b)));
    }
    float sum = hsum_f32x4(acc);
    for (; b < nb; b++) {
        v128_t p = block_dot(w0 + b * QK8_0, xu + b * QK8_0);
        p = wasm_i32x4_add(p, wasm_i32x4_shuffle(p, p, 2, 3, 0, 1));
        p = wasm_i32x4_add(p, wasm_i32x4_shuffle(p, p, 1, 0, 3, 2));
        int32_t dot = wasm_i32x4_extract_lane(p, 0) - 64 * s0[b];
        sum += (float)dot * (d0[b] * xd[b]);
    }
    y[r] = sum;
}

static void gemv_q8_0(const q8_matrix *w, const int8_t *xu, const float *xd, float *y) {
    int r = 0;
    for (; r + 4 <= w->rows; r += 4) gemv_4rows(w, r, xu, xd, y);
    for (; r < w->rows; r++) gemv_1row(w, r, xu, xd, y);
}

/* ---------------------------------------------------------------------------
 * GEMV with plain SIMD (i16 widening), for comparison with the relaxed path.
 * Activations are widened once per block to i16 (q = u - 64) and shared by the
 * 4 rows; no block-sum correction is needed.
 * ------------------------------------------------------------------------- */

typedef struct {
    v128_t x[4]; /* 32 activations as 4 x i16x8 */
} act_block_i16;

static inline act_block_i16 widen_act(const int8_t *u) {
    act_block_i16 a;
    v128_t off = wasm_i16x8_splat(ACT_OFFSET);
    v128_t u0 = wasm_v128_load(u), u1 = wasm_v128_load(u + 16);
    a.x[0] = wasm_i16x8_sub(wasm_u16x8_extend_low_u8x16(u0), off);
    a.x[1] = wasm_i16x8_sub(wasm_u16x8_extend_high_u8x16(u0), off);
    a.x[2] = wasm_i16x8_sub(wasm_u16x8_extend_low_u8x16(u1), off);
    a.x[3] = wasm_i16x8_sub(wasm_u16x8_extend_high_u8x16(u1), off);
    return a;
}

static inline v128_t block_dot_i16(const int8_t *w, const act_block_i16 *a) {
    v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 16);
    v128_t acc = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w0), a->x[0]);
    acc = wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w0), a->x[1]));
    acc = wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w1), a->x[2]));
    return wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w1), a->x[3]));
}

/* 4 rows x 1 block; the 4 row partials are reduced to [row0..row3]. */
static inline v128_t block_4rows_i16(const q8_matrix *w, int r, size_t b, const int8_t *xu,
                                     float xd) {
    size_t k = (size_t)w->k, nb = k / QK8_0;
    const int8_t *wr = w->qs + (size_t)r * k + b * QK8_0;
    act_block_i16 a = widen_act(xu + b * QK8_0);
    v128_t dot = hsum4_i32x4(block_dot_i16(wr, &a), block_dot_i16(wr + k, &a),
                             block_dot_i16(wr + 2 * k, &a), block_dot_i16(wr + 3 * k, &a));
    size_t o = (size_t)r * nb + b;
    v128_t d = wasm_f32x4_make(w->d[o], w->d[o + nb], w->d[o + 2 * nb], w->d[o + 3 * nb]);
    return wasm_f32x4_mul(wasm_f32x4_convert_i32x4(dot), wasm_f32x4_mul(d, wasm_f32x4_splat(xd)));
}

/* 4 rows x 2 blocks per iteration: the d[] gather is the price of not
 * transposing per row; kept simple since this path is only a baseline. */
void gemv_q8_0_i16(const q8_matrix *w, const int8_t *xu, const float *xd, float *y) {
    size_t k = (size_t)w->k, nb = k / QK8_0;
    int r = 0;
    for (; r + 4 <= w->rows; r += 4) {
        v128_t acc0 = wasm_f32x4_splat(0.0f), acc1 = acc0;
        size_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            acc0 = wasm_f32x4_add(acc0, block_4rows_i16(w, r, b, xu, xd[b]));
            acc1 = wasm_f32x4_add(acc1, block_4rows_i16(w, r, b + 1, xu, xd[b + 1]));
        }
        if (b < nb) acc0 = wasm_f32x4_add(acc0, block_4rows_i16(w, r, b, xu, xd[b]));
        wasm_v128_store(y + r, wasm_f32x4_add(acc0, acc1));
    }
    for (; r < w->rows; r++) {
        const int8_t *wr = w->qs + (size_t)r * k;
        float sum = 0.0f;
        for (size_t b = 0; b < nb; b++) {
            act_block_i16 a = widen_act(xu + b * QK8_0);
            v128_t p = block_dot_i16(wr + b * QK8_0, &a);
            p = wasm_i32x4_add(p, wasm_i32x4_shuffle(p, p, 2, 3, 0, 1));
            p = wasm_i32x4_add(p, wasm_i32x4_shuffle(p, p, 1, 0, 3, 2));
            sum += (float)wasm_i32x4_extract_lane(p, 0) * (w->d[(size_t)r * nb + b] * xd[b]);
        }
        y[r] = sum;
    }
}

/* ---------------------------------------------------------------------------
 * GEMM
 * ------------------------------------------------------------------------- */

/* K is processed in chunks so that a packed 4-row panel (4 x KC bytes) stays
 * in L1 while the token tiles stream over it. */
#define GEMM_KC 4096
#define GEMM_KCB (GEMM_KC / QK8_0)

typedef struct {
    /* qs[g] holds k-group g (4 consecutive k) of rows 0..3:
     *   [r0 k0..3 | r1 k0..3 | r2 k0..3 | r3 k0..3]                       */
    v128_t qs[GEMM_KC / 4];
    v128_t d[GEMM_KCB];    /* f32x4: d[r0..r3][b]       */
    v128_t negs[GEMM_KCB]; /* i32x4: -64 * s[r0..r3][b]  */
} q8_panel;

/* Pack rows r..r+nr-1 (nr <= 4; missing rows are zero), blocks b0..b0+nb-1. */
static void pack_panel(const q8_matrix *w, int r, int nr, int b0, int nb, q8_panel *p) {
    size_t k = (size_t)w->k, kb = k / QK8_0;
    const int8_t *rows[4];
    for (int i = 0; i < 4; i++) rows[i] = w->qs + (size_t)(i < nr ? r + i : r) * k;
    for (int b = 0; b < nb; b++) {
        for (int h = 0; h < QK8_0; h += 16) {
            size_t o = (size_t)(b0 + b) * QK8_0 + h;
            v128_t zero = wasm_i32x4_splat(0);
            v128_t x0 = wasm_v128_load(rows[0] + o);
            v128_t x1 = nr > 1 ? wasm_v128_load(rows[1] + o) : zero;
            v128_t x2 = nr > 2 ? wasm_v128_load(rows[2] + o) : zero;
            v128_t x3 = nr > 3 ? wasm_v128_load(rows[3] + o) : zero;
            /* 4x4 transpose of 32-bit lanes */
            v128_t t0 = wasm_i32x4_shuffle(x0, x1, 0, 4, 1, 5);
            v128_t t1 = wasm_i32x4_shuffle(x2, x3, 0, 4, 1, 5);
            v128_t t2 = wasm_i32x4_shuffle(x0, x1, 2, 6, 3, 7);
            v128_t t3 = wasm_i32x4_shuffle(x2, x3, 2, 6, 3, 7);
            v128_t *g = p->qs + (b * QK8_0 + h) / 4;
            g[0] = wasm_i64x2_shuffle(t0, t1, 0, 2);
            g[1] = wasm_i64x2_shuffle(t0, t1, 1, 3);
            g[2] = wasm_i64x2_shuffle(t2, t3, 0, 2);
            g[3] = wasm_i64x2_shuffle(t2, t3, 1, 3);
        }
        float d[4] = {0, 0, 0, 0};
        int32_t s[4] = {0, 0, 0, 0};
        for (int i = 0; i < nr; i++) {
            size_t o = (size_t)(r + i) * kb + (size_t)(b0 + b);
            d[i] = w->d[o];
            s[i] = -64 * w->s[o];
        }
        p->d[b] = wasm_v128_load(d);
        p->negs[b] = wasm_v128_load(s);
    }
}

/* 4 rows x NT tokens tile over the panel's nb blocks. acc[t] is an i32x4 over
 * the 4 rows for the current block, started at -64*s so that it ends as
 * I(r,t,b) exactly; facc[t] accumulates the scaled f32 results. NT is a
 * compile-time constant at every call site, so the t-loops unroll into
 * registers. */
static inline __attribute__((always_inline)) void tile_4xN(const q8_panel *p, int nb,
                                                           const int8_t *xu, const float *xd,
                                                           size_t k, size_t kb, float *y,
                                                           size_t rows, int nr, int accumulate,
                                                           const int NT) {
    v128_t facc[8];
    for (int t = 0; t < NT; t++) facc[t] = wasm_f32x4_splat(0.0f);
    for (int b = 0; b < nb; b++) {
        v128_t acc[8];
        for (int t = 0; t < NT; t++) acc[t] = p->negs[b];
        const v128_t *g = p->qs + b * (QK8_0 / 4);
        const int8_t *u = xu + (size_t)b * QK8_0;
        for (int j = 0; j < QK8_0 / 4; j++) {
            v128_t wv = g[j];
            for (int t = 0; t < NT; t++)
                acc[t] = rdot(wv, wasm_v128_load32_splat(u + (size_t)t * k + 4 * j), acc[t]);
        }
        v128_t d = p->d[b];
        for (int t = 0; t < NT; t++) {
            v128_t scale = wasm_f32x4_mul(d, wasm_v128_load32_splat(xd + (size_t)t * kb + b));
            facc[t] = wasm_f32x4_add(facc[t], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(acc[t]), scale));
        }
    }
    for (int t = 0; t < NT; t++) {
        float *yt = y + (size_t)t * rows;
        if (nr == 4) {
            v128_t v = facc[t];
            if (accumulate) v = wasm_f32x4_add(v, wasm_v128_load(yt));
            wasm_v128_store(yt, v);
        } else {
            float out[4];
            wasm_v128_store(out, facc[t]);
            for (int i = 0; i < nr; i++) yt[i] = accumulate ? yt[i] + out[i] : out[i];
        }
    }
}

#define GEMM_NT 4 /* tokens per tile */

static void gemm_q8_0_tiled(const q8_matrix *w, const int8_t *xu, const float *xd, float *y,
                            int n_tokens) {
    q8_panel panel; /* 24 KB of stack */
    size_t k = (size_t)w->k, kb = k / QK8_0, rows = (size_t)w->rows;
    for (int r = 0; r < w->rows; r += 4) {
        int nr = w->rows - r < 4 ? w->rows - r : 4;
        for (size_t b0 = 0; b0 < kb; b0 += GEMM_KCB) {
            int nb = kb - b0 < GEMM_KCB ? (int)(kb - b0) : GEMM_KCB;
            int acc = b0 > 0;
            pack_panel(w, r, nr, (int)b0, nb, &panel);
            const int8_t *u = xu + b0 * QK8_0;
            const float *dx = xd + b0;
            float *yr = y + r;
            int t = 0;
            for (; t + GEMM_NT <= n_tokens; t += GEMM_NT)
                tile_4xN(&panel, nb, u + t * k, dx + t * kb, k, kb, yr + t * rows, rows, nr, acc,
                         GEMM_NT);
            int left = n_tokens - t;
            if (left == 3)
                tile_4xN(&panel, nb, u + t * k, dx + t * kb, k, kb, yr + t * rows, rows, nr, acc, 3);
            else if (left == 2)
                tile_4xN(&panel, nb, u + t * k, dx + t * kb, k, kb, yr + t * rows, rows, nr, acc, 2);
            else if (left == 1)
                tile_4xN(&panel, nb, u + t * k, dx + t * kb, k, kb, yr + t * rows, rows, nr, acc, 1);
        }
    }
}

void gemm_q8_0(const q8_matrix *w, const int8_t *xu, const float *xd, float *y, int n_tokens) {
    if (n_tokens == 1)
        gemv_q8_0(w, xu, xd, y);
    else
        gemm_q8_0_tiled(w, xu, xd, y, n_tokens);
}
