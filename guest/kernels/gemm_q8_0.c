/* Q8_0 weights x quantized activations.
 *
 *   y[t][r] = sum_b  w.d[r][b] * xd[t][b] * I(r,t,b)
 *   I(r,t,b) = sum_j qs[r][32b+j] * v[t][32b+j]        (exact in int32)
 *
 * with v the activations' digits (borda.h): one digit, v = u - 64 and
 *   I = dot(qs, u) - 64 * w.s[r][b];
 * two digits, v = 63 (u0 - 32) + (u1 - 32) and
 *   I = 63 dot(qs, u0) + dot(qs, u1) - 32 * 64 * w.s[r][b].
 * dot(qs, u) uses the relaxed int8 dot with the activations (in [1,127]) as
 * the second operand, the case every engine computes exactly (x86: pmaddubsw
 * cannot saturate when one side is < 128). Its i16 pair sums are widened to
 * i32 by i32x4.dot_i16x8 with 1 (extadd) or with 63 (the top digit): the
 * same pmaddwd on x86, so the top digit's weight costs no multiply. Two-digit
 * u are at most 63, so two pair sums (|.| <= 2*128*63) add exactly in i16
 * before widening: the second digit costs 2 more pmaddubsw and 1 paddw.
 *
 * Code shape notes (measured with Wasmtime/Cranelift on x86-64, 16 xmm regs):
 *  - Loads stay in program order (they may trap), but Cranelift computes pure
 *    arithmetic where its result is first needed: at the end of the basic
 *    block at the earliest (its branch arguments), often only in a successor.
 *    So every v128 loaded in a block is live at once: more than ~12 loads per
 *    basic block spill.
 *  - The epoch check sits on each loop back-edge, so loops are not made
 *    smaller than that either; a never-taken branch (split_basic_block) ends
 *    a basic block without adding a back-edge. A store (KEEP) also pins the
 *    arithmetic it needs before the loads that follow it, for one store
 *    instead of a load, a test and a branch.
 *  - Loads at constant offsets from one pointer fold the offset into the x86
 *    addressing mode; OPAQUE keeps LLVM from turning them into base +
 *    induction variable + constant (one more instruction per load).
 *
 * GEMV (one token, memory bound): rows r and r + rows/2 together, 4 blocks
 *   per step: two sequential streams far apart, which the hardware
 *   prefetchers follow better than one (from DRAM, SmolLM2-135M shapes:
 *   576x1536 ~14 -> ~17 GB/s, the 49152x576 head ~14 -> ~20 GB/s) and much
 *   better than adjacent rows (~9 GB/s); 4 to 8 streams were slower. Each
 *   activation load serves both rows. A row's 4 block partials (i32x4 each)
 *   are reduced by one transpose-add to [I_b0..I_b3], corrected by the block
 *   sums and scaled by d[r][b..b+3] * xd[b..b+3].
 *
 * GEMM (several tokens, compute bound): register tile of 8 rows x 4 tokens.
 *   Rows are repacked, 4 to a panel, in "VNNI layout": one v128 = 4
 *   consecutive k of the 4 rows. A token's 4 activation bytes broadcast to all
 *   lanes then give one i32 lane per row with no horizontal reduction. The
 *   broadcasts are made once per token tile and K chunk (act_tile) and loaded
 *   like the panels: a load costs less than a shuffle in the inner loop,
 *   where the multiply ports are the limit. Each k-group is one basic block
 *   of 2 panel + 4 activation loads (two digits: one token, 4 + 4 loads).
 *   Loop order: K chunks > row groups (the panels that fit in L2) > token
 *   tiles > 8-row tiles: a token tile's broadcasts stay in L1 while the
 *   group's panels stream from L2.
 *   Measured on MiniLM shapes (384 x 384, 1536 x 384, 384 x 1536, 512
 *   tokens): one digit 42 GMAC/s, two digits 26 GMAC/s; the former 4x4 tile
 *   that broadcast with shuffles, one panel at a time: 33 and 21 GMAC/s.
 */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

