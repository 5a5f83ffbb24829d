/* Softmax and the MLP activations, in place, f32x4 with scalar tails. */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

void softmax(float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * n;
        v128_t vm = wasm_f32x4_splat(-__builtin_inff());
        int j = 0;
        for (; j + 4 <= n; j += 4) vm = wasm_f32x4_max(vm, wasm_v128_load(xr + j));
        float m = hmax_f32x4(vm);
        for (; j < n; j++) m = xr[j] > m ? xr[j] : m;
        vm = wasm_f32x4_splat(m);
        v128_t vs = wasm_f32x4_splat(0.0f);
        for (j = 0; j + 4 <= n; j += 4) {
            v128_t e = exp_f32x4(wasm_f32x4_sub(wasm_v128_load(xr + j), vm));
            wasm_v128_store(xr + j, e);
            vs = wasm_f32x4_add(vs, e);
        }
        float sum = hsum_f32x4(vs);
        for (; j < n; j++) {
            xr[j] = borda_expf(xr[j] - m);
            sum += xr[j];
        }
        v128_t vsum = wasm_f32x4_splat(sum);
        for (j = 0; j + 4 <= n; j += 4)
            wasm_v128_store(xr + j, wasm_f32x4_div(wasm_v128_load(xr + j), vsum));
        for (; j < n; j++) xr[j] /= sum;
    }
}

static inline v128_t silu_f32x4(v128_t x) {
    v128_t e = exp_f32x4(wasm_f32x4_neg(x));
    return wasm_f32x4_div(x, wasm_f32x4_add(wasm_f32x4_splat(1.0f), e));
}

static inline float silu_1(float x) { return x / (1.0f + borda_expf(-x)); }

void silu(float *x, int n) {
    int j = 0;
    for (; j + 4 <= n; j += 4) wasm_v128_store(x + j, silu_f32x4(wasm_v128_load(x + j)));
    for (; j < n; j++) x[j] = silu_1(x[j]);
}

void swiglu(const float *gate, const float *up, float *y, int n) {
    int j = 0;
    for (; j + 4 <= n; j += 4)
        wasm_v128_store(y + j, wasm_f32x4_mul(silu_f32x4(wasm_v128_load(gate + j)),
                                              wasm_v128_load(up + j)));
    for (; j < n; j++) y[j] = silu_1(gate[j]) * up[j];
}

/* erfc(z) for z >= 0 as t * exp(-z^2 + P(t)), t = 1 / (1 + z/2): the
 * Chebyshev-fitted form of Numerical Recipes' erfcc, fractional error < 1.2e-7
 * everywhere (plus a few f32 ulps here). */
static inline v128_t erfc_f32x4(v128_t z) {
    static const float c[10] = {-1.26551223f, 1.00002368f, 0.37409196f,  0.09678418f,
                                -0.18628806f, 0.27886807f, -1.13520398f, 1.48851587f,
                                -0.82215223f, 0.17087277f};
    v128_t t = wasm_f32x4_div(wasm_f32x4_splat(1.0f),
                              wasm_f32x4_add(wasm_f32x4_splat(1.0f),
                                             wasm_f32x4_mul(wasm_f32x4_splat(0.5f), z)));
    /* Estrin's scheme in t, t^2, t^4, t^8: a chain of 5 steps instead of 9 */
    v128_t q[5];
    for (int i = 0; i < 5; i++)
        q[i] = wasm_f32x4_add(wasm_f32x4_splat(c[2 * i]),
                              wasm_f32x4_mul(wasm_f32x4_splat(c[2 * i + 1]), t));
    v128_t t2 = wasm_f32x4_mul(t, t), t4 = wasm_f32x4_mul(t2, t2), t8 = wasm_f32x4_mul(t4, t4);
    v128_t p = wasm_f32x4_add(
        wasm_f32x4_add(wasm_f32x4_add(q[0], wasm_f32x4_mul(q[1], t2)),
                       wasm_f32x4_mul(wasm_f32x4_add(q[2], wasm_f32x4_mul(q[3], t2)), t4)),
        wasm_f32x4_mul(q[4], t8));
    return wasm_f32x4_mul(t, exp_f32x4(wasm_f32x4_sub(p, wasm_f32x4_mul(z, z))));
}

/* x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))), written with h = 0.5 * x *
 * erfc(|x| / sqrt(2)) as x - h for x > 0 and h otherwise, so both tails keep
 * their relative accuracy (no 1 - erfc cancellation where the result is small). */
static inline v128_t gelu_f32x4(v128_t x) {
    v128_t z = wasm_f32x4_mul(wasm_f32x4_abs(x), wasm_f32x4_splat(0.70710678118654752f));
    v128_t h = wasm_f32x4_mul(wasm_f32x4_mul(wasm_f32x4_splat(0.5f), x), erfc_f32x4(z));
    return wasm_v128_bitselect(wasm_f32x4_sub(x, h), h, wasm_f32x4_gt(x, wasm_f32x4_splat(0.0f)));
}

void gelu(float *x, int n) {
    int j = 0;
    for (; j + 4 <= n; j += 4) wasm_v128_store(x + j, gelu_f32x4(wasm_v128_load(x + j)));
    if (j < n) { /* the tail through a zero-padded vector */
        float t[4] = {0, 0, 0, 0};
        for (int i = j; i < n; i++) t[i - j] = x[i];
        wasm_v128_store(t, gelu_f32x4(wasm_v128_load(t)));
        for (int i = j; i < n; i++) x[i] = t[i - j];
    }
}
