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

/* 0.5 * x * (1 + erf(x / sqrt(2))), evaluated in double two lanes at a time
 * and rounded once to float. */
static inline v128_t gelu_f64x2(v128_t x) {
    v128_t e = erf_f64x2(wasm_f64x2_mul(x, wasm_f64x2_splat(0.70710678118654752)));
    return wasm_f64x2_mul(wasm_f64x2_mul(wasm_f64x2_splat(0.5), x),
                          wasm_f64x2_add(wasm_f64x2_splat(1.0), e));
}

void gelu(float *x, int n) {
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        v128_t v = wasm_v128_load(x + j);
        v128_t lo = gelu_f64x2(wasm_f64x2_promote_low_f32x4(v));
        v128_t hi = gelu_f64x2(wasm_f64x2_promote_low_f32x4(wasm_i32x4_shuffle(v, v, 2, 3, 0, 1)));
        v128_t r = wasm_i32x4_shuffle(wasm_f32x4_demote_f64x2_zero(lo),
                                      wasm_f32x4_demote_f64x2_zero(hi), 0, 1, 4, 5);
        wasm_v128_store(x + j, r);
    }
    for (; j < n; j++) {
        double v = x[j];
        x[j] = (float)(0.5 * v * (1.0 + erf_f64_inline(v * 0.70710678118654752)));
    }
}
