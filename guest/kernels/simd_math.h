/* Small inline helpers shared by the kernels: f32x4 exp, erf in double,
 * horizontal sums, half-away-from-zero rounding. */
#ifndef BORDA_SIMD_MATH_H
#define BORDA_SIMD_MATH_H

#include <stdint.h>
#include <wasm_simd128.h>

/* Hides where pointer p comes from (an empty asm statement). After it, loads
 * at p + constant keep the constant in the load's offset immediate, which
 * Cranelift folds into the x86 addressing mode; otherwise LLVM's loop strength
 * reduction rewrites them as base + induction variable + constant, an i32 add
 * (one lea) per load. */
#define OPAQUE(p) __asm__("" : "+r"(p))

/* Always 1. A never-taken branch on it ends a basic block without adding a loop
 * back-edge (which carries an epoch check, across which Cranelift spills every
 * live v128); being volatile, neither clang nor Cranelift can fold it. It costs
 * a load and a predictable jump. Cranelift emits a block's loads before its
 * arithmetic, so every v128 loaded in a block is live at once: the hot loops
 * are cut into blocks of at most ~12 loads this way (see gemm_q8_0.c). */
static const volatile int32_t split_basic_block = 1;

/* Fully unrolls the next loop, whose arrays must live in registers; LLVM gives
 * up on its own once a body is large. */
#define UNROLLED _Pragma("clang loop unroll(full)")

/* Broadcast i32 lane j (a constant after inlining) to all lanes. */
static inline __attribute__((always_inline)) v128_t splat_lane(v128_t v, int j) {
    switch (j) {
    case 0: return wasm_i32x4_shuffle(v, v, 0, 0, 0, 0);
    case 1: return wasm_i32x4_shuffle(v, v, 1, 1, 1, 1);
    case 2: return wasm_i32x4_shuffle(v, v, 2, 2, 2, 2);
    default: return wasm_i32x4_shuffle(v, v, 3, 3, 3, 3);
    }
}

/* The 4x4 transpose of 32-bit lanes: rows x[0..3] -> columns x[0..3]. */
static inline __attribute__((always_inline)) void transpose4(v128_t x[4]) {
    v128_t t0 = wasm_i32x4_shuffle(x[0], x[1], 0, 4, 1, 5);
    v128_t t1 = wasm_i32x4_shuffle(x[2], x[3], 0, 4, 1, 5);
    v128_t t2 = wasm_i32x4_shuffle(x[0], x[1], 2, 6, 3, 7);
    v128_t t3 = wasm_i32x4_shuffle(x[2], x[3], 2, 6, 3, 7);
    x[0] = wasm_i64x2_shuffle(t0, t1, 0, 2);
    x[1] = wasm_i64x2_shuffle(t0, t1, 1, 3);
    x[2] = wasm_i64x2_shuffle(t2, t3, 0, 2);
    x[3] = wasm_i64x2_shuffle(t2, t3, 1, 3);
}

/* A GEMM output (borda.h): y[r] = v + bias[r] (bias may be NULL), or y[r] += that
 * when accumulating. */
static inline void gemm_store(float *y, const float *bias, size_t r, float v, int accumulate) {
    if (bias) v += bias[r];
    y[r] = accumulate ? y[r] + v : v;
}

