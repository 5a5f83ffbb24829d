/* Q8_0 weight (de)quantization, repacking to the planar layout, and the
 * per-token activation quantization feeding gemm_q8_0. */
#include "borda.h"

#include <wasm_simd128.h>

#include "simd_math.h"

/* max |x| over 32 floats (pmax/pmin/relaxed_trunc below: single x86 instructions, and
 * equal to max/min/trunc_sat for the finite, in-range values they see) */
static float absmax32(const float *x) {
    v128_t m = wasm_f32x4_abs(wasm_v128_load(x));
    for (int j = 4; j < 32; j += 4) m = wasm_f32x4_pmax(m, wasm_f32x4_abs(wasm_v128_load(x + j)));
    return hmax_f32x4(m);
}

/* q = roundf(x * id) for 32 floats -> 32 int8 (|q| <= 127 already, so neither the
 * clamp nor the saturating narrowing ever changes a value of a finite input). */
static void round_block32(const float *x, float id, int8_t *out) {
    v128_t vid = wasm_f32x4_splat(id);
    v128_t lo = wasm_i32x4_splat(-127), hi = wasm_i32x4_splat(127);
    for (int j = 0; j < 32; j += 16) {
        v128_t q[4];
        for (int i = 0; i < 4; i++) {
            v128_t r = round_away_f32x4(wasm_f32x4_mul(wasm_v128_load(x + j + 4 * i), vid));
            v128_t qi = wasm_i32x4_relaxed_trunc_f32x4(r); /* |r| is small: no overflow */
            q[i] = wasm_i32x4_min(wasm_i32x4_max(qi, lo), hi);
        }
        v128_t q01 = wasm_i16x8_narrow_i32x4(q[0], q[1]);
        v128_t q23 = wasm_i16x8_narrow_i32x4(q[2], q[3]);
        wasm_v128_store(out + j, wasm_i8x16_narrow_i16x8(q01, q23));
    }
}

/* Bit-identical to ggml's quantize_row_q8_0_ref (and gguf-py): d = amax/127,
 * q = roundf(x/d) computed as x * (1/d), scale stored as f16. */
void quantize_q8_0(const float *x, block_q8_0 *out, int n) {
    int nb = n / QK8_0;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * QK8_0;
        float d = absmax32(xb) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int8_t q[QK8_0];
        round_block32(xb, id, q);
        out[b].d = f32_to_f16(d);
        wasm_v128_store(out[b].qs, wasm_v128_load(q));
        wasm_v128_store(out[b].qs + 16, wasm_v128_load(q + 16));
    }
}

void dequantize_q8_0(const block_q8_0 *blocks, float *y, int n) {
    int nb = n / QK8_0;
    for (int b = 0; b < nb; b++) {
        float d = f16_to_f32(blocks[b].d);
        dequant16_f32(blocks[b].qs, d, y + b * QK8_0);
        dequant16_f32(blocks[b].qs + 16, d, y + b * QK8_0 + 16);
    }
}

/* GGUF blocks -> planar qs / f32 d / int16 block sums (see borda.h). */
void repack_q8_0(const block_q8_0 *blocks, int8_t *qs, float *d, int16_t *s, int nblocks) {
    for (int b = 0; b < nblocks; b++) {
        v128_t q0 = wasm_v128_load(blocks[b].qs), q1 = wasm_v128_load(blocks[b].qs + 16);
        wasm_v128_store(qs + b * QK8_0, q0);
        wasm_v128_store(qs + b * QK8_0 + 16, q1);
        v128_t s16 = wasm_i16x8_add(wasm_i16x8_extadd_pairwise_i8x16(q0),
                                    wasm_i16x8_extadd_pairwise_i8x16(q1)); /* |lane| <= 512 */
        v128_t s32 = wasm_i32x4_extadd_pairwise_i16x8(s16);
        s32 = wasm_i32x4_add(s32, wasm_i32x4_shuffle(s32, s32, 2, 3, 0, 1));
        s32 = wasm_i32x4_add(s32, wasm_i32x4_shuffle(s32, s32, 1, 0, 3, 2));
        s[b] = (int16_t)wasm_i32x4_extract_lane(s32, 0);
        d[b] = f16_to_f32(blocks[b].d);
    }
}

/* Activations round half to even (not away from zero like Q8_0 weights) by
 * adding 1.5 * 2^23: for |v| < 2^22 the sum's mantissa holds round(v), so its
 * bit pattern minus RINT_MAGIC's is round(v) as an i32, with no conversion. */
#define RINT_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define RINT_MAGIC_BITS 0x4B400000

/* One-digit activations for 32 floats: u = round(x * id) + 64, kept in [1, 127]
 * (a NaN or inf input cannot push it out of the relaxed dot's exact range). */
static inline __attribute__((always_inline)) void act_block32(const float *x, float id,
                                                             int8_t *out) {
    v128_t vid = wasm_f32x4_splat(id), magic = wasm_f32x4_splat(RINT_MAGIC);
    v128_t bias = wasm_i32x4_splat(RINT_MAGIC_BITS - ACT_OFFSET(1));
    v128_t lo = wasm_i32x4_splat(1), hi = wasm_i32x4_splat(2 * ACT_OFFSET(1) - 1);
    for (int j = 0; j < 32; j += 16) {
        v128_t u[4];
        for (int i = 0; i < 4; i++) {
            v128_t t = wasm_f32x4_add(wasm_f32x4_mul(wasm_v128_load(x + j + 4 * i), vid), magic);
            u[i] = wasm_i32x4_min(wasm_i32x4_max(wasm_i32x4_sub(t, bias), lo), hi);
        }
        wasm_v128_store(out + j, wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(u[0], u[1]),
                                                         wasm_i16x8_narrow_i32x4(u[2], u[3])));
    }
}

