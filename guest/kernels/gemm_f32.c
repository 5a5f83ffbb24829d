/* f32 GEMM with both operands K-contiguous: y[t][r] = x[t,:] . w[r,:] (+ bias[r]).
 *
 * Register tile: 4 rows x 2 tokens = 8 f32x4 accumulators (each holds 4
 * interleaved partial sums of one dot product); the 4 weight vectors are
 * reused by both tokens and each activation vector by the 4 rows. Plain
 * mul + add (no relaxed madd) so results do not depend on the engine.
 * The 4 lanes are summed at the end, then the k % 4 tail is added in scalar. */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

/* NR rows x NT tokens; NR in {1,4}, NT in {1,2}, constants at every call. */
static inline __attribute__((always_inline)) void tile_f32(const float *x, const float *w,
                                                           const float *bias, float *y, int k,
                                                           int rows, const int NR, const int NT) {
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
            if (bias) s += bias[i];
            y[(size_t)t * rows + i] = s;
        }
    }
}

void gemm_f32(const float *x, const float *w, const float *bias, float *y, int n_tokens, int rows,
              int k) {
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
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows, 4, 2);
            for (; r < r1; r++)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows, 1, 2);
        }
        for (; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * k;
            float *yt = y + (size_t)t * rows;
            int r = r0;
            for (; r + 4 <= r1; r += 4)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows, 4, 1);
            for (; r < r1; r++)
                tile_f32(xt, w + (size_t)r * k, bias ? bias + r : NULL, yt + r, k, rows, 1, 1);
        }
    }
}
