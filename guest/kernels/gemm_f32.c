/* f32 GEMM with both operands K-contiguous: y[t][r] = x[t,:] . w[r,:] (+ bias[r]),
 * added to y[t][r] when accumulating.
 * Plain mul + add (no relaxed madd), so results do not depend on the engine.
 *
 * Fewer than 4 tokens (decode: memory bound): register tile of 4 rows x 1-2
 * tokens straight from the row-major weights, 8 f32x4 accumulators each
 * holding 4 interleaved partial sums of one dot product, summed at the end.
 *
 * 4 tokens or more (compute bound): the Q8_0 GEMM's scheme (gemm_q8_0.c) in
 * f32. Rows are packed 4 to a panel, one v128 = the 4 rows at one k, and each
 * token tile's activations are broadcast once per K chunk, so a register tile
 * of 8 rows x 4 tokens takes 2 panel and 4 activation loads per k for 8 mul +
 * 8 add, with no horizontal sums; one k per basic block. Loop order: K chunks
 * > row groups (panels in L2) > token tiles > 8-row tiles. Measured on MiniLM
 * shapes x 512 tokens: 10.3 GMAC/s with the 4x2 tile, 17.3 with this one
 * (MiniLM f32 embeddings 7.6 -> 11.4 sentences/s). */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

/* NR rows x NT tokens; NR in {1,4}, NT in {1,2}, constants at every call. */
static inline __attribute__((always_inline)) void tile_f32(const float *x, const float *w,
                                                           const float *bias, float *y, int k,
                                                           int rows, int accumulate, const int NR,
                                                           const int NT) {
    v128_t acc[4][2];
    for (int i = 0; i < NR; i++)
        for (int t = 0; t < NT; t++) acc[i][t] = wasm_f32x4_splat(0.0f);
    /* 8 k per iteration (two 4-wide steps) so the loop back-edge, and with
     * it the epoch check, is amortised over 64 mul+add for the 4x2 tile */
    int j = 0;
    for (; j + 8 <= k; j += 8) {
        for (int jj = j; jj < j + 8; jj += 4) {
            v128_t xv[2];
            for (int t = 0; t < NT; t++) xv[t] = wasm_v128_load(x + (size_t)t * k + jj);
            for (int i = 0; i < NR; i++) {
                v128_t wv = wasm_v128_load(w + (size_t)i * k + jj);
                for (int t = 0; t < NT; t++)
                    acc[i][t] = wasm_f32x4_add(acc[i][t], wasm_f32x4_mul(wv, xv[t]));
            }
        }
    }
    for (; j + 4 <= k; j += 4) {
        v128_t xv[2];
        for (int t = 0; t < NT; t++) xv[t] = wasm_v128_load(x + (size_t)t * k + j);
        for (int i = 0; i < NR; i++) {
            v128_t wv = wasm_v128_load(w + (size_t)i * k + j);
            for (int t = 0; t < NT; t++)
                acc[i][t] = wasm_f32x4_add(acc[i][t], wasm_f32x4_mul(wv, xv[t]));
        }
    }
    for (int t = 0; t < NT; t++) {
        float sum[4];
        if (NR == 4) {
            wasm_v128_store(sum, hsum4_f32x4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
        } else {
            sum[0] = hsum_f32x4(acc[0][t]);
        }
        for (int i = 0; i < NR; i++) {
            float s = sum[i];
            for (int jj = j; jj < k; jj++) s += x[(size_t)t * k + jj] * w[(size_t)i * k + jj];
            gemm_store(y + (size_t)t * rows, bias, (size_t)i, s, accumulate);
        }
    }
}

static void gemm_f32_rows(const float *x, const float *w, const float *bias, float *y,
                          int n_tokens, int rows, int k, int accumulate) {
    /* rows in blocks of ~256 KB of weights, reused from L2 by all tokens */
    int rb = 65536 / (k > 0 ? k : 1);
    rb = rb < 4 ? 4 : rb / 4 * 4;
    for (int r0 = 0; r0 < rows; r0 += rb) {
        int r1 = r0 + rb < rows ? r0 + rb : rows;
        int t = 0;
        for (; t + 2 <= n_tokens; t += 2) {
            const float *xt = x + (size_t)t * k;
            float *yt = y + (size_t)t * rows;
            int r = r0;
            for (; r + 4 <= r1; r += 4)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows,
                         accumulate, 4, 2);
            for (; r < r1; r++)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows,
                         accumulate, 1, 2);
        }
        for (; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * k;
            float *yt = y + (size_t)t * rows;
            int r = r0;
            for (; r + 4 <= r1; r += 4)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows,
                         accumulate, 4, 1);
            for (; r < r1; r++)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows,
                         accumulate, 1, 1);
        }
    }
}

/* ---------------------------------------------------------------------------
 * 4 tokens or more: packed panels x broadcast activations
 * ------------------------------------------------------------------------- */

#define F32_NT 4            /* tokens per tile */
#define F32_KC 256          /* K chunk: a token tile's broadcasts are 16 KB */
#define F32_STEP 64 /* k per iteration of the tile's loop: each back-edge spills the 8 sums
                        (16 k: 14.5 GMAC/s, 32: 16.5, 64: 17.3) */

/* The 4 floats at p, of which the first n (> 0) exist: zero past them, nothing read. */
static inline v128_t load_upto4(const float *p, int n) {
    if (n >= 4) return wasm_v128_load(p);
    float t[4] = {0, 0, 0, 0};
    for (int e = 0; e < n; e++) t[e] = p[e];
    return wasm_v128_load(t);
}

/* Rows r..r+nr-1 (nr <= 4, missing rows zero) of k0..k0+kc (kc a multiple of 4,
 * past k zero) as p[j] = the 4 rows at k0 + j. */