/* The panel buffer shared with gemm_f32.c: 256 KB, well inside L2. */
_Alignas(16) uint8_t gemm_panels[GEMM_PANELS_BYTES];

/* split_basic_block (simd_math.h), measured on the former 4x4 GEMM tile: ~71
 * GOP/s, against 65 (60 with epoch checks) when the two block halves are a
 * 2-iteration loop and ~50 when they are a single basic block. */

/* Stores v to a never-read sink: the store is a side effect, so Cranelift
 * computes v right there, before the loads that follow it in the source, and
 * does not move those loads above it. */
static volatile v128_t keep_sink;
#define KEEP(v) (keep_sink = (v))

static inline v128_t rdot(v128_t w, v128_t u, v128_t acc) {
    return wasm_i32x4_relaxed_dot_i8x16_i7x16_add(w, u, acc);
}

/* ---------------------------------------------------------------------------
 * GEMV: 2 rows x 4 blocks per step
 * ------------------------------------------------------------------------- */

/* i32x4 partial dot of one 32-wide block (the 4 lanes still to be summed):
 * per 16-byte half the i16 pair sums (x86: pmaddubsw; |pair| <= 2*128*127,
 * exact in i16), widened pairwise to i32 (pmaddwd). Two digits: both halves'
 * pair sums added in i16 first (|.| <= 4*128*63), the top digit's widened
 * times 63. Cheaper than chaining i32x4.relaxed_dot_i8x16_i7x16_add from
 * zero, which adds the zero too. The second digit plane is `plane` bytes on. */
static inline __attribute__((always_inline)) v128_t block_dot(const int8_t *w, const int8_t *u,
                                                              size_t plane, const int digits) {
    v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 16);
    v128_t a = wasm_i16x8_relaxed_dot_i8x16_i7x16(w0, wasm_v128_load(u));
    v128_t b = wasm_i16x8_relaxed_dot_i8x16_i7x16(w1, wasm_v128_load(u + 16));
    if (digits == 1)
        return wasm_i32x4_add(wasm_i32x4_extadd_pairwise_i16x8(a),
                              wasm_i32x4_extadd_pairwise_i16x8(b));
    v128_t c = wasm_i16x8_relaxed_dot_i8x16_i7x16(w0, wasm_v128_load(u + plane));
    v128_t e = wasm_i16x8_relaxed_dot_i8x16_i7x16(w1, wasm_v128_load(u + plane + 16));
    return wasm_i32x4_add(wasm_i32x4_dot_i16x8(wasm_i16x8_add(a, b), wasm_i16x8_splat(ACT_RADIX)),
                          wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_add(c, e)));
}

/* What the digits' offsets add to dot per unit of w.s: 64, or 32 * (63 + 1) */
#define OFFSET_SUM(digits) (ACT_OFFSET(digits) * ((digits) == 2 ? ACT_RADIX + 1 : 1))

/* [I_b0..I_b3] -> f32x4 of d * xd * I, with I = dot - OFFSET_SUM * s (i16 s widened) */
static inline v128_t scale_4blocks(v128_t dot, v128_t s32, v128_t d, v128_t xd, const int digits) {
    v128_t corr = wasm_i32x4_mul(s32, wasm_i32x4_splat(OFFSET_SUM(digits)));
    v128_t i = wasm_f32x4_convert_i32x4(wasm_i32x4_sub(dot, corr));
    return wasm_f32x4_mul(i, wasm_f32x4_mul(d, xd));
}

/* The last n = 1..3 blocks of a row (k/32 % 4), the missing lanes zero; reads
 * nothing past the n blocks. */