/* Sum of the 4 lanes. */
static inline float hsum_f32x4(v128_t v) {
    v128_t t = wasm_f32x4_add(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    t = wasm_f32x4_add(t, wasm_i32x4_shuffle(t, t, 1, 0, 3, 2));
    return wasm_f32x4_extract_lane(t, 0);
}

static inline float hmax_f32x4(v128_t v) {
    v128_t t = wasm_f32x4_max(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    t = wasm_f32x4_max(t, wasm_i32x4_shuffle(t, t, 1, 0, 3, 2));
    return wasm_f32x4_extract_lane(t, 0);
}

/* Transpose-and-add: returns [sum(a), sum(b), sum(c), sum(d)] of four i32x4. */
static inline v128_t hsum4_i32x4(v128_t a, v128_t b, v128_t c, v128_t d) {
    v128_t ab = wasm_i32x4_add(wasm_i32x4_shuffle(a, b, 0, 4, 1, 5),
                               wasm_i32x4_shuffle(a, b, 2, 6, 3, 7)); /* a01 b01 a23 b23 */
    v128_t cd = wasm_i32x4_add(wasm_i32x4_shuffle(c, d, 0, 4, 1, 5),
                               wasm_i32x4_shuffle(c, d, 2, 6, 3, 7));
    return wasm_i32x4_add(wasm_i32x4_shuffle(ab, cd, 0, 1, 4, 5),
                          wasm_i32x4_shuffle(ab, cd, 2, 3, 6, 7));
}

/* Same for f32x4. */
static inline v128_t hsum4_f32x4(v128_t a, v128_t b, v128_t c, v128_t d) {
    v128_t ab = wasm_f32x4_add(wasm_i32x4_shuffle(a, b, 0, 4, 1, 5),
                               wasm_i32x4_shuffle(a, b, 2, 6, 3, 7));
    v128_t cd = wasm_f32x4_add(wasm_i32x4_shuffle(c, d, 0, 4, 1, 5),
                               wasm_i32x4_shuffle(c, d, 2, 6, 3, 7));
    return wasm_f32x4_add(wasm_i32x4_shuffle(ab, cd, 0, 1, 4, 5),
                          wasm_i32x4_shuffle(ab, cd, 2, 3, 6, 7));
}

/* roundf (half away from zero) per lane, as floor(a) + floor(2*(a - floor(a)))
 * with the sign put back; bit-identical to borda_roundf / gguf's np_roundf. */
static inline v128_t round_away_f32x4(v128_t x) {
    v128_t a = wasm_f32x4_abs(x);
    v128_t f = wasm_f32x4_floor(a);
    v128_t frac2 = wasm_f32x4_add(wasm_f32x4_sub(a, f), wasm_f32x4_sub(a, f));
    v128_t r = wasm_f32x4_add(f, wasm_f32x4_floor(frac2));
    v128_t sign = wasm_v128_and(x, wasm_i32x4_splat((int32_t)0x80000000u));
    return wasm_v128_or(r, sign);
}

/* exp per lane, ~2 ulp. n = round(x*log2e), r = x - n*ln2 with ln2 split in a
 * hi part with 8 significant bits (n*LN2_HI is exact) and a lo part; degree-7
 * Taylor on |r| <= 0.35; 2^n applied as two factors 2^(n/2) * 2^(n-n/2) so
 * that results in the subnormal range and overflow to inf come out right. */
#define EXP_ROUNDER 12582912.0f /* 1.5 * 2^23 */
static inline v128_t exp_f32x4(v128_t x) {
    /* pmin/pmax are single x86 instructions (min/max spell out NaN rules) */
    x = wasm_f32x4_pmin(wasm_f32x4_pmax(x, wasm_f32x4_splat(-110.0f)), wasm_f32x4_splat(89.0f));
    /* round to nearest even by adding 1.5 * 2^23: t's low mantissa bits hold n */
    v128_t t = wasm_f32x4_add(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504088896341f)),
                              wasm_f32x4_splat(EXP_ROUNDER));
    v128_t n = wasm_f32x4_sub(t, wasm_f32x4_splat(EXP_ROUNDER));
    v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(n, wasm_f32x4_splat(0.693359375f)));
    r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, wasm_f32x4_splat(-2.12194440e-4f)));
    /* 1 + r (1 + r q(r)), q by Estrin's scheme: a chain of 6 steps instead of
     * Horner's 7 x 2, with Horner's accuracy where the terms are largest */
    v128_t r2 = wasm_f32x4_mul(r, r), r4 = wasm_f32x4_mul(r2, r2);
    v128_t q01 =
        wasm_f32x4_add(wasm_f32x4_splat(0.5f), wasm_f32x4_mul(r, wasm_f32x4_splat(1.0f / 6)));
    v128_t q23 = wasm_f32x4_add(wasm_f32x4_splat(1.0f / 24),
                                wasm_f32x4_mul(r, wasm_f32x4_splat(1.0f / 120)));
    v128_t q45 = wasm_f32x4_add(wasm_f32x4_splat(1.0f / 720),
                                wasm_f32x4_mul(r, wasm_f32x4_splat(1.0f / 5040)));
    v128_t q =
        wasm_f32x4_add(wasm_f32x4_add(q01, wasm_f32x4_mul(q23, r2)), wasm_f32x4_mul(q45, r4));
    v128_t qr1 = wasm_f32x4_add(wasm_f32x4_mul(q, r), wasm_f32x4_splat(1.0f));
    v128_t p = wasm_f32x4_add(wasm_f32x4_mul(qr1, r), wasm_f32x4_splat(1.0f));
    v128_t ni = wasm_i32x4_sub(t, wasm_f32x4_splat(EXP_ROUNDER)); /* n in [-159, 129] */
    v128_t n1 = wasm_i32x4_shr(ni, 1);
    v128_t n2 = wasm_i32x4_sub(ni, n1);
    v128_t s1 = wasm_i32x4_shl(wasm_i32x4_add(n1, wasm_i32x4_splat(127)), 23);
    v128_t s2 = wasm_i32x4_shl(wasm_i32x4_add(n2, wasm_i32x4_splat(127)), 23);
    return wasm_f32x4_mul(wasm_f32x4_mul(p, s1), s2);
}

