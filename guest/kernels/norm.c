/* RMSNorm and LayerNorm over the last dimension, one token (row) at a time.
 * x and y may be the same buffer: each row is fully reduced before any of it
 * is written. */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

static float sum_sq(const float *x, int n) {
    v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0;
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        v128_t v0 = wasm_v128_load(x + j), v1 = wasm_v128_load(x + j + 4);
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(v0, v0));
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(v1, v1));
    }
    float s = hsum_f32x4(wasm_f32x4_add(a0, a1));
    for (; j < n; j++) s += x[j] * x[j];
    return s;
}

static float sum(const float *x, int n) {
    v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0;
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        a0 = wasm_f32x4_add(a0, wasm_v128_load(x + j));
        a1 = wasm_f32x4_add(a1, wasm_v128_load(x + j + 4));
    }
    float s = hsum_f32x4(wasm_f32x4_add(a0, a1));
    for (; j < n; j++) s += x[j];
    return s;
}

/* sum of (x - mean)^2 */
static float sum_sq_centered(const float *x, float mean, int n) {
    v128_t m = wasm_f32x4_splat(mean);
    v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0;
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        v128_t v0 = wasm_f32x4_sub(wasm_v128_load(x + j), m);
        v128_t v1 = wasm_f32x4_sub(wasm_v128_load(x + j + 4), m);
        a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(v0, v0));
        a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(v1, v1));
    }
    float s = hsum_f32x4(wasm_f32x4_add(a0, a1));
    for (; j < n; j++) s += (x[j] - mean) * (x[j] - mean);
    return s;
}

/* y = x * (1/sqrt(mean(x^2) + eps)) * w, in that order (as HF does). */
void rmsnorm(const float *x, const float *w, float *y, int n_tokens, int dim, float eps) {
    for (int t = 0; t < n_tokens; t++) {
        const float *xt = x + (size_t)t * dim;
        float *yt = y + (size_t)t * dim;
        float inv = 1.0f / __builtin_sqrtf(sum_sq(xt, dim) / (float)dim + eps);
        v128_t vinv = wasm_f32x4_splat(inv);
        int j = 0;
        for (; j + 4 <= dim; j += 4)
            wasm_v128_store(yt + j, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(xt + j), vinv),
                                                   wasm_v128_load(w + j)));
        for (; j < dim; j++) yt[j] = (xt[j] * inv) * w[j];
    }
}

/* y = (x - mean) * (1/sqrt(var + eps)) * w + b, biased variance, two passes. */
void layernorm(const float *x, const float *w, const float *b, float *y, int n_tokens, int dim,
               float eps) {
    for (int t = 0; t < n_tokens; t++) {
        const float *xt = x + (size_t)t * dim;
        float *yt = y + (size_t)t * dim;
        float mean = sum(xt, dim) / (float)dim;
        float var = sum_sq_centered(xt, mean, dim) / (float)dim;
        float inv = 1.0f / __builtin_sqrtf(var + eps);
        v128_t vm = wasm_f32x4_splat(mean), vinv = wasm_f32x4_splat(inv);
        int j = 0;
        for (; j + 4 <= dim; j += 4) {
            v128_t v = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(xt + j), vm), vinv);
            v = wasm_f32x4_add(wasm_f32x4_mul(v, wasm_v128_load(w + j)), wasm_v128_load(b + j));
            wasm_v128_store(yt + j, v);
        }
        for (; j < dim; j++) yt[j] = (xt[j] - mean) * inv * w[j] + b[j];
    }
}