static inline __attribute__((always_inline)) v128_t row_tail(const int8_t *w, const int8_t *u,
                                                             size_t plane, const int16_t *s,
                                                             const float *d, const float *xd,
                                                             int n, const int digits) {
    v128_t z = wasm_i32x4_splat(0);
    v128_t p0 = block_dot(w, u, plane, digits);
    v128_t p1 = n > 1 ? block_dot(w + 32, u + 32, plane, digits) : z;
    v128_t p2 = n > 2 ? block_dot(w + 64, u + 64, plane, digits) : z;
    v128_t s16, dv, xv;
    if (n == 1) {
        s16 = wasm_v128_load16_lane(s, z, 0);
        dv = wasm_v128_load32_zero(d);
        xv = wasm_v128_load32_zero(xd);
    } else if (n == 2) {
        s16 = wasm_v128_load32_zero(s);
        dv = wasm_v128_load64_zero(d);
        xv = wasm_v128_load64_zero(xd);
    } else {
        s16 = wasm_v128_load16_lane(s + 2, wasm_v128_load32_zero(s), 2);
        dv = wasm_v128_load32_lane(d + 2, wasm_v128_load64_zero(d), 2);
        xv = wasm_v128_load32_lane(xd + 2, wasm_v128_load64_zero(xd), 2);
    }
    return scale_4blocks(hsum4_i32x4(p0, p1, p2, z), wasm_i32x4_extend_low_i16x8(s16), dv, xv,
                         digits);
}

/* One row (the last of an odd count): sum over its blocks of d * xd * I; one
 * block at a time (KEEP). */
static inline __attribute__((always_inline)) float row_dot(const int8_t *wr, const int16_t *s,
                                                           const float *d, const int8_t *xu,
                                                           const float *xd, size_t nb,
                                                           size_t plane, const int digits) {
    size_t nb4 = nb & ~(size_t)3;
    v128_t acc = wasm_f32x4_splat(0.0f);
    for (size_t b = 0; b < nb4; b += 4) {
        const int8_t *wb = wr + b * QK8_0, *ub = xu + b * QK8_0;
        OPAQUE(wb);
        OPAQUE(ub);
        v128_t p[4];
        UNROLLED
        for (int i = 0; i < 4; i++) {
            p[i] = block_dot(wb + 32 * i, ub + 32 * i, plane, digits);
            KEEP(p[i]);
        }
        acc = wasm_f32x4_add(acc, scale_4blocks(hsum4_i32x4(p[0], p[1], p[2], p[3]),
                                                wasm_i32x4_load16x4(s + b), wasm_v128_load(d + b),
                                                wasm_v128_load(xd + b), digits));
    }
    if (nb4 < nb)
        acc = wasm_f32x4_add(acc, row_tail(wr + nb4 * QK8_0, xu + nb4 * QK8_0, plane, s + nb4,
                                           d + nb4, xd + nb4, (int)(nb - nb4), digits));
    return hsum_f32x4(acc);
}

/* Rows r and r + ro, 4 blocks from block b, added to acc_a and acc_b: the
 * block sums [I_b0..I_b3] of each, one block (6 or 8 loads, the activations
 * shared by both rows) at a time (KEEP). */
static inline __attribute__((always_inline)) void rows2_step(
    const int8_t *wr, size_t k, size_t ro, const int8_t *xu, const int16_t *s, const float *d,
    const float *xd, size_t nb, size_t b, v128_t *acc_a, v128_t *acc_b, const int digits) {
    const int8_t *wa = wr + b * QK8_0, *wb = wa + ro * k, *ub = xu + b * QK8_0;
    OPAQUE(wa);
    OPAQUE(wb);
    OPAQUE(ub);
    v128_t pa[4], pb[4];
    UNROLLED
    for (int i = 0; i < 4; i++) {
        pa[i] = block_dot(wa + 32 * i, ub + 32 * i, k, digits);
        pb[i] = block_dot(wb + 32 * i, ub + 32 * i, k, digits); /* u's loads are shared (CSE) */
        KEEP(wasm_i32x4_add(pa[i], pb[i]));
    }
    v128_t ia = hsum4_i32x4(pa[0], pa[1], pa[2], pa[3]);
    v128_t ib = hsum4_i32x4(pb[0], pb[1], pb[2], pb[3]);
    v128_t x = wasm_v128_load(xd + b);
    *acc_a = wasm_f32x4_add(*acc_a, scale_4blocks(ia, wasm_i32x4_load16x4(s + b),
                                                  wasm_v128_load(d + b), x, digits));
    *acc_b = wasm_f32x4_add(*acc_b, scale_4blocks(ib, wasm_i32x4_load16x4(s + ro * nb + b),
                                                  wasm_v128_load(d + ro * nb + b), x, digits));
}

