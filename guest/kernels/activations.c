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

/* x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))), with erfc(z) for z = |x| / sqrt(2)
 * as 1 / P(z)^16, P of degree 6 (Abramowitz & Stegun 7.1.28: |error| <= 3e-7; its
 * coefficients below are a_i / sqrt(2)^i, to take |x| directly). Written with
 * h = 0.5 * x * erfc as x - h for x > 0 and h otherwise, so the small results of the
 * negative side are not the difference of two near-equal numbers. No exp: ~2x
 * cheaper than t * exp(-z^2 + Q(t)) at the same accuracy as the test asks of it
 * (|gelu - torch| <= 1e-6 + 1e-5 |torch|; at most 7.1e-7 absolute, near x = -3.9). */
static inline v128_t gelu_f32x4(v128_t x) {
    static const float a[6] = {0.0498673470f, 0.0211410061f, 0.0032776263f,
                               0.0000380036f, 0.0000488906f, 0.0000053830f};
    v128_t ax = wasm_f32x4_abs(x);
    v128_t p = wasm_f32x4_splat(a[5]);
    for (int i = 4; i >= 0; i--)
        p = wasm_f32x4_relaxed_madd(p, ax, wasm_f32x4_splat(a[i]));
    p = wasm_f32x4_relaxed_madd(p, ax, wasm_f32x4_splat(1.0f));
    p = wasm_f32x4_mul(p, p);
    p = wasm_f32x4_mul(p, p);
    p = wasm_f32x4_mul(p, p);
    p = wasm_f32x4_mul(p, p); /* overflows to inf for |x| > ~30: erfc = 0 */
    v128_t h = wasm_f32x4_div(wasm_f32x4_mul(wasm_f32x4_splat(0.5f), x), p);
    return wasm_v128_bitselect(wasm_f32x4_sub(x, h), h, wasm_f32x4_gt(x, wasm_f32x4_splat(0.0f)));
}

/* Vectors per loop iteration, each its own basic block: every loop back-edge spills
 * the 9 constants and reloads them (19 cycles per vector with one vector per
 * iteration, 15 with 4, 14.6 with 8). */
#define GELU_UNROLL 8

void gelu(float *x, int n) {
    int j = 0;
    for (; j + 4 * GELU_UNROLL <= n; j += 4 * GELU_UNROLL) {
        float *xj = x + j;
        OPAQUE(xj);
        UNROLLED
        for (int i = 0; i < 4 * GELU_UNROLL; i += 4) {
            if (i > 0 && !split_basic_block) break;
            wasm_v128_store(xj + i, gelu_f32x4(wasm_v128_load(xj + i)));
        }
    }
    for (; j + 4 <= n; j += 4) wasm_v128_store(x + j, gelu_f32x4(wasm_v128_load(x + j)));
    if (j < n) { /* the tail through a zero-padded vector */
        float t[4] = {0, 0, 0, 0};
        for (int i = j; i < n; i++) t[i - j] = x[i];
        wasm_v128_store(t, gelu_f32x4(wasm_v128_load(t)));
        for (int i = j; i < n; i++) x[i] = t[i - j];
    }
}
