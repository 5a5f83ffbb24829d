/* Freestanding replacements for the few libm functions the kernels need.
 *
 * Scalar exp/erf/sincos evaluate in double and round once to float, which
 * keeps them within 1 ulp (exp, sincos) or 1e-9 absolute (erf) without
 * delicate float error analysis. The f32x4 versions used by the hot loops live
 * in simd_math.h. */
#include "borda.h"

#include "simd_math.h"

static uint32_t f32_bits(float x) { return __builtin_bit_cast(uint32_t, x); }
static float f32_from_bits(uint32_t b) { return __builtin_bit_cast(float, b); }

float borda_sqrtf(float x) { return __builtin_sqrtf(x); }

/* Half away from zero as floor(a) + floor(2 * (a - floor(a))), the formula of
 * gguf-py's np_roundf; every step is exact in f32, so it equals C roundf. */
float borda_roundf(float x) {
    float a = __builtin_fabsf(x);
    float f = __builtin_floorf(a);
    float r = f + __builtin_floorf(2.0f * (a - f));
    return __builtin_copysignf(r, x);
}

/* exp(x) = 2^n * exp(r), r = x - n*ln2 in [-ln2/2, ln2/2]. In double the
 * degree-11 Taylor polynomial is accurate to ~1e-13, so the only real error is
 * the final rounding to float, which also produces inf / subnormals / 0. */
float borda_expf(float x) {
    if (x != x) return x;
    if (x > 100.0f) return __builtin_inff();
    if (x < -110.0f) return 0.0f;
    double xd = x;
    double n = __builtin_nearbyint(xd * 1.4426950408889634);
    double r = xd - n * 0.69314718055994531;
    double p = 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t e = (int64_t)n + 1023; /* n in [-159, 145]: 2^n is a normal double */
    double scale = __builtin_bit_cast(double, (uint64_t)e << 52);
    return (float)(p * scale);
}

float borda_erff(float x) { return (float)erf_f64_inline((double)x); }

/* sin and cos of r in [-pi/4, pi/4], Taylor series in double (error < 1e-16). */
static double sin_kernel(double r) {
    double r2 = r * r;
    double p = -1.0 / 1307674368000.0;
    p = p * r2 + 1.0 / 6227020800.0;
    p = p * r2 - 1.0 / 39916800.0;
    p = p * r2 + 1.0 / 362880.0;
    p = p * r2 - 1.0 / 5040.0;
    p = p * r2 + 1.0 / 120.0;
    p = p * r2 - 1.0 / 6.0;
    return r + r * r2 * p;
}

static double cos_kernel(double r) {
    double r2 = r * r;
    double p = 1.0 / 20922789888000.0;
    p = p * r2 - 1.0 / 87178291200.0;
    p = p * r2 + 1.0 / 479001600.0;
    p = p * r2 - 1.0 / 3628800.0;
    p = p * r2 + 1.0 / 40320.0;
    p = p * r2 - 1.0 / 720.0;
    p = p * r2 + 1.0 / 24.0;
    p = p * r2 - 0.5;
    return 1.0 + r2 * p;
}

/* Range reduction x = k*pi/2 + r in double. pi/2 is split Cody-Waite style:
 * PIO2_HI has 33 significant bits, so k*PIO2_HI is exact for |k| < 2^20,
 * i.e. |x| up to ~1.6e6 (RoPE angles stay below ~1e5). */
void borda_sincosf(float x, float *s, float *c) {
    const double PIO2_HI = 1.57079632673412561417e+00;
    const double PIO2_LO = 6.07710050650619224932e-11;
    double xd = x;
    double k = __builtin_nearbyint(xd * 0.63661977236758134);
    double r = (xd - k * PIO2_HI) - k * PIO2_LO;
    double sr = sin_kernel(r), cr = cos_kernel(r);
    int q = (int)((int64_t)k & 3);
    double so, co;
    if (q == 0) {
        so = sr;
        co = cr;
    } else if (q == 1) {
        so = cr;
        co = -sr;
    } else if (q == 2) {
        so = -sr;
        co = -cr;
    } else {
        so = -cr;
        co = sr;
    }
    *s = (float)so;
    *c = (float)co;
}

/* f32 -> f16, round to nearest even, subnormals and overflow like numpy. */
uint16_t f32_to_f16(float x) {
    uint32_t b = f32_bits(x);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
    b &= 0x7fffffffu;
    if (b > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((b >> 13) & 0x3ffu); /* NaN */
    if (b >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
    if (b >= 0x38800000u) {                      /* normal f16 (>= 2^-14) */
        /* round the 13 dropped mantissa bits to nearest even, then rebias the
         * exponent from 127 to 15; a mantissa carry bumps the exponent. */
        b += 0x0fffu + ((b >> 13) & 1u);
        return sign | (uint16_t)((b - 0x38000000u) >> 13);
    }
    if (b < 0x33000000u) return sign; /* < 2^-25: rounds to zero */
    /* subnormal f16: the value in units of 2^-24 is mant * 2^(exp-126) */
    uint32_t exp = b >> 23;
    uint32_t mant = (b & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp; /* 14..24 */
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return sign | (uint16_t)q;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in f32 */
        float v = (float)mant * 5.9604644775390625e-08f;
        return f32_from_bits(f32_bits(v) | sign);
    }
    if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}