/* Rows r and r + rows/2 together: two sequential streams through the matrix,
 * far apart, which the hardware prefetchers follow better than one; the pair
 * shares its activation loads. */
static inline __attribute__((always_inline)) void gemv_q8_0(const q8_matrix *w, const int8_t *xu,
                                                            const float *xd, const float *bias,
                                                            float *y, int accumulate,
                                                            const int digits) {
    size_t k = (size_t)w->k, nb = k / QK8_0, nb4 = nb & ~(size_t)3;
    size_t half = (size_t)w->rows / 2;
    for (size_t r = 0; r < half; r++) {
        const int8_t *wr = w->qs + r * k;
        const int16_t *s = w->s + r * nb;
        const float *d = w->d + r * nb;
        v128_t acc_a = wasm_f32x4_splat(0.0f), acc_b = acc_a;
        for (size_t b = 0; b < nb4; b += 4)
            rows2_step(wr, k, half, xu, s, d, xd, nb, b, &acc_a, &acc_b, digits);
        if (nb4 < nb) {
            int n = (int)(nb - nb4);
            const int8_t *wt = wr + nb4 * QK8_0, *ut = xu + nb4 * QK8_0;
            acc_a = wasm_f32x4_add(acc_a,
                                   row_tail(wt, ut, k, s + nb4, d + nb4, xd + nb4, n, digits));
            acc_b = wasm_f32x4_add(acc_b, row_tail(wt + half * k, ut, k, s + half * nb + nb4,
                                                   d + half * nb + nb4, xd + nb4, n, digits));
        }
        gemm_store(y, bias, r, hsum_f32x4(acc_a), accumulate);
        gemm_store(y, bias, r + half, hsum_f32x4(acc_b), accumulate);
    }
    if (w->rows % 2) {
        size_t r = (size_t)w->rows - 1;
        gemm_store(y, bias, r,
                  row_dot(w->qs + r * k, w->s + r * nb, w->d + r * nb, xu, xd, nb, k, digits),
                  accumulate);
    }
}

static __attribute__((noinline)) void gemv_q8_0_1digit(const q8_matrix *w, const int8_t *xu,
                                                       const float *xd, const float *bias,
                                                       float *y, int accumulate) {
    gemv_q8_0(w, xu, xd, bias, y, accumulate, 1);
}

static __attribute__((noinline)) void gemv_q8_0_2digits(const q8_matrix *w, const int8_t *xu,
                                                        const float *xd, const float *bias,
                                                        float *y, int accumulate) {
    gemv_q8_0(w, xu, xd, bias, y, accumulate, 2);
}

/* ---------------------------------------------------------------------------
 * GEMV with plain SIMD (i16 widening), for comparison with the relaxed path.
 * The activations are widened once per K chunk into a stack buffer as
 * q = u - 64 in i16; per row the weights are widened and multiplied with
 * i32x4.dot_i16x8 (no block-sum correction needed); 1 row x 4 blocks per
 * iteration.
 * ------------------------------------------------------------------------- */

#define GEMV_I16_KC 8192 /* activations per chunk: 16 KB of i16 on the stack */

static inline v128_t block_dot_i16(const int8_t *w, const int16_t *x) {
    v128_t w0 = wasm_v128_load(w), w1 = wasm_v128_load(w + 16);
    v128_t a = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w0), wasm_v128_load(x));
    v128_t b = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w0), wasm_v128_load(x + 8));
    v128_t c = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(w1), wasm_v128_load(x + 16));
    v128_t d = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(w1), wasm_v128_load(x + 24));
    return wasm_i32x4_add(wasm_i32x4_add(a, b), wasm_i32x4_add(c, d));
}