/* Two-digit activations for 32 floats: v = clamp(round(x * id), +-vmax),
 * q0 = round(v / 63), q1 = v - 63 q0 (exact in f32; 63 is odd, so v / 63 is
 * never a tie and q0, q1 land in [-31,31]), each + 32. */
static inline __attribute__((always_inline)) void act_block32_2digits(const float *x, float id,
                                                                     int8_t *hi, int8_t *lo) {
    v128_t vid = wasm_f32x4_splat(id), magic = wasm_f32x4_splat(RINT_MAGIC);
    v128_t inv_radix = wasm_f32x4_splat(1.0f / ACT_RADIX), radix = wasm_f32x4_splat(ACT_RADIX);
    v128_t bias = wasm_i32x4_splat(RINT_MAGIC_BITS - ACT_OFFSET(2));
    v128_t off = wasm_i32x4_splat(ACT_OFFSET(2)), vmax = wasm_f32x4_splat(ACT_VMAX(2));
    for (int j = 0; j < 32; j += 16) {
        v128_t q0[4], q1[4];
        for (int i = 0; i < 4; i++) {
            v128_t x4 = wasm_f32x4_mul(wasm_v128_load(x + j + 4 * i), vid);
            v128_t v = wasm_f32x4_sub(wasm_f32x4_add(x4, magic), magic);
            /* operands in this order, a NaN (a broken model) comes out as -vmax */
            v = wasm_f32x4_pmin(vmax, wasm_f32x4_pmax(wasm_f32x4_neg(vmax), v));
            v128_t t = wasm_f32x4_add(wasm_f32x4_mul(v, inv_radix), magic);
            v128_t h = wasm_f32x4_sub(t, magic);
            q0[i] = wasm_i32x4_sub(t, bias); /* in [1, 63] */
            q1[i] = wasm_i32x4_add(
                wasm_i32x4_relaxed_trunc_f32x4(wasm_f32x4_sub(v, wasm_f32x4_mul(h, radix))), off);
        }
        wasm_v128_store(hi + j, wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(q0[0], q0[1]),
                                                        wasm_i16x8_narrow_i32x4(q0[2], q0[3])));
        wasm_v128_store(lo + j, wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(q1[0], q1[1]),
                                                        wasm_i16x8_narrow_i32x4(q1[2], q1[3])));
    }
}

/* max |x| of 4 blocks of 32 floats -> [amax_0 .. amax_3] */
static inline v128_t absmax4x32(const float *x) {
    v128_t m[4];
    for (int i = 0; i < 4; i++) {
        const float *b = x + 32 * i;
        v128_t a = wasm_f32x4_abs(wasm_v128_load(b));
        for (int j = 4; j < 32; j += 4)
            a = wasm_f32x4_pmax(a, wasm_f32x4_abs(wasm_v128_load(b + j)));
        m[i] = a;
    }
    transpose4(m);
    return wasm_f32x4_pmax(wasm_f32x4_pmax(m[0], m[1]), wasm_f32x4_pmax(m[2], m[3]));
}

/* One block's digits from its scale's inverse id. */
static inline __attribute__((always_inline)) void act_block(const float *x, float id, int8_t *u,
                                                            int k, int digits) {
    if (digits == 2)
        act_block32_2digits(x, id, u, u + k);
    else
        act_block32(x, id, u);
}

/* Per token, per block of 32: d = amax / vmax, v = clamp(round(x / d)) in
 * `digits` offset digits (see ACT_VMAX in borda.h); a token's digit planes
 * are k bytes each, most significant first. The scales of 4 blocks at a time
 * are one vector division each (d, then 1 / d): scalar ones, a chain of two
 * divisions per block, took ~3x the time. */
static inline __attribute__((always_inline)) void quantize_tokens(const float *x, int8_t *u,
                                                                   float *dx, int n_tokens, int k,
                                                                   const int digits) {
    int nb = k / QK8_0;
    v128_t vmax = wasm_f32x4_splat((float)ACT_VMAX(digits)), one = wasm_f32x4_splat(1.0f);
    v128_t zero = wasm_f32x4_splat(0.0f);
    for (int t = 0; t < n_tokens; t++) {
        int8_t *ut = u + (size_t)t * (size_t)digits * (size_t)k;
        const float *xt = x + (size_t)t * k;
        float *dt = dx + (size_t)t * nb;
        int b = 0;
        for (; b + 4 <= nb; b += 4) {
            v128_t d = wasm_f32x4_div(absmax4x32(xt + b * QK8_0), vmax);
            v128_t nz = wasm_f32x4_ne(d, zero);
            v128_t id = wasm_v128_and(wasm_f32x4_div(one, wasm_v128_bitselect(d, one, nz)), nz);
            wasm_v128_store(dt + b, d);
            float ids[4];
            wasm_v128_store(ids, id);
#pragma clang loop unroll(disable)
            for (int i = 0; i < 4; i++)
                act_block(xt + (b + i) * QK8_0, ids[i], ut + (b + i) * QK8_0, k, digits);
        }
        for (; b < nb; b++) {
            float d = absmax32(xt + b * QK8_0) / (float)ACT_VMAX(digits);
            act_block(xt + b * QK8_0, d != 0.0f ? 1.0f / d : 0.0f, ut + b * QK8_0, k, digits);
            dt[b] = d;
        }
    }
}

void quantize_act(const float *x, int8_t *u, float *dx, int n_tokens, int k, int digits) {
    if (digits == 2)
        quantize_tokens(x, u, dx, n_tokens, k, 2);
    else
        quantize_tokens(x, u, dx, n_tokens, k, 1);
}
