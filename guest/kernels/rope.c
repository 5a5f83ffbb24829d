/* Rotary position embedding, in place on x[n_tokens][n_heads][head_dim].
 * The cos/sin of a position are computed once (borda_sincosf, double-precision
 * range reduction) and applied to every head. */
#include "borda.h"

#include <wasm_simd128.h>

#define ROPE_CHUNK 128 /* pairs per cos/sin table; longer heads loop over chunks */

/* rotate_half layout: pair i is (x[i], x[i + half]); 4 pairs per step. */
static void rotate_half(float *x, int half, int i0, int n, const float *c, const float *s) {
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        v128_t a = wasm_v128_load(x + i0 + i), b = wasm_v128_load(x + half + i0 + i);
        v128_t vc = wasm_v128_load(c + i), vs = wasm_v128_load(s + i);
        wasm_v128_store(x + i0 + i, wasm_f32x4_sub(wasm_f32x4_mul(a, vc), wasm_f32x4_mul(b, vs)));
        wasm_v128_store(x + half + i0 + i,
                        wasm_f32x4_add(wasm_f32x4_mul(b, vc), wasm_f32x4_mul(a, vs)));
    }
    for (; i < n; i++) {
        float a = x[i0 + i], b = x[half + i0 + i];
        x[i0 + i] = a * c[i] - b * s[i];
        x[half + i0 + i] = b * c[i] + a * s[i];
    }
}

/* GPT-J layout: pair i is (x[2i], x[2i+1]). */
static void rotate_pairs(float *x, int i0, int n, const float *c, const float *s) {
    for (int i = 0; i < n; i++) {
        float a = x[2 * (i0 + i)], b = x[2 * (i0 + i) + 1];
        x[2 * (i0 + i)] = a * c[i] - b * s[i];
        x[2 * (i0 + i) + 1] = b * c[i] + a * s[i];
    }
}

void rope(float *x, int n_tokens, int n_heads, int head_dim, int pos0, const float *inv_freq,
          int interleaved) {
    int half = head_dim / 2;
    float c[ROPE_CHUNK], s[ROPE_CHUNK];
    for (int t = 0; t < n_tokens; t++) {
        float pos = (float)(pos0 + t);
        for (int i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
            int n = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
            for (int i = 0; i < n; i++) borda_sincosf(pos * inv_freq[i0 + i], &s[i], &c[i]);
            for (int h = 0; h < n_heads; h++) {
                float *xh = x + ((size_t)t * n_heads + h) * head_dim;
                if (interleaved)
                    rotate_pairs(xh, i0, n, c, s);
                else
                    rotate_half(xh, half, i0, n, c, s);
            }
        }
    }
}