void gemv_q8_0_i16(const q8_matrix *w, const int8_t *xu, const float *xd, float *y) {
    int16_t x16[GEMV_I16_KC];
    size_t k = (size_t)w->k, nb = k / QK8_0;
    for (size_t k0 = 0; k0 < k; k0 += GEMV_I16_KC) {
        size_t kc = k - k0 < GEMV_I16_KC ? k - k0 : GEMV_I16_KC;
        v128_t off = wasm_i16x8_splat(ACT_OFFSET(1));
        for (size_t j = 0; j < kc; j += 16) {
            v128_t u = wasm_v128_load(xu + k0 + j);
            wasm_v128_store(x16 + j, wasm_i16x8_sub(wasm_u16x8_extend_low_u8x16(u), off));
            wasm_v128_store(x16 + j + 8, wasm_i16x8_sub(wasm_u16x8_extend_high_u8x16(u), off));
        }
        size_t b0 = k0 / QK8_0, cb = kc / QK8_0;
        for (int r = 0; r < w->rows; r++) {
            const int8_t *wr = w->qs + (size_t)r * k + k0;
            const float *d = w->d + (size_t)r * nb + b0;
            const float *dx = xd + b0;
            v128_t acc = wasm_f32x4_splat(0.0f);
            size_t b = 0;
            for (; b + 4 <= cb; b += 4) {
                const int8_t *wb = wr + b * QK8_0;
                const int16_t *xb = x16 + b * QK8_0;
                v128_t dot = hsum4_i32x4(block_dot_i16(wb, xb), block_dot_i16(wb + 32, xb + 32),
                                         block_dot_i16(wb + 64, xb + 64),
                                         block_dot_i16(wb + 96, xb + 96));
                v128_t scale = wasm_f32x4_mul(wasm_v128_load(d + b), wasm_v128_load(dx + b));
                acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(dot), scale));
            }
            float sum = hsum_f32x4(acc);
            for (; b < cb; b++) {
                v128_t p = block_dot_i16(wr + b * QK8_0, x16 + b * QK8_0);
                p = wasm_i32x4_add(p, wasm_i32x4_shuffle(p, p, 2, 3, 0, 1));
                p = wasm_i32x4_add(p, wasm_i32x4_shuffle(p, p, 1, 0, 3, 2));
                sum += (float)wasm_i32x4_extract_lane(p, 0) * (d[b] * dx[b]);
            }
            y[r] = k0 == 0 ? sum : y[r] + sum;
        }
    }
}

/* ---------------------------------------------------------------------------
 * GEMM: 4 rows x 4 tokens register tile
 * ------------------------------------------------------------------------- */

#define GEMM_ROWS 4                 /* rows per panel (one i32 lane each); a tile has 2 */
#define GEMM_NT 4                   /* tokens per tile */
#define GEMM_KC 1024                /* K chunk (512: 64-token GEMMs ~8 % slower) */
#define GEMM_KCB (GEMM_KC / QK8_0)

/* One block (32 k) of a panel. */
typedef struct {
    /* qs[j]: k-group j (k = 4j .. 4j+3 of the block) of the panel's 4 rows:
     *   [row0 k..k+3 | row1 k..k+3 | row2 k..k+3 | row3 k..k+3]           */
    v128_t qs[QK8_0 / 4];
    v128_t d;    /* f32x4: d of the 4 rows              */
    v128_t negs; /* i32x4: -OFFSET_SUM * s of the 4 rows */
} q8_panel_block;

/* The packed panels of a row group: panel i, block b at panels[i * nb + b]. */
static q8_panel_block *const panels = (q8_panel_block *)gemm_panels;
#define PANEL_BLOCKS (GEMM_PANELS_BYTES / sizeof(q8_panel_block))

/* A token tile's activations for one K chunk: x[b][g][digit][t] is token t's 4 bytes of
 * digit plane `digit` at k-group g (k = 32b + 4g) in all 4 lanes, dx[b][t] its scale in
 * all 4 lanes. */