/* erf(x) = x * P(u), u = 2x^2/3.9^2 - 1, for |x| <= 3.9; +-1 beyond (there
 * 1 - erf(x) < 3.5e-8). P is a degree-18 Chebyshev fit converted to powers of
 * u (coefficients <= 0.37, so Horner in u is well conditioned); max abs error
 * 2.4e-10 in double. */
#define ERF_X_MAX 3.9
#define ERF_NCOEF 19
static const double ERF_COEF[ERF_NCOEF] = {
    0.36258398085170063,     -0.18101105050459695,   0.13469001014906673,
    -0.10953350594032352,    0.090693056325168886,   -0.073793958640016394,
    0.057718086170226807,    -0.042799438476164103,  0.029876740812555477,
    -0.019607381287846705,   0.012018428584235142,   -0.0067777595325584222,
    0.0036678247195403297,   -0.0020638990583598743, 0.00097715367925575963,
    -0.0002575094066673143,  0.00011667385593614024, -0.00013995688206691856,
    5.2752131834997758e-05,
};

static inline double erf_f64_inline(double x) {
    if (x > ERF_X_MAX) return 1.0;
    if (x < -ERF_X_MAX) return -1.0;
    double u = x * x * (2.0 / (ERF_X_MAX * ERF_X_MAX)) - 1.0;
    double p = ERF_COEF[ERF_NCOEF - 1];
    for (int i = ERF_NCOEF - 2; i >= 0; i--) p = p * u + ERF_COEF[i];
    return x * p;
}

/* 16 int8 * scale -> 16 floats */
static inline void dequant16_f32(const int8_t *q, float d, float *y) {
    v128_t v = wasm_v128_load(q);
    v128_t lo = wasm_i16x8_extend_low_i8x16(v), hi = wasm_i16x8_extend_high_i8x16(v);
    v128_t i0 = wasm_i32x4_extend_low_i16x8(lo), i1 = wasm_i32x4_extend_high_i16x8(lo);
    v128_t i2 = wasm_i32x4_extend_low_i16x8(hi), i3 = wasm_i32x4_extend_high_i16x8(hi);
    v128_t vd = wasm_f32x4_splat(d);
    wasm_v128_store(y + 0, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(i0), vd));
    wasm_v128_store(y + 4, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(i1), vd));
    wasm_v128_store(y + 8, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(i2), vd));
    wasm_v128_store(y + 12, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(i3), vd));
}

#endif