static void pack_panel_f32(const float *w, int k, int r, int nr, int k0, int kc, v128_t *p) {
    for (int j = 0; j < kc; j += 4) {
        v128_t x[4];
        for (int i = 0; i < 4; i++)
            x[i] = i < nr ? load_upto4(w + (size_t)(r + i) * k + k0 + j, k - k0 - j)
                          : wasm_f32x4_splat(0.0f);
        transpose4(x);
        for (int e = 0; e < 4; e++) p[j + e] = x[e];
    }
}

/* Tokens t..t+nt-1 (missing tokens repeat the first) of k0..k0+kc as a[4j + t] =
 * x[t][k0 + j] in all lanes (past k: zero). */
static void pack_act_f32(const float *x, int k, int nt, int k0, int kc, v128_t *a) {
    for (int t = 0; t < F32_NT; t++) {
        const float *xt = x + (size_t)(t < nt ? t : 0) * k + k0;
        for (int j = 0; j < kc; j += 4) {
            v128_t v = load_upto4(xt + j, k - k0 - j);
            for (int e = 0; e < 4; e++) a[4 * (j + e) + t] = splat_lane(v, e);
        }
    }
}

/* acc[i][t] += p_i[j] * a[4j + t] for j < n, one k per basic block. */
static inline __attribute__((always_inline)) void madd_8x4(v128_t acc[2][F32_NT],
                                                           const v128_t *p0, const v128_t *p1,
                                                           const v128_t *a, const int n) {
    UNROLLED
    for (int j = 0; j < n; j++) {
        if (j > 0 && !split_basic_block) break;
        v128_t w0 = p0[j], w1 = p1[j];
        UNROLLED
        for (int t = 0; t < F32_NT; t++) {
            v128_t x = a[4 * j + t];
            acc[0][t] = wasm_f32x4_add(acc[0][t], wasm_f32x4_mul(w0, x));
            acc[1][t] = wasm_f32x4_add(acc[1][t], wasm_f32x4_mul(w1, x));
        }
    }
}

/* One tile: 8 rows (panels p0, p1) x 4 tokens over a K chunk of kc (a multiple of
 * 4); y (row stride `rows`) gets the nr x nt results plus bias (unless NULL), added
 * to y's values when accumulating. */
static __attribute__((noinline)) void tile_f32_8x4(const v128_t *p0, const v128_t *p1, int kc,
                                                   const v128_t *a, const float *bias, float *y,
                                                   size_t rows, int nr, int nt, int accumulate) {
    v128_t acc[2][F32_NT];
    for (int t = 0; t < F32_NT; t++) acc[0][t] = acc[1][t] = wasm_f32x4_splat(0.0f);
    int j = 0;
    for (; j + F32_STEP <= kc; j += F32_STEP) {
        const v128_t *q0 = p0 + j, *q1 = p1 + j, *x = a + 4 * j;
        OPAQUE(q0);
        OPAQUE(q1);
        OPAQUE(x);
        madd_8x4(acc, q0, q1, x, F32_STEP);
    }
    for (; j < kc; j += 4) madd_8x4(acc, p0 + j, p1 + j, a + 4 * j, 4);
    float out[2][F32_NT][4]; /* indexed by constants only, so that acc stays in registers */
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < F32_NT; t++) wasm_v128_store(out[i][t], acc[i][t]);
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            gemm_store(y + (size_t)t * rows, bias, (size_t)r, out[r / 4][t][r % 4], accumulate);
}

/* The first K chunk adds the bias (and y's values when accumulating), the others add
 * to y. */
static void gemm_f32_tiled(const float *x, const float *w, const float *bias, float *y,
                           int n_tokens, int rows, int k, int accumulate) {
    v128_t act[F32_KC * F32_NT]; /* 16 KB of stack */
    v128_t *panels = (v128_t *)gemm_panels;
    for (int k0 = 0; k0 < k; k0 += F32_KC) {
        int kc = k - k0 < F32_KC ? (k - k0 + 3) / 4 * 4 : F32_KC;
        int group = (int)(GEMM_PANELS_BYTES / sizeof(v128_t)) / kc / 2 * 8; /* rows */
        for (int r0 = 0; r0 < rows; r0 += group) {
            int nrg = rows - r0 < group ? rows - r0 : group;
            for (int r = 0; r < nrg; r += 4)
                pack_panel_f32(w, k, r0 + r, nrg - r < 4 ? nrg - r : 4, k0, kc,
                               panels + (size_t)(r / 4) * kc);
            for (int t = 0; t < n_tokens; t += F32_NT) {
                int nt = n_tokens - t < F32_NT ? n_tokens - t : F32_NT;
                pack_act_f32(x + (size_t)t * k, k, nt, k0, kc, act);
                for (int r = 0; r < nrg; r += 8) {
                    const v128_t *p0 = panels + (size_t)(r / 4) * kc;
                    const v128_t *p1 = nrg - r > 4 ? p0 + kc : p0;
                    tile_f32_8x4(p0, p1, kc, act, bias && k0 == 0 ? bias + r0 + r : NULL,
                                 y + (size_t)t * rows + r0 + r, (size_t)rows,
                                 nrg - r < 8 ? nrg - r : 8, nt, k0 > 0 || accumulate);
                }
            }
        }
    }
}

void gemm_f32(const float *x, const float *w, const float *bias, float *y, int n_tokens, int rows,
              int k, int accumulate) {
    if (n_tokens >= F32_NT && k > 0)
        gemm_f32_tiled(x, w, bias, y, n_tokens, rows, k, accumulate);
    else
        gemm_f32_rows(x, w, bias, y, n_tokens, rows, k, accumulate);
}