typedef struct {
    v128_t x[GEMM_KCB * QK8_0 / 4 * 2 * GEMM_NT]; /* [b][g][digit][t] */
    v128_t dx[GEMM_KCB][GEMM_NT];
} act_tile;

/* Pack rows r..r+nr-1 (nr <= 4; missing rows are zero), blocks b0..b0+nb-1. */
static void pack_panel(const q8_matrix *w, int r, int nr, size_t b0, int nb, int digits,
                       q8_panel_block *p) {
    size_t k = (size_t)w->k, kb = k / QK8_0;
    v128_t zero = wasm_i32x4_splat(0);
    const int8_t *rows[4];
    for (int i = 0; i < 4; i++) rows[i] = w->qs + (size_t)(r + (i < nr ? i : 0)) * k;
    for (int b = 0; b < nb; b++) {
        for (int h = 0; h < QK8_0; h += 16) {
            size_t o = (b0 + (size_t)b) * QK8_0 + h;
            v128_t x0 = wasm_v128_load(rows[0] + o);
            v128_t x1 = nr > 1 ? wasm_v128_load(rows[1] + o) : zero;
            v128_t x2 = nr > 2 ? wasm_v128_load(rows[2] + o) : zero;
            v128_t x3 = nr > 3 ? wasm_v128_load(rows[3] + o) : zero;
            v128_t t[4] = {x0, x1, x2, x3};
            transpose4(t);
            v128_t *q = p[b].qs + h / 4;
            for (int i = 0; i < 4; i++) q[i] = t[i];
        }
        float d[4] = {0, 0, 0, 0};
        int32_t s[4] = {0, 0, 0, 0};
        for (int i = 0; i < nr; i++) {
            size_t o = (size_t)(r + i) * kb + b0 + (size_t)b;
            d[i] = w->d[o];
            s[i] = -OFFSET_SUM(digits) * w->s[o];
        }
        p[b].d = wasm_v128_load(d);
        p[b].negs = wasm_v128_load(s);
    }
}

/* Tokens t..t+nt-1 (nt <= 4; missing tokens repeat the first), blocks b0..b0+nb-1. */
static void pack_act_tile(const int8_t *xu, const float *xd, size_t k, int nt, size_t b0, int nb,
                          int digits, act_tile *a) {
    size_t kb = k / QK8_0, stride = (size_t)digits * k;
    for (int t = 0; t < GEMM_NT; t++) {
        size_t tt = (size_t)(t < nt ? t : 0);
        const float *sd = xd + tt * kb + b0;
        for (int digit = 0; digit < digits; digit++) {
            const int8_t *src = xu + tt * stride + (size_t)digit * k + b0 * QK8_0;
            for (int b = 0; b < nb; b++)
                for (int h = 0; h < 2; h++) {
                    v128_t x = wasm_v128_load(src + 32 * b + 16 * h);
                    size_t g = (size_t)(8 * b + 4 * h), step = (size_t)digits * GEMM_NT;
                    v128_t *o = a->x + (g * digits + (size_t)digit) * GEMM_NT + t;
                    o[0] = splat_lane(x, 0);
                    o[step] = splat_lane(x, 1);
                    o[2 * step] = splat_lane(x, 2);
                    o[3 * step] = splat_lane(x, 3);
                }
        }
        for (int b = 0; b < nb; b++) a->dx[b][t] = wasm_f32x4_splat(sd[b]);
    }
}

/* y[t][0..nr) = facc[t] (+ bias), added to y's values when accumulating. */
static inline void store_tile(const v128_t *facc, const float *bias, float *y, size_t rows,
                              int nr, int nt, int accumulate) {
    for (int t = 0; t < nt; t++) {
        float *yt = y + (size_t)t * rows;
        if (nr == 4) {
            v128_t v = facc[t];
            if (bias) v = wasm_f32x4_add(v, wasm_v128_load(bias));
            if (accumulate) v = wasm_f32x4_add(v, wasm_v128_load(yt));
            wasm_v128_store(yt, v);
        } else {
            float out[4];
            wasm_v128_store(out, facc[t]);
            for (int i = 0; i < nr; i++) gemm_store(yt, bias, (size_t)i, out[i], accumulate);
        }
    }
}

/* One tile, 8 rows (panels p0, p1) x 4 tokens (a), over nb blocks (nt and nr say which
 * results are stored, see store_tile). acc[i][t] is the i32x4 dot of block b (one lane
 * per row of panel i), started at -OFFSET_SUM * s so that it ends as I(r,t,b) exactly;
 * facc[i][t] accumulates the f32 results. One basic block per k-group
 * (split_basic_block), per token and pair of k-groups with two digits. */
static inline __attribute__((always_inline)) void tile_8x4(const q8_panel_block *p0,
                                                           const q8_panel_block *p1, int nb,
                                                           const act_tile *a, const float *bias,
                                                           float *y, size_t rows, int nr, int nt,
                                                           int accumulate, const int digits) {
    v128_t radix = wasm_i16x8_splat(ACT_RADIX);
    v128_t facc[2][GEMM_NT];
    for (int t = 0; t < GEMM_NT; t++) facc[0][t] = facc[1][t] = wasm_f32x4_splat(0.0f);
    for (int b = 0; b < nb; b++) {
        const v128_t *pq0 = p0[b].qs, *pq1 = p1[b].qs;
        const v128_t *x = a->x + (size_t)b * (QK8_0 / 4) * digits * GEMM_NT;
        OPAQUE(pq0);
        OPAQUE(pq1);
        OPAQUE(x);
        v128_t acc[2][GEMM_NT];
        for (int t = 0; t < GEMM_NT; t++) {
            acc[0][t] = p0[b].negs;
            acc[1][t] = p1[b].negs;
        }
        UNROLLED
        for (int g = 0; g < QK8_0 / 4; g += digits) {
            if (digits == 1) {
                if (g > 0 && !split_basic_block) break;
                v128_t w0 = pq0[g], w1 = pq1[g];
                UNROLLED
                for (int t = 0; t < GEMM_NT; t++) {
                    acc[0][t] = rdot(w0, x[GEMM_NT * g + t], acc[0][t]);
                    acc[1][t] = rdot(w1, x[GEMM_NT * g + t], acc[1][t]);
                }
                continue;
            }
            /* x[(g * 2 + digit) * 4 + t]: two k-groups' pair sums added in i16 */
            const v128_t *xg = x + 2 * GEMM_NT * g, *xh = xg + 2 * GEMM_NT;
            UNROLLED
            for (int t = 0; t < GEMM_NT; t++) {
                if ((g > 0 || t > 0) && !split_basic_block) break;
                UNROLLED
                for (int i = 0; i < 2; i++) {
                    const v128_t *pq = i ? pq1 : pq0;
                    UNROLLED
                    for (int digit = 0; digit < 2; digit++) {
                        v128_t s16 = wasm_i16x8_add(
                            wasm_i16x8_relaxed_dot_i8x16_i7x16(pq[g], xg[GEMM_NT * digit + t]),
                            wasm_i16x8_relaxed_dot_i8x16_i7x16(pq[g + 1], xh[GEMM_NT * digit + t]));
                        v128_t s32 = digit == 0 ? wasm_i32x4_dot_i16x8(s16, radix)
                                                : wasm_i32x4_extadd_pairwise_i16x8(s16);
                        acc[i][t] = wasm_i32x4_add(acc[i][t], s32);
                    }
                }
            }
        }
        for (int i = 0; i < 2; i++) {
            v128_t d = (i ? p1 : p0)[b].d;
            for (int t = 0; t < GEMM_NT; t++) {
                v128_t scale = wasm_f32x4_mul(d, a->dx[b][t]);
                facc[i][t] =
                    wasm_f32x4_relaxed_madd(wasm_f32x4_convert_i32x4(acc[i][t]), scale, facc[i][t]);
            }
        }
    }
    store_tile(facc[0], bias, y, rows, nr < GEMM_ROWS ? nr : GEMM_ROWS, nt, accumulate);
    if (nr > GEMM_ROWS)
        store_tile(facc[1], bias ? bias + GEMM_ROWS : NULL, y + GEMM_ROWS, rows, nr - GEMM_ROWS, nt,
                   accumulate);
}

/* The tile instances are separate functions so that their register allocation does not
 * compete with the scalars of the loop nest below. */
typedef void (*tile_fn)(const q8_panel_block *, const q8_panel_block *, int, const act_tile *,
                        const float *, float *, size_t, int, int, int);

#define TILE(DIGITS)                                                                          \
    static __attribute__((noinline)) void tile_8x4_##DIGITS(                                  \
        const q8_panel_block *p0, const q8_panel_block *p1, int nb, const act_tile *a,        \
        const float *bias, float *y, size_t rows, int nr, int nt, int accumulate) {           \
        tile_8x4(p0, p1, nb, a, bias, y, rows, nr, nt, accumulate, DIGITS);                   \
    }
TILE(1)
TILE(2)
#undef TILE

/* Loop order: K chunks > row groups (as many panels as `panels` holds) > token tiles >
 * 8-row tiles. The first K chunk adds the bias (and y's values when accumulating), the
 * others add to y. */
static void gemm_q8_0_tiled(const q8_matrix *w, const int8_t *xu, const float *xd,
                            const float *bias, float *y, int n_tokens, int digits,
                            int accumulate) {
    act_tile tile; /* 33 KB of stack */
    tile_fn run_tile = digits == 1 ? tile_8x4_1 : tile_8x4_2;
    size_t k = (size_t)w->k, kb = k / QK8_0, rows = (size_t)w->rows;
    if (kb == 0)
        for (size_t t = 0; t < (size_t)n_tokens; t++)
            for (size_t r = 0; r < rows; r++) gemm_store(y + t * rows, bias, r, 0.0f, accumulate);
    for (size_t b0 = 0; b0 < kb; b0 += GEMM_KCB) {
        int nb = kb - b0 < GEMM_KCB ? (int)(kb - b0) : GEMM_KCB;
        int first = b0 == 0;
        int group = (int)PANEL_BLOCKS / nb / 2 * 2 * GEMM_ROWS;
        for (int r0 = 0; r0 < w->rows; r0 += group) {
            int nrg = w->rows - r0 < group ? w->rows - r0 : group;
            for (int r = 0; r < nrg; r += GEMM_ROWS) {
                int nr = nrg - r < GEMM_ROWS ? nrg - r : GEMM_ROWS;
                pack_panel(w, r0 + r, nr, b0, nb, digits, panels + (size_t)(r / GEMM_ROWS) * nb);
            }
            for (int t = 0; t < n_tokens; t += GEMM_NT) {
                int nt = n_tokens - t < GEMM_NT ? n_tokens - t : GEMM_NT;
                pack_act_tile(xu + (size_t)t * digits * k, xd + (size_t)t * kb, k, nt, b0, nb,
                              digits, &tile);
                for (int r = 0; r < nrg; r += 2 * GEMM_ROWS) {
                    int nr = nrg - r < 2 * GEMM_ROWS ? nrg - r : 2 * GEMM_ROWS;
                    const q8_panel_block *p0 = panels + (size_t)(r / GEMM_ROWS) * nb;
                    const q8_panel_block *p1 = nr > GEMM_ROWS ? p0 + nb : p0;
                    run_tile(p0, p1, nb, &tile, first && bias ? bias + r0 + r : NULL,
                             y + (size_t)t * rows + r0 + r, rows, nr, nt, !first || accumulate);
                }
            }
        }
    }
}

void gemm_q8_0(const q8_matrix *w, const int8_t *xu, const float *xd, const float *bias, float *y,
               int n_tokens, int digits, int accumulate) {
    if (n_tokens != 1)
        gemm_q8_0_tiled(w, xu, xd, bias, y, n_tokens, digits, accumulate);
    else if (digits == 2)
        gemv_q8_0_2digits(w, xu, xd, bias, y, accumulate);
    else
        gemv_q8_0_1digit(w, xu, xd, bias, y, accumulate);
}
